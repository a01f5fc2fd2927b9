"""Statistics of the fidelity ladder (bench/ladder.py): how far a cheap fidelity's ranking of
mappings follows the ground truth's, and what that ranking costs.

Pure numpy/scipy on plain arrays, tested on synthetic data. The data of one fidelity:

- ``draws``: [B+1, M] fitness of M mappings, row 0 as measured, rows 1.. on bootstrap resamples
  of what each mapping's fitness is made of (distillation runs, the units inside them, dev
  examples); the same row of the ground truth's draws is the same resample, so they stay paired.

Kendall tau is computed over mappings, so the mappings are a sample too: which ones were
registered decides how many pairs can agree. ``tau_interval`` therefore also resamples the
mappings (with replacement; a mapping drawn twice forms a pair tied in both rankings, which
tau-b leaves out of numerator and denominator alike). ``permutation_p`` is the probability,
with no association at all, of a |tau| this large: exact over all M! orders up to
``EXACT_UP_TO`` mappings, Monte Carlo beyond.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping as MappingType
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
EXACT_UP_TO = 8  # 8! = 40,320 orders: exact in well under a second
PERMUTATIONS = 20_000  # Monte Carlo draws beyond that
TIE = 1e-9  # two taus this close are equal (they are ratios of small integers)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two rankings; NaN where one of them is constant (no ranking)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    # tau-b over the pairs, as scipy.stats.kendalltau defines it (checked against it in the tests),
    # without its per-call overhead: the bootstrap and the permutations call this 10^4-10^5 times.
    i, j = np.triu_indices(len(x), 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    return float(np.sum(sx * sy) / math.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy)))


def permutation_p(x: Sequence[float], y: Sequence[float], draws: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided permutation p of Kendall's tau: the share of orders of ``y`` against ``x`` whose
    |tau| reaches the observed one. Exact for up to EXACT_UP_TO mappings; beyond, Monte Carlo with
    the observed order counted in, (k + 1) / (draws + 1), so p is never 0."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    observed = kendall_tau(x, y)
    if not np.isfinite(observed):
        return float("nan")
    n = len(y)
    if n <= EXACT_UP_TO:
        hits = total = 0
        for order in itertools.permutations(range(n)):
            hits += abs(kendall_tau(x, y[list(order)])) >= abs(observed) - TIE
            total += 1
        return hits / total
    rng = np.random.default_rng(seed)
    hits = sum(abs(kendall_tau(x, rng.permutation(y))) >= abs(observed) - TIE for _ in range(draws))
    return (hits + 1) / (draws + 1)


def run_unit_draws(runs: Sequence, reps: int, rng: np.random.Generator) -> np.ndarray:
    """[reps, U] unit indices, resampled in two stages: distillation runs with replacement, then
    units (fine-tune seeds) with replacement inside each drawn run. ``runs[u]`` names unit u's run.

    With one run only the units are resampled (and the interval holds no spread between runs).
    Every run must hold the same number of units, so that every draw has U of them.
    """
    runs = list(runs)
    groups: dict = {}
    for u, r in enumerate(runs):
        groups.setdefault(r, []).append(u)
    sizes = {len(g) for g in groups.values()}
    if len(sizes) != 1:
        raise ValueError(f"every distillation run needs the same number of units, got {sorted(sizes)}")
    members = np.array(list(groups.values()))  # [R, k]
    r, k = members.shape
    chosen = rng.integers(0, r, (reps, r))  # runs
    inner = rng.integers(0, k, (reps, r, k))  # units inside each drawn run
    return members[chosen[:, :, None], inner].reshape(reps, r * k)


def mapping_draws(m: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """[reps, m] mapping indices drawn with replacement (the registered mappings as a sample)."""
    return rng.integers(0, m, (reps, m))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of the finite values (NaN, NaN where there are none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [a, 100 - a])
    return float(lo), float(hi)


def tau_draws(fid: np.ndarray, truth: np.ndarray, mappings: np.ndarray | None) -> np.ndarray:
    """[B] tau of each bootstrap row: fidelity row b against ground-truth row b, on the mappings
    drawn for row b (``mappings`` [B, M]; None keeps every mapping once). Undefined taus (fewer
    than two distinct mappings drawn, or a constant ranking) are NaN."""
    out = np.full(fid.shape[0] - 1, np.nan)
    for b in range(1, fid.shape[0]):
        idx = slice(None) if mappings is None else mappings[b - 1]
        out[b - 1] = kendall_tau(fid[b, idx], truth[b, idx])
    return out


def tau_interval(fid: np.ndarray, truth: np.ndarray, mappings: np.ndarray | None,
                 level: float = LEVEL) -> dict:
    """Tau of a fidelity against the ground truth: the point (row 0), its bootstrap interval, how
    many resamples had no tau, and the permutation p of the point."""
    point = kendall_tau(fid[0], truth[0])
    taus = tau_draws(fid, truth, mappings)
    lo, hi = percentile_interval(taus, level)
    return {"tau": point, "tau_ci": (lo, hi), "undefined": int(np.sum(~np.isfinite(taus))),
            "p": permutation_p(fid[0], truth[0])}


def gain(fid: np.ndarray, init: np.ndarray, mappings: np.ndarray | None, level: float = LEVEL) -> dict:
    """Distillation gain: the mappings' mean fitness minus the untouched init's (one init shared by
    every mapping, [B+1]), on each bootstrap row, over the mappings drawn for it."""
    fid, init = np.asarray(fid, dtype=float), np.asarray(init, dtype=float)
    rows = [fid[0].mean()]
    for b in range(1, fid.shape[0]):
        idx = slice(None) if mappings is None else mappings[b - 1]
        rows.append(fid[b, idx].mean())
    gains = np.array(rows) - init
    lo, hi = percentile_interval(gains[1:], level)
    return {"gain": float(gains[0]), "gain_ci": (lo, hi)}


def spread(truth: np.ndarray, level: float = LEVEL) -> dict:
    """What any mapping can buy: the sd of the mappings' fitness and max - min, with the interval
    of max - min over the bootstrap rows (runs, units, dev examples resampled; the mappings
    fixed: the range is of these mappings). Noise widens a range, so max - min leans high."""
    ranges = np.ptp(truth, axis=1)
    lo, hi = percentile_interval(ranges[1:], level)
    return {"sd": float(np.std(truth[0], ddof=1)), "range": float(ranges[0]), "range_ci": (lo, hi)}


def truth_seconds(distill_s: float, finetune_s: MappingType[str, float], kept: Sequence[str]) -> float:
    """Seconds of one ground-truth evaluation: its distillation and the fine-tunes of the tasks
    the ground truth keeps (a task with no signal for the teacher is not part of its cost)."""
    missing = [t for t in kept if t not in finetune_s]
    if missing:
        raise ValueError(f"no fine-tune seconds for kept task(s) {missing}")
    return float(distill_s + sum(finetune_s[t] for t in kept))


def compute_ratio(truth_s: float, fidelity_s: float) -> float:
    """How many evaluations of the fidelity one ground-truth evaluation pays for."""
    if fidelity_s <= 0 or not math.isfinite(fidelity_s):
        return float("nan")
    return truth_s / fidelity_s
