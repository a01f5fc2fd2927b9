"""How many students fit in one pack on a GPU: a memory budget for both phases of an evaluation.

A pack's peak is the larger of two phases:

- distillation: the frozen teacher (weights, and one batch's activations,
  kept for every layer an objective may read) once, plus per student its
  training state (weights, gradients, two AdamW moments: 16 bytes a
  parameter) and the activations its backward pass keeps;
- fine-tuning: the distilled students wait (weights only) while the
  classifiers train: all of them at once when fine-tuning is packed, else one.

Estimates are upper-bound style (fp32 everywhere, eager attention maps); the
out-of-memory halving in ``packed.split_on_oom`` catches what they miss.
"""

from __future__ import annotations

from layersearch.config import Config
from layersearch.families import dims

FP32 = 4
TRAIN_STATE = 16  # bytes per trained parameter: weights, gradients, AdamW's two moments
HEADROOM = 0.8  # of free memory: the allocator's fragmentation and CUDA's workspaces


def encoder_params(hidden: int, layers: int, intermediate: int, vocab: int, positions: int = 512) -> int:
    """Parameters of an encoder (BERT's count, close for every supported family):
    embeddings plus per layer attention (4 H^2) and FFN (2 H I)."""
    per_layer = 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate
    return (vocab + positions + 2) * hidden + layers * per_layer


def activation_bytes(batch: int, seq: int, hidden: int, heads: int, intermediate: int, layers: int,
                     backward: bool) -> int:
    """One batch's activations: what a backward pass keeps per layer, or one layer's worth at a time."""
    tokens = batch * seq
    # Per layer: Q, K, V, context, two outputs and two norms (~8 H), the FFN's input and
    # GELU (2 I), attention scores and probabilities (2 heads x T per token).
    per_layer = tokens * (8 * hidden + 2 * intermediate + 2 * heads * seq) * FP32
    return per_layer * layers if backward else per_layer + tokens * hidden * (layers + 1) * FP32


def phase_bytes(teacher, student, cfg: Config, k: int, packed_finetune: bool) -> tuple[int, int]:
    """(distillation, fine-tuning) peak bytes of a pack of ``k`` students."""
    t, s = dims(teacher), dims(student)
    t_params = encoder_params(t.hidden, t.layers, t.ffn, teacher.vocab_size)
    s_params = encoder_params(s.hidden, s.layers, s.ffn, student.vocab_size)
    train = cfg.proxy.train
    seq = cfg.corpus.seq_length
    teacher_act = activation_bytes(train.batch_size, seq, t.hidden, t.heads, t.ffn, t.layers, backward=False)
    student_act = activation_bytes(train.batch_size, seq, s.hidden, s.heads, s.ffn, s.layers, backward=True)
    # Projections to the teacher's width (hidden-state terms) train with the student.
    projections = s.layers * s.hidden * t.hidden
    distil = t_params * FP32 + teacher_act + k * ((s_params + projections) * TRAIN_STATE + student_act)

    ft = cfg.tasks.finetune
    ft_act = activation_bytes(ft.batch_size, ft.seq_length, s.hidden, s.heads, s.ffn, s.layers, backward=True)
    training = k if packed_finetune else 1
    finetune = t_params * FP32 + k * s_params * FP32 + training * (s_params * TRAIN_STATE + ft_act)
    return distil, finetune


def pack_size(free_bytes: int, teacher, cfg: Config, cap: int = 16, packed_finetune: bool = True) -> int:
    """The largest pack (1..cap) whose both phases fit in ``HEADROOM`` of ``free_bytes``."""
    from layersearch.models import student_config

    student = student_config(teacher, cfg.student)
    budget = HEADROOM * free_bytes
    k = 1
    while k < cap and max(phase_bytes(teacher, student, cfg, k + 1, packed_finetune)) <= budget:
        k += 1
    return k
