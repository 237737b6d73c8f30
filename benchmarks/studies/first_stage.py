"""First-stage benchmark on a BEIR-format dataset: build throughput, query latency and quality.

    python -m twostage_search.benchmarks.studies.first_stage --dataset benchmarks/data/scifact --index var/scifact

Builds the index unless ``--index`` already holds one (``--rebuild`` forces it), then runs every
query of the split through ``TwoStage(retriever, IdentityReranker)`` one at a time, as a service
would, and reports nDCG@10, Recall@100, MRR@10 (:mod:`benchmarks.evaluation`: ties by ``doc_id``, a
document whose id is the query's dropped, queries without results scored 0), query latency p50/p95/mean,
and the index build throughput recorded in ``meta.json``. Writes a TREC run and a JSON report to ``--out``.
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

from twostage_search.benchmarks.evaluation import Ranking, evaluate, machine, mean, percentile, write_trec_run
from twostage_search.engine.beir import count_docs, find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.errors import TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.pipeline import TwoStage
from twostage_search.rerankers.identity import IdentityReranker

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100", "RR@10")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes
    from twostage_search.engine.encoders import create_encoder
    from twostage_search.engine.models import DEFAULT_SPLADE
    from twostage_search.engine.registry import index_backends

    corpus = find_file(args.dataset, "corpus")
    qrels = read_qrels(args.dataset / "qrels" / f"{args.split}.tsv")
    queries = [q for q in read_queries(find_file(args.dataset, "queries")) if q.query_id in qrels]
    if args.max_queries:
        queries = queries[: args.max_queries]
    if args.rebuild or not (args.index / "meta.json").is_file():
        encoder = create_encoder("splade", model=args.model or DEFAULT_SPLADE, max_length=args.max_length)
        index = index_backends.get(args.backend).build(
            read_corpus(corpus), args.index, encoder=encoder, total=count_docs(corpus), threads=args.threads
        )
    else:
        index = indexes.load(args.index)
    meta = index.meta
    pipeline = TwoStage(index.retriever(), IdentityReranker(), depth=args.depth)
    for q in queries[: args.warmup]:  # warm-up (JVM JIT, torch kernels), not timed
        pipeline.search(q, k=args.depth)
    latencies: list[float] = []
    rankings: dict[str, Ranking] = {}
    for q in queries:
        started = time.perf_counter()
        ranking = pipeline.search(q, k=args.depth)
        latencies.append((time.perf_counter() - started) * 1000)
        rankings[q.query_id] = [(h.doc_id, h.score) for h in ranking]
    query_ids = [q.query_id for q in queries]
    scores = {m: mean(v) for m, v in evaluate(qrels, query_ids, rankings, MEASURES, rel=args.rel).items()}
    build = meta.get("build_seconds", {})
    report = {
        "dataset": str(args.dataset),
        "split": args.split,
        "queries": len(queries),
        "docs": meta["doc_count"],
        "encoder": meta["encoder"],
        "scale": meta["scale"],
        "mean_doc_terms": round(meta.get("mean_doc_terms", 0.0), 1),
        "build_docs_per_s": {
            "encode": round(meta["doc_count"] / build["encode"], 1) if build.get("encode") else None,
            "index": round(meta["doc_count"] / build["index"], 1) if build.get("index") else None,
            "total": round(meta["doc_count"] / build["total"], 1) if build.get("total") else None,
        },
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 2),
            "p95": round(percentile(latencies, 95), 2),
            "mean": round(statistics.fmean(latencies), 2),
        },
        "depth": args.depth,
        "warmup_queries": min(args.warmup, len(queries)),
        "quality": {m: round(v, 4) for m, v in scores.items()},
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_trec_run(args.out / "first_stage.run", query_ids, rankings, "twostage-splade")
    (args.out / "first_stage.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", type=Path, default=Path("var/scifact"))
    parser.add_argument("--backend", default="lucene-impact", help="index backend used when building")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=100, help="results per query (for Recall@100)")
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--rel", type=int, default=1, help="lowest relevant grade for binary measures")
    parser.add_argument("--warmup", type=int, default=50, help="untimed warm-up queries (default 50)")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    setup_logging(1)
    try:
        report = run(args)
    except TwoStageError as exc:
        print(f"first_stage: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    q, lat, b = report["quality"], report["latency_ms"], report["build_docs_per_s"]
    print(
        f"{report['dataset']} ({report['split']}, {report['queries']} queries, {report['docs']} docs): "
        + ", ".join(f"{m} {v:.4f}" for m, v in q.items())
        + f" | query latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms"
        + f" | build {b['total']} docs/s (encode {b['encode']}, index {b['index']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
