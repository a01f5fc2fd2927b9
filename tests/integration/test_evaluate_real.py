"""Proxy fitness end to end on the real offline teacher and shared data."""

from __future__ import annotations

import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.config import parse_config
from layersearch.fitness import Evaluator
from layersearch.mapping import Mapping

pytestmark = pytest.mark.slow
runner = CliRunner()


def tiny(raw: dict, tasks: tuple = ("sst2", "rte")) -> dict:
    """The quickstart spec with budgets cut to seconds: same code path, smaller numbers. SST-2 and
    RTE are one sentence and pairs with text labels; the layout test adds MRPC's integer-labelled pairs."""
    raw["proxy"]["slice_blocks"] = 64
    raw["proxy"]["train"].update(max_steps=3, batch_size=8)
    raw["tasks"]["finetune"].update(train_examples=64, dev_examples=64, batch_size=16, seeds=[0])
    raw["tasks"]["names"] = list(tasks)
    raw["search"]["cache_dir"] = raw["corpus"]["cache_dir"] + "-evaluations"
    return raw


def test_same_mapping_same_fitness_and_mappings_differ(quickstart_raw):
    evaluator = Evaluator(parse_config(tiny(quickstart_raw, ("sst2", "mrpc", "rte"))))  # every task layout
    a1 = evaluator.evaluate(Mapping((2, 4, 6), 6))
    a2 = evaluator.evaluate(Mapping((2, 4, 6), 6))
    b = evaluator.evaluate(Mapping((1, 1, 6), 6))
    for ev in (a1, a2, b):
        assert ev.ok, ev.status
        assert set(ev.scores) == {"sst2", "mrpc", "rte"}
        assert 0.0 <= ev.fitness <= 1.0
    assert a1.fitness == pytest.approx(a2.fitness, abs=1e-6)
    assert a1.scores == a2.scores and a1.curves == a2.curves
    assert b.curves["distill/total"] != a1.curves["distill/total"]
    assert set(a1.metrics) == {"sst2/accuracy", "mrpc/f1", "mrpc/accuracy", "rte/accuracy"}


def test_diverging_candidate_is_a_failed_evaluation(quickstart_raw):
    raw = tiny(quickstart_raw)
    raw["proxy"]["train"]["learning_rate"] = 1e30
    raw["proxy"]["train"]["max_grad_norm"] = None
    ev = Evaluator(parse_config(raw)).evaluate(Mapping((2, 4, 6), 6))
    assert not ev.ok and ev.fitness is None
    assert ev.status.startswith("failed: ") and "Divergence" in ev.status, ev.status
    assert ev.cacheable


