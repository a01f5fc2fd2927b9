"""Proxy-spec identity: everything that fixes what a unit of evidence would say.

The spec key names the config fields and the world outside the config that
change a fitness value: the teacher's weights (a hub revision, or a local
directory's contents), the task files' contents, the corpus files, the
resolved device kind and precision, and the torch and transformers versions.
The seed lists (``proxy.slice_seeds``, ``tasks.finetune.seeds``) are not in
it: they choose which units an evaluation holds, so more seeds extend a cached
evaluation under the same key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from layersearch.config import Config
from layersearch.digest import file_digest
from layersearch.identity import runtime_identity, teacher_identity  # noqa: F401 - part of this module's API

SPEC_VERSION = 3  # bump when evaluation code changes what a spec's fitness means

def tasks_identity(source: str, names: list[str]) -> dict:
    """Each local task file's content hash; the hub's datasets are named by the task alone."""
    if source == "hub":
        return {"hub": "nyu-mll/glue"}
    root = Path(source).expanduser()
    return {n: {s: file_digest(root / n / f"{s}.tsv") for s in ("train", "dev")
                if (root / n / f"{s}.tsv").is_file()} for n in names}


def proxy_spec(cfg: Config, device: str = "cpu") -> dict:
    """The fields and facts that decide a unit's result (nothing about search, Ray or MLflow).

    ``device`` is the kind the evaluators run on ("cpu" or "cuda"), which
    decides what ``precision: auto`` means.
    """
    from layersearch.data.slices import corpus_identity
    from layersearch.precision import resolve_precision

    data = cfg.to_dict()
    # num_proc changes how fast blocks are made, never which (test_blocks checks it); the
    # files are named by their contents in the identity, wherever their folder lies.
    corpus = {k: v for k, v in data["corpus"].items() if k not in ("cache_dir", "num_proc", "paths")}
    corpus["identity"] = corpus_identity(cfg.corpus)
    # Which seeds a unit has, and what the ladder said of the proxy, change no unit.
    proxy = {k: v for k, v in data["proxy"].items()
             if k not in ("slice_seeds", "evidence", "teacher_cache", "teacher_cache_budget_gb")}
    runtime = runtime_identity(device, cfg.proxy.train.precision, cfg.tasks.readout)
    # "auto" and what it resolves to on this device kind are the same units;
    # logging and checkpoint cadence change no unit.
    train = {k: v for k, v in proxy["train"].items() if k not in ("log_every", "checkpoint_every")}
    proxy["train"] = {**train, "precision": runtime["precision"]}
    # Cached teacher targets (data.targets) are named here only when on, so the keys of live units
    # stay as they were; stored as the teacher pass computed them, at the training precision.
    from layersearch.data.targets import teacher_cache_on

    if teacher_cache_on(cfg, device):
        proxy["teacher_targets"] = {"cached": True, "stored": f"as computed at {runtime['precision']}"}
    # Task weights and order only combine units into a fitness, which is derived
    # again from the units on every read: they stay out of the key.
    # Packed fine-tuning gives the units one-at-a-time does; precision as resolved here.
    finetune = {k: v for k, v in data["tasks"]["finetune"].items() if k not in ("seeds", "packed")}
    finetune["precision"] = resolve_precision(cfg.tasks.finetune.precision, device)
    tasks = {"names": sorted(cfg.tasks.names), "finetune": finetune}
    # The files' contents name local task data, wherever the folder lies.
    tasks["source"] = tasks_identity(cfg.tasks.source, cfg.tasks.names)
    # A readout other than fine-tuning names itself and its parameters, so caches never mix
    # readouts; fine-tuning adds nothing, so the keys of its cached units stay as they were.
    if cfg.tasks.readout == "probe":
        tasks["readout"] = {"name": "probe", **data["tasks"]["probe"]}
    elif cfg.tasks.readout == "agreement":
        # No task data is read: only the held-out blocks and the ridge decide the score.
        tasks = {"readout": {"name": "agreement", **data["tasks"]["agreement"]}}
    return {
        "version": SPEC_VERSION,
        "teacher": teacher_identity(cfg.teacher.model, cfg.teacher.revision),
        "student": data["student"],
        "objective": data["objective"],
        "corpus": corpus,
        "proxy": proxy,
        "tasks": tasks,
        "runtime": runtime,
    }


def _digest(spec: dict) -> str:
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def spec_key(cfg: Config, device: str = "cpu") -> str:
    return _digest(proxy_spec(cfg, device))


def init_spec_key(cfg: Config, device: str = "cpu") -> str:
    """The key of the untouched proxy init's units: the proxy spec without its training
    budget, so every proxy length (and every mapping with the same init) shares them."""
    spec = proxy_spec(cfg, device)
    spec["proxy"] = {k: v for k, v in spec["proxy"].items() if k != "train"}
    spec.pop("objective")  # what is matched during training; the init is built before it
    return _digest({**spec, "kind": "proxy-init"})


def final_spec(cfg: Config, device: str = "cpu") -> dict:
    """What decides a final student of ``confirm`` (the distill section's run, not the proxy's)
    and how it is scored (``confirm.tasks``). Where it runs (workers, output) is left out:
    N data-parallel workers train the weights one worker does."""
    spec = proxy_spec(cfg.model_copy(update={"tasks": confirm_tasks(cfg)}), device)
    data = cfg.to_dict()["distill"]
    train = {k: v for k, v in data["train"].items() if k not in ("log_every", "checkpoint_every")}
    spec["proxy"] = {"distill": {"corpus_blocks": data["corpus_blocks"], "train": train}}
    return {**spec, "kind": "final"}


def final_spec_key(cfg: Config, device: str = "cpu") -> str:
    return _digest(final_spec(cfg, device))


def final_student_key(cfg: Config, device: str = "cpu") -> str:
    """What decides a final student's weights alone: its scoring (``confirm.tasks``) left out, so
    one distillation serves every downstream evaluation of it."""
    spec = final_spec(cfg, device)
    spec.pop("tasks")
    return _digest({**spec, "kind": "final-student"})


def final_init_spec_key(cfg: Config, device: str = "cpu") -> str:
    """The key of the final students' untouched inits, scored as the final students are."""
    spec = final_spec(cfg, device)
    spec["proxy"] = {"distill": {"corpus_blocks": spec["proxy"]["distill"]["corpus_blocks"]}}
    spec.pop("objective")
    return _digest({**spec, "kind": "final-init"})


