"""The search driver: DEAP proposes, racing decides who gets more seeds, the Ray pool
evaluates, MLflow records.

Only this process talks to MLflow. Per generation it (1) takes the
population's pending genomes, (2) races them up the fidelity rungs
(racing.py): every rung's scores come from the evaluation cache where it has
them and from the pool otherwise (scorer.py), each result written to the
cache and to a nested child run the moment it arrives (runs.py), (3) promotes
hall-of-fame members to the top rung before they can be called best
(selection.py), and (4) advances the strategy and checkpoints its state as the
parent run's ``ga_state.json`` (checkpoint.py). After the last generation a
final race scores the top mappings and the heuristics at the top rung, and
the winner is tested against uniform and exported (export.py).

Resume after a crash (even ``kill -9``, even mid-rung): the parent run's last
checkpoint gives the GA state at the start of the interrupted generation; the
race replays from the cache (it is a deterministic function of the scores), so
finished evaluations are not run again, child runs already logged are reused,
and the GA, being seeded, replays the same generations an uninterrupted search
would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from layersearch.config import Config
from layersearch.fitness import Evaluation, search_device, spec_key, unit_key, units_of
from layersearch.mapping import Mapping
from layersearch.search import checkpoint
from layersearch.search.cache import EvaluationCache
from layersearch.search.checkpoint import CHECKPOINT, CHECKPOINT_FORMAT, RESUMABLE_CHANGES, ResumeError
from layersearch.search.export import RAW_INTERVALS, Export
from layersearch.search.ga import GeneticSearch
from layersearch.search.progress import Progress, Work, new_per_generation, planned_work, unit_word
from layersearch.search.racing import Ladder, race
from layersearch.search.runs import SearchRuns
from layersearch.search.scorer import RungScorer
from layersearch.search.selection import NO_SPREAD_SELECTION, adjusted_means, elites_to_promote, final_race_entrants
from layersearch.search.state import FAILED, GAState, update_hall_of_fame
from layersearch.tracking import Tracker

# Importable from here as before the driver was split.
__all__ = ["CHECKPOINT", "CHECKPOINT_FORMAT", "RAW_INTERVALS", "RESUMABLE_CHANGES", "ResumeError", "SearchDriver",
           "SearchResult"]

Genome = tuple[int, ...]


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
        self.on_event = on_event or (lambda *_: None)
        tracker = Tracker(cfg.tracking)
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
        self.progress = Progress(generations=self.ga.generations, rungs=len(self.ladder))
        self.runs = SearchRuns(tracker, cfg, self.spec, self.ladder, self.progress)
        self.scorer = RungScorer(cfg, self.ladder, self.space, self.units, self.spec, self.cache, self.progress,
                                 self.runs, self.on_event, evaluator_factory, pool_resources)
        self.export = Export(cfg, self.scorer, self.runs, self.m, self.n, self.progress, self.on_event)

    # The tracker and the pool can be swapped after construction (bench/search_quality.py runs the
    # driver on in-process stand-ins): every part reads the one its holder has now.
    @property
    def tracker(self):
        return self.runs.tracker

    @tracker.setter
    def tracker(self, tracker) -> None:
        self.runs.tracker = tracker

    @property
    def pool(self):
        return self.scorer.pool

    @pool.setter
    def pool(self, pool) -> None:
        self.scorer.pool = pool

    # --- the loop -------------------------------------------------------------
    def run(self, resume_run_id: str | None = None) -> SearchResult:
        began = time.perf_counter()
        state, populations = None, []
        if resume_run_id:
            checkpoint.require_run(self.tracker, resume_run_id, self.cfg.tracking.uri)
            parent = resume_run_id
            state, populations = self._resume(parent)
            self.runs.load_children(parent)
        else:
            parent = self.runs.start_parent()
        try:
            with self.tracker.run("search", run_id=parent) as parent:
                self.runs.parent = parent
                if not resume_run_id:
                    self.runs.log_params(parent, self.n, self.m, self.ga.strategy, self.space.size())
                if state is None:
                    state = self.ga.start()
                    self._checkpoint(parent, state, populations)
                self.on_event("start", self.progress, {
                    "run_id": parent, "resumed": bool(resume_run_id), "strategy": self.ga.strategy,
                    "configured": self.cfg.search.strategy, "space": self.space.size(),
                    "budget": self.cfg.search.budget or self.cfg.search.population * self.cfg.search.generations,
                    "rungs": [len(self.ladder.units(r)) for r in range(len(self.ladder))],
                    "unit_word": unit_word(self.ladder.units(self.ladder.top)),
                    "reduction": self.ladder.reduction, "folded": Ladder.folding_notes(self.cfg),
                    "selection": NO_SPREAD_SELECTION})
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
                best, versus = self.export.finish(parent, self.export.winner())
        finally:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None
        is_uniform = best is not None and best.mapping == self.space.uniform()
        return SearchResult(parent, best, state, self.scorer.ran, time.perf_counter() - began, versus,
                            self.ga.strategy, is_uniform, self.export.gain, self.export.runner_up)

    # --- checkpoints and the parent run -----------------------------------------
    def _checkpoint(self, parent: str, state: GAState, populations: list) -> None:
        checkpoint.save(self.tracker, parent, checkpoint.checkpoint_data(
            self.cfg, self.spec, self.ga.strategy, self.units, state, populations))

    def _resume(self, parent: str) -> tuple[GAState, list]:
        state, populations, strategy = checkpoint.load(self.tracker, parent, self.cfg, self.spec, self.units)
        if strategy not in (None, self.ga.strategy):  # keep what auto chose at the start
            self.ga = GeneticSearch(self.cfg.search, self.m, self.n, strategy=strategy)
            self.space = self.scorer.space = self.ga.space
            self.progress.generations = self.ga.generations
        return state, populations

    def _log_generation(self, parent: str, state: GAState, populations: list) -> None:
        self.runs.log_generation(parent, state, populations, len(self.scorer.evaluations), self.m, self.n)

    # --- racing, standings, elites, the final race --------------------------------
    def _race(self, genomes: list, state: GAState) -> None:
        def on_rung(rung: int, entrants: list) -> None:
            self.progress.rung = rung
            self._plan(state, len(entrants))

        race(genomes, self.ladder, self.scorer.score_at, on_rung)

    def _plan(self, state: GAState, entrants: int = 0) -> None:
        """What the ETA expects after the current rung: the generations left and the final race."""
        strategy = self.ga.strategy
        per_generation = None if strategy == "exhaustive" else new_per_generation(
            self.cfg.search, strategy, state.generation, len(self.ga.pending(state)))
        starts = [self.scorer.rung_of(m) for m in self._final_race_mappings(state)]
        left = max(0, self.ga.generations - state.generation - 1)
        self.progress.future = planned_work(self.ladder, self.progress.rung, entrants, per_generation, left, starts)

    def _adjusted(self, state: GAState) -> dict[Genome, float | None]:
        """The GA's fitness for every genome of this search: its mean over every unit it
        holds, corrected for the units' shared effects (selection.adjusted_means), so genomes
        raced to different rungs rank fairly; None for a failure."""
        genomes = ({tuple(g) for g in state.population} | {g for g, _ in state.archive}
                   | {g for g, _ in state.hall_of_fame}
                   | {self.space.genome(Mapping.from_key(k)) for k in self.scorer.evaluations})
        # sorted: the same sums in the same order after a resume
        table, plain = self.scorer.fitness_table(sorted(genomes))
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
            below, stuck = elites_to_promote(hof, lambda g: self.scorer.rung_of(self.space.mapping(g)), top, tried,
                                             FAILED)
            if stuck:  # a promotion that failed for a transient reason
                self.on_event("warning", self.progress, {"message": "could not promote "
                              f"{[list(g) for g in stuck]} to every seed; it keeps its score"})
            if not below:
                return
            tried.update(below)
            self.on_event("elites", self.progress, {"genomes": [list(g) for g in below]})
            self.scorer.score_at(below, top)
            self._rescore(state)

    def _final_race_mappings(self, state: GAState) -> list[Mapping]:
        """The search's top mappings (by their standing) and the heuristics, uniform first."""
        standing = dict(state.archive) | dict(state.hall_of_fame)
        heuristics = [tuple(g) for g in (self.space.genome(self.space.uniform()), *self.space.heuristic_genomes())]
        entrants = final_race_entrants(standing, self.cfg.search.final_race, heuristics, FAILED)
        return [self.space.mapping(g) for g in entrants]

    def _final_race(self, state: GAState) -> None:
        """Race the top mappings and the heuristics at the top rung (post-selection)."""
        entrants = self._final_race_mappings(state)
        if not entrants:
            return
        self.progress.phase = "final race"
        self.progress.future = Work()
        self.on_event("final", self.progress, {"mappings": [str(m) for m in entrants]})
        self.scorer.score_at([self.space.genome(m) for m in entrants], self.ladder.top)
        self._rescore(state)
