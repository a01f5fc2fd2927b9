"""One device policy for every command: ``ray.num_gpus`` decides where search evaluators, evaluate,
compare, baselines and confirm run, and so which spec key their results are cached under."""

from __future__ import annotations

import pytest
import torch

from layersearch.config import parse_config
from layersearch.distill.trainer import training_device
from layersearch.errors import UserError
from layersearch.fitness.spec import evaluation_device, evaluator_gpus, local_device, search_device


@pytest.mark.parametrize("num_gpus,visible,device,gpus", [
    ("auto", True, "cuda", 1.0),
    ("auto", False, "cpu", 0.0),
    (0, True, "cpu", 0.0),  # the CPU even where a GPU is visible: search and evaluate alike
    (2, False, "cuda", 2.0),  # a CPU-only driver of a GPU cluster
])
def test_every_command_takes_the_same_device(quickstart_raw, monkeypatch, num_gpus, visible, device, gpus):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
    cfg = parse_config({**quickstart_raw, "ray": {**quickstart_raw.get("ray", {}), "num_gpus": num_gpus}})
    assert evaluation_device(cfg) == search_device(cfg) == local_device(cfg) == device
    assert evaluator_gpus(cfg) == gpus


def test_evaluator_follows_the_policy(quickstart_raw, monkeypatch):
    from layersearch.fitness import Evaluator

    # A GPU asked for where none is visible: one clear line before anything loads.
    cfg = parse_config({**quickstart_raw, "ray": {**quickstart_raw.get("ray", {}), "num_gpus": 1}})
    with pytest.raises(UserError, match="ray.num_gpus is 1.0 but this process sees no GPU"):
        Evaluator(cfg)
    # An evaluator's device reaches the trainer, even where another device is visible.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device("fp32", "cpu")[0].type == "cpu"
    assert training_device("fp32")[0].type == "cuda"
