"""The evaluation record: what one (mapping, proxy spec) evaluation found, as plain data.

Its unit of evidence is one *unit*: one proxy slice (which also seeds the
proxy distillation) x one fine-tune seed, holding every task's dev
predictions and raw GLUE metrics. Units are what the cache keeps and what
intervals and paired comparisons are computed from, so asking for more seeds
extends an evaluation instead of redoing it. The summary fields (fitness,
interval, per-task scores) are derived from the units by ``aggregate``.

Predictions are stored as strings of label digits: an SST-2 dev set is 872
characters, small enough for the cache and for an MLflow artifact per run.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np

from layersearch.mapping import Mapping


def unit_key(slice_seed: int, finetune_seed: int) -> str:
    return f"s{slice_seed}-f{finetune_seed}"


def pack_labels(values) -> str:
    """Integer labels (< 10, as every GLUE task has) as a digit string."""
    arr = np.asarray(values, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 9):
        raise ValueError("labels must lie in 0..9 to be stored as digits")
    return "".join(map(str, arr.tolist()))


def unpack_labels(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) - ord("0")


def evaluation_key(spec: str, mapping: Mapping) -> str:
    return f"{spec}/{mapping.key}"


@dataclass
class Evaluation:
    genes: list[int]
    num_teacher_layers: int
    spec_key: str
    status: str = "ok"  # or "failed: <why>"
    # The evidence: unit key -> {"slice_seed", "finetune_seed", "tasks": {task: {
    # "predictions": digits, "metrics": raw GLUE metrics, "seconds", "steps"}}}; a task-free
    # readout (agreement) keeps "values", one real score per held-out example, instead of digits.
    units: dict[str, dict] = field(default_factory=dict)
    dev_labels: dict[str, str] = field(default_factory=dict)  # task -> digits, same for every unit
    majority: dict[str, float] = field(default_factory=dict)  # task -> raw headline of a constant predictor
    # Derived from the units (see aggregate.summarize); an evaluator without
    # units (a test double) sets fitness itself.
    fitness: float | None = None  # mean over units of the weighted chance-corrected score
    fitness_ci_low: float | None = None
    fitness_ci_high: float | None = None
    fitness_seeds: int = 0  # units behind the fitness
    fitness_std: float | None = None  # spread of unit fitnesses
    scores: dict[str, float] = field(default_factory=dict)  # task -> mean chance-corrected score
    scores_std: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # "<task>/<raw metric>" -> mean
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    error: str = ""  # the traceback of a failed evaluation, for the run's artifacts
    init: list[int] | None = None  # the mapping's own init layers (search.search_init), if it names them

    # Failures that the same inputs would reproduce, so caching them is safe; a
    # lost worker or an out-of-memory error is worth another try.
    DETERMINISTIC_FAILURES = ("DivergenceError", "FinetuneDivergence", "MappingError",
                              "ObjectiveError", "InitError", "ModelError")

    @property
    def cacheable(self) -> bool:
        return self.ok or any(f"failed: {n}" in self.status for n in self.DETERMINISTIC_FAILURES)

    @property
    def mapping(self) -> Mapping:
        return Mapping(tuple(self.genes), self.num_teacher_layers, None if self.init is None else tuple(self.init))

    @property
    def key(self) -> str:
        return evaluation_key(self.spec_key, self.mapping)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    # --- units ----------------------------------------------------------------
    def missing(self, wanted: list[str]) -> list[str]:
        """The wanted units this record lacks: a failed record holds none of them (whether to try
        again is the cache's call, not this answer's); a unit-less record (a test double) is whole."""
        if not self.ok:
            return list(wanted)
        if not self.units:
            return []
        return [u for u in wanted if u not in self.units]

    def restricted(self, wanted: list[str]) -> Evaluation:
        """A copy holding only the wanted units (the summary must be derived again)."""
        out = copy.deepcopy(self)
        if self.units:
            out.units = {u: self.units[u] for u in wanted if u in self.units}
        return out

    def predictions(self, task: str, units: list[str]) -> np.ndarray:
        """[units, dev examples] predictions of one task, rows in the given unit order."""
        rows = [self.units[u]["tasks"][task] for u in units]
        if rows and "values" in rows[0]:
            return np.array([r["values"] for r in rows], dtype=np.float64)
        return np.stack([unpack_labels(r["predictions"]) for r in rows])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Evaluation:
        data = dict(data)
        data["curves"] = {k: [tuple(p) for p in v] for k, v in data.get("curves", {}).items()}
        return cls(**data)
