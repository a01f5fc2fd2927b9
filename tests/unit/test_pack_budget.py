"""The GPU pack-size budget counts the teacher, both phases, and fine-tuning packed or not."""

from __future__ import annotations

import copy

from transformers import BertConfig

from layersearch.config import parse_config
from layersearch.fitness.pack_budget import encoder_params, pack_size, phase_bytes

GIB = 1024 ** 3
BERT_BASE = BertConfig()  # 12 x 768, 12 heads, 3072 FFN: transformers' defaults are bert-base's shape


def _cfg(quickstart_raw, **finetune):
    raw = copy.deepcopy(quickstart_raw)
    raw["student"].update(num_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200)
    raw["student"]["init"] = {"method": "random"}
    raw["tasks"]["finetune"].update(finetune)
    return parse_config(raw)


def test_encoder_params_match_a_real_bert():
    from transformers import BertModel

    real = sum(p.numel() for p in BertModel(BERT_BASE, add_pooling_layer=False).parameters())
    assert abs(encoder_params(768, 12, 3072, BERT_BASE.vocab_size) - real) / real < 0.01


def test_pack_size_grows_with_memory_and_shrinks_with_what_each_phase_holds(quickstart_raw):
    cfg = _cfg(quickstart_raw)
    sizes = [pack_size(g * GIB, BERT_BASE, cfg, cap=64) for g in (1, 4, 16, 80)]
    assert sizes == sorted(sizes) and sizes[0] >= 1 and sizes[-1] > sizes[1]
    assert pack_size(80 * GIB, BERT_BASE, cfg, cap=8) == 8
    # The teacher's weights and activations come off the top: less room than student state alone.
    student_only = int(0.8 * 16 * GIB // (16 * encoder_params(312, 4, 1200, BERT_BASE.vocab_size)))
    assert pack_size(16 * GIB, BERT_BASE, cfg, cap=999) < student_only
    # Long fine-tuning sequences at a big batch make the fine-tuning phase the bound when packed ...
    heavy = _cfg(quickstart_raw, batch_size=64, seq_length=256)
    from layersearch.models import student_config

    student = student_config(BERT_BASE, heavy.student)
    distil, finetune = phase_bytes(BERT_BASE, student, heavy, 4, packed_finetune=True)
    assert finetune > distil
    packed = pack_size(40 * GIB, BERT_BASE, heavy, cap=64, packed_finetune=True)
    alone = pack_size(40 * GIB, BERT_BASE, heavy, cap=64, packed_finetune=False)
    # ... and one-at-a-time fine-tuning lets more students share a distillation pack.
    assert 1 < packed < alone
