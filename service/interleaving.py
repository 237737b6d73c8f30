"""Serving an interleaved experiment: every arm ranks the query, one team-draft list is served.

In an experiment with ``mode: interleave`` a search runs every arm's pipeline (one after another, on
the request's worker thread, under the request's deadline and budget), merges their top ``k`` with
team-draft interleaving (two arms) or multileaving (more; :mod:`twostage_search.engine.interleave`),
seeded by the query id so the same ``query_id`` always gets the same list, and logs which arm placed
each served document. Costs add up: the merged result carries every arm's stage costs (stages named
``ARM/STAGE``) and the sum of the documents they reranked.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from twostage_search.engine.interleave import seed_of, team_draft
from twostage_search.engine.pipeline import SearchResult
from twostage_search.engine.types import Candidate, RankedList

INTERLEAVED_ARM = "interleaved"
"""The ``arm`` of an interleaved answer (and its admission gate and metrics label)."""


@dataclass(frozen=True, slots=True)
class Interleaved:
    """The served (merged) result, the arms in team order and, per served position, the arm that placed it."""

    result: SearchResult
    arms: tuple[str, ...]
    teams: tuple[str, ...]
    arm_results: Mapping[str, SearchResult]

    def attributes(self) -> dict[str, Any]:
        """What the query record adds: mode, arms, teams per position and each arm's own cost."""
        return {
            "mode": "interleave",
            "arms": list(self.arms),
            "teams": list(self.teams),
            "arm_costs": {name: cost_summary(r) for name, r in self.arm_results.items()},
        }


def cost_summary(result: SearchResult) -> dict[str, float | int]:
    """One arm's cost for one query: milliseconds, documents reranked, tokens and dollars."""
    return {
        "wall_ms": round(result.wall_ms, 3),
        "docs": result.rerank_depth,
        "tokens": result.tokens_in + result.tokens_out,
        "usd": result.usd,
    }


def interleave_results(query_id: str, results: Mapping[str, SearchResult], arms: Sequence[str], k: int) -> Interleaved:
    """Merge the arms' rankings by team draft, seeded by ``query_id``; costs and reranked counts add up."""
    rankings = [results[a].ranking for a in arms]
    merged = team_draft([r.doc_ids for r in rankings], k, random.Random(seed_of(query_id)))
    by_id = {h.doc_id: h for r in reversed(rankings) for h in r}  # the first arm's copy wins
    n = len(merged.doc_ids)
    candidates = [
        Candidate(d, float(n - i), by_id[d].text, by_id[d].title) for i, d in enumerate(merged.doc_ids)
    ]  # served order as scores n..1: the arms' own scores are not comparable
    teams = tuple(arms[t] for t in merged.teams)
    costs = tuple(dataclasses.replace(c, stage=f"{name}/{c.stage}") for name in arms for c in results[name].costs)
    first: dict[str, float] = {}
    for r in results.values():
        first.update({d: s for d, s in r.first_scores.items() if d in by_id})
    reranked = frozenset(d for d, team in zip(merged.doc_ids, teams, strict=True) if d in results[team].reranked_ids)
    result = SearchResult(
        RankedList.from_candidates(rankings[0].query_id, candidates),
        costs,
        sum(results[a].rerank_depth for a in arms),
        None,
        degraded=any(r.degraded for r in results.values()),
        cached=all(r.cached for r in results.values()),
        first_scores=MappingProxyType(first),
        reranked_ids=reranked,
        dropped=sum(r.dropped for r in results.values()),
    )
    return Interleaved(result, tuple(arms), teams, MappingProxyType(dict(results)))


def run_interleaved(runs: Mapping[str, Callable[[], SearchResult]], query_id: str, k: int) -> Interleaved:
    """Run each arm's search (in the order of ``runs``: the experiment's arms) and interleave them."""
    results = {name: run() for name, run in runs.items()}
    return interleave_results(query_id, results, list(runs), k)
