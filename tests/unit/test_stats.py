"""Statistics on synthetic data whose true fitness is known in closed form.

The simulation: balanced binary labels; each dev example has a difficulty
d ~ N(0, 1); each unit (one distillation run x one fine-tune seed) trains a
student of skill a, which answers an example correctly with probability
Phi(a - d). Errors are symmetric and classes balanced, so a student's
population Matthews correlation is 1 - 2 P(error) = 2 Phi(a / sqrt 2) - 1,
and over a ~ N(mu, tau^2) the true fitness is 2 Phi(mu / sqrt(2 + tau^2)) - 1.
In a paired comparison the two systems share each unit's seed effect (the
same slice and fine-tune seed luck), as the README's pairing assumes.

Which check catches which wrong formula in ``fitness/stats.py`` (each was
applied by hand and seen to fail the named test; the note of issue 23 lists
the runs):

- dev-set term dropped (``dev_var = 0``):
  test_dev_term_is_the_noise_units_of_different_runs_share;
- dev-set term double-counted (``dev_var`` = the whole bootstrap variance of
  the mean, each unit's own dev noise counted again beside the seed spread):
  test_dev_term_is_the_noise_units_of_different_runs_share;
- no floor (``total = seed + dev`` only):
  test_equal_scores_with_different_errors_are_not_exact;
- independent instead of shared seed effects (the paired difference not
  paired by unit): test_shared_seed_effects_cancel_in_a_paired_difference and
  test_a_clear_difference_is_better_and_the_reverse_worse;
- an uncorrected family (raw p instead of Holm):
  test_a_family_is_holm_corrected;
- one distillation run called better (the run spread never measured):
  test_one_distillation_run_gives_no_verdict;
- units pooled across distillation runs (run spread ignored):
  test_interval_covers_the_true_fitness_with_distillation_runs and
  test_unbalanced_runs_weight_their_means_as_the_mean_does.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from layersearch.fitness.stats import (
    NO_VERDICT,
    Estimate,
    family_verdicts,
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


def fitness_runs(rng, mu, tau, units, repeats, sizes=TASKS):
    """(estimate, truth) of ``repeats`` experiments, each on a fresh dev set and fresh students."""
    target = truth(mu, tau)
    out = []
    for _ in range(repeats):
        labels, difficulty = dev_set(rng, sizes)
        preds = students(rng, labels, difficulty, rng.normal(mu, tau, units))
        out.append(fitness_estimate(preds, labels, reps=300))
    return out, target


def paired_runs(rng, gap, units, repeats, shared=0.4, own=0.1, mu=0.8, groups=None, sizes=TASKS):
    """Paired differences of a system ``gap`` better in skill, sharing each unit's seed effect."""
    out = []
    for _ in range(repeats):
        labels, difficulty = dev_set(rng, sizes)
        luck = rng.normal(0, shared, units)  # the unit's seed effect, the same for both systems
        ref = students(rng, labels, difficulty, mu + luck + rng.normal(0, own, units))
        other = students(rng, labels, difficulty, mu + gap + luck + rng.normal(0, own, units))
        out.append(paired_difference(ref, other, labels, groups=groups, reps=300))
    return out


# The bootstrap's resamples are drawn once (seed 0) and reused across experiments: they are
# independent of the data, and drawing them is most of an estimate's time.


def covered(estimates, target) -> float:
    return float(np.mean([e.low <= target <= e.high for e in estimates]))


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
    (0.8, 0.5, 3),   # seed noise dominates, at the quickstart's top rung
    (0.8, 0.5, 2),   # the bert-base recipe's rung 1
    (0.5, 0.0, 1),   # one unit: the interval covers the dev set only, which is all there is
])
def test_interval_covers_the_true_fitness_95_percent_of_the_time(mu, tau, units):
    estimates, target = fitness_runs(np.random.default_rng(12), mu, tau, units, repeats=400)
    assert covered(estimates, target) >= 0.93
    if tau > 0:
        # Ignoring seed noise is caught: an interval from the dev set alone is far too narrow.
        dev_only = np.mean([abs(e.mean - target) <= 1.959964 * e.dev_se for e in estimates])
        assert dev_only < 0.85, dev_only


