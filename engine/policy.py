"""Depth policies: how many first-stage candidates to rerank for *this* query.

- :class:`FixedDepth` — the same k for every query (the usual cascade).
- :class:`BudgetDepth` — the largest k whose predicted cost (:mod:`engine.costmodel`) fits the
  remaining latency or money budget of the request (or of the configuration).
- :class:`AdaptiveDepth` — k from first-stage evidence (score gap and entropy of the top candidates,
  query length): for each candidate depth it predicts the nDCG gain of reranking that deep from those
  features (ridge regressions fitted on training queries) and picks ``argmax_k gain(k) − λ·ms(k)``,
  so confident queries rerank few documents and uncertain ones many. λ sets the price of a
  millisecond; :meth:`AdaptiveDepth.for_mean_cost` finds the λ that meets a target mean cost.

Every policy returns a :class:`Decision` that records why, so responses can explain the chosen k.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from twostage_search.engine.costmodel import CostModel
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Query, RankedList

DEFAULT_KS = (0, 5, 10, 20, 30, 50, 100)


@dataclass(frozen=True, slots=True)
class Budget:
    """A per-request (or per-configuration) limit on latency and/or money; ``None`` means no limit."""

    ms: float | None = None
    usd: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("ms", self.ms), ("usd", self.usd)):
            if value is not None and not value > 0:
                raise InputError(f"budget_{name} must be positive, got {value}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The rerank depth chosen for one query and why."""

    rerank_depth: int
    policy: str
    reason: str = ""
    hard: bool = False
    predicted_ms: float = 0.0


@runtime_checkable
class DepthPolicy(Protocol):
    """Chooses the rerank depth from the query, its first-stage ranking and what is left of the budget."""

    def decide(self, query: Query, first: RankedList, remaining: Budget | None) -> Decision: ...


# ---------------------------------------------------------------------------------------- features
FEATURES = ("gap", "entropy", "top", "qlen")


def first_stage_features(query: Query, first: RankedList, m: int = 10) -> dict[str, float]:
    """Evidence of how sure the first stage is, from its top ``m`` scores.

    - ``gap``: (s1 − s2) / s1, the relative lead of the best candidate (0 for a tie).
    - ``entropy``: entropy of softmax(top-m scores / s1 × 10), normalised to [0, 1]; flat → 1.
    - ``top``: s1 itself (SPLADE dot products grow with query/document overlap).
    - ``qlen``: number of whitespace-separated query words.
    """
    scores = np.array([h.score for h in first.items[:m]], dtype=float)
    qlen = float(len(query.text.split()))
    if len(scores) == 0 or scores[0] <= 0:
        return {"gap": 0.0, "entropy": 1.0, "top": 0.0, "qlen": qlen}
    s1 = scores[0]
    gap = float((s1 - scores[1]) / s1) if len(scores) > 1 else 1.0
    z = scores / s1 * 10.0
    p = np.exp(z - z.max())
    p /= p.sum()
    entropy = float(-(p * np.log(p + 1e-12)).sum() / math.log(len(p))) if len(p) > 1 else 0.0
    return {"gap": gap, "entropy": entropy, "top": float(s1), "qlen": qlen}


# ---------------------------------------------------------------------------------------- policies
@dataclass(frozen=True, slots=True)
class FixedDepth:
    """Rerank the top ``k`` of every query."""

    k: int

    def decide(self, query: Query, first: RankedList, remaining: Budget | None) -> Decision:
        return Decision(min(self.k, len(first)), "fixed", f"k={self.k}")


def _fits(cost: CostModel, stage: str, k: int, remaining: Budget | None) -> bool:
    if remaining is None:
        return True
    if remaining.ms is not None and cost.predict_ms(stage, k) > remaining.ms:
        return False
    return not (remaining.usd is not None and cost.predict_usd(stage, k) > remaining.usd)


@dataclass(frozen=True)
class BudgetDepth:
    """The largest k in ``ks`` (≤ ``max_k``) whose predicted rerank cost fits the remaining budget.

    ``default`` is the budget used when the request brings none (per-configuration budget).
    """

    cost: CostModel
    ks: Sequence[int] = DEFAULT_KS
    default: Budget | None = None
    stage: str = "rerank"

    def decide(self, query: Query, first: RankedList, remaining: Budget | None) -> Decision:
        remaining = remaining or self.default
        ks = sorted({min(k, len(first)) for k in self.ks})
        chosen = max((k for k in ks if _fits(self.cost, self.stage, k, remaining)), default=0)
        why = "no budget" if remaining is None else f"largest k within {remaining}"
        return Decision(chosen, "budget", why, predicted_ms=self.cost.predict_ms(self.stage, chosen))