def test_evaluate_cli_two_mappings_logs_runs_and_caches(quickstart_raw, write_config):
    raw = tiny(quickstart_raw)
    path = write_config(raw)
    args = ["evaluate", str(path), "-m", "uniform", "-m", "1,1,6"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "[2, 4, 6]" in first.stdout and "[1, 1, 6]" in first.stdout and "fitness" in first.stdout
    # The distillation gain over the untouched init (one shared init: proxy.init_layers is fixed).
    assert first.stdout.count("distillation gain") == 2
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and second.stdout.count("cached") == 3  # the init baseline too
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    every = client.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" for r in every)
    inits = [r for r in every if r.data.tags["layersearch.kind"] == "init-baseline"]
    assert len(inits) == 2 and {r.data.params["mapping"] for r in inits} == {"6:2-4-6"}
    assert sorted(r.data.tags["layersearch.cached"] for r in inits) == ["False", "True"]
    runs = [r for r in every if r.data.tags["layersearch.kind"] == "evaluation"]
    assert len(runs) == 4
    for r in runs:
        m = r.data.metrics
        assert m["gain_ci_low"] <= m["gain"] <= m["gain_ci_high"]
        # One proxy slice is one distillation run: the gain speaks of this student only.
        assert r.data.tags["distillation_gain"] == "this student"
    by_mapping = {}
    for r in runs:
        by_mapping.setdefault(r.data.params["mapping"], []).append(r.data.metrics["fitness"])
        assert {"gene_1", "gene_2", "gene_3"} <= set(r.data.params)
    assert set(by_mapping) == {"6:2-4-6", "6:1-1-6"}
    assert all(len(set(v)) == 1 for v in by_mapping.values())  # the cache returned the same value


def test_constant_predictor_scores_zero_on_every_real_task(shared_data):
    from layersearch.data.tasks import load_task
    from layersearch.fitness.stats import matthews

    for task in ("sst2", "mrpc", "rte", "cola"):
        labels = np.asarray(load_task(task, str(shared_data / "glue"))["dev"]["label"])
        for c in (0, 1):
            assert matthews(np.full(len(labels), c), labels) == 0.0, task


def test_more_seeds_extend_the_cached_evaluation(quickstart_raw, monkeypatch):
    import layersearch.readout.finetune as finetune
    from layersearch.fitness import spec_key, units_of
    from layersearch.search.cache import EvaluationCache

    calls = []
    real = finetune.finetune_task
    monkeypatch.setattr(finetune, "finetune_task", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    raw = tiny(quickstart_raw)
    one = parse_config(raw)
    cache = EvaluationCache(one.search.cache_dir, spec_key(one))
    m = Mapping((2, 4, 6), 6)
    first = Evaluator(one).evaluate(m)
    assert first.ok and first.fitness_seeds == 1 and len(calls) == 2
    cache.put(first)

    raw["tasks"]["finetune"]["seeds"] = [0, 1]
    two = parse_config(raw)
    assert spec_key(two) == cache.spec_key
    hit, partial = cache.lookup(m, units_of(two), two.tasks.names)
    assert hit is None and list(partial.units) == ["s0-f0"]
    calls.clear()
    extended = Evaluator(two).evaluate(m, prior=partial)
    assert extended.ok, extended.status
    assert sorted(calls) == ["rte", "sst2"]  # one new seed per task, seed 0 reused
    assert extended.fitness_seeds == 2 and extended.units["s0-f0"] == first.units["s0-f0"]
    cache.put(extended)
    hit, _ = cache.lookup(m, units_of(one), one.tasks.names)  # asking for fewer seeds is a hit
    assert hit.fitness == pytest.approx(first.fitness)


def test_compare_cli_verdicts_and_mlflow_records(quickstart_raw, write_config):
    raw = tiny(quickstart_raw)
    raw["tasks"]["finetune"]["seeds"] = [0, 1]
    path = write_config(raw)
    out = runner.invoke(app, ["compare", str(path), "-m", "uniform", "-m", "upper", "-m", "lower"])
    assert out.exit_code == 0, out.output
    lines = [x for x in out.stdout.splitlines() if " vs uniform: " in x]
    assert len(lines) == 2, out.stdout
    for line in lines:
        # One proxy slice: an interval for these students, and no verdict about their mappings.
        assert re.search(r"[+-]\d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\] for this student", line), line
        assert line.endswith("-> no verdict")
    assert "no verdict is given" in " ".join(out.stdout.split())
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("layersearch.kind") == "compare"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
            and r.data.tags["layersearch.kind"] == "evaluation"]
    assert parent.info.status == "FINISHED" and len(kids) == 3
    assert out.stdout.count("distillation gain") == 3
    assert {"distillation_gain/2-4-6", "distillation_gain/4-5-6", "distillation_gain/1-2-3"} <= set(parent.data.tags)
    assert {"gain/1-2-3", "gain_ci_low/1-2-3", "gain_ci_high/1-2-3"} <= set(parent.data.metrics)
    assert {"verdict/4-5-6", "verdict/1-2-3"} <= set(parent.data.tags)
    assert {"diff/4-5-6", "diff_ci_low/4-5-6", "diff_ci_high/4-5-6", "p_holm/1-2-3"} <= set(parent.data.metrics)
    for kid in kids:
        m = kid.data.metrics
        assert m["fitness_ci_low"] <= m["fitness"] <= m["fitness_ci_high"] and m["fitness_seeds"] == 2
        assert {"sst2/majority", "rte/majority", "sst2/accuracy", "rte/accuracy"} <= set(m)
        assert "evaluation.json" in {a.path for a in client.list_artifacts(kid.info.run_id)}
    bad = runner.invoke(app, ["compare", str(path), "-m", "uniform", "-m", "2,4,6"])
    assert bad.exit_code != 0 and "same mapping" in bad.output


def test_packed_evaluation_equals_one_by_one(quickstart_raw):
    """Packed distillation is exact: fine-tuned one by one, each packed student scores what it
    scores alone. Packed fine-tuning follows one by one step by step, up to summation order."""
    raw = tiny(quickstart_raw)
    raw["tasks"]["finetune"]["seeds"] = [0, 1]
    mappings = [Mapping((2, 4, 6), 6), Mapping((1, 3, 6), 6)]
    alone = [Evaluator(parse_config(raw)).evaluate(m) for m in mappings]
    raw["tasks"]["finetune"]["seeds"] = [0]
    one_by_one = Evaluator(parse_config(raw))
    assert not one_by_one.packed_finetune
    packed = one_by_one.evaluate_pack(mappings)
    raw["tasks"]["finetune"].update(packed=True, seeds=[0, 1])
    evaluator = Evaluator(parse_config(raw))
    assert evaluator.packed_finetune
    fully = evaluator.evaluate_pack(mappings)
    for a, p, f in zip(alone, packed, fully, strict=True):
        assert a.ok and p.ok and f.ok, (a.status, p.status, f.status)
        for task, rec in a.units["s0-f0"]["tasks"].items():  # the same scores
            assert p.units["s0-f0"]["tasks"][task]["metrics"] == pytest.approx(rec["metrics"], abs=1e-6), task
        assert sorted(f.units) == sorted(a.units) == ["s0-f0", "s0-f1"]
        for k, curve in a.curves.items():  # distillation and every fine-tune, step by step
            if k in p.curves:
                assert [v for _, v in p.curves[k]] == pytest.approx([v for _, v in curve], abs=1e-5), k
            assert [v for _, v in f.curves[k]] == pytest.approx([v for _, v in curve], rel=1e-3, abs=1e-4), k
        for u in a.units:
            for task, rec in a.units[u]["tasks"].items():
                for name, value in rec["metrics"].items():
                    assert f.units[u]["tasks"][task]["metrics"][name] == pytest.approx(value, abs=0.05), (u, task)


def test_out_of_memory_halves_the_pack_and_loses_no_candidate(quickstart_raw, monkeypatch):
    import torch

    import layersearch.distill.packed as packed
    import layersearch.readout.finetune_packed as finetune_packed

    raw = tiny(quickstart_raw)
    raw["tasks"]["finetune"]["packed"] = True
    evaluator = Evaluator(parse_config(raw))
    mappings = [Mapping((2, 4, 6), 6), Mapping((1, 3, 6), 6), Mapping((4, 5, 6), 6), Mapping((3, 4, 6), 6)]
    reference = evaluator.evaluate_pack(mappings)

    distil_sizes, finetune_sizes = [], []
    real_train, real_finetune = packed.train_packed, finetune_packed.finetune_pack

    def train_fits_one(students, *a, **k):  # as if only one student fitted beside the teacher
        distil_sizes.append(len(students))
        if len(students) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real_train(students, *a, **k)

    def finetune_fits_two(encoders, *a, **k):
        finetune_sizes.append(len(encoders))
        if len(encoders) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_finetune(encoders, *a, **k)

    monkeypatch.setattr(packed, "train_packed", train_fits_one)
    monkeypatch.setattr(finetune_packed, "finetune_pack", finetune_fits_two)
    shrunk = evaluator.evaluate_pack(mappings)
    assert distil_sizes == [4, 2, 1, 1, 2, 1, 1]
    assert finetune_sizes == [4, 2, 2] * 2  # per task (two here): the pack, then its halves
    for got, ref in zip(shrunk, reference, strict=True):
        assert got.ok, got.status
        # The retried halves start from fresh students: the same results as the unsplit pack.
        assert got.fitness == pytest.approx(ref.fitness, abs=0.03)
        assert [v for _, v in got.curves["distill/total"]] == pytest.approx(
            [v for _, v in ref.curves["distill/total"]], rel=1e-4)

    # One student alone still out of memory: that candidate fails, transiently, and alone.
    def never_fits(students, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(packed, "train_packed", never_fits)
    failed = evaluator.evaluate_pack(mappings[:2])
    assert all(not ev.ok and "OutOfMemoryError" in ev.status for ev in failed)
    assert not any(ev.cacheable for ev in failed)  # never stored: a later run tries again
