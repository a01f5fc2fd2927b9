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

from layersearch.families import adapter_for, get
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

    adapter = adapter_for(model)
    small_emb, big_emb = adapter.embeddings(small_b), adapter.embeddings(big_b)
    for name, table in big_emb.named_modules():
        if isinstance(table, nn.Embedding):  # word, position and (where the family has them) segment tables
            put(get(small_emb, name).weight, table.weight[:, h])
    norm(small_emb.LayerNorm, big_emb.LayerNorm)
    q_scale = math.sqrt(s.head_dim / t.head_dim)  # keeps the teacher's 1/sqrt(d) temperature
    for i, (sl, bl) in enumerate(zip(adapter.blocks(small_b), adapter.blocks(big_b), strict=True)):
        qk, vo, ffn = keep["qk"][i], keep["vo"][i], keep["ffn"][i]

        def part(block, role):
            return adapter.part(block, role)

        linear(part(sl, "query"), *part(bl, "query").merged(), qk, h, q_scale)
        linear(part(sl, "key"), *part(bl, "key").merged(), qk, h)
        linear(part(sl, "value"), *part(bl, "value").merged(), vo, h)
        linear(part(sl, "attn_out"), *part(bl, "attn_out").merged(), h, vo)
        norm(part(sl, "attn_norm"), part(bl, "attn_norm"))
        linear(part(sl, "ffn_in"), *part(bl, "ffn_in").merged(), ffn, h)
        linear(part(sl, "ffn_out"), *part(bl, "ffn_out").merged(), h, ffn)
        norm(part(sl, "ffn_norm"), part(bl, "ffn_norm"))
    # Tables every layer shares (MPNet's position bias) keep every head: the surgery
    # refuses to drop whole heads of such a family.
    for path in adapter.shared_head_tables:
        put(get(small_b, path).weight, get(big_b, path).weight)
    if adapter.pooler(big_b) is not None and adapter.pooler(small_b) is not None:
        pooler = adapter.pooler(big_b).dense
        linear(adapter.pooler(small_b).dense, pooler.weight, pooler.bias, h, h)
    big_head, small_head = mlm_transform(model), mlm_transform(small)
    if big_head is not None:
        linear(small_head[0], big_head[0].weight, big_head[0].bias, h, h)
        norm(get(small, big_head[1]), get(model, big_head[1]))
        put(get(small, adapter.mlm_bias), get(model, adapter.mlm_bias))
        # The decoder is tied to the (already sliced) word embeddings.
        if small.get_output_embeddings().weight.data_ptr() != small_emb.word_embeddings.weight.data_ptr():
            put(small.get_output_embeddings().weight, big_emb.word_embeddings.weight[:, h])
    return small


