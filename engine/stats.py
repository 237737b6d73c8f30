"""Small statistics shared by the benchmarks and the experiment report: Holm, bootstraps, sign test, SRM.

All are deterministic (seeded numpy generators). numpy is a base dependency; scipy comes with the
``bench`` extra and is imported only by the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twostage_search.engine.optional import require

__all__ = [
    "DiffCI",
    "RateCI",
    "bootstrap_ratio_diff",
    "holm",
    "sign_test",
    "srm_test",
    "two_proportion_z",
    "welch_t",
]

CHUNK_CELLS = 4_000_000
"""Resample indices drawn at once (rows x units), to bound memory for large logs."""


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), ``None`` entries passed through.

    Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statistics 6 (1979).
    """
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True, slots=True)
class DiffCI:
    """A difference (treatment - control), its bootstrap percentile CI and two-sided bootstrap p-value."""

    delta: float
    low: float
    high: float
    p_value: float


def _ratio_resamples(num: Any, den: Any, resamples: int, rng: Any) -> Any:
    """``resamples`` values of sum(num)/sum(den) over units drawn with replacement."""
    import numpy as np

    n = len(num)
    out = np.empty(resamples)
    rows = max(1, CHUNK_CELLS // max(n, 1))
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        d = den[idx].sum(axis=1)
        out[start:stop] = np.divide(num[idx].sum(axis=1), d, out=np.zeros(stop - start), where=d > 0)
    return out


def bootstrap_ratio_diff(
    treatment: tuple[Sequence[float], Sequence[float]],
    control: tuple[Sequence[float], Sequence[float]],
    *,
    level: float = 0.95,
    resamples: int = 2_000,
    seed: int = 0,
) -> DiffCI:
    """Difference of two ratio metrics, resampling whole units (users) within each group.

    Each group is ``(numerators, denominators)`` with one entry per unit (e.g. a user's clicked queries
    and their queries); the metric is sum(numerators) / sum(denominators), so a user with many queries
    weighs by their queries while the resampling respects that a user's queries are not independent
    (a cluster bootstrap). The CI is the percentile interval of the resampled differences; the p-value
    is twice the smaller share of resampled differences on either side of 0 (with the +1 correction),
    at most 1.
    """
    import numpy as np

    tn, td = (np.asarray(v, dtype=float) for v in treatment)
    cn, cd = (np.asarray(v, dtype=float) for v in control)
    if len(tn) == 0 or len(cn) == 0 or td.sum() <= 0 or cd.sum() <= 0:
        raise ValueError("both groups need at least one unit with a positive denominator")
    delta = float(tn.sum() / td.sum() - cn.sum() / cd.sum())
    rng = np.random.default_rng(seed)
    diffs = _ratio_resamples(tn, td, resamples, rng) - _ratio_resamples(cn, cd, resamples, rng)
    alpha = (1.0 - level) / 2
    below = (1 + int((diffs <= 0).sum())) / (resamples + 1)
    above = (1 + int((diffs >= 0).sum())) / (resamples + 1)
    return DiffCI(
        delta=delta,
        low=float(np.quantile(diffs, alpha)),
        high=float(np.quantile(diffs, 1 - alpha)),
        p_value=min(1.0, 2 * min(below, above)),
    )


@dataclass(frozen=True, slots=True)
class RateCI:
    """A proportion with its confidence interval and the two-sided p-value against 1/2."""

    rate: float
    low: float
    high: float
    p_value: float


def sign_test(wins: int, losses: int, *, level: float = 0.95) -> RateCI | None:
    """Win rate wins / (wins + losses) with an exact binomial test against 1/2 (ties excluded).

    The CI is Clopper-Pearson's exact interval (``scipy.stats.binomtest(...).proportion_ci``).
    ``None`` when there are no decided comparisons.
    """
    n = wins + losses
    if n == 0:
        return None
    stats = require("scipy.stats", "bench")
    result = stats.binomtest(wins, n, 0.5, alternative="two-sided")
    ci = result.proportion_ci(confidence_level=level, method="exact")
    return RateCI(rate=wins / n, low=float(ci.low), high=float(ci.high), p_value=float(result.pvalue))


def srm_test(observed: Sequence[int], weights: Sequence[float]) -> float:
    """Sample-ratio-mismatch p-value: Pearson's chi-square of ``observed`` counts against ``weights``.

    A small p-value (below 0.001, say) means the traffic did not split as configured, and the
    experiment's differences cannot be trusted (Fabijan et al., "Diagnosing sample ratio mismatch in
    online controlled experiments", KDD 2019).
    """
    if len(observed) != len(weights) or len(observed) < 2:
        raise ValueError("need one count per weight, at least two")
    total = sum(observed)
    wsum = math.fsum(weights)
    if total == 0 or wsum <= 0:
        return 1.0
    stats = require("scipy.stats", "bench")
    expected = [total * w / wsum for w in weights]
    return float(stats.chisquare(list(observed), f_exp=expected).pvalue)


def two_proportion_z(successes_a: Any, n_a: Any, successes_b: Any, n_b: Any) -> tuple[Any, Any]:
    """Pooled two-proportion z-test of b against a: (z, two-sided p), elementwise over numpy arrays.

    z = (p_b - p_a) / sqrt(p (1 - p) (1/n_a + 1/n_b)) with the pooled p; z squared is Pearson's
    chi-square of the 2x2 table without continuity correction. Where a group is empty or the pooled
    rate is 0 or 1, z is 0 and p is 1. It approximates :func:`bootstrap_ratio_diff` when each unit has
    one query, at a cost that does not grow with the sample.
    """
    import numpy as np

    stats = require("scipy.stats", "bench")
    sa, na, sb, nb = (np.asarray(v, dtype=float) for v in (successes_a, n_a, successes_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (sa + sb) / (na + nb)
        se = np.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
        z = np.where(se > 0, (sb / nb - sa / na) / se, 0.0)
    return z, 2 * stats.norm.sf(np.abs(z))


def welch_t(mean_a: Any, var_a: Any, n_a: Any, mean_b: Any, var_b: Any, n_b: Any) -> tuple[Any, Any]:
    """Welch's t-test of b against a from summary statistics (sample variances): (t, two-sided p), elementwise.

    ``scipy.stats.ttest_ind_from_stats`` with ``equal_var=False``; where both variances are 0, t is 0
    and p is 1.
    """
    import numpy as np

    stats = require("scipy.stats", "bench")
    ma, va, na, mb, vb, nb = (np.asarray(v, dtype=float) for v in (mean_a, var_a, n_a, mean_b, var_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        t, p = stats.ttest_ind_from_stats(mb, np.sqrt(vb), nb, ma, np.sqrt(va), na, equal_var=False)
    degenerate = ~np.isfinite(t)
    return np.where(degenerate, 0.0, t), np.where(degenerate, 1.0, p)
