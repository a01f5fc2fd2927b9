"""The search driver: DEAP proposes, racing decides who gets more seeds, the Ray pool
evaluates, MLflow records.

Only this process talks to MLflow. Per generation it (1) takes the
population's pending genomes, (2) races them up the fidelity rungs
(racing.py): every rung's scores come from the evaluation cache where it has
them and from the pool otherwise, each result written to the cache and to a
nested child run the moment it arrives, (3) promotes hall-of-fame members to
the top rung before they can be called best, and (4) advances the GA and
checkpoints its state as the parent run's ``ga_state.json``. After the last
generation a final race scores the top mappings and the heuristics at the top
rung, and the winner is tested against uniform.

Resume after a crash (even ``kill -9``, even mid-rung): the parent run's last
checkpoint gives the GA state at the start of the interrupted generation; the
race replays from the cache (it is a deterministic function of the scores), so
finished evaluations are not run again, child runs already logged are reused,
and the GA, being seeded, replays the same generations an uninterrupted search
would have.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from layersearch.config import Config
from layersearch.errors import UserError
from layersearch.fitness import Evaluation, compare, search_device, spec_key, summarize, unit_key, units_of
from layersearch.fitness.aggregate import gain_word
from layersearch.mapping import Mapping
from layersearch.search.cache import EvaluationCache
from layersearch.search.ga import FAILED, GAState, GeneticSearch, update_hall_of_fame
from layersearch.search.progress import Progress, Work
from layersearch.search.racing import Ladder, Score, race
from layersearch.search.selection import adjusted_means, choose_winner, elites_to_promote, final_race_entrants
from layersearch.tracking import Tracker, flatten, log_evaluation

CHECKPOINT = "ga_state.json"
CHECKPOINT_FORMAT = 3
# search.* settings a resumed search may change: they do not steer the GA.
# (A higher generations or budget extends a finished search.)
RESUMABLE_CHANGES = ("cache_dir", "generations", "budget")

Genome = tuple[int, ...]


class ResumeError(UserError):
    pass


# What the winner's exported intervals are (fitness_ci, versus_uniform, the winner_minus_uniform metrics).
RAW_INTERVALS = ("raw: not adjusted for choosing the winner on these units (upward-biased); "
                 "the verdict's p is Holm-corrected over the finalists")


@dataclass
class SearchResult:
    run_id: str
    best: Evaluation | None
    state: GAState
    evaluated: int  # evaluations run in this process (not from the cache)
    seconds: float
    versus_uniform: object = None  # a fitness.Comparison of the best with uniform, when both were evaluated
    strategy: str = "ga"
    winner_is_uniform: bool = False
    gain: object = None  # the winner's distillation gain over its init (a stats.Estimate), if measured
    # When uniform itself wins: the runner-up against it (a fitness.Comparison), how clear the win is.
    runner_up: object = None


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
        self.space = self.ga.space
        self.ladder = Ladder.of(cfg)
        self.spec = spec_key(cfg, search_device(cfg))
        self.units = units_of(cfg)
        self.cache = EvaluationCache(cfg.search.cache_dir, self.spec)
        self.pool_resources = pool_resources
        self.pool = None
        self.parent: str | None = None
        self.progress = Progress(generations=self.ga.generations, rungs=len(self.ladder))
        # mapping key -> (run id, status, highest rung logged)
        self.children: dict[str, tuple[str, str, int]] = {}
        self.evaluations: dict[str, Evaluation] = {}  # this search's fullest record by mapping key
        self.ran = 0
        self.gain = None
        self.runner_up = None

    # --- genomes, rungs, standings ------------------------------------------------
    def _mapping(self, genome) -> Mapping:
        return self.space.mapping(genome)

    def _uniform(self) -> Mapping:
        from layersearch.mapping import heuristic

        uniform = heuristic("uniform", self.m, self.n)
        return uniform.with_init(uniform.genes) if self.space.search_init else uniform

    def _stored(self, mapping: Mapping) -> Evaluation | None:
        """The fullest record of ``mapping`` this search can see (this process, or the cache)."""
        here, cached = self.evaluations.get(mapping.key), self.cache.get(mapping)
        records = [r for r in (here, cached) if r is not None]
        if not records:
            return None
        # A failure the same inputs would repeat is final; a transient one (a lost worker,
        # out of memory) never shadows the seeds already proven.
        final = [r for r in records if not r.ok and r.cacheable]
        if final:
            return final[0]
        good = [r for r in records if r.ok]
        return max(good, key=lambda r: len(r.units)) if good else records[0]

    def _rung_of(self, mapping: Mapping) -> int:
        """The highest rung ``mapping`` holds; a final failure counts as the top."""
        ev = self._stored(mapping)
        if ev is None:
            return -1
        if not ev.ok and not ev.cacheable:  # a transient failure with nothing proven
            return -1
        if not ev.ok or not ev.units:
            return self.ladder.top
        return self.ladder.held(set(ev.units))

    def _score(self, mapping: Mapping, rung: int) -> tuple[Score, Evaluation | None]:
        ev = self._stored(mapping)
        if ev is None:
            return Score(None), None
        ev = summarize(ev.restricted([unit_key(*u) for u in self.ladder.units(rung)]),
                       self.cfg.tasks.scored, self.cfg.tasks.scored_weights) if ev.ok and ev.units else ev
        return Score.of(ev), ev

    # --- MLflow -------------------------------------------------------------
    def _start_parent(self) -> str:
        return self.tracker.start(f"search {self.cfg.tracking.experiment}",
                                  tags={"layersearch.kind": "search", "layersearch.spec_key": self.spec})

    def _log_parent_params(self, run_id: str) -> None:
        params = flatten(self.cfg.to_dict())
        params.update(spec_key=self.spec, num_teacher_layers=self.n, num_student_layers=self.m,
                      strategy_resolved=self.ga.strategy, space_size=self.space.size(),
                      rungs=json.dumps([len(self.ladder.units(r)) for r in range(len(self.ladder))]))
        self.tracker.log_params(run_id, params)
        self.tracker.log_text(run_id, self.cfg.to_yaml(), "config.yaml")
        evidence = self.cfg.proxy.evidence
        # Whether the ladder found this proxy's ranking to agree with final students.
        self.tracker.set_tags(run_id, {"proxy_fidelity": "unmeasured" if evidence is None else
                                       "validated" if evidence.validated else "unvalidated"})

    def _load_children(self, parent: str) -> None:
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
        for r in runs:
            key = r.data.params.get("mapping")
            # The winner's init baseline is a child too, named by its init layers: not a candidate.
            if key and r.data.tags.get("layersearch.kind", "evaluation") == "evaluation":
                rung = int(r.data.tags.get("layersearch.rung", self.ladder.top))
                self.children[key] = (r.info.run_id, r.info.status, rung)

    def _record(self, ev: Evaluation, cached: bool, rung: int) -> None:
        """Cache, then log the mapping's child run: once per mapping, again when it goes up a rung."""
        if not ev.spec_key:
            ev.spec_key = self.spec
        if not cached:
            self.cache.put(ev)
        key = ev.mapping.key
        known = self.evaluations.get(key)
        if known is None or not known.ok or (ev.ok and len(ev.units) >= len(known.units)) or \
                (not ev.ok and ev.cacheable):
            self.evaluations[key] = ev
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

    def _checkpoint(self, parent: str, state: GAState, populations: list) -> None:
        # The resolved strategy too: auto decides from generations and budget, which a resume may raise.
        data = {"format": CHECKPOINT_FORMAT, "spec_key": self.spec, "search": self._search_settings(),
                "strategy": self.ga.strategy, "units": [list(u) for u in self.units], "ga": state.to_dict(),
                "populations": populations}
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
        if data.get("strategy") not in (None, self.ga.strategy):  # keep what auto chose at the start
            self.ga = GeneticSearch(self.cfg.search, self.m, self.n, strategy=data["strategy"])
            self.space = self.ga.space
            self.progress.generations = self.ga.generations
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
                [[g[: self.m] for g in pop] for pop in populations], self.n, Path(tmp) / "layer_usage.png"),
                "plots")

    # --- evaluating at a rung ----------------------------------------------------
    def _score_at(self, genomes: list, rung: int) -> dict:
        """Every genome's score on ``rung``'s units: from the cache where it can, else from the pool."""
        from layersearch.search.pool import EvaluatorPool

        units = self.ladder.units(rung)
        p = self.progress
        p.rung, p.rung_seeds = rung, len(units)
        scores: dict = {}
        todo, priors, work = [], {}, {}
        for genome in genomes:
            mapping = self._mapping(genome)
            hit, partial = self.cache.lookup(mapping, units, self.cfg.tasks.scored, self.cfg.tasks.scored_weights)
            if hit is not None:
                p.cached += 1
                self._record(hit, cached=True, rung=rung)
                scores[tuple(genome)] = Score.of(hit)
                self._note(hit, "cached", len(units))
                continue
            todo.append(mapping)
            if partial is not None:  # its stored seeds are reused, the rest run
                priors[mapping.key] = partial
            start = self.ladder.held(set(partial.units)) if partial is not None and partial.units else -1
            work[mapping.key] = Work(*self.ladder.work(start, rung))
        if not todo:
            return scores
        p.queue(len(todo), sum(work.values(), Work()))
        self.on_event("rung", p, {"rung": rung, "entrants": len(genomes), "to_run": len(todo)})
        if self.pool is None:
            self.pool = EvaluatorPool(self.cfg, self.factory, self.pool_resources, self.spec)

        def on_result(ev: Evaluation) -> None:
            self.ran += 1
            prior = priors.get(ev.mapping.key)
            p.finished_job(work.get(ev.mapping.key, Work()), ev if ev.ok else None,
                           reused=set(prior.units) if prior is not None else set())
            self._record(ev, cached=False, rung=rung)
            scores[self.space.genome(ev.mapping)] = Score.of(ev)
            self._note(ev, "done", len(units))

        def on_started(kind: str, mapping: Mapping) -> None:
            if kind == "started":
                p.started_job()
            else:  # a lost worker: the job goes back to the queue
                p.running, p.queued = max(0, p.running - 1), p.queued + 1
            self.on_event(kind, p, {"genes": list(mapping.genes)})

        # The whole ladder is the config's own units: evaluators need not be told.
        limit = None if sorted(units) == sorted(self.units) else units
        self.pool.run(todo, on_result, on_started, priors, units=limit)
        return scores

    def _note(self, ev: Evaluation, kind: str, seeds: int) -> None:
        p = self.progress
        p.done += 1
        if not ev.ok:
            p.failed += 1
        else:
            p.offer_best(self.space.genome(ev.mapping), ev.fitness, ev.fitness_ci_low, ev.fitness_ci_high, seeds)
        self.on_event(kind, p, {"genes": list(self.space.genome(ev.mapping)), "fitness": ev.fitness,
                                "low": ev.fitness_ci_low, "high": ev.fitness_ci_high, "seeds": seeds,
                                "status": ev.status, "rung": p.rung})

    def _plan(self, state: GAState, entrants: int = 0) -> None:
        """What the ETA expects after the current batch: the generations left and the final race."""
        left = max(0, self.ga.generations - state.generation - 1)
        per_gen = Work(*self.ladder.batch_work(self._new_per_generation(state))) \
            if self.ga.strategy != "exhaustive" else Work()
        # The rest of this batch's race: the promotions it should make after the current rung.
        rest = Work()
        alive = entrants
        for r in range(self.progress.rung + 1, len(self.ladder)):
            alive = -(-alive // self.ladder.reduction)
            rest = rest + Work(*[alive * x for x in self.ladder.work(r - 1, r)])
        final = Work()
        for mapping in self._final_race_mappings(state):
            final = final + Work(*self.ladder.work(self._rung_of(mapping), self.ladder.top))
        self.progress.future = rest + Work(per_gen.distills * left, per_gen.units * left) + final

    def _new_per_generation(self, state: GAState) -> int:
        """New genomes a later generation should bring: as many as this one did, or for
        generation 0 what breeding leaves room for (elites and parents carry their scores)."""
        cfg = self.cfg.search
        if state.generation > 0 or self.ga.strategy == "random":
            return len(self.ga.pending(state)) or 1
        if cfg.variant == "mu_plus_lambda":
            return cfg.offspring or cfg.population
        return cfg.population - min(cfg.hall_of_fame, cfg.population - 1)

    # --- racing, elites, the final race ----------------------------------------
    def _race(self, genomes: list, state: GAState) -> None:
        def on_rung(rung: int, entrants: list) -> None:
            self.progress.rung = rung
            self._plan(state, len(entrants))

        race(genomes, self.ladder, self._score_at, on_rung)

    def _adjusted(self, state: GAState) -> dict[Genome, float | None]:
        """The GA's fitness for every genome of this search: its mean over every unit it
        holds, corrected for the units' shared effects (selection.adjusted_means), so genomes
        raced to different rungs rank fairly; None for a failure."""
        from layersearch.fitness.aggregate import unit_fitness

        genomes = ({tuple(g) for g in state.population} | {g for g, _ in state.archive}
                   | {g for g, _ in state.hall_of_fame}
                   | {self.space.genome(Mapping.from_key(k)) for k in self.evaluations})
        wanted = [unit_key(s, f) for s, f in self.units]
        table, plain = {}, {}
        for genome in sorted(genomes):  # sorted: the same sums in the same order after a resume
            ev = self._stored(self._mapping(genome))
            if ev is None:
                continue
            if not ev.ok or not ev.units:  # a failure, or a record without units (a test double)
                plain[genome] = ev.fitness if ev.ok else None
                continue
            ev = ev.restricted(wanted)
            table[genome] = unit_fitness(ev, self.cfg.tasks.scored, self.cfg.tasks.scored_weights)
        top = [unit_key(*u) for u in self.ladder.units(self.ladder.top)]
        return plain | adjusted_means(table, top)

    def _rescore(self, state: GAState, pending: list | None = None) -> None:
        adjusted = self._adjusted(state)
        if pending is not None:
            self.ga.tell(state, {tuple(g): adjusted.get(tuple(g)) for g in pending})
        self.ga.rescore(state, {g: f for g, f in adjusted.items() if f is not None})

    def _settle_elites(self, state: GAState) -> None:
        """Promote hall-of-fame members to the top rung before they can be called best.

        A member that scored well on few seeds may have been lucky; once it has
        every seed it keeps its place only if it still ranks there.
        """
        top = self.ladder.top
        tried: set = set()
        while True:
            scored = [(tuple(g), f) for g, f in zip(state.population, state.fitness, strict=True)]
            hof = update_hall_of_fame(state.hall_of_fame, scored, self.cfg.search.hall_of_fame)
            below, stuck = elites_to_promote(hof, lambda g: self._rung_of(self._mapping(g)), top, tried, FAILED)
            if stuck:  # a promotion that failed for a transient reason
                self.on_event("warning", self.progress, {"message": "could not promote "
                              f"{[list(g) for g in stuck]} to every seed; it keeps its score"})
            if not below:
                return
            tried.update(below)
            self.on_event("elites", self.progress, {"genomes": [list(g) for g in below]})
            self._score_at(below, top)
            self._rescore(state)

    def _final_race_mappings(self, state: GAState) -> list[Mapping]:
        """The search's top mappings (by their standing) and the heuristics, uniform first."""
        standing = dict(state.archive) | dict(state.hall_of_fame)
        heuristics = [tuple(g) for g in (self.space.genome(self._uniform()), *self.space.heuristic_genomes())]
        entrants = final_race_entrants(standing, self.cfg.search.final_race, heuristics, FAILED)
        return [self._mapping(g) for g in entrants]

    def _final_race(self, state: GAState) -> None:
        """Race the top mappings and the heuristics at the top rung (post-selection)."""
        entrants = self._final_race_mappings(state)
        if not entrants:
            return
        self.progress.phase = "final race"
        self.progress.future = Work()
        self.on_event("final", self.progress, {"mappings": [str(m) for m in entrants]})
        self._score_at([self.space.genome(m) for m in entrants], self.ladder.top)
        self._rescore(state)

    def _top_means(self) -> dict[str, float | None]:
        """Each mapping that reached the top rung: its mean there (None for a failure)."""
        means = {}
        for key in set(self.evaluations) | set(self.children):
            mapping = Mapping.from_key(key)
            if self._rung_of(mapping) >= self.ladder.top:
                score, _ = self._score(mapping, self.ladder.top)
                means[key] = score.mean if score.ok else None
        return means

    def _winner(self, exclude: str | None = None) -> Mapping | None:
        """The best mean among the mappings that reached the top rung (other than ``exclude``)."""
        best = choose_winner({k: v for k, v in self._top_means().items() if k != exclude})
        return None if best is None else Mapping.from_key(best)

    def _finish(self, parent: str, mapping: Mapping | None) -> tuple[Evaluation | None, object]:
        """Log the winner and its paired comparison with uniform; returns both."""
        from layersearch.mapping import save_mapping

        if mapping is None:
            return None, None
        ev = self._evaluation_of(mapping)
        versus = self._versus_uniform(ev)
        extra = {}
        if ev is not None and ev.fitness_ci_low is not None:
            # The winner was chosen for a high score on these same units, so its interval and its
            # difference from uniform are raw: upward-biased, and said so wherever they go.
            extra.update(fitness_ci=[ev.fitness_ci_low, ev.fitness_ci_high], fitness_seeds=ev.fitness_seeds,
                         intervals=RAW_INTERVALS)
            self.tracker.set_tags(parent, {"layersearch.winner_intervals": RAW_INTERVALS})
        if mapping == self._uniform():
            # Nothing beat uniform: the winner is uniform itself, a difference of 0 by definition.
            extra.update(verdict="indistinguishable", winner_is_uniform=True)
            self.tracker.set_tags(parent, {"verdict": "indistinguishable", "layersearch.winner_is_uniform": True})
            self.tracker.log_metrics(parent, {"winner_minus_uniform": 0.0, "winner_minus_uniform_ci_low": 0.0,
                                              "winner_minus_uniform_ci_high": 0.0})
            # How clear the win is: the runner-up against uniform, paired and Holm-corrected over the
            # same family, as a verdict would be; its plot stands where the verdict's would.
            runner = self._winner(exclude=mapping.key)
            runner_ev = self._evaluation_of(runner) if runner is not None else None
            self.runner_up = self._versus_uniform(runner_ev)
            if self.runner_up is not None:
                extra["runner_up_versus_uniform"] = self.runner_up.to_dict()
                self.tracker.set_tags(parent, {"layersearch.runner_up": str(runner),
                                               "layersearch.runner_up_verdict": self.runner_up.verdict})
                self._log_verdict_plot(parent, runner_ev, self.runner_up, "Runner-up")
        else:
            extra["verdict"] = versus.verdict if versus is not None else "no comparison"
        if versus is not None:
            extra["versus_uniform"] = versus.to_dict()
            e = versus.estimate
            self.tracker.set_tags(parent, {"verdict": versus.verdict})
            self.tracker.log_metrics(parent, {"winner_minus_uniform": e.mean, "winner_minus_uniform_ci_low": e.low,
                                              "winner_minus_uniform_ci_high": e.high})
        if versus is not None:
            self._log_verdict_plot(parent, ev, versus)
        gain = self.gain = self._gain(parent, ev)
        if gain is not None:
            extra["distillation_gain"] = {"word": gain_word(gain), **gain.to_dict()}
        saved = self._with_proxy_init(mapping)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_mapping(saved, Path(tmp) / "best_mapping.json", self.cfg.teacher.model,
                                sorted(self.cfg.objective.terms), fitness=ev.fitness if ev else None,
                                scores=ev.scores if ev else {}, search_run_id=parent,
                                spec_key=self.spec, **extra)
            self.tracker.log_artifact(parent, path)
        self.tracker.set_tags(parent, {"layersearch.best_mapping": mapping.key,
                                       "layersearch.best_genes": str(mapping)})
        metrics = {"best_fitness": ev.fitness} if ev is not None and ev.fitness is not None else {}
        if "fitness_ci" in extra:
            metrics.update(best_fitness_ci_low=extra["fitness_ci"][0], best_fitness_ci_high=extra["fitness_ci"][1])
        self.tracker.log_metrics(parent, metrics)
        return ev, versus

    def _log_verdict_plot(self, parent: str, best: Evaluation, versus, role: str = "Winner") -> None:
        """``verdict.png`` on the search run: the winner's and uniform's units, paired, and the
        paired difference with its interval against zero."""
        from layersearch import plots
        from layersearch.fitness.aggregate import unit_fitness

        ref = self._evaluation_of(self._uniform())
        names, weights = self.cfg.tasks.scored, self.cfg.tasks.scored_weights
        e = versus.estimate
        with tempfile.TemporaryDirectory() as tmp:
            self.tracker.log_artifact(parent, plots.verdict(
                unit_fitness(best, names, weights), unit_fitness(ref, names, weights), (e.mean, e.low, e.high),
                versus.verdict, str(best.mapping), Path(tmp) / "verdict.png", role), "plots")

    def _gain(self, parent: str, best: Evaluation | None):
        """The winner's distillation gain over its untouched init (``tasks.init_baseline``): the
        init's evaluation is cached under the init spec key and logged as a child run; the parent
        run gets tag ``distillation_gain`` (positive / none / negative) and metrics ``gain*``."""
        from layersearch.fitness import init_spec_key
        from layersearch.fitness.baseline import attach_gains, baseline_run
        from layersearch.init import init_identity, proxy_init_config
        from layersearch.search.pool import EvaluatorPool

        if not self.cfg.tasks.init_baseline or best is None or not best.ok or not best.units:
            return None
        cache = EvaluationCache(self.cfg.search.cache_dir, init_spec_key(self.cfg, search_device(self.cfg)))
        ident = init_identity(proxy_init_config(self.cfg), best.mapping)

        def run_init(prior):
            if self.pool is None:
                self.pool = EvaluatorPool(self.cfg, self.factory, self.pool_resources, self.spec)
            return self.pool.evaluate_init(best.mapping, prior)

        def say(text: str) -> None:
            self.on_event("warning", self.progress, {"message": text})

        try:
            init = baseline_run(cache, ident, self.units, self.cfg.tasks, run_init, self.tracker, parent,
                                say=lambda text: None)
            gains = attach_gains(self.cfg.tasks, [("winner", best)], [parent], lambda _: init, self.tracker, say)
        except Exception as exc:  # the verdict stands without it; say why it is missing
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            say(f"no init baseline for the winner: {first}")
            return None
        return gains.get("winner")

    def _with_proxy_init(self, mapping: Mapping) -> Mapping:
        """The winner as it was scored: with the init layers its proxy students had, so
        ``distill`` builds the student the search measured."""
        from layersearch.init import proxy_init_config, seed_layers

        if mapping.init is not None or self.cfg.student.init.method == "random":
            return mapping
        return mapping.with_init(seed_layers(proxy_init_config(self.cfg), mapping, self.m, self.n))

    def _evaluation_of(self, mapping: Mapping) -> Evaluation | None:
        """This search's record of ``mapping`` over every unit: this process, the cache, or its child run."""
        from layersearch.tracking import load_evaluation

        wanted = [unit_key(s, f) for s, f in self.units]
        ev = self._stored(mapping)
        if (ev is None or ev.missing(wanted)) and mapping.key in self.children:  # resumed with another cache_dir
            ev = load_evaluation(self.tracker, self.children[mapping.key][0])
        if ev is None or ev.missing(wanted):
            return None
        return summarize(ev.restricted(wanted), self.cfg.tasks.scored, self.cfg.tasks.scored_weights)

    def _versus_uniform(self, best: Evaluation | None):
        """The winner minus TinyBERT's uniform mapping, paired, when the search evaluated both.

        The winner was chosen as the best of every mapping that reached the top
        rung, on these same seeds, so its test is one of a family: Holm runs over
        all of them against uniform, which keeps "better" honest after the
        selection (the difference itself still carries the winner's luck).
        """
        from layersearch.fitness import PairingError

        if best is None or not best.units:
            return None
        uniform = self._uniform()
        if uniform == best.mapping:
            return None
        ref = self._evaluation_of(uniform)
        if ref is None or not ref.ok or not ref.units:
            return None
        family = []
        for key in sorted(set(self.children) | set(self.evaluations)):
            if key in (uniform.key, best.mapping.key):
                continue
            ev = self._evaluation_of(Mapping.from_key(key))
            if ev is not None and ev.ok and ev.units:
                family.append((str(ev.mapping), ev))
        try:
            comparisons = compare(("uniform", ref), [(str(best.mapping), best), *family],
                                  self.cfg.tasks.scored, self.cfg.tasks.scored_weights)
        except PairingError as exc:  # e.g. evaluators that disagreed on the spec
            self.on_event("warning", self.progress, {"message": f"no verdict against uniform: {exc}"})
            return None
        return comparisons[0]

    # --- the loop -------------------------------------------------------------
    def run(self, resume_run_id: str | None = None) -> SearchResult:
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
        try:
            with self.tracker.run("search", run_id=parent) as parent:
                self.parent = parent
                if not resume_run_id:
                    self._log_parent_params(parent)
                if state is None:
                    state = self.ga.start()
                    self._checkpoint(parent, state, populations)
                self.on_event("start", self.progress, {
                    "run_id": parent, "resumed": bool(resume_run_id), "strategy": self.ga.strategy,
                    "configured": self.cfg.search.strategy, "space": self.space.size(),
                    "budget": self.cfg.search.budget or self.cfg.search.population * self.cfg.search.generations,
                    "rungs": [len(self.ladder.units(r)) for r in range(len(self.ladder))],
                    "reduction": self.ladder.reduction, "folded": Ladder.folding_notes(self.cfg)})
                while not self.ga.done(state):
                    self.progress.generation = state.generation
                    pending = self.ga.pending(state)
                    self._race(pending, state)
                    self._rescore(state, pending)
                    self._settle_elites(state)
                    populations.append([list(g) for g in state.population])
                    state = self.ga.advance(state)
                    self._log_generation(parent, state, populations)
                    self._checkpoint(parent, state, populations)
                    self.on_event("generation", self.progress, {"record": state.logbook[-1]})
                self._final_race(state)
                self._checkpoint(parent, state, populations)  # with the final race's scores
                best, versus = self._finish(parent, self._winner())
        finally:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None
        is_uniform = best is not None and best.mapping == self._uniform()
        return SearchResult(parent, best, state, self.ran, time.perf_counter() - began, versus, self.ga.strategy,
                            is_uniform, self.gain, self.runner_up)
