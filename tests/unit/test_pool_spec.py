"""An evaluator whose proxy spec differs from the driver's refuses to start."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from layersearch.config import parse_config
from layersearch.search.pool import EvaluatorActor


def test_an_evaluator_with_another_spec_refuses_to_start(quickstart_raw):
    cfg = parse_config(quickstart_raw)

    def factory(_cfg):
        return SimpleNamespace(spec_key="aaaa")

    import ray

    actor = EvaluatorActor(cfg, factory, spec="aaaa")
    assert actor.evaluator.spec_key == "aaaa"
    # Built outside Ray it stays outside: no Ray instance started as a side effect.
    assert actor.where.startswith("local/") and not ray.is_initialized()
    assert EvaluatorActor(cfg, factory).evaluator.spec_key == "aaaa"  # no expectation, no check
    with pytest.raises(RuntimeError, match="differs from the driver's bbbb"):
        EvaluatorActor(cfg, factory, spec="bbbb")
