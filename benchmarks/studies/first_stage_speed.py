"""SPLADE first stage vs BM25, side by side in one process: latency, and quality per query-pruning level.

    python -m twostage_search.benchmarks.studies.first_stage_speed \\
        --dataset ../shared/datasets/scifact --split dev --prune 0,8,12,16,24,32

Both indexes are built first unless they exist (``--splade-index``, ``--bm25-index``; SPLADE with the
default encoder, ``--max-length`` document tokens). Then every query goes through every variant — BM25
(``lucene-bm25``) and SPLADE (``lucene-impact``) keeping the query's ``N`` heaviest terms for each ``N`` in
``--prune`` (0: all terms) — one query at a time, the variants in a rotating order per query, so all
variants see the same machine load. A variant's time is the first stage end to end: query encoding
(SPLADE), search of the top ``--depth`` and the document texts of the top ``--texts`` (what a pipeline
reranks or returns; default all 100). ``--warmup`` queries run first, untimed.

``--int8-prune`` adds variants whose queries are encoded with INT8 ONNX Runtime (``query_precision``).
``--full-vocabulary-prune`` adds variants that encode queries onto the model's whole vocabulary
(``index_terms_only=False``) instead of the index's terms.
``--csc-index PATH`` adds the same SPLADE index in process (``impact-csc``, built with the SPLADE index's
encoder settings unless it exists) at every ``--prune`` level (variants ``csc-topN``, ``csc``).
``--extra-index NAME=PATH`` adds another SPLADE index (e.g. documents at 512 tokens) as a variant,
compared with the main one like the pruning levels. Splits: ``test`` is the dataset's test qrels;
``dev`` is the first ``--dev-queries`` (default 300) query ids of ``qrels/train.tsv`` in file order:
choose settings there, report test. Variants that run the same query one after another find its
postings and texts in the CPU caches: time SPLADE against BM25 alone (e.g. ``--prune 24``, which
leaves out unpruned SPLADE and with it the quality comparisons) for their latency ratio. Quality:
nDCG@10 and R@100 per variant, each pruning level (and extra index) against unpruned SPLADE
(difference, bootstrap 95% CI, paired randomisation test, Holm).
Writes ``--out/first_stage_speed-<split>.json``.
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

from twostage_search.benchmarks.datasets import split_queries
from twostage_search.benchmarks.evaluation import compare, evaluate, machine, mean, percentile
from twostage_search.engine.beir import count_docs, find_file, read_corpus
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100")


def ensure_indexes(args: argparse.Namespace) -> tuple[Any, Any]:
    from twostage_search import indexes
    from twostage_search.engine.encoders import create_encoder
    from twostage_search.engine.registry import index_backends

    corpus = find_file(args.dataset, "corpus")
    if not (args.splade_index / "meta.json").is_file():
        encoder = create_encoder(
            "splade", max_length=args.max_length, backend=args.encoder_backend, precision=args.precision
        )
        index_backends.get("lucene-impact").build(
            read_corpus(corpus), args.splade_index, encoder=encoder, total=count_docs(corpus), progress=False
        )
    if not (args.bm25_index / "meta.json").is_file():
        index_backends.get("lucene-bm25").build(read_corpus(corpus), args.bm25_index, progress=False)
    return indexes.load(args.splade_index), indexes.load(args.bm25_index)


def ensure_csc_index(args: argparse.Namespace, encoder_config: dict[str, Any]) -> Any:
    """``--csc-index``, built (``impact-csc``, the SPLADE index's encoder settings) unless it exists."""
    from twostage_search import indexes
    from twostage_search.engine.encoders import encoder_from_meta
    from twostage_search.engine.registry import index_backends

    if not (args.csc_index / "meta.json").is_file():
        corpus = find_file(args.dataset, "corpus")
        index_backends.get("impact-csc").build(
            read_corpus(corpus),
            args.csc_index,
            encoder=encoder_from_meta(encoder_config),
            total=count_docs(corpus),
            progress=False,
        )
    return indexes.load(args.csc_index)


def latency(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "mean": round(statistics.fmean(values), 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes

    queries, qrels = split_queries(args.dataset, args.split, args.dev_queries)
    if args.max_queries:
        queries = queries[: args.max_queries]
    splade_index, bm25_index = ensure_indexes(args)
    from twostage_search.engine.encoders import encoder_from_meta

    # All query terms out of the encoder; each variant prunes at search time (query_top_n below).
    encoder = encoder_from_meta(splade_index.meta["encoder"], query_top_n=None)
    levels = [int(x) for x in args.prune.split(",")]
    variants: dict[str, Any] = {"bm25": bm25_index.retriever()}
    for n in levels:
        variants[f"splade-top{n}" if n else "splade"] = splade_index.retriever(encoder, query_top_n=n or None)
    if args.csc_index is not None:  # the same SPLADE index in process (impact-csc), at each pruning level
        csc_index = ensure_csc_index(args, splade_index.meta["encoder"])
        for n in levels:
            variants[f"csc-top{n}" if n else "csc"] = csc_index.retriever(encoder, query_top_n=n or None)
    for n in (int(x) for x in args.full_vocabulary_prune.split(",") if x):  # as before index_terms_only
        name = f"splade-fullvocab-top{n}" if n else "splade-fullvocab"
        variants[name] = splade_index.retriever(encoder, query_top_n=n or None, index_terms_only=False)
    if args.int8_prune:  # the same index searched with INT8-encoded queries
        encoder8 = encoder_from_meta(splade_index.meta["encoder"], query_top_n=None, query_precision="int8")
        for n in (int(x) for x in args.int8_prune.split(",")):
            variants[f"splade-q8-top{n}" if n else "splade-q8"] = splade_index.retriever(
                encoder8, query_top_n=n or None
            )
    extra = {}
    for spec in args.extra_index:  # NAME=PATH: another SPLADE index (e.g. built at 512 tokens), unpruned
        label, _, path = spec.partition("=")
        extra[label] = indexes.load(path)
        variants[label] = extra[label].retriever(encoder_from_meta(extra[label].meta["encoder"], query_top_n=None))
    names = list(variants)
    for q in queries[: args.warmup]:  # JIT, ONNX Runtime arenas, SQLite page cache
        for name in names:
            variants[name].with_texts(variants[name].retrieve(q, args.depth, texts=False).head(args.texts))
    times: dict[str, list[float]] = {n: [] for n in names}
    encode_ms: dict[str, list[float]] = {n: [] for n in names if n != "bm25"}
    terms: dict[str, list[int]] = {n: [] for n in names if n != "bm25"}
    rankings: dict[str, dict[str, list[str]]] = {n: {} for n in names}
    for i, q in enumerate(queries):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            retriever = variants[name]
            started = time.perf_counter()
            if name == "bm25":
                ranking = retriever.retrieve(q, args.depth, texts=False)
            else:
                ranking, costs = retriever.retrieve_with_cost(q, args.depth, texts=False)
                encode_ms[name].append(costs[0].wall_ms)
            if args.texts:
                retriever.with_texts(ranking.head(args.texts))
            times[name].append((time.perf_counter() - started) * 1000)
            rankings[name][q.query_id] = ranking.doc_ids
    for name in terms:  # terms searched per query (after pruning), outside the timed loop
        top = variants[name].query_top_n
        vectors = variants[name].encoder.encode_queries([q.text for q in queries])
        terms[name] = [len(v.top(top).quantize(splade_index.scale)) for v in vectors]
    query_ids = [q.query_id for q in queries]
    per_query = {n: evaluate(qrels, query_ids, rankings[n], MEASURES) for n in names}
    base = "splade"  # without it (--prune lacking 0: latency only) nothing is compared
    pruned = [n for n in names if n.startswith(("splade-top", "splade-q8", "splade-fullvocab")) or n in extra]
    pruned = pruned if base in names else []
    comparisons = {
        m: dict(zip(pruned, compare([(per_query[n][m], per_query[base][m]) for n in pruned]), strict=True))
        for m in MEASURES
    }
    bm25_p50 = percentile(times["bm25"], 50)
    report: dict[str, Any] = {
        "dataset": str(args.dataset),
        "split": args.split if args.split == "test" else f"dev (first {args.dev_queries} query ids of train.tsv)",
        "queries": len(queries),
        "depth": args.depth,
        "texts_fetched": args.texts,
        "warmup_queries": min(args.warmup, len(queries)),
        "splade_encoder": splade_index.meta["encoder"],
        "splade_mean_doc_terms": round(splade_index.meta.get("mean_doc_terms", 0.0), 1),
        "extra_indexes": {
            k: {"encoder": v.meta["encoder"], "mean_doc_terms": round(v.meta["mean_doc_terms"], 1)}
            for k, v in extra.items()
        },
        "variants": {},
        "machine": machine(),
    }
    for name in names:
        row: dict[str, Any] = {
            "latency_ms": latency(times[name]),
            "p50_vs_bm25": round(percentile(times[name], 50) / bm25_p50, 2),
            "quality": {m: round(mean(per_query[name][m]), 4) for m in MEASURES},
        }
        if name in encode_ms:
            row["encode_ms_p50"] = round(percentile(encode_ms[name], 50), 2)
            row["query_terms_median"] = statistics.median(terms[name])
        if name in pruned:
            row["vs_unpruned"] = {m: comparisons[m][name].as_dict() for m in MEASURES}
        report["variants"][name] = row
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"first_stage_speed-{args.split}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/scifact"))
    parser.add_argument("--split", default="dev", choices=("dev", "test"))
    parser.add_argument("--dev-queries", type=int, default=300)
    parser.add_argument("--splade-index", type=Path, default=Path("var/scifact-splade"))
    parser.add_argument("--bm25-index", type=Path, default=Path("var/scifact-bm25"))
    parser.add_argument("--max-length", type=int, default=256, help="document tokens when building SPLADE")
    parser.add_argument("--encoder-backend", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--int8-prune", default="", help="query_top_n levels with INT8 query encoding")
    parser.add_argument(
        "--full-vocabulary-prune", default="", help="query_top_n levels encoding onto the whole vocabulary"
    )
    parser.add_argument("--extra-index", action="append", default=[], help="NAME=PATH: another SPLADE index")
    parser.add_argument("--csc-index", type=Path, default=None, help="also time SPLADE on this impact-csc index")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="documents, when building")
    parser.add_argument("--prune", default="0,8,12,16,24,32", help="query_top_n levels, 0 = all terms")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--texts", type=int, default=100, help="fetch the texts of the top N (default 100)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    setup_logging(0)
    report = run(args)
    print(
        f"{report['dataset']} {report['split']}: {report['queries']} queries, depth {report['depth']}, "
        f"texts of the top {report['texts_fetched']}"
    )
    head = f"{'p50 ms':>7} {'p95 ms':>7} {'×BM25':>6} {'enc ms':>7} {'terms':>5} {'nDCG@10':>8} {'R@100':>6}"
    print(f"{'variant':<14} {head}  Δ nDCG@10 [95% CI] p_holm")
    for name, row in report["variants"].items():
        lat, qual = row["latency_ms"], row["quality"]
        delta = row.get("vs_unpruned", {}).get("nDCG@10")
        cmp = (
            f"  {delta['delta']:+.4f} [{delta['ci95'][0]:+.4f}, {delta['ci95'][1]:+.4f}] {delta['p_holm']}"
            if delta
            else ""
        )
        print(
            f"{name:<14} {lat['p50']:>7.2f} {lat['p95']:>7.2f} {row['p50_vs_bm25']:>6.2f} "
            f"{row.get('encode_ms_p50', 0):>7.2f} {row.get('query_terms_median', 0):>5} "
            f"{qual['nDCG@10']:>8.4f} {qual['R@100']:>6.4f}{cmp}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
