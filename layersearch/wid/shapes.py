"""The widths WID compresses from and to, read off the compactor model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig

from layersearch.families import dims


@dataclass(frozen=True)
class Widths:
    hidden: int
    heads: int
    head_dim: int
    ffn: int

    @classmethod
    def of(cls, c: PretrainedConfig) -> Widths:
        d = dims(c)
        return cls(d.hidden, d.heads, d.head_dim, d.ffn)


def widths(model: nn.Module) -> tuple[Widths, Widths]:
    """(compactor model's, target student's) widths."""
    return Widths.of(model.config), Widths.of(model.wid_target)
