"""Team-draft interleaving and multileaving, and credit from clicks.

Team-draft interleaving (Radlinski, Kurup & Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008) merges two rankings like captains picking teams: in every round the team with
fewer picks so far (a coin decides a tie) adds its highest-ranked document not yet in the merged list.
Each served document belongs to the team that placed it; a click credits that team, and the team with
more clicked documents wins the query (equal counts: a tie).

Team-draft multileaving (Schuth, Sietsma, Whiteson, Lefortier & de Rijke, "Multileaved comparisons for
fast online evaluation", CIKM 2014) is the same draft over any number of rankings: the teams with the
fewest picks so far are the candidates and a random one of them picks next. With two rankings it is
team-draft interleaving. A ranking with nothing left to add drops out of the draft, so the merged list
is as long as ``k`` or the union of the rankings, whichever is shorter (as in mpkato/interleaving's
``TeamDraft.multileave``). Credit for a pair of teams compares their click counts on the same query.

The functions are pure: the random tie-breaks come from the ``rng`` passed in (for serving, a
``random.Random`` seeded by :func:`seed_of` the query id, so a query id always gets the same list).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Interleaving", "Outcome", "TieBreaker", "clicks_per_team", "outcomes", "seed_of", "team_draft"]

Outcome = Literal["win", "tie", "loss"]


class TieBreaker(Protocol):
    """What the draft needs from a random generator (``random.Random`` has it)."""

    def choice(self, seq: Sequence[int], /) -> int: ...


@dataclass(frozen=True, slots=True)
class Interleaving:
    """A merged list and, per position, the index of the ranking (team) that placed the document there."""

    doc_ids: tuple[str, ...]
    teams: tuple[int, ...]

    def team_of(self, doc_id: str) -> int | None:
        """The team that placed ``doc_id``; ``None`` if it was not served."""
        for d, t in zip(self.doc_ids, self.teams, strict=True):
            if d == doc_id:
                return t
        return None


def seed_of(query_id: str) -> int:
    """A stable 64-bit seed from a query id (blake2b; never Python's salted ``hash``)."""
    digest = hashlib.blake2b(query_id.encode(), digest_size=8, person=b"twostage-tdi").digest()
    return int.from_bytes(digest, "big")


def team_draft(rankings: Sequence[Sequence[str]], k: int, rng: TieBreaker) -> Interleaving:
    """Team-draft interleave (two rankings) or multileave (more) the document ids of ``rankings``.

    Each step, among the teams that still have a document not yet placed, those with the fewest picks
    are eligible; ``rng.choice`` picks one of their indices (in increasing order) when more than one is
    eligible, and that team places its highest-ranked unplaced document. Stops at ``k`` documents or
    when no team has anything left.
    """
    if k < 0:
        raise ValueError("k must be non-negative")
    placed: set[str] = set()
    doc_ids: list[str] = []
    teams: list[int] = []
    picks = [0] * len(rankings)
    cursor = [0] * len(rankings)  # next position of each ranking to look at

    def next_doc(team: int) -> str | None:
        ranking = rankings[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in placed:
            cursor[team] += 1
        return ranking[cursor[team]] if cursor[team] < len(ranking) else None

    while len(doc_ids) < k:
        live = [t for t in range(len(rankings)) if next_doc(t) is not None]
        if not live:
            break
        fewest = min(picks[t] for t in live)
        eligible = [t for t in live if picks[t] == fewest]
        team = eligible[0] if len(eligible) == 1 else rng.choice(eligible)
        doc = next_doc(team)
        assert doc is not None
        placed.add(doc)
        doc_ids.append(doc)
        teams.append(team)
        picks[team] += 1
    return Interleaving(tuple(doc_ids), tuple(teams))


def clicks_per_team(interleaving: Interleaving, clicked: Iterable[str], n_teams: int) -> list[int]:
    """Clicked documents credited to the team that placed each (a document clicked twice counts once).

    Clicks on documents that were not served are ignored.
    """
    credit = [0] * n_teams
    for doc_id in set(clicked):
        team = interleaving.team_of(doc_id)
        if team is not None:
            credit[team] += 1
    return credit


def outcomes(credit: Sequence[int]) -> Mapping[tuple[int, int], Outcome]:
    """Per pair of teams ``(i, j)``, ``i < j``: ``"win"`` if team i got more clicks than j, else tie/loss."""
    result: dict[tuple[int, int], Outcome] = {}
    for i in range(len(credit)):
        for j in range(i + 1, len(credit)):
            result[(i, j)] = "win" if credit[i] > credit[j] else "loss" if credit[i] < credit[j] else "tie"
    return result
