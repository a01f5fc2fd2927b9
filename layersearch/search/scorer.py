"""Scoring genomes at a rung: from the evaluation cache where it holds the rung's units,
else from the Ray evaluator pool.

Racing (racing.py) asks for scores a rung at a time; ``RungScorer.score_at``
answers with what the cache already holds and dispatches only the rest (a
cached partial record brings its seeds along, so a promotion runs only the
units a mapping lacks). Each result is cached and logged to its child run the
moment it arrives, so a crash loses at most the evaluations in flight. The
scorer also keeps this search's fullest record of every mapping: the
standings, the final race and the export all read records through it.
"""

from __future__ import annotations

from collections.abc import Callable

from layersearch.config import Config
from layersearch.fitness import Evaluation, summarize, unit_key
from layersearch.mapping import Mapping
from layersearch.search.cache import EvaluationCache
from layersearch.search.progress import Progress, Work, unit_word
from layersearch.search.racing import Ladder, Score
from layersearch.search.runs import SearchRuns

# Seconds the pool waits for a result before it says "waiting", so a stalled job shows up in the
# status line even while nothing finishes.
HEARTBEAT_S = 30.0

# --- which record counts: pure rules on evaluation records ------------------------

def fullest(records: list) -> Evaluation | None:
    """The record of a mapping that counts among several (this process's, the cache's)."""
    if not records:
        return None
    # A failure the same inputs would repeat is final; a transient one (a lost worker,
    # out of memory) never shadows the seeds already proven.
    final = [r for r in records if not r.ok and r.cacheable]
    if final:
        return final[0]
    good = [r for r in records if r.ok]
    return max(good, key=lambda r: len(r.units)) if good else records[0]


def supersedes(new, known) -> bool:
    """Whether a new record replaces the one this search holds for the mapping: a success on
    at least as many units, anything over a failure, a final failure over anything."""
    return known is None or not known.ok or (new.ok and len(new.units) >= len(known.units)) or \
        (not new.ok and new.cacheable)


def rung_held(ev, ladder: Ladder) -> int:
    """The highest rung a record holds (-1 for none); a final failure counts as the top."""
    if ev is None:
        return -1
    if not ev.ok and not ev.cacheable:  # a transient failure with nothing proven
        return -1
    if not ev.ok or not ev.units:
        return ladder.top
    return ladder.held(set(ev.units))


