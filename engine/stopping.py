"""Stop models for depth decided while reranking: the evidence after a chunk and p(next chunk changes the top).

:func:`chunk_features` reads what the reranker has seen for one query (:class:`ChunkState`); a
:class:`StopModel` turns it into ``p``, the probability that the next chunk changes the top 10, which
:class:`~engine.chunked.ChunkedDepth` prices. :func:`transitions` gives the training examples: every chunk
boundary of a query whose candidates were all scored offline.

Features (all computed; a :class:`LogisticStop` uses the subset it was fitted on):

- ``entered``: documents of the last chunk now in the top 10; ``margin``: that chunk's best score minus
  the 10th score; ``log_position``: log of the depth read; ``tenth``: the 10th score; ``first_ratio``:
  the next candidate's first-stage score over the top one's (:data:`CHUNK_FEATURES`, the first model).
- ``from_below``: documents of the current top 10 that came from below first-stage rank 10 (how much
  the reranker disagrees with the first stage on this query so far); ``deepest``: the first-stage rank of
  the deepest document in the top 10 over the depth read (near 1: the top is still being fed from the
  bottom); ``chunk_mean``: the last chunk's mean score minus the 10th score; ``near``: documents of the
  last chunk within :data:`NEAR` of the 10th score (near misses).

A listwise reranker gives an order, not scores (``ChunkState.ordinal``): after a step only the
:data:`RANK_FEATURES` can be read (``entered``, ``log_position``, ``first_ratio``, ``from_below``,
``deepest``); a stop model for it must use no other (:meth:`StopModel.uses`), e.g. :class:`EnteredRule`
or a :class:`LogisticStop` fitted on ``names=RANK_FEATURES``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.engine.policy import Budget

CHUNK_FEATURES = ("entered", "margin", "log_position", "tenth", "first_ratio")
MORE_FEATURES = ("from_below", "deepest", "chunk_mean", "near")
ALL_FEATURES = CHUNK_FEATURES + MORE_FEATURES
RANK_FEATURES = ("entered", "log_position", "first_ratio", "from_below", "deepest")  # no scores needed
NEAR = 1.0  # a near miss: within this many score units below the 10th score


@dataclass(frozen=True, slots=True)
class ChunkState:
    """What the reranker has seen so far for one query.

    ``scores`` are the reranker's scores of the first ``len(scores)`` candidates (first-stage order),
    ``first_scores`` the first-stage scores of every candidate, ``last`` the size of the last chunk.
    ``ordinal``: the scores are only an order (minus each candidate's position in a listwise ranking), so
    differences between them mean nothing and only the :data:`RANK_FEATURES` are read.
    """

    scores: tuple[float, ...]
    first_scores: tuple[float, ...]
    last: int
    spent_ms: float = 0.0
    spent_usd: float = 0.0
    remaining: Budget | None = None
    ordinal: bool = False

    @property
    def scored(self) -> int:
        return len(self.scores)

    @property
    def candidates(self) -> int:
        return len(self.first_scores)


def chunk_features(state: ChunkState, top: int = 10) -> dict[str, float]:
    """The evidence after a chunk (see the module docstring); ``margin`` is ``+inf`` while fewer than
    ``top`` documents are scored (every new document enters the top). For an ``ordinal`` state only the
    :data:`RANK_FEATURES` once the top is full."""
    scores = np.asarray(state.scores, dtype=float)
    n, last = len(scores), min(state.last, len(scores))
    firsts = state.first_scores
    head = firsts[0] if firsts else 0.0
    following = firsts[n] if n < len(firsts) else (firsts[-1] if firsts else 0.0)
    ratio = float(following / head) if head > 0 else 0.0
    if n < top or last == 0:
        return {"entered": float(last), "margin": math.inf, "log_position": math.log(max(n, 1)), "tenth": 0.0,
                "first_ratio": ratio, "from_below": 0.0, "deepest": 1.0, "chunk_mean": math.inf,
                "near": float(last)}  # fmt: skip
    order = sorted(range(n), key=lambda i: (-scores[i], i))[:top]  # the current top, ties by first-stage rank
    tenth = float(scores[order[-1]])
    chunk = scores[n - last :]
    # documents of the last chunk in the current top: ties at the 10th score count as entered
    ranks = {
        "entered": float(min(int((chunk >= tenth).sum()), top)),
        "log_position": math.log(n),
        "first_ratio": ratio,
        "from_below": float(sum(1 for i in order if i >= top)),
        "deepest": (max(order) + 1) / n,
    }
    if state.ordinal:
        return ranks
    return {
        **ranks,
        "margin": float(chunk.max() - tenth),
        "tenth": tenth,
        "chunk_mean": float(chunk.mean() - tenth),
        "near": float(((chunk < tenth) & (chunk >= tenth - NEAR)).sum()),
    }


# ---------------------------------------------------------------------------------------- stop models
@runtime_checkable
class StopModel(Protocol):
    """The probability that the next chunk changes the top 10, from :func:`chunk_features`."""

    def p_change(self, features: Mapping[str, float]) -> float: ...

    def uses(self) -> tuple[str, ...]:
        """The features it reads (a listwise reranker gives only :data:`RANK_FEATURES`)."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class MarginRule:
    """A hand rule: the next chunk will not change the top 10 (p = 0) when the last chunk put nothing
    into it and its best score fell at least ``margin`` below the 10th score; otherwise it will (p = 1)."""

    margin: float

    def p_change(self, features: Mapping[str, float]) -> float:
        return 0.0 if features["entered"] == 0 and features["margin"] <= -self.margin else 1.0

    def uses(self) -> tuple[str, ...]:
        return ("entered", "margin")

    def to_dict(self) -> dict[str, Any]:
        return {"model": "margin-rule", "margin": self.margin}


@dataclass(frozen=True, slots=True)
class EnteredRule:
    """A hand rule on the order alone (for listwise rerankers too): the next chunk will not change the top
    10 (p = 0) once the last chunk put nothing into it; otherwise it will (p = 1)."""

    def p_change(self, features: Mapping[str, float]) -> float:
        return 0.0 if features["entered"] == 0 else 1.0

    def uses(self) -> tuple[str, ...]:
        return ("entered",)

    def to_dict(self) -> dict[str, Any]:
        return {"model": "entered-rule"}


@dataclass(frozen=True)
class LogisticStop:
    """Logistic regression on standardised ``features`` (values clipped to ±``clip``)."""

    weights: tuple[float, ...]  # intercept first
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: float = 10.0
    features: tuple[str, ...] = CHUNK_FEATURES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.features) - set(ALL_FEATURES))
        if unknown:
            raise InputError(f"unknown stop-model features {unknown} (known: {', '.join(ALL_FEATURES)})")
        if not len(self.weights) - 1 == len(self.mean) == len(self.std) == len(self.features):
            raise InputError("stop model: weights, mean, std and features differ in length")

    def _x(self, features: Mapping[str, float]) -> npt.NDArray[np.float64]:
        raw = np.array([features[f] for f in self.features], dtype=float)
        raw = np.clip(raw, -self.clip, self.clip) if self.clip else raw
        return np.concatenate([[1.0], (raw - np.asarray(self.mean)) / np.asarray(self.std)])

    def p_change(self, features: Mapping[str, float]) -> float:
        if features.get("margin", 0.0) == math.inf:
            return 1.0  # fewer than 10 scored: the next chunk fills the top
        z = float(np.asarray(self.weights) @ self._x(features))
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def uses(self) -> tuple[str, ...]:
        return self.features

    @classmethod
    def fit(
        cls,
        features: Sequence[Mapping[str, float]],
        changed: Sequence[bool],
        *,
        c: float = 1.0,
        clip: float = 10.0,
        names: Sequence[str] = CHUNK_FEATURES,
    ) -> LogisticStop:
        """L2-regularised logistic regression (scikit-learn) of "the next chunk changed the top 10" on the
        features ``names``."""
        rows = [f for f in features if f.get("margin", 0.0) != math.inf]
        labels = [y for f, y in zip(features, changed, strict=True) if f.get("margin", 0.0) != math.inf]
        if len(rows) < 10 or len(set(labels)) < 2:
            raise InputError("need at least 10 chunk transitions with both outcomes to fit the stop model")
        linear_model = require("sklearn.linear_model", "bench")
        raw = np.clip(np.array([[f[n] for n in names] for f in rows]), -clip, clip)
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        std[std == 0] = 1.0
        model = linear_model.LogisticRegression(C=c, max_iter=1000)
        model.fit((raw - mean) / std, np.array(labels, dtype=int))
        weights = (float(model.intercept_[0]), *(float(w) for w in model.coef_[0]))
        return cls(weights, tuple(mean.tolist()), tuple(std.tolist()), clip, tuple(names))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": "logistic",
            "features": list(self.features),
            "weights": [round(w, 8) for w in self.weights],
            "mean": list(self.mean),
            "std": list(self.std),
            "clip": self.clip,
        }


