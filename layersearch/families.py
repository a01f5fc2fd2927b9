"""Family adapters: the one place that knows where each encoder family keeps its parts.

One table, keyed by ``config.model_type`` (as PEFT's target-module tables and
Optimum's normalized configs are): where the transformer blocks are, the paths
of q/k/v/o, the FFN and the layer norms inside a block, what the config calls
its FFN width, which attention kernels the family implements, where the MLM
head keeps its transform, and how attention scores form (MPNet adds a relative
position bias, shared by every layer, to q.k / sqrt(d)). Hooks, inits, WID, the
objectives and the readouts ask an adapter; nothing else names a module path.

To add a family: one ``FamilyAdapter`` entry below, then the family tests in
``tests/unit/test_families.py`` (a tiny random config of the family) must pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from layersearch.errors import UserError


class FamilyError(UserError, ValueError):
    """A model family layersearch has no adapter for, or a part it cannot use."""


@dataclass(frozen=True)
class Dims:
    """The shape numbers every family has, under one set of names."""

    layers: int
    hidden: int
    heads: int
    ffn: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class FamilyAdapter:
    """Where one family keeps each part; paths are dotted attribute names."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # the block list, from the base model
    query: str  # the rest from one block
    key: str
    value: str
    attn_out: str
    attn_norm: str
    ffn_in: str
    ffn_out: str
    ffn_norm: str
    ffn_key: str = "intermediate_size"  # the config's name for the FFN width
    attention_kernels: tuple[str, ...] = ("sdpa", "eager")
    # From the masked-LM model's root: the head's transform and its output bias.
    mlm_dense: str = ""
    mlm_norm: str = ""
    mlm_bias: str = ""
    # (base model, sequence length) -> [1, heads, T, T] added to q.k / sqrt(d), or None.
    score_bias: Callable[[nn.Module, int], Tensor] | None = None
    # Modules outside the blocks shared by every layer, with a per-head last axis.
    shared_head_tables: tuple[str, ...] = ()

    # ---- the model's parts ------------------------------------------------------------------

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The transformer blocks, from a base model or a model with a head."""
        return get(base_of(model), self.layers)

    def part(self, block: nn.Module, role: str) -> nn.Module:
        """``role`` is one of query, key, value, attn_out, attn_norm, ffn_in, ffn_out, ffn_norm."""
        return get(block, getattr(self, role))

    def set_part(self, block: nn.Module, role: str, module: nn.Module) -> None:
        put(block, getattr(self, role), module)

    def attention_module(self, block: nn.Module) -> nn.Module:
        """The module that owns q/k/v (its parent's path)."""
        return get(block, self.query.rpartition(".")[0]) if "." in self.query else block

    def embeddings(self, model: nn.Module) -> nn.Module:
        return base_of(model).embeddings

    def embedding_norm(self, model: nn.Module) -> nn.LayerNorm:
        return self.embeddings(model).LayerNorm

    def embedding_projection(self, model: nn.Module) -> nn.Linear | None:
        """ELECTRA's map from a narrower embedding into the hidden width, where it has one."""
        return getattr(base_of(model), "embeddings_project", None)

    def pooler(self, model: nn.Module) -> nn.Module | None:
        return getattr(base_of(model), "pooler", None)

    def mlm_transform(self, model: nn.Module) -> tuple[nn.Linear, str] | None:
        """(transform dense, path of its norm from the root) of a masked-LM model, else None."""
        if not self.mlm_dense or model is base_of(model):
            return None
        try:
            return get(model, self.mlm_dense), self.mlm_norm
        except AttributeError:
            return None

    # ---- config -------------------------------------------------------------------------------

    def dims(self, config) -> Dims:
        return Dims(int(config.num_hidden_layers), int(config.hidden_size),
                    int(config.num_attention_heads), int(getattr(config, self.ffn_key)))

    def set_dims(self, config, layers: int, hidden: int, heads: int, ffn: int) -> None:
        # DistilBERT's attribute_map sends hidden_size -> dim etc.; its FFN key is its own.
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads = layers, hidden, heads
        setattr(config, self.ffn_key, ffn)

    def kernel(self, prefer: str) -> str:
        """The attention kernel to build with: ``prefer`` where the family has it, else its own."""
        return prefer if prefer in self.attention_kernels else self.attention_kernels[0]


def get(root: nn.Module, path: str):
    obj = root
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def put(root: nn.Module, path: str, value) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get(root, parent) if parent else root, name, value)


