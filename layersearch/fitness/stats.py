"""Statistics of fitness: chance-corrected scores, intervals, paired tests, verdicts.

Pure numpy/scipy on plain arrays, so it is tested on synthetic data where the
true value is known. The data of one system (a mapping under one proxy spec):

- ``labels[t]``: the dev labels of task t, shape [n_t];
- ``preds[t]``: its dev predictions, shape [U, n_t], one row per *unit* (one
  proxy slice x one fine-tune seed), rows in the same unit order for every task.

A unit's fitness is the weighted mean over tasks of its chance-corrected score
(Matthews correlation). The fitness is the mean over units; its uncertainty
has two sources that this module adds up:

1. seed noise: which students the seeds happened to train. Estimated from the
   spread of unit fitnesses; units that share a proxy slice are nested in it,
   so when the slice means differ by clearly more than their units explain
   (F test at the 25% level, Bancroft's pooling rule) the variance comes from
   the slice means, and otherwise from every unit pooled.
2. the finite dev set: which examples the task's dev split happened to hold.
   Estimated by a bootstrap over dev examples, the same resample for every
   unit (and, in a comparison, for both systems: that is the pairing). The
   spread of unit fitnesses already holds each unit's own seed-by-example
   noise, so only what units share is taken from the bootstrap: the mean
   covariance between units' bootstrap values, (U V - v) / (U - 1), where V is
   the variance of the bootstrapped mean and v the units' mean own variance.

The two variances add; the interval and the test use Student's t with
Welch-Satterthwaite degrees of freedom (the bootstrap part counts as known).
With one unit the seed noise is not measured: the interval covers the dev set
only, and no comparison is called better or worse.
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
VERDICTS = ("better", "worse", "indistinguishable")


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

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def seed_noise_measured(self) -> bool:
        return self.units >= 2

    def to_dict(self) -> dict:
        """Plain JSON: an unmeasured or unbounded value is null."""
        out = {}
        for k in ("mean", "low", "high", "units", "seed_se", "dev_se", "df", "p_value"):
            v = getattr(self, k)
            out[k] = v if isinstance(v, int) or math.isfinite(v) else None
        return out


def _seed_variance(unit_values: np.ndarray, groups: Sequence | None) -> tuple[float, float]:
    """Variance of the mean of ``unit_values`` over seeds, and its degrees of freedom.

    ``groups`` names each unit's proxy slice. Units nested in slices: the
    variance of the grand mean is var(slice means) / slices, unless the slice
    means vary less than units within a slice do, when all units are pooled.
    """
    u = len(unit_values)
    pooled = float(np.var(unit_values, ddof=1)) / u
    if groups is None or len(set(groups)) < 2:
        return pooled, u - 1.0
    keys = sorted(set(groups))
    means = np.array([unit_values[[g == k for g in groups]].mean() for k in keys])
    sizes = np.array([sum(g == k for g in groups) for k in keys])
    within = sum(float(((unit_values[[g == k for g in groups]] - m) ** 2).sum())
                 for k, m in zip(keys, means, strict=True))
    within_df = int(sizes.sum() - len(keys))
    ms_within = within / within_df if within_df else 0.0
    # Mean square between slices, per unit: (units per slice) x var(slice means).
    ms_between = float(np.var(means, ddof=1)) * float(sizes.mean())
    # Pool unless slices clearly differ: a lower bar would swing the interval
    # between df = slices - 1 and df = units - 1 on noise alone.
    if ms_within == 0 or ms_between / ms_within > sps.f.ppf(SLICE_POOLING_LEVEL, len(keys) - 1, within_df):
        return float(np.var(means, ddof=1)) / len(keys), len(keys) - 1.0
    return pooled, u - 1.0


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
    counts = _shared_counts(tuple((t, len(y)) for t, y in sorted(labels.items())), reps, seed)
    boot = np.asarray(unit_fn(counts), dtype=np.float64)  # [B, U]
    mean_var = float(np.var(boot.mean(axis=1), ddof=1))
    if u >= 2:
        # Only the dev-set noise the units share; their own part is in the seed spread.
        own = float(np.var(boot, axis=0, ddof=1).mean())
        dev_var = max(0.0, (u * mean_var - own) / (u - 1))
    else:
        dev_var = mean_var
    if u >= 2:
        seed_var, seed_df = _seed_variance(values, groups)
    else:
        seed_var, seed_df = 0.0, math.inf
    total = seed_var + dev_var
    if total <= 0:
        return Estimate(mean, mean, mean, u, math.sqrt(seed_var) if u >= 2 else math.nan, 0.0, math.inf,
                        1.0 if mean == 0 else 0.0)
    # Welch-Satterthwaite: the bootstrap variance counts as known (infinite df).
    df = math.inf if seed_var == 0 else total**2 / (seed_var**2 / seed_df)
    se = math.sqrt(total)
    q = float(sps.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(sps.norm.ppf(0.5 + level / 2))
    tstat = abs(mean) / se
    p = float(2 * (sps.t.sf(tstat, df) if math.isfinite(df) else sps.norm.sf(tstat)))
    return Estimate(mean, mean - q * se, mean + q * se, u,
                    math.sqrt(seed_var) if u >= 2 else math.nan, math.sqrt(dev_var), df, min(1.0, p))


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


def verdict(estimate: Estimate, adjusted_p: float, alpha: float = 1 - LEVEL) -> str:
    """``better``/``worse`` when the (adjusted) test rejects no difference, else ``indistinguishable``.

    Without measured seed noise (one unit) a difference is never called: a
    single fine-tune seed is the lucky draw this tool exists to see through.
    """
    if not estimate.seed_noise_measured or adjusted_p >= alpha:
        return "indistinguishable"
    return "better" if estimate.mean > 0 else "worse"