def stop_model_from_dict(data: Mapping[str, Any]) -> StopModel:
    if data.get("model") == "margin-rule":
        return MarginRule(float(data["margin"]))
    if data.get("model") == "entered-rule":
        return EnteredRule()
    if data.get("model") == "logistic":
        names = tuple(data.get("features", CHUNK_FEATURES))
        return LogisticStop(tuple(data["weights"]), tuple(data["mean"]), tuple(data["std"]), float(data["clip"]), names)
    raise InputError(f"unknown stop model {data.get('model')!r} (logistic, margin-rule, entered-rule)")


# ---------------------------------------------------------------------------------------- training
def transitions(
    scores: Sequence[float], first_scores: Sequence[float], *, first: int, chunk: int, top: int = 10
) -> list[tuple[dict[str, float], bool, int, int]]:
    """Every chunk boundary of one query whose reranker scores are all known (offline): the features
    after the chunk, whether the next chunk changed the top ``top``, and the depths before and after it."""
    out: list[tuple[dict[str, float], bool, int, int]] = []
    n, depth, last = len(scores), min(first, len(scores)), min(first, len(scores))
    while depth < n:
        nxt = min(depth + chunk, n)
        state = ChunkState(tuple(scores[:depth]), tuple(first_scores), last)
        out.append((chunk_features(state, top), _top(scores[:nxt], top) != _top(scores[:depth], top), depth, nxt))
        depth, last = nxt, nxt - depth
    return out


def _top(scores: Sequence[float], top: int) -> frozenset[int]:
    return frozenset(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top])
