"""Statistics of fitness: chance-corrected scores, intervals, paired tests, verdicts.

Pure numpy/scipy on plain arrays, so it is tested on synthetic data where the
true value is known. The data of one system (a mapping under one proxy spec):

- ``labels[t]``: the dev labels of task t, shape [n_t];
- ``preds[t]``: its dev predictions, shape [U, n_t], one row per *unit* (one
  proxy slice x one fine-tune seed), rows in the same unit order for every task.

A unit's fitness is the weighted mean over tasks of its chance-corrected score
(Matthews correlation). The fitness is the mean over units; its uncertainty
has two sources that this module adds up:

1. seed noise: which students the distillation runs and fine-tune seeds
   happened to train. Units that share a proxy slice (one distillation run)
   are nested in it. With two or more runs, the variance of the mean comes
   from the spread of the run means (weighted as the mean weights them), with
   runs - 1 degrees of freedom: the spread between distillation runs is in
   every interval, and a verdict is about the mapping. With one run it comes
   from the units' spread, and is about *this student*: no verdict is given.
2. the finite dev set: which examples the task's dev split happened to hold.
   Estimated by a bootstrap over dev examples, the same resample for every
   unit (and, in a comparison, for both systems: that is the pairing). The
   spread of the run means already holds what each run's units do not share
   with other runs, so only the part every run shares is added: the mean
   bootstrap covariance between units of different runs (with one run, of
   different units).

The two variances add, and the sum is never below the bootstrap variance of
the mean (the dev-set noise alone, a floor no spread estimate may undercut:
two units with equal scores and errors on different examples are not exact).
The interval and the test use Student's t with the seed estimate's degrees of
freedom (a spread from 2 runs has 1, however small it happened to be). With
one unit the seed noise is not measured: the interval covers the dev set only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
BOOTSTRAP = 1000
SLICE_POOLING_LEVEL = 0.75
NO_VERDICT = "no verdict"  # one distillation run: the difference is about this student, not the mapping
# "equivalent": the interval lies inside the margin (±δ), so the difference, whatever its sign, is
# smaller than any worth having; better/worse need it to lie beyond.
VERDICTS = ("better", "worse", "equivalent", "indistinguishable", NO_VERDICT)


# --- chance-corrected scores ---------------------------------------------------

def matthews(preds: np.ndarray, labels: np.ndarray, num_labels: int | None = None,
             counts: np.ndarray | None = None) -> np.ndarray | float:
    """Matthews correlation (the multi-class R_K form); 0 for any constant predictor.

    ``counts`` [B, n] are example multiplicities (a bootstrap resample each row);
    then one value per row comes back. Undefined cases (one class predicted or
    present) score 0, as scikit-learn does.
    """
    preds = np.asarray(preds, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    k = int(num_labels or max(preds.max(initial=0), labels.max(initial=0)) + 1)
    # float32 counts are exact below 2**24 examples; the arithmetic after is float64.
    onehot = np.zeros((labels.shape[0], k * k), dtype=np.float32)
    onehot[np.arange(labels.shape[0]), labels * k + preds] = 1.0
    single = counts is None
    w = np.ones((1, labels.shape[0]), dtype=np.float32) if single else np.asarray(counts, dtype=np.float32)
    confusion = (w @ onehot).astype(np.float64).reshape(-1, k, k)  # [B, true, predicted]
    s = confusion.sum(axis=(1, 2))
    c = np.trace(confusion, axis1=1, axis2=2)
    t = confusion.sum(axis=2)
    p = confusion.sum(axis=1)
    cov_tp = c * s - (t * p).sum(1)
    cov_pp = s**2 - (p * p).sum(1)
    cov_tt = s**2 - (t * t).sum(1)
    denom = np.sqrt(cov_pp * cov_tt)
    out = np.divide(cov_tp, denom, out=np.zeros_like(cov_tp), where=denom > 0)
    return float(out[0]) if single else out


def task_score(row: np.ndarray, labels: np.ndarray, num_labels: int | None = None,
               counts: np.ndarray | None = None) -> np.ndarray | float:
    """One unit's score of one task: Matthews correlation of its predicted labels, or, for a
    task-free readout whose row holds a real value per held-out example (``agreement``), the
    mean of those values (weighted by ``counts``, one value per resample row)."""
    row = np.asarray(row)
    if np.issubdtype(row.dtype, np.floating):
        if counts is None:
            return float(row.mean())
        w = np.asarray(counts, dtype=np.float64)
        return w @ row.astype(np.float64) / w.sum(axis=1)
    return matthews(row, labels, num_labels, counts)


# --- estimates with intervals ----------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A mean over units with a 95% interval; for a comparison, a paired difference."""

    mean: float
    low: float
    high: float
    units: int
    seed_se: float  # standard error from seed noise (nan when not measured)
    dev_se: float  # standard error from the finite dev set
    df: float  # degrees of freedom of the t interval (inf: dev set only)
    p_value: float  # two-sided, against a true value of 0
    runs: int | None = None  # distillation runs behind the units (None: each unit its own)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def seed_noise_measured(self) -> bool:
        return self.units >= 2

    @property
    def distillation_runs(self) -> int:
        return self.units if self.runs is None else self.runs

    @property
    def about_the_mapping(self) -> bool:
        """Two or more distillation runs: the spread between them is measured, so the
        interval is about the mapping; with one it is about this one student."""
        return self.distillation_runs >= 2

    @property
    def se(self) -> float:
        """The standard error the interval was built from (its half-width over the t quantile)."""
        dist = sps.t(self.df) if math.isfinite(self.df) else sps.norm()
        return self.half_width / float(dist.ppf(0.5 + LEVEL / 2))

    def p_beyond(self, margin: float) -> float:
        """p of "the difference lies beyond ±``margin`` on the estimate's side": below 0.05 exactly
        where the 95% interval does. At margin 0 it is the test against no difference."""
        if margin == 0:
            return self.p_value
        return self._p(abs(self.mean) - margin)

    def p_inside(self, margin: float) -> float:
        """p of "the difference lies inside ±``margin``" (two one-sided tests): below 0.05 exactly
        where the 95% interval lies inside ±margin."""
        return self._p(margin - abs(self.mean))

    def _p(self, distance: float) -> float:
        se = self.se
        if not se > 0:  # a point interval: the claim holds or it does not
            return 0.0 if distance > 0 else 1.0
        dist = sps.t(self.df) if math.isfinite(self.df) else sps.norm()
        return min(1.0, float(2 * dist.sf(distance / se)))

    def to_dict(self) -> dict:
        """Plain JSON: an unmeasured or unbounded value is null."""
        out = {}
        for k in ("mean", "low", "high", "units", "seed_se", "dev_se", "df", "p_value"):
            v = getattr(self, k)
            out[k] = v if isinstance(v, int) or math.isfinite(v) else None
        out["runs"] = self.distillation_runs
        return out


