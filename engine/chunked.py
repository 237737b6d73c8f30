"""Depth decided while reranking: rerank in chunks and stop when the next chunk is not worth its cost.

A first-stage-evidence policy (or a fixed count) picks the first chunk; after each chunk
:class:`ChunkedDepth` looks at what the reranker has seen (:func:`chunk_features`): how many documents of
the last chunk entered the current top 10, the margin between that chunk's best score and the current
10th score, how deep the list has been read, how high the 10th score is and how far the first-stage
scores have fallen. A stop model gives ``p``, the probability that the next chunk changes the top 10;
since nDCG@10 only moves when the top 10 does, the expected gain of the next chunk is ``p·gain`` (``gain``:
the mean nDCG@10 gain of a chunk that changed the top 10, on training queries) and the policy continues
while ``p·gain − λ·ms(next chunk)`` is positive and the chunk fits the remaining budget. Stopping at the
first chunk not worth its cost is the one-step look-ahead rule, optimal when the problem is monotone
(Chow, Robbins & Siegmund, *Great Expectations: The Theory of Optimal Stopping*, 1971): here when later
chunks are no more likely to change the top 10 than earlier ones.

:mod:`engine.chunk_loop` runs the chunks: with any pointwise scorer, or with a listwise reranker whose
window steps run top-down (:class:`~engine.protocols.RerankInSteps`), where the stop model reads what an
order shows (:data:`~engine.stopping.RANK_FEATURES`: what entered the top 10, where it came from, the depth
read and the first-stage scores; no reranker scores). A reranker that can do neither gets the first chunk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.chunk_loop import (
    ChunkedRanking,
    ChunkLoop,
    ChunkPolicy,
    chunk_loop,
    rerank_in_chunks,
    rerank_in_steps,
)
from twostage_search.engine.costmodel import CostModel
from twostage_search.engine.errors import InputError
from twostage_search.engine.policy import Budget, Decision, DepthPolicy
from twostage_search.engine.stopping import (
    CHUNK_FEATURES,
    RANK_FEATURES,
    ChunkState,
    EnteredRule,
    LogisticStop,
    MarginRule,
    StopModel,
    chunk_features,
    stop_model_from_dict,
    transitions,
)
from twostage_search.engine.types import Query, RankedList

__all__ = [
    "RANK_FEATURES",
    "ChunkLoop",
    "ChunkPolicy",
    "ChunkState",
    "ChunkedDepth",
    "ChunkedRanking",
    "EnteredRule",
    "LogisticStop",
    "MarginRule",
    "StopModel",
    "chunk_features",
    "chunk_loop",
    "fit_chunked",
    "rerank_in_chunks",
    "rerank_in_steps",
    "stop_model_from_dict",
    "transitions",
]


# ---------------------------------------------------------------------------------------- the policy
@dataclass(frozen=True)
class ChunkedDepth:
    """Rerank a first chunk, then chunks of ``chunk`` documents while the next one is worth its cost.

    Args:
        cost: the reranker's cost model (``stage``); each chunk is one call, charged ``a + b·chunk``.
        stop: the stop model giving ``p``, the probability that the next chunk changes the top 10.
        gain: the mean nDCG@10 gain of a chunk that changes the top 10 (fitted on training queries).
        lam: the price of a predicted millisecond in nDCG@10 (``usd_lam``: of a dollar).
        chunk: documents per chunk after the first.
        first: the first chunk: a fixed count or a :class:`~engine.policy.DepthPolicy` (e.g.
            ``AdaptiveDepth``) whose decision sets it (at least ``chunk``).
        max_depth: never rerank beyond this many candidates (default: all retrieved).
        top: the head whose changes count (10 for nDCG@10).
    """

    cost: CostModel
    stop: StopModel
    gain: float
    lam: float = 0.0
    chunk: int = 10
    first: int | DepthPolicy = 10
    max_depth: int | None = None
    top: int = 10
    usd_lam: float = 0.0
    stage: str = "rerank"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise InputError("chunk must be at least 1")
        if isinstance(self.first, int) and self.first < 0:
            raise InputError("first chunk must be non-negative")
        if self.max_depth is not None and self.max_depth < 0:
            raise InputError("max_depth must be non-negative")

    def limit(self, candidates: int) -> int:
        return candidates if self.max_depth is None else min(self.max_depth, candidates)

    def needs_scores(self) -> bool:
        return not set(self.stop.uses()) <= set(RANK_FEATURES)

    def decide(self, query: Query, first: RankedList, remaining: Budget | None) -> Decision:
        """The first chunk (what a reranker that cannot be stopped part-way gets as its whole depth)."""
        n = self.limit(len(first))
        if isinstance(self.first, int):
            k, why = min(self.first, n), f"first chunk {self.first}"
        else:
            inner = self.first.decide(query, first, remaining)
            k, why = min(max(inner.rerank_depth, self.chunk), n), f"first chunk from {inner.policy}: {inner.reason}"
        return Decision(k, "chunked", why, predicted_ms=self.cost.predict_ms(self.stage, k))

    def value(self, state: ChunkState, size: int) -> tuple[float, float]:
        """(p, expected nDCG@10 gain minus price) of reranking the next ``size`` documents."""
        p = self.stop.p_change(chunk_features(state, self.top))
        price = self.lam * self.cost.predict_ms(self.stage, size) + self.usd_lam * self.cost.predict_usd(
            self.stage, size
        )
        return p, p * self.gain - price

    def next_chunk(self, state: ChunkState) -> tuple[int, str]:
        """How many documents to rerank next (0: stop) and why."""
        size = min(self.chunk, self.limit(state.candidates) - state.scored)
        if size <= 0:
            return 0, "all candidates reranked"
        budget = state.remaining
        if budget is not None:
            if budget.ms is not None and self.cost.predict_ms(self.stage, size) > budget.ms:
                return 0, "next chunk does not fit the time left"
            if budget.usd is not None and self.cost.predict_usd(self.stage, size) > budget.usd - state.spent_usd:
                return 0, "next chunk does not fit the money left"
        p, value = self.value(state, size)
        if state.scored < self.top:
            return size, "top not yet full"
        if value <= 0:
            return 0, f"p(change)={p:.2f}: next chunk not worth its cost at λ={self.lam:g}"
        return size, f"p(change)={p:.2f}"

    def with_lambda(self, lam: float) -> ChunkedDepth:
        return ChunkedDepth(
            self.cost, self.stop, self.gain, lam, self.chunk, self.first, self.max_depth, self.top, self.usd_lam,
            self.stage, self.meta,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        if not isinstance(self.first, int):
            raise InputError("only a fixed first chunk can be saved; save the first-chunk policy separately")
        settings = ("gain", "lam", "chunk", "first", "max_depth", "top", "usd_lam", "stage", "meta")
        return {"policy": "chunked", "stop": self.stop.to_dict(), **{k: getattr(self, k) for k in settings}}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, cost: CostModel, *, first: DepthPolicy | None = None) -> ChunkedDepth:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read chunked policy {path}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"chunked policy {path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("policy") != "chunked":
            raise InputError(f"{path}: not a chunked depth policy")
        return cls.from_dict(data, cost, first=first)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], cost: CostModel, *, first: DepthPolicy | None = None) -> ChunkedDepth:
        """The policy :meth:`to_dict` wrote, pricing its chunks with ``cost``."""
        return cls(
            cost, stop_model_from_dict(data["stop"]), float(data["gain"]), float(data["lam"]), int(data["chunk"]),
            first if first is not None else int(data["first"]), data.get("max_depth"), int(data.get("top", 10)),
            float(data.get("usd_lam", 0.0)), data.get("stage", "rerank"), dict(data.get("meta", {})),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------- training
def fit_chunked(
    cost: CostModel,
    features: Sequence[Mapping[str, float]],
    changed: Sequence[bool],
    gains: Sequence[float],
    *,
    c: float = 1.0,
    names: Sequence[str] = CHUNK_FEATURES,
    **kwargs: Any,
) -> ChunkedDepth:
    """A :class:`ChunkedDepth` with a logistic stop model fitted on training chunk transitions and
    ``gain`` = the mean nDCG@10 gain of the transitions that changed the top 10, on the features
    ``names`` (see :mod:`engine.stopping`; ``kwargs``: the policy's other settings)."""
    if not len(features) == len(changed) == len(gains):
        raise InputError("features, changed and gains differ in length")
    stop = LogisticStop.fit(features, changed, c=c, names=names)
    moved = [g for g, y in zip(gains, changed, strict=True) if y]
    return ChunkedDepth(cost, stop, float(np.mean(moved)), **kwargs)
