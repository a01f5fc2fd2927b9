"""The search's MLflow runs: the parent (config, params, per-generation metrics and plots)
and one child run per mapping.

Only the driver's process talks to MLflow, so nesting comes out right across
processes. A mapping keeps one child run for the whole search: a promotion up
a rung logs the new rung as the next step of the same run, and a resumed
search finds the runs it logged before (``load_children``) instead of logging
them twice.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from layersearch.config import Config
from layersearch.fidelity import fidelity_tag
from layersearch.fitness import Evaluation
from layersearch.search.progress import Progress
from layersearch.search.racing import Ladder
from layersearch.search.state import GAState
from layersearch.tracking import Tracker, flatten, log_evaluation


class SearchRuns:
    def __init__(self, tracker: Tracker, cfg: Config, spec: str, ladder: Ladder, progress: Progress):
        self.tracker = tracker
        self.cfg, self.spec, self.ladder, self.progress = cfg, spec, ladder, progress
        self.parent: str | None = None
        # mapping key -> (run id, status, highest rung logged)
        self.children: dict[str, tuple[str, str, int]] = {}

    def start_parent(self) -> str:
        return self.tracker.start(f"search {self.cfg.tracking.experiment}",
                                  tags={"layersearch.kind": "search", "layersearch.spec_key": self.spec})

    def log_params(self, run_id: str, num_teacher_layers: int, num_student_layers: int, strategy: str,
                   space_size: int) -> None:
        """The parent's params (the flattened config and what the search resolved), config.yaml, and
        whether the ladder found this proxy's ranking to agree with final students."""
        params = flatten(self.cfg.to_dict())
        params.update(spec_key=self.spec, num_teacher_layers=num_teacher_layers,
                      num_student_layers=num_student_layers, strategy_resolved=strategy, space_size=space_size,
                      rungs=json.dumps([len(self.ladder.units(r)) for r in range(len(self.ladder))]))
        self.tracker.log_params(run_id, params)
        self.tracker.log_text(run_id, self.cfg.to_yaml(), "config.yaml")
        from layersearch.fitness.spec import search_device

        self.tracker.set_tags(run_id, {"proxy_fidelity": fidelity_tag(self.cfg, search_device(self.cfg))})

    def load_children(self, parent: str) -> None:
        """The child runs a resumed search logged before."""
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
        for r in runs:
            key = r.data.params.get("mapping")
            # The winner's init baseline is a child too, named by its init layers: not a candidate.
            if key and r.data.tags.get("layersearch.kind", "evaluation") == "evaluation":
                rung = int(r.data.tags.get("layersearch.rung", self.ladder.top))
                self.children[key] = (r.info.run_id, r.info.status, rung)

    def log_child(self, ev: Evaluation, cached: bool, rung: int) -> None:
        """Log the mapping's child run: once per mapping, again when it goes up a rung."""
        key = ev.mapping.key
        existing = self.children.get(key)
        if existing and existing[1] == "FINISHED" and existing[2] >= rung:
            return
        if existing:  # left open by a crash, or promoted: the same run carries the new rung
            run_id = existing[0]
        else:
            run_id = self.tracker.start(f"eval {ev.mapping}", parent_id=self.parent,
                                        tags={"layersearch.kind": "evaluation",
                                              "layersearch.generation": self.progress.generation})
        self.tracker.set_tags(run_id, {"layersearch.rung": rung})
        log_evaluation(self.tracker, run_id, ev, cached=cached, step=rung)
        self.tracker.end(run_id, "FINISHED")
        self.children[key] = (run_id, "FINISHED", rung)

    def log_generation(self, parent: str, state: GAState, populations: list, evaluations: int,
                       num_student_layers: int, num_teacher_layers: int) -> None:
        """The generation's fitness metrics (step = generation), logbook, hall of fame and plots."""
        from layersearch import plots

        rec = state.logbook[-1]
        gen = rec["gen"]
        metrics = {k: rec[k] for k in ("best", "mean", "std", "min") if rec.get(k) is not None}
        metrics = {f"fitness_{k}": v for k, v in metrics.items()}
        metrics.update(evaluations=evaluations, cached=self.progress.cached, failed=self.progress.failed)
        self.tracker.log_metrics(parent, metrics, step=gen)
        self.tracker.log_dict(parent, state.logbook, "logbook.json")
        hof = [{"genes": list(g), "fitness": f} for g, f in state.hall_of_fame]
        self.tracker.log_dict(parent, hof, "hall_of_fame.json")
        with tempfile.TemporaryDirectory() as tmp:
            self.tracker.log_artifact(parent, plots.fitness_by_generation(
                state.logbook, Path(tmp) / "fitness_by_generation.png"), "plots")
            self.tracker.log_artifact(parent, plots.layer_usage(
                [[g[: num_student_layers] for g in pop] for pop in populations], num_teacher_layers,
                Path(tmp) / "layer_usage.png"), "plots")
