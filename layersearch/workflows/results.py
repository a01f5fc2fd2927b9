"""What the workflows return: typed results, for a notebook, a pipeline or the command line.

Each evaluation is a ``fitness.Evaluation`` (fitness, its 95% interval, per-unit
scores); each verdict a ``fitness.Comparison`` (the paired difference as a
``stats.Estimate`` with ``mean``, ``low``, ``high``; the Holm-corrected p; the
word: better, worse or indistinguishable). A search returns the driver's
``search.driver.SearchResult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Evaluated:
    """``evaluate`` and ``baselines``: one proxy evaluation per mapping."""

    evaluations: list  # (label, fitness.Evaluation) pairs, in the order asked
    run_ids: list[str]  # the MLflow run of each evaluation
    tasks: list[str]  # the scored tasks (["agreement"] under the agreement readout)
    gains: dict = field(default_factory=dict)  # label -> distillation gain over the init (tasks.init_baseline)

    def __getitem__(self, label: str):
        """The evaluation of the mapping asked for as ``label``."""
        for name, ev in self.evaluations:
            if name == label:
                return ev
        raise KeyError(label)


@dataclass
class Verdicts:
    """``compare`` and ``confirm``: each mapping against the first, paired, with a verdict."""

    run_id: str  # the comparison's MLflow run (its evaluations are nested under it)
    evaluated: Evaluated
    comparisons: list  # fitness.Comparison per other mapping, in the order asked
    notes: list[str] = field(default_factory=list)  # what limits the verdicts (one run, one unit, fidelity)

    def verdict(self, label: str) -> str:
        """``better``, ``worse`` or ``indistinguishable``: ``label`` against the reference."""
        for c in self.comparisons:
            if c.label == label:
                return c.verdict
        raise KeyError(label)


@dataclass
class Confirmed(Verdicts):
    """``confirm``: as ``Verdicts``, plus where the final students are and their distill runs."""

    students: dict = field(default_factory=dict)  # label -> [model directory per distillation seed]
    distill_run_ids: list[str] = field(default_factory=list)  # distill runs this call made


@dataclass
class Distilled:
    """``distill``: the student's model directory and its MLflow run."""

    run_id: str
    student_path: Path
    mapping: object  # the mapping.Mapping it was distilled with


@dataclass
class PreparedSlice:
    """``data prepare``: one proxy corpus slice."""

    seed: int
    key: str
    cached: bool  # found, not built now
    blocks: int
    corpus_blocks: int
    tokens: int
    path: Path
