"""The fidelity ladder's statistics (fitness/ladder_stats.py) on cases worked out by hand."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from layersearch.fitness import ladder_stats as ls


def test_tau_and_its_exact_permutation_p_by_hand():
    # 6 mappings, 2 discordant pairs of 15: tau = (13 - 2) / 15 = +0.733.
    x, y = np.arange(6.0), np.array([1.0, 0.0, 2.0, 3.0, 5.0, 4.0])
    assert ls.kendall_tau(x, y) == pytest.approx(11 / 15)
    # Orders of 6 with at most 2 inversions: 1 + 5 + 14 (Mahonian numbers) = 20, and as many
    # with at least 13; two-sided p = 40 / 720.
    assert ls.permutation_p(x, y) == pytest.approx(40 / 720)
    assert ls.permutation_p(x, -y) == pytest.approx(40 / 720)  # tau -0.73: the same two-sided p
    assert ls.permutation_p(x, x) == pytest.approx(2 / 720)  # only the order itself and its reverse
    assert math.isnan(ls.kendall_tau(x, np.ones(6)))  # a constant fidelity ranks nothing
    rng = np.random.default_rng(0)  # ties included, tau-b as scipy defines it
    a, b = rng.integers(0, 4, 9).astype(float), rng.integers(0, 4, 9).astype(float)
    assert ls.kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic)


def test_monte_carlo_permutation_p_agrees_with_the_exact_one(monkeypatch):
    x, y = np.arange(6.0), np.array([1.0, 0.0, 2.0, 3.0, 5.0, 4.0])
    monkeypatch.setattr(ls, "EXACT_UP_TO", 5)
    p = ls.permutation_p(x, y, draws=4000, seed=1)
    assert abs(p - 40 / 720) < 0.015  # MC sd at 4000 draws is 0.0036
    assert ls.permutation_p(x, x, draws=200) >= 1 / 201  # never 0


def test_duplicated_mappings_are_pairs_tied_in_both_rankings():
    fid = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    truth = np.array([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    # Row 1 draws mappings [0, 0, 1, 2]: x = 1,1,2,3 and y = 1,1,3,2: concordant 4, discordant 1,
    # one pair tied in each ranking, so tau-b = 3 / sqrt(5 * 5) = 0.6. Row 2 draws one mapping
    # three times: no ranking, left out (and counted).
    mappings = np.array([[0, 0, 1, 2], [1, 1, 1, 1]])
    taus = ls.tau_draws(fid, truth, mappings)
    assert taus[0] == pytest.approx(0.6)
    assert math.isnan(taus[1])
    out = ls.tau_interval(fid, truth, mappings)
    assert out["undefined"] == 1 and out["tau_ci"] == pytest.approx((0.6, 0.6))
    assert out["tau"] == pytest.approx(1 / 3)


def test_resampling_the_mappings_widens_the_tau_interval():
    # No noise within a mapping: every bootstrap row is the measured one, so with the mappings held
    # fixed the interval is the point (+0.73); which 6 mappings were picked is what is uncertain.
    rng = np.random.default_rng(0)
    fid = np.tile(np.arange(6.0), (1001, 1))
    truth = np.tile(np.array([1.0, 0.0, 2.0, 3.0, 5.0, 4.0]), (1001, 1))
    fixed = ls.tau_interval(fid, truth, None)
    assert fixed["tau_ci"] == pytest.approx((11 / 15, 11 / 15))
    resampled = ls.tau_interval(fid, truth, ls.mapping_draws(6, 1000, rng))
    lo, hi = resampled["tau_ci"]
    assert lo < 0.4 and hi == pytest.approx(1.0)  # far below +0.73; with noise too, about [0.00, 1.00]
    assert resampled["p"] == pytest.approx(40 / 720)


def test_run_unit_draws_resample_runs_then_units_inside_them():
    rng = np.random.default_rng(0)
    runs = [7, 7, 7, 9, 9, 9]
    draws = ls.run_unit_draws(runs, 2000, rng)
    assert draws.shape == (2000, 6)
    # Each block of 3 comes from one run.
    blocks = np.array(runs)[draws].reshape(2000, 2, 3)
    assert (blocks == blocks[:, :, :1]).all()
    # Both runs drawn twice in about half the rows (1/4 + 1/4): a run-level resample.
    same = (blocks[:, 0, 0] == blocks[:, 1, 0]).mean()
    assert 0.45 < same < 0.55
    # Run effects enter the interval: two runs far apart, units alike inside each.
    values = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    means = values[draws].mean(axis=1)
    assert np.percentile(means, 97.5) - np.percentile(means, 2.5) == pytest.approx(1.0)
    units_only = values[rng.integers(0, 6, (2000, 6))].mean(axis=1)
    assert np.ptp(np.percentile(units_only, [2.5, 97.5])) < 1.0
    with pytest.raises(ValueError, match="same number of units"):
        ls.run_unit_draws([0, 0, 1], 4, rng)


def test_gain_is_mean_fitness_minus_the_init():
    fid = np.array([[0.5, 0.7], [0.4, 0.8], [0.6, 0.6]])
    init = np.array([0.4, 0.5, 0.3])
    out = ls.gain(fid, init, None)
    assert out["gain"] == pytest.approx(0.2)
    assert out["gain_ci"][0] == pytest.approx(0.1 + 0.025 * 0.2)  # percentiles of {0.1, 0.3}
    # Mappings resampled: row 1 draws mapping 1 twice -> 0.8 - 0.5.
    assert ls.gain(fid, init, np.array([[1, 1], [0, 0]]))["gain_ci"] == pytest.approx(
        (np.percentile([0.3, 0.3], 2.5), 0.3))


def test_spread_sd_and_range():
    truth = np.array([[0.50, 0.52, 0.56], [0.50, 0.50, 0.60], [0.51, 0.52, 0.53]])
    out = ls.spread(truth)
    assert out["sd"] == pytest.approx(np.std([0.50, 0.52, 0.56], ddof=1))
    assert out["range"] == pytest.approx(0.06)
    assert out["range_ci"][0] == pytest.approx(0.02 + 0.025 * 0.08)


def test_compute_ratio_counts_only_the_kept_tasks():
    # 100 s distillation, fine-tunes of 20 s (kept) and 50 s (no signal: not counted).
    truth = ls.truth_seconds(100.0, {"sst2": 20.0, "cola": 50.0}, ["sst2"])
    assert truth == pytest.approx(120.0)
    assert ls.compute_ratio(truth, 10.0) == pytest.approx(12.0)
    assert math.isnan(ls.compute_ratio(truth, 0.0))
    with pytest.raises(ValueError, match="mrpc"):
        ls.truth_seconds(100.0, {"sst2": 20.0}, ["sst2", "mrpc"])


def test_cpu_compute_ratio_counts_each_run_once_and_scales_a_fidelity_per_slice(monkeypatch):
    import sys

    from layersearch.fitness.record import Evaluation, unit_key

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    sys.modules.pop("ladder_lines", None)
    import ladder_lines

    def truth(distill, finetune):
        ev = Evaluation([3, 6], 6, "k")
        for s in (0, 1):
            for f in (0, 1):
                ev.units[unit_key(s, f)] = {"slice_seed": s, "finetune_seed": f, "distill_cpu_s": distill[s],
                                            "finetune_cpu_s": finetune, "tasks": {}}
        return ev

    units = [unit_key(s, f) for s in (0, 1) for f in (0, 1)]
    # Two runs of 100 and 120 CPU s (each shared by its 2 units), 4 fine-tunes of 5 s: 240 s.
    assert ladder_lines.truth_cpu_seconds(truth([100.0, 120.0], 5.0), units) == pytest.approx(240.0)

    def fidelity(cpu, cpu_slices):
        ev = Evaluation([3, 6], 6, "p")
        for s in (0, 1, 2):
            ev.units[unit_key(s, 0)] = {"slice_seed": s, "finetune_seed": 0, "tasks": {}}
        ev.timings.update(cpu_s=cpu, cpu_slices=cpu_slices)
        return ev

    # 3 slices: one record paid 30 s for all 3, one 8 s for 1 (completed from a cache) = 24 s for 3;
    # the median of 30 and 24 is 27, and the ground truth's median of 240 and 200 is 220.
    fid = [fidelity(30.0, 3), fidelity(8.0, 1)]
    gts = [truth([100.0, 120.0], 5.0), truth([90.0, 90.0], 5.0)]
    assert ladder_lines.cpu_ratio(gts, units, fid) == pytest.approx(220.0 / 27.0)
    # A ground-truth unit without CPU seconds: no CPU ratio (the report falls back to wall seconds).
    del gts[1].units[units[0]]["distill_cpu_s"]
    assert ladder_lines.cpu_ratio(gts, units, fid) is None
    assert ladder_lines.cpu_ratio([gts[0]], units, [Evaluation([3, 6], 6, "p")]) is None


def test_cpu_spent_counts_each_distillation_run_once(monkeypatch):
    import sys

    from layersearch.fitness.record import Evaluation, unit_key

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    sys.modules.pop("ladder_lines", None)
    import ladder_lines

    ev = Evaluation([3, 6], 6, "k")
    for s, run_cpu in ((0, 1800.0), (1, 3600.0)):
        for f in (0, 1):  # two fine-tunes share each run's distillation
            ev.units[unit_key(s, f)] = {"slice_seed": s, "distill_cpu_s": run_cpu, "finetune_cpu_s": 360.0}
    ev.units[unit_key(1, 0)]["distill_cpu_priced_steps"] = 75  # run 1 was resumed without its clock
    ev.units[unit_key(1, 1)]["distill_cpu_priced_steps"] = 75
    half = Evaluation([3, 6], 6, "h")
    half.units[unit_key(0, 0)] = {"slice_seed": 0, "distill_cpu_s": 900.0, "finetune_cpu_s": 720.0}
    fid = Evaluation([3, 6], 6, "p", timings={"cpu_s": 1800.0})
    out = ladder_lines.cpu_spent([ev], [half], [fid, Evaluation([3, 6], 6, "p")])
    assert out == pytest.approx({"truth": (1800 + 3600 + 4 * 360) / 3600, "half": 0.2, "fidelities": 0.5,
                                 "priced_runs": 1})
    assert ladder_lines.cpu_spent([Evaluation([3, 6], 6, "k")], [], []) is None


def test_a_monte_carlo_permutation_p_prints_as_a_bound_never_as_zero(monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    sys.modules.pop("ladder_lines", None)
    import ladder_lines

    smallest = ls.permutation_p(np.arange(12.0), np.arange(12.0))  # every random order is worse
    assert smallest == pytest.approx(1 / (ls.PERMUTATIONS + 1))
    assert ladder_lines.pfmt(smallest) == "< 0.001"
    assert (ladder_lines.pfmt(0.056), ladder_lines.pfmt(0.001), ladder_lines.pfmt(float("nan"))) == ("0.056", "0.001", "n/a")


def test_a_fidelity_whose_mappings_mostly_tie_says_what_its_tau_rests_on(monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    sys.modules.pop("ladder_lines", None)
    import ladder_lines

    # 11 of 12 students at the constant predictor: one mapping makes the whole ranking.
    note = ladder_lines.tie_note([0.0027] + [0.0] * 11, 301, 1000)
    assert "11 of 12 mappings score the same, 0.0000" in note and "other 1" in note and "301 of 1000" in note
    assert ladder_lines.tie_note([0.1] * 4, 0, 1000) == " (every mapping scores the same: no ranking)"
    assert ladder_lines.tie_note([0.1, 0.2, 0.3, 0.3, 0.4], 0, 1000) == ""  # a pair tied: an ordinary ranking
    assert "2 of 4" in ladder_lines.tie_note([0.1, 0.2, 0.3, 0.3], 5, 1000)  # half tied: said
