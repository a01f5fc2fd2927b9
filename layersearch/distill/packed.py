"""Several students trained together against one teacher forward per batch.

In a proxy evaluation every candidate sees the same batches, so the teacher's
forward pass (most of the cost when the student is small) is the same for all
of them. ``train_packed`` runs it once per micro-batch, asking only for the
union of what the pack's objectives read, and steps K students, each with its
own optimizer, scheduler and random stream.

Each student keeps a private RNG state (swapped in around its own forward and
backward), so its dropout masks, and therefore its whole run, are the ones it
would get from ``distill.train`` alone with the same seed: packed and
one-by-one evaluation agree within float tolerance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import get_scheduler

from layersearch.config import TrainConfig
from layersearch.distill import (
    DivergenceError,
    TrainResult,
    adamw,
    loss_terms,
    needs_features,
    optimizer_step,
    total_steps,
    training_device,
)
from layersearch.distill.checkpoint import load_checkpoint, resume_candidates, save_checkpoint
from layersearch.distill.trainer import batch_rows, teacher_features
from layersearch.features import Requirements

FAILED = "diverged.json"  # a member's folder holds this instead of checkpoints once it diverged


class _Member:
    """One student of the pack with everything that is private to it."""

    def __init__(self, student, loss_module, cfg: TrainConfig, steps: int, device):
        self.student, self.loss = student.to(device).train(), loss_module.to(device).train()
        self.params = [p for p in [*student.parameters(), *loss_module.parameters()] if p.requires_grad]
        self.optimizer = adamw(self.params, cfg.learning_rate, cfg.weight_decay)
        self.scheduler = get_scheduler(cfg.scheduler, self.optimizer,
                                       num_warmup_steps=int(cfg.warmup_ratio * steps),
                                       num_training_steps=steps)
        self.distil = needs_features(loss_module)
        self.curves: dict[str, list[tuple[int, float]]] = {}
        self.error: Exception | None = None
        # The stream train() would draw from after torch.manual_seed(cfg.seed).
        self.rng = torch.Generator().manual_seed(cfg.seed).get_state()
        self.cuda_rng = None

    def swap_in(self, device) -> None:
        torch.set_rng_state(self.rng)
        if device.type == "cuda":
            if self.cuda_rng is None:
                torch.cuda.manual_seed(torch.initial_seed())
            else:
                torch.cuda.set_rng_state(self.cuda_rng)

    def swap_out(self, device) -> None:
        self.rng = torch.get_rng_state()
        if device.type == "cuda":
            self.cuda_rng = torch.cuda.get_rng_state()


def train_packed(students: list, teacher, loss_modules: list, data: torch.Tensor, cfg: TrainConfig,
                 pad_token_id: int = 0, teacher_targets=None, device: str | None = None,
                 on_step: Callable[[int], None] | None = None, checkpoint_dir: str | Path | None = None,
                 checkpoint_every: int = 0) -> list[TrainResult | Exception]:
    """Distil every student of the pack; a diverging one ends with its DivergenceError.

    ``teacher_targets`` (cached, ``data.targets``) stand in for the teacher pass, as in ``train``.
    ``on_step(step)`` runs after every member's optimizer step (the students are the ones passed
    in, trained in place: it may save them mid-run). ``checkpoint_dir``: every ``checkpoint_every``
    steps each member's weights, optimizer, schedule and random stream go to
    ``<dir>/member-<i>/checkpoint-<step>`` (``distill.checkpoint``'s format), and a pack built
    the same way resumes from the newest step all members hold, as if never stopped.

    Returns one entry per student, in order: its TrainResult, or the exception
    that stopped it (the rest of the pack carries on).
    """
    device, autocast = training_device(cfg.precision, device)
    steps = total_steps(cfg, data.shape[1])
    teacher.to(device).eval()
    outer_rng = torch.get_rng_state()
    members = [_Member(s, lm, cfg, steps, device) for s, lm in zip(students, loss_modules, strict=True)]
    teacher_req = members[0].loss.teacher_requirements().merge(*(m.loss.teacher_requirements()
                                                                 for m in members[1:]))
    start = 1 if checkpoint_dir is None else resume_pack(members, Path(checkpoint_dir)) + 1
    began = time.perf_counter()
    for step in range(start, steps + 1):
        live = [m for m in members if m.error is None]
        if not live:
            break
        sums = [dict() for _ in live]
        for micro in range(cfg.grad_accum_steps):
            rows = batch_rows(data.shape[0], (step - 1) * cfg.grad_accum_steps + micro, cfg.batch_size, cfg.seed)
            ids = data[rows].to(device)
            mask = (ids != pad_token_id).long()
            t_feats = None
            if teacher_req != Requirements():
                with autocast:
                    t_feats = teacher_features(teacher, teacher_targets, rows, ids, mask, teacher_req)
            for m, acc in zip(live, sums, strict=True):
                if m.error is not None:
                    continue
                m.swap_in(device)
                try:
                    with autocast:
                        terms = loss_terms(m.student, m.loss, ids, mask, t_feats, step, m.distil)
                    (terms["total"] / cfg.grad_accum_steps).backward()
                    for k, v in terms.items():
                        acc[k] = acc.get(k, 0.0) + v.item() / cfg.grad_accum_steps
                except DivergenceError as exc:
                    m.error = exc
                finally:
                    m.swap_out(device)
        for m, acc in zip(live, sums, strict=True):
            if m.error is not None:
                continue
            optimizer_step(m.params, m.optimizer, m.scheduler, m.loss, cfg, step, steps, acc)
            if step % cfg.log_every == 0 or step == steps:
                for k, v in acc.items():
                    m.curves.setdefault(k, []).append((step, v))
        if checkpoint_dir is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            save_pack(members, Path(checkpoint_dir), step, device)
        if on_step is not None:
            on_step(step)
    torch.set_rng_state(outer_rng)
    seconds = time.perf_counter() - began
    tokens = steps * cfg.batch_size * cfg.grad_accum_steps * data.shape[1]
    # The pack's wall time is shared: each member is charged an equal part.
    share = seconds / len(members)
    return [m.error if m.error is not None else TrainResult(steps, tokens, share, m.curves)
            for m in members]


def save_pack(members: list[_Member], root: Path, step: int, device) -> None:
    """Each member's checkpoint at ``step``; a diverged member leaves its error instead."""
    for i, m in enumerate(members):
        folder = root / f"member-{i}"
        if m.error is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / FAILED).write_text(json.dumps({"error": str(m.error)}))
            continue
        m.swap_in(device)  # the checkpoint's random state is the member's own stream
        try:
            save_checkpoint(folder, step, m.student, m.loss, m.optimizer, m.scheduler, m.curves)
        finally:
            m.swap_out(device)