def _run_keys(groups: Sequence | None, u: int) -> np.ndarray:
    """Each unit's distillation run as an index; ``None``: every unit is a run of its own."""
    if groups is None:
        return np.arange(u)
    keys = {k: i for i, k in enumerate(sorted(set(groups)))}
    return np.array([keys[g] for g in groups])


def _seed_variance(unit_values: np.ndarray, runs: np.ndarray) -> tuple[float, float]:
    """Variance of the mean of ``unit_values`` over seeds, and its degrees of freedom.

    With two or more distillation runs: the spread of the run means, each
    weighted by its share of units as the mean weights it (balanced: var / runs),
    on runs - 1 degrees of freedom. With one run: the units' spread, u - 1.
    """
    u = len(unit_values)
    k = int(runs.max()) + 1
    if k < 2:
        return float(np.var(unit_values, ddof=1)) / u, u - 1.0
    sizes = np.bincount(runs, minlength=k).astype(np.float64)
    means = np.bincount(runs, weights=unit_values, minlength=k) / sizes
    share = sizes / sizes.sum()
    return float(np.var(means, ddof=1)) * float((share**2).sum()), k - 1.0


def _bootstrap_counts(n: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    # float32 holds counts exactly and halves the memory of a large dev set's resamples.
    return rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _shared_counts(sizes: tuple[tuple[str, int], ...], reps: int, seed: int) -> dict[str, np.ndarray]:
    """Every task's resample counts for one seed: a pure function of the dev-set sizes, drawn
    once per process (a search summarises hundreds of records over the same dev sets).
    Read-only, so no caller can change what the next one gets."""
    rng = np.random.default_rng(seed)
    counts = {t: _bootstrap_counts(n, reps, rng) for t, n in sizes}
    for c in counts.values():
        c.flags.writeable = False
    return counts


def _estimate(unit_fn, labels: dict[str, np.ndarray], groups: Sequence | None,
              reps: int, seed: int, level: float) -> Estimate:
    """Mean of ``unit_fn(counts)`` over units, with seed and dev-set uncertainty.

    ``unit_fn(counts)`` returns [U] unit values for ``counts=None`` (the data as
    it is) and [B, U] for a dict of per-task bootstrap counts [B, n_t].
    """
    values = np.asarray(unit_fn(None), dtype=np.float64)
    u = len(values)
    mean = float(values.mean())
    runs = _run_keys(groups, u)
    counts = _shared_counts(tuple((t, len(y)) for t, y in sorted(labels.items())), reps, seed)
    boot = np.asarray(unit_fn(counts), dtype=np.float64)  # [B, U]
    floor = float(np.var(boot.mean(axis=1), ddof=1))  # the dev set's noise of the mean, all of it
    if u >= 2:
        seed_var, df = _seed_variance(values, runs)
        # Only the dev-set noise the runs share (with one run: the units); the rest is in the spread.
        cov = np.cov(boot, rowvar=False, ddof=1)
        apart = runs[:, None] != runs[None, :] if runs.max() > 0 else ~np.eye(u, dtype=bool)
        dev_var = max(0.0, float(cov[apart].mean()))
    else:
        seed_var, df, dev_var = 0.0, math.inf, floor  # one unit: the dev set is all that is measured
    total = max(seed_var + dev_var, floor)
    run_count = int(runs.max()) + 1
    seed_se = math.sqrt(seed_var) if u >= 2 else math.nan
    if total <= 0:  # every resample scores every unit the same: nothing to test against
        return Estimate(mean, mean, mean, u, seed_se, 0.0, df, 1.0, run_count)
    se = math.sqrt(total)
    dist = sps.t(df) if math.isfinite(df) else sps.norm()
    q = float(dist.ppf(0.5 + level / 2))
    p = float(2 * dist.sf(abs(mean) / se))
    return Estimate(mean, mean - q * se, mean + q * se, u, seed_se, math.sqrt(total - seed_var), df,
                    min(1.0, p), run_count)


def _unit_fitness(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray], weights: dict[str, float],
                  num_labels: dict[str, int], counts: dict[str, np.ndarray] | None) -> np.ndarray:
    total = sum(weights.values())
    out = None
    for t, w in weights.items():
        rows = np.atleast_2d(preds[t])
        if counts is None:
            scores = np.array([task_score(r, labels[t], num_labels[t]) for r in rows])  # [U]
        else:
            scores = np.stack([task_score(r, labels[t], num_labels[t], counts[t]) for r in rows], axis=1)
        out = w / total * scores if out is None else out + w / total * scores
    return out


