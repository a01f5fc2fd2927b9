"""Where a search stands, and when it will end.

Work is counted in the two things an evaluation spends time on: proxy
distillations (one per slice a job runs) and fine-tune units (one per slice x
fine-tune seed). The driver tells ``Progress`` what each dispatched job will
cost and what it expects the rest of the search to cost in those terms; the
finished records say how many seconds a distillation and a unit took. The ETA
is the remaining work priced at those seconds, scaled by how the wall clock
has really gone (overheads, parallel evaluators), so it corrects itself as the
search runs.

A job that runs far past what its work should take (a starved evaluator, a hung
node) is named in the status line (``stall``): the pool reports ``waiting`` while
nothing finishes, so the line says so even when no result comes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A job is overdue past STALL_FACTOR x its expected seconds (one job's time varies: a first job
# also loads the teacher and its slice); before any has finished, past FIRST_RESULT_PATIENCE s.
STALL_FACTOR = 2.0
FIRST_RESULT_PATIENCE = 600.0


@dataclass
class Work:
    distills: float = 0.0
    units: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.distills + other.distills, self.units + other.units)

    def __sub__(self, other: Work) -> Work:
        return Work(max(0.0, self.distills - other.distills), max(0.0, self.units - other.units))

    def seconds(self, per_distill: float, per_unit: float) -> float:
        return self.distills * per_distill + self.units * per_unit


@dataclass
class Progress:
    generation: int = 0
    generations: int = 0
    phase: str = "generation"  # "generation", or "final race"
    rung: int = 0
    rungs: int = 1
    rung_seeds: int = 0  # units at the current rung
    unit_word: str = "seeds"  # what a unit is at this rung: "seeds", "slices" or "units"
    done: int = 0
    running: int = 0
    queued: int = 0
    cached: int = 0
    failed: int = 0
    best: float | None = None
    best_low: float | None = None
    best_high: float | None = None
    best_seeds: int = 0
    best_genes: list[int] | None = None
    started: float = field(default_factory=time.perf_counter)
    # The ETA's books: work finished and work still expected, in distillations and units.
    done_work: Work = field(default_factory=Work)
    outstanding: Work = field(default_factory=Work)  # dispatched or queued in the current batch
    future: Work = field(default_factory=Work)  # the batches after it, as planned
    first_dispatch: float | None = None
    distill_seconds: list[float] = field(default_factory=list)
    unit_seconds: list[float] = field(default_factory=list)
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)
    # Jobs on an evaluator now: mapping key -> (genes, started at, planned work).
    in_flight: dict = field(default_factory=dict)

    # --- bookkeeping ------------------------------------------------------------
    def queue(self, jobs: int, work: Work) -> None:
        self.queued += jobs
        self.outstanding = self.outstanding + work

    def started_job(self, key: str | None = None, genes=None, work: Work | None = None) -> None:
        now = self.clock()
        if self.first_dispatch is None:
            self.first_dispatch = now
        self.queued = max(0, self.queued - 1)
        self.running += 1
        if key is not None:
            self.in_flight[key] = (list(genes or []), now, work or Work())

    def requeued_job(self, key: str | None = None) -> None:
        """A lost worker's job goes back to the queue."""
        self.running, self.queued = max(0, self.running - 1), self.queued + 1
        self.in_flight.pop(key, None)

    def finished_job(self, work: Work, ev=None, reused: set | None = None, key: str | None = None) -> None:
        """A job is over: its planned work leaves the books; only a success counts as done
        (a failure's seconds would price work it never did)."""
        self.in_flight.pop(key, None)
        self.running = max(0, self.running - 1)
        self.outstanding = self.outstanding - work
        if ev is not None:
            self.done_work = self.done_work + work
            self.learn(ev, reused or set())

    def learn(self, ev, reused: set | None = None) -> None:
        """The seconds a distillation and a fine-tune unit took, from the units this job ran
        (``reused`` names the ones it brought from the cache)."""
        new = {k: u for k, u in (ev.units or {}).items() if k not in (reused or set())}
        for unit in new.values():
            tasks = unit.get("tasks", {})
            self.unit_seconds.append(sum(t.get("seconds", 0.0) for t in tasks.values()))
        if "distill_s" in ev.timings and new:
            slices = len({u.get("slice_seed") for u in new.values()})
            self.distill_seconds.append(ev.timings["distill_s"] / slices)

    def offer_best(self, genes, mean, low, high, seeds: int) -> None:
        """A candidate's score; it becomes the best so far if founded on at least as many
        seeds as the current best and higher, or on more seeds."""
        if mean is None:
            return
        if self.best is None or seeds > self.best_seeds or (seeds == self.best_seeds and mean > self.best):
            self.best, self.best_low, self.best_high, self.best_seeds = mean, low, high, seeds
            self.best_genes = list(genes)

    # --- reading ------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def expected_seconds(self, work: Work) -> float | None:
        """What ``work`` took on an evaluator so far, or None before a job has finished."""
        if not self.distill_seconds or not self.unit_seconds:
            return None
        per_distill = sum(self.distill_seconds) / len(self.distill_seconds)
        per_unit = sum(self.unit_seconds) / len(self.unit_seconds)
        return work.seconds(per_distill, per_unit)

    def stalled(self) -> tuple[list[int], float, float | None] | None:
        """The longest-running job as (genes, seconds running, seconds expected or None) where it
        has run past what it should take: STALL_FACTOR x its expected seconds, or before any job
        has finished, FIRST_RESULT_PATIENCE seconds."""
        if not self.in_flight:
            return None
        genes, since, work = min(self.in_flight.values(), key=lambda job: job[1])
        running = self.clock() - since
        expected = self.expected_seconds(work)
        limit = FIRST_RESULT_PATIENCE if expected is None else STALL_FACTOR * max(expected, 1.0)
        return (genes, running, expected) if running > limit else None

    def stall(self) -> str | None:
        """``stalled`` in words, for the status line."""
        found = self.stalled()
        if found is None:
            return None
        genes, running, expected = found
        known = "none has finished yet" if expected is None else f"expected ~{duration(expected)}"
        return (f"waiting: no result from {genes} after {duration(running)}, {known}: a starved or stuck "
                "evaluator? (ray.worker_niceness, other jobs on its node)")

    def per_hour(self) -> float | None:
        if self.done == self.cached or self.first_dispatch is None:
            return None
        hours = (self.clock() - self.first_dispatch) / 3600
        return (self.done - self.cached) / hours if hours > 0 else None

    def eta(self) -> float | None:
        """Seconds until the search ends, or None before the first evaluation finishes."""
        if not self.distill_seconds or not self.unit_seconds or self.first_dispatch is None:
            return None
        per_distill = sum(self.distill_seconds) / len(self.distill_seconds)
        per_unit = sum(self.unit_seconds) / len(self.unit_seconds)
        priced = self.done_work.seconds(per_distill, per_unit)
        if priced <= 0:
            return None
        wall = self.clock() - self.first_dispatch
        left = (self.outstanding + self.future).seconds(per_distill, per_unit)
        return left * wall / priced

    def where(self) -> str:
        stage = "final race" if self.phase == "final race" else f"gen {self.generation + 1}/{self.generations}"
        rung = f" rung {self.rung + 1}/{self.rungs} ({self.rung_seeds} {self.unit_word})" if self.rungs > 1 or \
            self.phase != "generation" else ""
        return stage + rung


