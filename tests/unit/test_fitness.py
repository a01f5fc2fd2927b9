"""Proxy spec identity, an evaluation's summary from its units, and the unit cache."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

from layersearch.config import parse_config
from layersearch.fitness import Evaluation, compare, spec_key, summarize, unit_key
from layersearch.fitness.record import pack_labels
from layersearch.mapping import Mapping
from layersearch.search.cache import EvaluationCache

# One change in every section and most fields of the proxy spec.
SPEC_CHANGES = [
    ("student", "num_layers", 2),
    ("student", "hidden_size", 192),
    ("student", "init", {"method": "random"}),
    ("objective", "terms", {"hidden_mse": 1.0}),
    ("objective", "temperature", 2.0),
    ("corpus", "seq_length", 128),
    ("corpus", "format", "text"),
    ("proxy", "slice_blocks", 100),
    ("proxy", "train", {"max_steps": 41}),
    ("proxy", "train", {"learning_rate": 1e-3}),
    ("proxy", "train", {"precision": "bf16"}),
    ("tasks", "names", ["sst2", "rte"]),
    ("tasks", "finetune", {"train_examples": 100}),
    ("proxy", "init_layers", "lower"),  # which layers the proxy student copies
]


@pytest.mark.parametrize("section,key,value", SPEC_CHANGES)
def test_every_spec_field_changes_the_key(quickstart_raw, section, key, value):
    base = spec_key(parse_config(quickstart_raw))
    assert base == spec_key(parse_config(copy.deepcopy(quickstart_raw)))
    raw = copy.deepcopy(quickstart_raw)
    raw[section][key] = value
    assert spec_key(parse_config(raw)) != base


@pytest.mark.parametrize("section,key,value", [
    ("search", "population", 20), ("search", "search_init", True), ("ray", "num_evaluators", 4), ("tracking", "experiment", "x"),
    ("corpus", "cache_dir", "/elsewhere"), ("distill", "output_dir", "/elsewhere"),
    # Seeds choose which units an evaluation holds, not what a unit says.
    ("tasks", "finetune", {"seeds": [0, 1, 2]}), ("proxy", "slice_seeds", [0, 1]),
    # Weights only combine units into a fitness, derived again on every read.
    ("tasks", "weights", [1.0, 2.0]), ("proxy", "train", {"log_every": 5}),
])
def test_fields_outside_the_spec_keep_the_key(quickstart_raw, section, key, value):
    base = spec_key(parse_config(quickstart_raw))
    raw = copy.deepcopy(quickstart_raw)
    if isinstance(value, dict):
        raw[section][key].update(value)
    else:
        raw[section][key] = value
    assert spec_key(parse_config(raw)) == base


@pytest.mark.parametrize("native_bf16", [False, True])
def test_key_follows_the_resolved_precision_and_device(quickstart_raw, monkeypatch, native_bf16):
    import layersearch.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    auto = parse_config(quickstart_raw)
    keys = {}
    for value in ("fp32", "bf16"):
        raw = copy.deepcopy(quickstart_raw)
        raw["proxy"]["train"]["precision"] = value
        raw["tasks"]["finetune"]["precision"] = value
        keys[value] = spec_key(parse_config(raw), "cpu")
    # auto is what it resolves to on the device (fp32 on any CPU): the same units, the same key ...
    assert spec_key(auto, "cpu") == keys["fp32"] != keys["bf16"]
    # ... and bf16 on a GPU.
    assert spec_key(auto, "cuda") != spec_key(auto, "cpu")
    # Packed fine-tuning gives the same units: not part of the key.
    raw = copy.deepcopy(quickstart_raw)
    raw["tasks"]["finetune"]["packed"] = True
    assert spec_key(parse_config(raw), "cpu") == spec_key(auto, "cpu")


def test_key_follows_task_file_contents(quickstart_raw, shared_data, tmp_path):
    glue = tmp_path / "glue"
    shutil.copytree(shared_data / "glue", glue)
    raw = copy.deepcopy(quickstart_raw)
    raw["tasks"]["source"] = str(glue)
    before = spec_key(parse_config(raw))
    assert before == spec_key(parse_config(quickstart_raw))  # same contents, another folder
    dev = glue / "mrpc" / "dev.tsv"
    lines = dev.read_text().splitlines(keepends=True)
    dev.write_text("".join(lines[:-1]))  # one dev example fewer
    assert spec_key(parse_config(raw)) != before


def test_key_follows_corpus_contents_not_their_copy_time(quickstart_raw, shared_data, tmp_path):
    """A re-provisioned corpus (new folder, new mtimes) finds its cached evaluations; an edit
    of the same size does not (the digest memo is keyed by mtime, so it is read again)."""
    import json
    import os

    corpus = tmp_path / "corpus"
    shutil.copytree(shared_data / "corpus" / "wikitext103", corpus, copy_function=shutil.copyfile)
    raw = copy.deepcopy(quickstart_raw)
    raw["corpus"]["paths"] = [str(corpus)]
    raw["corpus"]["cache_dir"] = str(tmp_path / "cache")
    before = spec_key(parse_config(raw))
    assert before == spec_key(parse_config(quickstart_raw))
    memo = json.loads((tmp_path / "cache" / "digests.json").read_text())
    assert {str(f.resolve()) for f in corpus.iterdir()} <= set(memo)  # each copy read once, remembered
    victim = corpus / "wiki.valid.tokens"
    os.utime(victim, ns=(1, 1))  # touched, not changed
    assert spec_key(parse_config(raw)) == before
    data = bytearray(victim.read_bytes())
    data[100] = ord("#") if data[100] != ord("#") else ord("%")
    victim.write_bytes(bytes(data))  # same size, one byte different
    assert spec_key(parse_config(raw)) != before


def test_key_follows_the_teacher_directory_contents(quickstart_raw, tmp_path):
    from layersearch.models import resolve_teacher

    teacher = tmp_path / "teacher"
    shutil.copytree(resolve_teacher("offline:minilm-l6"), teacher)
    raw = copy.deepcopy(quickstart_raw)
    raw["teacher"]["model"] = str(teacher)
    before = spec_key(parse_config(raw))
    assert before == spec_key(parse_config(quickstart_raw))  # same files, another folder
    config = teacher / "config.json"
    config.write_text(config.read_text().replace('"layer_norm_eps": 1e-12', '"layer_norm_eps": 1e-11'))
    assert spec_key(parse_config(raw)) != before


@pytest.mark.parametrize("library", ["torch", "transformers"])
def test_key_follows_library_versions(quickstart_raw, monkeypatch, library):
    module = __import__(library)
    cfg = parse_config(quickstart_raw)
    before = spec_key(cfg)
    monkeypatch.setattr(module, "__version__", "0.0.1")
    assert spec_key(cfg) != before


def test_a_cpu_driver_and_gpu_workers_share_the_torch_version(quickstart_raw, monkeypatch):
    import torch

    cfg = parse_config(quickstart_raw)
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    cpu_build = spec_key(cfg, "cuda")
    monkeypatch.setattr(torch, "__version__", "2.13.0+cu128")
    assert spec_key(cfg, "cuda") == cpu_build


# --- records with units ------------------------------------------------------------

LABELS = {"a": np.array([0, 1] * 20), "b": np.array([0, 0, 1, 1] * 10)}


def record(genes=(2, 4, 6), units=((0, 0), (0, 1)), wrong=0, spec="spec1") -> Evaluation:
    """An evaluation whose every unit gets ``wrong`` examples of each task wrong."""
    ev = Evaluation(list(genes), 6, spec, dev_labels={t: pack_labels(y) for t, y in LABELS.items()},
                    majority={"a": 0.5, "b": 0.5})
    for s, f in units:
        tasks = {}
        for t, y in LABELS.items():
            p = y.copy()
            p[: wrong + f] = 1 - p[: wrong + f]  # seed f adds f more mistakes
            tasks[t] = {"predictions": pack_labels(p), "metrics": {"accuracy": float((p == y).mean())},
                        "seconds": 1.0, "steps": 3}
        ev.units[unit_key(s, f)] = {"slice_seed": s, "finetune_seed": f, "tasks": tasks}
    return ev


def test_summary_is_chance_corrected_with_an_interval():
    ev = summarize(record(wrong=4), ["a", "b"])
    assert ev.fitness_seeds == 2
    assert 0 < ev.fitness < 1 and ev.fitness_ci_low < ev.fitness < ev.fitness_ci_high
    assert ev.scores["a"] < 1 and ev.metrics["a/accuracy"] == pytest.approx(1 - 4.5 / 40)
    perfect = summarize(record(units=((0, 0),)), ["a", "b"])
    assert perfect.fitness == pytest.approx(1.0)
    # A constant predictor: every unit predicts class 1 everywhere.
    const = record(units=((0, 0), (0, 1)))
    for u in const.units.values():
        for t, y in LABELS.items():
            u["tasks"][t]["predictions"] = pack_labels(np.ones_like(y))
    assert summarize(const, ["a", "b"]).fitness == 0.0


def test_weights_change_the_fitness():
    ev = record(wrong=0)
    for u in ev.units.values():  # task b all wrong
        u["tasks"]["b"]["predictions"] = pack_labels(1 - LABELS["b"])
    assert summarize(copy.deepcopy(ev), ["a", "b"], [3.0, 1.0]).fitness > summarize(ev, ["a", "b"]).fitness


def test_comparison_pairs_units_and_refuses_other_specs():
    from layersearch.fitness import PairingError

    # Three slices (distillation runs) with a fine-tune seed each: a verdict about the mapping.
    units = ((0, 0), (1, 0), (2, 0))
    ref = summarize(record(wrong=2, units=units), ["a", "b"])
    other = summarize(record((1, 5, 6), wrong=12, units=units), ["a", "b"])
    (c,) = compare(("uniform", ref), [("x", other)], ["a", "b"], margin=0.003)
    assert c.estimate.mean < 0 and c.estimate.units == 3 and c.verdict == "worse"
    assert "δ 0.0030" in c.text() and c.to_dict()["margin"] == 0.003
    # The same units from one slice: three fine-tunes of one student each, so no verdict.
    one = ((0, 0), (0, 1), (0, 2))
    (c,) = compare(("uniform", summarize(record(wrong=2, units=one), ["a", "b"])),
                   [("x", summarize(record((1, 5, 6), wrong=12, units=one), ["a", "b"]))], ["a", "b"],
                   margin=0.003)
    assert c.estimate.low < c.estimate.high < 0 and c.verdict == "no verdict" and "this student" in c.text()
    with pytest.raises(PairingError, match="different proxy specs"):
        compare(("uniform", ref), [("x", record(spec="spec2"))], ["a", "b"], margin=0.003)


def test_a_verdict_calls_only_what_its_interval_puts_beyond_the_margin():
    """A constructed difference (10 more mistakes per task, on three slices) against margins on
    either side of its interval: beyond δ it is worse, inside ±δ equivalent, straddling δ neither."""
    units = ((0, 0), (1, 0), (2, 0))
    ref = summarize(record(wrong=2, units=units), ["a", "b"])
    other = summarize(record((1, 5, 6), wrong=12, units=units), ["a", "b"])

    def word(margin):
        (c,) = compare(("uniform", ref), [("x", other)], ["a", "b"], margin=margin)
        return c.estimate, c.verdict, c.text()

    e, verdict, _ = word(0.0)
    assert e.high < 0 and verdict == "worse"
    assert word(-e.high * 0.9)[1] == "worse"  # the interval lies beyond -δ
    assert word((-e.high - e.low) / 2)[1] == "indistinguishable"  # -δ falls inside the interval
    _, verdict, text = word(-e.low * 1.1)  # the whole interval inside ±δ: smaller than any worth having
    assert verdict == "equivalent" and f"δ {-e.low * 1.1:.4f}" in text


# --- the cache ---------------------------------------------------------------------

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


def test_cache_merges_units_and_answers_for_the_units_asked(tmp_path):
    cache = EvaluationCache(tmp_path, "spec1")
    m = Mapping((2, 4, 6), 6)
    cache.put(summarize(record(units=((0, 0), (0, 1))), ["a", "b"]))
    cache.put(summarize(record(units=((0, 2),)), ["a", "b"]))  # a later, larger request's new seed
    assert sorted(cache.get(m).units) == ["s0-f0", "s0-f1", "s0-f2"]
    hit, partial = cache.lookup(m, [(0, 0), (0, 2)], ["a", "b"])
    assert partial is None and sorted(hit.units) == ["s0-f0", "s0-f2"] and hit.fitness_seeds == 2
    hit, partial = cache.lookup(m, [(0, 0), (1, 0)], ["a", "b"])
    assert hit is None and partial.missing(["s0-f0", "s1-f0"]) == ["s1-f0"]
    # A failed record holds none of the units (bench/ladder.py counted one as complete), and a
    # stored deterministic failure is still final for the cache: no re-evaluation.
    failed_only = Evaluation([1, 3, 6], 6, "spec1", status="failed: DivergenceError: loss nan")
    assert failed_only.missing(["s0-f0", "s1-f0"]) == ["s0-f0", "s1-f0"]
    assert cache.put(failed_only)
    hit, partial = cache.lookup(failed_only.mapping, [(0, 0)], ["a", "b"])
    assert partial is None and hit.status == failed_only.status
    # A deterministic failure while extending does not erase the proven units.
    failed = Evaluation([2, 4, 6], 6, "spec1", status="failed: FinetuneDivergence: loss nan")
    assert not cache.put(failed) and sorted(cache.get(m).units) == ["s0-f0", "s0-f1", "s0-f2"]
