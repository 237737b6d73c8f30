"""Every first stage against BM25, side by side in one process: p50/p95 latency ratios and quality.

    python -m twostage_search.benchmarks.studies.first_stage_ratio --dataset ../shared/datasets/scifact \\
        --variant bm25=var/scifact-bm25 --variant splade=var/scifact-splade \\
        --variant splade-csc=var/scifact-csc --variant dense=var/scifact-dense,search=exact \\
        --variant dense-hnsw=var/scifact-dense-hnsw,search=hnsw,ef_search=100 \\
        --variant hybrid=var/scifact-hybrid --same splade-csc=splade --same dense-hnsw=dense \\
        --variant bm25-csc=var/scifact-bm25-csc --same bm25-csc=bm25

A variant is ``NAME=PATH[,option=value...]``: any index ``twostage index`` built (``indexes.load``), opened
with ``retriever(**options)`` (values parsed as int, float or string). Every query goes through every
variant, one query at a time, the variants in an order that rotates per query, so all see the same machine
load; ``--warmup`` queries run first, untimed. A variant's time is the first stage end to end as a pipeline
calls it: query encoding, search of the top ``--depth`` and the texts of the top ``--texts`` documents
(all ``--depth`` texts for a retriever that returns its texts with the ranking: dense, hybrid).

Reported per variant: p50 and p95 in ms, **p50 as a ratio to the ``--baseline`` variant** with a bootstrap
95% CI (queries resampled, the ratio of the two medians recomputed: the timings are paired by query),
nDCG@10 and R@100. ``--same A=B`` checks that A is a faithful stand-in for B (an exact in-process index for
Lucene's, a graph for the exact scan): the share of queries whose top ``--depth`` ids are identical, the
mean overlap of the two top ``--depth`` sets, and the nDCG@10 and R@100 differences (bootstrap CI, paired
randomisation test, Holm across the table).

Queries: ``--split test`` is ``qrels/test.tsv``; ``--split dev`` the first ``--dev-queries`` ids of
``qrels/train.tsv``; ``--splits-file F --split NAME`` the queries a committed query-level split file assigns
to NAME (e.g. ``benchmarks/data/splits/homedepot-search-relevance.tsv``: graded sets without a train file),
judged by ``qrels/test.tsv``. ``--grade-offset`` is subtracted from every grade and ``--rel`` is the lowest
shifted grade R@100 counts. ``--max-queries`` keeps a seeded sample. Writes ``--out/NAME.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.datasets import judged_queries
from twostage_search.benchmarks.evaluation import (
    compare,
    evaluate,
    machine,
    mean,
    overlap_share,
    paired_ratio_ci,
    percentile,
)
from twostage_search.engine.argtypes import named_path
from twostage_search.engine.costed import costed_retriever
from twostage_search.engine.cpu import describe_cpu
from twostage_search.engine.errors import InputError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Query

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100")
SEED = 13
BOOTSTRAP = 2000


def parse_variant(spec: str) -> tuple[str, Path, dict[str, Any]]:
    """``NAME=PATH[,key=value...]`` → (name, path, retriever options); numbers become int or float."""
    return named_path(spec, "--variant")


def load_queries(args: argparse.Namespace) -> tuple[list[Query], dict[str, dict[str, int]]]:
    """The split's queries (a seeded sample of ``--max-queries``) and their shifted qrels."""
    return judged_queries(
        args.dataset,
        args.split,
        splits_file=args.splits_file,
        dev_queries=args.dev_queries,
        grade_offset=args.grade_offset,
        max_queries=args.max_queries,
        seed=SEED,
    )


def median_ratio_ci(a: list[float], b: list[float], seed: int = SEED) -> tuple[float, float, float]:
    """median(a) / median(b) over paired per-query times, with a bootstrap 95% CI (queries resampled)."""
    import numpy as np

    return paired_ratio_ci(a, b, np.median, resamples=BOOTSTRAP, seed=seed)


