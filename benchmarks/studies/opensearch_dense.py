"""Dense search on OpenSearch (``opensearch-knn``: the k-NN plugin's Lucene HNSW) against the exact scan.

    python -m twostage_search.benchmarks.studies.opensearch_dense --dataset ../shared/datasets/scifact \\
        --dense-index var/scifact-dense --ef 100,200,400 --k 100 --target 0.99

The ``dense-flat`` index (built first unless it exists) is moved to a local one-node OpenSearch with the
k-NN plugin (or ``--opensearch-url``) by ``OpenSearchKnnIndex.from_dense``: the same vectors, no
re-encoding. Queries are split into dev and test as in :mod:`.dense_ann` and encoded once. For each
``ef_search`` (the graph is searched with a queue of ``max(k, ef_search)`` candidates, so values below
``k`` change nothing): mean and minimum recall@k of the cluster's answer against the exact scan's top ``k``, on
dev and test, and the p50 time of one k-NN request (HTTP to the node on this machine, one at a time)
beside the exact in-process scan, the two alternating. The chosen ``ef_search`` is the smallest whose dev
recall reaches ``--target``; its test recall is reported beside it. Writes
``--out/opensearch_dense-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import machine, percentile
from twostage_search.benchmarks.studies.dense_ann import dev_test_queries, ensure_index
from twostage_search.engine.logs import setup_logging


def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from twostage_search.indexes.opensearch.knn import KnnMethod, OpenSearchKnnIndex

    flat = ensure_index(args)
    encoder = flat.encoder()
    splits = dev_test_queries(args.dataset, args.max_queries)
    vectors = {name: encoder.encode_queries([q.text for q in queries]) for name, queries in splits.items()}
    exact = flat.retriever(encoder, search="exact")
    reference = {name: [[d for d, _ in exact.search_vector(v, args.k)] for v in vecs] for name, vecs in vectors.items()}
    method = KnnMethod(m=args.m, ef_construction=args.ef_construction)
    with tempfile.TemporaryDirectory(prefix="os-dense-") as tmp:
        started = time.perf_counter()
        knn = OpenSearchKnnIndex.from_dense(
            flat.path, Path(tmp) / "knn", method=method, hosts=[url], progress=False, index_name="bench-dense"
        )
        build_seconds = time.perf_counter() - started
        rows: list[dict[str, Any]] = []
        try:
            for ef in (int(x) for x in args.ef.split(",")):
                cluster = knn.retriever(encoder, ef_search=ef)
                row: dict[str, Any] = {"ef_search": ef}
                for name, vecs in vectors.items():
                    found = [[c.doc_id for c in cluster.search_vector(v, args.k)] for v in vecs]
                    recalls = [len(set(f) & set(r)) / len(r) for f, r in zip(found, reference[name], strict=True)]
                    row[f"{name}_recall"] = round(float(np.mean(recalls)), 4)
                    row[f"{name}_min_recall"] = round(float(np.min(recalls)), 4)
                for v in vectors["dev"][:20]:  # warm up the node (JIT, caches) before timing
                    cluster.search_vector(v, args.k)
                cluster_ms: list[float] = []
                exact_ms: list[float] = []
                for i, v in enumerate(vectors["dev"]):  # alternate which goes first
                    for which in ("cluster", "exact") if i % 2 == 0 else ("exact", "cluster"):
                        t = time.perf_counter()
                        cluster.search_vector(v, args.k) if which == "cluster" else exact.search_vector(v, args.k)
                        (cluster_ms if which == "cluster" else exact_ms).append((time.perf_counter() - t) * 1000)
                row["p50_ms"] = round(percentile(cluster_ms, 50), 3)
                row["exact_p50_ms"] = round(percentile(exact_ms, 50), 3)
                rows.append(row)
        finally:
            with contextlib.suppress(Exception):
                knn.client.indices.delete(index=f"{knn.alias}--*")
    passing = [r for r in rows if r["dev_recall"] >= args.target]
    return {
        "dataset": args.dataset.name,
        "documents": len(flat),
        "k": args.k,
        "target": args.target,
        "method": {"m": args.m, "ef_construction": args.ef_construction, "engine": "lucene"},
        "queries": {name: len(q) for name, q in splits.items()},
        "build_seconds": round(build_seconds, 1),
        "machine": machine(),
        "settings": rows,
        "chosen": min(passing, key=lambda r: r["ef_search"]) if passing else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/scifact"))
    parser.add_argument("--dense-index", type=Path, default=Path("var/scifact-dense"))
    parser.add_argument("--ef", default="100,200,400", help="ef_search values (queue: max(k, ef_search))")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.99, help="mean dev recall@k to reach")
    parser.add_argument("--max-queries", type=int, default=300, help="queries per split at most")
    parser.add_argument("--opensearch-url", help="an existing cluster with the k-NN plugin (default: a local node)")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    setup_logging(0)
    with contextlib.ExitStack() as stack:
        url = args.opensearch_url
        if not url:
            from twostage_search.indexes.opensearch.local import KNN_PLUGIN, LocalCluster

            url = stack.enter_context(LocalCluster.start(1, plugins=(KNN_PLUGIN,))).url
        report = run(args, url)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"opensearch_dense-{report['dataset']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{report['dataset']}: {report['documents']} documents on OpenSearch k-NN, recall@{report['k']} vs exact")
    print(f"{'ef':>5} {'dev R':>7} {'dev min':>7} {'test R':>7} {'test min':>8} {'p50 ms':>7} {'exact ms':>8}")
    for r in report["settings"]:
        print(
            f"{r['ef_search']:>5} {r['dev_recall']:>7.4f} {r['dev_min_recall']:>7.4f} {r['test_recall']:>7.4f} "
            f"{r['test_min_recall']:>8.4f} {r['p50_ms']:>7.3f} {r['exact_p50_ms']:>8.3f}"
        )
    print(f"chosen: {report['chosen'] or f'none reaches {args.target}'}; wrote {path}")
    return 0 if report["chosen"] else 1


if __name__ == "__main__":
    sys.exit(main())
