"""Distillation objectives, registered by name, and the loss that combines them.

Each objective is a function ``(loss, student, teacher) -> scalar`` registered
under the name a config uses (``objective.terms``), together with what it reads
(embedding output, mapped hidden states, mapped q/k/v, logits), so that
``DistillLoss`` can ask ``features.extract`` for exactly that and nothing more.
Every value is computed in float32 and averaged over real (non-pad) tokens only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from math import gcd

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layersearch.config import ObjectiveConfig
from layersearch.errors import UserError
from layersearch.families import dims
from layersearch.features import Features, Requirements
from layersearch.mapping import Mapping


class ObjectiveError(UserError, ValueError):
    """An objective that cannot work with this teacher, student or mapping."""


ObjectiveFn = Callable[["DistillLoss", Features, Features], Tensor]


@dataclass(frozen=True)
class Objective:
    fn: ObjectiveFn
    embedding: bool = False  # reads hidden[0]
    hidden: bool = False  # reads the hidden states of mapped layers
    qkv: str = ""  # which projections of mapped layers it reads, a subset of "qkv"
    logits: bool = False


OBJECTIVES: dict[str, Objective] = {}


def register(name: str, **reads: object) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Register an objective under ``name``; ``reads`` are ``Objective`` flags."""

    def deco(fn: ObjectiveFn) -> ObjectiveFn:
        OBJECTIVES[name] = Objective(fn, **reads)  # type: ignore[arg-type]
        return fn

    return deco


# ---- tensor-level pieces (float32, pad-aware) ----------------------------------------------


def masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the features of real tokens; a, b [B, T, H], mask [B, T]."""
    m = mask.to(torch.float32)[..., None]
    sq = (a.float() - b.float()).pow(2) * m
    return sq.sum() / (m.sum() * a.shape[-1]).clamp_min(1)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, W] -> [B, heads, T, W / heads] in float32."""
    b, t, w = x.shape
    return x.float().reshape(b, t, heads, w // heads).transpose(1, 2)


def scaled_scores(x: Tensor, y: Tensor, heads: int) -> Tensor:
    """Per-head x y^T / sqrt(d): [B, heads, T, T]."""
    xh, yh = split_heads(x, heads), split_heads(y, heads)
    return xh @ yh.transpose(-1, -2) / math.sqrt(xh.shape[-1])


def masked_score_mse(s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
    """MSE of [B, h, T, T] scores over (query, key) pairs that are both real tokens."""
    real = mask.bool()
    pair = (real[:, :, None] & real[:, None, :]).to(torch.float32)[:, None]
    return ((s - t).pow(2) * pair).sum() / (pair.sum() * s.shape[1]).clamp_min(1)


def masked_row_kl(s_scores: Tensor, t_scores: Tensor, mask: Tensor) -> Tensor:
    """KL(teacher || student) of softmax rows over real keys, averaged over heads and real queries.

    Pad keys get the most negative finite float rather than -inf: their
    probability is still exactly 0, but 0 * (log 0 - log 0) cannot become NaN.
    """
    real = mask.bool()
    pad_keys = ~real[:, None, None, :]
    neg = torch.finfo(torch.float32).min
    log_s = s_scores.masked_fill(pad_keys, neg).log_softmax(-1)
    log_t = t_scores.masked_fill(pad_keys, neg).log_softmax(-1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)  # [B, h, T]
    q = real.to(torch.float32)[:, None, :]
    return (kl * q).sum() / (q.sum() * kl.shape[1]).clamp_min(1)


def relation_kl(
    s_x: Tensor, s_y: Tensor, t_x: Tensor, t_y: Tensor, mask: Tensor, heads: int
) -> Tensor:
    """MiniLM relation loss: KL between softmax(x y^T / sqrt(d_r)) of teacher and student."""
    return masked_row_kl(scaled_scores(s_x, s_y, heads), scaled_scores(t_x, t_y, heads), mask)


def logit_kl(s: Tensor, t: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Hinton KD per real token: KL(softmax(t/T) || softmax(s/T)) * T^2."""
    log_s = (s.float() / temperature).log_softmax(-1)
    log_t = (t.float() / temperature).log_softmax(-1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)  # [B, T]
    m = mask.to(torch.float32)
    return (kl * m).sum() / m.sum().clamp_min(1) * temperature**2


# ---- the registered objectives ---------------------------------------------------------------


def _mean_over_pairs(loss: DistillLoss, term: Callable[[int, int], Tensor]) -> Tensor:
    return torch.stack([term(m, g) for m, g in loss.pairs]).mean()


@register("embedding_mse", embedding=True)
def embedding_mse(loss: DistillLoss, s: Features, t: Features) -> Tensor:
    proj = loss.proj_embedding(s.hidden[0].float())
    return masked_mse(proj, t.hidden[0], s.attention_mask)


@register("hidden_mse", hidden=True)
def hidden_mse(loss: DistillLoss, s: Features, t: Features) -> Tensor:
    return _mean_over_pairs(
        loss,
        lambda m, g: masked_mse(
            loss.proj_hidden(s.hidden[m].float()), t.hidden[g], s.attention_mask
        ),
    )


@register("attention_mse", qkv="qk")
def attention_mse(loss: DistillLoss, s: Features, t: Features) -> Tensor:
    """TinyBERT: MSE of pre-softmax attention scores, head by head (equal head counts)."""
    hs, ht = loss.student_heads, loss.teacher_heads
    # Scores as each model forms them, its family's own terms included (MPNet's position bias).
    return _mean_over_pairs(
        loss, lambda m, g: masked_score_mse(s.scores(m, hs), t.scores(g, ht), s.attention_mask)
    )


@register("attention_kl", qkv="qk")
def attention_kl(loss: DistillLoss, s: Features, t: Features) -> Tensor:
    """MiniLM-style attention distributions over r relation heads, so head counts may differ."""
    r = loss.relation_heads

    def side(f: Features, layer: int, heads: int) -> Tensor:
        # With r equal to the model's heads, a relation head is an attention head: its
        # distribution is the model's own, family terms included. Other r regroup q and k.
        if r == heads:
            return f.scores(layer, heads)
        return scaled_scores(f.queries[layer], f.keys[layer], r)

    return _mean_over_pairs(
        loss,
        lambda m, g: masked_row_kl(
            side(s, m, loss.student_heads), side(t, g, loss.teacher_heads), s.attention_mask
        ),
    )


@register("value_kl", qkv="v")
def value_kl(loss: DistillLoss, s: Features, t: Features) -> Tensor:
    """MiniLM value relation: softmax(V V^T / sqrt(d_r)) over r relation heads."""
    r = loss.relation_heads
    return _mean_over_pairs(
        loss,
        lambda m, g: relation_kl(
            s.values[m], s.values[m], t.values[g], t.values[g], s.attention_mask, r
        ),
    )


@register("logit_kd", logits=True)
def logit_kd(loss: DistillLoss, s: Features, t: Features) -> Tensor:
    for side, feats in (("teacher", t), ("student", s)):
        if feats.logits is None:
            raise ObjectiveError(
                f"objective.terms.logit_kd: the {side} has no MLM head, so there are no logits "
                "to match; load it with a masked-LM head or set objective.terms.logit_kd to 0"
            )
    return logit_kl(s.logits, t.logits, s.attention_mask, loss.temperature)


# ---- the combined loss -----------------------------------------------------------------------


def _projection(student_width: int, teacher_width: int) -> nn.Module:
    # TinyBERT's W_h: a learned map into the teacher's width; none needed when widths agree.
    if student_width == teacher_width:
        return nn.Identity()
    return nn.Linear(student_width, teacher_width)


def requirements(terms, layers: frozenset[int]) -> Requirements:
    """What the objectives named in ``terms`` read from one model whose mapped layers are ``layers``."""
    active = [OBJECTIVES[n] for n in terms]
    none: frozenset[int] = frozenset()
    return Requirements(
        hidden=(frozenset({0}) if any(o.embedding for o in active) else none)
        | (layers if any(o.hidden for o in active) else none),
        queries=layers if any("q" in o.qkv for o in active) else none,
        keys=layers if any("k" in o.qkv for o in active) else none,
        values=layers if any("v" in o.qkv for o in active) else none,
        logits=any(o.logits for o in active),
    )


class DistillLoss(nn.Module):
    """The weighted sum of the active objectives along one mapping.

    Holds the learned projections, so its parameters belong in the student's optimiser.
    """

    def __init__(
        self, objective: ObjectiveConfig, mapping: Mapping, student_config, teacher_config
    ) -> None:
        super().__init__()
        # Registry order, so output keys and the summation order do not depend on the YAML.
        self.weights = {
            n: float(objective.terms[n]) for n in OBJECTIVES if objective.terms.get(n, 0) > 0
        }
        self.pairs = mapping.pairs()
        self.temperature = objective.temperature
        s_dims, t_dims = dims(student_config), dims(teacher_config)
        self.student_heads, self.teacher_heads = s_dims.heads, t_dims.heads
        s_width, t_width = s_dims.hidden, t_dims.hidden

        for side, cfg, depth in (
            ("student", student_config, mapping.num_student_layers),
            ("teacher", teacher_config, mapping.num_teacher_layers),
        ):
            if dims(cfg).layers != depth:
                raise ObjectiveError(
                    f"mapping {mapping} is for a {depth}-layer {side}, "
                    f"but the {side} has {dims(cfg).layers} layers"
                )
        if "attention_mse" in self.weights and self.student_heads != self.teacher_heads:
            raise ObjectiveError(
                "objective.terms.attention_mse compares attention head by head, but the student "
                f"has {self.student_heads} heads and the teacher {self.teacher_heads}; use "
                "attention_kl (MiniLM relation heads) or give the student "
                f"{self.teacher_heads} heads"
            )
        self.relation_heads = int(objective.relation_heads or self.student_heads)
        if {"attention_kl", "value_kl"} & self.weights.keys():
            r = self.relation_heads
            if s_width % r or t_width % r:
                raise ObjectiveError(
                    f"objective.relation_heads: {r} relation heads must divide both the "
                    f"student's width {s_width} and the teacher's {t_width}; pick a divisor "
                    f"of {gcd(s_width, t_width)}"
                )

        self.proj_embedding = (
            _projection(s_width, t_width) if "embedding_mse" in self.weights else nn.Identity()
        )
        self.proj_hidden = (
            _projection(s_width, t_width) if "hidden_mse" in self.weights else nn.Identity()
        )

    def _requirements(self, side: int) -> Requirements:
        return requirements(self.weights, frozenset(pair[side] for pair in self.pairs))

    def student_requirements(self) -> Requirements:
        return self._requirements(0)

    def teacher_requirements(self) -> Requirements:
        return self._requirements(1)

    def forward(self, student: Features, teacher: Features) -> dict[str, Tensor]:
        """Each active term's unweighted value under its name, and ``total``, the weighted sum."""
        # The trainer runs the models under autocast; the comparisons themselves stay float32.
        with torch.autocast(student.attention_mask.device.type, enabled=False):
            terms = {n: OBJECTIVES[n].fn(self, student, teacher) for n in self.weights}
        terms["total"] = torch.stack([w * terms[n] for n, w in self.weights.items()]).sum()
        return terms
