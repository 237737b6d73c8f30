"""``twostage`` command line: ``index`` a BEIR corpus, ``search`` an index.

A failure prints one line ``twostage: error: …`` on stderr and exits with status 2 for bad usage (a bad
argument, a missing file, malformed input) or 1 for a failure at run time (an unreachable cluster, a
failed download): :func:`twostage_search.engine.errors.exit_status`. Logs go to stderr too; stdout holds
only the command's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twostage_search.engine.argtypes import key_values
from twostage_search.engine.argtypes import positive_float as _positive_float
from twostage_search.engine.argtypes import positive_int as _positive
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import add_verbosity_arguments, setup_logging, verbosity

log = logging.getLogger("twostage")

EPILOG = """\
exit status: 0 on success, 2 for bad usage (a bad argument, a missing file, malformed input),
1 for a failure at run time (an unreachable cluster or model server, a failed download, a missing extra).
Logs and errors go to stderr; stdout holds only the command's output (e.g. --json)."""


def build_parser() -> argparse.ArgumentParser:
    from twostage_search.engine import __version__
    from twostage_search.indexes import DEFAULT_BACKEND

    parser = argparse.ArgumentParser(
        prog="twostage",
        description="SPLADE retrieve-and-rerank search engine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"twostage {__version__}")
    add_verbosity_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="encode a BEIR corpus.jsonl and build an index (atomically)")
    p.add_argument("corpus", type=Path, help="BEIR corpus.jsonl (or .jsonl.gz)")
    p.add_argument("--index", required=True, type=Path, help="index directory to create or replace")
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"index backend (default: {DEFAULT_BACKEND}: BM25 + dense, fused; lucene-impact: SPLADE)",
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="registered encoder: SPLADE (splade, splade-doc; default splade) or, for dense-flat, a dense kind "
        "(onnx, the default; sentence-transformers with --model DIR, a local sentence-transformers directory)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="bundled:NAME, a local HF directory or a hub name (the SPLADE model; for dense-flat the dense model)",
    )
    p.add_argument("--dense-model", default=None, help="dense model of --backend hybrid (default: bge-small INT8)")
    p.add_argument(
        "--dense-encoder", default=None, help="dense encoder kind of --backend hybrid (onnx, sentence-transformers)"
    )
    p.add_argument("--max-length", type=_positive, default=256, help="document tokens (default 256)")
    p.add_argument("--top-n", type=_positive, default=None, help="keep the N heaviest terms per document")
    p.add_argument("--scale", type=_positive_float, default=100.0, help="impact quantisation scale (default 100)")
    p.add_argument(
        "--batch-size", type=_positive, default=None, help="texts per pass (SPLADE 8 onnx/32 torch; dense 1)"
    )
    p.add_argument("--encoder-backend", choices=("onnx", "torch"), default="onnx", help="SPLADE runtime (default onnx)")
    p.add_argument("--threads", type=_positive, default=2, help="indexing threads (default 2)")
    p.add_argument("--limit", type=_positive, default=None, help="index only the first N documents")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    o = p.add_argument_group(
        "--backend opensearch, opensearch-knn (connection also from TWOSTAGE_OPENSEARCH_* / OPENSEARCH_URL)"
    )
    o.add_argument("--opensearch-url", action="append", metavar="URL", help="cluster URL (repeat for more hosts)")
    o.add_argument("--opensearch-index", metavar="NAME", help="alias that searches use (default: from --index)")
    from twostage_search.indexes.hybrid_cli import add_compose_parser, add_fusion_arguments

    add_fusion_arguments(
        build=True, p=p.add_argument_group("--backend hybrid (builds its component indexes inside --index)")
    )
    add_compose_parser(sub)
    from twostage_search.indexes.dense_cli import add_dense_parsers

    add_dense_parsers(sub)

    s = sub.add_parser("search", help="search an index and print the ranking")
    s.add_argument("query", help="query text")
    s.add_argument("--index", required=True, type=Path)
    s.add_argument("--k", type=_positive, default=10, help="results to return (default 10)")
    s.add_argument("--depth", type=_positive, default=100, help="first-stage candidates (default 100)")
    s.add_argument("--rerank-depth", type=int, default=None, help="how many of them to rerank (default: all)")
    s.add_argument("--reranker", default="identity", help="registered reranker (default: identity)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument(
        "--retriever-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a search option of the index's backend, e.g. query_side=lookup (impact-csc), ef_search=256 (dense)",
    )

    c = sub.add_parser("calibrate", help="measure retrieve/rerank cost on this machine and fit the cost model")
    c.add_argument("--index", required=True, type=Path)
    c.add_argument("--reranker", default="onnx-cross-encoder", help="registered reranker (default: onnx-cross-encoder)")
    c.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"), help="BEIR dir for queries")
    c.add_argument("--queries", type=_positive, default=10, help="queries to measure (default 10)")
    c.add_argument("--ks", type=_positive, nargs="+", default=[5, 10, 20, 50], help="rerank depths to time")
    c.add_argument("--usd-per-token-in", type=float, default=0.0, help="price of an input token (API rerankers)")
    c.add_argument("--usd-per-token-out", type=float, default=0.0)
    c.add_argument("--out", type=Path, default=None, help="cost model JSON (default: INDEX/costmodel-RERANKER.json)")

    from twostage_search.rerankers.training_cli import add_train_parser

    add_train_parser(sub)

    from twostage_search.service.ubi.cli import add_log_parser

    add_log_parser(sub)

    from twostage_search.service.judging.cli import add_judge_parser
    from twostage_search.service.report_cli import add_report_parser

    add_report_parser(sub)
    add_judge_parser(sub)

    from twostage_search.rerankers.onnx_export_cli import add_export_parser

    add_export_parser(sub)

    ls = sub.add_parser("serve-llm", help="serve the local LLM over an OpenAI-compatible HTTP API (/v1)")
    ls.add_argument("--backend", default="llama-cpp", help="local LLM backend (llama-cpp, transformers)")
    ls.add_argument("--model", default=None, help="bundled:NAME or a model path (default: the bundled LLM)")
    ls.add_argument("--served-model-name", default=None, help="model name clients send (default: --model)")
    ls.add_argument("--host", default="127.0.0.1")
    ls.add_argument("--port", type=int, default=8000)
    ls.add_argument("--threads", type=_positive, default=None, help="CPU threads for the model")
    ls.add_argument("--fault-injection", action="store_true", help="enable POST /_faults (tests only)")

    b = sub.add_parser("bench", help="benchmark systems (YAML) on a BEIR dataset: table, runs, report, plots")
    from twostage_search.benchmarks.cli import add_bench_arguments

    add_bench_arguments(b)
    f = sub.add_parser("fetch-beir", help="download a standard BEIR dataset (needs network access)")
    f.add_argument("name", help="BEIR dataset name (e.g. scifact, nfcorpus, fiqa)")
    f.add_argument("--out", required=True, type=Path, help="directory to create (BEIR files)")
    f.add_argument("--source", default="auto", choices=("auto", "zip", "ir_datasets"))
    f.add_argument("--url", default=None, help="archive URL instead of BEIR's (a mirror or file://)")
    f.add_argument("--timeout", type=float, default=60.0, help="seconds to wait on the network")

    v = sub.add_parser("serve", help="run the HTTP service (A/B experiment of rerankers) with uvicorn")
    v.add_argument("--index", type=Path, default=None, help="index directory (default: $TWOSTAGE_INDEX or var/scifact)")
    v.add_argument("--experiment", type=Path, default=None, help="experiment file (default: the bundled one)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    return parser


def _backend_options(args: argparse.Namespace) -> dict[str, object]:
    """Options only some backends take: the OpenSearch connection flags, for the two OpenSearch backends."""
    options: dict[str, object] = {}
    if args.opensearch_url:
        options["hosts"] = [h for value in args.opensearch_url for h in value.split(",") if h.strip()]
    if args.opensearch_index:
        options["index_name"] = args.opensearch_index
    if options and args.backend not in ("opensearch", "opensearch-knn"):
        raise InputError("--opensearch-url/--opensearch-index apply only to --backend opensearch or opensearch-knn")
    return options


def cmd_index(args: argparse.Namespace) -> int:
    from itertools import islice

    from twostage_search.engine.beir import count_docs, read_corpus
    from twostage_search.engine.dense import ONNX_KIND
    from twostage_search.engine.encoders import create_encoder
    from twostage_search.engine.models import DEFAULT_SPLADE
    from twostage_search.engine.registry import dense_encoders, encoders, index_backends

    backend = index_backends.get(args.backend)
    own_encoder = getattr(backend, "create_encoder", None)
    sparse_encoder = args.encoder or "splade"
    # unknown name → error before any work
    dense_encoders.get(args.encoder or ONNX_KIND) if own_encoder is not None else encoders.get(sparse_encoder)
    options = _backend_options(args)
    total = count_docs(args.corpus)  # validates every line before anything is written
    if total == 0:
        raise InputError(f"{args.corpus}: corpus is empty")
    if args.limit:
        total = min(total, args.limit)
    from twostage_search.indexes.hybrid_cli import build_options

    options.update(build_options(args))
    if own_encoder is not None:  # a backend with its own kind of encoder (dense-flat)
        encoder = own_encoder(
            kind=args.encoder, model=args.model, max_length=args.max_length, batch_size=args.batch_size,
            threads=args.threads,
        )  # fmt: skip
    elif getattr(backend, "needs_encoder", True) or "splade" in (args.components or "").replace(" ", "").split(","):
        encoder = create_encoder(
            sparse_encoder,
            model=args.model or DEFAULT_SPLADE,
            max_length=args.max_length,
            top_n=args.top_n,
            batch_size=args.batch_size,
            backend=args.encoder_backend,
        )
    else:
        encoder = None
    started = time.perf_counter()
    index = backend.build(
        islice(read_corpus(args.corpus), total),
        args.index,
        encoder=encoder,
        scale=args.scale,
        threads=args.threads,
        total=total,
        progress=not args.no_progress,
        **options,
    )
    seconds = time.perf_counter() - started
    print(f"indexed {len(index)} documents into {args.index} in {seconds:.1f}s ({len(index) / seconds:.1f} docs/s)")
    return 0


def cmd_hybrid(args: argparse.Namespace) -> int:
    from twostage_search.indexes.hybrid_cli import compose

    return compose(args)


def cmd_search(args: argparse.Namespace) -> int:
    from twostage_search import indexes
    from twostage_search.engine.pipeline import TwoStage
    from twostage_search.engine.registry import rerankers
    from twostage_search.engine.types import Query

    query = Query("q", args.query)  # empty query → InputError before loading anything
    reranker_factory = rerankers.get(args.reranker)
    index = indexes.load(args.index)
    if args.rerank_depth is not None and args.rerank_depth < 0:
        raise InputError(f"--rerank-depth must be non-negative, got {args.rerank_depth}")
    retriever = indexes.open_retriever(index, key_values(args.retriever_option, "--retriever-option"))
    pipeline = TwoStage(retriever, reranker_factory(), depth=args.depth, rerank_depth=args.rerank_depth)
    result = pipeline.run(query, k=args.k)
    ranking, ms = result.ranking, result.wall_ms
    if args.json:
        hits = [
            {"rank": h.rank, "doc_id": h.doc_id, "score": h.score, "title": h.title, "text": h.text} for h in ranking
        ]
        costs = [dataclasses.asdict(c) for c in result.costs]
        payload = {"query": args.query, "reranker": args.reranker, "ms": round(ms, 2), "costs": costs, "hits": hits}
        json.dump(payload, sys.stdout)
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    from twostage_search import indexes
    from twostage_search.engine.beir import find_file, read_queries
    from twostage_search.engine.calibrate import calibrate
    from twostage_search.engine.registry import rerankers

    if len(set(args.ks)) < 2:
        raise InputError("calibration needs at least two positive k (--ks 5 10 20 50)")
    factory = rerankers.get(args.reranker)
    queries = [q for _, q in zip(range(args.queries), read_queries(find_file(args.dataset, "queries")), strict=False)]
    reranker = factory()
    retriever = indexes.load(args.index).retriever()
    model, observed = calibrate(
        retriever,
        reranker,
        queries,
        ks=args.ks,
        usd_per_token_in=args.usd_per_token_in,
        usd_per_token_out=args.usd_per_token_out,
        progress=True,
    )
    out = args.out or args.index / f"costmodel-{args.reranker}.json"
    model.save(out)
    for stage, cost in model.stages.items():
        a, b = cost.coef[0], cost.coef[1]
        print(f"{stage}: ms ≈ {a:.1f} + {b:.2f}·k  ({len(observed[stage])} observations)")
    print(f"saved {out}")
    return 0


def _mine_pairs(args: argparse.Namespace) -> list[Any]:
    from twostage_search import indexes
    from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
    from twostage_search.rerankers.training import mine_pairs

    if args.index is None:
        raise InputError("--dataset needs --index (the first stage that supplies hard negatives)")
    qrels = read_qrels(args.dataset / "qrels" / f"{args.split}.tsv")
    queries = [q for q in read_queries(find_file(args.dataset, "queries")) if q.query_id in qrels]
    if not queries:
        raise InputError(f"no queries of {args.dataset} have {args.split} qrels")
    corpus = {d.doc_id: d for d in read_corpus(find_file(args.dataset, "corpus"))}
    exclude = {
        d
        for split in args.exclude_relevant_to
        for judged in read_qrels(args.dataset / "qrels" / f"{split}.tsv").values()
        for d, rel in judged.items()
        if rel > 0
    }
    retriever = indexes.load(args.index).retriever()
    return mine_pairs(
        retriever,
        queries,
        qrels,
        corpus,
        negatives=args.negatives,
        depth=args.negative_depth,
        random_negatives=args.random_negatives,
        seed=args.seed,
        exclude=exclude,
    )


def cmd_train_cross_encoder(args: argparse.Namespace) -> int:
    from twostage_search.rerankers.training_cli import train_from_args

    return train_from_args(args, _mine_pairs)


def cmd_log(args: argparse.Namespace) -> int:
    from twostage_search.service.ubi.cli import log_from_args

    return log_from_args(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from twostage_search.benchmarks.cli import bench

    return bench(args)


def cmd_fetch_beir(args: argparse.Namespace) -> int:
    from twostage_search.benchmarks.cli import fetch_beir

    return fetch_beir(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from twostage_search.engine.optional import require

    uvicorn = require("uvicorn", "service")
    require("fastapi", "service")
    from twostage_search.service.app import create_app
    from twostage_search.service.settings import Settings

    overrides: dict[str, Any] = {}
    if args.index is not None:
        overrides["index"] = args.index
    if args.experiment is not None:
        overrides["experiment"] = args.experiment
    settings = Settings(**overrides)
    for path, what in ((settings.index, "index"), (settings.experiment, "experiment")):
        if not path.exists():
            raise InputError(f"{what} not found: {path}")
    quiet = verbosity(args) < 0
    if not quiet:
        logging.getLogger("twostage_search.service").setLevel(logging.INFO)  # one access line per request
    log_level = "error" if quiet else "info"
    uvicorn.run(create_app(settings), host=args.host, port=args.port, access_log=False, log_level=log_level)
    return 0


def cmd_serve_llm(args: argparse.Namespace) -> int:
    from twostage_search.rerankers.llm.serve import serve

    return serve(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbosity(args))
    commands = {
        "index": cmd_index,
        "search": cmd_search,
        "calibrate": cmd_calibrate,
        "train-cross-encoder": cmd_train_cross_encoder,
        "hybrid": cmd_hybrid,
    }
    commands.update({"bench": cmd_bench, "fetch-beir": cmd_fetch_beir})
    commands["serve"] = cmd_serve
    commands["serve-llm"] = cmd_serve_llm
    commands["log"] = cmd_log
    from twostage_search.indexes.dense_cli import dense_commands

    commands.update(dense_commands())
    from twostage_search.rerankers.onnx_export_cli import export_from_args

    commands["export-onnx"] = export_from_args
    from twostage_search.service.judging.cli import judge_from_args
    from twostage_search.service.report_cli import report_from_args

    commands.update(report=report_from_args, judge=judge_from_args)
    try:
        return commands[args.command](args)
    except (TwoStageError, OSError) as exc:
        log.debug("%s failed", args.command, exc_info=True)  # -vv: the traceback above the one-line error
        print(f"twostage: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print("twostage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
