"""WID's surgery: the teacher, copied, with identity compactors around every linear map.

The *compactor model* is a copy of the teacher's embeddings and of the teacher
layers ``init.seed_layers`` picks (so a searched mapping sets the depth), with
identity-initialised square compactors around every linear map:

- row compactors (on output dims) after the query, key, value and FFN-in maps,
  column compactors (on input dims) before the attention-output and FFN-out
  maps. Their rows/columns form *groups*: a query/key dim (row j of both), a
  value dim (row j of the value compactor with column j of the attention-output
  one), an FFN neuron (row j of FFN-in with column j of FFN-out). Attention
  shrinks by whole heads when the student has fewer heads, by dims inside every
  head when its head size is smaller, or both.
- the residual stream (width H) has ONE shared compactor, a diagonal ``d``
  applied at every LayerNorm that writes the stream (embeddings, attention
  output, FFN output, and the MLM head's transform), since every residual value
  is such a LayerNorm's output. A full matrix there would not survive the
  merge: LayerNorm does not commute with a general linear map. A diagonal
  commutes with LayerNorm's elementwise affine, so it folds into gamma and
  beta, and its zeros select channels, which the merge realises by slicing.
- those LayerNorms normalise over a weighted set of channels: weight 1 for an
  unmarked channel, ``min(1, |d_j|)`` for a marked one. A marked channel fades
  out of the statistics as the penalty shrinks it; once pruned (``d_j = 0``) it
  is gone, and the LayerNorm is exactly the merged model's LayerNorm over the
  kept channels. With nothing marked it is ``F.layer_norm``, so the compactor
  model starts bit for bit at the teacher.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from layersearch.config import Config
from layersearch.families import adapter_for, get, put
from layersearch.init import InitError, seed_layers
from layersearch.losses import DistillLoss
from layersearch.mapping import Mapping
from layersearch.wid.loss import WIDLoss
from layersearch.wid.shapes import Widths, widths

# ---- the modules that replace the teacher's ---------------------------------------------------


class ResidualCompactor(nn.Module):
    """The residual stream's one compactor: a diagonal ``d`` shared by every layer."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.d = nn.Parameter(torch.ones(width))
        self.register_buffer("marked", torch.zeros(width, dtype=torch.bool))

    def stat_weights(self) -> Tensor:
        """Each channel's weight in LayerNorm statistics (1 unless marked)."""
        return torch.where(self.marked, self.d.abs().clamp(max=1), torch.ones_like(self.d))


class MaskedLayerNorm(nn.Module):
    """A LayerNorm writing the residual stream: statistics over the live channels, output times ``d``."""

    def __init__(self, ln: nn.LayerNorm, residual: ResidualCompactor) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps
        # Shared, and registered once on the model: a second registration would
        # duplicate it in state_dict (safetensors refuses shared tensors).
        self.__dict__["residual"] = residual

    def forward(self, x: Tensor) -> Tensor:
        r = self.residual
        if not bool(r.marked.any()):  # the teacher's computation, exactly
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps) * r.d
        w = r.stat_weights()
        x = x.float()
        n = w.sum()
        xc = x - (x * w).sum(-1, keepdim=True) / n
        var = (xc.square() * w).sum(-1, keepdim=True) / n
        return (xc * torch.rsqrt(var + self.eps) * self.weight + self.bias) * r.d


class CompactLinear(nn.Module):
    """``R (W L x + b)``: a teacher linear map with a row (output) or column (input) compactor."""

    def __init__(self, linear: nn.Linear, side: str) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        w = linear.weight
        n = w.shape[0] if side == "row" else w.shape[1]
        eye = nn.Parameter(torch.eye(n, dtype=w.dtype, device=w.device))
        self.register_parameter("row", eye if side == "row" else None)
        self.register_parameter("col", eye if side == "col" else None)

    def forward(self, x: Tensor) -> Tensor:
        # Folding first costs out*in*n once per call instead of n*n per token, and
        # with identity compactors the fold is exact, so training starts at the teacher.
        return F.linear(x, *self.merged())

    def merged(self) -> tuple[Tensor, Tensor]:
        """The equivalent plain (weight, bias)."""
        w, b = self.weight, self.bias
        if self.col is not None:
            w = w @ self.col
        if self.row is not None:
            w, b = self.row @ w, self.row @ b
        return w, b


class LayerMarks(nn.Module):
    """Which groups of one layer are marked for removal (buffers, so checkpoints keep them)."""

    def __init__(self, heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        for name, n in (("heads", heads), ("qk", heads * head_dim), ("vo", heads * head_dim),
                        ("ffn", ffn)):
            self.register_buffer(name, torch.zeros(n, dtype=torch.bool))


def is_compactor_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, "base_model", None), nn.Module) and isinstance(
        getattr(model.base_model, "wid_residual", None), ResidualCompactor
    )


# ---- building ---------------------------------------------------------------------------------


