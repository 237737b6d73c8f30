"""Rerankers' throughput side by side: pairs per second of each, as a ratio to the first, in one run.

    python -m twostage_search.benchmarks.studies.reranker_speed \\
        --dataset ../shared/datasets/crowdflower-search-relevance --split test \\
        --reranker onnx-cross-encoder --reranker graded --reranker graded-ce --reranker graded-stacked

Every reranker (a registered name, ``NAME:key=value,...`` for options) is loaded first. Each query of the split
(``--splits-file``, default the committed query split in ``benchmarks/data/splits``) then has its judged
documents reranked by every reranker in a rotating order, one query at a time as a service would, so the
machine's load hits them alike;
``--warmup`` queries go through each untimed first. Reported per reranker: pairs per second over all the timed
queries, the p50 milliseconds per query, and the pairs-per-second ratio to the first reranker with a bootstrap
95% CI over queries. Nothing about quality is measured here (see the graded studies).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import machine, paired_ratio_ci, percentile
from twostage_search.benchmarks.graded import load_graded
from twostage_search.benchmarks.graded_data import SPLITS_DIR, read_splits
from twostage_search.benchmarks.report import run_study
from twostage_search.engine.argtypes import key_values
from twostage_search.engine.errors import InputError
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.registry import rerankers
from twostage_search.engine.types import Candidate, Query

log = logging.getLogger(__name__)
SEED = 13


def parse_reranker(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,key=value`` → (name, options)."""
    name, _, rest = spec.partition(":")
    return name, key_values([p for p in rest.split(",") if p], f"--reranker {spec}") if rest else {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    specs = [parse_reranker(s) for s in args.reranker]
    labels = list(args.reranker)
    if len(set(labels)) != len(labels):
        raise InputError("each --reranker once")
    data = load_graded(args.dataset)
    data.splits = read_splits(args.splits_file or SPLITS_DIR / f"{args.dataset.name}.tsv")
    if args.split not in data.splits:
        raise InputError(f"unknown split {args.split!r} (have {', '.join(data.splits)})")
    ids = sorted(data.splits[args.split])
    if args.max_queries:
        ids = ids[: args.max_queries]
    models = {label: rerankers.get(name)(**options) for label, (name, options) in zip(labels, specs, strict=True)}
    lists: list[tuple[Query, list[Candidate]]] = []
    for qid in ids:
        docs = [data.corpus[d] for d in sorted(data.qrels.get(qid, {})) if d in data.corpus]
        if docs:
            candidates = [Candidate(d.doc_id, 0.0, d.text, d.title) for d in docs]
            lists.append((data.queries[qid], candidates))
    if not lists:
        raise InputError(f"no judged query in split {args.split!r}")
    for query, ranking in lists[: args.warmup]:
        for model in models.values():
            model.rerank(query, ranking)
    ms: dict[str, list[float]] = {label: [] for label in labels}
    for i, (query, ranking) in enumerate(lists):
        for j in range(len(labels)):
            label = labels[(i + j) % len(labels)]
            started = time.perf_counter()
            models[label].rerank(query, ranking)
            ms[label].append((time.perf_counter() - started) * 1000)
    pairs = np.array([len(r) for _, r in lists], dtype=float)
    rows = {}
    for label in labels:
        # throughput over the same pairs: the first reranker's time / this one's
        point, low, high = paired_ratio_ci(ms[labels[0]], ms[label], np.sum, seed=SEED)
        rows[label] = {
            "pairs_per_s": round(float(pairs.sum() / sum(ms[label]) * 1000), 1),
            "p50_ms_per_query": round(percentile(ms[label], 50), 2),
            "throughput_vs_first": [round(point, 3), round(low, 3), round(high, 3)],
        }
    return {
        "dataset": str(args.dataset),
        "split": args.split,
        "queries": len(lists),
        "pairs": int(pairs.sum()),
        "warmup": min(args.warmup, len(lists)),
        "rerankers": rows,
        "machine": machine(),
    }


def markdown(report: dict[str, Any]) -> str:
    first = next(iter(report["rerankers"]))
    lines = [
        f"{report['dataset']}, {report['split']}: {report['queries']} queries, {report['pairs']} pairs",
        "",
        f"| reranker | pairs/s | p50 ms per query | throughput × {first} [95% CI] |",
        "| --- | --- | --- | --- |",
    ]
    for label, r in report["rerankers"].items():
        point, low, high = r["throughput_vs_first"]
        lines.append(
            f"| {label} | {r['pairs_per_s']} | {r['p50_ms_per_query']} | {point:.2f} [{low:.2f}, {high:.2f}] |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="graded BEIR folder with a committed split")
    parser.add_argument("--splits-file", type=Path, default=None, help="default: the committed split of the dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--reranker", action="append", required=True, help="NAME[:key=value,...] (repeatable)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-queries", type=int, default=0, help="the first N queries of the split (0: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    setup_logging()
    return run_study(args, run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
