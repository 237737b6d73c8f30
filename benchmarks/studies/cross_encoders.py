"""Cross-encoder runtimes side by side: the same model and the same pairs in torch fp32, ONNX fp32 and ONNX
INT8, plus the bundled general model (ms-marco-MiniLM-L-12-v2 INT8), in one process.

    twostage index ../shared/datasets/scifact/corpus.jsonl --index var/scifact-bm25 --backend lucene-bm25
    twostage export-onnx bundled:ce-minilm-l6-scifact var/ce-fp32 --precision fp32
    twostage export-onnx bundled:ce-minilm-l6-scifact var/ce-int8
    nice -n 10 python -m twostage_search.benchmarks.studies.cross_encoders --index var/scifact-bm25 \\
        --dataset ../shared/datasets/scifact --onnx-fp32 var/ce-fp32 --onnx-int8 var/ce-int8 --max-queries 30 --depth 10

Each query's top ``--depth`` first-stage candidates are reranked by every system in turn (the order
rotates per query), so the timings are paired and share the machine's load; docs/s is pairs scored
over the time spent scoring them. nDCG@10 is over the reranked head followed by the first-stage tail.
Differences against the first system: mean, 95% bootstrap CI (10,000 resamples of queries), paired
t-test p-value, Holm-corrected over the comparisons.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import Comparison, compare, evaluate, machine, mean
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Candidate, Query

log = logging.getLogger(__name__)


def systems(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.rerankers.cross_encoder import CrossEncoderReranker
    from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker

    common = {"max_length": args.max_length, "threads": args.threads}
    out: dict[str, Any] = {f"torch fp32 ({args.model})": CrossEncoderReranker(args.model, batch_size=1, **common)}
    if args.onnx_fp32:
        out[f"ONNX fp32 ({args.model})"] = OnnxCrossEncoderReranker(str(args.onnx_fp32), **common)
    if args.onnx_int8:
        out[f"ONNX INT8 ({args.model})"] = OnnxCrossEncoderReranker(str(args.onnx_int8), **common)
    out["ONNX INT8 ms-marco-MiniLM-L-12-v2 (general)"] = OnnxCrossEncoderReranker(**common)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes

    qrels = read_qrels(args.dataset / "qrels" / f"{args.split}.tsv")
    queries = [q for q in read_queries(find_file(args.dataset, "queries")) if q.query_id in qrels]
    queries = sorted(queries, key=lambda q: q.query_id)[: args.max_queries]
    corpus = {d.doc_id: d for d in read_corpus(find_file(args.dataset, "corpus"))}
    retriever = indexes.load(args.index).retriever()
    first = {q.query_id: retriever.retrieve(q, args.depth) for q in queries}
    rerankers = systems(args)
    names = list(rerankers)
    seconds = dict.fromkeys(names, 0.0)
    pairs = dict.fromkeys(names, 0)
    rankings: dict[str, dict[str, list[tuple[str, float]]]] = {n: {} for n in names}
    for q in queries:  # warm-up
        cands = [Candidate(h.doc_id, h.score, corpus[h.doc_id].text, corpus[h.doc_id].title) for h in first[q.query_id]]
        for r in rerankers.values():
            r.rerank(q, cands[:2])
        break
    for i, q in enumerate(queries):
        hits = first[q.query_id]
        cands = [Candidate(h.doc_id, h.score, corpus[h.doc_id].text, corpus[h.doc_id].title) for h in hits]
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            ranking = rerankers[name].rerank(Query(q.query_id, q.text), cands)
            seconds[name] += time.perf_counter() - started
            pairs[name] += len(cands)
            rankings[name][q.query_id] = [(h.doc_id, h.score) for h in ranking]
        log.info("query %d/%d", i + 1, len(queries))
    qids = [q.query_id for q in queries]
    first_run = {q: [(h.doc_id, h.score) for h in first[q]] for q in qids}
    per_query = {n: evaluate(qrels, qids, rankings[n], ["nDCG@10"])["nDCG@10"] for n in names}
    base_first = evaluate(qrels, qids, first_run, ["nDCG@10"])["nDCG@10"]
    base = names[0]
    others = [(per_query[n], per_query[base]) for n in names[1:]]  # Holm's family: the systems against the base
    comparisons = dict(zip(names[1:], compare(others, test="t-test"), strict=True))
    rows = []
    for n in names:
        c = comparisons.get(n, Comparison(0.0, 0.0, 0.0, None))
        rows.append(
            {
                "system": n,
                "nDCG@10": round(mean(per_query[n]), 4),
                "delta_vs_torch_fp32": round(c.delta, 4),
                "ci95": [round(c.ci_low, 4), round(c.ci_high, 4)],
                "p_holm": None if c.p_holm is None else float(f"{c.p_holm:.3g}"),
                "docs_per_s": round(pairs[n] / seconds[n], 1),
                "speedup_vs_torch_fp32": round((pairs[n] / seconds[n]) / (pairs[base] / seconds[base]), 2),
            }
        )
    return {
        "dataset": str(args.dataset),
        "split": args.split,
        "queries": len(qids),
        "depth": args.depth,
        "first_stage_nDCG@10": round(mean(base_first), 4),
        "max_length": args.max_length,
        "threads": args.threads,
        "machine": machine(),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/scifact"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", type=Path, required=True, help="first-stage index")
    parser.add_argument("--model", default="bundled:ce-minilm-l6-scifact", help="torch model (sentence-transformers)")
    parser.add_argument("--onnx-fp32", type=Path, default=None, help="its fp32 export (twostage export-onnx)")
    parser.add_argument("--onnx-int8", type=Path, default=None, help="its INT8 export")
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--max-queries", type=int, default=30, help="first N test queries by id")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/cross_encoders.json"))
    args = parser.parse_args(argv)
    setup_logging(1)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    for row in report["rows"]:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
