"""`layersearch distill` on Ray Train workers and under preemption, on the real offline teacher.

Each CLI run is its own process (its own local Ray, as a user gets it).
Figures to expect on the 2-core CI machine: about a minute per Ray Train run,
most of it starting Ray and the workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from transformers import AutoModel

pytestmark = pytest.mark.slow
CLI = [str(Path(sys.executable).parent / "layersearch")]


@pytest.fixture
def config(quickstart_raw, write_config):
    raw = quickstart_raw
    raw["distill"]["corpus_blocks"] = 160
    raw["distill"]["train"].update(max_steps=20, batch_size=8, learning_rate=5e-4,
                                   checkpoint_every=4, precision="fp32")
    return write_config(raw), raw


def _distill(path: Path, out: Path, *extra: str, wait: bool = True):
    cmd = [*CLI, "distill", str(path), "--mapping", "uniform", "-o", str(out), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=600)
    return proc.returncode, output


def _weights(out: Path) -> dict:
    return load_file(str(out / "model.safetensors"))


def _runs(raw):
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _wait_for(path: Path, proc, seconds: float = 300) -> None:
    end = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.1)


def _train_workers() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "RayTrainWorker" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_two_ray_train_workers_match_one_and_survive_a_lost_worker(config, tmp_path):
    path, raw = config
    rc, output = _distill(path, tmp_path / "two", "--set", "distill.workers=2")
    assert rc == 0, output
    assert "distill step 20/20" in output and "tokens/s" in output
    model = AutoModel.from_pretrained(tmp_path / "two")
    assert model.config.num_hidden_layers == 3
    assert not (tmp_path / "two.checkpoints").exists()
    client, runs = _runs(raw)
    run = runs[-1]
    assert run.info.status == "FINISHED"
    assert run.data.tags["layersearch.mapping_source"] == "heuristic:uniform"
    assert run.data.params["distill.workers"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "tokens_per_second")) == 20

    # One worker, same global batch: the same run up to dropout noise.
    rc, output = _distill(path, tmp_path / "one")
    assert rc == 0, output
    _, runs = _runs(raw)
    curve = {r.data.params["distill.workers"]: [m.value for m in client.get_metric_history(
        r.info.run_id, "loss/total")] for r in runs}
    one, two = curve["1"], curve["2"]
    assert len(one) == len(two) == 20
    assert two[-1] < 0.8 * two[0] and one[-1] < 0.8 * one[0]
    assert abs(sum(one[-5:]) - sum(two[-5:])) / sum(one[-5:]) < 0.1, (one, two)

    # A worker killed mid-run is restarted and the run ends with the uninterrupted weights.
    proc = _distill(path, tmp_path / "lost", "--set", "distill.workers=2", wait=False)
    _wait_for(tmp_path / "lost.checkpoints" / "checkpoint-4", proc)
    victims = _train_workers()
    assert victims, "no Ray Train worker process found"
    os.kill(max(victims), signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    # The worker group really was started again, and rank 0 went on from a checkpoint.
    assert output.count("[rank=0, world_size=2]") == 2, output
    assert "distill step 1/20" in output and any(f"distill step {k}/20" in output for k in range(5, 21))
    expected, got = _weights(tmp_path / "two"), _weights(tmp_path / "lost")
    assert expected.keys() == got.keys()
    for k in expected:
        assert (expected[k] == got[k]).all(), k


@pytest.mark.parametrize("workers", [1, 2])  # in-process (a signal handler) and Ray Train (a stop file)
def test_sigterm_checkpoints_ends_killed_and_resume_finishes_the_same_run(config, tmp_path, workers):
    path, raw = config
    where = ("--set", f"distill.workers={workers}")
    rc, output = _distill(path, tmp_path / "straight", *where)
    assert rc == 0, output

    proc = _distill(path, tmp_path / "preempted", *where, wait=False)
    _wait_for(tmp_path / "preempted.checkpoints" / "checkpoint-4", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, output
    assert "continue with --resume" in output
    ckpt = tmp_path / "preempted.checkpoints"
    assert not (tmp_path / "preempted").exists()
    assert not list(ckpt.glob(".tmp-*"))
    client, runs = _runs(raw)
    killed = runs[-1]
    assert killed.info.status == "KILLED"

    rc, output = _distill(path, tmp_path / "preempted", "--resume", *where)
    assert rc == 0, output
    _, runs = _runs(raw)
    assert len(runs) == 2 and runs[-1].info.run_id == killed.info.run_id
    assert runs[-1].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(killed.info.run_id, "loss/total")]
    assert steps == list(range(1, 21))  # each step logged once across the two parts
    expected, got = _weights(tmp_path / "straight"), _weights(tmp_path / "preempted")
    for k in expected:
        assert (expected[k] == got[k]).all(), k
