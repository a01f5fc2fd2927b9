"""The ETA's plan (search/progress.py): work expected after the current rung, in plain numbers."""

from __future__ import annotations

from layersearch.config import SearchConfig
from layersearch.search.progress import Work, new_per_generation, planned_work
from layersearch.search.racing import Ladder


def test_new_genomes_per_generation():
    cfg = SearchConfig(population=10, hall_of_fame=3)
    assert new_per_generation(cfg, "ga", 0, pending=10) == 7  # the elites carry their scores
    assert new_per_generation(SearchConfig(population=2, hall_of_fame=5), "ga", 0, pending=2) == 1
    mu = SearchConfig(population=10, variant="mu_plus_lambda", offspring=6)
    assert new_per_generation(mu, "ga", 0, pending=10) == 6
    assert new_per_generation(cfg, "ga", 2, pending=4) == 4  # later: as many as this one brought
    assert new_per_generation(cfg, "random", 0, pending=0) == 1
    assert new_per_generation(cfg, "random", 0, pending=9) == 9


def test_planned_work_adds_the_race_left_later_generations_and_the_final_race():
    ladder = Ladder([0], [0, 1, 2, 3], seeds=[1, 4], reduction=2)  # rungs of 1 and 4 units
    assert planned_work(ladder, 1, 8, None, 0, []) == Work()  # at the top rung, nothing after
    # On rung 0 with 8 entrants: 4 promoted, each distilled again for 3 more units.
    assert planned_work(ladder, 0, 8, None, 0, []) == Work(4, 12)
    # Two later generations of 6 new genomes: 6 x (1, 1) on rung 0, then 3 x (1, 3).
    assert planned_work(ladder, 1, 0, 6, 2, []) == Work(2 * (6 + 3), 2 * (6 + 9))
    # The final race: a newcomer runs every unit, one at rung 0 the rest, one at the top nothing.
    assert planned_work(ladder, 1, 0, None, 0, [-1, 0, 1]) == Work(1 + 1 + 0, 4 + 3 + 0)
