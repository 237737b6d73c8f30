"""The one evaluation module every benchmark uses: ir-measures with fixed rules, paired statistics.

Rules (:func:`evaluate`):

- A ranking is scored in the order given; :func:`ranked` puts (doc_id, score) pairs in that order
  (score descending, ties by ``doc_id`` ascending), so tied scores never reorder a ranking behind our back
  (trec_eval would break ties by ``doc_id`` descending).
- A document whose id equals the query id is dropped (BEIR's ``ignore_identical_ids``; on by default,
  off for collections whose query and document ids are separate namespaces, such as MS MARCO).
- A query of the split without results scores 0 (trec_eval's ``-c``): the mean is over every query.
- Gains are the qrels grades (linear, as trec_eval's nDCG). Binary measures (AP, R@k, RR, P@k...) count
  a document relevant when its grade is at least ``rel`` (1 by default; TREC DL uses 2), unless the
  measure names its own ``rel``.

Statistics for comparisons: a paired randomisation test (:func:`randomisation_test`), a paired t-test
(:func:`paired_ttest`), Holm's step-down correction across a table (:func:`holm`) and a paired
bootstrap 95% CI of the mean difference (:func:`bootstrap_ci`). All are seeded and deterministic.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twostage_search.engine.beir import read_trec_run
from twostage_search.engine.cpu import cpu
from twostage_search.engine.stats import holm

# (doc_id, score) in rank order: how a benchmark keeps one query's ranking.
Ranking = list[tuple[str, float]]

__all__ = [
    "Comparison",
    "Ranking",
    "bootstrap_ci",
    "compare",
    "evaluate",
    "holm",
    "machine",
    "mean",
    "paired_ttest",
    "percentile",
    "randomisation_test",
    "ranked",
    "read_run",
    "write_trec_run",
]

read_run = read_trec_run


def ranked(items: Iterable[tuple[str, float]]) -> Ranking:
    """(doc_id, score) pairs in rank order: score descending, ties by ``doc_id`` ascending."""
    return sorted(items, key=lambda r: (-r[1], r[0]))


def _with_rel(measure: Any, rel: int) -> Any:
    if "rel" in measure.SUPPORTED_PARAMS and "rel" not in measure.params:
        return measure(rel=rel)
    return measure


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    rankings: Mapping[str, Sequence[tuple[str, float]] | Sequence[str]],
    measures: Sequence[str],
    *,
    rel: int = 1,
    drop_query_id: bool = True,
) -> dict[str, list[float]]:
    """Per-query values of each measure (ir-measures), aligned with ``query_ids``.

    ``rankings`` maps a query id to its documents in rank order, as (doc_id, score) pairs or bare ids;
    the order given is the order scored. ``rel`` is the lowest grade a binary measure counts as relevant;
    ``drop_query_id`` drops documents whose id is the query's. See the module docstring for the rules.
    """
    import ir_measures

    if rel < 1:
        raise ValueError(f"rel must be at least 1, got {rel}")
    parsed = [_with_rel(ir_measures.parse_measure(m), rel) for m in measures]
    qrels_rows = [ir_measures.Qrel(q, d, r) for q in query_ids for d, r in qrels.get(q, {}).items()]
    run_rows = []
    for q in query_ids:
        docs = [item if isinstance(item, str) else item[0] for item in rankings.get(q, ())]
        if drop_query_id:
            docs = [d for d in docs if d != q]
        run_rows += [ir_measures.ScoredDoc(q, d, float(len(docs) - i)) for i, d in enumerate(docs)]
    values: dict[str, dict[str, float]] = {m: {} for m in measures}
    names = {str(p): m for p, m in zip(parsed, measures, strict=True)}
    for metric in ir_measures.iter_calc(parsed, qrels_rows, run_rows):
        values[names[str(metric.measure)]][metric.query_id] = float(metric.value)
    return {m: [values[m].get(q, 0.0) for q in query_ids] for m in measures}


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); 0 for no values."""
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else 0.0


def _diffs(system: Sequence[float], baseline: Sequence[float]) -> Any:
    import numpy as np

    if len(system) != len(baseline):
        raise ValueError("paired values differ in length")
    return np.asarray(system, dtype=float) - np.asarray(baseline, dtype=float)


