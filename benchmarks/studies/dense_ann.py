"""Choose HNSW settings for ``dense-flat`` on dev queries: recall@k of the graph against the exact scan.

    python -m twostage_search.benchmarks.studies.dense_ann --dataset ../shared/datasets/scifact \\
        --dense-index var/scifact-dense --m 8,16,32 --ef 32,64,128,256,512 --k 100 --target 0.99

The dense index is built first unless it exists (``--dense-index``; default encoder); queries are encoded by
its recorded query side (``--query-encoder`` names another, e.g. ``full``). Queries: with a
``qrels/train.tsv`` (SciFact), dev is its first ``--max-queries`` ids and test is ``qrels/test.tsv``;
with ``--splits-file`` (a committed query-level split, e.g. ``benchmarks/data/splits/homedepot-search-relevance.tsv``)
its ``dev`` and ``test`` queries, a seeded sample of ``--max-queries`` of each; otherwise (a graded set without
a split file) the ids of ``qrels/test.tsv`` are split 50/50 by ``benchmarks.graded.split_queries`` (seeded) and
each half is cut to its first ``--max-queries`` ids. The
queries are encoded once; the exact scan's top ``k`` is the reference. For each ``M`` and each scalar kind of
the graph (``--scalar``: f32, f16, i8) an HNSW graph is built (one thread, ``--ef-construction``) in a
temporary directory (or in ``--graphs``, where a later run reuses it), and for each ``ef_search`` and refine
factor (``--refine``: the graph's top ``factor × k`` are scored exactly) the mean recall@k (|top k ∩ exact
top k| / |exact top k|) is measured on the dev and test queries, with the mean number of distances a graph
search computes and the KiB of vectors a search reads (those distances times the graph's bytes per vector,
plus the exact re-scoring's float32 rows): its cost, the same on any machine. Unless ``--no-times``, the p50
time of a search (graph + exact re-scoring) and of the exact scan is measured too, one query at a time, the
two alternating. The chosen setting is the cheapest (fewest KiB read, then fewest distances) whose dev recall
reaches ``--target``; its test recall is reported beside it. ``--apply`` then adds the chosen graph
to the index (``DenseFlatIndex.add_hnsw``). Writes ``--out/dense_ann-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import machine, percentile
from twostage_search.benchmarks.graded import split_queries
from twostage_search.benchmarks.graded_data import read_splits, subsample
from twostage_search.engine.beir import count_docs, find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.errors import InputError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Query

log = logging.getLogger(__name__)

SCALAR_BYTES = {"f32": 4, "f16": 2, "i8": 1}


def dev_test_queries(dataset: Path, max_queries: int, splits_file: Path | None = None) -> dict[str, list[Query]]:
    """The dev and test queries (see the module docstring), at most ``max_queries`` each."""
    test_ids = list(read_qrels(dataset / "qrels" / "test.tsv"))
    if splits_file is not None:
        named = read_splits(splits_file)
        missing = {"dev", "test"} - set(named)
        if missing:
            raise InputError(f"{splits_file} has no split {', '.join(sorted(missing))}")
        ids = {name: list(part) for name, part in subsample(named, {"dev": max_queries, "test": max_queries}).items()}
    elif (dataset / "qrels" / "train.tsv").is_file():
        ids = {"dev": list(read_qrels(dataset / "qrels" / "train.tsv"))[:max_queries], "test": test_ids}
    else:
        halves = split_queries(test_ids, {"dev": 0.5, "test": 0.5})
        ids = {name: list(part[:max_queries]) for name, part in halves.items()}
    by_id = {q.query_id: q for q in read_queries(find_file(dataset, "queries"))}
    return {name: [by_id[i] for i in part if i in by_id][:max_queries] for name, part in ids.items()}


def ensure_index(args: argparse.Namespace) -> Any:
    from twostage_search.indexes.dense import DenseFlatIndex

    if not (args.dense_index / "meta.json").is_file():
        corpus = find_file(args.dataset, "corpus")
        DenseFlatIndex.build(read_corpus(corpus), args.dense_index, total=count_docs(corpus), progress=False)
    return DenseFlatIndex.open(args.dense_index)


def _graph(index: Any, m: int, scalar: str, args: argparse.Namespace, tmp: Path) -> tuple[Path, float | None]:
    """The graph file of setting (``m``, ``scalar``): reused from ``--graphs`` when there, else built (timed)."""
    from twostage_search.indexes.dense_hnsw import HnswConfig, build_hnsw

    folder = args.graphs or tmp
    path = folder / f"{index.path.name}-m{m}-{scalar}-efc{args.ef_construction}-n{len(index)}.usearch"
    if path.is_file():
        return path, None
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_hnsw(index.vectors, path, HnswConfig(m=m, ef_construction=args.ef_construction, scalar=scalar))
    return path, time.perf_counter() - started


def _times(approximate: Any, exact: Any, vectors: np.ndarray, k: int) -> tuple[float, float]:
    """p50 ms of a graph search (with the exact re-scoring) and of the exact scan, the two alternating."""
    ann_ms: list[float] = []
    exact_ms: list[float] = []
    for i, v in enumerate(vectors):  # alternate which goes first
        for which in (approximate, exact) if i % 2 == 0 else (exact, approximate):
            t = time.perf_counter()
            which.search_vector(v, k)
            (ann_ms if which is approximate else exact_ms).append((time.perf_counter() - t) * 1000)
    return round(percentile(ann_ms, 50), 3), round(percentile(exact_ms, 50), 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.indexes.dense import DenseRetriever
    from twostage_search.indexes.dense_hnsw import HnswConfig, HnswGraph

    index = ensure_index(args)
    encoder = index.query_encoder(args.query_encoder)
    splits = dev_test_queries(args.dataset, args.max_queries, args.splits_file)
    vectors = {name: encoder.encode_queries([q.text for q in queries]) for name, queries in splits.items()}
    exact = DenseRetriever(index, encoder)
    reference = {name: [[d for d, _ in exact.search_vector(v, args.k)] for v in vecs] for name, vecs in vectors.items()}
    dim = int(index.vectors.shape[1])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dense-ann-") as tmp:
        for m in (int(x) for x in args.m.split(",")):
            for scalar in args.scalar.split(","):
                graph_path, build_seconds = _graph(index, m, scalar, args, Path(tmp))
                for ef in (int(x) for x in args.ef.split(",")):
                    for refine in (int(x) for x in args.refine.split(",")):
                        graph = HnswGraph(graph_path, rows=len(index), ef_search=ef, refine_factor=refine)
                        approximate = DenseRetriever(index, encoder, graph=graph)
                        row: dict[str, Any] = {"m": m, "scalar": scalar, "ef_search": ef, "refine_factor": refine}
                        row["build_seconds"] = None if build_seconds is None else round(build_seconds, 2)
                        counted = [graph.search_counted(v, args.k * refine)[1] for v in vectors["dev"]]
                        row["distances"] = round(float(np.mean(counted)), 1)
                        # bytes of vectors a search reads: the graph's distances plus the exact re-scoring
                        read = row["distances"] * dim * SCALAR_BYTES[scalar] + refine * args.k * dim * 4
                        row["kib_read"] = round(read / 1024, 1)
                        for name, vecs in vectors.items():
                            found = [[d for d, _ in approximate.search_vector(v, args.k)] for v in vecs]
                            pairs = zip(found, reference[name], strict=True)
                            recalls = [len(set(f) & set(r)) / len(r) for f, r in pairs if r]
                            row[f"{name}_recall"] = round(float(np.mean(recalls)), 4)
                            row[f"{name}_min_recall"] = round(float(np.min(recalls)), 4)
                        if args.times:
                            row["p50_ms"], row["exact_p50_ms"] = _times(approximate, exact, vectors["dev"], args.k)
                        rows.append(row)
                        log.info("%s", row)
    passing = [r for r in rows if r["dev_recall"] >= args.target]
    chosen = min(passing, key=lambda r: (r["kib_read"], r["distances"], r["m"], r["ef_search"])) if passing else None
    if chosen is not None and args.apply:
        from twostage_search.indexes.dense import DenseFlatIndex

        config = HnswConfig(
            m=chosen["m"],
            ef_construction=args.ef_construction,
            ef_search=chosen["ef_search"],
            scalar=chosen["scalar"],
            refine_factor=chosen["refine_factor"],
        )
        DenseFlatIndex.add_hnsw(args.dense_index, config)
    return {
        "dataset": args.dataset.name,
        "documents": len(index),
        "k": args.k,
        "target": args.target,
        "query_encoder": args.query_encoder or str(index.meta.get("query_encoder", "full")),
        "queries": {name: len(q) for name, q in splits.items()},
        "splits_file": str(args.splits_file) if args.splits_file else None,
        "ef_construction": args.ef_construction,
        "timed": bool(args.times),
        "machine": machine(),
        "settings": rows,
        "chosen": chosen,
        "applied": bool(chosen is not None and args.apply),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/scifact"))
    parser.add_argument("--dense-index", type=Path, default=Path("var/scifact-dense"))
    parser.add_argument("--m", default="8,16,32", help="HNSW links per node (usearch connectivity)")
    parser.add_argument("--ef", default="32,64,128,256,512", help="ef_search values (usearch expansion_search)")
    parser.add_argument("--scalar", default="f32", help="the graph's scalar kinds to try (f32, f16, i8)")
    parser.add_argument("--refine", default="1", help="refine factors to try (the graph's top factor × k rescored)")
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--query-encoder", help="the query side (default: the index's recorded one)")
    parser.add_argument(
        "--graphs", type=Path, help="keep built graphs here and reuse them (named by index folder, M, kind)"
    )
    parser.add_argument("--no-times", dest="times", action="store_false", help="count distances only, time nothing")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.99, help="mean dev recall@k to reach")
    parser.add_argument("--max-queries", type=int, default=300, help="queries per split at most")
    parser.add_argument("--splits-file", type=Path, help="a query-level split file with dev and test splits")
    parser.add_argument("--apply", action="store_true", help="add the chosen graph to --dense-index")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    setup_logging(0)
    try:
        report = run(args)
    except (InputError, OSError) as exc:  # one line and a nonzero status, as every command
        log.error("%s", exc)
        return exit_status(exc)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dense_ann-{report['dataset']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{report['dataset']}: {report['documents']} documents, recall@{report['k']} vs the exact scan")
    head = f"{'M':>3} {'kind':>4} {'ef':>5} {'rf':>3} {'dev R':>7} {'dev min':>7} {'test R':>7}"
    print(f"{head} {'dists':>8} {'KiB':>7} ms")
    for r in report["settings"]:
        ms = f"{r['p50_ms']:.3f} / {r['exact_p50_ms']:.3f}" if "p50_ms" in r else "-"
        print(
            f"{r['m']:>3} {r['scalar']:>4} {r['ef_search']:>5} {r['refine_factor']:>3} {r['dev_recall']:>7.4f} "
            f"{r['dev_min_recall']:>7.4f} {r['test_recall']:>7.4f} {r['distances']:>8.1f} {r['kib_read']:>7.1f} {ms}"
        )
    chosen = report["chosen"]
    print(f"chosen: {chosen if chosen else f'none reaches {args.target}'}; wrote {path}")
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(main())
