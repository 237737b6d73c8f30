"""One small protocol per stage. Optional abilities are separate ``runtime_checkable`` protocols."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from twostage_search.engine.cost import StageCost
from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.types import Candidate, Query, RankedList, SparseVector


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into sparse term-weight vectors. Query and document sides may differ."""

    name: str

    def encode_queries(self, texts: Sequence[str]) -> list[SparseVector]: ...

    def encode_docs(self, texts: Sequence[str]) -> list[SparseVector]: ...


@runtime_checkable
class Retriever(Protocol):
    """First stage: the top ``k`` documents of the collection for a query, as a sorted ranking."""

    def retrieve(self, query: Query, k: int) -> RankedList: ...


@runtime_checkable
class Reranker(Protocol):
    """Second stage: reorder the given candidates. The output is a permutation of the input ids."""

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList: ...


@runtime_checkable
class ReportsCost(Protocol):
    """A reranker that accounts its own cost (tokens, money) besides the ranking.

    ``TwoStage`` uses it when present; otherwise it times ``rerank`` itself.
    """

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]: ...


@runtime_checkable
class ReportsStageCosts(Protocol):
    """A reranker made of several stages (a cascade) that reports one cost record per stage."""

    def rerank_with_costs(
        self, query: Query, candidates: Sequence[Candidate]
    ) -> tuple[RankedList, tuple[StageCost, ...]]: ...


@runtime_checkable
class PointwiseScorer(Protocol):
    """A reranker that scores each candidate on its own, so scores from separate calls are comparable.

    ``TwoStage`` uses it to enforce deadlines: it scores the head in chunks and stops when time is up.
    """

    def score_candidates(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[float], StageCost]: ...


@runtime_checkable
class RerankInSteps(Protocol):
    """A listwise reranker whose window steps can run top-down, one at a time, so that the rerank depth
    can be decided between steps (``TwoStage`` with a :class:`~engine.chunked.ChunkPolicy`).

    ``rerank_step(query, ranked, new)`` orders ``new`` (the next candidates, in first-stage order) into
    ``ranked`` (the order the earlier steps left, best first; empty before the first step) and returns the
    whole new order, a permutation of ``ranked + new``, with the step's cost (``docs``: ``len(new)``). A
    step reads ``new`` together with as much of the top of ``ranked`` as fills its window; the rest of
    ``ranked`` keeps its order below what the step ordered.
    """

    def rerank_step(
        self, query: Query, ranked: Sequence[Candidate], new: Sequence[Candidate]
    ) -> tuple[list[Candidate], StageCost]: ...


@runtime_checkable
class HonoursDeadline(Protocol):
    """A reranker that stops cooperatively when a :class:`~twostage_search.engine.deadline.Deadline` passes.

    Contract of ``rerank_until(query, candidates, deadline)``:

    - check ``deadline.expired()`` before each unit of work (a model batch, an LLM window, one judged
      pair) and start no unit once it is true; a unit already running finishes;
    - return a :class:`~twostage_search.engine.deadline.PartialRanking`: ``ranking`` holds the candidates
      that were ordered (scores comparable with each other), ``unscored`` the rest in input order, and
      ``degraded`` is set when the deadline cut the work short;
    - with time to spare the result equals ``rerank`` (same ranking, same scores);
    - multi-stage rerankers split the remaining time (``deadline.share``) and report each stage's cost.

    ``TwoStage`` and :func:`~twostage_search.engine.costed.deadline_reranker` use it when present; a
    :class:`PointwiseScorer` without it is scored in chunks from outside, and any other reranker runs
    whole when it is started before the deadline.
    """

    def rerank_until(self, query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking: ...


@runtime_checkable
class ReportsRetrievalCost(Protocol):
    """A retriever that splits its cost into stages (e.g. ``encode`` and ``retrieve``)."""

    def retrieve_with_cost(self, query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]: ...


@runtime_checkable
class FetchesTextsLater(Protocol):
    """A retriever that can leave document texts out (``retrieve(..., texts=False)``: ids and scores only)
    and fetch them afterwards for the candidates that need them (those reranked or returned)."""

    def retrieve(self, query: Query, k: int, *, texts: bool = True) -> RankedList: ...

    def with_texts(self, ranking: RankedList) -> RankedList: ...


@runtime_checkable
class SupportsClose(Protocol):
    """A stage that holds resources (model memory, a JVM searcher, connections) it can release."""

    def close(self) -> None: ...


@runtime_checkable
class Index(Protocol):
    """An index that owns its directory and hands out its own retriever."""

    path: object

    def retriever(self) -> Retriever: ...
