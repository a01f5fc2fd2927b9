"""Search strategies behind one interface, and the two baselines a GA must beat.

A strategy proposes genomes a generation at a time and never scores them
itself (evaluations run on Ray workers); the driver runs every strategy the
same way, without asking which one it has:

    state = strategy.start()
    while not strategy.done(state):
        todo = strategy.pending(state)            # distinct genomes still lacking fitness
        strategy.tell(state, {g: fitness(g) for g in todo})
        strategy.rescore(state, better_founded)   # racing may revise earlier scores
        state = strategy.advance(state)           # hall of fame, logbook, next generation
    strategy.best(state)

``Strategy`` holds what they share (budget, bookkeeping of fitness, hall of
fame and logbook); each strategy only says how generation 0 is drawn
(``start``) and how the next one is (``_next``). ``random`` draws uniformly
from the space, never a genome already drawn; ``exhaustive`` puts the whole
space in generation 0. The GA is ga.py.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from layersearch.config import ConfigError, SearchConfig
from layersearch.search.state import FAILED, GAState, Genome, Scored, as_fitness, logbook_row, update_hall_of_fame

# An exhaustive search lists its whole space in generation 0 (and its checkpoint).
EXHAUSTIVE_LIMIT = 100_000


def resolve_strategy(cfg: SearchConfig, space) -> str:
    """auto: enumerate when the space holds no more genomes than the budget, else the GA."""
    if cfg.strategy != "auto":
        return cfg.strategy
    budget = cfg.budget if cfg.budget is not None else cfg.population * cfg.generations
    return "exhaustive" if space.size() <= budget else "ga"


def check_settings(cfg: SearchConfig) -> None:
    """Refuse GA settings it cannot run, whatever the strategy: ``auto`` resolves
    again on resume, and a raised budget can turn an enumeration into a GA."""
    if cfg.variant == "mu_plus_lambda" and cfg.cxpb + cfg.mutpb > 1:
        # varOr picks one operator per offspring, so the probabilities must share 1.
        raise ConfigError(["search: cxpb + mutpb must be <= 1 for variant mu_plus_lambda"])


@dataclass
class Evaluated:
    """A generation once every genome has its fitness, as every strategy records it."""

    scored: list[Scored]  # its genomes and their fitness, in population order
    hall_of_fame: list[Scored]  # updated with them
    logbook: list[dict]  # with its row added
    known: dict[Genome, float]  # every genome scored so far in the search


class Strategy:
    """What every strategy shares; subclasses give ``strategy``, ``start`` and ``_next``."""

    strategy: str  # the name search.strategy resolves to, saved in the checkpoint

    def __init__(self, cfg: SearchConfig, num_student_layers: int, num_teacher_layers: int, space=None):
        from layersearch.search.space import SearchSpace

        check_settings(cfg)
        self.cfg = cfg
        self.space = SearchSpace(cfg, num_student_layers, num_teacher_layers) if space is None else space
        self.m, self.n = num_student_layers, num_teacher_layers
        self.low = self.space.low

    @property
    def budget(self) -> int:
        """First-rung evaluations the search may spend: search.budget, else population x generations."""
        return self.cfg.budget if self.cfg.budget is not None else self.cfg.population * self.cfg.generations

    @property
    def generations(self) -> int:
        """Generations to evaluate: budget / population when a budget is set."""
        if self.cfg.budget is not None:
            return max(1, -(-self.cfg.budget // self.cfg.population))
        return self.cfg.generations

    def repair(self, genes: Sequence[int]) -> list[int]:
        """Project genes onto the search space (see SearchSpace.repair)."""
        return self.space.repair(genes)

    def heuristic_genomes(self) -> list[list[int]]:
        return self.space.heuristic_genomes()

    def random_genome(self, rng: random.Random) -> list[int]:
        return self.space.random_genome(rng)

    def start(self) -> GAState:
        """Generation 0."""
        raise NotImplementedError

    def _next(self, state: GAState, done: Evaluated, rng: random.Random) -> GAState:
        """Generation ``state.generation + 1``, drawn with ``rng`` (the state's, restored)."""
        raise NotImplementedError

    def pending(self, state: GAState) -> list[Genome]:
        """Distinct genomes of the current generation still lacking fitness, in order."""
        self._check(state)
        todo = (tuple(g) for g, f in zip(state.population, state.fitness, strict=True) if f is None)
        return list(dict.fromkeys(todo))

    def tell(self, state: GAState, fitness: dict[Genome, float | None]) -> None:
        """Fill in fitness by genome (extra genomes are ignored); None/NaN/inf = failed."""
        scores = {tuple(int(g) for g in k): as_fitness(v) for k, v in fitness.items()}
        newly: set[Genome] = set()
        for i, genes in enumerate(state.population):
            key = tuple(genes)
            if key in scores:
                if state.fitness[i] is None:
                    newly.add(key)
                state.fitness[i] = scores[key]
        state.evaluated += len(newly)

    def advance(self, state: GAState) -> GAState:
        """Record the evaluated generation (hall of fame, logbook), draw the next one.

        Pure: `state` is left untouched. The next population is drawn even when the search
        is done, so a finished search can be extended by raising cfg.generations.
        """
        self._check(state)
        if any(f is None for f in state.fitness):
            raise ValueError(
                f"generation {state.generation}: {len(self.pending(state))} genome(s) "
                "still lack fitness; tell() them first"
            )
        scored = [(tuple(g), f) for g, f in zip(state.population, state.fitness, strict=True)]
        hof = update_hall_of_fame(state.hall_of_fame, scored, self.cfg.hall_of_fame)
        logbook = state.logbook + [logbook_row(state.generation, state.evaluated, state.fitness)]
        rng = random.Random()
        rng.setstate(state.rng_state)
        known = dict(state.archive) | dict(state.parents) | dict(scored) | dict(hof)
        return self._next(state, Evaluated(scored, hof, logbook, known), rng)

    def done(self, state: GAState) -> bool:
        """True once generations 0 .. generations - 1 have been advanced (or nothing is left to draw)."""
        return state.generation >= self.generations or (state.generation > 0 and not state.population)

    def rescore(self, state: GAState, fitness: dict[Genome, float]) -> None:
        """Replace the fitness of genomes scored before, wherever the state holds them.

        Racing promotes a genome to more seeds after its first score: the hall of
        fame, the parents and the archive must rank it by its better-founded score.
        """
        fix = {tuple(int(g) for g in k): as_fitness(v) for k, v in fitness.items()}

        def scored(rows: list[Scored]) -> list[Scored]:
            return [(g, fix.get(tuple(g), f)) for g, f in rows]

        state.fitness = [fix.get(tuple(g), f) if f is not None else f
                         for g, f in zip(state.population, state.fitness, strict=True)]
        state.parents, state.archive = scored(state.parents), scored(state.archive)
        # A member that failed when promoted leaves the hall of fame: failures never enter it.
        state.hall_of_fame = sorted(((g, f) for g, f in scored(state.hall_of_fame) if f != FAILED),
                                    key=lambda kv: -kv[1])

    def best(self, state: GAState) -> Scored | None:
        """Best (genes, fitness) recorded so far, or None if every evaluation failed."""
        return state.hall_of_fame[0] if state.hall_of_fame else None

    def _check(self, state: GAState) -> None:
        if (state.num_student_layers, state.num_teacher_layers) != (self.m, self.n):
            raise ValueError(
                f"GA state is for {state.num_student_layers} student / "
                f"{state.num_teacher_layers} teacher layers, this search for {self.m} / {self.n}"
            )


class RandomSearch(Strategy):
    """Uniform draws from the space, never one already drawn, exactly ``budget`` in all:
    the baseline a search method must beat."""

    strategy = "random"

    def start(self) -> GAState:
        rng = random.Random(self.cfg.seed)
        pop = self._fresh_draws(min(self.cfg.population, self.budget), set(), rng)
        return GAState(self.m, self.n, 0, pop, [None] * len(pop), rng.getstate())

    def _next(self, state: GAState, done: Evaluated, rng: random.Random) -> GAState:
        # The budget is drawn exactly: the last generation may be smaller.
        left = self.budget - len(done.known)
        fresh = self._fresh_draws(min(self.cfg.population, left), set(done.known), rng) if left > 0 else []
        return GAState(self.m, self.n, state.generation + 1, fresh, [None] * len(fresh), rng.getstate(),
                       hall_of_fame=done.hall_of_fame, logbook=done.logbook, archive=list(done.known.items()))

    def _fresh_draws(self, size: int, taken: set, rng: random.Random) -> list[list[int]]:
        """Up to ``size`` distinct uniform draws from the space, none of them in ``taken``."""
        listed = self.space.listed()
        if listed is not None:
            left = [g for g in listed if g not in taken]
            return [list(g) for g in rng.sample(left, min(size, len(left)))]
        out, seen = [], set(taken)
        for _ in range(50 * size):
            if len(out) == size:
                break
            g = self.space.uniform_genome(rng)
            if tuple(g) not in seen:
                seen.add(tuple(g))
                out.append(g)
        return out


class ExhaustiveSearch(Strategy):
    """The whole space in generation 0, raced like any generation; nothing is left to draw after it."""

    strategy = "exhaustive"

    @property
    def generations(self) -> int:
        return 1

    def start(self) -> GAState:
        rng = random.Random(self.cfg.seed)
        if self.space.size() > EXHAUSTIVE_LIMIT:
            raise ConfigError([f"search.strategy: exhaustive would race all {self.space.size():,} genomes of "
                               f"this space (the limit is {EXHAUSTIVE_LIMIT:,}); use ga or random, or "
                               "constrain the space (monotone, fix_last, allow_zero: false)"])
        pop = [list(g) for g in self.space.enumerate()]
        return GAState(self.m, self.n, 0, pop, [None] * len(pop), rng.getstate())

    def _next(self, state: GAState, done: Evaluated, rng: random.Random) -> GAState:
        return GAState(self.m, self.n, state.generation + 1, [], [], rng.getstate(),
                       hall_of_fame=done.hall_of_fame, logbook=done.logbook, archive=list(done.known.items()))
