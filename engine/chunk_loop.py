"""The loops that rerank in chunks and let a :class:`ChunkPolicy` decide after each whether to go on.

:func:`rerank_in_chunks` runs them with any :class:`~engine.protocols.PointwiseScorer` (scores from
separate calls are comparable); :func:`rerank_in_steps` with a listwise reranker that runs its window steps
top-down (:class:`~engine.protocols.RerankInSteps`): the first chunk is ordered on its own and each next
chunk is one step, ordered together with the top of the current order, so that after each step the policy
sees what entered the top 10 (the order only: :data:`~engine.stopping.RANK_FEATURES`). :func:`chunk_loop`
picks the loop for a reranker once (``TwoStage`` calls it when it is built).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from twostage_search.engine.cost import StageCost
from twostage_search.engine.deadline import Deadline
from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.policy import Budget, Decision
from twostage_search.engine.protocols import PointwiseScorer, Reranker, RerankInSteps
from twostage_search.engine.stopping import RANK_FEATURES, ChunkState
from twostage_search.engine.types import Candidate, Query, RankedList

__all__ = ["ChunkLoop", "ChunkPolicy", "ChunkedRanking", "chunk_loop", "rerank_in_chunks", "rerank_in_steps"]


@runtime_checkable
class ChunkPolicy(Protocol):
    """A depth policy that also decides, after each reranked chunk, how many documents to rerank next."""

    def decide(self, query: Query, first: RankedList, remaining: Budget | None) -> Decision: ...

    def next_chunk(self, state: ChunkState) -> tuple[int, str]: ...

    def limit(self, candidates: int) -> int:
        """How many of ``candidates`` first-stage candidates it may rerank at most."""
        ...

    def needs_scores(self) -> bool:
        """Whether ``next_chunk`` reads reranker scores (then it cannot follow a listwise reranker)."""
        ...


@dataclass(frozen=True, slots=True)
class ChunkedRanking:
    """What :func:`rerank_in_chunks` produced: the reranked head, the calls' costs and why it stopped."""

    ranking: RankedList
    costs: tuple[StageCost, ...]
    chunks: tuple[int, ...]
    reason: str
    cut: bool = False  # the deadline had passed when it stopped with candidates left


def rerank_in_chunks(
    scorer: PointwiseScorer,
    query: Query,
    candidates: Sequence[Candidate],
    policy: ChunkPolicy,
    first: int,
    *,
    budget: Budget | None = None,
    deadline: Deadline | None = None,
) -> ChunkedRanking:
    """Score ``first`` candidates, then as many chunks as ``policy.next_chunk`` asks for (never beyond the
    candidates); stop before a chunk once ``deadline`` has passed. ``budget`` is what the request may spend
    (its ``ms`` counted from now, reduced by the deadline when given)."""
    scores: list[float] = []

    def advance(part: Sequence[Candidate]) -> tuple[tuple[float, ...], StageCost]:
        values, cost = scorer.score_candidates(query, part)
        scores.extend(values)
        return tuple(scores), cost

    done, costs, chunks, reason, cut = _drive(advance, candidates, policy, first, budget, deadline, ordinal=False)
    ranking = RankedList.from_scores(query.query_id, list(candidates[:done]), scores)
    return _finish(ranking, costs, chunks, reason, cut)


def rerank_in_steps(
    reranker: RerankInSteps,
    query: Query,
    candidates: Sequence[Candidate],
    policy: ChunkPolicy,
    first: int,
    *,
    budget: Budget | None = None,
    deadline: Deadline | None = None,
) -> ChunkedRanking:
    """:func:`rerank_in_chunks` for a listwise reranker: the first ``first`` candidates are ordered on their
    own, then each chunk ``policy.next_chunk`` asks for is one top-down step (``rerank_step``: the chunk
    with the top of the current order). The policy sees the order only (``ChunkState.ordinal``: minus each
    candidate's position as its score), so its stop model must read :data:`RANK_FEATURES` alone. The
    ranking's scores are ``n − position``."""
    _rank_only(policy, reranker)
    order: list[Candidate] = []

    def advance(part: Sequence[Candidate]) -> tuple[tuple[float, ...], StageCost]:
        expected = sorted(c.doc_id for c in (*order, *part))
        after, cost = reranker.rerank_step(query, tuple(order), part)
        if sorted(c.doc_id for c in after) != expected:
            raise TwoStageError(f"{type(reranker).__name__}.rerank_step did not return a permutation of its input")
        order[:] = after
        at = {c.doc_id: i for i, c in enumerate(order)}
        return tuple(-float(at[c.doc_id]) for c in candidates[: len(order)]), cost

    _, costs, chunks, reason, cut = _drive(advance, candidates, policy, first, budget, deadline, ordinal=True)
    ranking = RankedList.from_scores(query.query_id, order, [float(len(order) - i) for i in range(len(order))])
    return _finish(ranking, costs, chunks, reason, cut)


