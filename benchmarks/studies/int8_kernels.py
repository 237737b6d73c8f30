"""What exact INT8 products cost and change on this CPU: the bundled INT8 cross-encoder reranking the published
TREC DL19 BM25 top 20, with ONNX Runtime's default 8-bit product and with the exact one the engine uses
(``session.x64quantprecision``; see engine/onnx_session.py), side by side in one process.

    python -m twostage_search.benchmarks.studies.int8_kernels --dataset ../shared/datasets/trec-dl-2019-passage

On CPUs with VNNI both products are exact and the two columns agree (the engine leaves the setting off there;
the study sets it anyway, to measure what it costs); on AVX2 CPUs without VNNI the default saturates
intermediate sums. Each pair is scored by both sessions in turn (the order alternates per query),
so the timings share the machine's load. Reported: ms per pair for each and their ratio, the largest logit
difference, nDCG@10 of each (grades ≥ 2 relevant for binary measures, linear gains) with the paired difference
(bootstrap 95% CI, randomisation test), and the CPU's vector flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import compare, evaluate, machine, mean, ranked
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries, read_trec_run
from twostage_search.engine.cpu import cpu
from twostage_search.engine.errors import TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)


def cpu_flags() -> list[str]:
    """The x86 vector extensions that decide ONNX Runtime's 8-bit kernels."""
    return sorted(cpu()["features"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker

    qrels = read_qrels(args.dataset / "qrels" / "test.tsv")
    queries = {q.query_id: q.text for q in read_queries(find_file(args.dataset, "queries"))}
    first = read_trec_run(args.dataset / "runs" / "bm25.top100.trec")
    query_ids = [q for q in first if q in qrels and q in queries][: args.max_queries]
    wanted = {d for q in query_ids for d, _ in first[q][: args.depth]}
    texts = {d.doc_id: d.full_text for d in read_corpus(find_file(args.dataset, "corpus")) if d.doc_id in wanted}
    sessions = {
        "default": OnnxCrossEncoderReranker(threads=args.threads, exact_int8=False),
        "exact": OnnxCrossEncoderReranker(threads=args.threads, exact_int8="always"),
    }
    seconds = dict.fromkeys(sessions, 0.0)
    rankings: dict[str, dict[str, list[tuple[str, float]]]] = {name: {} for name in sessions}
    largest = 0.0
    pairs = 0
    for n, q in enumerate(query_ids):
        docs = [d for d, _ in first[q][: args.depth]]
        scores: dict[str, list[float]] = {name: [] for name in sessions}
        for d in docs:
            for name in sorted(sessions, reverse=n % 2 == 1):  # alternate which goes first
                started = time.perf_counter()
                scores[name] += sessions[name].score(queries[q], [texts[d]])
                seconds[name] += time.perf_counter() - started
            largest = max(largest, abs(scores["default"][-1] - scores["exact"][-1]))
            pairs += 1
        tail = first[q][args.depth :]
        for name in sessions:
            rankings[name][q] = ranked(zip(docs, scores[name], strict=True)) + tail
    measured = {name: evaluate(qrels, query_ids, rankings[name], ["nDCG@10"], rel=2)["nDCG@10"] for name in sessions}
    (diff,) = compare([(measured["exact"], measured["default"])])
    ms = {name: 1000 * seconds[name] / pairs for name in sessions}
    return {
        "model": sessions["exact"].model_spec,
        "queries": len(query_ids),
        "pairs": pairs,
        "ms_per_pair": {k: round(v, 3) for k, v in ms.items()},
        "exact_over_default_time": round(ms["exact"] / ms["default"], 3),
        "max_abs_logit_diff": round(largest, 4),
        "nDCG@10": {k: round(mean(v), 4) for k, v in measured.items()},
        "exact_minus_default": diff.as_dict(),
        "cpu_vector_flags": cpu_flags(),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/trec-dl-2019-passage"))
    parser.add_argument("--depth", type=int, default=20, help="top N of the BM25 run reranked (default 20)")
    parser.add_argument("--max-queries", type=int, default=None, help="only the first N judged queries")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    setup_logging(0)
    try:
        result = run(args)
    except (TwoStageError, OSError) as exc:
        print(f"int8_kernels: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
