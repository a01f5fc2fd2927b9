"""Search and distill against a real ``mlflow server`` on loopback, read back over its REST API.

The server is what a cluster user runs (docker/compose.yaml), here with a
SQLite backend and a local artifact store that it proxies. Credentials are set
in the environment, as users must; this server has no auth and ignores them,
and nothing the product logs may contain them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import fitness_double
import pytest
import ray
import ray.cloudpickle
from transformers import AutoModel
from typer.testing import CliRunner

from layersearch.cli import app
from layersearch.config import parse_config
from layersearch.search.driver import SearchDriver
from layersearch.tracking import flatten

ray.cloudpickle.register_pickle_by_value(fitness_double)
pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).with_name("mlflow")
USER, PASSWORD = "layersearch-ci", "pw-7f3a9c-never-logged"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 in its own process group; its base URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: 2 cores
    proc = subprocess.Popen(
        [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn worker it forks
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def credentials_in_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)


def api(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One REST call: GET with a query string, or POST a JSON body."""
    target = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        target += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(target, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def artifact(url: str, run: dict, path: str) -> bytes:
    """An artifact's bytes through the server's artifact proxy (mlflow-artifacts:/...)."""
    root = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:")
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow-artifacts/artifacts{root}/{path}", timeout=30) as r:
        return r.read()


def search_runs(url: str, experiment: str, filter_string: str) -> list[dict]:
    exp = api(url, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    body = {"experiment_ids": [exp["experiment_id"]], "filter": filter_string, "max_results": 1000}
    return api(url, "runs/search", body).get("runs", [])


def values(run: dict) -> list[str]:
    """Everything a run shows as text: params and tags."""
    data = run["data"]
    return [x["value"] for x in data.get("params", []) + data.get("tags", [])]


def params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def test_search_nests_children_on_the_server(server, quickstart_raw, tmp_path, credentials_in_env):
    raw = quickstart_raw
    raw["tracking"].update(uri=server, experiment="search-on-server")
    raw["search"].update(population=4, generations=2, seed=0, strategy="ga", racing=None,
                         cache_dir=str(tmp_path / "evals"))
    raw["ray"].update(num_evaluators=1, num_cpus=1)
    cfg = parse_config(raw)
    assert not [k for k, v in flatten(cfg.to_dict()).items() if PASSWORD in str(v)]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        result = SearchDriver(cfg, fitness_double.factory(), num_teacher_layers=6).run()
    finally:
        ray.shutdown()

    parent = api(server, "runs/get", run_id=result.run_id)["run"]
    assert parent["info"]["status"] == "FINISHED"
    assert params(parent)["tracking.uri"] == server
    kids = search_runs(server, "search-on-server", f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(kids) == result.evaluated >= 4
    keys = [params(k)["mapping"] for k in kids]
    assert len(set(keys)) == len(keys)
    for kid in kids:
        assert kid["info"]["status"] == "FINISHED"
        genes = params(kid)
        assert [genes[f"gene_{m}"] for m in (1, 2, 3)] == genes["mapping"].removeprefix("6:").split("-")
        assert "fitness" in {m["key"] for m in kid["data"]["metrics"]}
    # The parent's artifacts went through the server's proxy and come back from it.
    state = json.loads(artifact(server, parent, "ga_state.json"))
    assert len(state["populations"]) == 2
    config_text = artifact(server, parent, "config.yaml").decode()
    assert f"uri: {server}" in config_text
    for run in [parent, *kids]:
        assert not [v for v in values(run) if PASSWORD in v], run["info"]["run_id"]
    assert PASSWORD not in config_text


def test_distill_logs_a_finished_run_with_the_model_on_the_server(server, quickstart_raw, write_config,
                                                                   tmp_path, credentials_in_env):
    raw = quickstart_raw
    raw["tracking"].update(uri=server, experiment="distill-on-server")
    raw["distill"]["corpus_blocks"] = 32
    raw["distill"]["train"].update(max_steps=2, batch_size=4)
    out = tmp_path / "student"
    result = CliRunner().invoke(app, ["distill", str(write_config(raw)), "--mapping", "2,4,6", "-o", str(out)])
    assert result.exit_code == 0, result.output

    (run,) = search_runs(server, "distill-on-server", "tags.`layersearch.kind` = 'distill'")
    assert run["info"]["status"] == "FINISHED"
    assert {params(run)[f"gene_{m}"] for m in (1, 2, 3)} == {"2", "4", "6"}
    assert not [v for v in values(run) if PASSWORD in v]
    listed = api(server, "artifacts/list", run_id=run["info"]["run_id"], path="model")
    files = {Path(f["path"]).name for f in listed["files"]}
    assert {"config.json", "model.safetensors", "mapping.json"} <= files, files
    # The model directory downloads from the server and loads as an ordinary HF model.
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(run_id=run["info"]["run_id"], artifact_path="model",
                                                dst_path=str(tmp_path / "download"), tracking_uri=server)
    assert AutoModel.from_pretrained(local).config.num_hidden_layers == 3
    assert PASSWORD not in artifact(server, run, "config.yaml").decode()
