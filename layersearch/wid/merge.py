"""WID's merge: fold every compactor into its weights, giving an ordinary smaller model.

After ``hard_prune`` the marks equal the target; the merge keeps the unmarked
indices: ``W' = R W L`` restricted to them, ``b' = R b``, LayerNorm
``gamma * d``, ``beta * d`` sliced, queries scaled by
``sqrt(d_student / d_teacher)`` so attention keeps the teacher's temperature.
The merged model computes what the pruned compactor model does.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from layersearch.wid.schedule import hard_prune, kept_indices
from layersearch.wid.shapes import widths
from layersearch.wid.surgery import MaskedLayerNorm, mlm_transform


@torch.no_grad()
def merge(model: PreTrainedModel) -> PreTrainedModel:
    """Hard-prune ``model`` in place and fold its compactors into an ordinary smaller model.

    The result has the target config (same class as the teacher: base model or
    masked LM) and computes the pruned compactor model's outputs on the kept
    channels.
    """
    hard_prune(model)
    t, s = widths(model)
    keep = kept_indices(model)
    cfg = copy.deepcopy(model.wid_target)
    cfg._attn_implementation = model.config._attn_implementation
    small = type(model)(cfg).to(model.base_model.wid_residual.d.device).eval()
    big_b, small_b = model.base_model, small.base_model
    d, h = big_b.wid_residual.d, keep["hidden"]

    def put(param: Tensor, value: Tensor) -> None:
        if param.shape != value.shape:
            raise RuntimeError(f"WID merge: {tuple(value.shape)} for a {tuple(param.shape)} weight")
        param.copy_(value)

    def norm(dst: nn.Module, src: MaskedLayerNorm) -> None:
        put(dst.weight, (src.weight * d)[h])
        put(dst.bias, (src.bias * d)[h])

    def linear(dst: nn.Linear, w: Tensor, b: Tensor, rows: Tensor, cols: Tensor, scale=1.0):
        put(dst.weight, w[rows][:, cols] * scale)
        put(dst.bias, b[rows] * scale)

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        put(getattr(small_b.embeddings, name).weight, getattr(big_b.embeddings, name).weight[:, h])
    norm(small_b.embeddings.LayerNorm, big_b.embeddings.LayerNorm)
    q_scale = math.sqrt(s.head_dim / t.head_dim)  # keeps the teacher's 1/sqrt(d) temperature
    for i, (sl, bl) in enumerate(zip(small_b.encoder.layer, big_b.encoder.layer, strict=True)):
        qk, vo, ffn = keep["qk"][i], keep["vo"][i], keep["ffn"][i]
        ssa, bsa = sl.attention.self, bl.attention.self
        linear(ssa.query, *bsa.query.merged(), qk, h, q_scale)
        linear(ssa.key, *bsa.key.merged(), qk, h)
        linear(ssa.value, *bsa.value.merged(), vo, h)
        linear(sl.attention.output.dense, *bl.attention.output.dense.merged(), h, vo)
        norm(sl.attention.output.LayerNorm, bl.attention.output.LayerNorm)
        linear(sl.intermediate.dense, *bl.intermediate.dense.merged(), ffn, h)
        linear(sl.output.dense, *bl.output.dense.merged(), h, ffn)
        norm(sl.output.LayerNorm, bl.output.LayerNorm)
    if getattr(big_b, "pooler", None) is not None and getattr(small_b, "pooler", None) is not None:
        pooler = big_b.pooler.dense
        linear(small_b.pooler.dense, pooler.weight, pooler.bias, h, h)
    big_head, small_head = mlm_transform(model), mlm_transform(small)
    if big_head is not None:
        linear(small_head.dense, big_head.dense.weight, big_head.dense.bias, h, h)
        norm(small_head.LayerNorm, big_head.LayerNorm)
        put(small.cls.predictions.bias, model.cls.predictions.bias)
        # The decoder is tied to the (already sliced) word embeddings.
        if small.get_output_embeddings().weight.data_ptr() != small_b.embeddings.word_embeddings.weight.data_ptr():
            put(small.get_output_embeddings().weight, big_b.embeddings.word_embeddings.weight[:, h])
    return small


