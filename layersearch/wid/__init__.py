"""Weight-Inherited Distillation (WID, Wu et al. 2023): the student is the teacher, compacted.

    student, loss, report = make_student(cfg, teacher, mapping, data)  # student.init.method: wid
    train(student, teacher, loss, data, cfg.distill.train)            # marks, penalty, prox steps
    small = merge(student)                                            # an ordinary, smaller BertModel

Four pieces, one job each:

- ``surgery``: the compactor model (the teacher's layers with identity
  compactors) and ``make_wid_student``, which pairs it with its loss;
- ``schedule``: marks and the capped group-lasso penalty as functions of the
  fraction of the budget spent, the proximal step, the hard prune;
- ``merge``: folding the compactors into an ordinary smaller model;
- ``loss``: ``WIDLoss``, the objective (``wid.objective``: ``distill`` along
  the mapping, or ``mlm``) and the trainer hooks that run the schedule.
"""

from layersearch.wid.loss import MLM_PROBABILITY, WIDLoss
from layersearch.wid.merge import merge
from layersearch.wid.schedule import (
    group_norms,
    hard_prune,
    is_marking,
    kept_indices,
    marks_fraction,
    penalty_at,
    penalty_norm,
    prox_step,
    update_marks,
)
from layersearch.wid.shapes import Widths
from layersearch.wid.surgery import (
    CompactLinear,
    LayerMarks,
    MaskedLayerNorm,
    ResidualCompactor,
    build_compactor_model,
    is_compactor_model,
    make_wid_student,
)

__all__ = [
    "MLM_PROBABILITY",
    "CompactLinear",
    "LayerMarks",
    "MaskedLayerNorm",
    "ResidualCompactor",
    "WIDLoss",
    "Widths",
    "build_compactor_model",
    "group_norms",
    "hard_prune",
    "is_compactor_model",
    "is_marking",
    "kept_indices",
    "make_wid_student",
    "marks_fraction",
    "merge",
    "penalty_at",
    "penalty_norm",
    "prox_step",
    "update_marks",
]
