"""Reranking benchmark: first stage vs first stage + cross-encoder at several rerank depths.

    python -m twostage_search.benchmarks.studies.first_stage                     # writes runs/first_stage.run (top 100)
    python -m twostage_search.benchmarks.studies.rerank --run runs/first_stage.run --depths 10 50 100

Quality: every query's top ``max(depths)`` first-stage candidates are scored once by the cross-encoder;
for each depth k the top k are reordered by those scores and the rest keep first-stage order below them
(the ``TwoStage`` cascade), then nDCG@10 / RR@10 / R@100 are computed by :mod:`benchmarks.evaluation`,
with each depth's nDCG@10 difference from the first stage (paired bootstrap 95% CI, randomisation test,
Holm-corrected across depths). Speed: for each depth, ``--timing-queries``
queries are reranked one at a time as a service would, giving documents scored per second and ms per
query with ``--threads`` threads. ``--reranker`` picks the registered cross-encoder (default: the ONNX
one with its bundled general model; ``--reranker cross-encoder --model bundled:ce-minilm-l6-scifact``
for the in-domain torch one).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import compare, evaluate, mean, read_run
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.pipeline import merge_cascade
from twostage_search.engine.registry import rerankers
from twostage_search.engine.types import Candidate, RankedList

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "RR@10", "R@100")
DEFAULT_RERANKER = "onnx-cross-encoder"


def cross_encoder(name: str, model: str | None, **params: Any) -> Any:
    """A registered cross-encoder (``name``) with ``model`` (``None``: its default) and ``params``.

    ``device`` is dropped for rerankers other than the torch ``cross-encoder`` (ONNX runs on the CPU).
    """
    if name != "cross-encoder":
        params.pop("device", None)
    if model is not None:
        params["model"] = model
    return rerankers.get(name)(**params)


def _evaluate(
    qrels: dict[str, dict[str, int]], query_ids: list[str], rankings: dict[str, RankedList]
) -> tuple[dict[str, float], list[float]]:
    """Mean of each measure and per-query nDCG@10 (the shared rules of :mod:`benchmarks.evaluation`)."""
    lists = {q: [(h.doc_id, h.score) for h in r] for q, r in rankings.items()}
    values = evaluate(qrels, query_ids, lists, MEASURES)
    return {m: round(mean(v), 4) for m, v in values.items()}, values["nDCG@10"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    qrels = read_qrels(args.dataset / "qrels" / f"{args.split}.tsv")
    queries = {q.query_id: q for q in read_queries(find_file(args.dataset, "queries")) if q.query_id in qrels}
    first_run = read_run(args.run)
    missing = set(queries) - set(first_run)
    if missing:
        raise InputError(f"{args.run} has no ranking for {len(missing)} queries of the {args.split} split")
    corpus = {d.doc_id: d for d in read_corpus(find_file(args.dataset, "corpus"))}
    max_depth = max(args.depths)
    candidates = {
        qid: [Candidate(d, s, corpus[d].text, corpus[d].title) for d, s in first_run[qid][:max_depth]]
        for qid in queries
    }
    ce = cross_encoder(args.reranker, args.model, threads=args.threads, device=args.device, batch_size=args.batch_size)

    first = {qid: RankedList.from_candidates(qid, first_run_cands) for qid, first_run_cands in candidates.items()}
    rows: list[dict[str, Any]] = []
    query_ids = sorted(queries)
    base_quality, base_per_query = _evaluate(qrels, query_ids, first)
    rows.append({"system": "first stage (SPLADE)", "rerank_depth": 0, **base_quality})

    if not args.no_quality:
        started = time.perf_counter()
        scores = {qid: ce.rerank(queries[qid], cands) for qid, cands in candidates.items()}
        per_depth: list[list[float]] = []
        log.info("scored %d pairs in %.0fs", sum(map(len, candidates.values())), time.perf_counter() - started)
        for k in args.depths:
            rankings = {}
            for qid, cands in candidates.items():
                by_score = {h.doc_id: h.score for h in scores[qid]}
                head = RankedList.from_scores(qid, cands[:k], [by_score[c.doc_id] for c in cands[:k]])
                rankings[qid] = merge_cascade(qid, head, cands[k:])
            quality, per_query = _evaluate(qrels, query_ids, rankings)
            per_depth.append(per_query)
            rows.append({"system": f"+ cross-encoder @{k}", "rerank_depth": k, **quality})
        # nDCG@10 against the first stage: paired bootstrap 95% CI, randomisation test, Holm across depths
        for row, c in zip(rows[1:], compare([(p, base_per_query) for p in per_depth]), strict=True):
            row["nDCG@10_difference"] = c.as_dict()

    timing: list[dict[str, Any]] = []
    timed_ids = sorted(queries)[: args.timing_queries]
    if timed_ids:
        ce.rerank(queries[timed_ids[0]], candidates[timed_ids[0]][:10])  # warm-up
    for k in args.depths if timed_ids else []:
        ms, docs, tokens = [], 0, 0
        for qid in timed_ids:
            _, cost = ce.rerank_with_cost(queries[qid], candidates[qid][:k])
            ms.append(cost.wall_ms)
            docs += cost.docs
            tokens += cost.tokens_in
        timing.append(
            {
                "rerank_depth": k,
                "queries": len(timed_ids),
                "docs_per_s": round(docs / (sum(ms) / 1000), 1),
                "ms_per_query_mean": round(statistics.fmean(ms), 1),
                "ms_per_query_p95": round(sorted(ms)[int(0.95 * (len(ms) - 1))], 1),
                "tokens_per_doc": round(tokens / docs, 1),
            }
        )
    report = {
        "dataset": str(args.dataset),
        "split": args.split,
        "queries": len(queries),
        "first_stage_run": str(args.run),
        "reranker": args.reranker,
        "model": args.model or "default",
        "device": args.device,
        "threads": args.threads,
        "quality": rows,
        "timing": timing,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rerank.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", type=Path, default=Path("runs/first_stage.run"), help="first-stage TREC run")
    parser.add_argument("--reranker", default=DEFAULT_RERANKER, help="registered cross-encoder")
    parser.add_argument("--model", default=None, help="model of the reranker (default: the reranker's own)")
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--timing-queries", type=int, default=20, help="queries timed per depth (0: skip)")
    parser.add_argument("--no-quality", action="store_true", help="only time, skip the full quality run")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    setup_logging(1)
    try:
        report = run(args)
    except TwoStageError as exc:
        print(f"rerank: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    for row in report["quality"]:
        print(json.dumps(row))
    for row in report["timing"]:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
