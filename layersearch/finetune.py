"""Fine-tune an encoder on a GLUE proxy task and score it on the dev split.

This is the last stage of a fitness evaluation: each proxy student gets a
classification head, a short seeded fine-tune per task and seed, and its dev
scores. Same encoder, data, config and seed give bit-identical results on CPU.

    from layersearch.finetune import finetune_all
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
        config, attn_implementation="sdpa", dtype=torch.float32
    )
    # load_state_dict copies values, so the caller's model is never touched.
    missing, unexpected = model.base_model.load_state_dict(
        encoder.base_model.state_dict(), strict=False
    )
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ValueError(
            f"encoder does not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model


def _train(
    model, tokenizer, task: str, train_x: list[dict], train_y: np.ndarray,
    cfg: FinetuneConfig, seed: int, device, progress: bool,
) -> list[float]:
    """Seeded AdamW fine-tuning with dropout on; returns the loss of every step."""
    # Seeded again so dropout and shuffling do not depend on how the head was built.
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))  # a fractional epoch is cut short
    # torch's default AdamW weight decay (0.01), as BERT fine-tuning recipes use.
    optimizer = adamw(model.parameters(), cfg.learning_rate)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(WARMUP_RATIO * total), num_training_steps=total
    )
    lengths = [len(x["input_ids"]) for x in train_x]
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc=f"finetune {task}", disable=not progress, leave=False)
    while len(losses) < total:
        # Shuffled, then length-sorted within groups of batches (the Trainer's
        # group_by_length): SST-2 pads to half as many tokens, pair tasks ~15% fewer.
        order = get_length_grouped_indices(lengths, cfg.batch_size, generator=gen)
        for b in range(0, len(order), cfg.batch_size):
            if len(losses) == total:
                break
            idx = order[b : b + cfg.batch_size]
            batch = _batch(tokenizer, [train_x[i] for i in idx], device)
            labels = torch.as_tensor(train_y[idx], device=device)
            loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
            value = loss.item()
            if not math.isfinite(value):
                bar.close()
                raise FinetuneDivergence(
                    f"fine-tuning on {task} diverged at step {len(losses) + 1}/{total} "
                    f"(loss {value}); lower tasks.finetune.learning_rate"
                )
            losses.append(value)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update()
    bar.close()
    return losses


@torch.no_grad()
def predict(model, tokenizer, features: list[dict], batch_size: int, device) -> np.ndarray:
    """Argmax labels in eval mode; batches are length-sorted to cut padding."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    preds = np.empty(len(features), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
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
) -> TaskResult:
    """Fine-tune a copy of ``encoder`` on ``task``'s train split and score it on dev."""
    start = time.perf_counter()
    spec = TASKS[task]
    train = _subsample(data["train"], cfg.train_examples, seed)
    dev = _subsample(data["dev"], cfg.dev_examples, DEV_SEED)
    train_x = encode(tokenizer, task, train, cfg.seq_length)
    dev_x = encode(tokenizer, task, dev, cfg.seq_length)
    train_y = np.asarray(train["label"], dtype=np.int64)
    dev_y = np.asarray(dev["label"], dtype=np.int64)

    majority = int(np.bincount(np.asarray(data["train"]["label"])).argmax())
    baseline = next(iter(score(task, np.full(len(dev_y), majority), dev_y).values()))

    model = build_classifier(encoder, len(spec.label_names), seed).to(device)
    losses = _train(model, tokenizer, task, train_x, train_y, cfg, seed, device, progress)
    preds = predict(model, tokenizer, dev_x, cfg.batch_size, device)
    metrics = score(task, preds, dev_y)
    return TaskResult(
        task=task,
        seed=seed,
        metrics=metrics,
        score=next(iter(metrics.values())),
        train_examples=len(train_x),
        dev_examples=len(dev_x),
        steps=len(losses),
        seconds=time.perf_counter() - start,
        loss_curve=losses,
        majority_baseline=baseline,
        predictions=preds,
        labels=dev_y,
    )


def finetune_all(
    encoder: PreTrainedModel | str | os.PathLike,
    tokenizer,
    tasks_cfg: TasksConfig,
    datasets: dict[str, DatasetDict] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    seeds: list[int] | None = None,
) -> list[TaskResult]:
    """One result per task and fine-tune seed (``seeds``, or the config's), tasks in config order."""
    datasets = datasets or {}
    results = []
    for name in tasks_cfg.names:
        data = datasets[name] if name in datasets else load_task(name, tasks_cfg.source)
        for seed in tasks_cfg.finetune.seeds if seeds is None else seeds:
            results.append(
                finetune_task(
                    encoder, tokenizer, name, data, tasks_cfg.finetune, seed, device, progress
                )
            )
    return results
