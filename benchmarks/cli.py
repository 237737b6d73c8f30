"""What ``twostage bench`` and ``twostage fetch-beir`` run (the command line parses their arguments)."""

from __future__ import annotations

import argparse


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