def test_dev_term_is_the_noise_units_of_different_runs_share():
    """A task-free readout's rows are real values, and a unit's score is their mean: then the
    dev-set term has a closed form, the mean covariance of rows of *different* runs over the
    examples, / n. Rows here share an example effect z (every unit), a run effect w (units of
    one run) and their own noise; units' means are set far apart, so the seed spread (not the
    floor) decides the total. The full bootstrap variance of the mean would count each unit's
    own noise and its run's twice (the spread of run means holds them already); dropping the
    term leaves none."""
    rng = np.random.default_rng(13)
    n = 1000
    z = rng.standard_normal(n)
    runs = [0, 0, 1, 1, 2, 2]
    w = rng.standard_normal((3, n))
    rows = np.stack([z + w[r] + rng.standard_normal(n) + 0.3 * i for i, r in enumerate(runs)])
    cov = np.cov(rows, bias=True) / n  # the bootstrap's covariance of unit means, exactly
    apart = np.array(runs)[:, None] != np.array(runs)[None, :]
    est = fitness_estimate({"a": rows}, {"a": np.zeros(n)}, groups=runs, reps=4000)
    assert est.seed_se**2 > cov.mean()  # the spread decides: the floor does not hide the dev term
    assert est.dev_se**2 == pytest.approx(cov[apart].mean(), rel=0.1)
    assert est.dev_se**2 < 0.8 * cov.mean()  # well below the whole bootstrap variance of the mean


