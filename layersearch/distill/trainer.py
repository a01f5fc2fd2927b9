"""The trainer: one loop for proxy and full task-agnostic distillation.

A run is (student, teacher, DistillLoss, token blocks, TrainConfig). The
difference between a proxy evaluation and the final distillation is budget and
data, not code. Exact resume: the data order is a pure function of
(seed, epoch), and a checkpoint holds weights, optimizer, scheduler and RNG
state, so continuing from step k replays steps k+1.. bit for bit on CPU.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import get_scheduler

from layersearch.config import TrainConfig
from layersearch.cpu_memory import keep_freed_memory
from layersearch.distill.callbacks import ProgressLine, StepHook, StopAfter, TrainerCallback
from layersearch.distill.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    load_checkpoint,
    resume_candidates,
    save_checkpoint,
    staging_dir,
    write_rng,
)
from layersearch.distill.parallel import Workers
from layersearch.errors import UserError
from layersearch.features import Requirements, extract
from layersearch.precision import autocast


class DivergenceError(UserError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    # objective name (and "total", "lr") -> [(step, value)]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    stopped: bool = False  # ended early on request (preemption), after a checkpoint
    total_steps: int = 0
    # (step, tokens/s since the previous logged step): apart from curves, which resume replays exactly
    speed: list[tuple[int, float]] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.curves["total"][-1][1] if self.curves.get("total") else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def total_steps(cfg: TrainConfig, seq_length: int) -> int:
    """The step budget: max_steps, or max_tokens worth of optimizer steps, whichever is smaller."""
    per_step = cfg.batch_size * cfg.grad_accum_steps * seq_length
    budgets = [b for b in (cfg.max_steps, cfg.max_tokens and math.ceil(cfg.max_tokens / per_step)) if b]
    return int(min(budgets))


def micro_batch(data, index: int, batch_size: int, seed: int,
                workers: Workers | None = None) -> torch.Tensor:
    """Micro-batch ``index`` of an endless seeded shuffle of the blocks (drop-last per epoch).

    ``data`` is a tensor [N, T] or anything indexed like one (``data.blocks.BlockSource``,
    memory-mapped); only the rows of this worker's share are read.
    """
    return data[batch_rows(data.shape[0], index, batch_size, seed, workers)]


def batch_rows(n: int, index: int, batch_size: int, seed: int, workers: Workers | None = None) -> torch.Tensor:
    """The rows ``micro_batch`` reads: what cached teacher targets are looked up by."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(index, per_epoch)
    rows = _epoch_order(n, seed, epoch)[pos * batch_size:(pos + 1) * batch_size]
    return workers.share(rows) if workers else rows


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch; cached, since every micro-batch of the epoch reads it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def training_device(precision: str, device: str | None = None) -> tuple[torch.device, AbstractContextManager]:
    """Where a training loop runs, and the mixed-precision context for its forward passes.

    bf16 autocast for "bf16", or for "auto" where the device computes bf16 natively
    (see ``precision``). On a CPU it also keeps freed memory in the process (see
    ``cpu_memory``), which every training loop wants. ``device`` (an evaluator's, chosen by
    ``fitness.spec.evaluation_device``) overrides the default, a visible GPU.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        keep_freed_memory()
    return device, autocast(precision, device.type)


def adamw(params, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass over all parameters instead of a
    Python loop per tensor (on CPU it cut the optimizer from 13% of a proxy step to 3%)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def needs_features(loss_module) -> bool:
    """Whether the objective reads features at all (WID on an MLM teacher reads only logits)."""
    return (loss_module.teacher_requirements() != Requirements()
            or loss_module.student_requirements() != Requirements())


def hooks_of(loss_module, callbacks=()) -> list[TrainerCallback]:
    """The callbacks a run calls: the loss module itself when it is one (WID), then the given ones."""
    own = [loss_module] if isinstance(loss_module, TrainerCallback) else []
    return own + list(callbacks)


def loss_terms(student, loss_module, ids: torch.Tensor, mask: torch.Tensor, t_feats, step: int,
               distil: bool = True, callbacks: list[TrainerCallback] | None = None,
               check: bool = True) -> dict[str, torch.Tensor]:
    """One student's loss terms on one micro-batch, given the teacher's features.

    Shared by ``train`` and ``packed.train_packed`` so both compute exactly the
    same thing. Raises DivergenceError on a NaN or infinite total (``check``).
    """
    terms: dict[str, torch.Tensor] = {}
    if distil:
        s_feats = extract(student, ids, mask, loss_module.student_requirements())
        terms = loss_module(s_feats, t_feats)
    for cb in hooks_of(loss_module) if callbacks is None else callbacks:
        extra = cb.extra_terms(student, ids, mask)  # e.g. WID's MLM loss
        if extra:
            total = terms.get("total", torch.zeros((), device=ids.device))
            terms = {**terms, **extra, "total": sum(extra.values(), total)}
    if check:
        check_finite(terms, step)
    return terms


def teacher_features(teacher, targets, rows: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                     req: Requirements):
    """The teacher's features of a micro-batch: read from cached targets where given, else computed."""
    if targets is not None:
        return targets.features(rows, req, mask)
    with torch.no_grad():
        return extract(teacher, ids, mask, req)


