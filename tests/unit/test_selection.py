"""The search's statistical policy (search/selection.py) on tables whose answer is known."""

from __future__ import annotations

import math

from layersearch.search.selection import choose_winner, elites_to_promote, final_race_entrants

FAILED = float("-inf")


def test_elites_below_the_top_rung_are_promoted_once_and_then_reported_stuck():
    hof = [("a", 0.5), ("b", 0.4), ("c", FAILED), ("d", 0.3)]
    rung = {"a": 0, "b": 2, "c": 0, "d": 1}
    promote, stuck = elites_to_promote(hof, rung.get, 2, set(), FAILED)
    assert promote == ["a", "d"] and stuck == []  # b holds every unit; a failure is never promoted
    promote, stuck = elites_to_promote(hof, rung.get, 2, {"a"}, FAILED)  # a's promotion did not take
    assert promote == ["d"] and stuck == ["a"]


def test_final_race_takes_the_heuristics_first_then_the_best_by_standing_each_once():
    standing = {"x": 0.30, "y": 0.45, "uniform": 0.40, "z": None, "f": FAILED, "w": 0.35}
    assert final_race_entrants(standing, 2, ["uniform", "last"], FAILED) == ["uniform", "last", "y"]
    assert final_race_entrants(standing, 3, ["uniform"], FAILED) == ["uniform", "y", "w"]
    assert final_race_entrants(standing, 0, ["uniform"], FAILED) == []
    genomes = {(2, 4, 6): 0.4, (1, 2, 3): 0.5}  # the driver's genomes are tuples, hashable
    assert final_race_entrants(genomes, 1, [(2, 4, 6)], FAILED) == [(2, 4, 6), (1, 2, 3)]


def test_winner_is_the_best_top_rung_mean_ties_to_the_first_key():
    assert choose_winner({"b": 0.4, "a": 0.4, "c": None, "d": math.nan}) == "a"
    assert choose_winner({"b": 0.41, "a": 0.4}) == "b"
    assert choose_winner({"a": None}) is None and choose_winner({}) is None
