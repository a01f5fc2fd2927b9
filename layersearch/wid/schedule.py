"""WID's compression schedule: which groups are marked, how hard the penalty pushes them.

Both are functions of ``fraction = min(1, step / (compress_until * steps))``,
the share of the compression done, never of the absolute step count, so a
100k-step run follows the same curve as a 200-step proxy:

- at each marking (every ``mask_every`` steps, at the step ``fraction`` first
  reaches 1, and at the last step) that fraction of every kind of group to
  remove is marked, choosing the smallest norms (a dead group has norm 0 and
  stays marked);
- the group-lasso strength is ``lambda = penalty * (penalty_max / penalty) **
  fraction`` from that marking on: geometric from ``penalty`` to the cap
  ``penalty_max``, reached exactly when the marks reach the target. (It used
  to grow by a constant factor per marking, with no cap: 1.5x every 10 steps
  overflows float32 at step 2,370.)

The penalty ``lambda * sum ||g||`` over the marked groups is minimised by its
proximal step after each optimizer step, not through the gradient: Adam moves
a weight by about the learning rate per step whatever the gradient, far too
slowly to take an identity entry of 1 to 0, while the prox step reaches
exactly zero. ``hard_prune`` zeroes what is still marked at the end.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from layersearch.config import WIDConfig
from layersearch.families import adapter_for
from layersearch.wid.shapes import widths


def marks_fraction(cfg: WIDConfig, step: int, steps: int) -> float:
    """Share of the groups to remove that are marked after ``step`` of ``steps``."""
    return min(1.0, step / (cfg.compress_until * steps))


def is_marking(cfg: WIDConfig, step: int, steps: int) -> bool:
    """Whether the marks (and the penalty) are updated after ``step``."""
    reached = marks_fraction(cfg, step, steps) == 1 and marks_fraction(cfg, step - 1, steps) < 1
    return step % cfg.mask_every == 0 or step == steps or reached


def penalty_at(cfg: WIDConfig, fraction: float) -> float:
    """The group-lasso strength once ``fraction`` of the compression is marked (0 before any)."""
    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return cfg.penalty_max
    # In log space, so no intermediate value can overflow.
    lo, hi = math.log(cfg.penalty), math.log(cfg.penalty_max)
    return min(cfg.penalty_max, math.exp(lo + fraction * (hi - lo)))


# ---- groups -----------------------------------------------------------------------------------


def _parts(layer: nn.Module):
    # The surgery leaves the family adapter on each block of the compactor model.
    adapter = layer.wid_adapter
    return tuple(adapter.part(layer, role)
                 for role in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"))


def _blocks(model: nn.Module) -> nn.ModuleList:
    return adapter_for(model).blocks(model)


def group_norms(layer: nn.Module) -> dict[str, Tensor]:
    """L2 norm of each query/key dim, value dim and FFN neuron group of one layer."""
    q, k, v, o, i, f = _parts(layer)
    return {
        "qk": (q.row.square().sum(1) + k.row.square().sum(1)).sqrt(),
        "vo": (v.row.square().sum(1) + o.col.square().sum(0)).sqrt(),
        "ffn": (i.row.square().sum(1) + f.col.square().sum(0)).sqrt(),
    }


def _scale_groups(layer: nn.Module, factor: dict[str, Tensor]) -> None:
    q, k, v, o, i, f = _parts(layer)
    q.row.mul_(factor["qk"][:, None])
    k.row.mul_(factor["qk"][:, None])
    v.row.mul_(factor["vo"][:, None])
    o.col.mul_(factor["vo"][None, :])
    i.row.mul_(factor["ffn"][:, None])
    f.col.mul_(factor["ffn"][None, :])


def _smallest(x: Tensor, n: int) -> Tensor:
    """Boolean mask of the n smallest entries along the last dim (ties to the lower index)."""
    out = torch.zeros_like(x, dtype=torch.bool)
    return out.scatter_(-1, torch.argsort(x, dim=-1, stable=True)[..., :n], True)


# ---- marks ------------------------------------------------------------------------------------


@torch.no_grad()
def update_marks(model: nn.Module, fraction: float) -> None:
    """Mark ``fraction`` of every kind of group to remove, choosing the smallest norms."""
    t, s = widths(model)

    def count(total: int, keep: int) -> int:
        return round(fraction * (total - keep))

    base = model.base_model
    res = base.wid_residual
    res.marked.copy_(_smallest(res.d.abs(), count(t.hidden, s.hidden)))
    for layer in _blocks(model):
        norms, marks = group_norms(layer), layer.wid_marks
        qk = norms["qk"].view(t.heads, t.head_dim)
        vo = norms["vo"].view(t.heads, t.head_dim)
        heads = _smallest((qk.square() + vo.square()).sum(1), count(t.heads, s.heads))
        dims = count(t.head_dim, s.head_dim)
        marks.heads.copy_(heads)
        marks.qk.copy_((_smallest(qk, dims) | heads[:, None]).flatten())
        marks.vo.copy_((_smallest(vo, dims) | heads[:, None]).flatten())
        marks.ffn.copy_(_smallest(norms["ffn"], count(t.ffn, s.ffn)))


def kept_indices(model: nn.Module) -> dict:
    """Indices that survive: ``hidden`` [H'], and per layer ``heads``, ``qk``, ``vo``, ``ffn``."""
    t, s = widths(model)
    base = model.base_model
    keep = {"hidden": (~base.wid_residual.marked).nonzero().flatten(),
            "heads": [], "qk": [], "vo": [], "ffn": []}
    want = {"hidden": s.hidden, "heads": s.heads, "qk": s.hidden, "vo": s.hidden, "ffn": s.ffn}
    if keep["hidden"].numel() != want["hidden"]:
        raise ValueError("residual marks are not at the target width")
    for i, layer in enumerate(_blocks(model)):
        m = layer.wid_marks
        for kind in ("heads", "qk", "vo", "ffn"):
            idx = (~getattr(m, kind)).nonzero().flatten()
            if idx.numel() != want[kind]:
                raise ValueError(f"layer {i + 1}: {kind} marks are not at the target")
            keep[kind].append(idx)
        whole = torch.where(m.heads, 0, s.head_dim)  # dims each head keeps
        for kind in ("qk", "vo"):
            if not torch.equal((~getattr(m, kind)).view(t.heads, t.head_dim).sum(1), whole):
                raise ValueError(f"layer {i + 1}: {kind} marks do not split into whole heads")
    return keep


def _at_target(model: nn.Module) -> bool:
    try:
        kept_indices(model)
    except ValueError:
        return False
    return True


# ---- the penalty ------------------------------------------------------------------------------


def _marked_norms(model: nn.Module):
    base = model.base_model
    res = base.wid_residual
    yield res.d.abs(), res.marked
    for layer in _blocks(model):
        for kind, norm in group_norms(layer).items():
            yield norm, getattr(layer.wid_marks, kind)


@torch.no_grad()
def penalty_norm(model: nn.Module) -> Tensor:
    """The group-lasso sum: total L2 norm of the marked groups."""
    return sum(norm[marked].sum() for norm, marked in _marked_norms(model))


@torch.no_grad()
def _shrink(model: nn.Module, factor_of) -> None:
    """Scale each group by ``factor_of(norm, marked)``."""
    base = model.base_model
    res = base.wid_residual
    res.d.mul_(factor_of(res.d.abs(), res.marked))
    for layer in _blocks(model):
        marks = layer.wid_marks
        norms = group_norms(layer)
        _scale_groups(layer, {k: factor_of(n, getattr(marks, k)) for k, n in norms.items()})


def prox_step(model: nn.Module, lam: float) -> None:
    """Proximal step of ``lam * sum ||g||`` over the marked groups: shrink each norm by ``lam``."""
    _shrink(model, lambda n, m: torch.where(m, (1 - lam / n.clamp_min(1e-12)).clamp_min(0), 1.0))


def hard_prune(model: nn.Module) -> None:
    """Zero every marked group, bringing the marks to the target first if they are short of it."""
    if not _at_target(model):
        update_marks(model, 1.0)
    _shrink(model, lambda n, m: (~m).to(n.dtype))