def base_of(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def _mpnet_bias(base: nn.Module, seq_length: int) -> Tensor:
    # MPNet's encoder builds one relative-position bias for all layers from the
    # sequence length alone (no position ids are passed to it).
    encoder = base.encoder
    probe = encoder.relative_attention_bias.weight.new_zeros(1, seq_length, 1)
    return encoder.compute_position_bias(probe)


_BERT_BLOCK = dict(
    layers="encoder.layer",
    query="attention.self.query", key="attention.self.key", value="attention.self.value",
    attn_out="attention.output.dense", attn_norm="attention.output.LayerNorm",
    ffn_in="intermediate.dense", ffn_out="output.dense", ffn_norm="output.LayerNorm",
)

ADAPTERS: dict[str, FamilyAdapter] = {
    a.name: a
    for a in (
        # BERT covers MiniLM, bge, e5 and gte: they ship as model_type "bert".
        FamilyAdapter("bert", ("bert",), **_BERT_BLOCK, mlm_dense="cls.predictions.transform.dense",
                      mlm_norm="cls.predictions.transform.LayerNorm", mlm_bias="cls.predictions.bias"),
        FamilyAdapter("roberta", ("roberta", "xlm-roberta"), **_BERT_BLOCK, mlm_dense="lm_head.dense",
                      mlm_norm="lm_head.layer_norm", mlm_bias="lm_head.bias"),
        FamilyAdapter("electra", ("electra",), **_BERT_BLOCK, mlm_dense="generator_predictions.dense",
                      mlm_norm="generator_predictions.LayerNorm", mlm_bias="generator_lm_head.bias"),
        FamilyAdapter(
            "mpnet", ("mpnet",), layers="encoder.layer",
            query="attention.attn.q", key="attention.attn.k", value="attention.attn.v",
            attn_out="attention.attn.o", attn_norm="attention.LayerNorm",
            ffn_in="intermediate.dense", ffn_out="output.dense", ffn_norm="output.LayerNorm",
            attention_kernels=("eager",),  # MPNet computes attention itself, with its bias
            mlm_dense="lm_head.dense", mlm_norm="lm_head.layer_norm", mlm_bias="lm_head.bias",
            score_bias=_mpnet_bias, shared_head_tables=("encoder.relative_attention_bias",),
        ),
        FamilyAdapter(
            "distilbert", ("distilbert",), layers="transformer.layer",
            query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
            attn_out="attention.out_lin", attn_norm="sa_layer_norm",
            ffn_in="ffn.lin1", ffn_out="ffn.lin2", ffn_norm="output_layer_norm", ffn_key="hidden_dim",
            mlm_dense="vocab_transform", mlm_norm="vocab_layer_norm", mlm_bias="vocab_projector.bias",
        ),
    )
}
_BY_TYPE = {t: a for a in ADAPTERS.values() for t in a.model_types}
SUPPORTED = tuple(sorted(_BY_TYPE))
ROLES = ("query", "key", "value", "attn_out", "attn_norm", "ffn_in", "ffn_out", "ffn_norm")


def adapter_for(config_or_model) -> FamilyAdapter:
    """The adapter of a config's (or a model's) family; a one-line error for any other."""
    config = getattr(config_or_model, "config", config_or_model)
    model_type = getattr(config, "model_type", None)
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise FamilyError(
            f"teacher.model: model type '{model_type}' is not supported; supported families: "
            f"{', '.join(SUPPORTED)} (docs/families.md says how to add one)"
        ) from None


def dims(config) -> Dims:
    return adapter_for(config).dims(config)


def attention_scores(queries: Tensor, keys: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    """The pre-softmax scores a block forms from its projections: [B, heads, T, T], float32."""
    b, t, w = queries.shape
    q = queries.float().reshape(b, t, heads, w // heads).transpose(1, 2)
    k = keys.float().reshape(b, t, heads, w // heads).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores if bias is None else scores + bias.float()


@torch.no_grad()
def copy_shared_head_tables(student: nn.Module, teacher: nn.Module, heads: Tensor | None) -> None:
    """Copy tables every layer shares (MPNet's position bias), keeping ``heads`` of the teacher's."""
    adapter = adapter_for(teacher)
    for path in adapter.shared_head_tables:
        src = get(base_of(teacher), path).weight
        get(base_of(student), path).weight.copy_(src if heads is None else src[:, heads])
