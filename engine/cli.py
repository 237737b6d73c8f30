"""``twostage`` command line: ``index`` a BEIR corpus, ``search`` an index.

Errors the user can fix print one line ``twostage: error: …`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from engine.errors import InputError, TwoStageError

log = logging.getLogger("twostage")

EXIT_USAGE = 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from engine import __version__

    parser = argparse.ArgumentParser(prog="twostage", description="SPLADE retrieve-and-rerank search engine.")
    parser.add_argument("--version", action="version", version=f"twostage {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="encode a BEIR corpus.jsonl and build an index (atomically)")
    p.add_argument("corpus", type=Path, help="BEIR corpus.jsonl (or .jsonl.gz)")
    p.add_argument("--index", required=True, type=Path, help="index directory to create or replace")
    p.add_argument("--backend", default="lucene-impact", help="index backend (default: lucene-impact)")
    p.add_argument("--encoder", default="splade", help="registered encoder (splade, splade-doc)")
    p.add_argument("--model", default=None, help="bundled:NAME, a local HF directory or a hub name")
    p.add_argument("--max-length", type=_positive, default=256, help="document tokens (default 256)")
    p.add_argument("--top-n", type=_positive, default=None, help="keep the N heaviest terms per document")
    p.add_argument("--scale", type=_positive_float, default=100.0, help="impact quantisation scale (default 100)")
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--threads", type=_positive, default=2, help="indexing threads (default 2)")
    p.add_argument("--limit", type=_positive, default=None, help="index only the first N documents")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    s = sub.add_parser("search", help="search an index and print the ranking")
    s.add_argument("query", help="query text")
    s.add_argument("--index", required=True, type=Path)
    s.add_argument("--k", type=_positive, default=10, help="results to return (default 10)")
    s.add_argument("--depth", type=_positive, default=100, help="first-stage candidates to rerank (default 100)")
    s.add_argument("--reranker", default="identity", help="registered reranker (default: identity)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def cmd_index(args: argparse.Namespace) -> int:
    from itertools import islice

    from engine.beir import count_docs, read_corpus
    from engine.encoders import create_encoder
    from engine.models import DEFAULT_SPLADE
    from engine.registry import encoders, index_backends

    backend = index_backends.get(args.backend)
    encoders.get(args.encoder)  # unknown name → error before any work
    total = count_docs(args.corpus)  # validates every line before anything is written
    if total == 0:
        raise InputError(f"{args.corpus}: corpus is empty")
    if args.limit:
        total = min(total, args.limit)
    encoder = create_encoder(
        args.encoder,
        model=args.model or DEFAULT_SPLADE,
        max_length=args.max_length,
        top_n=args.top_n,
        batch_size=args.batch_size,
    )
    started = time.perf_counter()
    index = backend.build(
        islice(read_corpus(args.corpus), total),
        args.index,
        encoder=encoder,
        scale=args.scale,
        threads=args.threads,
        total=total,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - started
    print(f"indexed {len(index)} documents into {args.index} in {seconds:.1f}s ({len(index) / seconds:.1f} docs/s)")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import indexes
    from engine.pipeline import TwoStage
    from engine.registry import rerankers
    from engine.types import Query

    query = Query("q", args.query)  # empty query → InputError before loading anything
    reranker_factory = rerankers.get(args.reranker)
    index = indexes.load(args.index)
    pipeline = TwoStage(index.retriever(), reranker_factory(), depth=args.depth)
    started = time.perf_counter()
    ranking = pipeline.search(query, k=args.k)
    ms = (time.perf_counter() - started) * 1000
    if args.json:
        hits = [
            {"rank": h.rank, "doc_id": h.doc_id, "score": h.score, "title": h.title, "text": h.text} for h in ranking
        ]
        json.dump({"query": args.query, "reranker": args.reranker, "ms": round(ms, 2), "hits": hits}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.query!r} — {len(ranking)} hits, {ms:.0f} ms, reranker {args.reranker}")
    table.add_column("rank", justify="right")
    table.add_column("doc_id")
    table.add_column("score", justify="right")
    table.add_column("title / text", overflow="fold")
    for h in ranking:
        snippet = (h.title + " — " if h.title else "") + h.text
        table.add_row(str(h.rank), h.doc_id, f"{h.score:.3f}", snippet[:160] + ("…" if len(snippet) > 160 else ""))
    Console().print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    commands = {"index": cmd_index, "search": cmd_search}
    try:
        return commands[args.command](args)
    except (TwoStageError, FileNotFoundError, PermissionError) as exc:
        print(f"twostage: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("twostage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
