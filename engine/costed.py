"""One call for every reranker and retriever: the ranking plus what each stage cost.

A reranker may account its own cost (:class:`~twostage_search.engine.protocols.ReportsCost`), report one
record per internal stage (:class:`~twostage_search.engine.protocols.ReportsStageCosts`, a cascade), or
neither (then it is timed from outside). :func:`costed_reranker` looks once, at construction, and returns
a callable with the same shape for all three, so the hot path never asks again.
:func:`deadline_reranker` does the same for work under a :class:`~twostage_search.engine.deadline.Deadline`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

from twostage_search.engine.cost import StageCost
from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.protocols import (
    FetchesTextsLater,
    HonoursDeadline,
    PointwiseScorer,
    ReportsCost,
    ReportsRetrievalCost,
    ReportsStageCosts,
    Reranker,
    Retriever,
)
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


def costed_retriever(retriever: Retriever, *, texts: bool = True) -> RetrieveCall:
    """``call(query, k) -> (ranking, costs)`` for any retriever (timed as ``retrieve`` when it does not split).

    ``texts=False`` (only for a :class:`~engine.protocols.FetchesTextsLater` retriever) asks for ids and
    scores without document texts.
    """
    if not texts and not isinstance(retriever, FetchesTextsLater):
        raise TypeError(f"{type(retriever).__name__} cannot leave texts out (no with_texts)")
    if isinstance(retriever, ReportsRetrievalCost):
        if texts:
            return retriever.retrieve_with_cost
        return functools.partial(retriever.retrieve_with_cost, texts=False)  # type: ignore[call-arg]
    plain: Callable[[Query, int], RankedList] = (
        retriever.retrieve if texts else functools.partial(retriever.retrieve, texts=False)  # type: ignore[call-arg]
    )

    def call_timed(query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]:
        started = time.perf_counter()
        ranking = plain(query, k)
        return ranking, (StageCost("retrieve", (time.perf_counter() - started) * 1000, docs=len(ranking)),)

    return call_timed


DeadlineCall = Callable[[Query, Sequence[Candidate], Deadline], PartialRanking]


def deadline_reranker(reranker: Reranker, stage: str = "rerank", *, chunk: int = 8) -> DeadlineCall:
    """``call(query, candidates, deadline) -> PartialRanking`` for any reranker.

    A reranker that honours deadlines (:class:`~twostage_search.engine.protocols.HonoursDeadline`) stops
    itself between its units of work. A :class:`~twostage_search.engine.protocols.PointwiseScorer`
    without it is scored ``chunk`` candidates at a time while the next chunk is predicted (from the
    chunks done) to finish before the deadline. Any other
    reranker runs whole if the deadline has not passed when it would start, else nothing is reranked.
    """
    if isinstance(reranker, HonoursDeadline):
        until = reranker.rerank_until
        if isinstance(reranker, ReportsStageCosts):  # multi-stage: keeps its own stage names
            return until

        def call_named(query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking:
            out = until(query, candidates, deadline)
            costs = tuple(c if c.stage == stage else dataclasses.replace(c, stage=stage) for c in out.costs)
            return dataclasses.replace(out, costs=costs)

        return call_named
    if isinstance(reranker, PointwiseScorer):
        scorer = reranker

        def call_chunked(query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking:
            scores: list[float] = []
            costs: list[StageCost] = []
            done = 0
            per_doc_s = 0.0  # measured on the chunks done; a chunk predicted to overrun is not started
            while done < len(candidates) and deadline.remaining_s() > per_doc_s * chunk:
                part, cost = scorer.score_candidates(query, candidates[done : done + chunk])
                scores.extend(part)
                costs.append(cost)
                done += len(part)
                per_doc_s = sum(c.wall_ms for c in costs) / 1000 / done
            ranking = RankedList.from_scores(query.query_id, candidates[:done], scores)
            return PartialRanking(ranking, (sum_costs(stage, costs),) if costs else (), tuple(candidates[done:]))

        return call_chunked
    whole = costed_reranker(reranker, stage)

    def call_whole(query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking:
        if deadline.expired() and candidates:
            return PartialRanking(RankedList(query.query_id), (), tuple(candidates))
        ranking, costs = whole(query, candidates)
        return PartialRanking(ranking, costs)

    return call_whole


def sum_costs(stage: str, costs: Sequence[StageCost]) -> StageCost:
    """One record adding up several records (chunks of one stage)."""
    return StageCost(
        stage,
        sum(c.wall_ms for c in costs),
        docs=sum(c.docs for c in costs),
        tokens_in=sum(c.tokens_in for c in costs),
        tokens_out=sum(c.tokens_out for c in costs),
        usd=sum(c.usd for c in costs),
    )
