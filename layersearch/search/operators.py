"""The GA's operators: crossover, mutation, tournament selection, on DEAP individuals.

DEAP's cxUniform, mutUniformInt and selTournament draw from the global
`random` module; these take the search's private RNG, whose state lives in
GAState, so a run can be replayed and resumed draw for draw.

A genome is one chromosome (the supervision genes) or two (supervision, then
init genes with ``search.search_init``): ``per_chromosome`` wraps an operator
so each chromosome crosses over and mutates on its own, within its own bounds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from deap import base, creator

# creator classes are process-global; the guard keeps re-imports (tests, Ray workers)
# from triggering DEAP's "class already exists" warning.
if not hasattr(creator, "MappingFitness"):
    creator.create("MappingFitness", base.Fitness, weights=(1.0,))
if not hasattr(creator, "MappingIndividual"):
    creator.create("MappingIndividual", list, fitness=creator.MappingFitness)


def individual(genes: Sequence[int], fitness: float | None = None):
    """A DEAP individual (a list of genes with a fitness), as selection compares them."""
    ind = creator.MappingIndividual(genes)
    if fitness is not None:
        ind.fitness.values = (fitness,)
    return ind


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


# Supervision and init genes are two chromosomes: each crosses over and mutates on
# its own (a crossover point never falls between them; init genes stay in 1..N).
def per_chromosome_mate(op, space, **kw):
    """``op`` (a cx_*) applied to each chromosome of two genomes of ``space`` in turn."""
    def mate(a, b, rng):
        m = space.m
        for lo, hi in ((0, m), (m, len(a))) if space.search_init else ((0, m),):
            ca, cb = a[lo:hi], b[lo:hi]
            op(ca, cb, rng=rng, **kw)
            a[lo:hi], b[lo:hi] = ca, cb
        return a, b
    return mate


def per_chromosome_mutate(op, space, **kw):
    """``op`` (a mut_*) applied to each chromosome of a genome of ``space``, within its bounds."""
    def mutate(ind, rng):
        m = space.m
        for c, (low, up) in enumerate(space.bounds()):
            part = ind[c * m:(c + 1) * m]
            op(part, low=low, up=up, rng=rng, **kw)
            ind[c * m:(c + 1) * m] = part
        return (ind,)
    return mutate
