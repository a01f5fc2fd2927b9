"""Build a student for a mapping: derived config, random weights, then the init strategy.

Shared by the proxy evaluation and the full distillation, so both start a
student the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import AutoModelForMaskedLM

from layersearch.config import Config
from layersearch.families import adapter_for, get
from layersearch.init import init_student
from layersearch.losses import DistillLoss
from layersearch.mapping import Mapping
from layersearch.models import build_student, student_config
from layersearch.wid import is_compactor_model, make_wid_student, merge

IMPORTANCE_BATCH = 16


def importance_batches(data: torch.Tensor, count: int, pad_token_id: int) -> Iterator[dict]:
    """The first ``count`` batches of the slice, for ETD-Impt importance scores."""
    for i in range(count):
        ids = data[i * IMPORTANCE_BATCH:(i + 1) * IMPORTANCE_BATCH]
        if ids.shape[0] == 0:
            return
        yield {"input_ids": ids, "attention_mask": (ids != pad_token_id).long()}


def make_student(cfg: Config, teacher: torch.nn.Module, mapping: Mapping,
                 data: torch.Tensor | None, pad_token_id: int = 0, tokenizer=None):
    """Returns (student, loss_module, init_report) ready for ``distill.train``.

    The student is a base encoder (AutoModel), or a masked-LM model when the
    objective distils logits; its head then starts from the teacher's. With
    ``init.method: wid`` it is the teacher-wide compactor model (see
    ``layersearch.wid``; ``tokenizer`` serves its MLM masking), which
    ``finish_student`` turns into the student proper after training.
    """
    scfg = student_config(teacher.config, cfg.student)
    if cfg.student.init.method == "wid":
        return make_wid_student(cfg, teacher, mapping, scfg, tokenizer)
    torch.manual_seed(cfg.student.init.seed)
    mlm = cfg.objective.terms.get("logit_kd", 0) > 0
    if mlm:
        scfg._attn_implementation = adapter_for(scfg).kernel("sdpa")
        student = AutoModelForMaskedLM.from_config(scfg)
    else:
        student = build_student(scfg, attentions=False)
    batches = None
    if data is not None:
        batches = importance_batches(data, cfg.student.init.importance_batches, pad_token_id)
    report = init_student(student.base_model, teacher.base_model, cfg.student.init, mapping,
                          batches)
    if mlm and scfg.hidden_size == teacher.config.hidden_size:
        # The prediction head's transform and bias carry over; its decoder is tied
        # to the (already initialised) word embeddings.
        copy_mlm_head(student, teacher)
    loss = DistillLoss(cfg.objective, mapping, scfg, teacher.config)
    return student, loss, report


@torch.no_grad()
def copy_mlm_head(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """The teacher's MLM transform (dense, norm) and output bias, into an equally wide student."""
    adapter = adapter_for(teacher)
    for path in (adapter.mlm_dense, adapter.mlm_norm):
        get(student, path).load_state_dict(get(teacher, path).state_dict())
    get(student, adapter.mlm_bias).copy_(get(teacher, adapter.mlm_bias))


def finish_student(student: torch.nn.Module) -> torch.nn.Module:
    """The model to save or fine-tune once training is over.

    WID's compactor model is hard-pruned and merged into an ordinary, smaller
    model; any other student is returned as it is.
    """
    return merge(student) if is_compactor_model(student) else student
