"""A search on the real offline teacher and data, tiny budgets: verdicts, export, show --against."""

from __future__ import annotations

import json

import pytest
import ray
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.fitness.stats import VERDICTS

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture
def tiny_search(quickstart_raw, write_config, tmp_path):
    raw = quickstart_raw
    raw["proxy"]["slice_blocks"] = 64
    raw["proxy"]["train"].update(max_steps=3, batch_size=8)
    raw["tasks"]["finetune"].update(train_examples=64, dev_examples=64, batch_size=16, seeds=[0, 1])
    raw["tasks"]["names"] = ["sst2", "rte"]
    raw["search"].update(population=4, generations=1, cache_dir=str(tmp_path / "evaluations"),
                         racing={"seeds": [1, 2], "reduction": 2}, final_race=1)
    raw["ray"].update(num_evaluators=1, num_cpus=1)
    yield raw, write_config(raw)
    ray.shutdown()


def test_search_states_its_verdict_and_show_compares_against_uniform(tiny_search, tmp_path):
    raw, path = tiny_search
    exported = tmp_path / "best.json"
    out = runner.invoke(app, ["search", str(path), "--export", str(exported)])
    assert out.exit_code == 0, out.output
    assert "verdict:" in out.stdout and " ± " in out.stdout
    assert "the winner's distillation gain" in out.stdout  # against its untouched init, with its interval
    # The proxy's measured fidelity, at the start and at the end: the shipped evidence is about the
    # 40-step proxy, so this 3-step one is "not measured", with the setting that differs.
    assert " ".join(out.stdout.split()).count("proxy.train.max_steps: measured at 40, this run 3") == 2
    # Live progress in a log: one line per finished evaluation with its rung and the ETA.
    progress = [x for x in out.stdout.splitlines() if " | done " in x and "ETA" in x]
    assert any("rung 1/2 (1 unit)" in x for x in progress) and any("rung 2/2 (2 seeds)" in x for x in progress)
    assert any("ETA -" not in x for x in progress)  # an estimate once evaluations have finished
    assert "strategy auto -> ga" in out.stdout and "final race" in out.stdout
    record = json.loads(exported.read_text())
    assert record["verdict"] in (*VERDICTS, "uniform")
    # The winner is saved with the init its proxy students had (proxy.init_layers: uniform).
    assert record["init"] == [2, 4, 6]
    run_id = record["search_run_id"]
    client = MlflowClient(raw["tracking"]["uri"])
    parent = client.get_run(run_id)
    low, high = record["fitness_ci"]
    assert low <= record["fitness"] <= high and record["fitness_seeds"] == 2
    assert parent.data.tags["proxy_fidelity"] == "unmeasured"
    if record["genes"] == [2, 4, 6]:  # the winner is uniform itself: nothing to compare
        assert "is the uniform mapping" in out.stdout
    else:
        assert record["versus_uniform"]["verdict"] in VERDICTS
        assert parent.data.tags["verdict"] == record["versus_uniform"]["verdict"]
        m = parent.data.metrics
        assert m["winner_minus_uniform_ci_low"] <= m["winner_minus_uniform"] <= m["winner_minus_uniform_ci_high"]

    shown = runner.invoke(app, ["show", str(exported), "--tracking-uri", raw["tracking"]["uri"],
                                "--against", "uniform"])
    assert shown.exit_code == 0, shown.output
    assert "proxy fidelity of this search: unmeasured" in shown.stdout
    verdict_lines = [x for x in shown.stdout.splitlines() if " vs uniform: " in x]
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    kids = [k for k in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
            if k.data.tags["layersearch.kind"] == "evaluation"]
    # Only mappings that reached the top rung could have won: those rows are compared (uniform aside).
    at_top = [k for k in kids if k.data.tags.get("layersearch.rung") == "1" and k.data.params["mapping"] != "6:2-4-6"]
    assert len(at_top) < len(kids) - 1  # racing left some at the first rung
    assert len(verdict_lines) == len(at_top) and all(x.split("-> ")[-1] in VERDICTS for x in verdict_lines)
    compares = client.search_runs([exp.experiment_id], "tags.`layersearch.kind` = 'compare'")
    assert len(compares) == 1 and compares[0].data.tags["mlflow.parentRunId"] == run_id
    assert compares[0].info.status == "FINISHED"
