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
import yaml
from conftest import quickstart_dict
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from transformers import AutoModel

pytestmark = pytest.mark.slow
CLI = [str(Path(sys.executable).parent / "layersearch")]


def _config(raw: dict) -> dict:
    raw["distill"]["corpus_blocks"] = 160
    raw["distill"]["train"].update(max_steps=20, batch_size=8, learning_rate=5e-4,
                                   checkpoint_every=4, precision="fp32")
    return raw


@pytest.fixture(scope="module")
def straight(shared_data, tmp_path_factory):
    """The uninterrupted 20-step runs, on one worker and on two, that every test here compares
    with (run once per module: a two-worker run is most of a minute of starting Ray Train)."""
    root = tmp_path_factory.mktemp("distill-ray")
    raw = _config(quickstart_dict(shared_data, root))
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    runs = {}
    for workers in (1, 2):
        rc, output = _distill(path, root / f"straight-{workers}", "--set", f"distill.workers={workers}")
        assert rc == 0, output
        runs[workers] = (root / f"straight-{workers}", output, _runs(raw)[1][-1].info.run_id)
    return path, raw, runs


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


def test_two_ray_train_workers_match_one_and_survive_a_lost_worker_then_a_sigterm(straight, tmp_path):
    path, raw, runs = straight
    two, output, two_id = runs[2]
    assert "distill step 20/20" in output and "tokens/s" in output
    model = AutoModel.from_pretrained(two)
    assert model.config.num_hidden_layers == 3
    assert not Path(f"{two}.checkpoints").exists()
    client = MlflowClient(raw["tracking"]["uri"])
    run = client.get_run(two_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["layersearch.mapping_source"] == "heuristic:uniform"
    assert run.data.params["distill.workers"] == "2"
    assert len(client.get_metric_history(two_id, "tokens_per_second")) == 20

    # One worker, same global batch: the same run up to dropout noise.
    one, two = ([m.value for m in client.get_metric_history(runs[w][2], "loss/total")] for w in (1, 2))
    assert len(one) == len(two) == 20
    assert two[-1] < 0.8 * two[0] and one[-1] < 0.8 * one[0]
    assert abs(sum(one[-5:]) - sum(two[-5:])) / sum(one[-5:]) < 0.1, (one, two)

    # A worker killed mid-run is restarted from the last checkpoint; the run goes on until
    # preempted (SIGTERM: a stop file for the Ray Train workers), and resumes to the weights of
    # the uninterrupted run.
    where = ("--set", "distill.workers=2")
    ckpt = tmp_path / "lost.checkpoints"
    proc = _distill(path, tmp_path / "lost", *where, wait=False)
    _wait_for(ckpt / "checkpoint-4", proc)
    victims = _train_workers()
    assert victims, "no Ray Train worker process found"
    os.kill(max(victims), signal.SIGKILL)
    _wait_for(ckpt / "checkpoint-8", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 143, output
    # The worker group really was started again, and rank 0 went on from a checkpoint.
    assert output.count("[rank=0, world_size=2]") == 2, output
    assert "distill step 1/20" in output and any(f"distill step {k}/20" in output for k in range(5, 21))
    assert "continue with --resume" in output
    steps = _preempted_then_resumed(path, raw, tmp_path / "lost", where, runs[2][0])
    assert steps == list(range(1, 21))  # each step logged once across the restart and the resume


def _preempted_then_resumed(path: Path, raw: dict, out: Path, where: tuple, reference: Path) -> list[int]:
    """After a SIGTERM: nothing half-written, the run KILLED; ``--resume`` finishes that same run
    with the reference's weights. Returns the steps logged to the run, in order."""
    ckpt = Path(f"{out}.checkpoints")
    assert not out.exists()
    assert not list(ckpt.glob(".tmp-*"))
    client, before = _runs(raw)
    killed = before[-1]
    assert killed.info.status == "KILLED"

    rc, output = _distill(path, out, "--resume", *where)
    assert rc == 0, output
    _, after = _runs(raw)
    assert len(after) == len(before) and after[-1].info.run_id == killed.info.run_id
    assert after[-1].info.status == "FINISHED"
    expected, got = _weights(reference), _weights(out)
    assert expected.keys() == got.keys()
    for k in expected:
        assert (expected[k] == got[k]).all(), k
    return [m.step for m in client.get_metric_history(killed.info.run_id, "loss/total")]


def test_sigterm_in_process_checkpoints_ends_killed_and_resume_finishes_the_same_run(straight, tmp_path):
    path, raw, runs = straight
    where = ("--set", "distill.workers=1")  # in-process: a signal handler
    proc = _distill(path, tmp_path / "preempted", *where, wait=False)
    _wait_for(tmp_path / "preempted.checkpoints" / "checkpoint-4", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, output
    assert "continue with --resume" in output
    steps = _preempted_then_resumed(path, raw, tmp_path / "preempted", where, runs[1][0])
    assert steps == list(range(1, 21))  # each step logged once across the two parts
