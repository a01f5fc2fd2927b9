"""Packed fine-tuning equals one-at-a-time, student by student, and a diverging student fails alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_finetune import FAST, _data, encoder, one_thread, tokenizer  # noqa: F401  (fixtures)
from transformers import BertModel

from layersearch.readout.finetune import FinetuneDivergence, TaskEncodings, finetune_task
from layersearch.readout.finetune_packed import finetune_pack


def _students(encoder, n: int) -> list:  # noqa: F811
    """``n`` encoders of one shape with different weights (as a pack's students have)."""
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        out.append(BertModel(encoder.config).eval())
    return out


@pytest.mark.parametrize("task,pair", [("sst2", False), ("rte", True)])
def test_packed_equals_one_at_a_time(encoder, tokenizer, task, pair):  # noqa: F811
    data = _data(pair=pair)
    students = _students(encoder, 3)
    cfg = FAST.model_copy(update={"epochs": 2})  # 40 steps: dropout, warm-up, decay, clipping all act
    encoded = TaskEncodings(tokenizer, {task: data}, cfg)
    packed = finetune_pack(students, tokenizer, task, encoded, cfg, seed=3)
    for student, got in zip(students, packed, strict=True):
        alone = finetune_task(student, tokenizer, task, data, cfg, seed=3)
        assert got.steps == alone.steps == 40
        # The same trajectory step by step, not only the same end point.
        np.testing.assert_allclose(got.loss_curve, alone.loss_curve, rtol=1e-3, atol=1e-4)  # different dropout masks differ by ~1e-2
        # A tiny half-trained model leaves a few dev logits within rounding of a tie.
        assert np.mean(got.predictions == alone.predictions) >= 0.95
        assert got.metrics["accuracy"] == pytest.approx(alone.metrics["accuracy"], abs=0.05)
        assert np.array_equal(got.labels, alone.labels)
        assert got.majority_baseline == alone.majority_baseline
    # The students differ, so the pack did not train one of them three times.
    assert len({tuple(r.loss_curve[:3]) for r in packed}) == 3


def test_a_diverging_student_fails_alone(encoder, tokenizer):  # noqa: F811
    data = _data()
    students = _students(encoder, 3)
    with torch.no_grad():  # a NaN weight makes every loss of this student NaN
        students[1].embeddings.word_embeddings.weight[5:] = float("nan")
    encoded = TaskEncodings(tokenizer, {"sst2": data}, FAST)
    out = finetune_pack(students, tokenizer, "sst2", encoded, FAST, seed=0)
    assert isinstance(out[1], FinetuneDivergence) and "step 1/" in str(out[1])
    for i in (0, 2):
        alone = finetune_task(students[i], tokenizer, "sst2", data, FAST, seed=0)
        assert all(math.isfinite(v) for v in out[i].loss_curve)
        np.testing.assert_allclose(out[i].loss_curve, alone.loss_curve, rtol=1e-3, atol=1e-4)  # different dropout masks differ by ~1e-2
        assert np.mean(out[i].predictions == alone.predictions) >= 0.95


def test_encodings_are_made_once_per_task_and_seed(encoder, tokenizer, monkeypatch):  # noqa: F811
    import layersearch.readout.finetune as finetune

    calls = []
    real = finetune.encode
    monkeypatch.setattr(finetune, "encode", lambda tok, task, ds, n: calls.append((task, len(ds))) or real(tok, task, ds, n))
    cfg = FAST.model_copy(update={"train_examples": 64})
    encoded = TaskEncodings(tokenizer, {"sst2": _data()}, cfg)
    for seed in (0, 1, 0, 1):
        for student in _students(encoder, 2):
            finetune_task(student, tokenizer, "sst2", encoded.datasets["sst2"], cfg, seed, encoded=encoded)
    # Train subsets of seeds 0 and 1, and the dev split: three encodings for eight fine-tunes.
    assert sorted(calls) == [("sst2", 64), ("sst2", 64), ("sst2", 100)]
    assert not np.array_equal(encoded.train("sst2", 0).labels, encoded.train("sst2", 1).labels)
