"""Fine-tune several students on one task and seed together, as one vmapped model.

The students of a pack share their shape, and one-at-a-time fine-tuning with
a seed gives every student the same head init, the same batches in the same
order and the same dropout masks (all drawn from the seed's stream, in the
same order, with the same shapes). So the K students are stacked
(``torch.func.stack_module_state``) and run through one ``functional_call``
under ``vmap`` with ``randomness="same"``: each matrix product becomes one
batched product over K, and the masks are the ones each student would draw
alone. AdamW is elementwise, so one optimizer over the stacked tensors is K
private optimizers; gradient clipping is done per student. The result equals
``finetune_task`` student by student within float tolerance (tested).

A student whose loss becomes NaN fails alone: its loss is kept out of the
sum and the others train on; it comes back as its ``FinetuneDivergence``.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from transformers import get_scheduler

from layersearch.config import FinetuneConfig
from layersearch.data.tasks import TASKS
from layersearch.distill import adamw
from layersearch.precision import autocast
from layersearch.readout.finetune import (
    MAX_GRAD_NORM,
    WARMUP_RATIO,
    TaskEncodings,
    TaskResult,
    _batch,
    batch_order,
    build_classifier,
    dev_batches,
    divergence,
    task_result,
    total_steps,
)


class _Stacked:
    """K same-shaped classifiers as stacked tensors, and one vmapped forward."""

    def __init__(self, models: list):
        self.params, self.buffers = stack_module_state(models)
        # The shape-only template functional_call runs; it holds no weights of its own.
        self.template = copy.deepcopy(models[0]).to("meta")
        # vmap has no batching rule for the CPU SDPA kernel (it loops over K, 2x slower);
        # eager attention is plain batched matmuls and softmax.
        self.template.config._attn_implementation = "eager"
        self.size = len(models)

        def forward(params, buffers, batch):
            return functional_call(self.template, (params, buffers), (), batch).logits

        # "same": one mask per dropout call, as each student would draw alone from the seed.
        self.forward = vmap(forward, in_dims=(0, 0, None), randomness="same")

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.forward(self.params, self.buffers, batch)  # [K, B, labels]

    def clip_(self, max_norm: float) -> None:
        """clip_grad_norm_ for each student's own gradients."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))


def finetune_pack(encoders: list, tokenizer, task: str, encoded: TaskEncodings, cfg: FinetuneConfig,
                  seed: int, device: str | torch.device = "cpu") -> list[TaskResult | Exception]:
    """``finetune_task`` for each encoder with one seed, trained together; one entry per encoder."""
    start = time.perf_counter()
    device = torch.device(device)
    train, dev = encoded.train(task, seed), encoded.dev(task)
    labels_n = len(TASKS[task].label_names)
    pack = _Stacked([build_classifier(e, labels_n, seed).to(device) for e in encoders])
    k = pack.size

    # Seeded again, as finetune_task does, so the dropout stream starts where it would.
    torch.manual_seed(seed)
    total = total_steps(len(train.features), cfg)
    optimizer = adamw(list(pack.params.values()), cfg.learning_rate)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(WARMUP_RATIO * total),
                              num_training_steps=total)
    losses: list[list[float]] = [[] for _ in range(k)]
    errors: list[Exception | None] = [None] * k
    pack.template.train()
    for idx in batch_order(train.features, cfg.batch_size, seed, total):
        batch = _batch(tokenizer, [train.features[i] for i in idx], device)
        labels = torch.as_tensor(train.labels[idx], device=device)
        with autocast(cfg.precision, device.type):
            logits = pack(batch)
        per = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.repeat(k), reduction="none").view(k, -1).mean(1)
        for i, value in enumerate(per.tolist()):
            if errors[i] is None and not math.isfinite(value):
                errors[i] = divergence(task, len(losses[i]) + 1, total, value)
            elif errors[i] is None:
                losses[i].append(value)
        live = torch.tensor([e is None for e in errors], device=device)
        if not live.any():
            break
        # Each student's gradient is that of its own loss alone; a diverged one gets none.
        torch.where(live, per, torch.zeros_like(per)).sum().backward()
        pack.clip_(MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    preds = np.empty((k, len(dev.features)), dtype=np.int64)
    pack.template.eval()
    with torch.no_grad():
        for idx in dev_batches(dev.features, cfg.batch_size):
            with autocast(cfg.precision, device.type):
                logits = pack(_batch(tokenizer, [dev.features[i] for i in idx], device))
            preds[:, idx] = logits.argmax(-1).cpu().numpy()
    # The pack's wall time is shared: each student is charged an equal part.
    share = (time.perf_counter() - start) / k
    return [errors[i] if errors[i] is not None else task_result(task, seed, preds[i], encoded, losses[i], share)
            for i in range(k)]
