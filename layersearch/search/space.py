"""The constrained space of genomes a search draws from: repair, size, enumeration.

A genome is the M supervision genes (teacher layer 0..N per student layer,
0 = unsupervised), followed, with ``search.search_init``, by M init genes
(the teacher layer 1..N each student layer is initialised from). The space is
the set of genomes that ``repair`` leaves unchanged; its size decides whether
``strategy: auto`` enumerates it, and ``enumerate`` lists it in lexicographic
order without walking the unconstrained product.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from math import comb

from layersearch.config import SearchConfig
from layersearch.mapping import HEURISTICS, Mapping, MappingError, heuristic

# Spaces up to this size are listed so random search can draw uniformly from them.
LISTABLE = 200_000


class SearchSpace:
    def __init__(self, cfg: SearchConfig, num_student_layers: int, num_teacher_layers: int):
        if num_student_layers < 1 or num_teacher_layers < 1:
            raise ValueError("student and teacher need at least one layer each")
        self.m, self.n = num_student_layers, num_teacher_layers
        self.low = 0 if cfg.allow_zero else 1
        self.monotone, self.fix_last, self.search_init = cfg.monotone, cfg.fix_last, cfg.search_init
        self.length = 2 * self.m if self.search_init else self.m
        self._listed: list[tuple[int, ...]] | None = None

    # --- genomes and mappings ------------------------------------------------
    def chromosomes(self, genome: Sequence[int]) -> list[list[int]]:
        """[supervision] or [supervision, init]: each varies on its own."""
        g = list(genome)
        return [g[: self.m], g[self.m:]] if self.search_init else [g]

    def bounds(self) -> list[tuple[int, int]]:
        """(low, high) of each chromosome's genes: init genes never name layer 0."""
        return [(self.low, self.n), (1, self.n)] if self.search_init else [(self.low, self.n)]

    def mapping(self, genome: Sequence[int]) -> Mapping:
        genes = tuple(int(g) for g in genome)
        if self.search_init:
            return Mapping(genes[: self.m], self.n, init=genes[self.m:])
        return Mapping(genes, self.n)

    def genome(self, mapping: Mapping) -> tuple[int, ...]:
        return tuple(mapping.genes) + (tuple(mapping.init or ()) if self.search_init else ())

    def repair(self, genome: Sequence[int]) -> list[int]:
        """Project a genome onto the space; deterministic and idempotent.

        Supervision: clamp to the gene range, pin the last gene to N (fix_last, or
        when every gene is 0: a mapping must supervise something), then sort the
        non-zero genes in their slots (monotone), leaving 0s where they are.
        Init: clamp to 1..N, sorted when monotone (students keep the teacher's order).
        """
        if len(genome) != self.length:
            raise ValueError(f"{len(genome)} genes for a {self.m}-layer student"
                             + (" (supervision + init genes)" if self.search_init else ""))
        parts = self.chromosomes([int(g) for g in genome])
        out = [min(self.n, max(self.low, g)) for g in parts[0]]
        if self.fix_last or not any(out):
            out[-1] = self.n
        if self.monotone:
            slots = [i for i, g in enumerate(out) if g]
            for i, g in zip(slots, sorted(out[i] for i in slots), strict=True):
                out[i] = g
        if self.search_init:
            init = [min(self.n, max(1, g)) for g in parts[1]]
            out += sorted(init) if self.monotone else init
        return out

    def contains(self, genome: Sequence[int]) -> bool:
        return len(genome) == self.length and self.repair(genome) == list(genome)

    # --- size and enumeration --------------------------------------------------
    def size(self) -> int:
        """How many genomes the space holds (a closed form; nothing is listed)."""
        return self._supervision_size() * (self._init_size() if self.search_init else 1)

    def _supervision_size(self) -> int:
        m, n = self.m, self.n
        free = m - 1 if self.fix_last else m  # the genes not pinned to N
        if not self.monotone:
            total = (n - self.low + 1) ** free
            # Without fix_last an all-zero genome repairs to [0, .., N]: not a member.
            return total - (1 if self.low == 0 and not self.fix_last else 0)

        def ascending(k: int) -> int:  # non-decreasing sequences of k layers in 1..N
            return comb(n + k - 1, k)

        if self.low == 1:
            return comb(n + m - 2, m - 1) if self.fix_last else ascending(m)
        # Zeros anywhere among the free genes; the non-zero ones ascend (and with
        # fix_last end at N, which every layer is at most).
        if self.fix_last:
            return sum(comb(free, z) * ascending(free - z) for z in range(free + 1))
        return sum(comb(m, z) * ascending(m - z) for z in range(m))  # at least one non-zero

    def _init_size(self) -> int:
        return comb(self.n + self.m - 1, self.m) if self.monotone else self.n ** self.m

    def enumerate(self) -> Iterator[tuple[int, ...]]:
        """Every genome of the space, in lexicographic order."""
        inits = list(self._inits()) if self.search_init else [()]
        for sup in self._supervisions():
            for init in inits:
                yield sup + init

    def _supervisions(self) -> Iterator[tuple[int, ...]]:
        m, n = self.m, self.n

        def walk(prefix: tuple[int, ...], floor: int) -> Iterator[tuple[int, ...]]:
            i = len(prefix)
            if i == m:
                if any(prefix):
                    yield prefix
                return
            if i == m - 1 and self.fix_last:
                yield prefix + (n,)  # n >= floor always
                return
            choices = ([0] if self.low == 0 else []) + list(range(floor if self.monotone else 1, n + 1))
            for g in choices:
                yield from walk(prefix + (g,), g if g else floor)

        yield from walk((), 1)

    def _inits(self) -> Iterator[tuple[int, ...]]:
        layers = range(1, self.n + 1)
        if self.monotone:
            return itertools.combinations_with_replacement(layers, self.m)
        return itertools.product(layers, repeat=self.m)

    def listed(self) -> list[tuple[int, ...]] | None:
        """The whole space as a list when it is small enough to hold, else None."""
        if self._listed is None and self.size() <= LISTABLE:
            self._listed = list(self.enumerate())
        return self._listed

    # --- drawing ---------------------------------------------------------------
    def random_genome(self, rng: random.Random) -> list[int]:
        """Uniform over the unconstrained genes, then repaired (what the GA mutates from)."""
        bounds = [b for (lo, hi) in self.bounds() for b in [(lo, hi)] * self.m]
        return self.repair([rng.randint(lo, hi) for lo, hi in bounds])

    def uniform_genome(self, rng: random.Random) -> list[int]:
        """Uniform over the space itself where it can be listed: random search's draw.

        Repairing uniform genes is not uniform over the space (sorting favours
        some genomes), which would bias the baseline the GA is measured against.
        """
        listed = self.listed()
        return list(rng.choice(listed)) if listed is not None else self.random_genome(rng)

    def uniform(self) -> Mapping:
        """TinyBERT's uniform mapping, the one a search's winner is tested against; with init
        genes it initialises from the layers it supervises."""
        mapping = heuristic("uniform", self.m, self.n)
        return mapping.with_init(mapping.genes) if self.search_init else mapping

    def heuristic_genomes(self) -> list[list[int]]:
        """The named heuristics that lie in the space, deduplicated.

        With init genes, a heuristic initialises from the layers it supervises
        (a 0 gene's layer from uniform's), as the literature's students do.
        """
        found: list[list[int]] = []
        uniform = heuristic("uniform", self.m, self.n).genes
        for name in HEURISTICS:
            try:
                genes = list(heuristic(name, self.m, self.n).genes)
            except MappingError:  # lower/upper for a student deeper than the teacher
                continue
            if self.search_init:
                genes += [g or u for g, u in zip(genes, uniform, strict=True)]
            # Skipped rather than repaired: a repaired heuristic is no longer the
            # literature mapping its name promises.
            if self.repair(genes) == genes and genes not in found:
                found.append(genes)
        return found
