"""bench/ladder.py's pre-registration: the list is written before any result and never changes,
except that a pending searched pair is filled in once."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ladder(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("ladder", None)
    import ladder as bench

    from layersearch.config import load_config

    monkeypatch.setattr(bench, "teacher_layers", lambda cfg: 6)  # the offline teacher's depth, unloaded
    spec = dict(bench.ladder_of(bench.QUICKSTART, False), results=str(tmp_path / "ladder"))
    return bench, spec, load_config(bench.QUICKSTART)


def test_register_then_fill_the_searched_pair_once(ladder, monkeypatch):
    bench, spec, cfg = ladder
    reg = bench.register(spec, cfg, None)
    kinds = [m["kind"] for m in reg["mappings"]]
    assert kinds == ["heuristic"] * 4 + ["random"] * 2 + ["searched"] * 2
    # The quickstart's random draws, as its committed ladder ran them (seeded: the same every time).
    assert [m["genes"] for m in reg["mappings"] if m["kind"] == "random"] == [[4, 4, 6], [3, 5, 6]]
    assert reg["primary_fidelity"] == "agreement-40-steps-3-slices"
    assert reg["primary_fidelity"] not in reg["exploratory_fidelities"]
    # Pending searched mappings get no ground truth.
    assert [lbl for lbl, _ in bench.truth_specs(reg)] == ["uniform", "last", "lower", "upper", "4,4,6", "3,5,6"]
    path = bench.registration_path(spec)
    assert bench.register(spec, cfg, None) == json.loads(path.read_text()) == reg  # idempotent

    monkeypatch.setattr(bench, "searched_pair", lambda cfg, run, n: [[2, 4, 6], [1, 5, 6]])
    reg = bench.register(spec, cfg, "a" * 32)
    winner, runner = reg["mappings"][-2:]
    assert winner["genes"] == [2, 4, 6] and winner["same_as"] == "uniform"  # distilled once, as uniform
    assert runner["genes"] == [1, 5, 6] and "same_as" not in runner
    assert bench.truth_specs(reg)[-1] == ("search-runner-up", "1,5,6")
    with pytest.raises(bench.LadderError, match="already registers search run a{32}; a registered list never"):
        bench.register(spec, cfg, "b" * 32)


def test_a_registered_list_never_changes(ladder):
    bench, spec, cfg = ladder
    bench.register(spec, cfg, None)
    path = bench.registration_path(spec)
    before = path.read_text()
    with pytest.raises(bench.LadderError, match="registers other mappings than this config draws now"):
        bench.register(dict(spec, randoms=3), cfg, None)
    assert path.read_text() == before  # nothing half-written
    with pytest.raises(bench.LadderError, match="--register first"):
        bench.registered(dict(spec, results=str(Path(spec["results"]) / "elsewhere")))
