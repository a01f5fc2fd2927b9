"""Tracking credentials come from the environment only: never in the config, its params or its errors."""

from __future__ import annotations

import copy
import re

import pytest
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.config import ConfigError, TrackingConfig, parse_config
from layersearch.tracking import flatten

runner = CliRunner()
SECRET = "hunter2-not-for-logs"


def with_uri(raw: dict, uri: str) -> dict:
    raw = copy.deepcopy(raw)
    raw["tracking"]["uri"] = uri
    return raw


@pytest.mark.parametrize("uri", [
    f"http://alice:{SECRET}@127.0.0.1:5000",
    f"https://alice:{SECRET}@mlflow.example.org",
    f"https://{SECRET}@mlflow.example.org",  # a token as the user name
    f"postgresql://mlflow:{SECRET}@db:5432/mlflow",
])
def test_credentials_in_the_tracking_uri_are_refused(quickstart_raw, uri):
    with pytest.raises(ConfigError) as exc:
        parse_config(with_uri(quickstart_raw, uri))
    (problem,) = exc.value.problems
    assert problem.startswith("tracking.uri: holds credentials")
    assert "MLFLOW_TRACKING_USERNAME" in problem and "MLFLOW_TRACKING_PASSWORD" in problem
    assert SECRET not in problem


def test_the_refusal_is_one_line_exit_2_without_the_secret(quickstart_raw, write_config):
    path = write_config(quickstart_raw)
    result = runner.invoke(app, ["validate", str(path), "--set", f"tracking.uri=http://bob:{SECRET}@10.0.0.5:5000"])
    assert result.exit_code == 2, result.output
    assert "tracking.uri" in result.stderr and "MLFLOW_TRACKING_PASSWORD" in result.stderr
    assert SECRET not in result.output
    # Built directly (or assigned), the model's own error does not echo the URI either.
    with pytest.raises(ValueError) as exc:
        TrackingConfig(uri=f"http://bob:{SECRET}@10.0.0.5:5000")
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize("uri", [
    "sqlite:///mlflow.db",
    "http://127.0.0.1:5000",
    "https://mlflow.example.org/prefix",
    "postgresql://mlflow@db:5432/mlflow",  # a user name alone; the password from PGPASSWORD
    "databricks",
    "file:///tmp/mlruns",
])
def test_uris_without_secrets_pass(quickstart_raw, uri):
    assert parse_config(with_uri(quickstart_raw, uri)).tracking.uri == uri


def test_unknown_tracking_keys_stay_errors(quickstart_raw):
    raw = copy.deepcopy(quickstart_raw)
    raw["tracking"]["password"] = SECRET
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.problems == ["tracking.password: unknown key (check the spelling; see configs/quickstart.yaml for every key)"]


def test_logged_config_params_hold_no_secret(quickstart_raw, monkeypatch):
    # MLflow reads these itself; the config (and so the params) has no place for them.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    cfg = parse_config(with_uri(quickstart_raw, "http://127.0.0.1:5000"))
    params = flatten(cfg.to_dict())
    assert params["tracking.uri"] == "http://127.0.0.1:5000"
    assert not [k for k in params if re.search(r"password|secret|credential|api_key|(^|[._])token$", k, re.I)]
    assert not [k for k, v in params.items() if SECRET in str(v)]


def test_the_experiment_opens_in_mlflows_model_training_view(tmp_path):
    """MLflow 3's UI shows an experiment without a kind as a GenAI one; layersearch's say what they are."""
    from mlflow.tracking import MlflowClient

    from layersearch.config import TrackingConfig
    from layersearch.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("made-before")  # an experiment an older layersearch created
    for name in ("fresh", "made-before"):
        tracker = Tracker(TrackingConfig(uri=uri, experiment=name))
        assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracker.experiment_id == old