def stage_call(retriever: Any) -> Callable[[Query, int, int], tuple[Any, float | None]]:
    """``call(query, depth, texts) -> (ranking, encode ms)``: the top ``depth`` with the texts of the top
    ``texts`` (fetched apart where the retriever can, else all), and the time its query encoding took where the
    retriever reports one (``None`` where it has no ``encode`` stage)."""
    lazy = hasattr(retriever, "with_texts")
    call = costed_retriever(retriever, texts=not lazy)

    def first_stage(query: Query, depth: int, texts: int) -> tuple[Any, float | None]:
        ranking, costs = call(query, depth)
        if lazy and texts:
            retriever.with_texts(ranking.head(texts))
        encode = [c.wall_ms for c in costs if c.stage == "encode"]
        return ranking, (sum(encode) if encode else None)

    return first_stage


def time_variants(
    retrievers: dict[str, Any], queries: list[Query], depth: int, texts: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, dict[str, list[str]]], dict[str, list[float]]]:
    """Per-query wall ms, top-``depth`` ids and query-encoding ms (where reported) of every variant, the order
    rotating per query."""
    names = list(retrievers)
    calls = {name: stage_call(retrievers[name]) for name in names}
    for q in queries[:warmup]:  # ONNX Runtime arenas, JIT, page cache
        for name in names:
            calls[name](q, depth, texts)
    times: dict[str, list[float]] = {n: [] for n in names}
    encode: dict[str, list[float]] = {n: [] for n in names}
    rankings: dict[str, dict[str, list[str]]] = {n: {} for n in names}
    for i, q in enumerate(queries):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            started = time.perf_counter()
            ranking, encode_ms = calls[name](q, depth, texts)
            times[name].append((time.perf_counter() - started) * 1000)
            rankings[name][q.query_id] = list(ranking.doc_ids)
            if encode_ms is not None:
                encode[name].append(encode_ms)
    return times, rankings, encode


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes

    variants = [parse_variant(s) for s in args.variant]
    names = [v[0] for v in variants]
    if len(set(names)) != len(names):
        raise InputError(f"variant names must differ: {names}")
    if args.baseline not in names:
        raise InputError(f"--baseline {args.baseline!r} is not a variant ({', '.join(names)})")
    same = [tuple(s.split("=", 1)) for s in args.same]
    for pair in same:
        if len(pair) != 2 or not set(pair) <= set(names):
            raise InputError(f"--same wants A=B over variant names ({', '.join(names)}), got {'='.join(pair)!r}")
    queries, qrels = load_queries(args)
    opened: dict[str, Any] = {}
    retrievers: dict[str, Any] = {}
    for name, path, options in variants:
        opened[name] = indexes.load(path)
        retrievers[name] = indexes.open_retriever(opened[name], options)
    log.info("%d queries through %d variants", len(queries), len(names))
    times, rankings, encode = time_variants(retrievers, queries, args.depth, args.texts, args.warmup)
    base_p50 = percentile(times[args.baseline], 50)
    query_ids = [q.query_id for q in queries]
    per_query = {n: evaluate(qrels, query_ids, rankings[n], MEASURES, rel=args.rel) for n in names}
    rows: dict[str, Any] = {}
    for name, path, options in variants:
        ratio, low, high = median_ratio_ci(times[name], times[args.baseline])
        rows[name] = {
            "index": str(path),
            "backend": opened[name].meta.get("backend"),
            "options": options,
            "p50_ms": round(percentile(times[name], 50), 2),
            "p95_ms": round(percentile(times[name], 95), 2),
            "p50_vs_baseline": [round(ratio, 3), round(low, 3), round(high, 3)],
            # the query encoding alone (where the retriever reports it): its p50, and that over the baseline's p50
            "encode_p50_ms": round(percentile(encode[name], 50), 2) if encode[name] else None,
            "encode_p50_vs_baseline_p50": round(percentile(encode[name], 50) / base_p50, 3) if encode[name] else None,
            "quality": {m: round(mean(per_query[name][m]), 4) for m in MEASURES},
        }
    pairs = [(per_query[a][m], per_query[b][m]) for a, b in same for m in MEASURES]
    stats = iter(compare(pairs)) if pairs else iter(())
    checks = []
    for a, b in same:
        identical = sum(rankings[a][q] == rankings[b][q] for q in query_ids) / len(query_ids)
        overlap = mean([overlap_share(rankings[a][q], rankings[b][q]) for q in query_ids])
        checks.append(
            {
                "variant": a,
                "reference": b,
                "identical_top": round(identical, 4),
                "mean_overlap": round(overlap, 4),
                **{m: next(stats).as_dict() for m in MEASURES},
            }
        )
    report = {
        "dataset": str(args.dataset),
        "split": args.split + (f" of {args.splits_file}" if args.splits_file else ""),
        "queries": len(queries),
        "depth": args.depth,
        "texts_fetched": args.texts,
        "warmup_queries": min(args.warmup, len(queries)),
        "baseline": args.baseline,
        "grade_offset": args.grade_offset,
        "rel": args.rel,
        "variants": rows,
        "same": checks,
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or args.dataset.name
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (args.out / f"{stem}.md").write_text(markdown(report), encoding="utf-8")
    return report


def markdown(report: dict[str, Any]) -> str:
    base = report["baseline"]
    lines = [
        f"{report['dataset']}, {report['split']} ({report['queries']} queries), top {report['depth']}, texts of the "
        f"top {report['texts_fetched']}; {describe_cpu(report['machine'].get('cpu') or {}) or 'CPU unknown'}, "
        f"load average {report['machine'].get('load_average', '?')}",
        "",
        f"| first stage | backend | p50 ms | p95 ms | p50 × {base} [95% CI] | query encoding p50 ms (× {base} p50) "
        "| nDCG@10 | R@100 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["variants"].items():
        r, lo, hi = row["p50_vs_baseline"]
        q = row["quality"]
        encode = row.get("encode_p50_ms")
        encoding = f"{encode} ({row['encode_p50_vs_baseline_p50']:.2f})" if encode is not None else "–"
        lines.append(
            f"| {name} | {row['backend']} | {row['p50_ms']} | {row['p95_ms']} | {r:.2f} [{lo:.2f}, {hi:.2f}] "
            f"| {encoding} | {q['nDCG@10']:.4f} | {q['R@100']:.4f} |"
        )
    if report["same"]:
        lines += [
            "",
            "| variant vs reference | identical top | mean overlap | ΔnDCG@10 [95% CI] | ΔR@100 [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for c in report["same"]:
            cells = [f"{c[m]['delta']:+.4f} [{c[m]['ci95'][0]:+.4f}, {c[m]['ci95'][1]:+.4f}]" for m in MEASURES]
            lines.append(
                f"| {c['variant']} vs {c['reference']} | {c['identical_top']:.3f} | {c['mean_overlap']:.4f} | "
                f"{cells[0]} | {cells[1]} |"
            )
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.first_stage_ratio", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dataset", type=Path, required=True, help="BEIR folder (queries, qrels)")
    p.add_argument("--variant", action="append", default=[], required=True, help="NAME=PATH[,option=value...]")
    p.add_argument("--baseline", default="bm25", help="the variant every p50 is divided by")
    p.add_argument("--same", action="append", default=[], help="A=B: A must give B's rankings (repeatable)")
    p.add_argument("--split", default="test")
    p.add_argument("--splits-file", type=Path, help="committed query-level split file (query-id<TAB>split)")
    p.add_argument("--dev-queries", type=int, default=300)
    p.add_argument("--max-queries", type=int, default=0, help="a seeded sample of this many (0: all)")
    p.add_argument("--grade-offset", type=int, default=0)
    p.add_argument("--rel", type=int, default=1)
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--texts", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--name", help="report file stem (default: the dataset folder's name)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/first_stage_ratio"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging()
    try:
        report = run(args)
    except (InputError, OSError) as exc:  # one line and a nonzero status, as every command
        log.error("%s", exc)
        return exit_status(exc)
    sys.stdout.write(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
