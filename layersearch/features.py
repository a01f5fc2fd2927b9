"""What distillation objectives read from an encoder of a supported family, in one forward pass.

Attention scores are rebuilt from the query/key/value projections caught by
forward hooks, not taken from ``output_attentions``: that would force the eager
attention kernel, while hooks leave SDPA (or flash) attention in place. Where
a family adds a term of its own to the scores (MPNet's relative position
bias), the adapter computes it once per batch. Which modules to hook comes from
the family adapter. Only the layers a ``Requirements`` names get hooks, and the
hooks are gone when ``extract`` returns, even if the forward pass raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from layersearch.families import adapter_for, attention_scores

# Requirements field -> the adapter's role of that projection.
PROJECTIONS = {"queries": "query", "keys": "key", "values": "value"}


@dataclass
class Features:
    """One model's view of a batch; layer numbers are 1-based, 0 is the embedding output."""

    hidden: dict[int, Tensor]  # [B, T, H]
    queries: dict[int, Tensor]  # [B, T, heads * head_dim], heads not split
    keys: dict[int, Tensor]
    values: dict[int, Tensor]
    attention_mask: Tensor  # [B, T], 1 = real token
    logits: Tensor | None = None  # [B, T, V] when the model has an MLM head
    score_bias: Tensor | None = None  # [1, heads, T, T] added to every layer's scores (MPNet)

    def scores(self, layer: int, heads: int) -> Tensor:
        """Layer ``layer``'s pre-softmax attention scores as the model forms them, [B, heads, T, T]."""
        return attention_scores(self.queries[layer], self.keys[layer], heads, self.score_bias)


@dataclass(frozen=True)
class Requirements:
    """Which layers' tensors a consumer needs; hashable, and merged across students.

    Queries, keys and values are separate layer sets (rather than a layer -> kinds
    dict) so the object stays frozen and hashable and mirrors ``Features``.
    """

    hidden: frozenset[int] = field(default_factory=frozenset)
    queries: frozenset[int] = field(default_factory=frozenset)
    keys: frozenset[int] = field(default_factory=frozenset)
    values: frozenset[int] = field(default_factory=frozenset)
    logits: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden", *PROJECTIONS):
            object.__setattr__(self, name, frozenset(int(i) for i in getattr(self, name)))

    def merge(self, *others: Requirements) -> Requirements:
        """The union: what one teacher pass must yield to serve every consumer."""
        every = (self, *others)
        return Requirements(
            hidden=frozenset().union(*(r.hidden for r in every)),
            queries=frozenset().union(*(r.queries for r in every)),
            keys=frozenset().union(*(r.keys for r in every)),
            values=frozenset().union(*(r.values for r in every)),
            logits=any(r.logits for r in every),
        )

    __or__ = merge

    def layers(self) -> frozenset[int]:
        """Every layer number mentioned (0 = embedding output)."""
        return self.hidden | self.queries | self.keys | self.values


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a model of a supported family, with or without a task head."""
    return adapter_for(model).blocks(model)


@contextmanager
def qkv_hooks(model: nn.Module, req: Requirements) -> Iterator[dict[str, dict[int, Tensor]]]:
    """Catch the raw query/key/value outputs of the required layers while the block runs."""
    adapter = adapter_for(model)
    layers = adapter.blocks(model)
    wanted = req.queries | req.keys | req.values
    bad = sorted(i for i in wanted if not 1 <= i <= len(layers))
    if bad:
        raise ValueError(f"layers {bad} requested from a {len(layers)}-layer model")
    caught: dict[str, dict[int, Tensor]] = {name: {} for name in PROJECTIONS}
    handles = []

    def catch(store: dict[int, Tensor], i: int):
        def hook(_module: nn.Module, _args: object, output: Tensor) -> None:
            store[i] = output

        return hook

    try:
        for name, role in PROJECTIONS.items():
            for i in sorted(getattr(req, name)):
                module = adapter.part(layers[i - 1], role)
                handles.append(module.register_forward_hook(catch(caught[name], i)))
        yield caught
    finally:
        for h in handles:
            h.remove()


def extract(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    req: Requirements,
    token_type_ids: Tensor | None = None,
) -> Features:
    """Run ``model`` once and keep what ``req`` asks for.

    Gradients follow the caller's mode: wrap teacher calls in ``torch.no_grad()``.
    """
    adapter = adapter_for(model)
    n = len(adapter.blocks(model))
    bad = sorted(i for i in req.hidden if not 0 <= i <= n)
    if bad:
        raise ValueError(f"hidden states {bad} requested from a {n}-layer model")
    # Without logits, skip the MLM head: its vocab-sized output is the costliest tensor.
    runner = model if req.logits else model.base_model
    inputs = {"input_ids": input_ids,
              # No padding (corpus blocks never have any): no mask, so SDPA takes its unmasked path.
              "attention_mask": None if bool(attention_mask.all()) else attention_mask}
    if token_type_ids is not None:  # families without segments (RoBERTa, MPNet, DistilBERT) get none
        inputs["token_type_ids"] = token_type_ids
    with qkv_hooks(model, req) as caught:
        out = runner(**inputs, output_hidden_states=bool(req.hidden), return_dict=True)
    states = out.hidden_states if req.hidden else ()
    bias = None
    if adapter.score_bias is not None and req.queries and req.keys:
        bias = adapter.score_bias(model.base_model, input_ids.shape[1])
    return Features(
        hidden={i: states[i] for i in sorted(req.hidden)},
        queries=caught["queries"],
        keys=caught["keys"],
        values=caught["values"],
        attention_mask=attention_mask,
        logits=getattr(out, "logits", None) if req.logits else None,
        score_bias=bias,
    )


HIDDEN_BATCH = 32  # blocks per forward when reading last hidden states (agreement, its cached targets)


@torch.no_grad()
def last_hidden_fp32(model: nn.Module, ids: Tensor, device) -> Tensor:
    """[blocks, tokens, width] float32 last hidden states of one batch of whole blocks, on the CPU."""
    model.eval()
    x = ids.to(device)
    states = model(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states
    return states[-1].float().cpu()