class AdaptiveDepth:
    """Per-query depth from first-stage evidence, trading predicted nDCG gain against predicted cost.

    ``weights[k]`` holds a ridge regression (intercept + standardised :data:`FEATURES`) predicting the
    nDCG@10 gain of reranking the top ``k`` over the first stage; ``lam`` is the price of one predicted
    millisecond in nDCG. A budget, when given, removes the depths that would not fit.
    """

    def __init__(
        self,
        cost: CostModel,
        weights: Mapping[int, npt.ArrayLike],
        mean: npt.ArrayLike,
        std: npt.ArrayLike,
        *,
        lam: float = 0.0,
        stage: str = "rerank",
    ) -> None:
        self.cost = cost
        self.weights = {int(k): np.array(w, dtype=float) for k, w in weights.items()}
        self.mean = np.array(mean, dtype=float)
        self.std = np.array(std, dtype=float)
        self.lam = lam
        self.stage = stage

    @property
    def ks(self) -> list[int]:
        return sorted(self.weights)

    def _x(self, feats: Mapping[str, float]) -> np.ndarray:
        raw = np.array([feats[f] for f in FEATURES])
        return np.concatenate([[1.0], (raw - self.mean) / self.std])

    def predicted_gains(self, query: Query, first: RankedList) -> dict[int, float]:
        x = self._x(first_stage_features(query, first))
        return {k: (0.0 if k == 0 else float(w @ x)) for k, w in self.weights.items()}

    def decide(self, query: Query, first: RankedList, remaining: Budget | None) -> Decision:
        gains = self.predicted_gains(query, first)
        best_k, best_value = 0, 0.0
        for k in self.ks:
            kk = min(k, len(first))
            if not _fits(self.cost, self.stage, kk, remaining):
                continue
            value = gains[k] - self.lam * self.cost.predict_ms(self.stage, kk)
            if value > best_value + 1e-12:
                best_k, best_value = kk, value
        hard = best_k >= (self.ks[-1] if self.ks else 0) // 2 and best_k > 0
        return Decision(
            best_k,
            "adaptive",
            f"predicted gain {gains.get(best_k, 0.0):+.3f} at λ={self.lam:g}",
            hard=hard,
            predicted_ms=self.cost.predict_ms(self.stage, best_k),
        )

    # -------------------------------------------------------------------------------- training
    @classmethod
    def fit(
        cls,
        cost: CostModel,
        features: Sequence[Mapping[str, float]],
        gains: Sequence[Mapping[int, float]],
        *,
        ridge: float = 1.0,
        lam: float = 0.0,
        stage: str = "rerank",
    ) -> AdaptiveDepth:
        """Fit one ridge regression per depth: features of training queries → their observed nDCG gain."""
        if len(features) != len(gains) or len(features) < 10:
            raise InputError("need matching features and gains for at least 10 training queries")
        raw = np.array([[f[n] for n in FEATURES] for f in features])
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        std[std == 0] = 1.0
        x = np.hstack([np.ones((len(raw), 1)), (raw - mean) / std])
        penalty = ridge * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # do not shrink the intercept
        weights: dict[int, list[float]] = {}
        for k in sorted({k for g in gains for k in g}):
            y = np.array([g[k] for g in gains])
            weights[k] = np.linalg.solve(x.T @ x + penalty, x.T @ y).tolist()
        return cls(cost, weights, mean.tolist(), std.tolist(), lam=lam, stage=stage)

    def with_lambda(self, lam: float) -> AdaptiveDepth:
        return AdaptiveDepth(self.cost, self.weights, self.mean, self.std, lam=lam, stage=self.stage)

    def for_mean_cost(
        self, queries: Sequence[tuple[Query, RankedList]], target_ms: float, *, iterations: int = 40
    ) -> AdaptiveDepth:
        """The policy whose mean predicted rerank cost over ``queries`` is closest to ``target_ms`` from
        below (bisection on λ in log space)."""

        def mean_ms(lam: float) -> float:
            policy = self.with_lambda(lam)
            return float(np.mean([policy.decide(q, f, None).predicted_ms for q, f in queries]))

        lo, hi = 1e-9, 10.0
        if mean_ms(lo) <= target_ms:
            return self.with_lambda(lo)
        for _ in range(iterations):
            mid = math.sqrt(lo * hi)
            if mean_ms(mid) > target_ms:
                lo = mid
            else:
                hi = mid
        return self.with_lambda(hi)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": "adaptive",
            "features": list(FEATURES),
            "weights": {str(k): [round(float(v), 8) for v in w] for k, w in self.weights.items()},
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "lam": self.lam,
            "stage": self.stage,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, cost: CostModel) -> AdaptiveDepth:
        data = json.loads(Path(path).read_text())
        if data.get("features") != list(FEATURES):
            raise InputError(f"{path}: policy was fitted on features {data.get('features')}, expected {FEATURES}")
        weights = {int(k): w for k, w in data["weights"].items()}
        return cls(cost, weights, data["mean"], data["std"], lam=float(data["lam"]), stage=data.get("stage", "rerank"))