def test_equal_scores_with_different_errors_are_not_exact():
    """Two units with one score but errors on different examples: the spread of scores is 0,
    yet the dev set is finite; the interval keeps its bootstrap width and df stays 1."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    # 40 errors in each class for both, on different examples: equal confusion matrices.
    zeros, ones = rng.permutation(np.flatnonzero(y == 0)), rng.permutation(np.flatnonzero(y == 1))
    a, b = y.copy(), y.copy()
    a[np.r_[zeros[:40], ones[:40]]] ^= 1
    b[np.r_[zeros[40:80], ones[40:80]]] ^= 1
    est = fitness_estimate({"a": np.stack([a, b])}, {"a": y})
    assert est.seed_se == 0.0 and est.df == 1.0
    alone = fitness_estimate({"a": a[None]}, {"a": y})  # one unit: the bootstrap of the dev set
    assert est.half_width > 0.5 * alone.half_width > 0
    assert est.p_value > 0


def test_interval_covers_the_true_fitness_with_distillation_runs():
    """Units nested in distillation runs (3 runs x 2 fine-tune seeds) with a run effect: the
    interval is built on the run means. Pooling the 6 units as if independent covers less."""
    rng = np.random.default_rng(8)
    target = truth(0.8, float(np.hypot(0.5, 0.1)))
    groups = [0, 0, 1, 1, 2, 2]
    hits, df = [], set()
    for _ in range(400):
        labels, difficulty = dev_set(rng)
        skills = np.repeat(rng.normal(0.8, 0.5, 3), 2) + rng.normal(0, 0.1, 6)
        est = fitness_estimate(students(rng, labels, difficulty, skills), labels, groups=groups, reps=300)
        hits.append(est.low <= target <= est.high)
        df.add(est.df)
    assert np.mean(hits) >= 0.93 and df == {2.0}


def test_unbalanced_runs_weight_their_means_as_the_mean_does():
    """Runs of 3 units and 1 unit: the mean is the units' mean (3/4 and 1/4 of the runs'), and
    its variance weights the run means the same way: var(run means) x (9 + 1) / 16."""
    values = np.array([0.2, 0.2, 0.2, 0.6])
    preds = {"a": np.zeros((4, 10), dtype=np.float64) + values[:, None]}  # real-valued readout rows
    est = fitness_estimate(preds, {"a": np.zeros(10)}, groups=[0, 0, 0, 1])
    assert est.mean == pytest.approx(0.3)
    assert est.seed_se == pytest.approx(np.sqrt(np.var([0.2, 0.6], ddof=1) * 10 / 16))
    assert est.df == 1.0 and est.distillation_runs == 2


def test_paired_interval_covers_the_true_difference():
    rng = np.random.default_rng(31)
    for units in (2, 3):
        tau = float(np.hypot(0.4, 0.1))
        estimates = paired_runs(rng, 0.2, units, repeats=300)
        assert covered(estimates, truth(1.0, tau) - truth(0.8, tau)) >= 0.93, units


def test_shared_seed_effects_cancel_in_a_paired_difference():
    """Seed luck the two systems share cancels unit by unit: a true gap of 0.3 in skill under
    large shared luck is called better nearly every time; unpaired, it would drown."""
    estimates = paired_runs(np.random.default_rng(9), 0.3, 5, repeats=40, shared=0.8, own=0.05)
    words = [w for _, w in family_verdicts(estimates[:1])] + [verdict(e, e.p_value) for e in estimates[1:]]
    assert words.count("better") >= 36, words


def test_no_true_difference_is_indistinguishable_at_least_93_percent():
    estimates = paired_runs(np.random.default_rng(11), 0.0, 5, repeats=300)
    words = [verdict(e, e.p_value) for e in estimates]
    assert words.count("indistinguishable") / len(words) >= 0.93


def test_a_clear_difference_is_better_and_the_reverse_worse():
    rng = np.random.default_rng(5)
    better = [verdict(e, e.p_value) for e in paired_runs(rng, 0.4, 5, repeats=20, shared=0.3)]
    worse = [verdict(e, e.p_value) for e in paired_runs(rng, -0.4, 5, repeats=20, shared=0.3)]
    assert better.count("better") >= 18 and worse.count("worse") >= 18, (better, worse)


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


def test_one_distillation_run_gives_no_verdict():
    """Three fine-tune seeds of one distilled student each: a clear difference between the two
    students, but one run per mapping, so it is about these students and gets no verdict.
    The same difference from two runs per mapping is called."""
    rng = np.random.default_rng(7)
    labels, difficulty = dev_set(rng)
    ref = students(rng, labels, difficulty, [0.5] * 4)
    other = students(rng, labels, difficulty, [1.5] * 4)
    one = paired_difference(ref, other, labels, groups=[0, 0, 0, 0])
    assert one.low > 0 and not one.about_the_mapping and verdict(one, one.p_value) == NO_VERDICT
    two = paired_difference(ref, other, labels, groups=[0, 0, 1, 1])
    assert two.about_the_mapping and verdict(two, two.p_value) == "better"
    lone = paired_difference({t: p[:1] for t, p in ref.items()}, {t: p[:1] for t, p in other.items()}, labels)
    assert lone.p_value < 1e-6 and verdict(lone, lone.p_value) == NO_VERDICT


def test_unpaired_shapes_are_refused():
    labels = {"a": np.zeros(10, dtype=int)}
    with pytest.raises(ValueError, match="not paired"):
        paired_difference({"a": np.zeros((2, 10), int)}, {"a": np.zeros((3, 10), int)}, labels)


def test_a_family_is_holm_corrected():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])

    def est(p, runs=3):
        return Estimate(0.1, 0.01, 0.19, 6, 0.02, 0.01, 2, p, runs)

    # Raw, three of four would be "better"; Holm over the family keeps one.
    family = [est(0.01), est(0.02), est(0.03), est(0.5)]
    assert [w for _, w in family_verdicts(family)] == ["better", "indistinguishable", "indistinguishable",
                                                       "indistinguishable"]
    assert verdict(est(0.02), 0.02) == "better" and verdict(est(0.02, runs=1), 0.02) == NO_VERDICT
