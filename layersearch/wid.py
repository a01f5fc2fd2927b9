"""Weight-Inherited Distillation (WID, Wu et al. 2023): the student is the teacher, compacted.

    student, loss, report = make_student(cfg, teacher, mapping, data)  # student.init.method: wid
    train(student, teacher, loss, data, cfg.distill.train)            # marks, penalty, prox steps
    small = merge(student)                                            # an ordinary, smaller BertModel

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

Compression is progressive. Every ``mask_every`` steps a fraction
``min(1, step / (compress_until * steps))`` of the groups to remove is marked:
those with the smallest norms (recomputed each time; a dead group has norm 0
and stays marked). Marked groups carry a group-lasso penalty
``lambda * sum ||g||`` whose ``lambda`` starts at ``penalty`` and grows by
``penalty_growth`` at every marking. It is minimised by its proximal step after
each optimizer step (``g <- g * max(0, 1 - lambda / ||g||)``), not through the
gradient: Adam moves a weight by about the learning rate per step whatever the
gradient, far too slowly to take an identity entry of 1 to 0, while the prox
step reaches exactly zero. Its value is logged as ``wid_penalty``, apart from
``total``, so the loss curves stay comparable with other inits. At the end the marks
equal the target, ``hard_prune`` zeroes the marked groups, and ``merge`` folds
every compactor into its weights (``W' = R W L`` restricted to the kept
indices, ``b' = R b``, LayerNorm ``gamma * d``, ``beta * d`` sliced; queries
scaled by ``sqrt(d_student / d_teacher)`` so attention keeps the teacher's
temperature): the merged model computes what the pruned compactor model does.

Loss: the MLM objective when the teacher was loaded with its MLM head,
otherwise the configured objectives (``DistillLoss``) against the frozen
teacher along the mapping; the compactor model has the teacher's width, so no
projections are needed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from layersearch.config import Config, WIDConfig
from layersearch.distill.callbacks import TrainerCallback
from layersearch.features import Requirements
from layersearch.init import InitError, seed_layers
from layersearch.losses import DistillLoss
from layersearch.mapping import Mapping

MLM_PROBABILITY = 0.15  # BERT's masking rate


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


# ---- shapes -----------------------------------------------------------------------------------


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


def _widths(model: nn.Module) -> tuple[Widths, Widths]:
    """(compactor model's, target student's) widths."""
    return Widths.of(model.config), Widths.of(model.wid_target)


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
    t_layers = teacher.base_model.encoder.layer
    model = copy.deepcopy(teacher)
    base = model.base_model
    base.encoder.layer = nn.ModuleList(copy.deepcopy(t_layers[i - 1]) for i in layers)
    model.config.num_hidden_layers = len(layers)
    model.config.architectures = None
    model.requires_grad_(True)
    model.train()

    residual = ResidualCompactor(t.hidden).to(base.embeddings.LayerNorm.weight.device)
    base.wid_residual = residual
    base.embeddings.LayerNorm = MaskedLayerNorm(base.embeddings.LayerNorm, residual)
    for i, layer in enumerate(base.encoder.layer):
        sa = layer.attention.self
        sa.layer_idx = i
        for name in ("query", "key", "value"):
            setattr(sa, name, CompactLinear(getattr(sa, name), "row"))
        out = layer.attention.output
        out.dense = CompactLinear(out.dense, "col")
        out.LayerNorm = MaskedLayerNorm(out.LayerNorm, residual)
        layer.intermediate.dense = CompactLinear(layer.intermediate.dense, "row")
        layer.output.dense = CompactLinear(layer.output.dense, "col")
        layer.output.LayerNorm = MaskedLayerNorm(layer.output.LayerNorm, residual)
        layer.wid_marks = LayerMarks(t.heads, t.head_dim, t.ffn).to(residual.d.device)
    head = _mlm_transform(model)
    if head is not None:
        head.LayerNorm = MaskedLayerNorm(head.LayerNorm, residual)
    model.wid_target = copy.deepcopy(target)
    model.wid_target.num_hidden_layers = len(layers)
    return model


def _mlm_transform(model: nn.Module) -> nn.Module | None:
    cls = getattr(model, "cls", None)
    return cls.predictions.transform if cls is not None else None


def make_wid_student(cfg: Config, teacher: PreTrainedModel, mapping: Mapping,
                     target: PretrainedConfig, tokenizer=None):
    """(compactor model, WIDLoss, init report), as ``student.make_student`` returns them."""
    n_teacher = teacher.config.num_hidden_layers
    layers = seed_layers(cfg.student.init, mapping, cfg.student.num_layers, n_teacher)
    model = build_compactor_model(teacher, layers, target)
    mlm = teacher.get_output_embeddings() is not None
    if mlm:
        if tokenizer is None:
            from layersearch.models import load_tokenizer

            tokenizer = load_tokenizer(cfg.teacher.model, cfg.teacher.revision)
        loss = WIDLoss(model, cfg.student.init.wid, None, tokenizer)
    else:
        distill = DistillLoss(cfg.objective, mapping, model.config, teacher.config)
        loss = WIDLoss(model, cfg.student.init.wid, distill)
    t, s = _widths(model)
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


# ---- groups, marks, penalty -------------------------------------------------------------------


def _parts(layer: nn.Module):
    sa = layer.attention.self
    return (sa.query, sa.key, sa.value, layer.attention.output.dense,
            layer.intermediate.dense, layer.output.dense)


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


@torch.no_grad()
def update_marks(model: nn.Module, fraction: float) -> None:
    """Mark ``fraction`` of every kind of group to remove, choosing the smallest norms."""
    t, s = _widths(model)

    def count(total: int, keep: int) -> int:
        return round(fraction * (total - keep))

    base = model.base_model
    res = base.wid_residual
    res.marked.copy_(_smallest(res.d.abs(), count(t.hidden, s.hidden)))
    for layer in base.encoder.layer:
        norms, marks = group_norms(layer), layer.wid_marks
        qk = norms["qk"].view(t.heads, t.head_dim)
        vo = norms["vo"].view(t.heads, t.head_dim)
        heads = _smallest((qk.square() + vo.square()).sum(1), count(t.heads, s.heads))
        dims = count(t.head_dim, s.head_dim)
        marks.heads.copy_(heads)
        marks.qk.copy_((_smallest(qk, dims) | heads[:, None]).flatten())
        marks.vo.copy_((_smallest(vo, dims) | heads[:, None]).flatten())
        marks.ffn.copy_(_smallest(norms["ffn"], count(t.ffn, s.ffn)))


def _marked_norms(model: nn.Module):
    base = model.base_model
    res = base.wid_residual
    yield res.d.abs(), res.marked
    for layer in base.encoder.layer:
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
    for layer in base.encoder.layer:
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


def _at_target(model: nn.Module) -> bool:
    try:
        kept_indices(model)
    except ValueError:
        return False
    return True


def kept_indices(model: nn.Module) -> dict:
    """Indices that survive: ``hidden`` [H'], and per layer ``heads``, ``qk``, ``vo``, ``ffn``."""
    t, s = _widths(model)
    base = model.base_model
    keep = {"hidden": (~base.wid_residual.marked).nonzero().flatten(),
            "heads": [], "qk": [], "vo": [], "ffn": []}
    want = {"hidden": s.hidden, "heads": s.heads, "qk": s.hidden, "vo": s.hidden, "ffn": s.ffn}
    if keep["hidden"].numel() != want["hidden"]:
        raise ValueError("residual marks are not at the target width")
    for i, layer in enumerate(base.encoder.layer):
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


# ---- merging ----------------------------------------------------------------------------------


@torch.no_grad()
def merge(model: PreTrainedModel) -> PreTrainedModel:
    """Hard-prune ``model`` in place and fold its compactors into an ordinary smaller model.

    The result has the target config (same class as the teacher: base model or
    masked LM) and computes the pruned compactor model's outputs on the kept
    channels.
    """
    hard_prune(model)
    t, s = _widths(model)
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
    big_head, small_head = _mlm_transform(model), _mlm_transform(small)
    if big_head is not None:
        linear(small_head.dense, big_head.dense.weight, big_head.dense.bias, h, h)
        norm(small_head.LayerNorm, big_head.LayerNorm)
        put(small.cls.predictions.bias, model.cls.predictions.bias)
        # The decoder is tied to the (already sliced) word embeddings.
        if small.get_output_embeddings().weight.data_ptr() != small_b.embeddings.word_embeddings.weight.data_ptr():
            put(small.get_output_embeddings().weight, big_b.embeddings.word_embeddings.weight[:, h])
    return small


# ---- the loss ---------------------------------------------------------------------------------


class WIDLoss(TrainerCallback, nn.Module):
    """The WID objective for ``distill.train``: MLM or ``DistillLoss``, plus the compactor schedule.

    Implements the trainer's optional hooks: ``extra_terms`` (the MLM loss) and
    ``after_step`` (marks and proximal steps; returns the penalty to log).
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
                raise InitError("student.init.method: 'wid' with an MLM teacher needs a tokenizer "
                                "with a mask token")
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
        if step % c.mask_every == 0 or step == steps:
            markings = math.ceil(step / c.mask_every)  # the last may fall between two
            update_marks(self.model, min(1.0, step / (c.compress_until * steps)))
            self.penalty_weight.fill_(c.penalty * c.penalty_growth ** (markings - 1))
        lam = float(self.penalty_weight)
        if lam > 0:
            prox_step(self.model, lam)
        return {"wid_penalty": lam * float(penalty_norm(self.model))}
