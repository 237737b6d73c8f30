"""How much two rankings agree: Jaccard of their sets, rank-biased overlap, and each document's rank move."""

from __future__ import annotations

from collections.abc import Sequence


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """|A ∩ B| / |A ∪ B| of the two lists' documents (1.0 for two empty lists)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def rbo(a: Sequence[str], b: Sequence[str], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap, RBO_ext, of two top-k lists (lengths may differ).

    W. Webber, A. Moffat and J. Zobel, "A Similarity Measure for Indefinite Rankings", ACM TOIS 28(4),
    2010, eq. 32: with ``s``/``l`` the shorter/longer list's length (``n`` in the code) and ``X_d`` the overlap of the
    top ``d`` (past ``s``, the shorter list's whole overlap with the longer one's top ``d``)::

        RBO_ext = (1-p)/p · (Σ_{d=1..l} X_d/d · p^d + Σ_{d=s+1..l} X_s·(d-s)/(s·d) · p^d)
                  + ((X_l - X_s)/l + X_s/s) · p^l

    ``p`` is the persistence: at 0.9 the top 10 ranks carry about 86% of the weight. 1.0 for two
    identical lists, 0.0 for disjoint ones; two empty lists give 1.0, one empty list 0.0.
    """
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    s, n = len(short), len(long_)
    if s == 0:
        return 1.0 if n == 0 else 0.0
    seen_short: set[str] = set()
    seen_long: set[str] = set()
    overlap = 0
    x: list[int] = [0]  # x[d] = X_d
    for d in range(1, n + 1):
        if d <= s:
            item = short[d - 1]
            overlap += item in seen_long
            seen_short.add(item)
        item = long_[d - 1]
        overlap += item in seen_short
        seen_long.add(item)
        x.append(overlap)
    x_s, x_l = x[s], x[n]
    total = sum(x[d] / d * p**d for d in range(1, n + 1))
    total += sum(x_s * (d - s) / (s * d) * p**d for d in range(s + 1, n + 1))
    return (1 - p) / p * total + ((x_l - x_s) / n + x_s / s) * p**n


def rank_moves(before: Sequence[str], after: Sequence[str]) -> list[int | None]:
    """For each document of ``after``, how many places it rose compared with ``before`` (negative: fell);
    None where ``before`` does not hold it."""
    rank = {doc: i for i, doc in enumerate(before)}
    return [rank[doc] - i if doc in rank else None for i, doc in enumerate(after)]
