"""Readouts: how a distilled student becomes task results (DESIGN.md, "readout").

- ``finetune``: a classification head and a short seeded fine-tune per task and
  seed (``finetune.py``; ``finetune_packed.py`` trains a pack of students at once).
  Noisy: each seed is its own draw.
- ``probe``: a logistic regression on the frozen student's mean-pooled features
  (``probe.py``). A convex fit: the same student gives the same score.
- ``agreement``: no labels; a ridge map from the student's last layer to the
  teacher's on held-out corpus blocks, scored by held-out R^2 (``agreement.py``).

Each returns ``finetune.TaskResult``s, one per task and seed, so the evaluator,
the record and the statistics treat them alike. ``make_readout`` is the one
place the evaluator asks for one.
"""

from __future__ import annotations

from typing import Protocol

from layersearch.readout.finetune import TaskEncodings, TaskResult, finetune_all


class Readout(Protocol):
    name: str

    def score(self, encoder, seeds: list[int], progress: bool = False) -> list[TaskResult]:
        """Task results of one distilled student's encoder, one per task and seed."""


class FinetuneReadout:
    name = "finetune"

    def __init__(self, tasks_cfg, tokenizer, encoded: TaskEncodings, device: str):
        self.tasks, self.tokenizer, self.encoded, self.device = tasks_cfg, tokenizer, encoded, device

    def score(self, encoder, seeds: list[int], progress: bool = False) -> list[TaskResult]:
        return finetune_all(encoder, self.tokenizer, self.tasks, self.encoded.datasets, self.device, progress,
                            seeds=seeds, encoded=self.encoded)


def make_readout(cfg, tokenizer, datasets: dict | None, encoded: TaskEncodings | None, device: str,
                 teacher=None) -> Readout:
    """The readout ``cfg.tasks.readout`` names, over data the caller has loaded once."""
    kind = cfg.tasks.readout
    if kind == "probe":
        from layersearch.readout.probe import ProbeReadout

        return ProbeReadout(cfg.tasks, tokenizer, datasets, device)
    if kind == "agreement":
        from layersearch.readout.agreement import AgreementReadout

        return AgreementReadout(cfg, tokenizer, teacher, device)
    return FinetuneReadout(cfg.tasks, tokenizer, encoded, device)


__all__ = ["FinetuneReadout", "Readout", "TaskResult", "make_readout"]