def confirm_tasks(cfg: Config):
    """``confirm.tasks`` as a plain tasks section, its source defaulting to the proxy's."""
    from layersearch.config import TasksConfig

    ct = cfg.confirm.tasks
    return TasksConfig(source=ct.source or cfg.tasks.source, names=list(ct.names), weights=ct.weights,
                       finetune=ct.finetune, init_baseline=cfg.confirm.tasks.init_baseline)


def evaluation_device(cfg: Config) -> str:
    """The one device policy of every command that evaluates or scores (search, evaluate, compare,
    baselines, confirm, the benches), and so of every spec key: ``ray.num_gpus`` decides.

    ``auto`` (the default): "cuda" where this process sees a GPU, else "cpu"; a number: "cuda"
    when above 0, "cpu" at 0, even where a GPU is visible. A search asks Ray for that many GPUs
    per evaluator (``evaluator_gpus``), so its evaluators run where ``evaluate`` would.
    """
    import torch

    gpus = cfg.ray.num_gpus
    if gpus == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if gpus > 0 else "cpu"


def evaluator_gpus(cfg: Config) -> float:
    """GPUs one search evaluator asks Ray for: ``ray.num_gpus``, ``auto`` as ``evaluation_device``."""
    if cfg.ray.num_gpus == "auto":
        return 1.0 if evaluation_device(cfg) == "cuda" else 0.0
    return float(cfg.ray.num_gpus)


def local_device(cfg: Config | None = None) -> str:
    """``evaluation_device(cfg)``; without a config, the ``auto`` policy (a visible GPU)."""
    import torch

    if cfg is not None:
        return evaluation_device(cfg)
    return "cuda" if torch.cuda.is_available() else "cpu"


def search_device(cfg: Config) -> str:
    """The device kind the search's evaluators run on: the same policy as every command."""
    return evaluation_device(cfg)


def units_of(cfg: Config) -> list[tuple[int, int]]:
    """(slice seed, fine-tune seed) of every unit the config asks for, in order."""
    return [(s, f) for s in cfg.proxy.slice_seeds for f in cfg.tasks.unit_seeds]
