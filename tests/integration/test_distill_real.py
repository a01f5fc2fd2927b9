"""`layersearch distill` on the real offline teacher and shared corpus."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from layersearch.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture
def distill_config(quickstart_raw, write_config):
    raw = quickstart_raw
    raw["distill"]["corpus_blocks"] = 96
    raw["distill"]["train"].update(max_steps=10, batch_size=8, learning_rate=5e-4,
                                   checkpoint_every=4)
    return write_config(raw), raw


def _runs(raw):
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def test_distill_writes_a_loadable_model_and_a_finished_run(distill_config, tmp_path):
    path, raw = distill_config
    out = tmp_path / "student"
    result = runner.invoke(app, ["distill", str(path), "--mapping", "uniform", "-o", str(out)])
    assert result.exit_code == 0, result.output
    model = AutoModel.from_pretrained(out)
    assert model.config.num_hidden_layers == 3
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        hidden = model(**tok(["a real sentence"], return_tensors="pt")).last_hidden_state
    assert hidden.shape[-1] == 384 and torch.isfinite(hidden).all()
    clf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    assert clf.config.num_labels == 2
    assert (out / "mapping.json").is_file() and (out / "layersearch.yaml").is_file()
    assert not (tmp_path / "student.checkpoints").exists()

    client, runs = _runs(raw)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {run.data.params[f"gene_{m}"] for m in (1, 2, 3)} == {"2", "4", "6"}
    assert run.data.params["student.num_layers"] == "3"
    assert mlflow.get_tracking_uri()  # the run went to the configured store
    total = [m.value for m in client.get_metric_history(run.info.run_id, "loss/total")]
    assert len(total) == 10
    assert sum(total[-3:]) < sum(total[:3]), total  # the loss went down
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model", "init_report.json"} <= arts


@pytest.mark.parametrize("mapping,words", [
    ("2,6", "2 genes for a 3-layer student"),
    ("2,4,9", "gene 3 is 9, outside 0..6"),
    ("/nonexistent/mapping.json", "not found"),
])
def test_bad_mapping_fails_cleanly(distill_config, tmp_path, mapping, words):
    path, raw = distill_config
    out = tmp_path / "student"
    result = runner.invoke(app, ["distill", str(path), "--mapping", mapping, "-o", str(out)])
    assert result.exit_code != 0
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    _, runs = _runs(raw)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_nan_loss_fails_cleanly(distill_config, tmp_path, monkeypatch):
    from layersearch.losses import DistillLoss

    real = DistillLoss.forward

    def poisoned(self, s, t):
        terms = real(self, s, t)
        terms["hidden_mse"] = terms["hidden_mse"] * float("nan")
        terms["total"] = terms["total"] + terms["hidden_mse"]
        return terms

    monkeypatch.setattr(DistillLoss, "forward", poisoned)
    path, raw = distill_config
    out = tmp_path / "student"
    result = runner.invoke(app, ["distill", str(path), "--mapping", "uniform", "-o", str(out)])
    assert result.exit_code == 1
    assert "loss became nan at step 1 (objective hidden_mse)" in result.stderr
    assert not out.exists()
    _, runs = _runs(raw)
    assert runs[0].info.status == "FAILED"
    assert "DivergenceError" in runs[0].data.tags["layersearch.error"]


def _fail_after(monkeypatch, step):
    """The loss turns NaN after ``step`` optimizer steps: a run that dies past a checkpoint."""
    from layersearch.losses import DistillLoss

    real, calls = DistillLoss.forward, {"n": 0}

    def poisoned(self, s, t):
        terms = real(self, s, t)
        calls["n"] += 1
        if calls["n"] > step:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(DistillLoss, "forward", poisoned)


def test_a_failed_run_keeps_its_checkpoints_and_a_corrupt_one_fails_cleanly(distill_config, tmp_path,
                                                                             monkeypatch):
    path, raw = distill_config
    out = tmp_path / "student"
    _fail_after(monkeypatch, 5)
    result = runner.invoke(app, ["distill", str(path), "-m", "uniform", "-o", str(out)])
    assert result.exit_code == 1 and "loss became nan at step 6" in result.stderr
    monkeypatch.undo()
    ckpt = tmp_path / "student.checkpoints"
    assert (ckpt / "checkpoint-4").is_dir() and (ckpt / "run.json").is_file()
    # A new run must not silently overwrite them.
    again = runner.invoke(app, ["distill", str(path), "-m", "uniform", "-o", str(out)])
    assert again.exit_code == 1 and "pass --resume to continue it" in again.stderr
    (ckpt / "checkpoint-4" / "student.safetensors").write_bytes(b"\x00garbage")
    result = runner.invoke(app, ["distill", str(path), "-m", "uniform", "-o", str(out), "--resume"])
    assert result.exit_code == 1
    assert "checkpoint" in result.stderr and "corrupt or incomplete" in result.stderr
    assert not out.exists()
    _, runs = _runs(raw)
    assert [r.info.status for r in runs] == ["FAILED"]  # the resume reopened the same run


def test_resume_refuses_another_config_or_mapping(distill_config, tmp_path, monkeypatch):
    path, raw = distill_config
    out = tmp_path / "student"
    _fail_after(monkeypatch, 5)
    runner.invoke(app, ["distill", str(path), "-m", "uniform", "-o", str(out)])
    monkeypatch.undo()
    other = runner.invoke(app, ["distill", str(path), "-m", "upper", "-o", str(out), "--resume"])
    assert other.exit_code == 1 and "used mapping [2, 4, 6]" in other.stderr, other.output
    lr = runner.invoke(app, ["distill", str(path), "-m", "uniform", "-o", str(out), "--resume",
                             "--set", "distill.train.learning_rate=0.01"])
    assert lr.exit_code == 1 and "distill.train.learning_rate (0.0005 -> 0.01)" in lr.stderr, lr.output
    none = runner.invoke(app, ["distill", str(path), "-m", "uniform", "-o", str(tmp_path / "x"), "--resume"])
    assert none.exit_code == 1 and "no run to resume" in none.stderr
