"""Racing: successive halving over fidelity rungs, promotion judged with intervals.

A rung is a set of units (proxy slice x fine-tune seed); each rung holds the
one below it, so a promotion only runs the units the candidate lacks, and the
last rung is every unit of the config. Within a batch (a generation, or the
whole space) every candidate gets the first rung; the best 1/``reduction`` go
up a rung, and so on. Candidates at one rung are scored on the same units, so
they are compared like with like.

Promotion uses the intervals, not the means alone: a candidate whose whole
interval lies below the interval of the rung's leader is clearly worse and is
never promoted, so when a rung already separates the field fewer than
1/``reduction`` go up; among the rest the best means go up. (On a rung of one
unit the interval holds no seed noise, so there the means alone decide.)

Nothing here runs an evaluation: ``race`` takes a function that scores genomes
at a rung (the search driver's goes through the cache and the Ray pool; the
search-quality bench's through a surrogate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from layersearch.config import Config

Unit = tuple[int, int]  # (slice seed, fine-tune seed)


@dataclass(frozen=True)
class Score:
    """A candidate's fitness at a rung: mean and 95% interval; mean None = failed."""

    mean: float | None
    low: float | None = None
    high: float | None = None
    units: int = 2  # behind the interval: with one, it holds no seed noise (the dev set only)

    @property
    def ok(self) -> bool:
        return self.mean is not None and math.isfinite(self.mean)

    @classmethod
    def of(cls, ev) -> Score:
        """From an Evaluation summarised over a rung's units."""
        if not ev.ok or ev.fitness is None:
            return cls(None)
        low = ev.fitness if ev.fitness_ci_low is None else ev.fitness_ci_low
        high = ev.fitness if ev.fitness_ci_high is None else ev.fitness_ci_high
        return cls(ev.fitness, low, high, ev.fitness_seeds or len(ev.units) or 2)


class Ladder:
    """The rungs of a config: ``search.racing`` or, without it, one rung of every unit."""

    def __init__(self, slice_seeds: Sequence[int], finetune_seeds: Sequence[int],
                 seeds: Sequence[int] | None = None, slices: Sequence[int] | None = None,
                 reduction: float = 2.0):
        n_ft, n_sl = len(finetune_seeds), len(slice_seeds)
        seeds = list(seeds or [n_ft])
        slices = list(slices or [n_sl] * len(seeds))
        # Rungs beyond the seeds at hand fold into the top rung, which is always every unit.
        sizes = [(min(a, n_ft), min(b, n_sl)) for a, b in zip(seeds, slices, strict=True)] + [(n_ft, n_sl)]
        sizes = [x for i, x in enumerate(sizes) if i == 0 or x != sizes[i - 1]]
        self.reduction = reduction
        self.rungs: list[list[Unit]] = [
            [(s, f) for s in slice_seeds[:b] for f in finetune_seeds[:a]] for a, b in sizes
        ]

    @classmethod
    def of(cls, cfg: Config) -> Ladder:
        racing = cfg.search.racing
        if racing is None:
            return cls(cfg.proxy.slice_seeds, cfg.tasks.unit_seeds)
        return cls(cfg.proxy.slice_seeds, cfg.tasks.unit_seeds, racing.seeds, racing.slices,
                   racing.reduction)

    def __len__(self) -> int:
        return len(self.rungs)

    @staticmethod
    def folding_notes(cfg: Config) -> list[str]:
        """One line per configured rung that asks for more seeds or slices than the config has:
        such a rung folds into the top one, which a user should hear about, not find out."""
        racing = cfg.search.racing
        if racing is None:
            return []
        n_ft, n_sl = len(cfg.tasks.unit_seeds), len(cfg.proxy.slice_seeds)
        per = ("tasks.finetune.seeds" if cfg.tasks.readout == "finetune"
               else f"the {cfg.tasks.readout} readout (one unit per slice)")
        notes = []
        for i, seeds in enumerate(racing.seeds):
            if seeds > n_ft:
                notes.append(f"search.racing.seeds: rung {i + 1} asks for {seeds} fine-tune seeds but {per} "
                             f"gives {n_ft}; it is folded into the top rung of {n_ft}")
        for i, slices in enumerate(racing.slices or []):
            if slices > n_sl:
                notes.append(f"search.racing.slices: rung {i + 1} asks for {slices} slices but proxy.slice_seeds "
                             f"gives {n_sl}; it is folded into the top rung of {n_sl}")
        return notes

    @property
    def top(self) -> int:
        return len(self.rungs) - 1

    def units(self, rung: int) -> list[Unit]:
        return list(self.rungs[rung])

    def held(self, units: set[Unit] | set[str]) -> int:
        """The highest rung whose units are all in ``units`` (-1 for none)."""
        from layersearch.fitness import unit_key

        keys = {u if isinstance(u, str) else unit_key(*u) for u in units}
        best = -1
        for r, rung in enumerate(self.rungs):
            if all(unit_key(*u) in keys for u in rung):
                best = r
        return best

    def work(self, start: int, end: int) -> tuple[int, int]:
        """(distillations, fine-tune units) to take a candidate from rung ``start`` (-1: new) to ``end``.

        A promotion distils again every slice that gains units: the distilled
        student is not kept between rungs (it would pin memory for every candidate).
        """
        have = set(self.rungs[start]) if start >= 0 else set()
        need = [u for u in self.rungs[end] if u not in have]
        return len({s for s, _ in need}), len(need)

    def batch_work(self, size: int) -> tuple[float, float]:
        """Expected work of racing ``size`` new candidates through every rung."""
        distills = units = 0.0
        alive, prev = size, -1
        for r in range(len(self.rungs)):
            d, u = self.work(prev, r)
            distills, units = distills + alive * d, units + alive * u
            alive, prev = math.ceil(alive / self.reduction), r
        return distills, units


def promote(scores: dict[Hashable, Score], reduction: float) -> list[Hashable]:
    """The candidates of a rung that go up: at most ceil(n / reduction), best mean first.

    Failed candidates and those clearly worse than the leader (interval wholly
    below the leader's) stay; ties keep the given order, so a replay promotes the same.
    A one-unit interval covers the dev set only, not seed noise (the larger part
    at a proxy budget), so on a one-unit rung only the means decide.
    """
    ok = {g: s for g, s in scores.items() if s.ok}
    if not ok:
        return []
    alive = list(ok)
    if all(s.units >= 2 for s in ok.values()):
        floor = max(s.low for s in ok.values())
        alive = [g for g, s in ok.items() if s.high >= floor]
    alive.sort(key=lambda g: -ok[g].mean)
    return alive[: math.ceil(len(scores) / reduction)]


def race(genomes: Sequence[Hashable], ladder: Ladder,
         score_at: Callable[[list[Hashable], int], dict[Hashable, Score]],
         on_rung: Callable[[int, list[Hashable]], None] | None = None) -> dict[Hashable, tuple[int, Score]]:
    """Successive halving of ``genomes`` up the ladder; returns each one's last (rung, score).

    ``score_at(genomes, rung)`` must score every genome on that rung's units
    (running only what its cache lacks). ``on_rung`` hears each rung's entrants first.
    """
    results: dict[Hashable, tuple[int, Score]] = {}
    entrants = list(dict.fromkeys(genomes))
    for rung in range(len(ladder)):
        if not entrants:
            break
        if on_rung is not None:
            on_rung(rung, entrants)
        scores = score_at(entrants, rung)
        results.update({g: (rung, scores[g]) for g in entrants})
        if rung < ladder.top:
            entrants = promote({g: scores[g] for g in entrants}, ladder.reduction)
    return results
