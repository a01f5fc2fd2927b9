"""The probe and agreement readouts on a tiny random BERT and synthetic data: determinism, no dev
leakage, held-out blocks no slice holds, and caches that never mix readouts."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import BertConfig, BertModel, BertTokenizerFast

from layersearch.config import TasksConfig, parse_config
from layersearch.data.slices import heldout_rows, slice_rows
from layersearch.fitness.spec import spec_key, units_of
from layersearch.fitness.stats import fitness_estimate, paired_difference, task_score
from layersearch.readout.agreement import linear_cka, ridge_r2
from layersearch.readout.probe import CV_GRID, ProbeReadout

WORDS = [f"w{i}" for i in range(60)] + ["good"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _split(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    labels = [rng.randint(0, 1) for _ in range(n)]
    text = []
    for y in labels:
        words = [rng.choice(WORDS[:-1]) for _ in range(rng.randint(3, 8))]
        if y:  # the label is one word's presence: a mean pool of random features can see it
            words.insert(rng.randrange(len(words) + 1), "good")
        text.append(" ".join(words))
    return Dataset.from_dict({"sentence": text, "label": labels})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(SPECIAL + WORDS) + "\n")
    return BertTokenizerFast(vocab=str(path))


@pytest.fixture(scope="module")
def encoder(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config).eval()


def _tasks(**probe) -> TasksConfig:
    return TasksConfig(source="hub", names=["sst2"], readout="probe", probe={"train_examples": None, **probe},
                       finetune={"seq_length": 16, "batch_size": 16, "seeds": [0, 1]})


def _probe(tokenizer, data, **probe) -> ProbeReadout:
    return ProbeReadout(_tasks(**probe), tokenizer, {"sst2": data}, "cpu")


def test_probe_is_deterministic_and_reads_the_rule(encoder, tokenizer):
    data = DatasetDict(train=_split(300, 1), dev=_split(120, 2))
    a = _probe(tokenizer, data).score(encoder, [0])
    b = _probe(tokenizer, data).score(encoder, [0])  # fresh readout: nothing carried over
    assert len(a) == 1 and a[0].task == "sst2"
    assert np.array_equal(a[0].predictions, b[0].predictions) and a[0].metrics == b[0].metrics
    assert a[0].metrics["probe_c"] in CV_GRID
    mcc = task_score(a[0].predictions, a[0].labels)
    assert mcc > 0.5, mcc  # a linear read of frozen random features finds the one-word rule
    # More seeds are the same unit again, never a different number.
    two = _probe(tokenizer, data).score(encoder, [0, 1])
    assert [r.seed for r in two] == [0, 1]
    assert np.array_equal(two[0].predictions, two[1].predictions)


def test_probe_never_reads_dev_labels(encoder, tokenizer):
    dev = _split(200, 2)
    shuffled = dev.map(lambda _, i: {"label": int(np.random.default_rng(i).integers(0, 2))}, with_indices=True)
    train = _split(300, 1)
    honest = _probe(tokenizer, DatasetDict(train=train, dev=dev)).score(encoder, [0])[0]
    blind = _probe(tokenizer, DatasetDict(train=train, dev=shuffled)).score(encoder, [0])[0]
    # The regularisation and the fit come from train alone: the same predictions whatever dev says,
    assert blind.metrics["probe_c"] == honest.metrics["probe_c"]
    assert np.array_equal(blind.predictions, honest.predictions)
    # so against labels that carry nothing it scores about 0, and against the real ones well above.
    assert abs(task_score(blind.predictions, blind.labels)) < 0.2
    assert task_score(honest.predictions, honest.labels) > 0.5


def test_probe_features_of_every_layer_are_wider(encoder, tokenizer):
    from layersearch.readout.probe import embed

    r = _probe(tokenizer, DatasetDict(train=_split(40, 1), dev=_split(20, 2)))
    feats = r.encoded.dev("sst2").features
    last = embed(encoder, tokenizer, feats, 8, "cpu", "last")
    every = embed(encoder, tokenizer, feats, 8, "cpu", "all")
    assert last.shape == (20, 32) and every.shape == (20, 32 * 3)  # embeddings + 2 layers
    assert np.allclose(every[:, -32:], last)
    # Batching and padding change no example's features.
    assert np.allclose(embed(encoder, tokenizer, feats, 3, "cpu", "last"), last, atol=1e-5)


def test_ridge_r2_values_average_to_r2_and_track_what_is_predictable():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * 40 * 8, 16, generator=g, dtype=torch.float64)
    a = torch.randn(16, 12, generator=g, dtype=torch.float64)
    noise = torch.randn(x.shape[0], 12, generator=g, dtype=torch.float64)
    y_good, y_bad = x @ a + 0.1 * noise, noise
    cut = 40 * 8
    values, r2 = ridge_r2(x[:cut], y_good[:cut], x[cut:], y_good[cut:], 1e-3, 40)
    assert values.shape == (40,) and values.mean() == pytest.approx(r2)
    assert r2 > 0.95
    _, r2_bad = ridge_r2(x[:cut], y_bad[:cut], x[cut:], y_bad[cut:], 1e-3, 40)
    assert r2_bad < 0.05


def test_ridge_r2_of_a_case_worked_by_hand():
    """One feature, fit on x = y = [-1, 1] with ridge 1: alpha = 1 x trace(2) / 1 = 2, so the slope
    is 2 / (2 + 2) = 0.5. Tested on x = y = [-2, 2 | -1, 1] (two blocks): residuals 0.5 x give SSE
    [2 | 0.5] of SST 10, so R^2 = 1 - 2.5 / 10 = 0.75, block values 1 - SSE_b / (10 / 2)."""
    t = torch.tensor
    fit = t([[-1.0], [1.0]], dtype=torch.float64)
    test = t([[-2.0], [2.0], [-1.0], [1.0]], dtype=torch.float64)
    values, r2 = ridge_r2(fit, fit, test, test, 1.0, 2)
    assert r2 == pytest.approx(0.75) and values == pytest.approx([0.6, 0.9])
    # No ridge to speak of: the exact map, R^2 1.
    assert ridge_r2(fit, fit, test, test, 1e-12, 2)[1] == pytest.approx(1.0)


def test_linear_cka_is_one_for_the_same_representation_up_to_rotation_and_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 10, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(500, 10, generator=g, dtype=torch.float64)) < 0.1


def test_agreement_values_enter_the_statistics_as_means():
    rng = np.random.default_rng(0)
    ref = rng.normal(0.5, 0.1, size=(3, 64))
    other = ref + 0.05 + rng.normal(0, 0.01, size=(3, 64))
    labels = {"agreement": np.zeros(64, dtype=np.int64)}
    est = fitness_estimate({"agreement": ref}, labels)
    assert est.mean == pytest.approx(ref.mean()) and est.low < est.mean < est.high
    diff = paired_difference({"agreement": ref}, {"agreement": other}, labels)
    assert diff.mean == pytest.approx(0.05, abs=0.01) and diff.low > 0
    counts = np.ones((2, 64))
    counts[1, :32] = 2.0
    rows = task_score(ref[0], labels["agreement"], counts=counts)
    assert rows[0] == pytest.approx(ref[0].mean())
    assert rows[1] == pytest.approx((2 * ref[0, :32].sum() + ref[0, 32:].sum()) / 96)


def test_held_out_blocks_are_in_no_slice_and_old_slices_are_unchanged():
    n, reserve = 1000, 100
    held = set(heldout_rows(n, reserve, 64).tolist())
    assert held == set(range(900, 1000))
    for seed in range(50):
        rows = slice_rows(n, 400, seed, 64, reserve)
        assert not held & set(rows.tolist())
        assert len(set(rows.tolist())) == 400
    # Held-out rows by an independent rule: exactly the blocks a slice of the whole corpus may
    # hold but no reserved slice does, over many seeds.
    seen = set().union(*(slice_rows(n, 400, seed, 64, reserve).tolist() for seed in range(50)))
    assert seen.isdisjoint(held) and seen | held == set(range(n))
    # A reserve takes the tail off the corpus and leaves the draw over the rest as it was, so a
    # slice's rows are those a corpus without the tail would give: old slices stay unchanged.
    assert np.array_equal(slice_rows(n, 400, 7, 64, reserve), slice_rows(n - reserve, 400, 7, 64))
    # Uniform: every block is as likely to be in a slice (400 of 900 over 300 seeds; 5 sd).
    counts = np.bincount(np.concatenate([slice_rows(n, 400, s, 64, reserve) for s in range(300)]), minlength=n)
    p = 400 / 900
    assert np.abs(counts[:900] - 300 * p).max() < 5 * np.sqrt(300 * p * (1 - p))


def test_spec_key_differs_per_readout_and_finetune_keeps_its_key(quickstart_raw):
    base = spec_key(parse_config(quickstart_raw))
    keys = {}
    for readout in ("finetune", "probe", "agreement"):
        raw = copy.deepcopy(quickstart_raw)
        raw["tasks"]["readout"] = readout
        keys[readout] = spec_key(parse_config(raw))
    assert keys["finetune"] == base  # every cached fine-tune unit keeps its key
    assert len(set(keys.values())) == 3
    raw = copy.deepcopy(quickstart_raw)
    raw["tasks"].update(readout="probe", probe={"features": "all"})
    assert spec_key(parse_config(raw)) != keys["probe"]
    raw = copy.deepcopy(quickstart_raw)
    raw["tasks"].update(readout="agreement", agreement={"heldout_blocks": 64})
    assert spec_key(parse_config(raw)) != keys["agreement"]
    # A deterministic readout has one unit per slice: more fine-tune seeds would repeat it.
    raw["proxy"]["slice_seeds"] = [0, 1, 2]
    raw["tasks"]["finetune"]["seeds"] = [0, 1, 2]
    assert units_of(parse_config(raw)) == [(0, 0), (1, 0), (2, 0)]
