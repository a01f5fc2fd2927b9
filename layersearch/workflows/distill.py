"""The full task-agnostic distillation of a student along a layer mapping: ``distill``.

The mapping is a heuristic name (uniform, last, lower, upper), a mapping JSON
file, an explicit gene list such as ``2,4,6``, or a search run id. Writes a
Hugging Face model directory (``distill.output_dir``) with a model card
(README.md, ``layersearch.model_card``), ``mapping.json`` and
``layersearch.yaml``, and one MLflow run with the config and genes as params,
its lineage as tags (which search and mapping it came from), the loss curves
and tokens/s as metrics, and the mapping, config and model as artifacts.

``distill.workers: N`` runs N data-parallel Ray Train workers (see
``distill.launch``). Checkpoints go to ``<output_dir>.checkpoints`` with
``run.json``, which names the MLflow run and the config and mapping it
belongs to: ``resume=True`` checks both, continues that same run, and ends with
the weights an uninterrupted run has. SIGTERM (preemption) writes a
checkpoint and ends the run KILLED. A failure leaves no output directory and
marks the run FAILED, keeping the checkpoints for ``resume``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from layersearch.config import Config
from layersearch.errors import UserError
from layersearch.workflows.progress import Say, sink
from layersearch.workflows.results import Distilled

RUN_STATE = "run.json"
# Settings a resumed run may change: where and how widely it runs, not what it computes.
RESUME_MAY_CHANGE = ("ray.", "distill.max_failures", "distill.cpus_per_worker", "distill.use_gpu")


class ResumeError(UserError):
    pass


class DistillStopped(UserError):
    """SIGTERM ended the run after a checkpoint; ``--resume`` continues it."""

    exit_code = 143
    run_status = "KILLED"  # how Tracker.run ends the MLflow run


def mapping_params(mapping) -> dict[str, int | str]:
    """One param per gene, so MLflow's parallel-coordinates view can plot them."""
    params: dict[str, int | str] = {f"gene_{m}": g for m, g in enumerate(mapping.genes, 1)}
    params.update({f"init_{m}": g for m, g in enumerate(mapping.init or [], 1)})
    params["mapping"] = mapping.key
    return params


def _settings(cfg: Config) -> dict:
    from layersearch.tracking import flatten

    return {k: v for k, v in flatten(cfg.to_dict()).items() if not k.startswith(RESUME_MAY_CHANGE)}


def _read_state(ckpt_dir: Path) -> dict | None:
    path = ckpt_dir / RUN_STATE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path} is unreadable ({type(exc).__name__}); delete {ckpt_dir} "
                          "to start over") from None


def check_resume(state: dict, cfg: Config, mapping, data: str) -> None:
    """A resumed run must compute what the killed one did: same config, same mapping."""
    now = _settings(cfg)
    changed = sorted(k for k in set(now) | set(state["config"])
                     if now.get(k) != state["config"].get(k))
    if changed:
        shown = ", ".join(f"{k} ({state['config'].get(k)!r} -> {now.get(k)!r})" for k in changed[:4])
        raise ResumeError(f"--resume: the config differs from the run being resumed: {shown}"
                          f"{' ...' if len(changed) > 4 else ''}; use the same config or start over")
    if state.get("data") != data:
        raise ResumeError("--resume: the corpus changed since the run began (its files, tokenizer or "
                          "block length); resume on the same corpus or start over")
    saved = (state["genes"], state.get("init"))
    if saved != (list(mapping.genes), list(mapping.init) if mapping.init else None):
        raise ResumeError(f"--resume: the run being resumed used mapping {saved[0]} "
                          f"(init {saved[1]}), not {list(mapping.genes)}; pass the same --mapping")


def _fresh_checkpoint_dir(ckpt_dir: Path) -> None:
    from layersearch.distill import latest_checkpoint

    if latest_checkpoint(ckpt_dir) is not None:
        state = _read_state(ckpt_dir) or {}
        raise ResumeError(f"{ckpt_dir} holds checkpoints of run {state.get('run_id', '?')}: "
                          "pass --resume to continue it, or delete the folder to start over")
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # leftovers of a run that never checkpointed


