"""One worker's part of the full distillation, the same code for one worker or many.

``run_worker(job)`` loads the teacher, opens the corpus blocks, builds the
student for the mapping and runs ``train`` on this worker's share of every
batch, always continuing from the newest checkpoint in the job's folder (the
driver only hands it a folder that belongs to this run, so a worker restarted
by Ray Train picks up where the lost one stopped). Rank 0 then writes the
Hugging Face model directory and ``result.json`` for the driver. A problem the
user must fix (a diverging loss, a damaged checkpoint) is written there too,
rather than raised, so that Ray Train does not retry what would fail again.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from layersearch.errors import UserError

RESULT_FILE = "result.json"
STOP_FILE = "STOP"


@dataclass
class DistillJob:
    """Everything a worker needs, as plain data (it travels to Ray workers)."""

    config: dict
    genes: list[int]
    init: list[int] | None
    checkpoint_dir: str
    output_dir: str
    progress: bool = True
    # The driver's working directory: config paths are relative to it, and Ray
    # Train starts workers elsewhere (with `ray job submit --working-dir`, every
    # node unpacks the same package at the same path).
    workdir: str = ""
    # The corpus blocks the driver opened (``data.blocks.BlockSource``): they pickle as
    # the names of their memory-mapped files, so workers neither tokenise nor re-hash.
    data: object | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def write_json_atomic(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def run_worker(job: DistillJob, report_errors: bool = False) -> dict:
    """Train this worker's share; rank 0 writes the model and returns (and saves) the result.

    ``report_errors``: a UserError becomes the result instead of an exception
    (under Ray Train, where an exception would be retried); ``raise_reported``
    turns it back into its exception in the driver.
    """
    from layersearch.distill.parallel import Workers

    workers = Workers.current()
    ckpt = Path(job.checkpoint_dir)
    try:
        result = _train(job, workers, ckpt)
    except UserError as exc:
        if not report_errors:
            raise
        result = {"error": str(exc), "error_type": type(exc).__name__}
    if workers.is_main:
        write_json_atomic(ckpt / RESULT_FILE, result)
    return result


def raise_reported(result: dict) -> None:
    """Raise the error a worker reported, as its own class where it is one the trainer raises."""
    if "error" not in result:
        return
    from layersearch.distill.checkpoint import CheckpointError
    from layersearch.distill.trainer import DivergenceError

    known = {c.__name__: c for c in (CheckpointError, DivergenceError)}
    raise known.get(result.get("error_type"), UserError)(result["error"])


def _train(job: DistillJob, workers, ckpt: Path) -> dict:
    import torch

    from layersearch.config import Config
    from layersearch.data.blocks import open_blocks
    from layersearch.distill.callbacks import StopOnSignal
    from layersearch.distill.trainer import train, training_device
    from layersearch.export import save_model_dir
    from layersearch.mapping import Mapping
    from layersearch.models import load_teacher_for, load_tokenizer
    from layersearch.student import finish_student, make_student

    cfg = Config.model_validate(job.config)
    teacher = load_teacher_for(cfg)  # the search's loader: WID's objective is the same in both
    tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
    mapping = Mapping(tuple(job.genes), teacher.config.num_hidden_layers,
                      tuple(job.init) if job.init else None)
    # Memory-mapped: each worker reads only the rows of its share, whatever the corpus size.
    data = job.data
    if data is None or not all(os.path.exists(f) for f in data.cache_files):
        # Another node without the driver's datasets cache: build (or find) its own.
        data = open_blocks(cfg.corpus, tokenizer, cfg.distill.corpus_blocks, cfg.distill.train.seed)
    pad = tokenizer.pad_token_id or 0
    torch.manual_seed(cfg.student.init.seed)
    student, loss, report = make_student(cfg, teacher, mapping, data, pad, tokenizer)
    stop = StopOnSignal(ckpt / STOP_FILE)
    try:
        result = train(student, teacher, loss, data, cfg.distill.train, pad_token_id=pad,
                       checkpoint_dir=ckpt, resume=True, progress=job.progress,
                       callbacks=[stop], workers=workers)
        out = {"steps": result.steps, "total_steps": result.total_steps, "tokens": result.tokens,
               "seconds": result.seconds, "stopped": result.stopped,
               "curves": result.curves, "speed": result.speed, "init_report": report,
               "objective_weights": dict(loss.weights), "world_size": workers.world_size}
        failure = None
        if workers.is_main and not result.stopped:
            mapping_json = json.dumps(mapping.to_json(cfg.teacher.model, list(loss.weights)), indent=2)
            try:
                save_model_dir(finish_student(student), tokenizer, job.output_dir,
                               {"mapping.json": mapping_json, "layersearch.yaml": cfg.to_yaml()})
            except Exception as exc:  # every worker must learn of it, not wait for rank 0
                failure = exc
        (failed,) = workers.any(failure is not None,
                                device=training_device(cfg.distill.train.precision)[0])
        if failure is not None:
            raise failure
        if failed:
            raise UserError("the main worker could not write the model directory")
        return out
    finally:
        stop.close()
        del student, loss, teacher
        # DDP's reducer must be freed before Ray Train destroys the process group (a later free aborts).
        gc.collect()