def unit_word(units) -> str:
    """What a rung's (slice seed, fine-tune seed) units are, in one word: ``slices`` where each
    slice holds one unit (the agreement and probe readouts), ``seeds`` where every unit shares
    one slice (fine-tune seeds), else ``units``."""
    slices = {s for s, _ in units}
    if len(slices) == len(units) and len(units) > 1:
        return "slices"
    if len(slices) == 1 and len(units) > 1:
        return "seeds"
    return "units" if len(units) != 1 else "unit"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# --- the plan: work expected after the current rung ---------------------------------

def new_per_generation(cfg, strategy: str, generation: int, pending: int) -> int:
    """New genomes a later generation should bring (``cfg`` is search.*): as many as this one
    (``pending``) did, or for generation 0 what breeding leaves room for (elites and
    parents carry their scores)."""
    if generation > 0 or strategy == "random":
        return pending or 1
    if cfg.variant == "mu_plus_lambda":
        return cfg.offspring or cfg.population
    return cfg.population - min(cfg.hall_of_fame, cfg.population - 1)


def planned_work(ladder, rung: int, entrants: int, per_generation: int | None, generations_left: int,
                 final_starts: list[int]) -> Work:
    """What the ETA expects after the current rung: the rest of this batch's race (its
    ``entrants``, 1/reduction promoted per rung), ``generations_left`` batches of
    ``per_generation`` new genomes (None: no later batch is drawn), and the final race's
    entrants from the rungs they hold (``final_starts``) to the top."""
    per_gen = Work(*ladder.batch_work(per_generation)) if per_generation is not None else Work()
    rest = Work()
    alive = entrants
    for r in range(rung + 1, len(ladder)):
        alive = -(-alive // ladder.reduction)
        rest = rest + Work(*[alive * x for x in ladder.work(r - 1, r)])
    final = Work()
    for start in final_starts:
        final = final + Work(*ladder.work(start, ladder.top))
    return rest + Work(per_gen.distills * generations_left, per_gen.units * generations_left) + final
