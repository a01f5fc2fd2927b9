"""The search's statistical policy on plain numbers: adjusted fitness across rungs,
elites promoted before they count, the final race's entrants and the winner.

Nothing here touches Ray, MLflow or the cache: the driver gathers the numbers
and acts on the answers, and tests check the policy on tables they write.

Racing scores genomes on different sets of units (proxy slice x fine-tune
seed): most hold only rung 0's, the promoted ones more. Units are shared by
every genome and some are easier than others, so a plain mean would let a
genome scored on one easy unit outrank genomes scored on all of them.

Why a mixed model, not a fixed-effects fit. The obvious correction fits
y[g, u] = mu_g + beta_u with every genome a fixed effect. Then a genome
scored on rung 0 alone tells the fit nothing about the unit effects (its own
mu_g absorbs its score), and only the promoted genomes inform them; but they
were promoted *because* their rung-0 score was lucky, and the fit reads that
luck as "rung 0 is easy" and marks every unpromoted genome down (a simulation
with equal genomes: about -0.5 unit sd for the unpromoted, +0.3 for the
promoted). Here genomes are random effects,

    y[g, u] = m + beta_u + a_g + e,   a_g ~ N(0, s_a^2),   e ~ N(0, s_e^2),

fitted by maximum likelihood (profiled over the variance ratio), and only
where a likelihood-ratio test says there is a spread between genomes at all
(``SPREAD_TEST``). Promotion depends only on observed scores,
so the unpromoted genomes' data stay in the likelihood and the fit is
unbiased under that selection (the missing-at-random argument); each
genome's fitness is m + E[a_g | its scores], which shrinks a genome held on
few units toward the mean as much as the measured spread between genomes
warrants, and not the luck it was selected on. ``bench/search_quality.py``
prints the bias of both fits.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

# The likelihood-ratio statistic a spread between genomes must reach before it is fitted: the
# 0.6 quantile of chi2(1) (scipy.stats.chi2(1).ppf(0.6)), i.e. a test of s_a^2 = 0 at level 0.2
# on the boundary's 50:50 chi2(0)/chi2(1) mixture (0.5 x P(chi2(1) > 0.708) = 0.2). Equal
# genomes give a positive ML ratio in about 45% of races, and each such fit only partly shrinks
# away the rung-0 luck the unpromoted were left behind on (-0.24 unit sd for them, against 0
# where the ratio is 0); the test cuts that to 1 race in 5 and brings the bench's bias from
# -0.106 to -0.082. The level is lenient on purpose: a weak real spread still reaches the GA
# (bench/search_quality.py's ga+racing row is unchanged by it).
SPREAD_TEST = 0.7083263008007934
# What the GA selects on in a generation where the test finds no spread, in the search's words.
NO_SPREAD_SELECTION = ("where the spread test finds no spread between genomes, every genome gets the "
                       "same fitness (the top rung's mean) and the GA selects among them at random; the "
                       "final race still scores its entrants on every unit")


def _profile(lam: float, y: np.ndarray, held: np.ndarray) -> tuple[float, np.ndarray]:
    """-2 log-likelihood (ML, constants dropped) at s_a^2 / s_e^2 = ``lam``, and the unit means.

    Given the ratio, the unit means are generalised least squares and s_e^2 has a
    closed form; each genome's covariance is s_e^2 (I + lam J), whose inverse is
    (I - c J) / s_e^2 with c = lam / (1 + lam n_g), so everything is a sum over genomes.
    """
    h = held.astype(np.float64)
    n = h.sum(axis=1)
    c = lam / (1.0 + lam * n)
    total = (y * h).sum(axis=1)
    lhs = np.diag(h.sum(axis=0)) - (h * c[:, None]).T @ h
    rhs = (y * h).sum(axis=0) - (h * (c * total)[:, None]).sum(axis=0)
    unit = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    r = np.where(held, y - unit[None, :], 0.0)
    rs = r.sum(axis=1)
    quad = float((r**2).sum() - (c * rs**2).sum())
    sigma2 = max(quad / h.sum(), 1e-300)
    return h.sum() * np.log(sigma2) + float(np.log1p(lam * n).sum()), unit


def adjusted_means(table: dict[Hashable, dict[Hashable, float]], reference: Sequence[Hashable]
                   ) -> dict[Hashable, float]:
    """Each genome's fitness freed of its units' shared effects, selection-safe.

    ``table[genome][unit]`` is a unit fitness. The unit effects average 0 over
    ``reference`` (the top rung's units that have data), so fitness is on the
    scale of a genome that holds every top-rung unit. Returns m + E[a_g | data]
    from the mixed model in the module docstring, its variance ratio chosen by
    maximum likelihood over a log grid refined by Brent's method.
    """
    from scipy.optimize import minimize_scalar

    genomes = [g for g, row in table.items() if row]
    if not genomes:
        return {}
    units = sorted({u for g in genomes for u in table[g]}, key=str)
    col = {u: i for i, u in enumerate(units)}
    y = np.zeros((len(genomes), len(units)))
    held = np.zeros_like(y, dtype=bool)
    for i, g in enumerate(genomes):
        for u, v in table[g].items():
            y[i, col[u]], held[i, col[u]] = v, True
    ref = np.array([col[u] for u in reference if u in col] or list(range(len(units))))
    # The ratio lives on a log scale; 0 (no spread between genomes) and a huge ratio (no shrinkage,
    # the fixed-effects answer a noise-free table needs) are its ends.
    grid = np.concatenate([[0.0], np.logspace(-4, 8, 25)])
    scores = [_profile(lam, y, held)[0] for lam in grid]
    best = int(np.argmin(scores))
    lam, fitted = grid[best], scores[best]
    if 0 < best < len(grid) - 1:
        # Bounded Brent between the grid's neighbours: a bracket (a, b, c) would need f(b) below
        # both ends, which fails where the neighbour below 1e-4 is 0 (the log scale needs a
        # stand-in end there, and the profile can dip below the grid point before it).
        low = np.log(grid[best - 1]) if best > 1 else np.log(grid[1]) - 4 * np.log(10)
        fit = minimize_scalar(lambda t: _profile(float(np.exp(t)), y, held)[0],
                              bounds=(low, np.log(grid[best + 1])), method="bounded")
        if fit.fun < scores[best]:
            lam, fitted = float(np.exp(fit.x)), float(fit.fun)
    if scores[0] - fitted < SPREAD_TEST:
        # No spread between genomes the data can tell from chance: none stands out, so every
        # genome gets the same fitness (the top rung's mean) and the GA's tournaments pick at
        # random among them (NO_SPREAD_SELECTION, said at the search's start); ranking them by
        # their raw means instead would rank the rung-0 luck the test could not tell from skill.
        lam = 0.0
    _, unit = _profile(lam, y, held)
    m = float(unit[ref].mean())
    r = np.where(held, y - unit[None, :], 0.0).sum(axis=1)
    a = lam / (1.0 + lam * held.sum(axis=1)) * r
    return {g: m + float(a[i]) for i, g in enumerate(genomes)}


# --- elites, the final race and the winner ---------------------------------------

def elites_to_promote(hall_of_fame: Sequence[tuple[Hashable, object]], rung_of, top: int,
                      tried: set, failed: object) -> tuple[list, list]:
    """Hall-of-fame members below the top rung that must get every unit before they can be
    called best: (to promote now, stuck). A member already tried and still below (its
    promotion failed for a transient reason) is stuck and keeps its score."""
    below = [g for g, f in hall_of_fame if f != failed and rung_of(g) < top]
    stuck = [g for g in below if g in tried]
    return [g for g in below if g not in tried], stuck


def final_race_entrants(standing: dict[Hashable, float | None], n: int, heuristics: Sequence[Hashable],
                        failed: object) -> list[Hashable]:
    """The heuristics (uniform first) and the ``n`` best of ``standing`` by adjusted fitness,
    each once: post-selection, they all meet at the top rung before a winner is named."""
    if n == 0:
        return []
    ranked = sorted((g for g, f in standing.items() if f is not None and f != failed), key=lambda g: -standing[g])
    return list(dict.fromkeys([*heuristics, *ranked[:n]]))


def choose_winner(top_means: dict[Hashable, float | None]) -> Hashable | None:
    """The best mean among the candidates scored on every top-rung unit (where all hold the same
    units, the plain mean is fair); ties go to the first in sorted order, so a replay agrees."""
    best, best_mean = None, None
    for key in sorted(top_means, key=str):
        mean = top_means[key]
        if mean is not None and np.isfinite(mean) and (best_mean is None or mean > best_mean):
            best, best_mean = key, mean
    return best