def check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    total = terms["total"]
    if not torch.isfinite(total):
        bad = [k for k, v in terms.items() if k != "total" and not torch.isfinite(v)]
        raise DivergenceError(
            f"loss became {total.item()} at step {step} (objective "
            f"{', '.join(bad) or 'total'}); lower the learning rate or check the data"
        )


def optimizer_step(params, optimizer, scheduler, loss_module, cfg: TrainConfig, step: int, steps: int,
                   sums: dict[str, float], callbacks: list[TrainerCallback] | None = None) -> None:
    """Clip, step, schedule; then each callback's ``after_step`` (WID marking), logged in sums."""
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    sums["lr"] = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    for cb in hooks_of(loss_module) if callbacks is None else callbacks:
        sums.update(cb.after_step(step, steps) or {})


class _Step(nn.Module):
    """Student and loss module as one module, so DDP averages the projections' gradients too."""

    def __init__(self, student: nn.Module, loss_module: nn.Module, callbacks) -> None:
        super().__init__()
        self.student, self.loss_module = student, loss_module
        self.callbacks = callbacks

    def forward(self, ids, mask, t_feats, step: int, distil: bool):
        return loss_terms(self.student, self.loss_module, ids, mask, t_feats, step, distil,
                          self.callbacks, check=False)


