"""Search strategies: one class each behind one interface, chosen by GeneticSearch."""

from __future__ import annotations

import pytest

from layersearch.config import ConfigError, SearchConfig
from layersearch.search.ga import GeneticAlgorithm, GeneticSearch, run
from layersearch.search.strategies import ExhaustiveSearch, RandomSearch, Strategy


def drive(search: Strategy) -> list:
    """Every genome the strategy proposes, in order, through the interface the driver uses."""
    state, seen = search.start(), []
    while not search.done(state):
        todo = search.pending(state)
        seen += todo
        search.tell(state, {g: float(sum(g)) for g in todo})
        search.rescore(state, {})
        state = search.advance(state)
    return seen


@pytest.mark.parametrize(("strategy", "cls"), [("ga", GeneticAlgorithm), ("random", RandomSearch),
                                               ("exhaustive", ExhaustiveSearch)])
def test_each_strategy_is_its_own_class(strategy, cls):
    search = GeneticSearch(SearchConfig(strategy=strategy, population=4, generations=3), 3, 6)
    assert type(search) is cls and search.strategy == strategy
    assert isinstance(search, Strategy)


def test_auto_and_an_explicit_strategy_choose_the_class():
    cfg = SearchConfig(population=4, generations=6)  # 21 genomes, budget 24: auto enumerates
    assert type(GeneticSearch(cfg, 3, 6)) is ExhaustiveSearch
    # A resumed search keeps what auto chose at its start, whatever auto says now.
    assert type(GeneticSearch(cfg, 3, 6, strategy="ga")) is GeneticAlgorithm


def test_the_baselines_run_through_the_same_interface():
    exhaustive = GeneticSearch(SearchConfig(strategy="exhaustive"), 3, 6)
    assert sorted(drive(exhaustive)) == sorted(exhaustive.space.enumerate())
    random_search = GeneticSearch(SearchConfig(strategy="random", population=5, budget=12, seed=2), 3, 6)
    drawn = drive(random_search)
    assert len(drawn) == len(set(drawn)) == 12
    best = random_search.best(run(random_search, lambda batch: [float(sum(g)) for g in batch]))
    assert best[1] == max(sum(g) for g in drawn)


def test_ga_settings_it_cannot_run_are_refused_under_every_strategy():
    # auto resolves again on resume: an enumeration can become a GA when the budget is raised.
    for strategy in ("ga", "random", "exhaustive", "auto"):
        cfg = SearchConfig(strategy=strategy, variant="mu_plus_lambda", cxpb=0.8, mutpb=0.5)
        with pytest.raises(ConfigError, match="cxpb \\+ mutpb"):
            GeneticSearch(cfg, 3, 6)