def build_compactor_model(teacher: PreTrainedModel, layers: list[int],
                          target: PretrainedConfig) -> PreTrainedModel:
    """A trainable copy of ``teacher`` restricted to ``layers`` (1-based), with identity compactors."""
    t, s = Widths.of(teacher.config), Widths.of(target)
    if s.head_dim > t.head_dim:
        raise InitError(
            f"student.num_attention_heads: WID can shrink heads but not widen them; the student's "
            f"head size {target.hidden_size}/{target.num_attention_heads} = {s.head_dim} exceeds "
            f"the teacher's {t.head_dim}; use at least {math.ceil(s.hidden / t.head_dim)} heads"
        )
    adapter = adapter_for(teacher)
    if adapter.embedding_projection(teacher) is not None:
        raise InitError(
            "student.init.method: WID needs embeddings as wide as the hidden stream; this "
            "teacher projects narrower embeddings into it (ELECTRA-small style); use etd-impt"
        )
    if adapter.shared_head_tables and s.heads < t.heads:
        raise InitError(
            f"student.num_attention_heads: WID cannot drop whole heads of a {adapter.name} teacher, "
            f"whose layers share one per-head position bias; keep {t.heads} heads and let WID "
            f"narrow each head instead (student.num_attention_heads: {t.heads})"
        )
    t_layers = adapter.blocks(teacher)
    model = copy.deepcopy(teacher)
    base = model.base_model
    put(base, adapter.layers, nn.ModuleList(copy.deepcopy(t_layers[i - 1]) for i in layers))
    model.config.num_hidden_layers = len(layers)
    model.config.architectures = None
    model.requires_grad_(True)
    model.train()

    emb_norm = adapter.embedding_norm(base)
    residual = ResidualCompactor(t.hidden).to(emb_norm.weight.device)
    base.wid_residual = residual
    adapter.embeddings(base).LayerNorm = MaskedLayerNorm(emb_norm, residual)
    for i, layer in enumerate(adapter.blocks(base)):
        layer.wid_adapter = adapter  # a plain attribute: the schedule finds the parts by it
        attention = adapter.attention_module(layer)
        if hasattr(attention, "layer_idx"):
            attention.layer_idx = i
        for role in ("query", "key", "value", "ffn_in"):
            adapter.set_part(layer, role, CompactLinear(adapter.part(layer, role), "row"))
        for role in ("attn_out", "ffn_out"):
            adapter.set_part(layer, role, CompactLinear(adapter.part(layer, role), "col"))
        for role in ("attn_norm", "ffn_norm"):
            adapter.set_part(layer, role, MaskedLayerNorm(adapter.part(layer, role), residual))
        layer.wid_marks = LayerMarks(t.heads, t.head_dim, t.ffn).to(residual.d.device)
    head = adapter.mlm_transform(model)
    if head is not None:
        put(model, head[1], MaskedLayerNorm(get(model, head[1]), residual))
    model.wid_target = copy.deepcopy(target)
    model.wid_target.num_hidden_layers = len(layers)
    return model


def mlm_transform(model: nn.Module) -> tuple[nn.Linear, str] | None:
    """The MLM head's transform (its dense, and its norm's path), or None for a base model."""
    return adapter_for(model).mlm_transform(model)


def make_wid_student(cfg: Config, teacher: PreTrainedModel, mapping: Mapping,
                     target: PretrainedConfig, tokenizer=None):
    """(compactor model, WIDLoss, init report), as ``student.make_student`` returns them."""
    n_teacher = teacher.config.num_hidden_layers
    layers = seed_layers(cfg.student.init, mapping, cfg.student.num_layers, n_teacher)
    wid = cfg.student.init.wid
    if wid.objective == "mlm" and teacher.get_output_embeddings() is None:
        raise InitError(
            f"student.init.wid.objective: 'mlm' needs the teacher's masked-LM head, and "
            f"'{cfg.teacher.model}' was loaded without one (load it with "
            f"models.load_teacher_for); use 'distill'"
        )
    model = build_compactor_model(teacher, layers, target)
    if wid.objective == "mlm":
        if tokenizer is None:
            from layersearch.models import load_tokenizer

            tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
        loss = WIDLoss(model, wid, None, tokenizer)
    else:
        # Along the mapping whether or not the teacher has a head: what the search ranks.
        distill = DistillLoss(cfg.objective, mapping, model.config, teacher.config)
        loss = WIDLoss(model, wid, distill)
    t, s = widths(model)
    report = {
        "method": "wid",
        "seed": cfg.student.init.seed,
        "teacher_layers": layers,
        "objective": list(loss.weights),
        "target": {"hidden_size": s.hidden, "num_attention_heads": s.heads,
                   "head_size": s.head_dim, "intermediate_size": s.ffn},
        "remove": {"hidden_dims": t.hidden - s.hidden, "heads": t.heads - s.heads,
                   "head_dims": t.head_dim - s.head_dim, "neurons": t.ffn - s.ffn},
    }
    return model, loss, report
