"""ray.worker_niceness reaches the raylet of a Ray this program starts, and nothing else."""

from __future__ import annotations

import os

import pytest

from layersearch.config import ConfigError, RayConfig, parse_config
from layersearch.ray_priority import NICENESS_ENV, local_worker_priority


def test_a_local_ray_gets_the_setting_and_the_environment_is_put_back(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(NICENESS_ENV, "7")  # the user's own, restored afterwards
    with local_worker_priority(RayConfig()):
        assert os.environ[NICENESS_ENV] == "0"
    assert os.environ[NICENESS_ENV] == "7"
    monkeypatch.delenv(NICENESS_ENV)
    with local_worker_priority(RayConfig(worker_niceness=10)):
        assert os.environ[NICENESS_ENV] == "10"
    assert NICENESS_ENV not in os.environ


@pytest.mark.parametrize("where", ["config", "env"])
def test_a_running_cluster_keeps_its_own(monkeypatch, where):
    monkeypatch.delenv(NICENESS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = RayConfig(address="ray://head:10001") if where == "config" else RayConfig()
    if where == "env":
        monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    with local_worker_priority(cfg):
        assert NICENESS_ENV not in os.environ


@pytest.mark.parametrize("start", ["layersearch.search.pool.ensure_ray", "layersearch.distill.launch.start_ray"])
def test_both_ray_starts_pass_it_to_ray_init(monkeypatch, quickstart_raw, start):
    import importlib

    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(NICENESS_ENV, raising=False)
    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(os.environ.get(NICENESS_ENV)))
    quickstart_raw["ray"]["worker_niceness"] = 5
    cfg = parse_config(quickstart_raw)
    module, name = start.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    fn(cfg.ray if name == "ensure_ray" else cfg)
    assert seen == ["5"]


@pytest.mark.parametrize("bad", [-1, 20, "high"])
def test_out_of_range_is_a_config_error(quickstart_raw, bad):
    quickstart_raw["ray"]["worker_niceness"] = bad
    with pytest.raises(ConfigError, match="ray.worker_niceness"):
        parse_config(quickstart_raw)
