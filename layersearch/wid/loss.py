"""WIDLoss: WID's objective and the trainer hooks that run its compression schedule.

The objective is ``student.init.wid.objective``: ``distill`` (the default)
matches the configured objectives (``DistillLoss``) against the frozen teacher
along the mapping, which is what the search ranks; ``mlm`` trains the masked-LM
loss, as the WID paper does, and needs a teacher with an MLM head. The config
alone decides it (``models.load_teacher_for`` loads the head only for ``mlm``
or ``logit_kd``), so a proxy evaluation and the final distillation train the
same objective. The compactor model has the teacher's width, so no
projections are needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from layersearch.config import WIDConfig
from layersearch.distill.callbacks import TrainerCallback
from layersearch.features import Requirements
from layersearch.init import InitError
from layersearch.losses import DistillLoss
from layersearch.wid.schedule import (
    is_marking,
    marks_fraction,
    penalty_at,
    penalty_norm,
    prox_step,
    update_marks,
)

MLM_PROBABILITY = 0.15  # BERT's masking rate


class WIDLoss(TrainerCallback, nn.Module):
    """The WID objective for ``distill.train``: MLM or ``DistillLoss``, plus the compactor schedule.

    Implements the trainer's hooks: ``extra_terms`` (the MLM loss) and
    ``after_step`` (marks and proximal steps; returns the penalty to log).
    ``after_step`` reads only the config, the step, this module's
    ``penalty_weight`` buffer and the student's parameters and mark buffers,
    so a checkpoint of the two restores the schedule exactly.
    """

    def __init__(self, model: PreTrainedModel, cfg: WIDConfig, distill: DistillLoss | None,
                 tokenizer=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.distill = distill
        # The student's parameters belong to the student; registering it here
        # would put them in the optimiser twice and in the loss checkpoint.
        self.__dict__["model"] = model
        self.register_buffer("penalty_weight", torch.zeros(()))
        self.collator = None
        if distill is None:
            from transformers import DataCollatorForLanguageModeling

            if tokenizer is None or tokenizer.mask_token is None:
                raise InitError("student.init.wid.objective: 'mlm' needs a tokenizer with a mask token")
            self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY)
            self.special_ids = torch.tensor(tokenizer.all_special_ids)

    @property
    def weights(self) -> dict[str, float]:
        return self.distill.weights if self.distill is not None else {"mlm": 1.0}

    def student_requirements(self) -> Requirements:
        return self.distill.student_requirements() if self.distill is not None else Requirements()

    def teacher_requirements(self) -> Requirements:
        return self.distill.teacher_requirements() if self.distill is not None else Requirements()

    def forward(self, student, teacher) -> dict[str, Tensor]:
        return self.distill(student, teacher)

    def extra_terms(self, student: nn.Module, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {} if self.collator is None else {"mlm": self._mlm(student, ids, mask)}

    def _mlm(self, student: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
        # Masking draws from torch's global RNG, which trainer checkpoints restore.
        cpu = ids.cpu()
        special = torch.isin(cpu, self.special_ids) | ~mask.bool().cpu()
        inputs, labels = self.collator.torch_mask_tokens(cpu.clone(), special_tokens_mask=special)
        out = student(input_ids=inputs.to(ids.device), attention_mask=mask,
                      labels=labels.to(ids.device))
        return out.loss

    def after_step(self, step: int, steps: int) -> dict[str, float]:
        c = self.cfg
        if is_marking(c, step, steps):
            fraction = marks_fraction(c, step, steps)
            update_marks(self.model, fraction)
            self.penalty_weight.fill_(penalty_at(c, fraction))
        lam = float(self.penalty_weight)
        if lam > 0:
            prox_step(self.model, lam)
        return {"wid_penalty": lam * float(penalty_norm(self.model))}
