"""The widths WID compresses from and to, read off the compactor model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig


@dataclass(frozen=True)
class Widths:
    hidden: int
    heads: int
    head_dim: int
    ffn: int

    @classmethod
    def of(cls, c: PretrainedConfig) -> Widths:
        return cls(c.hidden_size, c.num_attention_heads, c.hidden_size // c.num_attention_heads,
                   c.intermediate_size)


def widths(model: nn.Module) -> tuple[Widths, Widths]:
    """(compactor model's, target student's) widths."""
    return Widths.of(model.config), Widths.of(model.wid_target)