class _StopFileOnSigterm:
    """In the driver, for the run's whole life: SIGTERM becomes a stop file the workers poll
    (Ray Train workers are other processes). A stale stop file is removed on entry."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file

    def __enter__(self):
        self.stop_file.unlink(missing_ok=True)
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one kills, as usual

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)
        self.stop_file.unlink(missing_ok=True)


def distill(cfg: Config, mapping: str, output_dir: Path | str | None = None, resume: bool = False,
            progress: bool = True, parent_id: str | None = None, tags: dict | None = None,
            say: Say | None = None) -> Distilled:
    """Distil the teacher into a student along ``mapping`` (a name, file, gene list or search run id).

    ``output_dir`` defaults to ``distill.output_dir``; ``resume`` continues the run whose
    checkpoints are beside it. ``parent_id`` nests the run (``confirm`` does); ``tags`` are
    added to its lineage tags.
    """
    mapping_spec = mapping
    say = sink(say)
    output_dir = Path(output_dir if output_dir is not None else cfg.distill.output_dir)
    from layersearch.data.blocks import open_blocks
    from layersearch.distill import clean_temporary
    from layersearch.distill.job import (
        RESULT_FILE,
        STOP_FILE,
        DistillJob,
        raise_reported,
        run_worker,
        write_json_atomic,
    )
    from layersearch.distill.launch import fit_on_ray, start_ray, use_ray
    from layersearch.models import load_teacher_config, load_tokenizer
    from layersearch.resolve import lineage_tags, resolve_any_mapping
    from layersearch.tracking import Tracker, flatten

    tracker = Tracker(cfg.tracking)
    ckpt_dir = output_dir.with_name(output_dir.name + ".checkpoints")
    state = _read_state(ckpt_dir) if resume else None
    if resume and state is None:
        raise ResumeError(f"--resume: no run to resume in {ckpt_dir} ({RUN_STATE} missing); "
                          "drop --resume to start a new run")
    if not resume:
        _fresh_checkpoint_dir(ckpt_dir)
    num_teacher_layers = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
    # Tokenised here, once, into the datasets cache the workers then only open.
    data = open_blocks(cfg.corpus, load_tokenizer(cfg.teacher.model, cfg.teacher.revision),
                       cfg.distill.corpus_blocks, cfg.distill.train.seed)
    if state is not None:
        # Checked before the run is reopened: a wrong resume leaves the stopped run as it was.
        mapping = resolve_any_mapping(mapping_spec, cfg, num_teacher_layers)
        check_resume(state, cfg, mapping, data.fingerprint)
    on_ray = use_ray(cfg)
    if on_ray:
        start_ray(cfg)
    tags = {"layersearch.kind": "distill", **(tags or {})}
    with tracker.run(f"distill {mapping_spec}", tags=tags, parent_id=parent_id,
                     run_id=state["run_id"] if state else None) as run_id, \
            _StopFileOnSigterm(ckpt_dir / STOP_FILE):
        # From here on SIGTERM stops the workers at their next step (in-process, the
        # trainer's own handler takes over while it trains); the run then ends KILLED.
        if state is not None:
            tracker.clear_tag(run_id, "layersearch.error")  # the stopped part's reason
        else:
            # Resolved inside the run, so a bad mapping is on record as a FAILED run.
            mapping = resolve_any_mapping(mapping_spec, cfg, num_teacher_layers)
            tracker.log_params(run_id, {**flatten(cfg.to_dict()), **mapping_params(mapping),
                                        "output_dir": str(output_dir)})
            tracker.set_tags(run_id, lineage_tags(mapping_spec, cfg))
            tracker.log_text(run_id, cfg.to_yaml(), "config.yaml")
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            state = {"run_id": run_id, "config": _settings(cfg), "genes": list(mapping.genes),
                     "init": list(mapping.init) if mapping.init else None,
                     "mapping_spec": mapping_spec, "data": data.fingerprint, "logged_through": 0}
            write_json_atomic(ckpt_dir / RUN_STATE, state)
        clean_temporary(ckpt_dir)
        (ckpt_dir / RESULT_FILE).unlink(missing_ok=True)  # a stopped part's, not this one's
        say(f"MLflow run [bold]{run_id}[/] ({cfg.tracking.uri}); mapping {mapping}; "
            f"{cfg.distill.workers} worker(s)" + ("; resuming" if resume else ""))
        job = DistillJob(config=cfg.to_dict(), genes=list(mapping.genes),
                         init=list(mapping.init) if mapping.init else None,
                         checkpoint_dir=str(ckpt_dir.resolve()), output_dir=str(output_dir.resolve()),
                         progress=progress, workdir=os.getcwd(), data=data)
        result = fit_on_ray(cfg, job, f"distill-{run_id}") if on_ray else run_worker(job)
        raise_reported(result)
        _log_result(tracker, run_id, result, state["logged_through"])
        if result["stopped"]:
            state["logged_through"] = result["steps"]
            write_json_atomic(ckpt_dir / RUN_STATE, state)
            raise DistillStopped(f"stopped at step {result['steps']} of {result['total_steps']} "
                                 f"(SIGTERM); checkpoint in {ckpt_dir}; continue with --resume")
        out = output_dir
        from layersearch.model_card import write_model_card

        write_model_card(out, cfg, mapping, run_id, tracker.client.get_run(run_id).data.tags, result)
        tracker.log_artifact(run_id, out, "model")
        if cfg.tracking.registered_model:
            import mlflow

            mlflow.register_model(f"runs:/{run_id}/model", cfg.tracking.registered_model)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run finished; resume state is moot
    return Distilled(run_id, out, mapping)


def _log_result(tracker, run_id: str, result: dict, logged_through: int) -> None:
    """Curves and tokens/s past what an earlier, stopped part of this run already logged."""
    series = {(k if k == "lr" else f"loss/{k}"): [(s, v) for s, v in points if s > logged_through]
              for k, points in result["curves"].items()}
    series["tokens_per_second"] = [tuple(p) for p in result["speed"]]
    tracker.log_series(run_id, series)
    tracker.log_metrics(run_id, {"final_loss": result["curves"]["total"][-1][1]
                                 if result["curves"].get("total") else float("nan"),
                                 "mean_tokens_per_second": result["tokens"] / max(result["seconds"], 1e-9),
                                 "train_seconds": result["seconds"], "steps": result["steps"]})
    if not logged_through:
        tracker.log_dict(run_id, result["init_report"], "init_report.json")

