"""Distillation: the trainer, its callbacks and checkpoints, data parallelism, the Ray Train launcher.

``from layersearch.distill import train`` is the one training loop, for a
proxy evaluation and for the full distillation, on one worker or several.
"""

from layersearch.distill.callbacks import ProgressLine, StopOnSignal, TrainerCallback
from layersearch.distill.checkpoint import (
    CHECKPOINT_PREFIX,
    CheckpointError,
    clean_temporary,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from layersearch.distill.parallel import Workers
from layersearch.distill.trainer import (
    DivergenceError,
    TrainResult,
    adamw,
    check_finite,
    hooks_of,
    loss_terms,
    micro_batch,
    needs_features,
    optimizer_step,
    total_steps,
    train,
    training_device,
)

__all__ = [
    "CHECKPOINT_PREFIX", "CheckpointError", "DivergenceError", "ProgressLine", "StopOnSignal",
    "TrainResult", "TrainerCallback", "Workers", "adamw", "check_finite", "clean_temporary",
    "hooks_of", "latest_checkpoint", "load_checkpoint", "loss_terms", "micro_batch",
    "needs_features", "optimizer_step", "save_checkpoint", "total_steps", "train",
    "training_device",
]

# ``layersearch.distill(...)`` runs the workflow (the Python API): see layersearch.workflows.callable.
from layersearch.workflows.callable import make_callable  # noqa: E402

make_callable(__name__, "layersearch.workflows.distill", "distill")