def train(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    loss_module: torch.nn.Module,
    data,
    cfg: TrainConfig,
    pad_token_id: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    callbacks: list[TrainerCallback] = (),
    workers: Workers | None = None,
    teacher_targets=None,
    device: str | None = None,
) -> TrainResult:
    """Distil ``teacher`` into ``student`` on the token blocks ``data`` [N, T].

    ``loss_module`` is a ``DistillLoss``: it names what each side must expose
    and returns per-objective values plus ``total``; if it is also a
    ``TrainerCallback`` (``wid.WIDLoss``) its hooks run too. ``callbacks``
    extend the loop (see ``callbacks``); ``on_step`` is a shorthand for a
    per-step function. A loss module that requires no features gets no feature
    passes. ``stop_after`` ends the run after that many steps with a
    checkpoint, as a preemption would, for resume tests.

    Under ``torch.distributed`` (``workers``, default: the current process
    group) every worker runs this same loop on its share of each batch; rank 0
    writes the checkpoints, each worker adds its own random state to them.

    ``teacher_targets`` (``data.targets.TeacherTargets`` of ``data``) replaces the teacher's
    forward pass with a read of its cached outputs for each micro-batch's rows.
    """
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"expected token blocks [N, T], got shape {tuple(data.shape)}")
    workers = workers or Workers.current()
    if cfg.batch_size % workers.world_size:
        raise ValueError(f"distill.train.batch_size {cfg.batch_size} must be divisible by the "
                         f"{workers.world_size} workers")
    device, autocast = training_device(cfg.precision, device)
    torch.manual_seed(cfg.seed + workers.rank)  # each worker its own dropout stream
    student.to(device).train()
    teacher.to(device).eval()
    loss_module.to(device).train()
    params = [p for p in [*student.parameters(), *loss_module.parameters()] if p.requires_grad]
    optimizer = adamw(params, cfg.learning_rate, cfg.weight_decay)
    seq_length = data.shape[1]
    steps = total_steps(cfg, seq_length)
    scheduler = get_scheduler(cfg.scheduler, optimizer,
                              num_warmup_steps=int(cfg.warmup_ratio * steps),
                              num_training_steps=steps)
    teacher_req = loss_module.teacher_requirements()
    distil = needs_features(loss_module)

    start_step, curves = 0, {}
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else None
    if resume and ckpt_root is not None:
        start_step, curves = resume_from(ckpt_root, student, loss_module, optimizer, scheduler, workers, device)

    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * seq_length
    hooks = hooks_of(loss_module, callbacks)
    extra = [StepHook(on_step)] if on_step else []
    if stop_after:
        extra.append(StopAfter(stop_after))
    if progress and workers.is_main:
        extra.append(ProgressLine(tokens_per_step, start_step))
    hooks = hooks + extra
    step_module = workers.wrap(_Step(student, loss_module, hooks), device)

    began = last_log = time.perf_counter()
    last_logged_step = start_step
    step, stopped = start_step, False
    speed: list[tuple[int, float]] = []
    for step in range(start_step + 1, steps + 1):
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum_steps):
            index = (step - 1) * cfg.grad_accum_steps + micro
            rows = batch_rows(data.shape[0], index, cfg.batch_size, cfg.seed, workers)
            ids = data[rows].to(device)
            mask = (ids != pad_token_id).long()
            with workers.accumulating(step_module, last=micro == cfg.grad_accum_steps - 1):
                with autocast:
                    t_feats = None
                    if distil:
                        t_feats = teacher_features(teacher, teacher_targets, rows, ids, mask, teacher_req)
                    terms = step_module(ids, mask, t_feats, step, distil)
                # Every worker learns of a divergence anywhere before anyone's backward pass.
                (bad,) = workers.any(not torch.isfinite(terms["total"]), device=device)
                if bad:
                    check_finite(terms, step)
                    raise DivergenceError(f"loss became nan at step {step} on another worker; "
                                          "lower the learning rate or check the data")
                (terms["total"] / cfg.grad_accum_steps).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() / cfg.grad_accum_steps
        optimizer_step(params, optimizer, scheduler, loss_module, cfg, step, steps, sums, hooks)
        sums = workers.mean(sums, device)
        if step % cfg.log_every == 0 or step == steps:
            now = time.perf_counter()
            speed.append((step, (step - last_logged_step) * tokens_per_step / max(now - last_log, 1e-9)))
            last_log, last_logged_step = now, step
            for k, v in sums.items():
                curves.setdefault(k, []).append((step, v))
        for cb in hooks:
            cb.on_step(step, steps, sums)
        (stopped,) = workers.any(any(cb.should_stop() for cb in hooks), device=device)
        due = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
        if ckpt_root and (due or (stopped and step < steps)):
            checkpoint(ckpt_root, step, student, loss_module, optimizer, scheduler, curves, workers)
        if stopped:
            break
    done = step - start_step
    return TrainResult(steps=step, tokens=done * tokens_per_step,
                       seconds=time.perf_counter() - began, curves=curves,
                       stopped=stopped and step < steps, total_steps=steps, speed=speed)


def resume_from(root: Path, student, loss_module, optimizer, scheduler, workers: Workers,
                device) -> tuple[int, dict]:
    """(step, curves) of the newest sound checkpoint, loaded into the given objects; (0, {}) if none.

    A damaged newest checkpoint falls back to the older one kept beside it, in one line on
    stderr; every worker takes the same decision (one worker's damaged random state stops
    them all at the same candidate). A checkpoint that is sound but mismatched (another
    world size) is an error, not a reason to go back in time.
    """
    candidates = resume_candidates(root)
    first_failure = None
    for i, path in enumerate(candidates):
        failure = None
        try:
            loaded = load_checkpoint(path, student, loss_module, optimizer, scheduler, workers.rank,
                                     workers.world_size)
        except CheckpointMismatch:
            raise
        except CheckpointError as exc:
            failure = exc
        (failed,) = workers.any(failure is not None, device=device)
        if not failed:
            return loaded
        first_failure = first_failure or failure or CheckpointError(
            f"checkpoint {path} is corrupt or incomplete for another worker; delete it to start over")
        if i + 1 < len(candidates) and workers.is_main:
            print(f"checkpoint {path} is corrupt or incomplete; resuming from the previous one, "
                  f"{candidates[i + 1].name}", file=sys.stderr, flush=True)
    if first_failure is not None:
        raise first_failure
    return 0, {}


def checkpoint(root: Path, step: int, student, loss_module, optimizer, scheduler, curves,
               workers: Workers) -> None:
    """Every worker adds its random state, then rank 0 writes the rest and renames it into place."""
    if workers.world_size > 1:
        write_rng(staging_dir(root, step), workers.rank)
        workers.barrier()
    if workers.is_main:
        save_checkpoint(root, step, student, loss_module, optimizer, scheduler, curves,
                        workers.world_size, rank_rng_written=workers.world_size > 1)
    workers.barrier()
