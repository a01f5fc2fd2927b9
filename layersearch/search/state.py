"""A search's state between generations, as plain data that round-trips through JSON.

Every strategy (ga.py, strategies.py) reads and writes the same ``GAState``, so
the driver checkpoints any of them as the parent run's ``ga_state.json``. The
state holds the RNG too: a search resumed from its JSON draws exactly what an
uninterrupted one would. Fitness is maximised; a failed evaluation scores
``FAILED`` (-inf), written as the string "-inf" so the file stays strict JSON.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

STATE_FORMAT_VERSION = 1
FAILED = float("-inf")  # fitness of a failed evaluation: loses every comparison

Genome = tuple[int, ...]
Scored = tuple[Genome, float]


@dataclass
class GAState:
    """Everything needed to continue a search; plain data that round-trips through JSON.

    `population` is the generation `generation` (to be evaluated, or being evaluated);
    `fitness[i]` is None until told, FAILED (-inf) for a failed evaluation. `parents` are
    the mu survivors that bred it (mu_plus_lambda only). `evaluated` counts the distinct
    genomes told so far in this generation.
    """

    num_student_layers: int
    num_teacher_layers: int
    generation: int
    population: list[list[int]]
    fitness: list[float | None]
    rng_state: tuple
    parents: list[Scored] = field(default_factory=list)
    hall_of_fame: list[Scored] = field(default_factory=list)
    logbook: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0
    # Every genome scored so far in this search, so bred offspring can avoid them.
    archive: list[Scored] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = self.rng_state
        return {
            "format_version": STATE_FORMAT_VERSION,
            "num_student_layers": self.num_student_layers,
            "num_teacher_layers": self.num_teacher_layers,
            "generation": self.generation,
            "population": [list(g) for g in self.population],
            "fitness": [_encode(f) for f in self.fitness],
            "parents": [{"genes": list(g), "fitness": _encode(f)} for g, f in self.parents],
            "hall_of_fame": [{"genes": list(g), "fitness": _encode(f)} for g, f in self.hall_of_fame],
            "logbook": [dict(r) for r in self.logbook],
            "evaluated": self.evaluated,
            "archive": [{"genes": list(g), "fitness": _encode(f)} for g, f in self.archive],
            "rng_state": [version, list(internal), gauss_next],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GAState:
        if data.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(
                f"GA state has format_version {data.get('format_version')!r}; "
                f"this layersearch reads {STATE_FORMAT_VERSION}"
            )
        version, internal, gauss_next = data["rng_state"]
        return cls(
            num_student_layers=data["num_student_layers"],
            num_teacher_layers=data["num_teacher_layers"],
            generation=data["generation"],
            population=[list(g) for g in data["population"]],
            fitness=[_decode(f) for f in data["fitness"]],
            rng_state=(version, tuple(internal), gauss_next),
            parents=[(tuple(r["genes"]), _decode(r["fitness"])) for r in data["parents"]],
            hall_of_fame=[(tuple(r["genes"]), _decode(r["fitness"])) for r in data["hall_of_fame"]],
            logbook=[dict(r) for r in data["logbook"]],
            evaluated=data["evaluated"],
            archive=[(tuple(r["genes"]), _decode(r["fitness"])) for r in data.get("archive", [])],
        )

    def to_json(self) -> str:
        # allow_nan=False: the file stays strict JSON; failures are encoded as "-inf".
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> GAState:
        return cls.from_dict(json.loads(text))


def _encode(f: float | None) -> float | str | None:
    return "-inf" if f == FAILED else f


def _decode(f: float | str | None) -> float | None:
    return FAILED if f == "-inf" else f


def as_fitness(value: Any) -> float:
    """None, NaN and infinities are failures; no real score is infinite."""
    if value is None:
        return FAILED
    value = float(value)
    return value if math.isfinite(value) else FAILED


def logbook_row(gen: int, evaluated: int, fitness: list[float]) -> dict[str, Any]:
    """Logbook row; statistics over the successful evaluations only (None if there are none)."""
    ok = [f for f in fitness if f != FAILED]
    stats = (max(ok), statistics.fmean(ok), statistics.pstdev(ok), min(ok)) if ok else [None] * 4
    row = {"gen": gen, "evaluated": evaluated, "failed": len(fitness) - len(ok)}
    return row | dict(zip(("best", "mean", "std", "min"), stats, strict=True))


def update_hall_of_fame(hof: list[Scored], scored: list[Scored], size: int) -> list[Scored]:
    """The best `size` distinct genomes so far, best first; failures never enter.

    A stable sort rather than tools.HallOfFame: it round-trips through JSON exactly and
    ties keep the incumbent first, so resumed and uninterrupted runs agree.
    """
    merged = dict(hof)
    for genes, f in scored:
        if f != FAILED:
            merged.setdefault(genes, f)
    return sorted(merged.items(), key=lambda kv: -kv[1])[:size]
