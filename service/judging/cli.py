"""``twostage judge``: judgements of a service's data directory from the LLM judge or from clicks; exports.

twostage judge run --source lore --index var/scifact --max-pairs 200 --max-seconds 600
twostage judge run --source clicks --min-impressions 10
twostage judge export --format trec --out judged.qrels
twostage judge agreement
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twostage_search.engine.argtypes import positive_float, positive_int
from twostage_search.engine.atomic import atomic_write_text
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Document
from twostage_search.service.judging.store import SOURCES
from twostage_search.service.ubi.records import DEFAULT_DATA_DIR
from twostage_search.service.ubi.stores import add_store_args, store_from_args

DATA_DIR_ENV = "TWOSTAGE_DATA_DIR"


def _data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the service's data directory (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})",
    )


def add_judge_parser(sub: Any) -> None:
    g = sub.add_parser("judge", help="relevance judgements: LLM judge or clicks over the query log; export")
    actions = g.add_subparsers(dest="judge_command", required=True)
    r = actions.add_parser("run", help="judge logged pairs with the LLM judge (lore) or from clicks (COEC)")
    r.add_argument("--source", required=True, choices=("lore", "clicks"))
    _data_dir(r)
    add_store_args(r, data_dir=False)
    r.add_argument("--depth", type=positive_int, default=10, help="lore: judge the top DEPTH served (default 10)")
    r.add_argument("--max-pairs", type=positive_int, default=None, help="lore: stop after N pairs")
    r.add_argument("--max-seconds", type=positive_float, default=None, help="lore: start no query after S seconds")
    r.add_argument("--index", type=Path, default=None, help="lore: index whose document store has the texts")
    r.add_argument("--corpus", type=Path, default=None, help="lore: BEIR corpus.jsonl with the texts")
    r.add_argument("--backend", default="llama-cpp", help="lore: LLM backend (default: the bundled model)")
    r.add_argument("--threads", type=positive_int, default=None, help="lore: CPU threads (llama-cpp)")
    r.add_argument("--domain", default="e-commerce", help="lore: domain preset or description")
    r.add_argument("--min-impressions", type=positive_int, default=10, help="clicks: least impressions (10)")
    r.add_argument("--thresholds", default="0.5,1,2", help="clicks: COEC where grades 1, 2, 3 start")
    e = actions.add_parser("export", help="the merged grades as TREC qrels, Quepid CSV or BEIR queries")
    _data_dir(e)
    e.add_argument("--format", choices=("trec", "csv", "queries"), default="trec")
    e.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    e.add_argument(
        "--source", default=",".join(SOURCES), help="sources in precedence order (default: human,llm,clicks)"
    )
    a = actions.add_parser("agreement", help="Cohen's kappa, weighted kappa, confusion matrix between sources")
    _data_dir(a)
    a.add_argument("--json", action="store_true", help="print JSON")


def judge_from_args(args: argparse.Namespace) -> int:
    from twostage_search.service.judging.store import FILENAME, JudgementStore

    data_dir = args.data_dir or Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    if args.judge_command != "run" and not (data_dir / FILENAME).is_file():
        raise InputError(f"no judgements at {data_dir / FILENAME}")
    store = JudgementStore(data_dir)
    try:
        if args.judge_command == "run":
            return _run(args, data_dir, store)
        if args.judge_command == "export":
            return _export(args, store)
        return _agreement(args, store)
    finally:
        store.close()


def _run(args: argparse.Namespace, data_dir: Path, store: Any) -> int:
    log, _ = store_from_args(args)  # the query and event log (SQLite in data_dir, or OpenSearch)
    try:
        if args.source == "clicks":
            from twostage_search.service.judging.clicks import coec_judgements

            try:
                thresholds = [float(t) for t in args.thresholds.split(",")]
            except ValueError:
                raise InputError(f"--thresholds: three numbers, got {args.thresholds!r}") from None
            grades = coec_judgements(log, min_impressions=args.min_impressions, thresholds=thresholds)
            store.add(grades)
            print(f"{store.path}: {len(grades)} click judgements (COEC, ≥ {args.min_impressions} impressions)")
            return 0
        from twostage_search.service.judging.llm import judge_pairs
        from twostage_search.service.judging.pairs import logged_pairs

        run = judge_pairs(
            logged_pairs(log, args.depth),
            _lore(args),
            store,
            _documents(args),
            max_pairs=args.max_pairs,
            max_seconds=args.max_seconds,
        )
    finally:
        log.close()
    print(
        f"{store.path}: {run.judged} pairs judged by lore in {run.seconds:.0f} s ({run.unreadable} unreadable, "
        f"{run.missing} without text, {run.already} judged before, {run.left} left; stopped: {run.stopped_by})"
    )
    return 0


def _lore(args: argparse.Namespace) -> Any:
    from twostage_search.rerankers.llm.lore import JudgementCache, LoreReranker

    options: dict[str, Any] = {"threads": args.threads} if args.threads and args.backend == "llama-cpp" else {}
    return LoreReranker(args.backend, domain=args.domain, cache=JudgementCache(0), backend_options=options)


def _documents(args: argparse.Namespace) -> Any:
    """doc ids → documents, from the index's document store or a corpus file."""
    if (args.index is None) == (args.corpus is None):
        raise InputError("--source lore needs the document texts: --index DIR or --corpus FILE (one of them)")
    if args.corpus is not None:
        from twostage_search.engine.beir import read_corpus

        corpus = {d.doc_id: d for d in read_corpus(args.corpus)}
        return lambda ids: {i: corpus[i] for i in ids if i in corpus}
    from twostage_search.indexes.docstore import FILENAME, DocStore

    if not (args.index / FILENAME).is_file():
        raise InputError(f"{args.index}: no document store ({FILENAME}); pass --corpus")
    docs = DocStore(args.index)

    def fetch(ids: Sequence[str]) -> Mapping[str, Document]:
        return docs.get_many(ids)

    return fetch


def _export(args: argparse.Namespace, store: Any) -> int:
    from twostage_search.service.judging.exports import beir_queries, merge, quepid_csv, trec_qrels

    precedence = [s.strip() for s in args.source.split(",") if s.strip()]
    qrels = merge(store.judgements(sources=precedence), precedence)
    text = {"trec": trec_qrels, "csv": quepid_csv, "queries": beir_queries}[args.format](qrels)
    if args.out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(args.out, text)
        print(f"{args.out}: {len(qrels)} judged pairs ({args.format})", file=sys.stderr)
    return 0


def _agreement(args: argparse.Namespace, store: Any) -> int:
    from twostage_search.service.judging.exports import source_agreement

    rows = source_agreement(store.judgements())
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    if not rows:
        print("no pair is graded by two sources")
    for r in rows:
        kappa = "n/a" if r.kappa is None else f"{r.kappa:.3f}"
        weighted = "n/a" if r.weighted_kappa is None else f"{r.weighted_kappa:.3f}"
        print(f"{r.first} vs {r.second}: {r.pairs} pairs, kappa {kappa}, linear-weighted kappa {weighted}")
        print(f"  confusion (rows: {r.first} 0-3, columns: {r.second} 0-3):")
        for grade, row in enumerate(r.confusion):
            print(f"  {grade}: " + " ".join(f"{v:5d}" for v in row))
    return 0