def paired_ttest(system: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Two-sided paired t-test p-value of per-query values; 1.0 when they never differ, None if n < 2."""
    from scipy import stats

    d = _diffs(system, baseline)
    if len(d) < 2:
        return None
    if all(math.isclose(x, 0.0, abs_tol=1e-12) for x in d):
        return 1.0
    p = float(stats.ttest_rel(system, baseline).pvalue)
    return 1.0 if math.isnan(p) else p


def randomisation_test(
    system: Sequence[float], baseline: Sequence[float], *, trials: int = 10_000, seed: int = 0
) -> float | None:
    """Two-sided paired randomisation (sign-flip permutation) test of the mean difference.

    Each trial flips the sign of every query's difference with probability ½; the p-value is
    (1 + #trials with |mean| ≥ observed) / (1 + trials). 1.0 when the values never differ, None if n < 2.
    """
    import numpy as np

    d = _diffs(system, baseline)
    if len(d) < 2:
        return None
    observed = abs(float(d.mean()))
    if observed < 1e-12 and np.allclose(d, 0.0, atol=1e-12):
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, trials, 2_000):
        n = min(2_000, trials - start)
        signs = rng.choice((-1.0, 1.0), size=(n, len(d)))
        hits += int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + trials)


def bootstrap_ci(
    system: Sequence[float],
    baseline: Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean paired difference (queries resampled with replacement)."""
    import numpy as np

    d = _diffs(system, baseline)
    if len(d) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


@dataclass(frozen=True)
class Comparison:
    """A system against a baseline on one measure, over the same queries."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float | None
    p_holm: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "delta": round(self.delta, 4),
            "ci95": [round(self.ci_low, 4), round(self.ci_high, 4)],
            "p": self.p_value,
            "p_holm": self.p_holm,
        }


def compare(
    pairs: Sequence[tuple[Sequence[float], Sequence[float]]], *, test: str = "randomisation", seed: int = 0
) -> list[Comparison]:
    """(system, baseline) per-query pairs → difference, bootstrap 95% CI, paired p and Holm across all."""
    if test not in ("randomisation", "t-test"):
        raise ValueError(f"unknown test {test!r} (randomisation, t-test)")
    raw = []
    for system, baseline in pairs:
        p = (
            randomisation_test(system, baseline, seed=seed)
            if test == "randomisation"
            else paired_ttest(system, baseline)
        )
        lo, hi = bootstrap_ci(system, baseline, seed=seed)
        raw.append((mean(system) - mean(baseline), lo, hi, p))
    adjusted = holm([r[3] for r in raw])
    return [Comparison(d, lo, hi, p, a) for (d, lo, hi, p), a in zip(raw, adjusted, strict=True)]


def write_trec_run(path: Path, query_ids: Sequence[str], rankings: Mapping[str, Ranking], tag: str) -> None:
    """Write rankings as a TREC run (``qid Q0 docid rank score tag``), queries in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for q in query_ids:
            for rank, (doc_id, score) in enumerate(rankings.get(q, []), start=1):
                fh.write(f"{q} Q0 {doc_id} {rank} {score:.6f} {tag}\n")


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the CPU's kind too: see :func:`cpu`)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "processor": platform.processor() or platform.machine(),
        "cpus": cpus,
        "cpu": cpu(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def overlap_share(ranking: Sequence[str], reference: Sequence[str]) -> float:
    """The share of ``reference``'s documents that ``ranking`` holds too (two empty rankings agree)."""
    if not reference:
        return 0.0 if ranking else 1.0
    return len(set(ranking) & set(reference)) / len(reference)


def paired_ratio_ci(
    num: Sequence[float],
    den: Sequence[float],
    statistic: Callable[..., Any],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``statistic(num) / statistic(den)`` over paired per-query values (e.g. ``numpy.median`` of two systems'
    times, or ``numpy.sum`` for a throughput ratio), with a percentile bootstrap 95% CI: the queries are
    resampled, each keeping its pair."""
    import numpy as np

    x, y = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    ratios = statistic(x[idx], axis=1) / statistic(y[idx], axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(statistic(x) / statistic(y)), float(low), float(high)