def _num_labels(labels: dict[str, np.ndarray], *pred_sets) -> dict[str, int]:
    return {t: int(max([y.max(initial=0)] + [np.max(p[t]) for p in pred_sets
                                             if not np.issubdtype(np.asarray(p[t]).dtype, np.floating)])) + 1
            for t, y in labels.items()}


def fitness_estimate(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                     weights: dict[str, float] | None = None, groups: Sequence | None = None,
                     reps: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Fitness (mean over units of the weighted chance-corrected score) with its interval."""
    weights = weights or {t: 1.0 for t in labels}
    k = _num_labels(labels, preds)
    return _estimate(lambda c: _unit_fitness(preds, labels, weights, k, c), labels, groups, reps, seed, level)


def paired_difference(reference: dict[str, np.ndarray], other: dict[str, np.ndarray],
                      labels: dict[str, np.ndarray], weights: dict[str, float] | None = None,
                      groups: Sequence | None = None, reps: int = BOOTSTRAP, seed: int = 0,
                      level: float = LEVEL) -> Estimate:
    """``other`` minus ``reference``, paired by unit and by dev example.

    Both systems' rows must be the same units in the same order (same slice,
    same fine-tune seed), scored on the same dev examples.
    """
    weights = weights or {t: 1.0 for t in labels}
    for t in labels:
        if np.shape(reference[t]) != np.shape(other[t]):
            raise ValueError(f"{t}: the two systems' predictions are not paired "
                             f"({np.shape(reference[t])} vs {np.shape(other[t])})")
    k = _num_labels(labels, reference, other)

    def diff(c):
        return _unit_fitness(other, labels, weights, k, c) - _unit_fitness(reference, labels, weights, k, c)

    return _estimate(diff, labels, groups, reps, seed, level)


# --- multiple comparisons and verdicts ------------------------------------------

def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdict(estimate: Estimate, adjusted_p: float, alpha: float = 1 - LEVEL, margin: float = 0.0,
            adjusted_p_inside: float | None = None) -> str:
    """The word a comparison ends with, at margin δ (``margin``): ``better``/``worse`` when the
    (Holm-adjusted) test says the difference lies beyond ±δ, ``equivalent`` when it lies inside
    ±δ, else ``indistinguishable``. ``adjusted_p`` is the adjusted ``p_beyond(margin)`` and
    ``adjusted_p_inside`` the adjusted ``p_inside(margin)`` (unadjusted when not given).

    A difference is called only when it is about the mapping: two or more
    distillation runs, so that their spread is in the interval. With one, the
    interval is about this student (one lucky or unlucky run): ``no verdict``.
    """
    if not estimate.about_the_mapping:
        return NO_VERDICT
    if not estimate.seed_noise_measured:
        return "indistinguishable"
    if adjusted_p < alpha:
        return "better" if estimate.mean > 0 else "worse"
    inside = estimate.p_inside(margin) if adjusted_p_inside is None else adjusted_p_inside
    return "equivalent" if margin > 0 and inside < alpha else "indistinguishable"


def family_verdicts(estimates: Sequence[Estimate], alpha: float = 1 - LEVEL,
                    margin: float = 0.0) -> list[tuple[float, str]]:
    """(Holm-adjusted p beyond ±``margin``, verdict) for each of a family of comparisons made
    together; the equivalence tests are Holm-adjusted over the family as well."""
    beyond = holm([e.p_beyond(margin) for e in estimates])
    inside = holm([e.p_inside(margin) for e in estimates])
    return [(p, verdict(e, p, alpha, margin, q)) for e, p, q in zip(estimates, beyond, inside, strict=True)]
