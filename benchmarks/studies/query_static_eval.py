"""Measure static (and other) dense query sides against bge-small's full one: quality, and cost side by side.

    python -m twostage_search.benchmarks.studies.query_static_eval evaluate --dataset ../shared/datasets/scifact \
        --dense-index var/scifact-dense --bm25-index var/scifact-bm25 \
        --student bundled:bge-small-query-l2 --student bundled:bge-small-query-static
    python -m twostage_search.benchmarks.studies.query_static_eval timing \
        --student bundled:bge-small-query-l2 --student bundled:bge-small-query-static

``evaluate``: the dev and test queries (SciFact: dev = the first 300 train queries, test = qrels/test.tsv;
CrowdFlower, Home Depot: benchmarks/data/splits) through the full query side and each student over one dense
index (exact scan), alone and in the default hybrid (BM25 + dense, min-max, weights 1:2 as chosen on dev in
docs/first-stage.md): nDCG@10 and R@100, each student's paired difference from the full side with a bootstrap
95% CI and a paired randomisation test, Holm-corrected over the split's table.

``timing``: the query-encoding cost of each side on the same dev queries, side by side in one process
(rotating order, after a warm-up), as p50 ms and a ratio to the full encoder. Meant for a quiet machine; only
the ratios travel between machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import compare, evaluate, machine, mean
from twostage_search.benchmarks.studies.query_static import TEACHER, dev_queries, full_vectors
from twostage_search.benchmarks.studies.query_student import split_ids
from twostage_search.engine.beir import find_file, read_queries
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100")
DEPTH = 100


def evaluate_sides(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes
    from twostage_search.engine.fusion import MINMAX, fuse
    from twostage_search.engine.types import Query
    from twostage_search.indexes.hybrid import DEFAULT_WEIGHTS

    dense = indexes.load(args.dense_index)
    if dense.meta["encoder"]["model"] != TEACHER:
        raise SystemExit(f"{args.dense_index} was not built with {TEACHER}")
    searcher = dense.retriever(query_encoder="full")
    students = {spec: dense.query_encoder(spec) for spec in args.student}  # the index checks each teacher
    bm25 = indexes.load(args.bm25_index).retriever()
    weights = [DEFAULT_WEIGHTS["bm25"], DEFAULT_WEIGHTS["dense"]]
    texts = {q.query_id: q.text for q in read_queries(find_file(args.dataset, "queries"))}
    report: dict[str, Any] = {
        "dataset": args.dataset.name,
        "dense_index": {k: dense.meta[k] for k in ("encoder", "doc_count")},
        "students": {spec: getattr(s, "student", {}) for spec, s in students.items()},
        "hybrid": f"BM25 + dense, min-max, weights {weights[0]:g}:{weights[1]:g}, depth {DEPTH} each",
        "machine": machine(),
    }
    args.cache.mkdir(parents=True, exist_ok=True)
    for split in args.splits.split(","):
        ids, graded = split_ids(args.dataset, split)
        qrels = {q: {d: g - args.grade_offset for d, g in docs.items()} for q, docs in graded.items()}
        ids = [q for q in ids if q in texts][: args.limit or None]
        queries = [texts[q] for q in ids]
        vectors = {"full": full_vectors(queries, args.cache)}
        for spec, student in students.items():
            vectors[spec] = np.stack([student.encode_queries([q])[0] for q in queries])  # one at a time
        runs: dict[str, dict[str, list[tuple[str, float]]]] = {}
        for row, query_id in enumerate(ids):
            lexical = [(h.doc_id, h.score) for h in bm25.retrieve(Query(query_id, texts[query_id]), DEPTH)]
            for side, matrix in vectors.items():
                hits = searcher.search_vector(matrix[row], DEPTH)
                runs.setdefault(f"dense/{side}", {})[query_id] = hits
                runs.setdefault(f"hybrid/{side}", {})[query_id] = fuse([lexical, hits], weights, method=MINMAX)[:DEPTH]
        scores = {name: evaluate(qrels, ids, run, MEASURES, rel=args.rel) for name, run in runs.items()}
        rows: dict[str, Any] = {name: {m: round(mean(v), 4) for m, v in s.items()} for name, s in scores.items()}
        labels = [(kind, side, m) for side in students for kind in ("dense", "hybrid") for m in MEASURES]
        pairs = [(scores[f"{kind}/{side}"][m], scores[f"{kind}/full"][m]) for kind, side, m in labels]
        rows["minus_full"] = {
            f"{side} {kind} {m}": c.as_dict() for (kind, side, m), c in zip(labels, compare(pairs), strict=True)
        }
        rows["cosine_to_full"] = {
            side: round(float((vectors[side] * vectors["full"]).sum(axis=1).mean()), 4) for side in students
        }
        rows["queries"] = len(ids)
        report[split] = rows
        log.info("%s %s: %s", args.dataset.name, split, {k: v for k, v in rows.items() if k != "minus_full"})
    return report


def timing(args: argparse.Namespace) -> dict[str, Any]:
    """p50 encode ms of each query side on the same queries, side by side (rotating order), and the ratios."""
    from twostage_search.engine.dense import DenseEncoder
    from twostage_search.engine.dense_query import open_student

    queries = [q for texts in dev_queries(args.datasets).values() for q in texts[: args.queries]]
    sides: dict[str, Any] = {"full": DenseEncoder(TEACHER, threads=args.threads)}
    for spec in args.student:
        sides[spec] = open_student(spec, threads=args.threads)
    names = list(sides)
    for name in names:  # warm-up: sessions, allocations, page cache
        sides[name].encode_queries(queries[:20])
    ms: dict[str, list[float]] = {name: [] for name in names}
    for i, text in enumerate(queries):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            sides[name].encode_queries([text])
            ms[name].append((time.perf_counter() - started) * 1000)
    p50 = {name: statistics.median(v) for name, v in ms.items()}
    return {
        "queries": len(queries),
        "threads": args.threads,
        "p50_ms": {name: round(v, 3) for name, v in p50.items()},
        "ratio_to_full": {name: round(v / p50["full"], 4) for name, v in p50.items()},
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="full query side vs students over one dense index and the hybrid")
    e.add_argument("--dataset", type=Path, required=True)
    e.add_argument("--dense-index", type=Path, required=True)
    e.add_argument("--bm25-index", type=Path, required=True)
    e.add_argument("--student", action="append", default=[], help="a student spec (repeat)")
    e.add_argument("--rel", type=int, default=1, help="lowest relevant grade for R@100 (after the offset)")
    e.add_argument(
        "--grade-offset", type=int, default=0, help="subtracted from every grade (1: CrowdFlower, Home Depot)"
    )
    e.add_argument("--limit", type=int, default=0, help="the first N queries of each split, file order (0: all)")
    e.add_argument("--splits", choices=("dev,test", "dev", "test"), default="dev,test", help="which splits to run")
    e.add_argument("--name", default="query_static", help="the report is OUT/NAME-DATASET[-SPLIT].json")
    e.add_argument("--cache", type=Path, default=Path("var/query_static"), help="full-side query vectors")
    e.add_argument("--out", type=Path, default=Path("benchmarks/results/query_static"))
    t = sub.add_parser("timing", help="query encoding p50 of each side, side by side (a quiet machine)")
    t.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    t.add_argument("--student", action="append", default=[], help="a student spec (repeat)")
    t.add_argument("--queries", type=int, default=200, help="dev queries per set")
    t.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: ONNX Runtime's)")
    t.add_argument("--out", type=Path, default=Path("benchmarks/results/query_static/timing.json"))
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "evaluate":
        report = evaluate_sides(args)
        suffix = "" if args.splits == "dev,test" else f"-{args.splits}"
        out = args.out / f"{args.name}-{args.dataset.name}{suffix}.json"
    else:
        report = timing(args)
        out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
