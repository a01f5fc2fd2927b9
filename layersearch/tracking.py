"""MLflow bookkeeping, for the driver process only.

Runs are addressed by id through ``MlflowClient`` rather than the fluent
API's global "active run", so a search can hold its parent run open while it
creates and closes one nested child per evaluation. Nesting is the
``mlflow.parentRunId`` tag, which the UI reads.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from layersearch.config import TrackingConfig
from layersearch.errors import UserError

PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
METRIC_BATCH = 1000  # and of metrics
PARAM_VALUE_MAX = 6000
EVALUATION_RECORD = "evaluation.json"


class TrackingError(UserError):
    pass


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class Tracker:
    def __init__(self, cfg: TrackingConfig):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = cfg.uri
        mlflow.set_tracking_uri(cfg.uri)
        self.client = MlflowClient(cfg.uri)
        try:
            exp = self.client.get_experiment_by_name(cfg.experiment)
            self.experiment_id = (
                exp.experiment_id if exp else self.client.create_experiment(cfg.experiment)
            )
            if exp is None or EXPERIMENT_KIND[0] not in exp.tags:
                # MLflow 3's UI opens an experiment of no kind in its GenAI view; these are
                # model-training runs, so the experiment says so and opens in that view.
                self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"tracking.uri: cannot reach MLflow at {cfg.uri}: {first}") from None

    # runs -----------------------------------------------------------------
    def start(self, name: str, parent_id: str | None = None, tags: dict | None = None) -> str:
        # Over REST, tag values must be strings (the SQLite store is more lenient).
        all_tags = {"mlflow.runName": name, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @contextmanager
    def run(self, name: str, parent_id: str | None = None, tags: dict | None = None,
            run_id: str | None = None) -> Iterator[str]:
        """A run that ends FINISHED, FAILED on an exception, KILLED on Ctrl-C.

        ``run_id`` reopens an existing run (resume) instead of creating one.
        """
        if run_id is None:
            run_id = self.start(name, parent_id, tags)
        else:
            self.client.update_run(run_id, status="RUNNING")
        try:
            yield run_id
        except KeyboardInterrupt:
            self.end(run_id, "KILLED")
            raise
        except BaseException as exc:
            # The reason travels with the run, so the UI shows why it failed
            # (or why it stopped: an exception may name its own status, e.g. KILLED).
            self.client.set_tag(run_id, "layersearch.error", f"{type(exc).__name__}: {exc}"[:5000])
            self.end(run_id, getattr(exc, "run_status", "FAILED"))
            raise
        self.end(run_id, "FINISHED")

    # data -----------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [
            Param(k, (v if isinstance(v, str) else json.dumps(v))[:PARAM_VALUE_MAX])
            for k, v in params.items()
        ]
        for i in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(run_id, params=items[i:i + PARAM_BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.log_series(run_id, {k: [(step, v)] for k, v in metrics.items()})

    def log_series(self, run_id: str, series: dict[str, list[tuple[int, float]]]) -> None:
        """Many (step, value) points per key in as few requests as MLflow allows."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, int(step))
            for key, points in series.items()
            for step, value in points
        ]
        for i in range(0, len(items), METRIC_BATCH):
            self.client.log_batch(run_id, metrics=items[i:i + METRIC_BATCH])

    def clear_tag(self, run_id: str, key: str) -> None:
        """Remove a tag if the run has it (a resumed run drops its stopped part's error)."""
        if key in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, name)
            Path(target).write_text(text)
            self.client.log_artifact(run_id, target)

    def log_dict(self, run_id: str, data: Any, name: str) -> None:
        self.log_text(run_id, json.dumps(data, indent=2), name)


def log_evaluation(tracker: Tracker, run_id: str, ev, cached: bool = False, step: int | None = None) -> None:
    """One evaluation's record: genes as params; scores, interval and baselines as metrics;
    curves; status tags; and the whole record (per-seed dev predictions) as ``evaluation.json``,
    so intervals and paired comparisons can be recomputed from the store alone."""
    params = {f"gene_{m}": g for m, g in enumerate(ev.genes, 1)}
    params.update({f"init_{m}": g for m, g in enumerate(ev.init or [], 1)})
    params.update(mapping=ev.mapping.key, spec_key=ev.spec_key)
    tracker.log_params(run_id, params)
    metrics = {f"score/{k}": v for k, v in ev.scores.items()}  # chance-corrected (Matthews)
    metrics.update({f"score_std/{k}": v for k, v in ev.scores_std.items()})
    metrics.update(ev.metrics)  # raw GLUE metrics, "<task>/<metric>"
    metrics.update({f"{k}/majority": v for k, v in ev.majority.items()})
    metrics.update({f"time/{k}": v for k, v in ev.timings.items()})
    if ev.fitness is not None:
        metrics["fitness"] = ev.fitness
        metrics["fitness_std"] = ev.fitness_std or 0.0
        if ev.fitness_ci_low is not None:
            metrics.update(fitness_ci_low=ev.fitness_ci_low, fitness_ci_high=ev.fitness_ci_high,
                           fitness_seeds=ev.fitness_seeds)
    # A racing promotion logs the same run again one rung up: the step is the rung.
    tracker.log_metrics(run_id, metrics, step=step or 0)
    tracker.log_series(run_id, ev.curves)
    tracker.set_tags(run_id, {"layersearch.status": ev.status, "layersearch.worker": ev.worker,
                              "layersearch.evaluation": ev.key, "layersearch.cached": cached})
    if ev.units:
        record = ev.to_dict()
        record.pop("curves")  # already metrics series; the rest is what statistics need
        tracker.log_dict(run_id, record, EVALUATION_RECORD)
    if ev.error:
        tracker.log_text(run_id, ev.error, "error.txt")


def load_evaluation(tracker: Tracker, run_id: str):
    """The evaluation record an evaluation run logged, or None if it has none."""
    from layersearch.fitness import Evaluation

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(run_id, EVALUATION_RECORD, tmp)
        except Exception:
            return None
        return Evaluation.from_dict(json.loads(Path(path).read_text()))


def runs_tagged(client, key: str, value: str) -> list:
    """Runs of every active experiment whose tag ``key`` is ``value``, oldest first.

    Every experiment, not only the search's: a distillation may be logged under
    another ``tracking.experiment`` than the search that chose its mapping.
    """
    if "'" in value:
        raise TrackingError(f"tag value {value!r} holds a quote; MLflow filters cannot match it")
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return list(client.search_runs(experiments, f"tags.`{key}` = '{value}'",
                                   max_results=50000, order_by=["attributes.start_time ASC"]))
