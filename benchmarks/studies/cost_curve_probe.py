"""The cost curve's measuring child processes (``cost_curve probe``): latency of every stage, and memory of one.

Latency: every stage's retriever over the indexes of one size (query encoders shared), ``--warmup`` queries
untimed, then each query through every stage in a rotating order; a time is the first stage end to end
(query encoding, top 100, their texts), ``search`` leaves out the query encoding. Memory: the query encoder
is loaded and used first, then the index is opened and ``--memory-queries`` queries answered; the peak
resident set (``VmHWM``) and its growth over the encoder-only resident set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import percentile
from twostage_search.benchmarks.studies import cost_curve_data as data

DEPTH = 100


def _dense_options(stage: str, ef: int) -> dict[str, Any]:
    """The exact scan for ``dense-flat``, the graph at ``ef`` for ``dense-hnsw`` and ``hybrid-hnsw``'s dense
    component (``hybrid``'s dense component has no graph: the exact scan)."""
    if stage == "dense-flat":
        return {"search": "exact"}
    if stage == "dense-hnsw":
        return {"ef_search": ef}
    return {"components": {"dense": {"ef_search": ef}}} if stage == "hybrid-hnsw" else {}


# Stages that search another stage's index with other search options (no index of their own).
SHARED = {"splade-csc-lookup": ("splade-csc", {"query_side": "lookup"})}


def index_dir(stage: str) -> str:
    """The index a stage searches: its own, or the one it shares (:data:`SHARED`)."""
    return SHARED[stage][0] if stage in SHARED else stage


def _retrievers(root: Path, stages: list[str], ef: int) -> dict[str, Any]:
    """Each stage's retriever over the indexes under ``root``, the query encoders shared where they can be."""
    from twostage_search import indexes
    from twostage_search.engine.encoders import encoder_from_meta

    opened = {stage: indexes.load(root / index_dir(stage)) for stage in stages}
    shared: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for stage, index in opened.items():
        if stage in SHARED:
            out[stage] = index.retriever(**SHARED[stage][1])
        elif stage.startswith("splade"):
            encoder = shared.setdefault("splade", encoder_from_meta(index.meta["encoder"]))
            out[stage] = index.retriever(encoder)
        elif stage.startswith(("dense", "hybrid")):
            if "dense" not in shared:
                flat = opened.get("dense-flat") or indexes.load(root / "dense-flat")
                shared["dense"] = flat.encoder(threads=1)
            out[stage] = index.retriever(shared["dense"], **_dense_options(stage, ef))
        else:
            out[stage] = index.retriever()
    return out


def _timed(retriever: Any, query: Any) -> tuple[list[str], float, float]:
    """(doc ids, total ms, query-encoding ms) of one first-stage call, end to end with the texts."""
    started = time.perf_counter()
    if hasattr(retriever, "retrieve_with_cost"):
        ranking, costs = retriever.retrieve_with_cost(query, DEPTH)
        encode = sum(c.wall_ms for c in costs if c.stage == "encode")
    else:
        ranking, encode = retriever.retrieve(query, DEPTH), 0.0
    return ranking.doc_ids, (time.perf_counter() - started) * 1000, encode


def measure_latency(root: Path, stages: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The latency child's work: every query through every stage in a rotating order."""
    queries = data.query_sample(args.dataset, args.queries)
    retrievers = _retrievers(root, stages, args.ef)
    for q in queries[: args.warmup]:
        for stage in stages:
            _timed(retrievers[stage], q)
    total: dict[str, list[float]] = {s: [] for s in stages}
    search: dict[str, list[float]] = {s: [] for s in stages}
    ids: dict[str, list[list[str]]] = {s: [] for s in stages}
    load = [os.getloadavg()[0]]
    for i, q in enumerate(queries):
        for j in range(len(stages)):
            stage = stages[(i + j) % len(stages)]
            doc_ids, ms, encode = _timed(retrievers[stage], q)
            total[stage].append(ms)
            search[stage].append(ms - encode)
            ids[stage].append(doc_ids)
        if i % 50 == 49:
            load.append(os.getloadavg()[0])
    out: dict[str, Any] = {"queries": len(queries), "warmup": min(args.warmup, len(queries)), "stages": {}}
    for stage in stages:
        out["stages"][stage] = {
            "p50_ms": round(percentile(total[stage], 50), 3),
            "p95_ms": round(percentile(total[stage], 95), 3),
            "search_p50_ms": round(percentile(search[stage], 50), 3),
            "search_p95_ms": round(percentile(search[stage], 95), 3),
        }
    if "dense-flat" in ids and "dense-hnsw" in ids:
        recall = [len(set(a) & set(e)) / len(e) for a, e in zip(ids["dense-hnsw"], ids["dense-flat"], strict=True) if e]
        out["hnsw_recall_at_100"] = round(sum(recall) / max(len(recall), 1), 4)
    out["load_average_1min"] = {
        "min": round(min(load), 2),
        "max": round(max(load), 2),
        "mean": round(sum(load) / len(load), 2),
    }
    return out


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure_memory(root: Path, stage: str, args: argparse.Namespace) -> dict[str, Any]:
    """The memory child's work: encoder first, then the index and ``--memory-queries`` searches; resident sets."""
    from twostage_search import indexes
    from twostage_search.engine.encoders import encoder_from_meta

    queries = data.query_sample(args.dataset, args.queries)[: args.memory_queries]
    index_path = root / index_dir(stage)
    extra = _dense_options(stage, args.ef)
    encoder: Any = None
    if stage in SHARED:
        extra = SHARED[stage][1]
    elif stage.startswith("splade"):
        encoder = encoder_from_meta(indexes.load(index_path).meta["encoder"])
        encoder.encode_queries([queries[0].text])
    elif stage.startswith(("dense", "hybrid")):
        from twostage_search.engine.dense import DenseEncoder

        config = json.loads((root / "dense-flat" / "meta.json").read_text())["encoder"]
        encoder = DenseEncoder(**{**config, "threads": 1})
        encoder.encode_queries([queries[0].text])
    before = _status_kb("VmRSS")
    index = indexes.load(index_path)
    retriever = index.retriever(encoder, **extra) if encoder is not None else index.retriever(**extra)
    for q in queries:
        retriever.retrieve(q, DEPTH)
    peak = _status_kb("VmHWM")
    return {
        "queries": len(queries),
        "peak_rss_mb": round(peak / 1024, 1),
        "over_encoder_mb": round((peak - before) / 1024, 1),
    }
