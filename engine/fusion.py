"""Rank fusion of several first-stage rankings: pure functions, no I/O.

Two families, each with one weight per input ranking:

- **Reciprocal-rank fusion** (Cormack, Clarke & Büttcher, SIGIR 2009): ``score(d) = Σ_i w_i / (k + rank_i(d))``
  over the rankings that contain ``d`` (ranks from 1). Only ranks matter, so it needs no score calibration;
  ``k`` (60 in the paper) flattens the head.
- **Normalised score fusion** (CombSUM of normalised scores, Fox & Shaw 1994; Lee 1997): each ranking's
  scores are normalised per query, ``min-max`` to [0, 1] (``(s - min) / (max - min)``; all equal → 1) or
  ``z-score`` (``(s - mean) / std``, population std; all equal → 0), then ``score(d) = Σ_i w_i · norm_i(d)``.
  A document a ranking did not return gets that ranking's lowest normalised score (0 for min-max), i.e.
  it is treated as no better than the ranking's last document.

The result is a list of (doc_id, fused score), score descending, ties by ``doc_id``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from operator import itemgetter

RRF = "rrf"
MINMAX = "minmax"
ZSCORE = "zscore"
METHODS = (RRF, MINMAX, ZSCORE)
DEFAULT_RRF_K = 60.0

# One ranking: (doc_id, score) in rank order (best first).
Ranking = Sequence[tuple[str, float]]


def _check(rankings: Sequence[Ranking], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"weights must be finite and non-negative, got {list(weights)}")
    return [float(w) for w in weights]


def _sorted(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Score descending, ties by ``doc_id``: by id, then by score (a stable sort, ``reverse`` keeps it stable)."""
    return sorted(sorted(scores.items()), key=itemgetter(1), reverse=True)


def rrf(
    rankings: Sequence[Ranking], weights: Sequence[float] | None = None, *, k: float = DEFAULT_RRF_K
) -> list[tuple[str, float]]:
    """Weighted reciprocal-rank fusion: ``Σ_i w_i / (k + rank_i(d))``, ranks counted from 1 in the order given."""
    if k < 0 or not math.isfinite(k):
        raise ValueError(f"RRF k must be finite and ≥ 0, got {k}")
    ws = _check(rankings, weights)
    fused: dict[str, float] = {}
    for ranking, w in zip(rankings, ws, strict=True):
        for rank, (doc_id, _) in enumerate(ranking, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + w / (k + rank)
    return _sorted(fused)


def normalise(scores: Sequence[float], method: str) -> list[float]:
    """Per-query normalisation of one ranking's scores: ``minmax`` or ``zscore`` (see the module docstring)."""
    if not scores:
        return []
    if method == MINMAX:
        lo, hi = min(scores), max(scores)
        return [1.0] * len(scores) if hi == lo else [(s - lo) / (hi - lo) for s in scores]
    if method == ZSCORE:
        mu = sum(scores) / len(scores)
        sd = math.sqrt(sum((s - mu) ** 2 for s in scores) / len(scores))
        return [0.0] * len(scores) if sd == 0 else [(s - mu) / sd for s in scores]
    raise ValueError(f"unknown normalisation {method!r} ({MINMAX}, {ZSCORE})")


def score_fusion(
    rankings: Sequence[Ranking], weights: Sequence[float] | None = None, *, method: str = MINMAX
) -> list[tuple[str, float]]:
    """Weighted sum of per-ranking normalised scores; a missing document gets that ranking's lowest."""
    ws = _check(rankings, weights)
    normed: list[dict[str, float]] = []
    floors: list[float] = []
    for ranking in rankings:
        values = normalise([s for _, s in ranking], method)
        normed.append(dict(zip((d for d, _ in ranking), values, strict=True)))
        floors.append(min(values) if values else 0.0)
    # Σ_i w_i · norm_i(d), added ranking by ranking in the order given (as ``sum`` would, bit for bit)
    fused = dict.fromkeys((d for ranking in rankings for d, _ in ranking), 0.0)
    for n, floor, w in zip(normed, floors, ws, strict=True):
        missing = w * floor
        for d in fused:
            fused[d] += w * n[d] if d in n else missing
    return _sorted(fused)


def fuse(
    rankings: Sequence[Ranking], weights: Sequence[float] | None = None, *, method: str = RRF, k: float = DEFAULT_RRF_K
) -> list[tuple[str, float]]:
    """Fuse with ``method``: ``rrf`` (uses ``k``), ``minmax`` or ``zscore`` score fusion."""
    if method == RRF:
        return rrf(rankings, weights, k=k)
    if method in (MINMAX, ZSCORE):
        return score_fusion(rankings, weights, method=method)
    raise ValueError(f"unknown fusion method {method!r} ({', '.join(METHODS)})")
