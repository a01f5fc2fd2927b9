"""Proxy spec identity, aggregation of task scores, and the evaluation cache."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from layersearch.config import parse_config
from layersearch.fitness import Evaluation, aggregate, spec_key
from layersearch.mapping import Mapping
from layersearch.search.cache import EvaluationCache

# One change in every section and most fields of the proxy spec.
SPEC_CHANGES = [
    ("teacher", "model", "other-teacher"),
    ("student", "num_layers", 2),
    ("student", "hidden_size", 192),
    ("student", "init", {"method": "random"}),
    ("objective", "terms", {"hidden_mse": 1.0}),
    ("objective", "temperature", 2.0),
    ("corpus", "seq_length", 128),
    ("corpus", "format", "text"),
    ("proxy", "slice_blocks", 100),
    ("proxy", "slice_seed", 1),
    ("proxy", "train", {"max_steps": 41}),
    ("proxy", "train", {"learning_rate": 1e-3}),
    ("tasks", "names", ["sst2", "rte"]),
    ("tasks", "weights", [1.0, 2.0, 1.0]),
    ("tasks", "finetune", {"seeds": [0, 1]}),
    ("tasks", "finetune", {"train_examples": 100}),
]


@pytest.mark.parametrize("section,key,value", SPEC_CHANGES)
def test_every_spec_field_changes_the_key(quickstart_raw, section, key, value):
    base = spec_key(parse_config(quickstart_raw))
    assert base == spec_key(parse_config(copy.deepcopy(quickstart_raw)))
    raw = copy.deepcopy(quickstart_raw)
    raw[section][key] = value
    assert spec_key(parse_config(raw)) != base


@pytest.mark.parametrize("section,key,value", [
    ("search", "population", 20), ("ray", "num_evaluators", 4), ("tracking", "experiment", "x"),
    ("corpus", "cache_dir", "/elsewhere"), ("distill", "output_dir", "/elsewhere"),
])
def test_fields_outside_the_spec_keep_the_key(quickstart_raw, section, key, value):
    base = spec_key(parse_config(quickstart_raw))
    raw = copy.deepcopy(quickstart_raw)
    raw[section][key] = value
    assert spec_key(parse_config(raw)) == base


def _result(task, seed, score, **metrics):
    return SimpleNamespace(task=task, seed=seed, score=score, metrics={"m": score, **metrics})


def test_aggregate_means_weights_and_spread():
    results = [_result("a", 0, 0.6), _result("a", 1, 0.8), _result("b", 0, 0.5), _result("b", 1, 0.5)]
    agg = aggregate(["a", "b"], None, results)
    assert agg["scores"] == pytest.approx({"a": 0.7, "b": 0.5})
    assert agg["fitness"] == pytest.approx(0.6)
    assert agg["scores_std"]["a"] == pytest.approx(0.1)
    # fitness per seed: 0.55 and 0.65 -> population std 0.05
    assert agg["fitness_std"] == pytest.approx(0.05)
    weighted = aggregate(["a", "b"], [3.0, 1.0], results)
    assert weighted["fitness"] == pytest.approx((3 * 0.7 + 0.5) / 4)


def test_cache_round_trip_and_what_it_keeps(tmp_path):
    cache = EvaluationCache(tmp_path, "spec1")
    m = Mapping((2, 4, 6), 6)
    ok = Evaluation([2, 4, 6], 6, "spec1", fitness=0.7, scores={"sst2": 0.7},
                    curves={"distill/total": [(1, 2.0), (2, 1.5)]})
    assert cache.get(m) is None
    assert cache.put(ok) and len(cache) == 1
    back = cache.get(m)
    assert back == ok and back.curves["distill/total"][1] == (2, 1.5)
    assert EvaluationCache(tmp_path, "spec2").get(m) is None  # another spec shares nothing
    lost = Evaluation([1, 2, 6], 6, "spec1", status="failed: ActorDiedError: node lost")
    diverged = Evaluation([1, 3, 6], 6, "spec1", status="failed: DivergenceError: loss became nan")
    assert not cache.put(lost) and cache.put(diverged)
    (cache.dir / "6_2-4-6.json").write_text("{broken")
    assert cache.get(m) is None
