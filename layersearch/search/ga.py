"""Genetic search over layer mappings, as a resumable state machine.

A mapping's fitness is a proxy distillation plus fine-tuning that runs elsewhere (Ray
workers), a whole generation at a time, so the GA never calls a fitness function itself.
It is driven from outside, and `run()` is exactly this loop:

    search = GeneticSearch(cfg.search, num_student_layers=4, num_teacher_layers=12)
    state = search.start()
    while not search.done(state):
        todo = search.pending(state)          # distinct genomes still lacking fitness
        search.tell(state, dict(zip(todo, evaluate(todo))))
        state = search.advance(state)         # hall of fame + logbook, next generation
        checkpoint(state.to_json())

``GeneticSearch`` builds the strategy the config resolves to: ``GeneticAlgorithm``
(here), or the baselines ``RandomSearch`` and ``ExhaustiveSearch``
(strategies.py), all behind the same interface. The state and its JSON are
state.py, the operators operators.py.

All randomness comes from one `random.Random` whose state lives in `GAState`, so a search
stopped after any generation and resumed from its JSON ends exactly where an uninterrupted
one with the same seed does. Fitness is maximised; a failed evaluation scores -inf.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from deap import base

from layersearch.config import SearchConfig
from layersearch.search.operators import (
    cx_one_point,
    cx_uniform,
    individual,
    mut_reset,
    mut_step,
    per_chromosome_mate,
    per_chromosome_mutate,
    sel_tournament,
)
from layersearch.search.state import FAILED, STATE_FORMAT_VERSION, GAState, Genome, Scored, update_hall_of_fame
from layersearch.search.strategies import (
    EXHAUSTIVE_LIMIT,
    Evaluated,
    ExhaustiveSearch,
    RandomSearch,
    Strategy,
    check_settings,
    resolve_strategy,
)

# Importable from here as before the split into state, operators and strategies.
__all__ = [
    "EXHAUSTIVE_LIMIT", "FAILED", "STATE_FORMAT_VERSION", "GAState", "GeneticAlgorithm", "GeneticSearch",
    "Genome", "Scored", "Strategy", "cx_one_point", "cx_uniform", "mut_reset", "mut_step", "resolve_strategy",
    "run", "sel_tournament", "update_hall_of_fame",
]


class GeneticAlgorithm(Strategy):
    """DEAP-style GA over mappings of an M-layer student onto an N-layer teacher.

    Generation 0 is the initial population; the search is done once generations
    0 .. generations - 1 have been evaluated and advanced. Variant "simple" is eaSimple
    with the hall of fame's best re-inserted as elites (at most population - 1);
    "mu_plus_lambda" is eaMuPlusLambda with mu = population and lambda = offspring.
    """

    strategy = "ga"

    def __init__(self, cfg: SearchConfig, num_student_layers: int, num_teacher_layers: int, space=None):
        super().__init__(cfg, num_student_layers, num_teacher_layers, space)
        self.toolbox = base.Toolbox()
        if cfg.crossover == "uniform":
            self.toolbox.register("mate", per_chromosome_mate(cx_uniform, self.space, indpb=cfg.indpb))
        else:
            self.toolbox.register("mate", per_chromosome_mate(cx_one_point, self.space))
        mutate = mut_reset if cfg.mutation == "reset" else mut_step
        self.toolbox.register("mutate", per_chromosome_mutate(mutate, self.space, indpb=cfg.indpb))
        self.toolbox.register("select", sel_tournament, tournsize=cfg.tournament_size)

    def start(self) -> GAState:
        """Generation 0: the heuristics (if seed_heuristics), then random genomes."""
        rng = random.Random(self.cfg.seed)
        size = self.cfg.population
        pop = self.heuristic_genomes()[:size] if self.cfg.seed_heuristics else []
        seen = {tuple(g) for g in pop}
        draws = 0
        while len(pop) < size:
            genes = self.random_genome(rng)
            draws += 1
            # Prefer distinct genomes, but a tight search space may hold fewer than `size`.
            if tuple(genes) not in seen or draws > 20 * size:
                seen.add(tuple(genes))
                pop.append(genes)
        return GAState(self.m, self.n, 0, pop, [None] * len(pop), rng.getstate())

    def _next(self, state: GAState, done: Evaluated, rng: random.Random) -> GAState:
        """Breed the next generation: selection, then variation (varAnd or varOr)."""
        cfg, hof, known = self.cfg, done.hall_of_fame, done.known
        pop = [individual(g, f) for g, f in done.scored]
        parents: list[Scored] = []
        if cfg.variant == "simple":
            # Elitism: the hall of fame's best re-enter unchanged, so selection and
            # variation can never lose the best mapping found.
            n_elite = min(len(hof), cfg.population - 1)
            chosen = self.toolbox.select(pop, cfg.population - n_elite, rng=rng)
            offspring = self._vary_and(chosen, rng) + [individual(g) for g, _ in hof[:n_elite]]
        else:
            pool = [individual(g, f) for g, f in state.parents] + pop
            # Generation 0 has no parents yet: all of it breeds, as in eaMuPlusLambda.
            if state.generation == 0:
                survivors = pool
            else:
                survivors = self.toolbox.select(pool, cfg.population, rng=rng)
            offspring = self._vary_or(survivors, cfg.offspring or cfg.population, rng)
            parents = [(tuple(ind), ind.fitness.values[0]) for ind in survivors]
        # Genomes already scored (unchanged clones, elites, parents found again) are not
        # sent for evaluation a second time.
        if cfg.novelty:
            n_fixed = n_elite if cfg.variant == "simple" else 0
            bred = offspring[: len(offspring) - n_fixed]
            self._make_novel(bred, known, rng)
        return GAState(
            num_student_layers=self.m,
            num_teacher_layers=self.n,
            generation=state.generation + 1,
            population=[list(ind) for ind in offspring],
            fitness=[known.get(tuple(ind)) for ind in offspring],
            rng_state=rng.getstate(),
            parents=parents,
            hall_of_fame=hof,
            logbook=done.logbook,
            archive=list(known.items()),
        )

    def _vary_and(self, chosen: list, rng: random.Random) -> list:
        """DEAP's varAnd: pairwise crossover with cxpb, then mutation with mutpb."""
        offspring = [self.toolbox.clone(ind) for ind in chosen]
        for a, b in zip(offspring[::2], offspring[1::2], strict=False):
            if rng.random() < self.cfg.cxpb:
                self.toolbox.mate(a, b, rng=rng)
                a[:], b[:] = self.repair(a), self.repair(b)
        for ind in offspring:
            if rng.random() < self.cfg.mutpb:
                self.toolbox.mutate(ind, rng=rng)
                ind[:] = self.repair(ind)
        return offspring

    def _make_novel(self, offspring: list, known: dict, rng: random.Random, tries: int = 20) -> None:
        """Re-mutate offspring that repeat a scored genome or a sibling.

        Evaluations are expensive, so a generation should spend them on mappings not
        yet seen; in a small or converged space some repeats remain after ``tries``.
        """
        taken = set(known)
        for ind in offspring:
            for _ in range(tries):
                if tuple(ind) not in taken:
                    break
                self.toolbox.mutate(ind, rng=rng)
                ind[:] = self.repair(ind)
            taken.add(tuple(ind))

    def _vary_or(self, parents: list, count: int, rng: random.Random) -> list:
        """DEAP's varOr: each offspring comes from crossover, mutation or reproduction."""
        offspring = []
        for _ in range(count):
            op = rng.random()
            if op < self.cfg.cxpb:
                child, other = (self.toolbox.clone(p) for p in rng.sample(parents, 2))
                self.toolbox.mate(child, other, rng=rng)
            else:
                child = self.toolbox.clone(rng.choice(parents))
                if op < self.cfg.cxpb + self.cfg.mutpb:
                    self.toolbox.mutate(child, rng=rng)
            child[:] = self.repair(child)
            offspring.append(child)
        return offspring


