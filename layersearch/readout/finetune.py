"""Fine-tune an encoder on a GLUE proxy task and score it on the dev split.

This is the last stage of a fitness evaluation: each proxy student gets a
classification head, a short seeded fine-tune per task and seed, and its dev
scores. Same encoder, data, config and seed give bit-identical results on CPU.

    from layersearch.readout.finetune import finetune_all
    results = finetune_all(student, tokenizer, cfg.tasks, datasets)
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    get_scheduler,
)
from transformers.trainer_pt_utils import get_length_grouped_indices

from layersearch.config import FinetuneConfig, TasksConfig
from layersearch.data.tasks import TASKS, load_task, score
from layersearch.distill import adamw
from layersearch.errors import UserError
from layersearch.families import adapter_for
from layersearch.precision import autocast

WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0
# Every candidate is scored on the same dev subset, whatever its fine-tune seed.
DEV_SEED = 0


class FinetuneDivergence(UserError):
    """The fine-tuning loss became NaN or infinite."""


@dataclass
class TaskResult:
    task: str
    seed: int
    metrics: dict[str, float]
    score: float  # the headline metric, metrics' first entry
    train_examples: int
    dev_examples: int
    steps: int
    seconds: float
    loss_curve: list[float] = field(default_factory=list)
    # Headline metric of always predicting the train split's majority label.
    majority_baseline: float = float("nan")
    # Dev predictions and labels, in the dev subset's order: the evidence that
    # chance-corrected scores, intervals and paired comparisons are computed from.
    predictions: np.ndarray | None = None
    labels: np.ndarray | None = None


def _subsample(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    # Sorted indices keep the file order, so the same subset reads the same way.
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return ds.select(idx)


def encode(tokenizer, task: str, ds: Dataset, seq_length: int) -> list[dict[str, list[int]]]:
    """Tokenize a split's single sentences or sentence pairs, unpadded."""
    texts = [list(ds[f]) for f in TASKS[task].text_fields]
    enc = tokenizer(*texts, truncation=True, max_length=seq_length)
    keys = list(enc.keys())
    return [{k: enc[k][i] for k in keys} for i in range(len(ds))]


@dataclass
class Split:
    """One tokenised split subset: unpadded features and their labels."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray


class TaskEncodings:
    """Task splits tokenised once and reused by every candidate and seed.

    An evaluator fine-tunes hundreds of students on the same task data; the
    train subset depends only on (task, seed) and the dev subset only on the
    task, so each is tokenised the first time it is asked for.
    """

    def __init__(self, tokenizer, datasets: dict[str, DatasetDict], cfg: FinetuneConfig):
        self.tokenizer, self.datasets, self.cfg = tokenizer, datasets, cfg
        self._train: dict[tuple[str, int], Split] = {}
        self._dev: dict[str, Split] = {}
        self._majority: dict[str, float] = {}

    def _encode(self, task: str, ds: Dataset) -> Split:
        return Split(encode(self.tokenizer, task, ds, self.cfg.seq_length),
                     np.asarray(ds["label"], dtype=np.int64))

    def train(self, task: str, seed: int) -> Split:
        if (task, seed) not in self._train:
            self._train[task, seed] = self._encode(
                task, _subsample(self.datasets[task]["train"], self.cfg.train_examples, seed))
        return self._train[task, seed]

    def dev(self, task: str) -> Split:
        if task not in self._dev:
            self._dev[task] = self._encode(task, _subsample(self.datasets[task]["dev"], self.cfg.dev_examples,
                                                            DEV_SEED))
        return self._dev[task]

    def majority_baseline(self, task: str) -> float:
        """The headline dev metric of always predicting the train split's majority label."""
        if task not in self._majority:
            majority = int(np.bincount(np.asarray(self.datasets[task]["train"]["label"])).argmax())
            labels = self.dev(task).labels
            self._majority[task] = next(iter(score(task, np.full(len(labels), majority), labels).values()))
        return self._majority[task]