class RungScorer:
    def __init__(self, cfg: Config, ladder: Ladder, space, units: list, spec: str, cache: EvaluationCache,
                 progress: Progress, runs: SearchRuns, on_event: Callable, evaluator_factory: Callable | None,
                 pool_resources: dict | None):
        self.cfg, self.ladder, self.space, self.units, self.spec = cfg, ladder, space, units, spec
        self.cache, self.progress, self.runs, self.on_event = cache, progress, runs, on_event
        self.factory, self.pool_resources = evaluator_factory, pool_resources
        self.pool = None  # started at the first evaluation the cache cannot answer
        self.evaluations: dict[str, Evaluation] = {}  # this search's fullest record by mapping key
        self.ran = 0  # evaluations run in this process (not from the cache)

    def open_pool(self):
        from layersearch.search.pool import EvaluatorPool

        if self.pool is None:
            self.pool = EvaluatorPool(self.cfg, self.factory, self.pool_resources, self.spec)
        return self.pool

    # --- records -----------------------------------------------------------------
    def known(self) -> set[str]:
        """Every mapping key this search has a record or a child run of."""
        return set(self.evaluations) | set(self.runs.children)

    def stored(self, mapping: Mapping) -> Evaluation | None:
        """The fullest record of ``mapping`` this search can see (this process, or the cache)."""
        here, cached = self.evaluations.get(mapping.key), self.cache.get(mapping)
        return fullest([r for r in (here, cached) if r is not None])

    def rung_of(self, mapping: Mapping) -> int:
        """The highest rung ``mapping`` holds; a final failure counts as the top."""
        return rung_held(self.stored(mapping), self.ladder)

    def score(self, mapping: Mapping, rung: int) -> tuple[Score, Evaluation | None]:
        """``mapping``'s score on ``rung``'s units, and its record restricted to them."""
        ev = self.stored(mapping)
        if ev is None:
            return Score(None), None
        ev = summarize(ev.restricted([unit_key(*u) for u in self.ladder.units(rung)]),
                       self.cfg.tasks.scored, self.cfg.tasks.scored_weights) if ev.ok and ev.units else ev
        return Score.of(ev), ev

    def top_means(self) -> dict[str, float | None]:
        """Each mapping that reached the top rung: its mean there (None for a failure)."""
        means = {}
        for key in self.known():
            mapping = Mapping.from_key(key)
            if self.rung_of(mapping) >= self.ladder.top:
                score, _ = self.score(mapping, self.ladder.top)
                means[key] = score.mean if score.ok else None
        return means

    def fitness_table(self, genomes: list) -> tuple[dict, dict]:
        """What adjusted fitness is fitted to: each genome's unit fitness over every unit it holds
        (``table``), and for a failure or a record without units its plain fitness (None for a
        failure). Genomes without a record are in neither."""
        from layersearch.fitness.aggregate import unit_fitness

        wanted = [unit_key(s, f) for s, f in self.units]
        table, plain = {}, {}
        for genome in genomes:
            ev = self.stored(self.space.mapping(genome))
            if ev is None:
                continue
            if not ev.ok or not ev.units:  # a failure, or a record without units (a test double)
                plain[genome] = ev.fitness if ev.ok else None
                continue
            ev = ev.restricted(wanted)
            table[genome] = unit_fitness(ev, self.cfg.tasks.scored, self.cfg.tasks.scored_weights)
        return table, plain

    def record(self, ev: Evaluation, cached: bool, rung: int) -> None:
        """Cache, then log the mapping's child run: once per mapping, again when it goes up a rung."""
        if not ev.spec_key:
            ev.spec_key = self.spec
        if not cached:
            self.cache.put(ev)
        if supersedes(ev, self.evaluations.get(ev.mapping.key)):
            self.evaluations[ev.mapping.key] = ev
        self.runs.log_child(ev, cached, rung)

    # --- evaluating at a rung ----------------------------------------------------
    def score_at(self, genomes: list, rung: int) -> dict:
        """Every genome's score on ``rung``'s units: from the cache where it can, else from the pool."""
        units = self.ladder.units(rung)
        p = self.progress
        p.rung, p.rung_seeds, p.unit_word = rung, len(units), unit_word(units)
        scores: dict = {}
        todo, priors, work = [], {}, {}
        for genome in genomes:
            mapping = self.space.mapping(genome)
            hit, partial = self.cache.lookup(mapping, units, self.cfg.tasks.scored, self.cfg.tasks.scored_weights)
            if hit is not None:
                p.cached += 1
                self.record(hit, cached=True, rung=rung)
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
        pool = self.open_pool()

        def on_result(ev: Evaluation) -> None:
            self.ran += 1
            prior = priors.get(ev.mapping.key)
            p.finished_job(work.get(ev.mapping.key, Work()), ev if ev.ok else None,
                           reused=set(prior.units) if prior is not None else set(), key=ev.mapping.key)
            self.record(ev, cached=False, rung=rung)
            scores[self.space.genome(ev.mapping)] = Score.of(ev)
            self._note(ev, "done", len(units))

        def on_started(kind: str, mapping: Mapping | None) -> None:
            if kind == "waiting":  # nothing finished for a while: the status line may say why
                self.on_event(kind, p, {"stall": p.stall()})  # None while every job is on time
                return
            if kind == "started":
                p.started_job(mapping.key, self.space.genome(mapping), work.get(mapping.key, Work()))
            else:  # a lost worker: the job goes back to the queue
                p.requeued_job(mapping.key)
            self.on_event(kind, p, {"genes": list(mapping.genes)})

        # The whole ladder is the config's own units: evaluators need not be told.
        limit = None if sorted(units) == sorted(self.units) else units
        pool.run(todo, on_result, on_started, priors, units=limit, heartbeat=HEARTBEAT_S)
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
