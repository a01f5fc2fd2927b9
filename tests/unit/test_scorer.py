"""Which of a mapping's records counts (search/scorer.py's rules), on stand-in records."""

from __future__ import annotations

from types import SimpleNamespace

from layersearch.search.racing import Ladder
from layersearch.search.scorer import fullest, rung_held, supersedes


def record(status: str = "ok", units: int = 1) -> SimpleNamespace:
    ok = status == "ok"
    return SimpleNamespace(ok=ok, cacheable=ok or status == "final",
                           units={f"s0-f{f}": {} for f in range(units)} if ok else {})


def test_the_fullest_success_counts_and_a_transient_failure_never_shadows_it():
    one, three, oom = record(units=1), record(units=3), record("transient")
    assert fullest([]) is None
    assert fullest([one, three]) is three and fullest([three, one]) is three
    assert fullest([oom, one]) is one
    assert fullest([oom]) is oom  # nothing proven: the failure is all there is


def test_a_final_failure_counts_over_any_success():
    final = record("final")
    assert fullest([record(units=3), final]) is final


def test_a_new_record_replaces_the_held_one_only_when_it_founds_more():
    one, three = record(units=1), record(units=3)
    assert supersedes(one, None) and supersedes(three, one) and supersedes(one, record(units=1))
    assert not supersedes(one, three)
    assert supersedes(one, record("transient"))  # anything over a failure
    assert not supersedes(record("transient"), one)
    assert supersedes(record("final"), three)


def test_rung_held_counts_a_final_failure_as_the_top_and_a_transient_one_as_nothing():
    ladder = Ladder([0], [0, 1, 2], seeds=[1, 3])
    assert rung_held(None, ladder) == -1
    assert rung_held(record("transient"), ladder) == -1
    assert rung_held(record("final"), ladder) == ladder.top == 1
    assert rung_held(record(units=1), ladder) == 0 and rung_held(record(units=3), ladder) == 1
    assert rung_held(SimpleNamespace(ok=True, cacheable=True, units={}), ladder) == ladder.top  # a unit-less double


def test_the_pure_modules_need_neither_ray_nor_mlflow():
    import subprocess
    import sys

    code = ("import sys\n"
            "import layersearch.search.selection, layersearch.search.scorer, layersearch.search.checkpoint\n"
            "import layersearch.search.strategies, layersearch.search.ga, layersearch.search.progress\n"
            "assert not {'ray', 'mlflow'} & set(sys.modules), {'ray', 'mlflow'} & set(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
