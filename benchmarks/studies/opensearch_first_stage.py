"""SPLADE on OpenSearch against the embedded index, on SciFact: agreement, hybrid, ingest and latency.

    python -m twostage_search.benchmarks.studies.opensearch_first_stage [--docs N] [--dev-queries N] [--out FILE]

One run, one corpus, one query set:

1. Encodes the corpus and the queries once (SPLADE, the default encoder), so every build and search
   below measures the index alone (ingest docs/s excludes encoding; the query encoder is a cache lookup).
2. Builds the embedded ``lucene-impact`` index, a 1-node OpenSearch and a 3-node OpenSearch cluster
   (3 shards, 1 replica), the nodes started by :mod:`twostage_search.indexes.opensearch.local`.
3. Agreement of each OpenSearch with the embedded index on the test queries: top-10 overlap, nDCG@10
   difference, largest score difference of a document both return in their top 10.
4. Latency: the test queries in rounds, each round visiting the three systems in a rotated order;
   p50/p95 per system. nDCG@10 and R@100 of each.
5. Hybrid BM25 + SPLADE on the 1-node cluster: the SPLADE weight chosen on SciFact's train queries (the
   dev split), then BM25, SPLADE and the hybrid scored on the test queries, with paired t-tests (Holm)
   and bootstrap 95% CIs of the nDCG@10 differences.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.datasets import load_beir
from twostage_search.benchmarks.evaluation import compare, evaluate, mean, percentile
from twostage_search.engine.encoders import SparseEncoder, create_encoder
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Document, Query, SparseVector

log = logging.getLogger(__name__)
Run = dict[str, list[tuple[str, float]]]
DATASET = Path(__file__).parent.parent / "data" / "scifact"
GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""SPLADE weights tried on the dev split, with BM25's weight 1 (0 = BM25 alone)."""


class _Cached:
    """One side of an encoder answering from vectors computed once."""

    def __init__(self, side: Any, vectors: dict[str, SparseVector]) -> None:
        self.side = side
        self.vectors = vectors

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        return [self.vectors[t] for t in texts]

    def config(self) -> dict[str, Any]:
        return dict(self.side.config())


def cached_encoder(inner: SparseEncoder, docs: Sequence[Document], queries: Sequence[Query]) -> SparseEncoder:
    """``inner`` with every document and query vector computed once up front (same config)."""
    texts = [d.full_text for d in docs]
    doc_vectors = dict(zip(texts, inner.encode_docs(texts), strict=True))
    qtexts = sorted({q.text for q in queries})
    query_vectors = dict(zip(qtexts, inner.encode_queries(qtexts), strict=True))
    return SparseEncoder(inner.name, _Cached(inner.query, query_vectors), _Cached(inner.doc, doc_vectors), inner.params)


def run_all(retriever: Any, queries: Sequence[Query], k: int) -> Run:
    return {q.query_id: [(h.doc_id, h.score) for h in retriever.retrieve(q, k)] for q in queries}


def agreement(
    got: dict[str, list[tuple[str, float]]], ref: dict[str, list[tuple[str, float]]], qrels: Any
) -> dict[str, Any]:
    qids = sorted(ref)
    overlaps, score_err = [], 0.0
    for q in qids:
        a, b = dict(got[q][:10]), dict(ref[q][:10])
        overlaps.append(len(a.keys() & b.keys()) / max(len(b), 1))
        score_err = max([score_err, *(abs(a[d] - b[d]) for d in a.keys() & b.keys())])
    n_got = evaluate(qrels, qids, got, ["nDCG@10"])["nDCG@10"]
    n_ref = evaluate(qrels, qids, ref, ["nDCG@10"])["nDCG@10"]
    diffs = [x - y for x, y in zip(n_got, n_ref, strict=True)]
    identical = sum(got[q][:10] == ref[q][:10] for q in qids)
    return {
        "mean_top10_overlap": mean(overlaps),
        "min_top10_overlap": min(overlaps),
        "identical_top10_rankings": f"{identical}/{len(qids)}",
        "ndcg10_diff_mean": mean(diffs),
        "ndcg10_diff_max_abs": max(abs(d) for d in diffs),
        "max_score_error": score_err,
    }


def latency(systems: dict[str, Any], queries: Sequence[Query], k: int, rounds: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    for r in range(rounds):
        for i, q in enumerate(queries):
            shift = (r + i) % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                systems[name].retrieve(q, k)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {n: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95), "n": len(t)} for n, t in times.items()}


