"""The search space (size, enumeration), strategies, racing rungs and promotion."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from layersearch.config import ConfigError, SearchConfig, parse_config
from layersearch.search.ga import GeneticSearch
from layersearch.search.racing import Ladder, Score, promote, race
from layersearch.search.space import SearchSpace

# --- the space ------------------------------------------------------------------

@pytest.mark.parametrize("m, n", [(1, 3), (2, 4), (3, 6), (4, 5)])
@pytest.mark.parametrize("allow_zero, monotone, fix_last", list(itertools.product([False, True], repeat=3)))
def test_size_and_enumeration_match_brute_force(m, n, allow_zero, monotone, fix_last):
    space = SearchSpace(SearchConfig(allow_zero=allow_zero, monotone=monotone, fix_last=fix_last), m, n)
    low = 0 if allow_zero else 1
    # The space is the fixed points of repair over every gene combination.
    members = sorted(g for g in itertools.product(range(low, n + 1), repeat=m) if space.contains(g))
    listed = list(space.enumerate())
    assert listed == members  # lexicographic, complete, nothing outside
    assert space.size() == len(members)


def test_size_with_init_genes_and_the_issue_figures():
    assert SearchSpace(SearchConfig(), 3, 6).size() == 21  # the quickstart: C(N+M-2, M-1)
    assert SearchSpace(SearchConfig(), 4, 12).size() == 364  # bert-base -> 4 layers
    assert SearchSpace(SearchConfig(allow_zero=True, monotone=False, fix_last=False), 3, 6).size() == 342
    space = SearchSpace(SearchConfig(search_init=True), 2, 4)
    members = [g for g in itertools.product(range(1, 5), repeat=4) if space.contains(g)]
    assert space.size() == len(members) == len(list(space.enumerate())) == 4 * 10


def test_strategy_auto_enumerates_when_the_space_fits_the_budget():
    small = GeneticSearch(SearchConfig(population=4, generations=6), 3, 6)  # 21 genomes, budget 24
    assert small.strategy == "exhaustive" and small.generations == 1
    state = small.start()
    assert sorted(map(tuple, state.population)) == sorted(small.space.enumerate())
    big = GeneticSearch(SearchConfig(population=4, generations=5), 3, 6)  # budget 20 < 21
    assert big.strategy == "ga"
    assert GeneticSearch(SearchConfig(population=4, budget=30), 3, 6).strategy == "exhaustive"


def test_random_strategy_draws_distinct_genomes_across_generations():
    search = GeneticSearch(SearchConfig(population=5, generations=4, strategy="random", seed=3), 3, 6)
    state, seen = search.start(), []
    while not search.done(state):
        seen += [tuple(g) for g in search.pending(state)]
        search.tell(state, {g: float(sum(g)) for g in search.pending(state)})
        state = search.advance(state)
    assert len(seen) == 20 == len(set(seen))
    assert all(search.space.contains(g) for g in seen)


def test_old_strategy_names_still_choose_the_ga_variant():
    cfg = SearchConfig(strategy="mu_plus_lambda")
    assert (cfg.strategy, cfg.variant) == ("ga", "mu_plus_lambda")


# --- init genes -----------------------------------------------------------------

def test_init_genes_are_a_second_chromosome():
    search = GeneticSearch(SearchConfig(search_init=True, allow_zero=True, strategy="ga", population=12,
                                        generations=6, mutpb=1.0, indpb=0.5, seed=1), 3, 6)
    assert [2, 4, 6, 2, 4, 6] in search.heuristic_genomes()  # uniform supervises and initialises
    state = search.start()
    rng = random.Random(0)
    for _ in range(200):
        a, b = (search.toolbox.clone(rng.choice(state.population)) for _ in range(2))
        a, b = list(a), list(b)
        search.toolbox.mate(a, b, rng=rng)
        search.toolbox.mutate(a, rng=rng)
        a = search.repair(a)
        assert len(a) == 6 and all(1 <= g <= 6 for g in a[3:])  # init genes never name layer 0
        assert a[3:] == sorted(a[3:])
    mapping = search.space.mapping((0, 4, 6, 1, 3, 5))
    assert mapping.genes == (0, 4, 6) and mapping.init == (1, 3, 5)
    assert search.space.genome(mapping) == (0, 4, 6, 1, 3, 5)


# --- rungs and promotion --------------------------------------------------------

def test_ladder_rungs_nest_and_price_promotions():
    ladder = Ladder([0, 1], [10, 11, 12], seeds=[1, 3], slices=[1, 2], reduction=2)
    assert ladder.units(0) == [(0, 10)]
    assert ladder.units(1) == [(0, 10), (0, 11), (0, 12), (1, 10), (1, 11), (1, 12)]
    assert ladder.work(-1, 0) == (1, 1)
    assert ladder.work(0, 1) == (2, 5)  # both slices distilled again, five new units
    assert ladder.held({"s0-f10", "s0-f11"}) == 0 and ladder.held(set()) == -1
    assert ladder.batch_work(4) == (4 * 1 + 2 * 2, 4 * 1 + 2 * 5)


def test_rungs_always_end_with_every_seed(quickstart_raw):
    """Rungs beyond the seeds fold into the top rung and a missing top rung is added, so
    changing tasks.finetune.seeds (compare on fresh seeds, a one-seed smoke run) never breaks racing."""
    raw = quickstart_raw  # racing seeds [1, 3] over fine-tune seeds [0, 1, 2]
    assert [len(r) for r in Ladder.of(parse_config(raw)).rungs] == [1, 3]
    raw["tasks"]["finetune"]["seeds"] = [7]
    assert [len(r) for r in Ladder.of(parse_config(raw)).rungs] == [1]  # no racing left
    raw["tasks"]["finetune"]["seeds"] = [10, 11, 12, 13, 14]
    assert Ladder.of(parse_config(raw)).rungs[-1] == [(0, f) for f in (10, 11, 12, 13, 14)]
    assert [len(r) for r in Ladder.of(parse_config(raw)).rungs] == [1, 3, 5]


def test_racing_config_must_climb(quickstart_raw):
    raw = quickstart_raw
    raw["search"]["racing"] = {"seeds": [3, 1, 3]}
    with pytest.raises(ConfigError, match="each rung must add"):
        parse_config(raw)
    raw["search"]["racing"] = {"seeds": [1, 3], "reduction": 1}
    with pytest.raises(ConfigError, match="reduction"):
        parse_config(raw)


def test_promotion_uses_intervals_not_only_means():
    scores = {"a": Score(0.50, 0.45, 0.55), "b": Score(0.48, 0.40, 0.56), "c": Score(0.30, 0.25, 0.35),
              "d": Score(None)}
    # Half of four go up by mean...
    assert promote(scores, 2) == ["a", "b"]
    # ...but one clearly worse than the leader (its interval wholly below) never does,
    # and a failure never does: with a reduction of 1.1 only a and b qualify.
    assert promote(scores, 1.1) == ["a", "b"]
    wide = {"a": Score(0.50, 0.45, 0.55), "e": Score(0.40, 0.10, 0.70)}
    assert promote(wide, 1.5) == ["a", "e"]  # a low mean with a wide interval still may be best
    # One-unit intervals know nothing of seed noise: they never eliminate.
    single = {g: Score(s.mean, s.low, s.high, units=1) for g, s in scores.items()}
    assert promote(single, 1.1) == ["a", "b", "c"]


def test_race_promotes_only_the_best_and_reuses_lower_rungs():
    ladder = Ladder([0], [0, 1, 2, 3], seeds=[1, 2, 4], reduction=2)
    truth = {g: g / 10 for g in range(8)}
    calls = []

    def score_at(genomes, rung):
        calls.append((rung, sorted(genomes)))
        return {g: Score(truth[g], truth[g] - width, truth[g] + width, units=len(ladder.units(rung)))
                for g in genomes}

    width = 0.15  # intervals overlap: halving alone decides
    result = race(list(range(8)), ladder, score_at)
    assert calls == [(0, list(range(8))), (1, [4, 5, 6, 7]), (2, [6, 7])]
    assert result[7][0] == 2 and result[7][1].mean == 0.7 and result[0][0] == 0
    calls.clear()
    width = 0.01  # tight two-unit intervals separate them: only the leader goes up from rung 1
    race(list(range(8)), ladder, score_at)
    assert calls == [(0, list(range(8))), (1, [4, 5, 6, 7]), (2, [7])]


def test_adjusted_means_remove_shared_seed_effects_on_an_unbalanced_design():
    """Seed 0 is easy for everyone: a genome scored on it alone must not outrank genomes
    scored on every seed; the adjustment recovers the true means when y = mu + beta."""
    mu = {"a": 0.30, "b": 0.35, "c": 0.25, "d": 0.40}
    beta = {0: 0.10, 1: -0.04, 2: -0.06}  # averages 0 over the top rung's seeds
    held = {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0], "d": [0, 2]}
    table = {g: {u: mu[g] + beta[u] for u in us} for g, us in held.items()}
    plain = {g: sum(row.values()) / len(row) for g, row in table.items()}
    assert plain["c"] > plain["a"]  # the bias: c looks better on its easy seed alone
    assert racing_adjusted(table) == pytest.approx(mu, abs=1e-6)


def racing_adjusted(table):
    from layersearch.search.selection import adjusted_means

    return adjusted_means(table, reference=[0, 1, 2])


def _race_of_equal_genomes(rng, effect=0.0, genomes=40, better=()):
    """Rung 0 is unit 0 (shared effect ``effect``); the top half by it get units 1 and 2."""
    first = rng.normal(effect, 1.0, genomes) + np.isin(np.arange(genomes), better) * 1.5
    up = set(np.argsort(-first)[: genomes // 2].tolist())
    lift = {g: 1.5 if g in better else 0.0 for g in range(genomes)}
    return {g: {0: first[g]} | ({1: rng.normal() + lift[g], 2: rng.normal() + lift[g]} if g in up else {})
            for g in range(genomes)}, up


@pytest.mark.parametrize("effect", [0.0, 0.5])
def test_seed_correction_is_not_biased_by_the_promotion_it_follows(effect):
    """Equal genomes, the lucky half promoted on rung 0: the fit must not read the promoted ones'
    luck as an easy rung-0 seed and mark the unpromoted down (a fixed-effects fit put them
    1.3 unit sd below the truth, the promoted 0.27 above)."""
    rng = np.random.default_rng(3)
    unpromoted, promoted = [], []
    for _ in range(80):
        table, up = _race_of_equal_genomes(rng, effect)
        for g, v in racing_adjusted(table).items():
            (promoted if g in up else unpromoted).append(v - effect / 3)  # truth on the top rung's scale
    assert abs(np.mean(unpromoted)) <= 0.1 and abs(np.mean(promoted)) <= 0.1, (np.mean(unpromoted),
                                                                                np.mean(promoted))


def test_a_spread_between_genomes_is_fitted_only_where_the_data_show_one():
    """Equal genomes: the ML variance ratio is positive in about 45% of races by chance, and
    the likelihood-ratio test (level 0.2) leaves about 1 in 5 of them, so most races give
    every genome the same fitness; ten 1.5 sd better genomes are a spread it nearly always fits."""
    rng = np.random.default_rng(5)
    flat = [np.ptp(list(racing_adjusted(_race_of_equal_genomes(rng)[0]).values())) < 1e-9 for _ in range(60)]
    assert 0.65 <= np.mean(flat) <= 0.92, np.mean(flat)
    spread = [np.ptp(list(racing_adjusted(_race_of_equal_genomes(rng, better=range(10))[0]).values())) > 0
              for _ in range(20)]
    assert np.mean(spread) >= 0.8, np.mean(spread)


def test_seed_correction_keeps_true_differences():
    """Ten genomes truly 1.5 sd better: they still make most of the adjusted top ten."""
    rng = np.random.default_rng(4)
    hits = []
    for _ in range(30):
        table, _ = _race_of_equal_genomes(rng, better=range(10))
        adjusted = racing_adjusted(table)
        hits.append(sum(g < 10 for g in sorted(adjusted, key=adjusted.get)[-10:]))
    assert np.mean(hits) >= 7, hits


def test_random_search_draws_exactly_its_budget_and_exhaustive_refuses_a_huge_space():
    search = GeneticSearch(SearchConfig(population=5, budget=13, strategy="random", seed=1), 3, 6)
    state, drawn = search.start(), 0
    while not search.done(state):
        drawn += len(search.pending(state))
        search.tell(state, {g: 0.0 for g in search.pending(state)})
        state = search.advance(state)
    assert drawn == 13
    huge = GeneticSearch(SearchConfig(strategy="exhaustive", allow_zero=True, monotone=False, fix_last=False),
                         6, 24)
    with pytest.raises(ConfigError, match="exhaustive would race all"):
        huge.start()


def test_a_failed_promotion_leaves_the_hall_of_fame_and_the_state_stays_json():
    from layersearch.search.ga import FAILED, GAState

    search = GeneticSearch(SearchConfig(population=4, strategy="ga", hall_of_fame=2), 3, 6)
    state = search.start()
    search.tell(state, {tuple(g): 0.1 * i for i, g in enumerate(state.population)})
    state = search.advance(state)
    top = state.hall_of_fame[0][0]
    search.rescore(state, {top: FAILED})
    assert top not in dict(state.hall_of_fame)
    assert GAState.from_json(state.to_json()).hall_of_fame == state.hall_of_fame


def test_adjusted_means_of_nothing_is_nothing():
    assert racing_adjusted({}) == {} and racing_adjusted({"a": {}}) == {}


def test_a_folded_rung_is_said_not_hidden(quickstart_raw):
    import copy

    from layersearch.config import parse_config

    raw = copy.deepcopy(quickstart_raw)
    raw["tasks"]["finetune"]["seeds"] = [0, 1, 2]
    raw["search"]["racing"] = {"seeds": [1, 5]}
    notes = Ladder.folding_notes(parse_config(raw))
    assert notes == ["search.racing.seeds: rung 2 asks for 5 fine-tune seeds but tasks.finetune.seeds gives 3; "
                     "it is folded into the top rung of 3"]
    raw["search"]["racing"] = {"seeds": [1, 3]}
    assert Ladder.folding_notes(parse_config(raw)) == []
    # A deterministic readout has one unit per slice: racing over seeds folds at once.
    raw["tasks"]["readout"] = "probe"
    assert "the probe readout (one unit per slice) gives 1" in Ladder.folding_notes(parse_config(raw))[0]


# A 6 x 3 table whose profile likelihood has its grid minimum at the first positive ratio (1e-4)
# and dips lower below it (the ML ratio is 5.3e-5): the bracket scipy was given there, (1e-5,
# 1e-4, 10^-3.5), did not hold its minimum, and minimize_scalar raised "Bracketing values".
BRACKET_TABLE = {
    0: {0: 0.159878, 1: -0.097957, 2: 0.67457}, 1: {0: 0.749715, 1: 0.109145, 2: 1.00641},
    2: {0: 0.71156, 1: 0.354641, 2: -1.296175}, 3: {0: 0.16533, 1: 0.807477, 2: 1.472077},
    4: {0: -1.458509, 1: 0.64773, 2: -0.37939}, 5: {0: 0.008316, 1: 0.196324, 2: 0.424283}}


def test_ranking_a_ratio_below_the_grid_does_not_crash_and_says_what_no_spread_selects():
    from layersearch.cli.search import SearchDisplay
    from layersearch.search.selection import NO_SPREAD_SELECTION, _profile, adjusted_means

    y = np.array([[BRACKET_TABLE[g][u] for u in range(3)] for g in range(6)])
    held = np.ones_like(y, dtype=bool)
    f = {lam: _profile(lam, y, held)[0] for lam in (0.0, 1e-5, 1e-4, 10**-3.5)}
    assert f[1e-4] < f[0.0] and f[1e-5] < f[1e-4] < f[10**-3.5]  # the case that crashed
    fitness = adjusted_means(BRACKET_TABLE, reference=[0, 1, 2])
    # A ratio that small is no spread the test can tell from chance: every genome the same.
    assert len(fitness) == 6 and np.ptp(list(fitness.values())) == 0
    assert next(iter(fitness.values())) == pytest.approx(y.mean())
    # The search says so at its start.
    from rich.console import Console

    import layersearch.cli.search as cli_search

    out = Console(record=True, width=400)
    old, cli_search.console = cli_search.console, out
    try:
        SearchDisplay(live=False)._start(None, {"run_id": "r", "resumed": False, "strategy": "ga", "configured": "ga",
                                               "space": 21, "budget": 8, "rungs": [1], "reduction": 2,
                                               "selection": NO_SPREAD_SELECTION})
    finally:
        cli_search.console = old
    said = " ".join(out.export_text().split())
    assert "no spread between genomes, every genome gets the same fitness" in said
    assert "the GA selects among them at random" in said
