"""The two stages composed explicitly: ``TwoStage(retriever, reranker, policy).search(query, k)``.

Per query: retrieve ``depth`` candidates, let the depth policy choose how many of them to rerank (from
the first-stage evidence and the remaining budget), rerank those — in chunks against the deadline when
the reranker scores pointwise — and serve the reranked block above the rest in first-stage order. Every
result carries a cost record per stage; observed timings keep the cost model current.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Hashable
from dataclasses import dataclass

from twostage_search.engine.cache import ResultCache
from twostage_search.engine.cost import StageCost
from twostage_search.engine.costed import costed_reranker, costed_retriever
from twostage_search.engine.costmodel import CostModel, Observation
from twostage_search.engine.errors import InputError
from twostage_search.engine.policy import Budget, Decision, DepthPolicy, FixedDepth
from twostage_search.engine.protocols import PointwiseScorer, Reranker, Retriever
from twostage_search.engine.types import Candidate, Query, RankedList


@dataclass(frozen=True, slots=True)
class SearchResult:
    """A ranking with what each stage cost to produce it and how its rerank depth was chosen.

    ``degraded`` is set when the deadline ran out mid-rerank and part of the head was served in
    first-stage order; ``cached`` when the result came from the result cache.
    """

    ranking: RankedList
    costs: tuple[StageCost, ...]
    rerank_depth: int
    decision: Decision | None = None
    degraded: bool = False
    cached: bool = False

    @property
    def wall_ms(self) -> float:
        return sum(c.wall_ms for c in self.costs)

    def cost(self, stage: str) -> StageCost | None:
        """The cost record of ``stage`` (``encode``, ``retrieve``, ``rerank``, ``cache``, …), if it ran."""
        return next((c for c in self.costs if c.stage == stage), None)

    def stage_ms(self, stage: str) -> float:
        return sum(c.wall_ms for c in self.costs if c.stage == stage)

    @property
    def tokens_in(self) -> int:
        return sum(c.tokens_in for c in self.costs)

    @property
    def tokens_out(self) -> int:
        return sum(c.tokens_out for c in self.costs)

    @property
    def usd(self) -> float:
        return sum(c.usd for c in self.costs)


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


def _sum_costs(stage: str, costs: list[StageCost]) -> StageCost:
    return StageCost(
        stage,
        sum(c.wall_ms for c in costs),
        docs=sum(c.docs for c in costs),
        tokens_in=sum(c.tokens_in for c in costs),
        tokens_out=sum(c.tokens_out for c in costs),
        usd=sum(c.usd for c in costs),
    )


class TwoStage:
    """Retrieve ``depth`` candidates, rerank as many as the policy chooses, return the top ``k``.

    Args:
        retriever: the first stage.
        reranker: the second stage (``IdentityReranker`` keeps the first-stage order).
        depth: first-stage candidates per query (raised to ``k`` when ``k`` is larger).
        rerank_depth: fixed rerank depth when no ``policy`` is given (default: all ``depth``).
        policy: a :class:`~engine.policy.DepthPolicy` choosing the rerank depth per query.
        cost_model: stage cost models; observed timings update them online.
        budget: default per-query budget (a request's own budget replaces it).
        cache: result cache for head queries; ``cache_key`` names this configuration in its keys.
        chunk: documents per chunk when a deadline is enforced on a pointwise reranker.
    """

    def __init__(
        self,
        retriever: Retriever,
        reranker: Reranker,
        *,
        depth: int = 100,
        rerank_depth: int | None = None,
        policy: DepthPolicy | None = None,
        cost_model: CostModel | None = None,
        budget: Budget | None = None,
        cache: ResultCache[SearchResult] | None = None,
        cache_key: Hashable = "",
        chunk: int = 8,
    ) -> None:
        if depth < 1:
            raise InputError("depth must be at least 1")
        if rerank_depth is not None and rerank_depth < 0:
            raise InputError("rerank_depth must be non-negative")
        if chunk < 1:
            raise InputError("chunk must be at least 1")
        self.retriever = retriever
        self.reranker = reranker
        # Which cost protocol each stage speaks is decided once, here, not per query.
        self.retrieve_costed = costed_retriever(retriever)
        self.rerank_costed = costed_reranker(reranker)
        self._pointwise = reranker if isinstance(reranker, PointwiseScorer) else None
        self.depth = depth
        self.rerank_depth = depth if rerank_depth is None else rerank_depth
        self.policy: DepthPolicy = policy or FixedDepth(self.rerank_depth)
        self.cost_model = cost_model
        self.budget = budget
        self.cache = cache
        self.cache_key = cache_key
        self.chunk = chunk

    def search(self, query: Query | str, k: int = 10, **kwargs: object) -> RankedList:
        return self.run(query, k, **kwargs).ranking  # type: ignore[arg-type]

    def run(
        self,
        query: Query | str,
        k: int = 10,
        *,
        rerank_depth: int | None = None,
        budget: Budget | None = None,
    ) -> SearchResult:
        """Search and account each stage's cost.

        ``rerank_depth`` overrides the policy for this request; ``budget`` replaces the configured one.
        """
        started = time.perf_counter()
        if isinstance(query, str):
            query = Query("q", query)
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        if rerank_depth is not None and rerank_depth < 0:
            raise InputError("rerank_depth must be non-negative")
        budget = budget or self.budget
        key = (self.cache_key, query.text.strip(), k, rerank_depth, budget)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                ms = (time.perf_counter() - started) * 1000
                items = tuple(dataclasses.replace(h, query_id=query.query_id) for h in hit.ranking)
                ranking = RankedList(query.query_id, items)
                return dataclasses.replace(hit, ranking=ranking, costs=(StageCost("cache", ms),), cached=True)

        first, costs = self._retrieve(query, max(self.depth, k))
        remaining = self._remaining(budget, started)
        if rerank_depth is not None:
            decision = Decision(min(rerank_depth, len(first)), "request", "rerank_depth given")
        else:
            decision = self.policy.decide(query, first, remaining)
        candidates = first.candidates()
        head, rest = candidates[: decision.rerank_depth], candidates[decision.rerank_depth :]
        unscored: list[Candidate] = []
        if head:
            deadline = None if budget is None or budget.ms is None else started + budget.ms / 1000
            reranked, rerank_costs, unscored = self._rerank(query, head, deadline)
            costs.extend(rerank_costs)
        else:
            reranked = RankedList(query.query_id)
        self._observe(costs)
        ranking = merge_cascade(query.query_id, reranked, unscored + rest).head(k)
        degraded = bool(unscored)
        result = SearchResult(ranking, tuple(costs), len(head) - len(unscored), decision, degraded)
        if self.cache is not None and not degraded:
            self.cache.put(key, result)
        return result

    # ---------------------------------------------------------------------------------- stages
    def _retrieve(self, query: Query, depth: int) -> tuple[RankedList, list[StageCost]]:
        first, costs = self.retrieve_costed(query, depth)
        return first, list(costs)

    @staticmethod
    def _remaining(budget: Budget | None, started: float) -> Budget | None:
        if budget is None:
            return None
        if budget.ms is None:
            return budget
        left = budget.ms - (time.perf_counter() - started) * 1000
        return Budget(ms=max(left, 1e-6), usd=budget.usd)

    def _rerank(
        self, query: Query, head: list[Candidate], deadline: float | None
    ) -> tuple[RankedList, list[StageCost], list[Candidate]]:
        """Rerank ``head``; returns the ranking, its costs and the candidates left unscored (deadline)."""
        if deadline is not None and self._pointwise is not None:
            return self._rerank_until(self._pointwise, query, head, deadline)
        ranking, costs = self.rerank_costed(query, head)
        return ranking, list(costs), []

    def _rerank_until(
        self, scorer: PointwiseScorer, query: Query, head: list[Candidate], deadline: float
    ) -> tuple[RankedList, list[StageCost], list[Candidate]]:
        """Score ``head`` chunk by chunk while the next chunk is predicted to finish before ``deadline``."""
        scores: list[float] = []
        chunk_costs: list[StageCost] = []
        per_doc_ms = self._per_doc_ms()
        done = 0
        while done < len(head):
            chunk = head[done : done + self.chunk]
            now = time.perf_counter()
            if now + per_doc_ms * len(chunk) / 1000 > deadline:
                break
            chunk_scores, cost = scorer.score_candidates(query, chunk)
            scores.extend(chunk_scores)
            chunk_costs.append(cost)
            done += len(chunk)
            per_doc_ms = sum(c.wall_ms for c in chunk_costs) / done
        ranking = RankedList.from_scores(query.query_id, head[:done], scores)
        return ranking, [_sum_costs("rerank", chunk_costs)] if chunk_costs else [], head[done:]

    def _per_doc_ms(self) -> float:
        model = self.cost_model.stage("rerank") if self.cost_model else None
        if model is None:
            return 0.0  # unknown: try the first chunk
        return max(model.predict_ms(self.chunk) / self.chunk, 0.0)

    def _observe(self, costs: list[StageCost]) -> None:
        if self.cost_model is None:
            return
        for c in costs:
            if c.stage in ("retrieve", "rerank") and c.docs:
                self.cost_model.observe(c.stage, Observation(c.docs, c.wall_ms, c.tokens_in))