def hybrid_study(index: Any, encoder: Any, dev: Any, test: Any, k: int) -> dict[str, Any]:
    from twostage_search.indexes.opensearch.hybrid import HybridRetriever

    dev_scores = {}
    for w in GRID:
        runs = run_all(HybridRetriever(index, encoder, bm25_weight=1.0, splade_weight=w), dev.queries, k)
        dev_scores[w] = mean(evaluate(dev.qrels, [q.query_id for q in dev.queries], runs, ["nDCG@10"])["nDCG@10"])
        log.info("dev: SPLADE weight %g → nDCG@10 %.4f", w, dev_scores[w])
    best = max((w for w in GRID if w > 0), key=lambda w: (dev_scores[w], -w))
    qids = [q.query_id for q in test.queries]
    systems = {
        "BM25 (OpenSearch)": HybridRetriever(index, encoder, bm25_weight=1.0, splade_weight=0.0),
        "SPLADE (OpenSearch)": index.retriever(encoder),
        f"hybrid BM25 + {best:g}×SPLADE": HybridRetriever(index, encoder, bm25_weight=1.0, splade_weight=best),
    }
    per_query = {
        name: evaluate(test.qrels, qids, run_all(r, test.queries, k), ["nDCG@10", "R@100"])
        for name, r in systems.items()
    }
    hybrid_name = list(systems)[2]
    bases = list(systems)[:2]
    pairs = [(per_query[hybrid_name]["nDCG@10"], per_query[base]["nDCG@10"]) for base in bases]
    comparisons = [
        {"vs": base, "diff": c.delta, "ci95": (c.ci_low, c.ci_high), "p": c.p_value, "p_holm": c.p_holm}
        for base, c in zip(bases, compare(pairs, test="t-test"), strict=True)
    ]
    return {
        "dev_split": f"train ({len(dev.queries)} queries)",
        "dev_ndcg10_by_splade_weight": {str(w): round(s, 4) for w, s in dev_scores.items()},
        "chosen_splade_weight": best,
        "test": {n: {m: mean(v) for m, v in pq.items()} for n, pq in per_query.items()},
        "hybrid_vs": comparisons,
    }