def resume_pack(members: list[_Member], root: Path) -> int:
    """Restore every member from the newest step they all hold; 0 where there is none."""
    outer = torch.get_rng_state()
    held = []
    for i, m in enumerate(members):
        folder = root / f"member-{i}"
        if (folder / FAILED).is_file():
            m.error = DivergenceError(json.loads((folder / FAILED).read_text())["error"])
            continue
        held.append({int(p.name.split("-")[-1]) for p in resume_candidates(folder)})
    common = set.intersection(*held) if held else set()
    if not common:
        return 0
    step = max(common)
    for i, m in enumerate(members):
        if m.error is None:
            _, m.curves = load_checkpoint(root / f"member-{i}" / f"checkpoint-{step}", m.student, m.loss,
                                          m.optimizer, m.scheduler)
            m.rng = torch.get_rng_state()  # load_checkpoint set the process stream to the member's
    torch.set_rng_state(outer)
    return step


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a CPU allocator that could not get memory."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def split_on_oom(items: list, run, on_split=None) -> list:
    """``run(items)`` (one outcome per item), so that one member's trouble stays its own.

    Out of memory: the pack is halved and each half run again, down to one item,
    whose outcome is then the error (a smaller pack may fit where a big one did
    not, so no candidate is failed for its pack's size). Any other exception
    from a pack of several: each item is run alone, so only the one that raises
    fails. ``on_split(size)`` is told each retry's size (tests, logs).
    """
    try:
        return run(items)
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        if is_out_of_memory(exc):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = (len(items) + 1) // 2
            parts = [items[:half], items[half:]]
        else:
            parts = [[item] for item in items]
        out = []
        for part in parts:
            if on_split:
                on_split(len(part))
            out += split_on_oom(part, run, on_split)
        return out