STRATEGIES: dict[str, type[Strategy]] = {"ga": GeneticAlgorithm, "random": RandomSearch,
                                         "exhaustive": ExhaustiveSearch}


def GeneticSearch(cfg: SearchConfig, num_student_layers: int, num_teacher_layers: int,
                  strategy: str | None = None) -> Strategy:
    """The search ``cfg`` asks for: ``strategy`` if given (a resumed search keeps what
    ``auto`` chose at its start), else ``cfg.strategy`` resolved on the space's size.

    A function under its old class name: callers built the GA and both baselines with it.
    """
    from layersearch.search.space import SearchSpace

    check_settings(cfg)
    space = SearchSpace(cfg, num_student_layers, num_teacher_layers)
    name = resolve_strategy(cfg, space) if strategy is None else strategy
    return STRATEGIES[name](cfg, num_student_layers, num_teacher_layers, space)


def run(
    search: Strategy,
    evaluate: Callable[[list[Genome]], Sequence[float | None]],
    state: GAState | None = None,
    on_generation: Callable[[GAState], None] | None = None,
) -> GAState:
    """Drive `search` to the end; `evaluate` scores a batch of genomes (None = failed).

    `on_generation(state)` runs after each generation is evaluated and advanced (its
    logbook row written): the place to checkpoint `state.to_json()`. Pass a loaded
    `state` to resume.
    """
    state = search.start() if state is None else state
    while not search.done(state):
        todo = search.pending(state)
        if todo:
            scores = list(evaluate(todo))
            if len(scores) != len(todo):
                raise ValueError(f"evaluate returned {len(scores)} scores for {len(todo)} genomes")
            search.tell(state, dict(zip(todo, scores, strict=True)))
        state = search.advance(state)
        if on_generation is not None:
            on_generation(state)
    return state
