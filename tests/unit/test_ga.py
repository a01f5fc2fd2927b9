"""The GA as a state machine, driven by cheap test-double fitness functions."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from layersearch.config import ConfigError, SearchConfig
from layersearch.mapping import Mapping, heuristic
from layersearch.search.ga import GAState, GeneticSearch, run

M, N = 4, 12
TARGET = (3, 5, 9, 12)  # monotone, no zeros, last = N: inside the default search space


def distance_fitness(target):
    """Negative squared distance to a hidden target mapping; 0 only at the target."""

    def evaluate(batch):
        return [-float(sum((g - t) ** 2 for g, t in zip(genes, target, strict=True)))
                for genes in batch]

    return evaluate


def make(**overrides) -> GeneticSearch:
    base = {"population": 16, "generations": 15, "seed": 0, "strategy": "ga"}
    return GeneticSearch(SearchConfig(**(base | overrides)), M, N)


def in_space(search: GeneticSearch, genes) -> bool:
    cfg, genes = search.cfg, list(genes)
    nonzero = [g for g in genes if g]
    return (
        len(genes) == search.m
        and all((0 if cfg.allow_zero else 1) <= g <= search.n for g in genes)
        and bool(nonzero)
        and (not cfg.fix_last or genes[-1] == search.n)
        and (not cfg.monotone or nonzero == sorted(nonzero))
    )


# --- search quality -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["simple", "mu_plus_lambda"])
def test_finds_the_known_optimum_over_seeds(strategy):
    # ~80 distinct evaluations of 364 genomes per run; random search would hit ~1 seed in 5.
    found = 0
    for seed in range(5):
        search = make(seed=seed, strategy=strategy, generations=30)
        state = run(search, distance_fitness(TARGET))
        genes, fitness = search.best(state)
        found += genes == TARGET and fitness == 0.0
    assert found >= 4, f"optimum found with {found}/5 seeds"


def test_finds_optimum_in_an_unconstrained_space():
    target = (7, 0, 2, 11)  # breaks monotone and fix_last, uses a zero
    found = 0
    for seed in range(5):  # 13**4 genomes; step mutation suits this smooth landscape
        search = make(
            allow_zero=True, monotone=False, fix_last=False, mutation="step", generations=30,
            seed=seed,
        )
        found += search.best(run(search, distance_fitness(target)))[0] == target
    assert found >= 4, f"optimum found with {found}/5 seeds"


def test_best_never_gets_worse_across_generations():
    search = make(seed=3, population=8)
    bests = []
    run(search, distance_fitness(TARGET), on_generation=lambda s: bests.append(search.best(s)[1]))
    assert bests == sorted(bests)


# --- repair ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "allow_zero,monotone,fix_last", list(itertools.product([False, True], repeat=3))
)
def test_repair_enforces_constraints_and_is_idempotent(allow_zero, monotone, fix_last):
    search = make(allow_zero=allow_zero, monotone=monotone, fix_last=fix_last)
    rng = random.Random(1)
    for _ in range(2000):
        raw = [rng.randint(-3, N + 3) for _ in range(M)]
        fixed = search.repair(raw)
        assert in_space(search, fixed), (raw, fixed)
        assert search.repair(fixed) == fixed, raw
        Mapping(tuple(fixed), N)  # a valid mapping, as the evaluator will build it


def test_repair_keeps_genomes_already_in_the_space():
    search = make(allow_zero=True, monotone=True, fix_last=False)
    for genes in itertools.product(range(N + 1), repeat=3):
        genes = [*genes, 5]
        if in_space(search, genes):
            assert search.repair(genes) == genes


def test_repair_examples():
    search = make()  # defaults: no zeros, monotone, fix_last
    assert search.repair([9, 0, 4, 3]) == [1, 4, 9, 12]
    assert search.repair([20, -1, 5, 5]) == [1, 5, 12, 12]
    permissive = make(allow_zero=True, monotone=True, fix_last=False)
    assert permissive.repair([7, 0, 2, 0]) == [2, 0, 7, 0]
    assert permissive.repair([0, 0, 0, 0]) == [0, 0, 0, 12]  # must supervise something


def test_operators_keep_every_individual_in_the_space():
    for strategy, crossover, mutation in itertools.product(
        ["simple", "mu_plus_lambda"], ["uniform", "one_point"], ["reset", "step"]
    ):
        search = make(
            strategy=strategy, crossover=crossover, mutation=mutation, generations=5,
            allow_zero=True, offspring=7,
        )
        sizes = []

        def check(state, search=search, sizes=sizes):
            sizes.append(len(state.population))
            assert all(in_space(search, g) for g in state.population)

        state = run(search, distance_fitness(TARGET), on_generation=check)
        assert len(state.logbook) == 5
        expected = 16 if strategy == "simple" else 7
        assert sizes == [expected] * 5, (strategy, crossover, mutation)


# --- initial population ---------------------------------------------------------------------


def test_heuristics_in_generation_zero():
    state = make().start()
    gen0 = [tuple(g) for g in state.population]
    # Under the defaults only uniform and upper satisfy the constraints.
    assert heuristic("uniform", M, N).genes in gen0
    assert heuristic("upper", M, N).genes in gen0
    assert heuristic("lower", M, N).genes not in gen0
    assert len(gen0) == 16 and len(set(gen0)) == 16

    free = make(allow_zero=True, monotone=False, fix_last=False).start()
    gen0 = [tuple(g) for g in free.population]
    assert gen0[:4] == [heuristic(h, M, N).genes for h in ("uniform", "last", "lower", "upper")]


def test_heuristics_are_deduplicated_and_skipped_when_impossible():
    same = GeneticSearch(SearchConfig(population=4), 3, 3)  # uniform == lower == upper
    assert same.heuristic_genomes() == [[1, 2, 3]]
    deep = GeneticSearch(SearchConfig(allow_zero=True, population=4), 5, 3)  # M > N
    assert [0, 0, 0, 0, 3] in deep.heuristic_genomes()


def test_no_heuristics_when_disabled_and_every_gen0_genome_in_space():
    search = make(seed_heuristics=False)
    state = search.start()
    assert all(in_space(search, g) for g in state.population)
    assert state.fitness == [None] * 16 and state.generation == 0


def test_tiny_search_space_fills_the_population_anyway():
    search = GeneticSearch(SearchConfig(population=6, seed_heuristics=False, strategy="ga"), 1, 2)
    assert search.start().population == [[2]] * 6  # fix_last leaves a single genome


# --- determinism and resume -----------------------------------------------------------------


def test_seeded_runs_are_identical_and_seeds_differ():
    evaluate = distance_fitness((2, 2, 6, 12))
    a = run(make(seed=7, population=8), evaluate).to_json()
    b = run(make(seed=7, population=8), evaluate).to_json()
    c = run(make(seed=8, population=8), evaluate).to_json()
    assert a == b
    assert a != c


def test_global_random_does_not_matter():
    evaluate = distance_fitness(TARGET)
    random.seed(1)
    a = run(make(seed=2), evaluate).to_json()
    random.seed(99)
    b = run(make(seed=2), evaluate).to_json()
    assert a == b


@pytest.mark.parametrize("strategy", ["simple", "mu_plus_lambda"])
@pytest.mark.parametrize("stop_after", [0, 3, 9])
def test_resume_from_json_equals_uninterrupted_run(strategy, stop_after):
    evaluate = distance_fitness((1, 6, 6, 12))
    search = make(seed=5, strategy=strategy, population=6, generations=12)
    checkpoints: list[str] = []
    full = run(search, evaluate, on_generation=lambda s: checkpoints.append(s.to_json()))

    class Stop(Exception):
        pass

    def stop(state):
        if state.generation == stop_after + 1:
            raise Stop

    with pytest.raises(Stop):
        run(make(seed=5, strategy=strategy, population=6, generations=12), evaluate,
            on_generation=stop)
    saved = checkpoints[stop_after]
    fresh = make(seed=5, strategy=strategy, population=6, generations=12)  # a new process
    resumed = run(fresh, evaluate, state=GAState.from_json(saved))
    assert resumed.to_json() == full.to_json()
    assert fresh.best(resumed) == search.best(full)


def test_resume_mid_generation_after_partial_tell():
    evaluate = distance_fitness(TARGET)
    full = run(make(seed=4, population=8, generations=4), evaluate)

    search = make(seed=4, population=8, generations=4)
    state = search.advance(_evaluated(search, search.start(), evaluate))
    todo = search.pending(state)
    search.tell(state, dict(zip(todo[:2], evaluate(todo[:2]), strict=True)))  # then a crash
    resumed = run(search, evaluate, state=GAState.from_json(state.to_json()))
    assert resumed.to_json() == full.to_json()


def test_extending_generations_continues_the_same_run():
    evaluate = distance_fitness(TARGET)
    short = run(make(seed=1, generations=4), evaluate)
    longer = run(make(seed=1, generations=8), evaluate, state=GAState.from_json(short.to_json()))
    assert longer.to_json() == run(make(seed=1, generations=8), evaluate).to_json()


def test_state_json_round_trip_is_strict_json():
    search = make(population=6)
    state = search.start()
    todo = search.pending(state)
    search.tell(state, {todo[0]: None, todo[1]: 0.5})
    state = GAState.from_json(state.to_json())
    assert state.fitness[:2] == [float("-inf"), 0.5]

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    text = state.to_json()
    json.loads(text, parse_constant=no_constants)
    assert GAState.from_json(text) == state
    assert json.loads(text)["format_version"] == 1


def test_state_from_another_shape_is_refused():
    state = make().start()
    other = GeneticSearch(SearchConfig(), 3, N)
    with pytest.raises(ValueError, match="student"):
        other.pending(state)


# --- the ask/tell protocol ------------------------------------------------------------------


def _evaluated(search, state, evaluate):
    todo = search.pending(state)
    search.tell(state, dict(zip(todo, evaluate(todo), strict=True)))
    return state


def test_pending_deduplicates_and_tell_fills_every_copy():
    search = make(population=4)
    state = search.start()
    state.population = [[1, 2, 3, 12], [4, 4, 4, 12], [1, 2, 3, 12], [1, 2, 3, 12]]
    assert search.pending(state) == [(1, 2, 3, 12), (4, 4, 4, 12)]
    search.tell(state, {(1, 2, 3, 12): -1.0, (9, 9, 9, 12): 5.0})  # extra keys ignored
    assert state.fitness == [-1.0, None, -1.0, -1.0]
    assert search.pending(state) == [(4, 4, 4, 12)]
    assert state.evaluated == 1


def test_advance_requires_all_fitness_and_does_not_mutate_its_input():
    search = make(population=6)
    state = search.start()
    with pytest.raises(ValueError, match="lack fitness"):
        search.advance(state)
    _evaluated(search, state, distance_fitness(TARGET))
    before = state.to_json()
    nxt = search.advance(state)
    assert state.to_json() == before
    assert nxt.generation == 1


@pytest.mark.parametrize("strategy", ["simple", "mu_plus_lambda"])
def test_known_genomes_are_not_evaluated_again(strategy):
    search = make(population=10, seed=2, strategy=strategy, novelty=False)
    evaluate = distance_fitness(TARGET)
    state = search.start()
    while not search.done(state):
        _evaluated(search, state, evaluate)
        known = {tuple(g) for g in state.population} | {g for g, _ in state.hall_of_fame}
        known |= {g for g, _ in state.parents}
        state = search.advance(state)
        # Elites, unchanged clones and parents found again carry their fitness over.
        assert not known & set(search.pending(state))
        assert sum(f is not None for f in state.fitness) > 0


def test_failed_evaluations_never_win():
    def evaluate(batch):
        # The best genomes (closest to the target) all fail, alternately as None and -inf.
        scores = distance_fitness(TARGET)(batch)
        return [(None if i % 2 else float("-inf")) if s > -20 else s
                for i, s in enumerate(scores)]

    search = make(seed=1)
    state = run(search, evaluate)
    genes, fitness = search.best(state)
    assert math.isfinite(fitness) and fitness <= -20
    assert all(math.isfinite(f) and f <= -20 for _, f in state.hall_of_fame)
    assert any(row["failed"] for row in state.logbook)


def test_nan_and_inf_are_failures_and_all_failed_means_no_best():
    search = make(population=4, generations=3)
    bad = [float("nan"), float("inf"), None, -math.inf]
    state = run(search, lambda batch: [bad[i % 4] for i in range(len(batch))])
    assert search.best(state) is None
    assert state.hall_of_fame == []
    assert all(row["best"] is None and row["failed"] > 0 for row in state.logbook)


def test_logbook_has_one_correct_record_per_generation():
    search = make(seed=6, population=8, generations=5)
    evaluate = distance_fitness(TARGET)
    state = search.start()
    while not search.done(state):
        todo = search.pending(state)
        _evaluated(search, state, evaluate)
        fitness = list(state.fitness)
        state = search.advance(state)
        row = state.logbook[-1]
        assert row["gen"] == state.generation - 1
        assert row["evaluated"] == len(todo)
        assert row["best"] == max(fitness) and row["min"] == min(fitness)
        assert row["mean"] == pytest.approx(sum(fitness) / len(fitness))
        assert row["std"] >= 0
    assert [r["gen"] for r in state.logbook] == list(range(5))
    assert state.generation == 5


def test_mu_plus_lambda_needs_probabilities_that_share_one():
    with pytest.raises(ConfigError, match="cxpb"):
        make(strategy="mu_plus_lambda", cxpb=0.8, mutpb=0.5)


def test_run_rejects_a_short_score_list():
    with pytest.raises(ValueError, match="scores"):
        run(make(), lambda batch: [0.0])


@pytest.mark.parametrize("strategy", ["simple", "mu_plus_lambda"])
def test_novelty_spends_each_generation_on_new_mappings(strategy):
    """With novelty on, bred offspring avoid every genome scored before (space permitting)."""
    counts = {}
    for novelty in (False, True):
        search = make(population=10, generations=6, seed=2, strategy=strategy, novelty=novelty)
        evaluate = distance_fitness(TARGET)
        state, seen, new_per_gen = search.start(), set(), []
        while not search.done(state):
            todo = search.pending(state)
            new_per_gen.append(len(set(todo) - seen))
            seen |= set(todo)
            _evaluated(search, state, evaluate)
            state = search.advance(state)
        counts[novelty] = sum(new_per_gen)
        if novelty:
            assert all(n >= 5 for n in new_per_gen), new_per_gen
    assert counts[True] > counts[False]
