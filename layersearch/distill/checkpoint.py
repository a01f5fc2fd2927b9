"""Trainer checkpoints: everything a step depends on, written atomically.

A checkpoint ``checkpoint-<step>/`` holds the student and the loss module's
weights (projections, WID's penalty state) as safetensors, the optimizer and
scheduler state, every random state of every worker (torch CPU and CUDA,
Python, NumPy), and ``trainer_state.json`` (step, curves, world size). The
data position needs no state of its own: the batch order is a pure function
of (seed, epoch, index), so the step is the position.

Atomic: rank 0 assembles the checkpoint in a ``.tmp-*`` folder beside the
others and renames it into place once every worker has written its random
states, so a crash leaves the previous checkpoint or the new one, never half.
Durable: every file and the folder are fsynced before the rename, and the
parent folder after it, so a machine crash (not only a process crash) cannot
leave a renamed checkpoint whose bytes never reached the disk. Should the
newest checkpoint be damaged all the same (a disk that lies, a copy cut
short), ``resume_candidates`` lists the older one it keeps and the trainer
falls back to it, saying so. Leftover ``.tmp-*`` folders of a crashed writer
are removed on the next save and on ``clean_temporary``.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from layersearch.durable import fsync_path
from layersearch.errors import UserError

CHECKPOINT_PREFIX = "checkpoint-"
KEEP_CHECKPOINTS = 2
TMP_PREFIX = ".tmp-"


class CheckpointError(UserError):
    pass


class CheckpointMismatch(CheckpointError):
    """A sound checkpoint that this run cannot use as configured (another world size)."""


def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = _checkpoints(Path(root)) if Path(root).is_dir() else []
    return found[-1] if found else None


def resume_candidates(root: str | Path) -> list[Path]:
    """The kept checkpoints, newest first: where a resume tries, in order."""
    return list(reversed(_checkpoints(Path(root)))) if Path(root).is_dir() else []


def _make_durable(folder: Path) -> None:
    """Every file of ``folder``, then the folder's own entries, onto the disk."""
    for f in folder.iterdir():
        if f.is_file():
            fsync_path(f)
    fsync_path(folder)


def clean_temporary(root: str | Path) -> None:
    """Remove half-written checkpoints a crashed writer left behind."""
    root = Path(root)
    if root.is_dir():
        for tmp in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(tmp, ignore_errors=True)


def random_states() -> dict:
    """This process's random streams: what dropout, MLM masking and shuffles draw from."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        # This worker's own device only: a restarted worker may see other GPUs, or fewer.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_random_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rng_payload(state: dict) -> dict:
    """Random states as tensors and plain values, so ``torch.load(weights_only=True)`` reads them."""
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    out = {"torch": state["torch"], "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
           "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if "cuda" in state:
        out["cuda"] = state["cuda"]
    return out


def _rng_from_payload(p: dict) -> dict:
    version, internal, gauss = p["python"]
    name, keys, pos, has_gauss, cached = p["numpy"]
    out = {"torch": p["torch"], "python": (version, tuple(internal.tolist()), gauss),
           "numpy": (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)}
    if "cuda" in p:
        out["cuda"] = p["cuda"]
    return out


def staging_dir(root: Path, step: int) -> Path:
    """Where every worker writes its part of checkpoint ``step`` before rank 0 renames it."""
    return root / f"{TMP_PREFIX}{CHECKPOINT_PREFIX}{step}"


def write_rng(stage: Path, rank: int) -> None:
    stage.mkdir(parents=True, exist_ok=True)
    torch.save(_rng_payload(random_states()), stage / f"rng-{rank}.pt")


def save_checkpoint(root: Path, step: int, student, loss_module, optimizer, scheduler,
                    curves: dict, world_size: int = 1, rank_rng_written: bool = False) -> Path:
    """Write checkpoint-<step> atomically and keep the newest KEEP_CHECKPOINTS (rank 0 only).

    With several workers each has already called ``write_rng`` into
    ``staging_dir(root, step)`` (``rank_rng_written``); alone, rank 0 writes its own.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(root, step)
    if not rank_rng_written:
        shutil.rmtree(tmp, ignore_errors=True)
        write_rng(tmp, 0)
    save_file({k: v.contiguous() for k, v in student.state_dict().items()},
              str(tmp / "student.safetensors"))
    save_file({k: v.contiguous() for k, v in loss_module.state_dict().items()} or
              {"_empty": torch.zeros(0)}, str(tmp / "loss.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               tmp / "optim.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(
        {"step": step, "curves": curves, "world_size": world_size}))
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    _make_durable(tmp)  # the bytes first, so the rename can never point at what is not written
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_path(root)  # the rename itself
    for old in _checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: Path, student, loss_module, optimizer, scheduler,
                    rank: int = 0, world_size: int = 1) -> tuple[int, dict]:
    """Restore a checkpoint into the given objects; a clear error if it is damaged."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        saved_world = int(state.get("world_size", 1))
        if saved_world != world_size:
            raise CheckpointMismatch(
                f"checkpoint {path} was written by {saved_world} worker(s); resume with "
                f"distill.workers={saved_world} (every worker's random stream is restored)")
        student.load_state_dict(load_file(str(path / "student.safetensors")))
        loss_state = load_file(str(path / "loss.safetensors"))
        loss_state.pop("_empty", None)
        loss_module.load_state_dict(loss_state)
        # weights_only: a checkpoint is data, never code.
        optim = torch.load(path / "optim.pt", weights_only=True)
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        rng = torch.load(path / f"rng-{rank}.pt", weights_only=True)
        set_random_states(_rng_from_payload(rng))
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or incomplete ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); delete it to start over"
        ) from None
    curves = {k: [tuple(p) for p in v] for k, v in state["curves"].items()}
    return int(state["step"]), curves
