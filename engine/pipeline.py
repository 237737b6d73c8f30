"""The two stages composed explicitly: ``TwoStage(retriever, reranker).search(query, k)``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.cost import StageCost
from engine.errors import InputError
from engine.protocols import ReportsCost, Reranker, Retriever
from engine.types import Candidate, Query, RankedList


@dataclass(frozen=True, slots=True)
class SearchResult:
    """A ranking with what each stage cost to produce it."""

    ranking: RankedList
    costs: tuple[StageCost, ...]
    rerank_depth: int

    @property
    def wall_ms(self) -> float:
        return sum(c.wall_ms for c in self.costs)


def merge_cascade(query_id: str, reranked: RankedList, rest: list[Candidate]) -> RankedList:
    """Reranked candidates on top, the rest below in first-stage order, with monotone scores.

    The reranked block keeps the reranker's scores; each candidate below it gets a score strictly lower
    than everything above it (``min - 1``, ``min - 2``, ...), so the list stays sorted and the tail keeps its
    first-stage order, as cascades are served.
    """
    if not rest:
        return reranked
    floor = min((h.score for h in reranked), default=0.0)
    tail = [Candidate(c.doc_id, floor - 1.0 - i, c.text, c.title) for i, c in enumerate(rest)]
    return RankedList.from_candidates(query_id, [*reranked.candidates(), *tail])


class TwoStage:
    """Retrieve ``depth`` candidates, rerank the top ``rerank_depth`` of them, return the top ``k``.

    Candidates beyond ``rerank_depth`` keep their first-stage order below the reranked ones.

    Args:
        retriever: the first stage.
        reranker: the second stage (``IdentityReranker`` keeps the first-stage order).
        depth: first-stage candidates per query (raised to ``k`` when ``k`` is larger).
        rerank_depth: how many of them the reranker sees (default: all ``depth``).
    """

    def __init__(
        self, retriever: Retriever, reranker: Reranker, *, depth: int = 100, rerank_depth: int | None = None
    ) -> None:
        if depth < 1:
            raise InputError("depth must be at least 1")
        if rerank_depth is not None and rerank_depth < 0:
            raise InputError("rerank_depth must be non-negative")
        self.retriever = retriever
        self.reranker = reranker
        self.depth = depth
        self.rerank_depth = depth if rerank_depth is None else rerank_depth

    def search(self, query: Query | str, k: int = 10, *, rerank_depth: int | None = None) -> RankedList:
        return self.run(query, k, rerank_depth=rerank_depth).ranking

    def run(self, query: Query | str, k: int = 10, *, rerank_depth: int | None = None) -> SearchResult:
        """Search and account each stage's cost. ``rerank_depth`` overrides the configured one."""
        if isinstance(query, str):
            query = Query("q", query)
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        depth_r = self.rerank_depth if rerank_depth is None else rerank_depth
        if depth_r < 0:
            raise InputError("rerank_depth must be non-negative")
        started = time.perf_counter()
        first = self.retriever.retrieve(query, max(self.depth, k))
        costs = [StageCost("retrieve", (time.perf_counter() - started) * 1000, docs=len(first))]
        candidates = first.candidates()
        head, rest = candidates[:depth_r], candidates[depth_r:]
        if head:
            reranked, cost = self._rerank(query, head)
            costs.append(cost)
        else:
            reranked = RankedList(query.query_id)
        ranking = merge_cascade(query.query_id, reranked, rest).head(k)
        return SearchResult(ranking, tuple(costs), len(head))

    def _rerank(self, query: Query, head: list[Candidate]) -> tuple[RankedList, StageCost]:
        if isinstance(self.reranker, ReportsCost):
            return self.reranker.rerank_with_cost(query, head)
        started = time.perf_counter()
        ranking = self.reranker.rerank(query, head)
        return ranking, StageCost("rerank", (time.perf_counter() - started) * 1000, docs=len(head))
