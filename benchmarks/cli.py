"""``twostage bench``'s arguments, and what ``twostage bench`` and ``twostage fetch-beir`` run."""

from __future__ import annotations

import argparse
from pathlib import Path

from twostage_search.engine.argtypes import positive_int


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, type=Path, help="BEIR directory (corpus, queries, qrels/SPLIT.tsv)")
    p.add_argument("--systems", required=True, nargs="+", type=Path, metavar="YAML", help="system config files")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory (default: runs/bench)")
    p.add_argument("--baseline", default=None, help="system name to test against (default: the first)")
    p.add_argument("--max-queries", type=positive_int, default=None, help="only the first N queries of the split")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up queries per system (default 5)")
    p.add_argument("--index-cache", type=Path, default=Path("var/bench"), help="where built indexes are cached")
    p.add_argument("--threads", type=positive_int, default=2, help="index build threads (default 2)")
    p.add_argument(
        "--keep-identical-ids",
        action="store_true",
        help="keep a document whose id equals the query id (BEIR and Anserini drop it)",
    )
    p.add_argument(
        "--rel",
        type=positive_int,
        default=1,
        help="lowest grade a binary measure (R@k, RR, AP) counts as relevant (default 1; TREC DL uses 2)",
    )
    p.add_argument(
        "--test",
        choices=("randomisation", "t-test"),
        default="randomisation",
        help="paired significance test against the baseline, Holm-corrected across the table",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def bench(args: argparse.Namespace) -> int:
    from twostage_search.benchmarks.report import markdown_table
    from twostage_search.benchmarks.runner import BenchSettings, run_benchmark

    settings = BenchSettings(
        dataset=args.dataset,
        systems=tuple(args.systems),
        split=args.split,
        out=args.out,
        baseline=args.baseline,
        max_queries=args.max_queries,
        warmup=args.warmup,
        index_cache=args.index_cache,
        threads=args.threads,
        ignore_identical_ids=not args.keep_identical_ids,
        rel=args.rel,
        test=args.test,
        progress=not args.no_progress,
        plots=not args.no_plots,
    )
    report = run_benchmark(settings)
    ds = report.dataset
    print(f"{ds['name']} {ds['split']}: {ds['queries']} queries, {ds['documents']} documents")
    print(markdown_table(report))
    print(f"wrote {args.out}/report.md, report.json, runs/*.run" + ("" if args.no_plots else " and plots"))
    return 0


def fetch_beir(args: argparse.Namespace) -> int:
    from twostage_search.benchmarks.fetch import run

    run(args)
    return 0