def subsample(docs: list[Document], keep: set[str], n: int | None, seed: int = 0) -> list[Document]:
    """All judged documents plus random others up to ``n`` in all (corpus order kept); all when ``n`` is None."""
    if n is None or n >= len(docs):
        return docs
    others = [d.doc_id for d in docs if d.doc_id not in keep]
    chosen = keep | set(random.Random(seed).sample(others, max(0, n - len(keep))))
    return [d for d in docs if d.doc_id in chosen]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from twostage_search.indexes.lucene_impact import LuceneImpactIndex
    from twostage_search.indexes.opensearch import OpenSearchIndex
    from twostage_search.indexes.opensearch.local import LocalCluster

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=DATASET)
    ap.add_argument("--docs", type=int, default=None, help="subsample the corpus to N docs (judged ones kept)")
    ap.add_argument("--dev-queries", type=int, default=300, help="train queries used to choose the hybrid weight")
    ap.add_argument("--rounds", type=int, default=2, help="latency rounds over the test queries")
    ap.add_argument("--scale", type=float, default=100.0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    setup_logging(1)
    k = 100
    test, dev = load_beir(args.dataset, "test"), load_beir(args.dataset, "train").head(args.dev_queries)
    judged = {d for qrels in (test.qrels, dev.qrels) for docs in qrels.values() for d in docs}
    docs = subsample(list(test.documents()), judged, args.docs)
    t0 = time.perf_counter()
    encoder = cached_encoder(create_encoder("splade"), docs, [*test.queries, *dev.queries])
    results: dict[str, Any] = {
        "corpus_docs": len(docs),
        "test_queries": len(test.queries),
        "encode_seconds": round(time.perf_counter() - t0, 1),
        "uptime_before": os.getloadavg(),
    }
    work = Path(tempfile.mkdtemp(prefix="os-bench-"))
    with LocalCluster.start(1) as one, LocalCluster.start(3) as three:
        results["startup_seconds"] = {"1 node": one.startup_seconds, "3 nodes": three.startup_seconds}
        builds: dict[str, Any] = {}
        ingest: dict[str, float] = {}
        specs: list[tuple[str, Callable[[], Any]]] = [
            (
                "embedded (lucene-impact)",
                lambda: LuceneImpactIndex.build(docs, work / "emb", encoder=encoder, progress=False, scale=args.scale),
            ),
            (
                "OpenSearch 1 node",
                lambda: OpenSearchIndex.build(
                    docs,
                    work / "os1",
                    encoder=encoder,
                    progress=False,
                    scale=args.scale,
                    hosts=[one.url],
                    index_name="bench-1",
                    impact_check="warn",
                ),
            ),
            (
                "OpenSearch 3 nodes (3 shards, 1 replica)",
                lambda: OpenSearchIndex.build(
                    docs,
                    work / "os3",
                    encoder=encoder,
                    progress=False,
                    scale=args.scale,
                    hosts=three.urls,
                    index_name="bench-3",
                    shards=3,
                    replicas=1,
                    impact_check="warn",
                ),
            ),
        ]
        for name, build in specs:
            t = time.perf_counter()
            builds[name] = build()
            ingest[name] = len(docs) / (time.perf_counter() - t)
        three.wait_green(index="bench-3")
        os_meta = builds["OpenSearch 1 node"].meta
        results["max_doc_impact"], results["inexact_impacts"] = os_meta["max_impact"], os_meta["inexact_impacts"]
        retrievers = {name: b.retriever(encoder) for name, b in builds.items()}
        runs = {name: run_all(r, test.queries, k) for name, r in retrievers.items()}
        ref = runs["embedded (lucene-impact)"]
        results["agreement_with_embedded"] = {n: agreement(runs[n], ref, test.qrels) for n in list(runs)[1:]}
        lat = latency(retrievers, test.queries, k, args.rounds)
        qids = [q.query_id for q in test.queries]
        table = {}
        for name, run in runs.items():
            quality = evaluate(test.qrels, qids, run, ["nDCG@10", "R@100"])
            table[name] = {"ingest_docs_per_s": ingest[name], **lat[name], **{m: mean(v) for m, v in quality.items()}}
        results["systems"] = table
        results["hybrid"] = hybrid_study(builds["OpenSearch 1 node"], encoder, dev, test, k)
        for b in builds.values():
            if hasattr(b, "close"):
                b.close()
    results["uptime_after"] = os.getloadavg()
    print_report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return results


def print_report(r: dict[str, Any]) -> None:
    print(f"\nSciFact: {r['corpus_docs']} docs, {r['test_queries']} test queries; load {r['uptime_before']}")
    print(f"start-up (s): {json.dumps({k: round(v, 1) for k, v in r['startup_seconds'].items()})}")
    print(f"max document impact {r['max_doc_impact']}, impacts above 511: {r['inexact_impacts']}\n")
    print("| system | ingest docs/s | search p50 ms | p95 ms | nDCG@10 | R@100 |\n|---|---|---|---|---|---|")
    for name, s in r["systems"].items():
        print(
            f"| {name} | {s['ingest_docs_per_s']:.0f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} "
            f"| {s['nDCG@10']:.4f} | {s['R@100']:.4f} |"
        )
    print("\n| vs embedded | mean top-10 overlap | min | identical top 10 | nDCG@10 diff | max |Δscore| |")
    print("|---|---|---|---|---|---|")
    for name, a in r["agreement_with_embedded"].items():
        print(
            f"| {name} | {a['mean_top10_overlap']:.4f} | {a['min_top10_overlap']:.2f} | "
            f"{a['identical_top10_rankings']} | {a['ndcg10_diff_mean']:+.5f} | {a['max_score_error']:.2e} |"
        )
    h = r["hybrid"]
    print(
        f"\nhybrid: dev nDCG@10 by SPLADE weight {h['dev_ndcg10_by_splade_weight']}; chosen {h['chosen_splade_weight']}"
    )
    print("| system (test) | nDCG@10 | R@100 |\n|---|---|---|")
    for name, m in h["test"].items():
        print(f"| {name} | {m['nDCG@10']:.4f} | {m['R@100']:.4f} |")
    for c in h["hybrid_vs"]:
        lo, hi = c["ci95"]
        print(f"hybrid − {c['vs']}: {c['diff']:+.4f} nDCG@10, 95% CI [{lo:+.4f}, {hi:+.4f}], p(Holm) {c['p_holm']:.3g}")
    print(f"load after: {r['uptime_after']}")


if __name__ == "__main__":
    main()
