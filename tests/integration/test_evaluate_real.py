"""Proxy fitness end to end on the real offline teacher and shared data."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.config import parse_config
from layersearch.fitness import Evaluator
from layersearch.mapping import Mapping

pytestmark = pytest.mark.slow
runner = CliRunner()


def tiny(raw: dict) -> dict:
    """The quickstart spec with budgets cut to seconds: same code path, smaller numbers."""
    raw["proxy"]["slice_blocks"] = 64
    raw["proxy"]["train"].update(max_steps=3, batch_size=8)
    raw["tasks"]["finetune"].update(train_examples=64, dev_examples=64, batch_size=16)
    raw["search"]["cache_dir"] = raw["corpus"]["cache_dir"] + "-evaluations"
    return raw


def test_same_mapping_same_fitness_and_mappings_differ(quickstart_raw):
    evaluator = Evaluator(parse_config(tiny(quickstart_raw)))
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
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and second.stdout.count("cached") == 2
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    by_mapping = {}
    for r in runs:
        by_mapping.setdefault(r.data.params["mapping"], []).append(r.data.metrics["fitness"])
        assert {"gene_1", "gene_2", "gene_3"} <= set(r.data.params)
    assert set(by_mapping) == {"6:2-4-6", "6:1-1-6"}
    assert all(len(set(v)) == 1 for v in by_mapping.values())  # the cache returned the same value


def test_packed_evaluation_equals_one_by_one(quickstart_raw):
    evaluator = Evaluator(parse_config(tiny(quickstart_raw)))
    mappings = [Mapping((2, 4, 6), 6), Mapping((1, 3, 6), 6), Mapping((4, 5, 6), 6)]
    packed = evaluator.evaluate_pack(mappings)
    for m, p in zip(mappings, packed, strict=True):
        alone = evaluator.evaluate(m)
        assert p.ok and alone.ok, (p.status, alone.status)
        assert p.fitness == pytest.approx(alone.fitness, abs=1e-6)
        for k, curve in alone.curves.items():
            assert [v for _, v in p.curves[k]] == pytest.approx([v for _, v in curve], abs=1e-5), k
