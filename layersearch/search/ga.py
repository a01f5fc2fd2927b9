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

All randomness comes from one `random.Random` whose state lives in `GAState`, so a search
stopped after any generation and resumed from its JSON ends exactly where an uninterrupted
one with the same seed does. Fitness is maximised; a failed evaluation scores -inf.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deap import base, creator

from layersearch.config import ConfigError, SearchConfig

STATE_FORMAT_VERSION = 1
FAILED = float("-inf")  # fitness of a failed evaluation: loses every comparison
# An exhaustive search lists its whole space in generation 0 (and its checkpoint).
EXHAUSTIVE_LIMIT = 100_000

Genome = tuple[int, ...]
Scored = tuple[Genome, float]

# creator classes are process-global; the guard keeps re-imports (tests, Ray workers)
# from triggering DEAP's "class already exists" warning.
if not hasattr(creator, "MappingFitness"):
    creator.create("MappingFitness", base.Fitness, weights=(1.0,))
if not hasattr(creator, "MappingIndividual"):
    creator.create("MappingIndividual", list, fitness=creator.MappingFitness)


# Operators. DEAP's cxUniform, mutUniformInt and selTournament draw from the global
# `random` module; these take the search's private RNG so a run can be replayed.


def cx_uniform(a: list[int], b: list[int], indpb: float, rng: random.Random):
    for i in range(min(len(a), len(b))):
        if rng.random() < indpb:
            a[i], b[i] = b[i], a[i]
    return a, b


def cx_one_point(a: list[int], b: list[int], rng: random.Random):
    size = min(len(a), len(b))
    if size > 1:
        cut = rng.randint(1, size - 1)
        a[cut:], b[cut:] = b[cut:], a[cut:]
    return a, b


def mut_reset(ind: list[int], low: int, up: int, indpb: float, rng: random.Random):
    for i in range(len(ind)):
        if rng.random() < indpb:
            ind[i] = rng.randint(low, up)
    return (ind,)


def mut_step(ind: list[int], low: int, up: int, indpb: float, rng: random.Random):
    for i in range(len(ind)):
        if rng.random() < indpb:
            ind[i] = min(up, max(low, ind[i] + rng.choice((-1, 1))))
    return (ind,)


def sel_tournament(individuals: list, k: int, tournsize: int, rng: random.Random) -> list:
    return [
        max((rng.choice(individuals) for _ in range(tournsize)), key=lambda ind: ind.fitness)
        for _ in range(k)
    ]


