"""Evaluation helpers for benchmarks: ir-measures over rankings, paired t-tests, percentiles, TREC runs."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# (doc_id, score) in rank order: how a benchmark keeps one query's ranking.
Ranking = list[tuple[str, float]]


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    rankings: Mapping[str, Ranking],
    measures: Sequence[str],
) -> dict[str, list[float]]:
    """Per-query values of each measure (ir-measures), aligned with ``query_ids``.

    Rankings are scored in the order given (the order the system serves: score, then ``doc_id``),
    not re-sorted by score as trec_eval would, so tied scores cannot reorder them. A query without
    results scores 0 (trec_eval's ``-c``), so the mean is over every query of the split.
    """
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    qrels_rows = [ir_measures.Qrel(q, d, r) for q in query_ids for d, r in qrels.get(q, {}).items()]
    run_rows = [
        ir_measures.ScoredDoc(q, doc_id, float(len(rankings[q]) - i))
        for q in query_ids
        if q in rankings
        for i, (doc_id, _) in enumerate(rankings[q])
    ]
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


def paired_ttest(system: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Two-sided paired t-test p-value of per-query values; 1.0 when they never differ, None if n < 2."""
    from scipy import stats

    if len(system) != len(baseline):
        raise ValueError("paired values differ in length")
    if len(system) < 2:
        return None
    if all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(system, baseline, strict=True)):
        return 1.0
    p = float(stats.ttest_rel(system, baseline).pvalue)
    return 1.0 if math.isnan(p) else p


def write_trec_run(path: Path, query_ids: Sequence[str], rankings: Mapping[str, Ranking], tag: str) -> None:
    """Write rankings as a TREC run (``qid Q0 docid rank score tag``), queries in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for q in query_ids:
            for rank, (doc_id, score) in enumerate(rankings.get(q, []), start=1):
                fh.write(f"{q} Q0 {doc_id} {rank} {score:.6f} {tag}\n")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "processor": platform.processor() or platform.machine(),
        "cpus": cpus,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
