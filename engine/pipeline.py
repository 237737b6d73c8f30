"""The two stages composed explicitly: ``TwoStage(retriever, reranker, policy).search(query, k)``.

Per query: retrieve ``depth`` candidates, let the depth policy choose how many of them to rerank (from
the first-stage evidence and the remaining budget), rerank those — in chunks against the deadline when
the reranker scores pointwise — and serve the reranked block above the rest in first-stage order. Every
result carries a cost record per stage; observed timings keep the cost model current.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from twostage_search.engine.cache import ResultCache
from twostage_search.engine.chunk_loop import ChunkLoop, ChunkPolicy, chunk_loop
from twostage_search.engine.cost import StageCost
from twostage_search.engine.costed import costed_reranker, costed_retriever, deadline_reranker
from twostage_search.engine.costmodel import CostModel, Observation
from twostage_search.engine.deadline import Deadline
from twostage_search.engine.errors import InputError
from twostage_search.engine.policy import Budget, Decision, DepthPolicy, FixedDepth
from twostage_search.engine.protocols import FetchesTextsLater, Reranker, Retriever
from twostage_search.engine.types import Candidate, Query, RankedList


@dataclass(frozen=True, slots=True)
class SearchResult:
    """A ranking with what each stage cost to produce it and how its rerank depth was chosen.

    ``degraded`` is set when the deadline ran out mid-rerank and part of the head was served in
    first-stage order; ``cached`` when the result came from the result cache. ``first_scores`` maps each
    served document to its first-stage score and ``reranked_ids`` names the documents the reranker
    ordered (the others are in first-stage order: their ``score`` only keeps the list sorted).
    ``dropped`` counts reranked documents removed by the relevance floor.
    """

    ranking: RankedList
    costs: tuple[StageCost, ...]
    rerank_depth: int
    decision: Decision | None = None
    degraded: bool = False
    cached: bool = False
    first_scores: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    reranked_ids: frozenset[str] = frozenset()
    dropped: int = 0

    def stage_of(self, doc_id: str) -> str:
        """``"rerank"`` if the reranker ordered ``doc_id``, else ``"first"`` (first-stage order)."""
        return "rerank" if doc_id in self.reranked_ids else "first"

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
    first-stage order, as cascades are served. Those tail scores only order the list: keep the first-stage
    scores beside them (``SearchResult.first_scores``). With nothing reranked the first-stage candidates are
    returned as they are, scores unchanged.
    """
    if not rest:
        return reranked
    if not reranked:
        return RankedList.from_candidates(query_id, rest)
    floor = min((h.score for h in reranked), default=0.0)
    tail = [Candidate(c.doc_id, floor - 1.0 - i, c.text, c.title) for i, c in enumerate(rest)]
    return RankedList.from_candidates(query_id, [*reranked.candidates(), *tail])


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
        chunk: documents per chunk when a deadline is enforced on a pointwise reranker that does not
            honour deadlines itself (:class:`~engine.protocols.HonoursDeadline`).
            A :class:`~engine.chunk_loop.ChunkPolicy` (``ChunkedDepth``) with a pointwise reranker, or with
            a listwise one that runs its window steps top-down (:class:`~engine.protocols.RerankInSteps`),
            instead reranks its own chunks and decides after each whether to go on (within budget and
            deadline); with any other reranker it reranks the policy's first chunk.
        min_score: relevance floor: reranked documents scoring below it are dropped (and counted);
            documents the reranker did not reach are kept. Meant for calibrated scores or judged grades.
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
        min_score: float | None = None,
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
        # A retriever that can fetch texts later leaves them out; run() fetches the ones reranked or returned.
        self.lazy_texts = isinstance(retriever, FetchesTextsLater)
        self.retrieve_costed = costed_retriever(retriever, texts=not self.lazy_texts)
        self.rerank_costed = costed_reranker(reranker)
        self.rerank_until = deadline_reranker(reranker, chunk=chunk)
        self.depth = depth
        self.rerank_depth = depth if rerank_depth is None else rerank_depth
        self.policy: DepthPolicy = policy or FixedDepth(self.rerank_depth)
        self.cost_model = cost_model
        self.budget = budget
        self.cache = cache
        self.cache_key = cache_key
        self.chunk = chunk
        self.min_score = min_score
        # A chunk policy decides while reranking: chunks of a pointwise scorer or a listwise reranker's steps.
        self.chunks: tuple[ChunkPolicy, ChunkLoop] | None = None
        if isinstance(self.policy, ChunkPolicy):
            loop = chunk_loop(reranker, self.policy)
            self.chunks = None if loop is None else (self.policy, loop)

    def search(self, query: Query | str, k: int = 10, **kwargs: object) -> RankedList:
        return self.run(query, k, **kwargs).ranking  # type: ignore[arg-type]

    def run(
        self,
        query: Query | str,
        k: int = 10,
        *,
        rerank_depth: int | None = None,
        budget: Budget | None = None,
        deadline: Deadline | None = None,
    ) -> SearchResult:
        """Search and account each stage's cost.

        ``rerank_depth`` overrides the policy for this request; ``budget`` replaces the configured one.
        ``deadline`` (e.g. fixed when a request arrived) stops reranking cooperatively, like ``budget.ms``
        counted from this call; the earlier of the two applies.
        """
        started = time.perf_counter()
        arrived = time.monotonic()
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
        if budget is not None and budget.ms is not None:
            own = Deadline.after(budget.ms / 1000, start=arrived)
            deadline = own if deadline is None else deadline.earliest(own)
        remaining = self._remaining(budget, deadline)
        if rerank_depth is not None:
            decision = Decision(min(rerank_depth, len(first)), "request", "rerank_depth given")
        else:
            decision = self.policy.decide(query, first, remaining)
        chunks = self.chunks if rerank_depth is None else None
        if self.lazy_texts:
            reach = chunks[0].limit(len(first)) if chunks else decision.rerank_depth
            first, costs = self._fill_texts(first, reach + k, costs)
        candidates = first.candidates()
        head, rest = candidates[: decision.rerank_depth], candidates[decision.rerank_depth :]
        unscored: list[Candidate] = []
        cut = False
        reranked = RankedList(query.query_id)
        if chunks and head:
            policy, rerank_loop = chunks
            loop = rerank_loop(
                query,
                candidates[: policy.limit(len(candidates))],
                decision.rerank_depth,
                budget=Budget(usd=budget.usd) if budget is not None and budget.usd is not None else None,
                deadline=deadline,
            )
            reranked, cut = loop.ranking, loop.cut
            head, rest = candidates[: len(reranked)], candidates[len(reranked) :]
            costs.extend(loop.costs)
            sizes = "+".join(str(c) for c in loop.chunks)
            decision = dataclasses.replace(
                decision, rerank_depth=len(head), reason=f"{decision.reason}; chunks {sizes}; {loop.reason}"
            )
        elif head and deadline is None:
            reranked, rerank_costs = self.rerank_costed(query, head)
            costs.extend(rerank_costs)
        elif head and deadline is not None:
            partial = self.rerank_until(query, head, deadline)
            reranked, unscored, cut = partial.ranking, list(partial.unscored), partial.degraded
            costs.extend(partial.costs)
        self._observe(costs)
        dropped = 0
        if self.min_score is not None and reranked:
            kept = [c for c in reranked.candidates() if c.score >= self.min_score]
            dropped = len(reranked) - len(kept)
            reranked = RankedList.from_candidates(query.query_id, kept)
        ranking = merge_cascade(query.query_id, reranked, unscored + rest).head(k)
        degraded = cut or bool(unscored)
        served = set(ranking.doc_ids)
        result = SearchResult(
            ranking,
            tuple(costs),
            len(head) - len(unscored),
            decision,
            degraded,
            first_scores=MappingProxyType({h.doc_id: h.score for h in first if h.doc_id in served}),
            reranked_ids=frozenset(reranked.doc_ids) & served,
            dropped=dropped,
        )
        if self.cache is not None and not degraded:
            self.cache.put(key, result)
        return result

    # ---------------------------------------------------------------------------------- stages
    def _retrieve(self, query: Query, depth: int) -> tuple[RankedList, list[StageCost]]:
        first, costs = self.retrieve_costed(query, depth)
        return first, list(costs)

    def _fill_texts(self, first: RankedList, n: int, costs: list[StageCost]) -> tuple[RankedList, list[StageCost]]:
        """Texts for the first ``n`` candidates (all that can be reranked or served), timed as ``retrieve``."""
        started = time.perf_counter()
        head = self.retriever.with_texts(first.head(n))  # type: ignore[attr-defined]
        ranking = RankedList(first.query_id, head.items + first.items[n:])
        ms = (time.perf_counter() - started) * 1000
        stage = next((i for i, c in enumerate(costs) if c.stage == "retrieve"), None)
        if stage is None:
            return ranking, [*costs, StageCost("retrieve", ms, docs=len(first))]
        costs = list(costs)
        costs[stage] = dataclasses.replace(costs[stage], wall_ms=costs[stage].wall_ms + ms)
        return ranking, costs

    @staticmethod
    def _remaining(budget: Budget | None, deadline: Deadline | None) -> Budget | None:
        """What the depth policy may still spend: the money budget and the time left before the deadline."""
        if deadline is None:
            return budget
        return Budget(ms=max(deadline.remaining_s() * 1000, 1e-6), usd=budget.usd if budget else None)

    def _observe(self, costs: list[StageCost]) -> None:
        if self.cost_model is None:
            return
        for c in costs:
            if c.stage in ("retrieve", "rerank") and c.docs:
                self.cost_model.observe(c.stage, Observation(c.docs, c.wall_ms, c.tokens_in))