class ChunkLoop(Protocol):
    """:func:`rerank_in_chunks` or :func:`rerank_in_steps` bound to a reranker and a policy."""

    def __call__(
        self,
        query: Query,
        candidates: Sequence[Candidate],
        first: int,
        *,
        budget: Budget | None = None,
        deadline: Deadline | None = None,
    ) -> ChunkedRanking: ...


def chunk_loop(reranker: Reranker, policy: ChunkPolicy) -> ChunkLoop | None:
    """The loop that lets ``policy`` decide while ``reranker`` works: chunks for a pointwise scorer, window
    steps for a :class:`~engine.protocols.RerankInSteps` reranker, ``None`` for any other (it gets the
    policy's first chunk). A policy that reads scores with a listwise reranker is an :class:`InputError`."""
    if isinstance(reranker, PointwiseScorer):
        scorer = reranker

        def chunked(query: Query, candidates: Sequence[Candidate], first: int, **kw: Any) -> ChunkedRanking:
            return rerank_in_chunks(scorer, query, candidates, policy, first, **kw)

        return chunked
    if isinstance(reranker, RerankInSteps):
        _rank_only(policy, reranker)
        stepper = reranker

        def stepped(query: Query, candidates: Sequence[Candidate], first: int, **kw: Any) -> ChunkedRanking:
            return rerank_in_steps(stepper, query, candidates, policy, first, **kw)

        return stepped
    return None


def _rank_only(policy: ChunkPolicy, reranker: object) -> None:
    if policy.needs_scores():
        name = getattr(reranker, "name", type(reranker).__name__)
        raise InputError(
            f"{name} reranks listwise and gives no scores: its chunked policy's stop model must read only "
            f"{', '.join(RANK_FEATURES)} (EnteredRule, or LogisticStop fitted with names=RANK_FEATURES)"
        )


Advance = Callable[[Sequence[Candidate]], tuple[tuple[float, ...], StageCost]]


def _drive(
    advance: Advance,
    candidates: Sequence[Candidate],
    policy: ChunkPolicy,
    first: int,
    budget: Budget | None,
    deadline: Deadline | None,
    *,
    ordinal: bool,
) -> tuple[int, list[StageCost], list[int], str, bool]:
    """The chunk loop: ``advance(chunk)`` reranks the next chunk and returns the state scores of every
    candidate read so far (first-stage order); returns (candidates read, costs, chunk sizes, reason, cut)."""
    firsts = tuple(c.score for c in candidates)
    costs: list[StageCost] = []
    chunks: list[int] = []
    done, size, reason, cut = 0, min(first, len(candidates)), "first chunk", False
    while size > 0:
        if deadline is not None and deadline.expired():
            reason, cut = "deadline passed", True
            break
        part = candidates[done : done + size]
        seen, cost = advance(part)
        done += len(part)
        costs.append(cost)
        chunks.append(len(part))
        state = ChunkState(
            seen, firsts, len(part), sum(c.wall_ms for c in costs), sum(c.usd for c in costs),
            _left(budget, deadline, costs), ordinal,
        )  # fmt: skip
        size, reason = policy.next_chunk(state)
        size = min(size, len(candidates) - done)
    if deadline is not None and deadline.expired() and done < len(candidates):
        cut = True  # out of time with candidates left, whichever check noticed it
    return done, costs, chunks, reason, cut


def _finish(
    ranking: RankedList, costs: Sequence[StageCost], chunks: Sequence[int], reason: str, cut: bool
) -> ChunkedRanking:
    ms, usd = sum(c.wall_ms for c in costs), sum(c.usd for c in costs)
    tokens_in, tokens_out = sum(c.tokens_in for c in costs), sum(c.tokens_out for c in costs)
    total = StageCost("rerank", ms, docs=len(ranking), tokens_in=tokens_in, tokens_out=tokens_out, usd=usd)
    return ChunkedRanking(ranking, (total,) if costs else (), tuple(chunks), reason, cut)


def _left(budget: Budget | None, deadline: Deadline | None, costs: Sequence[StageCost]) -> Budget | None:
    ms = None if budget is None or budget.ms is None else budget.ms - sum(c.wall_ms for c in costs)
    if deadline is not None:
        left = deadline.remaining_s() * 1000
        ms = left if ms is None else min(ms, left)
    usd = None if budget is None else budget.usd
    if ms is None and usd is None:
        return None
    return Budget(ms=max(ms, 1e-6) if ms is not None else None, usd=usd)