def _batch(tokenizer, features: list[dict], device) -> dict[str, torch.Tensor]:
    batch = tokenizer.pad(features, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def build_classifier(
    encoder: PreTrainedModel | str | os.PathLike, num_labels: int, seed: int
) -> PreTrainedModel:
    """A sequence classifier whose encoder weights are a copy of ``encoder``'s.

    ``encoder`` is an in-memory base model (or a model with a head: its base
    model is used) or a model directory. New weights (head, a missing pooler)
    are initialised under ``seed``.
    """
    torch.manual_seed(seed)
    if isinstance(encoder, (str, os.PathLike)):
        # Through the in-memory route, so a saved student scores as it did before saving.
        encoder = AutoModel.from_pretrained(str(encoder), dtype=torch.float32)
    config = copy.deepcopy(encoder.config)
    config.num_labels = num_labels
    config.architectures = None
    # SDPA is the fast path; the caller's model may be eager to expose attentions.
    model = AutoModelForSequenceClassification.from_config(
        config, attn_implementation=adapter_for(config).kernel("sdpa"), dtype=torch.float32
    )
    # load_state_dict copies values, so the caller's model is never touched.
    missing, unexpected = model.base_model.load_state_dict(
        encoder.base_model.state_dict(), strict=False
    )
    # A pooler is the base model's own: BERT's classifier starts one fresh where the encoder
    # lacks it, RoBERTa's and MPNet's classifiers have none and use their own head.
    missing = [k for k in missing if not k.startswith("pooler.")]
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ValueError(
            f"encoder does not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model


def batch_order(train_x: list[dict], batch_size: int, seed: int, total: int) -> list[list[int]]:
    """The index lists of ``total`` steps' batches for one seed.

    Shuffled, then length-sorted within groups of batches (the Trainer's
    group_by_length): SST-2 pads to half as many tokens, pair tasks ~15% fewer.
    A function of the seed alone, so every student fine-tuned with a seed sees
    the same batches in the same order, packed or not.
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = [len(x["input_ids"]) for x in train_x]
    batches: list[list[int]] = []
    while len(batches) < total:
        order = get_length_grouped_indices(lengths, batch_size, generator=gen)
        batches += [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    return batches[:total]


def total_steps(n_examples: int, cfg: FinetuneConfig) -> int:
    """Steps of a fine-tune: ``epochs`` passes of ``batch_size``; a fractional epoch is cut short."""
    return max(1, math.ceil(cfg.epochs * math.ceil(n_examples / cfg.batch_size)))


def _train(
    model, tokenizer, task: str, train: Split, cfg: FinetuneConfig, seed: int, device, progress: bool,
) -> list[float]:
    """Seeded AdamW fine-tuning with dropout on; returns the loss of every step."""
    # Seeded again so dropout and shuffling do not depend on how the head was built.
    torch.manual_seed(seed)
    total = total_steps(len(train.features), cfg)
    # torch's default AdamW weight decay (0.01), as BERT fine-tuning recipes use.
    optimizer = adamw(model.parameters(), cfg.learning_rate)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(WARMUP_RATIO * total), num_training_steps=total
    )
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc=f"finetune {task}", disable=not progress, leave=False)
    for idx in batch_order(train.features, cfg.batch_size, seed, total):
        batch = _batch(tokenizer, [train.features[i] for i in idx], device)
        labels = torch.as_tensor(train.labels[idx], device=device)
        with autocast(cfg.precision, torch.device(device).type):
            logits = model(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        value = loss.item()
        if not math.isfinite(value):
            bar.close()
            raise divergence(task, len(losses) + 1, total, value)
        losses.append(value)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update()
    bar.close()
    return losses


def divergence(task: str, step: int, total: int, value: float) -> FinetuneDivergence:
    return FinetuneDivergence(f"fine-tuning on {task} diverged at step {step}/{total} "
                              f"(loss {value}); lower tasks.finetune.learning_rate")


def dev_batches(features: list[dict], batch_size: int) -> list[list[int]]:
    """Length-sorted index batches of a dev split, to cut padding."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    return [order[b : b + batch_size] for b in range(0, len(order), batch_size)]


@torch.no_grad()
def predict(model, tokenizer, features: list[dict], batch_size: int, device,
            precision: str = "fp32") -> np.ndarray:
    """Argmax labels in eval mode."""
    model.eval()
    preds = np.empty(len(features), dtype=np.int64)
    for idx in dev_batches(features, batch_size):
        with autocast(precision, torch.device(device).type):
            logits = model(**_batch(tokenizer, [features[i] for i in idx], device)).logits
        preds[idx] = logits.argmax(-1).cpu().numpy()
    return preds


def finetune_task(
    encoder: PreTrainedModel | str | os.PathLike,
    tokenizer,
    task: str,
    data: DatasetDict,
    cfg: FinetuneConfig,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
    encoded: TaskEncodings | None = None,
) -> TaskResult:
    """Fine-tune a copy of ``encoder`` on ``task``'s train split and score it on dev.

    ``encoded`` holds the task's tokenised splits across calls (an evaluator's);
    without it they are tokenised for this call alone.
    """
    start = time.perf_counter()
    encoded = encoded or TaskEncodings(tokenizer, {task: data}, cfg)
    train, dev = encoded.train(task, seed), encoded.dev(task)
    model = build_classifier(encoder, len(TASKS[task].label_names), seed).to(device)
    losses = _train(model, tokenizer, task, train, cfg, seed, device, progress)
    preds = predict(model, tokenizer, dev.features, cfg.batch_size, device, cfg.precision)
    return task_result(task, seed, preds, encoded, losses, time.perf_counter() - start)


def task_result(task: str, seed: int, preds: np.ndarray, encoded: TaskEncodings, losses: list[float],
                seconds: float) -> TaskResult:
    dev = encoded.dev(task)
    metrics = score(task, preds, dev.labels)
    return TaskResult(
        task=task,
        seed=seed,
        metrics=metrics,
        score=next(iter(metrics.values())),
        train_examples=len(encoded.train(task, seed).features),
        dev_examples=len(dev.features),
        steps=len(losses),
        seconds=seconds,
        loss_curve=losses,
        majority_baseline=encoded.majority_baseline(task),
        predictions=preds,
        labels=dev.labels,
    )


def finetune_all(
    encoder: PreTrainedModel | str | os.PathLike,
    tokenizer,
    tasks_cfg: TasksConfig,
    datasets: dict[str, DatasetDict] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    seeds: list[int] | None = None,
    encoded: TaskEncodings | None = None,
) -> list[TaskResult]:
    """One result per task and fine-tune seed (``seeds``, or the config's), tasks in config order.

    Pass ``encoded`` (an evaluator's ``TaskEncodings``) to reuse tokenised task data across calls.
    """
    if encoded is None:
        datasets = dict(datasets or {})
        for name in tasks_cfg.names:
            if name not in datasets:
                datasets[name] = load_task(name, tasks_cfg.source)
        encoded = TaskEncodings(tokenizer, datasets, tasks_cfg.finetune)
    results = []
    for name in tasks_cfg.names:
        for seed in tasks_cfg.finetune.seeds if seeds is None else seeds:
            results.append(finetune_task(encoder, tokenizer, name, encoded.datasets[name], tasks_cfg.finetune,
                                         seed, device, progress, encoded))
    return results
