"""The probe and agreement readouts end to end on the real offline teacher and shared data."""

from __future__ import annotations

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


def tiny(raw: dict, readout: str, slices: list[int] | None = None) -> dict:
    raw["proxy"]["slice_blocks"] = 64
    raw["proxy"]["slice_seeds"] = slices or [0]
    raw["proxy"]["train"].update(max_steps=3, batch_size=8)
    raw["tasks"]["finetune"].update(train_examples=64, dev_examples=64, batch_size=16, seeds=[0, 1])
    raw["tasks"].update(readout=readout, probe={"train_examples": 96}, agreement={"heldout_blocks": 32})
    raw["search"]["cache_dir"] = raw["corpus"]["cache_dir"] + "-evaluations"
    return raw


def test_probe_gives_the_same_fitness_bit_for_bit(quickstart_raw):
    cfg = parse_config(tiny(quickstart_raw, "probe"))
    a = Evaluator(cfg).evaluate(Mapping((2, 4, 6), 6))
    b = Evaluator(cfg).evaluate(Mapping((2, 4, 6), 6))  # a fresh evaluator: distilled and probed again
    assert a.ok and b.ok, (a.status, b.status)
    assert list(a.units) == ["s0-f0"]  # one unit per slice, whatever the fine-tune seeds
    assert a.fitness == b.fitness and a.units["s0-f0"]["tasks"] == {
        t: {**v, "seconds": a.units["s0-f0"]["tasks"][t]["seconds"]} for t, v in b.units["s0-f0"]["tasks"].items()}
    assert set(a.metrics) >= {"sst2/accuracy", "sst2/probe_c", "mrpc/f1"}


def test_agreement_tests_on_blocks_no_slice_trains_on(quickstart_raw):
    from layersearch.data.slices import get_heldout

    cfg = parse_config(tiny(quickstart_raw, "agreement", slices=[0, 1, 2]))
    evaluator = Evaluator(cfg)
    held = {tuple(r) for r in get_heldout(cfg.corpus, evaluator.tokenizer, 32).tolist()}
    assert len(held) == 32
    for s in cfg.proxy.slice_seeds:
        assert not held & {tuple(r) for r in evaluator.slice(s).tolist()}
    ev = evaluator.evaluate(Mapping((2, 4, 6), 6))
    assert ev.ok, ev.status
    assert sorted(ev.units) == ["s0-f0", "s1-f0", "s2-f0"] and list(ev.dev_labels) == ["agreement"]
    unit = ev.units["s0-f0"]["tasks"]["agreement"]
    assert len(unit["values"]) == 16 and -1 < unit["metrics"]["r2"] <= 1 and 0 < unit["metrics"]["cka"] <= 1
    assert ev.fitness == pytest.approx(np.mean([u["tasks"]["agreement"]["metrics"]["r2"] for u in ev.units.values()]))


def test_compare_with_agreement_gives_verdicts_with_intervals(quickstart_raw, write_config):
    raw = tiny(quickstart_raw, "agreement", slices=[0, 1])
    result = runner.invoke(app, ["compare", str(write_config(raw)), "-m", "uniform", "-m", "upper"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("upper vs uniform:"))
    # The verdict follows its interval and the printed margin δ (agreement's default 0.01).
    lo, hi = (float(x) for x in line.split("[")[1].split("]")[0].split(", "))
    assert "δ 0.0100" in line and "paired units" in line
    word = line.split("-> ")[-1]
    assert word == ("better" if lo > 0.01 else "worse" if hi < -0.01 else "equivalent" if -0.01 < lo and hi < 0.01
                    else "indistinguishable"), line
    assert "held-out R^2" in result.stdout.replace("\n", " ")
    assert result.stdout.count("distillation gain") == 2
    # The verdicts say what they rank, and that the shipped proxy's ladder figures (40 steps, 512
    # blocks) are not this 3-step proxy's.
    said = " ".join(result.stdout.split())
    assert "these verdicts rank proxy students (3 distillation step(s), agreement readout)" in said
    assert "proxy.train.max_steps: measured at 40, this run 3" in said and "Kendall tau" not in said
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert [r.data.tags["proxy_fidelity"] for r in runs if r.data.tags.get("layersearch.kind") == "compare"] == [
        "unmeasured"]


def test_gpu_suite_smoke_prints_every_figure():
    """bench/gpu_suite.py's code path at toy sizes on a CPU: ready for the first lent GPU."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "bench" / "gpu_suite.py"), "--smoke"], cwd=root,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("packed proxy distillation K=1:", "packed proxy distillation K=2:", "full distillation step:",
                 "readout finetune:", "readout probe:", "readout agreement:", "probe bf16 vs fp32:"):
        assert line in out.stdout, (line, out.stdout)
