"""Statistics on synthetic data whose true fitness is known in closed form.

The simulation: balanced binary labels; each dev example has a difficulty
d ~ N(0, 1); each unit (fine-tune seed) trains a student of skill
a ~ N(mu, tau^2), which answers an example correctly with probability
Phi(a - d). Errors are symmetric and classes balanced, so a student's
population Matthews correlation is 1 - 2 P(error) = 2 Phi(a / sqrt 2) - 1,
and over seeds the true fitness is 2 Phi(mu / sqrt(2 + tau^2)) - 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from layersearch.fitness.stats import (
    Estimate,
    fitness_estimate,
    holm,
    matthews,
    paired_difference,
    verdict,
)

TASKS = {"a": 300, "b": 500}


def truth(mu: float, tau: float) -> float:
    return 2 * norm.cdf(mu / np.sqrt(2 + tau**2)) - 1


def dev_set(rng, sizes=TASKS):
    return ({t: rng.integers(0, 2, n) for t, n in sizes.items()},
            {t: rng.standard_normal(n) for t, n in sizes.items()})


def students(rng, labels, difficulty, skills):
    """Predictions [U, n] per task for students of the given skills."""
    out = {}
    for t, y in labels.items():
        p_right = norm.cdf(np.asarray(skills)[:, None] - difficulty[t][None, :])
        right = rng.random(p_right.shape) < p_right
        out[t] = np.where(right, y[None, :], 1 - y[None, :])
    return out


def coverage(rng, mu, tau, units, repeats, sizes=TASKS):
    hits, wrong_hits = 0, 0
    target = truth(mu, tau)
    for _ in range(repeats):
        labels, difficulty = dev_set(rng, sizes)
        preds = students(rng, labels, difficulty, rng.normal(mu, tau, units))
        est = fitness_estimate(preds, labels, reps=300, seed=int(rng.integers(1 << 30)))
        hits += est.low <= target <= est.high
        # What an interval from the dev set alone would say (a plausible mistake).
        z = 1.959964 * est.dev_se
        wrong_hits += est.mean - z <= target <= est.mean + z
    return hits / repeats, wrong_hits / repeats


def test_constant_predictor_scores_zero_whatever_the_class():
    rng = np.random.default_rng(0)
    for k in (2, 3):
        labels = rng.integers(0, k, 200)
        for c in range(k):
            assert matthews(np.full(200, c), labels, k) == 0.0
    y = np.array([0, 1, 1, 0, 1])
    assert matthews(y, y) == pytest.approx(1.0)
    assert matthews(1 - y, y) == pytest.approx(-1.0)


def test_matthews_matches_scikit_learn_and_its_bootstrap_rows():
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(1)
    for k in (2, 3):
        y, p = rng.integers(0, k, 150), rng.integers(0, k, 150)
        assert matthews(p, y, k) == pytest.approx(matthews_corrcoef(y, p))
        counts = rng.multinomial(150, np.full(150, 1 / 150), size=4)
        rows = matthews(p, y, k, counts)
        for c, value in zip(counts, rows, strict=True):
            idx = np.repeat(np.arange(150), c)
            assert value == pytest.approx(matthews_corrcoef(y[idx], p[idx]))


@pytest.mark.parametrize("mu,tau,units", [
    (0.8, 0.5, 5),   # seed noise dominates (like the quickstart's fine-tune seeds)
    (0.8, 0.0, 3),   # the dev set alone
    (0.5, 0.0, 1),   # one seed: the interval covers the dev set only, which is all there is
])
def test_interval_covers_the_true_fitness_95_percent_of_the_time(mu, tau, units):
    cover, dev_only = coverage(np.random.default_rng(12), mu, tau, units, repeats=400)
    # Both ways wrong fail: too narrow, and too wide (an interval that counted each
    # unit's own dev-example noise twice covered 0.98 in the second case).
    assert 0.92 <= cover <= 0.975, cover
    if tau > 0:
        # The test has teeth: ignoring seed noise is caught.
        assert dev_only < 0.85, dev_only


def test_nested_slices_widen_the_interval_when_slices_differ():
    rng = np.random.default_rng(3)
    labels, difficulty = dev_set(rng)
    slice_effect = [0.6, -0.6]
    skills = [0.8 + slice_effect[s] + rng.normal(0, 0.05) for s in (0, 1) for _ in range(4)]
    preds = students(rng, labels, difficulty, skills)
    groups = [s for s in (0, 1) for _ in range(4)]
    nested = fitness_estimate(preds, labels, groups=groups)
    flat = fitness_estimate(preds, labels)
    assert nested.df == pytest.approx(1.0, rel=0.2)  # two slice means carry the evidence
    assert nested.half_width > 3 * flat.half_width


@pytest.mark.parametrize("tau", [0.0, 0.4])
def test_paired_interval_covers_the_true_difference(tau):
    rng = np.random.default_rng(31)
    target = truth(1.0, tau) - truth(0.8, tau)
    hits = 0
    for _ in range(300):
        labels, difficulty = dev_set(rng)
        ref = students(rng, labels, difficulty, rng.normal(0.8, tau, 5))
        other = students(rng, labels, difficulty, rng.normal(1.0, tau, 5))
        est = paired_difference(ref, other, labels, reps=300, seed=int(rng.integers(1 << 30)))
        hits += est.low <= target <= est.high
    assert 0.92 <= hits / 300 <= 0.975, hits / 300


def comparisons(rng, gap, repeats, units=5, tau=0.4):
    verdicts = []
    for _ in range(repeats):
        labels, difficulty = dev_set(rng)
        ref = students(rng, labels, difficulty, rng.normal(0.8, tau, units))
        other = students(rng, labels, difficulty, rng.normal(0.8 + gap, tau, units))
        est = paired_difference(ref, other, labels, reps=300, seed=int(rng.integers(1 << 30)))
        verdicts.append(verdict(est, est.p_value))
    return verdicts


def test_no_true_difference_is_indistinguishable_at_least_90_percent():
    verdicts = comparisons(np.random.default_rng(11), gap=0.0, repeats=300)
    assert verdicts.count("indistinguishable") / len(verdicts) >= 0.90


def test_a_clear_difference_is_better_and_the_reverse_worse():
    rng = np.random.default_rng(5)
    assert comparisons(rng, gap=1.0, repeats=20, tau=0.2).count("better") >= 19
    assert comparisons(rng, gap=-1.0, repeats=20, tau=0.2).count("worse") >= 19


def test_pairing_sees_what_unpaired_intervals_miss():
    """Shared dev examples cancel in a paired difference: its interval is narrower."""
    rng = np.random.default_rng(6)
    labels, difficulty = dev_set(rng, {"a": 400})
    ref = students(rng, labels, difficulty, [0.8] * 6)
    other = students(rng, labels, difficulty, [1.0] * 6)
    paired = paired_difference(ref, other, labels)
    a, b = fitness_estimate(ref, labels), fitness_estimate(other, labels)
    unpaired_se = np.hypot(a.dev_se, b.dev_se)
    assert paired.dev_se < 0.8 * unpaired_se


def test_one_unit_is_never_called_better():
    rng = np.random.default_rng(7)
    labels, difficulty = dev_set(rng)
    ref = students(rng, labels, difficulty, [0.0])
    other = students(rng, labels, difficulty, [2.0])
    est = paired_difference(ref, other, labels)
    assert est.mean > 0.3 and est.p_value < 1e-6 and not est.seed_noise_measured
    assert verdict(est, est.p_value) == "indistinguishable"


def test_unpaired_shapes_are_refused():
    labels = {"a": np.zeros(10, dtype=int)}
    with pytest.raises(ValueError, match="not paired"):
        paired_difference({"a": np.zeros((2, 10), int)}, {"a": np.zeros((3, 10), int)}, labels)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    est = Estimate(0.1, 0.01, 0.19, 5, 0.02, 0.01, 4, 0.02)
    assert verdict(est, 0.02) == "better" and verdict(est, 0.06) == "indistinguishable"