@dataclass
class GAState:
    """Everything needed to continue a search; plain data that round-trips through JSON.

    `population` is the generation `generation` (to be evaluated, or being evaluated);
    `fitness[i]` is None until told, FAILED (-inf) for a failed evaluation. `parents` are
    the mu survivors that bred it (mu_plus_lambda only). `evaluated` counts the distinct
    genomes told so far in this generation.
    """

    num_student_layers: int
    num_teacher_layers: int
    generation: int
    population: list[list[int]]
    fitness: list[float | None]
    rng_state: tuple
    parents: list[Scored] = field(default_factory=list)
    hall_of_fame: list[Scored] = field(default_factory=list)
    logbook: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0
    # Every genome scored so far in this search, so bred offspring can avoid them.
    archive: list[Scored] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = self.rng_state
        return {
            "format_version": STATE_FORMAT_VERSION,
            "num_student_layers": self.num_student_layers,
            "num_teacher_layers": self.num_teacher_layers,
            "generation": self.generation,
            "population": [list(g) for g in self.population],
            "fitness": [_encode(f) for f in self.fitness],
            "parents": [{"genes": list(g), "fitness": _encode(f)} for g, f in self.parents],
            "hall_of_fame": [{"genes": list(g), "fitness": _encode(f)} for g, f in self.hall_of_fame],
            "logbook": [dict(r) for r in self.logbook],
            "evaluated": self.evaluated,
            "archive": [{"genes": list(g), "fitness": _encode(f)} for g, f in self.archive],
            "rng_state": [version, list(internal), gauss_next],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GAState:
        if data.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(
                f"GA state has format_version {data.get('format_version')!r}; "
                f"this layersearch reads {STATE_FORMAT_VERSION}"
            )
        version, internal, gauss_next = data["rng_state"]
        return cls(
            num_student_layers=data["num_student_layers"],
            num_teacher_layers=data["num_teacher_layers"],
            generation=data["generation"],
            population=[list(g) for g in data["population"]],
            fitness=[_decode(f) for f in data["fitness"]],
            rng_state=(version, tuple(internal), gauss_next),
            parents=[(tuple(r["genes"]), _decode(r["fitness"])) for r in data["parents"]],
            hall_of_fame=[(tuple(r["genes"]), _decode(r["fitness"])) for r in data["hall_of_fame"]],
            logbook=[dict(r) for r in data["logbook"]],
            evaluated=data["evaluated"],
            archive=[(tuple(r["genes"]), _decode(r["fitness"])) for r in data.get("archive", [])],
        )

    def to_json(self) -> str:
        # allow_nan=False: the file stays strict JSON; failures are encoded as "-inf".
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> GAState:
        return cls.from_dict(json.loads(text))


def _encode(f: float | None) -> float | str | None:
    return "-inf" if f == FAILED else f


def _decode(f: float | str | None) -> float | None:
    return FAILED if f == "-inf" else f


def _as_fitness(value: Any) -> float:
    """None, NaN and infinities are failures; no real score is infinite."""
    if value is None:
        return FAILED
    value = float(value)
    return value if math.isfinite(value) else FAILED


def _individual(genes: Sequence[int], fitness: float | None = None):
    ind = creator.MappingIndividual(genes)
    if fitness is not None:
        ind.fitness.values = (fitness,)
    return ind


def _record(gen: int, evaluated: int, fitness: list[float]) -> dict[str, Any]:
    """Logbook row; statistics over the successful evaluations only (None if there are none)."""
    ok = [f for f in fitness if f != FAILED]
    stats = (max(ok), statistics.fmean(ok), statistics.pstdev(ok), min(ok)) if ok else [None] * 4
    row = {"gen": gen, "evaluated": evaluated, "failed": len(fitness) - len(ok)}
    return row | dict(zip(("best", "mean", "std", "min"), stats, strict=True))


def update_hall_of_fame(hof: list[Scored], scored: list[Scored], size: int) -> list[Scored]:
    """The best `size` distinct genomes so far, best first; failures never enter.

    A stable sort rather than tools.HallOfFame: it round-trips through JSON exactly and
    ties keep the incumbent first, so resumed and uninterrupted runs agree.
    """
    merged = dict(hof)
    for genes, f in scored:
        if f != FAILED:
            merged.setdefault(genes, f)
    return sorted(merged.items(), key=lambda kv: -kv[1])[:size]


class GeneticSearch:
    """DEAP-style GA over mappings of an M-layer student onto an N-layer teacher.

    Generation 0 is the initial population; the search is done once generations
    0 .. generations - 1 have been evaluated and advanced. Variant "simple" is eaSimple
    with the hall of fame's best re-inserted as elites (at most population - 1);
    "mu_plus_lambda" is eaMuPlusLambda with mu = population and lambda = offspring.

    The same state machine runs the baselines a GA must beat: ``strategy:
    random`` draws each generation uniformly from the space (never a genome
    already drawn), and ``exhaustive`` puts the whole space in generation 0.
    """

    def __init__(self, cfg: SearchConfig, num_student_layers: int, num_teacher_layers: int,
                 strategy: str | None = None):
        from layersearch.search.space import SearchSpace

        if cfg.variant == "mu_plus_lambda" and cfg.cxpb + cfg.mutpb > 1:
            # varOr picks one operator per offspring, so the probabilities must share 1.
            raise ConfigError(["search: cxpb + mutpb must be <= 1 for variant mu_plus_lambda"])
        self.cfg = cfg
        self.space = SearchSpace(cfg, num_student_layers, num_teacher_layers)
        self.m, self.n = num_student_layers, num_teacher_layers
        self.low = self.space.low
        self.strategy = resolve_strategy(cfg, self.space) if strategy is None else strategy
        self.toolbox = base.Toolbox()
        if cfg.crossover == "uniform":
            self.toolbox.register("mate", self._per_chromosome_mate(cx_uniform, indpb=cfg.indpb))
        else:
            self.toolbox.register("mate", self._per_chromosome_mate(cx_one_point))
        mutate = mut_reset if cfg.mutation == "reset" else mut_step
        self.toolbox.register("mutate", self._per_chromosome_mutate(mutate, indpb=cfg.indpb))
        self.toolbox.register("select", sel_tournament, tournsize=cfg.tournament_size)

    # Supervision and init genes are two chromosomes: each crosses over and mutates on
    # its own (a crossover point never falls between them; init genes stay in 1..N).
    def _per_chromosome_mate(self, op, **kw):
        def mate(a, b, rng):
            m = self.m
            for lo, hi in ((0, m), (m, len(a))) if self.space.search_init else ((0, m),):
                ca, cb = a[lo:hi], b[lo:hi]
                op(ca, cb, rng=rng, **kw)
                a[lo:hi], b[lo:hi] = ca, cb
            return a, b
        return mate

    def _per_chromosome_mutate(self, op, **kw):
        def mutate(ind, rng):
            for c, (low, up) in enumerate(self.space.bounds()):
                part = ind[c * self.m:(c + 1) * self.m]
                op(part, low=low, up=up, rng=rng, **kw)
                ind[c * self.m:(c + 1) * self.m] = part
            return (ind,)
        return mutate

    @property
    def budget(self) -> int:
        """First-rung evaluations the search may spend: search.budget, else population x generations."""
        return self.cfg.budget if self.cfg.budget is not None else self.cfg.population * self.cfg.generations

    @property
    def generations(self) -> int:
        """Generations to evaluate: one for exhaustive; budget / population when a budget is set."""
        if self.strategy == "exhaustive":
            return 1
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
        """Generation 0: the whole space (exhaustive), fresh uniform draws (random), or
        for the GA the heuristics (if seed_heuristics), then random genomes."""
        rng = random.Random(self.cfg.seed)
        if self.strategy == "exhaustive":
            if self.space.size() > EXHAUSTIVE_LIMIT:
                raise ConfigError([f"search.strategy: exhaustive would race all {self.space.size():,} genomes of "
                                   f"this space (the limit is {EXHAUSTIVE_LIMIT:,}); use ga or random, or "
                                   "constrain the space (monotone, fix_last, allow_zero: false)"])
            pop = [list(g) for g in self.space.enumerate()]
            return GAState(self.m, self.n, 0, pop, [None] * len(pop), rng.getstate())
        size = self.cfg.population
        if self.strategy == "random":
            pop = self._fresh_draws(min(size, self.budget), set(), rng)
            return GAState(self.m, self.n, 0, pop, [None] * len(pop), rng.getstate())
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

    def pending(self, state: GAState) -> list[Genome]:
        """Distinct genomes of the current generation still lacking fitness, in order."""
        self._check(state)
        todo = (tuple(g) for g, f in zip(state.population, state.fitness, strict=True) if f is None)
        return list(dict.fromkeys(todo))

    def tell(self, state: GAState, fitness: dict[Genome, float | None]) -> None:
        """Fill in fitness by genome (extra genomes are ignored); None/NaN/inf = failed."""
        scores = {tuple(int(g) for g in k): _as_fitness(v) for k, v in fitness.items()}
        newly: set[Genome] = set()
        for i, genes in enumerate(state.population):
            key = tuple(genes)
            if key in scores:
                if state.fitness[i] is None:
                    newly.add(key)
                state.fitness[i] = scores[key]
        state.evaluated += len(newly)

    def advance(self, state: GAState) -> GAState:
        """Record the evaluated generation (hall of fame, logbook), breed the next one.

        Pure: `state` is left untouched. The new population is bred even when the search
        is done, so a finished search can be extended by raising cfg.generations.
        """
        self._check(state)
        if any(f is None for f in state.fitness):
            raise ValueError(
                f"generation {state.generation}: {len(self.pending(state))} genome(s) "
                "still lack fitness; tell() them first"
            )
        cfg = self.cfg
        scored = [(tuple(g), f) for g, f in zip(state.population, state.fitness, strict=True)]
        hof = update_hall_of_fame(state.hall_of_fame, scored, cfg.hall_of_fame)
        logbook = state.logbook + [_record(state.generation, state.evaluated, state.fitness)]
        rng = random.Random()
        rng.setstate(state.rng_state)
        pop = [_individual(g, f) for g, f in scored]
        parents: list[Scored] = []
        known = dict(state.archive) | dict(state.parents) | dict(scored) | dict(hof)
        if self.strategy in ("random", "exhaustive"):
            # No breeding: random draws genomes it has not drawn; exhaustive has drawn them all.
            # Random search draws exactly its budget: the last generation may be smaller.
            left = self.budget - len(known) if self.strategy == "random" else 0
            fresh = self._fresh_draws(min(cfg.population, left), set(known), rng) if left > 0 else []
            return GAState(self.m, self.n, state.generation + 1, fresh, [None] * len(fresh), rng.getstate(),
                           hall_of_fame=hof, logbook=logbook, archive=list(known.items()))
        if cfg.variant == "simple":
            # Elitism: the hall of fame's best re-enter unchanged, so selection and
            # variation can never lose the best mapping found.
            n_elite = min(len(hof), cfg.population - 1)
            chosen = self.toolbox.select(pop, cfg.population - n_elite, rng=rng)
            offspring = self._vary_and(chosen, rng) + [_individual(g) for g, _ in hof[:n_elite]]
        else:
            pool = [_individual(g, f) for g, f in state.parents] + pop
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
            logbook=logbook,
            archive=list(known.items()),
        )

    def done(self, state: GAState) -> bool:
        """True once generations 0 .. generations - 1 have been advanced (or nothing is left to draw)."""
        return state.generation >= self.generations or (state.generation > 0 and not state.population)

    def rescore(self, state: GAState, fitness: dict[Genome, float]) -> None:
        """Replace the fitness of genomes scored before, wherever the state holds them.

        Racing promotes a genome to more seeds after its first score: the hall of
        fame, the parents and the archive must rank it by its better-founded score.
        """
        fix = {tuple(int(g) for g in k): _as_fitness(v) for k, v in fitness.items()}

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

    def _check(self, state: GAState) -> None:
        if (state.num_student_layers, state.num_teacher_layers) != (self.m, self.n):
            raise ValueError(
                f"GA state is for {state.num_student_layers} student / "
                f"{state.num_teacher_layers} teacher layers, this search for {self.m} / {self.n}"
            )


def resolve_strategy(cfg: SearchConfig, space) -> str:
    """auto: enumerate when the space holds no more genomes than the budget, else the GA."""
    if cfg.strategy != "auto":
        return cfg.strategy
    budget = cfg.budget if cfg.budget is not None else cfg.population * cfg.generations
    return "exhaustive" if space.size() <= budget else "ga"


def run(
    search: GeneticSearch,
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
