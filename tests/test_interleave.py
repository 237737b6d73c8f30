"""Team-draft interleaving and multileaving on hand-worked examples, and credit from clicks.

The expected lists were drafted by hand: ``First`` breaks every tie for the lowest-numbered eligible
team, ``Last`` for the highest, so each step of the draft is forced.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import pytest

from twostage_search.engine.interleave import Interleaving, clicks_per_team, outcomes, seed_of, team_draft


class First:
    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def choice(self, seq: Sequence[int]) -> int:
        self.asked.append(list(seq))
        return seq[0]


class Last:
    def choice(self, seq: Sequence[int]) -> int:
        return seq[-1]


A = ["a", "b", "c", "d"]
B = ["b", "a", "e", "f"]


def test_team_draft_first_team_wins_every_coin():
    # 1: tie, A places a; 2: B has fewer, places b; 3: tie, A: b is taken, places c; 4: B: b, a taken, places e
    rng = First()
    assert team_draft([A, B], 4, rng) == Interleaving(("a", "b", "c", "e"), (0, 1, 0, 1))
    assert rng.asked == [[0, 1], [0, 1]]  # a coin only when the teams have as many picks


def test_team_draft_second_team_wins_every_coin():
    # 1: tie, B places b; 2: A places a; 3: tie, B: b, a taken, places e; 4: A: a, b taken, places c
    assert team_draft([A, B], 4, Last()) == Interleaving(("b", "a", "e", "c"), (1, 0, 1, 0))


def test_a_ranking_that_runs_out_drops_out_of_the_draft():
    # 1: tie, A places x; 2: B: x taken, places y; 3: A has nothing left, B places z
    assert team_draft([["x"], ["x", "y", "z"]], 5, First()) == Interleaving(("x", "y", "z"), (0, 1, 1))


def test_team_draft_multileaving_three_rankings():
    # 1: all tied, A places a; 2: B and C tied, B: a taken, places d; 3: C alone fewest: d, a taken, places f;
    # 4: C has nothing left, A and B tied, A places b; 5: B alone fewest: a, d taken, places e
    rankings = [["a", "b", "c"], ["a", "d", "e"], ["d", "a", "f"]]
    rng = First()
    assert team_draft(rankings, 5, rng) == Interleaving(("a", "d", "f", "b", "e"), (0, 1, 2, 0, 1))
    assert rng.asked == [[0, 1, 2], [1, 2], [0, 1]]


def test_identical_rankings_and_edge_cases():
    assert team_draft([["a", "b"], ["a", "b"]], 2, First()) == Interleaving(("a", "b"), (0, 1))
    assert team_draft([A, B], 0, First()) == Interleaving((), ())
    assert team_draft([[], []], 3, First()) == Interleaving((), ())
    with pytest.raises(ValueError):
        team_draft([A, B], -1, First())


def test_seeded_by_the_query_id_and_deterministic():
    expected = int.from_bytes(hashlib.blake2b(b"q-7", digest_size=8, person=b"twostage-tdi").digest(), "big")
    assert seed_of("q-7") == expected
    one = team_draft([A, B], 4, random.Random(seed_of("q-7")))
    assert one == team_draft([A, B], 4, random.Random(seed_of("q-7")))
    assert sorted(one.doc_ids) == sorted(set(one.doc_ids))  # no document twice
    # whichever coins fall, each team's documents keep their order in the team's ranking
    for team, ranking in enumerate([A, B]):
        mine = [d for d, t in zip(one.doc_ids, one.teams, strict=True) if t == team]
        assert mine == sorted(mine, key=ranking.index)
    # over many query ids both teams start a list (the coin is fair enough to show both outcomes)
    firsts = {team_draft([A, B], 1, random.Random(seed_of(f"q{i}"))).teams[0] for i in range(50)}
    assert firsts == {0, 1}


def test_credit_goes_to_the_team_that_placed_the_clicked_document():
    placed = Interleaving(("a", "b", "c", "e"), (0, 1, 0, 1))
    assert clicks_per_team(placed, ["a", "c", "a", "not-served"], 2) == [2, 0]  # a clicked twice counts once
    assert clicks_per_team(placed, ["b"], 2) == [0, 1]
    assert clicks_per_team(placed, [], 2) == [0, 0]
    assert placed.team_of("e") == 1 and placed.team_of("zz") is None


def test_outcomes_per_pair():
    assert outcomes([2, 0]) == {(0, 1): "win"}
    assert outcomes([1, 1]) == {(0, 1): "tie"}
    assert outcomes([0, 0]) == {(0, 1): "tie"}
    assert outcomes([1, 0, 2]) == {(0, 1): "win", (0, 2): "loss", (1, 2): "loss"}
