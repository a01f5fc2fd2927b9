"""The search's ETA: remaining work priced at measured seconds, scaled by the real wall clock."""

from __future__ import annotations

import time

import pytest

from layersearch.fitness import Evaluation
from layersearch.search.progress import Progress, Work, duration


def finished(distill_s: float, unit_s: float, units: int) -> Evaluation:
    ev = Evaluation([2, 4, 6], 6, "spec")
    ev.units = {f"s0-f{f}": {"slice_seed": 0, "finetune_seed": f, "tasks": {
        "sst2": {"seconds": unit_s / 2}, "mrpc": {"seconds": unit_s / 2}}} for f in range(units)}
    ev.timings = {"distill_s": distill_s}
    return ev


@pytest.mark.parametrize("evaluators", [1, 2])
def test_eta_prices_what_is_left_at_measured_seconds(evaluators):
    p = Progress()
    assert p.eta() is None  # nothing finished: no estimate rather than a guess
    p.queue(2, Work(2, 3))  # two jobs: one new candidate (1 slice, 1 seed), one promotion (1 slice, 2 seeds)
    p.started_job()
    p.started_job()
    p.future = Work(4, 8)  # what the plan expects after this batch
    p.finished_job(Work(1, 1), finished(distill_s=20.0, unit_s=10.0, units=1))
    # 30 priced seconds took 30 s on one evaluator, 15 s on two running side by side.
    p.first_dispatch = time.perf_counter() - 30.0 / evaluators
    left = Work(1, 2) + Work(4, 8)  # the promotion still running, then the plan
    assert p.outstanding == Work(1, 2)
    expected = (left.distills * 20 + left.units * 10) / evaluators
    assert p.eta() == pytest.approx(expected, rel=0.02)
    p.finished_job(Work(1, 2), finished(distill_s=20.0, unit_s=10.0, units=2))
    p.future = Work()
    assert p.eta() == pytest.approx(0.0, abs=1e-6) and p.outstanding == Work()


def test_best_so_far_prefers_the_better_founded_score():
    p = Progress()
    p.offer_best([1, 2, 6], 0.40, 0.2, 0.6, seeds=1)
    p.offer_best([2, 4, 6], 0.30, 0.25, 0.35, seeds=3)  # more seeds wins over a higher one-seed mean
    assert p.best_genes == [2, 4, 6]
    p.offer_best([3, 5, 6], 0.50, 0.1, 0.9, seeds=1)
    assert p.best_genes == [2, 4, 6]
    p.offer_best([2, 3, 6], 0.35, 0.3, 0.4, seeds=3)
    assert p.best_genes == [2, 3, 6] and p.best_seeds == 3


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (None, 42, 125, 7300)] == ["-", "42s", "2m05s", "2h01m"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_job_past_twice_its_expected_time_is_named_in_the_status_line(monkeypatch):
    from layersearch.cli import search as cli_search
    from layersearch.search.progress import FIRST_RESULT_PATIENCE

    clock = FakeClock()
    p = Progress(clock=clock, started=clock.now)
    display = cli_search.SearchDisplay(live=False)
    printed = []
    monkeypatch.setattr(cli_search.console, "print", lambda text, **_: printed.append(text))

    p.queue(1, Work(1, 1))
    p.started_job("a", [2, 4, 6], Work(1, 1))
    clock.now += FIRST_RESULT_PATIENCE - 1
    assert p.stall() is None  # nothing finished yet, and not long enough to worry
    clock.now += 2
    assert "no result from [2, 4, 6] after 10m01s, none has finished yet" in p.stall()

    # Once a job has finished, a job's expected seconds are its work at the measured rates.
    p.finished_job(Work(1, 1), finished(distill_s=20.0, unit_s=10.0, units=1), key="a")
    assert p.stall() is None and p.in_flight == {}
    p.queue(1, Work(1, 2))
    p.started_job("b", [1, 4, 6], Work(1, 2))  # expected 20 + 2 x 10 = 40 s
    clock.now += 80
    display("waiting", p, {})
    assert p.stalled() is None and printed == []  # at twice the expected time: still on time
    clock.now += 1
    display("waiting", p, {})
    assert len(printed) == 1 and "waiting: no result from [1, 4, 6] after 1m21s, expected ~40s" in printed[0]
    assert display.status(p).endswith(p.stall())
    clock.now += 60  # a log hears again only when the wait has doubled
    display("waiting", p, {})
    assert len(printed) == 1
    clock.now += 30
    display("waiting", p, {})
    assert len(printed) == 2 and "after 2m51s" in printed[1]
    p.requeued_job("b")  # a lost worker's job leaves the running set
    assert p.stall() is None


def test_rungs_name_their_units():
    from layersearch.search.progress import unit_word

    assert unit_word([(0, 0), (1, 0), (2, 0)]) == "slices"  # agreement, probe: one unit per slice
    assert unit_word([(0, 0), (0, 1), (0, 2)]) == "seeds"  # fine-tune seeds on one slice
    assert unit_word([(0, 0), (0, 1), (1, 0), (1, 1)]) == "units"
    assert unit_word([(0, 0)]) == "unit"
    p = Progress(rungs=2, generations=2, rung_seeds=3, unit_word="slices")
    assert p.where() == "gen 1/2 rung 1/2 (3 slices)"
