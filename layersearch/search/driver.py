"""The search driver: DEAP proposes, the Ray pool evaluates, MLflow records.

Only this process talks to MLflow. Per generation it (1) reads the
population's pending genomes, (2) takes every one it can from the evaluation
cache, (3) sends the rest to the pool, writing each result to the cache and to
a nested child run the moment it arrives, and (4) advances the GA and
checkpoints its state as the parent run's ``ga_state.json``.

Resume after a crash (even ``kill -9``): the parent run's last checkpoint
gives the GA state at the start of the interrupted generation; finished
evaluations come back from the cache, and child runs already logged are
reused, so nothing is run or logged twice and the GA, being seeded, replays
the same generations an uninterrupted search would have.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from layersearch.config import Config
from layersearch.errors import UserError
from layersearch.fitness import Evaluation, compare, search_device, spec_key, units_of
from layersearch.mapping import Mapping
from layersearch.search.cache import EvaluationCache
from layersearch.search.ga import GAState, GeneticSearch
from layersearch.tracking import Tracker, flatten, log_evaluation

CHECKPOINT = "ga_state.json"
CHECKPOINT_FORMAT = 2
# search.* settings a resumed search may change: they do not steer the GA.
# (A higher generations extends a finished search.)
RESUMABLE_CHANGES = ("cache_dir", "generations")


class ResumeError(UserError):
    pass


@dataclass
class Progress:
    generation: int = 0
    generations: int = 0
    done: int = 0
    running: int = 0
    cached: int = 0
    failed: int = 0
    best: float | None = None
    best_genes: list[int] | None = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class SearchResult:
    run_id: str
    best: Evaluation | None
    state: GAState
    evaluated: int  # evaluations run in this process (not from the cache)
    seconds: float
    versus_uniform: object = None  # a fitness.Comparison of the best with uniform, when both were evaluated


class SearchDriver:
    def __init__(self, cfg: Config, evaluator_factory: Callable | None = None,
                 on_event: Callable[[str, Progress, dict], None] | None = None,
                 num_teacher_layers: int | None = None, pool_resources: dict | None = None):
        self.cfg = cfg
        self.factory = evaluator_factory
        self.on_event = on_event or (lambda *_: None)
        self.tracker = Tracker(cfg.tracking)
        if num_teacher_layers is None:
            from layersearch.models import load_teacher_config

            num_teacher_layers = load_teacher_config(cfg.teacher.model, cfg.teacher.revision).num_hidden_layers
        self.n = num_teacher_layers
        self.m = cfg.student.num_layers
        self.ga = GeneticSearch(cfg.search, self.m, self.n)
        self.spec = spec_key(cfg, search_device(cfg))
        self.units = units_of(cfg)
        self.cache = EvaluationCache(cfg.search.cache_dir, self.spec)
        self.pool_resources = pool_resources
        self.progress = Progress(generations=cfg.search.generations)
        self.children: dict[str, tuple[str, str]] = {}  # mapping key -> (run id, status)
        self.evaluations: dict[str, Evaluation] = {}  # this search's results by mapping key
        self.ran = 0

    # --- MLflow -------------------------------------------------------------
    def _start_parent(self) -> str:
        return self.tracker.start(f"search {self.cfg.tracking.experiment}",
                                  tags={"layersearch.kind": "search", "layersearch.spec_key": self.spec})

    def _log_parent_params(self, run_id: str) -> None:
        params = flatten(self.cfg.to_dict())
        params.update(spec_key=self.spec, num_teacher_layers=self.n, num_student_layers=self.m)
        self.tracker.log_params(run_id, params)
        self.tracker.log_text(run_id, self.cfg.to_yaml(), "config.yaml")

    def _load_children(self, parent: str) -> None:
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
        for r in runs:
            key = r.data.params.get("mapping")
            if key:
                self.children[key] = (r.info.run_id, r.info.status)

    def _record(self, parent: str, ev: Evaluation, cached: bool) -> None:
        """Cache, then log a child run once per distinct mapping in this search."""
        if not ev.spec_key:
            ev.spec_key = self.spec
        if not cached:
            self.cache.put(ev)
        key = ev.mapping.key
        self.evaluations[key] = ev
        existing = self.children.get(key)
        if existing and existing[1] == "FINISHED":
            return
        if existing:  # a child left open by a crash: complete it rather than add a twin
            run_id = existing[0]
        else:
            run_id = self.tracker.start(f"eval {ev.mapping}", parent_id=parent,
                                        tags={"layersearch.kind": "evaluation",
                                              "layersearch.generation": self.progress.generation})
        log_evaluation(self.tracker, run_id, ev, cached=cached)
        self.tracker.end(run_id, "FINISHED")
        self.children[key] = (run_id, "FINISHED")

    def _checkpoint(self, parent: str, state: GAState, populations: list) -> None:
        data = {"format": CHECKPOINT_FORMAT, "spec_key": self.spec, "search": self._search_settings(),
                "units": [list(u) for u in self.units], "ga": state.to_dict(), "populations": populations}
        self.tracker.log_text(parent, json.dumps(data), CHECKPOINT)

    def _search_settings(self) -> dict:
        return {k: v for k, v in self.cfg.search.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}

    def _load_checkpoint(self, parent: str) -> tuple[GAState, list]:
        """The GA state saved by the search being resumed; any doubt about it is an error.

        Silently starting at generation 0 would throw the search's progress away
        and, with changed settings, mix two searches in one run.
        """
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.tracker.client.download_artifacts(parent, CHECKPOINT, tmp)
            except Exception:
                raise ResumeError(f"--resume {parent}: the run has no {CHECKPOINT}; is it a search run? "
                                  "Start a new search instead") from None
            try:
                data = json.loads(Path(path).read_text())
                if data.get("format") != CHECKPOINT_FORMAT:
                    raise ValueError(f"format {data.get('format')}, this version reads {CHECKPOINT_FORMAT}")
                state, populations = GAState.from_dict(data["ga"]), data["populations"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ResumeError(f"--resume {parent}: its {CHECKPOINT} cannot be read ({exc}); "
                                  "start a new search") from None
        if data.get("spec_key") != self.spec:
            raise ResumeError(
                f"--resume {parent}: the proxy spec changed since that search started "
                f"({data.get('spec_key')} -> {self.spec}); resume with the same config"
            )
        now = self._search_settings()
        changed = sorted(k for k in set(now) | set(data["search"]) if now.get(k) != data["search"].get(k))
        if changed:
            was = ", ".join(f"search.{k}: {data['search'].get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise ResumeError(f"--resume {parent}: search settings changed since it started ({was}); "
                              "resume with the same settings or start a new search")
        if data.get("units") != [list(u) for u in self.units]:
            # Fitnesses from other seeds would be ranked against these as if alike.
            raise ResumeError(f"--resume {parent}: proxy.slice_seeds or tasks.finetune.seeds changed since "
                              "it started; resume with the same seeds or start a new search")
        return state, populations

    def _log_generation(self, parent: str, state: GAState, populations: list) -> None:
        from layersearch import plots

        rec = state.logbook[-1]
        gen = rec["gen"]
        metrics = {k: rec[k] for k in ("best", "mean", "std", "min") if rec.get(k) is not None}
        metrics = {f"fitness_{k}": v for k, v in metrics.items()}
        metrics.update(evaluations=len(self.evaluations), cached=self.progress.cached,
                       failed=self.progress.failed)
        self.tracker.log_metrics(parent, metrics, step=gen)
        self.tracker.log_dict(parent, state.logbook, "logbook.json")
        hof = [{"genes": list(g), "fitness": f} for g, f in state.hall_of_fame]
        self.tracker.log_dict(parent, hof, "hall_of_fame.json")
        with tempfile.TemporaryDirectory() as tmp:
            self.tracker.log_artifact(parent, plots.fitness_by_generation(
                state.logbook, Path(tmp) / "fitness_by_generation.png"), "plots")
            self.tracker.log_artifact(parent, plots.layer_usage(
                populations, self.n, Path(tmp) / "layer_usage.png"), "plots")

    def _finish(self, parent: str, state: GAState) -> tuple[Evaluation | None, object]:
        """Log the best mapping and its paired comparison with uniform; returns both."""
        from layersearch.mapping import save_mapping

        best = self.ga.best(state)
        if best is None:
            return None, None
        genes, fitness = best
        mapping = Mapping(tuple(genes), self.n)
        ev = self._evaluation_of(mapping)
        versus = self._versus_uniform(ev)
        extra = {}
        if ev is not None and ev.fitness_ci_low is not None:
            extra.update(fitness_ci=[ev.fitness_ci_low, ev.fitness_ci_high], fitness_seeds=ev.fitness_seeds)
        if versus is not None:
            extra["versus_uniform"] = versus.to_dict()
            e = versus.estimate
            self.tracker.set_tags(parent, {"verdict": versus.verdict})
            self.tracker.log_metrics(parent, {"winner_minus_uniform": e.mean, "winner_minus_uniform_ci_low": e.low,
                                              "winner_minus_uniform_ci_high": e.high})
        with tempfile.TemporaryDirectory() as tmp:
            path = save_mapping(mapping, Path(tmp) / "best_mapping.json", self.cfg.teacher.model,
                                sorted(self.cfg.objective.terms), fitness=fitness,
                                scores=ev.scores if ev else {}, search_run_id=parent,
                                spec_key=self.spec, **extra)
            self.tracker.log_artifact(parent, path)
        self.tracker.set_tags(parent, {"layersearch.best_mapping": mapping.key,
                                       "layersearch.best_genes": str(mapping)})
        metrics = {"best_fitness": fitness}
        if "fitness_ci" in extra:
            metrics.update(best_fitness_ci_low=extra["fitness_ci"][0], best_fitness_ci_high=extra["fitness_ci"][1])
        self.tracker.log_metrics(parent, metrics)
        return ev, versus

    def _evaluation_of(self, mapping: Mapping) -> Evaluation | None:
        """This search's record of ``mapping``: from this process, the cache, or its child run."""
        from layersearch.fitness import summarize, unit_key
        from layersearch.tracking import load_evaluation

        ev = self.evaluations.get(mapping.key) or self.cache.lookup(
            mapping, self.units, self.cfg.tasks.names, self.cfg.tasks.weights)[0]
        if ev is None and mapping.key in self.children:  # resumed with another cache_dir
            ev = load_evaluation(self.tracker, self.children[mapping.key][0])
            if ev is not None:
                wanted = [unit_key(s, f) for s, f in self.units]
                ev = summarize(ev.restricted(wanted), self.cfg.tasks.names, self.cfg.tasks.weights)
        return ev

    def _versus_uniform(self, best: Evaluation | None):
        """The winner minus TinyBERT's uniform mapping, paired, when the search evaluated both.

        The winner was chosen as the best of every mapping evaluated, on these
        same seeds, so its test is one of a family: Holm runs over every
        evaluated mapping against uniform, which keeps "better" honest after
        the selection (the difference itself still carries the winner's luck).
        """
        from layersearch.fitness import PairingError
        from layersearch.mapping import heuristic

        if best is None or not best.units:
            return None
        uniform = heuristic("uniform", self.m, self.n)
        if uniform == best.mapping:
            return None
        ref = self._evaluation_of(uniform)
        if ref is None or not ref.ok or not ref.units:
            return None
        family = []
        for key in sorted(set(self.children) | set(self.evaluations)):
            if key in (uniform.key, best.mapping.key):
                continue
            ev = self._evaluation_of(Mapping(tuple(int(g) for g in key.split(":")[1].split("-")), self.n))
            if ev is not None and ev.ok and ev.units:
                family.append((str(ev.mapping), ev))
        try:
            comparisons = compare(("uniform", ref), [(str(best.mapping), best), *family],
                                  self.cfg.tasks.names, self.cfg.tasks.weights)
        except PairingError as exc:  # e.g. evaluators that disagreed on the spec
            self.on_event("warning", self.progress, {"message": f"no verdict against uniform: {exc}"})
            return None
        return comparisons[0]

    # --- the loop -------------------------------------------------------------
    def run(self, resume_run_id: str | None = None) -> SearchResult:
        from layersearch.search.pool import EvaluatorPool

        began = time.perf_counter()
        state, populations = None, []
        if resume_run_id:
            try:
                self.tracker.client.get_run(resume_run_id)
            except Exception:
                raise ResumeError(f"--resume: no run {resume_run_id} in {self.cfg.tracking.uri}") from None
            parent = resume_run_id
            state, populations = self._load_checkpoint(parent)
            self._load_children(parent)
        else:
            parent = self._start_parent()
        pool = None
        with self.tracker.run("search", run_id=parent) as parent:
            if not resume_run_id:
                self._log_parent_params(parent)
            if state is None:
                state = self.ga.start()
                self._checkpoint(parent, state, populations)
            self.on_event("start", self.progress, {"run_id": parent, "resumed": bool(resume_run_id)})
            while not self.ga.done(state):
                self.progress.generation = state.generation
                fitness: dict = {}
                todo, priors = [], {}
                for genes in self.ga.pending(state):
                    mapping = Mapping(genes, self.n)
                    hit, partial = self.cache.lookup(mapping, self.units, self.cfg.tasks.names,
                                                     self.cfg.tasks.weights)
                    if hit is not None:
                        self.progress.cached += 1
                        self._record(parent, hit, cached=True)
                        fitness[genes] = hit.fitness
                        self._note(hit, "cached")
                    else:
                        todo.append(mapping)
                        if partial is not None:  # its stored seeds are reused, the rest run
                            priors[mapping.key] = partial
                if todo:
                    if pool is None:
                        pool = EvaluatorPool(self.cfg, self.factory, self.pool_resources, self.spec)

                    def on_result(ev: Evaluation, fitness: dict = fitness) -> None:
                        self.ran += 1
                        self.progress.running -= 1
                        self._record(parent, ev, cached=False)
                        fitness[tuple(ev.genes)] = ev.fitness
                        self._note(ev, "done")

                    def on_started(kind: str, mapping: Mapping) -> None:
                        if kind == "started":
                            self.progress.running += 1
                        else:
                            self.progress.running -= 1
                        self.on_event(kind, self.progress, {"genes": list(mapping.genes)})

                    pool.run(todo, on_result, on_started, priors)
                self.ga.tell(state, fitness)
                populations.append([list(g) for g in state.population])
                state = self.ga.advance(state)
                self._log_generation(parent, state, populations)
                self._checkpoint(parent, state, populations)
                self.on_event("generation", self.progress, {"record": state.logbook[-1]})
            best, versus = self._finish(parent, state)
            if pool is not None:
                pool.shutdown()
        return SearchResult(parent, best, state, self.ran, time.perf_counter() - began, versus)

    def _note(self, ev: Evaluation, kind: str) -> None:
        p = self.progress
        p.done += 1
        if not ev.ok:
            p.failed += 1
        elif p.best is None or ev.fitness > p.best:
            p.best, p.best_genes = ev.fitness, list(ev.genes)
        self.on_event(kind, p, {"genes": ev.genes, "fitness": ev.fitness, "status": ev.status})
