"""One call for every reranker and retriever: the ranking plus what each stage cost.

A reranker may account its own cost (:class:`~twostage_search.engine.protocols.ReportsCost`), report one
record per internal stage (:class:`~twostage_search.engine.protocols.ReportsStageCosts`, a cascade), or
neither (then it is timed from outside). :func:`costed_reranker` looks once, at construction, and returns
a callable with the same shape for all three, so the hot path never asks again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from twostage_search.engine.cost import StageCost
from twostage_search.engine.protocols import ReportsCost, ReportsRetrievalCost, ReportsStageCosts, Reranker, Retriever
from twostage_search.engine.types import Candidate, Query, RankedList

RerankCall = Callable[[Query, Sequence[Candidate]], tuple[RankedList, tuple[StageCost, ...]]]
RetrieveCall = Callable[[Query, int], tuple[RankedList, tuple[StageCost, ...]]]


def costed_reranker(reranker: Reranker, stage: str = "rerank") -> RerankCall:
    """``call(query, candidates) -> (ranking, costs)`` for any reranker.

    ``stage`` names the cost record of a single-stage reranker (``"rerank2"`` for the second reranker of
    a cascade); a multi-stage reranker keeps its own stage names.
    """
    if isinstance(reranker, ReportsStageCosts):
        return reranker.rerank_with_costs
    if isinstance(reranker, ReportsCost):
        own = reranker.rerank_with_cost

        def call_reporting(query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, tuple[StageCost, ...]]:
            ranking, cost = own(query, candidates)
            return ranking, (cost if cost.stage == stage else dataclasses.replace(cost, stage=stage),)

        return call_reporting
    plain = reranker.rerank

    def call_timed(query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, tuple[StageCost, ...]]:
        started = time.perf_counter()
        ranking = plain(query, candidates)
        return ranking, (StageCost(stage, (time.perf_counter() - started) * 1000, docs=len(candidates)),)

    return call_timed


def costed_retriever(retriever: Retriever) -> RetrieveCall:
    """``call(query, k) -> (ranking, costs)`` for any retriever (timed as ``retrieve`` when it does not split)."""
    if isinstance(retriever, ReportsRetrievalCost):
        return retriever.retrieve_with_cost
    plain = retriever.retrieve

    def call_timed(query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]:
        started = time.perf_counter()
        ranking = plain(query, k)
        return ranking, (StageCost("retrieve", (time.perf_counter() - started) * 1000, docs=len(ranking)),)

    return call_timed
