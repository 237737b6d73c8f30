"""The first stage's cost curve: build time, index size, memory and query latency at 10k, 100k and 1M documents.

    python -m twostage_search.benchmarks.studies.cost_curve encode --limit 10000
    python -m twostage_search.benchmarks.studies.cost_curve run --sizes 10000,100000,1000000

(``build`` builds the indexes of ``--sizes`` without measuring them.)

Documents (``benchmarks.studies.cost_curve_data``): Home Depot's 54,667 product titles in a seeded order,
then synthetic documents (``benchmarks.synthetic``). Only a real sample is encoded (``encode``: bge-small
and SPLADE-tiny, the first ``--limit`` titles of the order, cached under ``--cache``); beyond it documents
get synthetic vectors drawn from the encoded ones, and beyond the real titles BM25 gets synthetic texts.
Every document at a position is the same at every size; the report says, per size, how many documents
are real. Stages (``--stages``): ``bm25`` (``lucene-bm25``), ``bm25-csc`` (the same scores in process, built
from the ``bm25`` index), ``splade-csc`` (``impact-csc``), ``splade-csc-lookup`` (the same index, queries
looked up instead of encoded: ``query_side="lookup"``), ``splade-lucene`` (``lucene-impact``), ``dense-flat``
(exact scan), ``dense-hnsw`` (``dense-flat`` with an HNSW graph, ``--m``/``--ef``, chosen on dev by
``benchmarks.studies.dense_ann``), ``hybrid`` (the default first stage: ``bm25-csc`` + exact dense, min-max
1:2, composed over the two indexes of the size) and ``hybrid-hnsw`` (the same over ``dense-hnsw``).
Per size (indexes cached under ``--cache/<size>/``; a size is rerun alone with ``--sizes``):
- **build**: seconds to build the index from the texts or pre-encoded vectors (``build_encoded``); the time
  spent making synthetic documents or reading the cached encodings is left out. The encoding a real
  build adds is estimated from the rate measured while encoding the real sample (``encode_docs_per_s``).
- **size**: bytes on disk of the index directory, and of the index without its document store.
- **memory**: a child process per stage loads the query encoder, then opens the index and answers
  ``--memory-queries`` queries; its peak resident set (VmHWM) and the growth over the encoder-only
  resident set are reported. Memory-mapped pages the searches touched count as resident.
- **latency**: one child process per size opens every stage, runs ``--warmup`` queries untimed, then
  each query through every stage in a rotating order (so machine load hits all stages alike); a time is
  the first stage end to end (query encoding, search of the top 100, their texts); ``search`` leaves out the
  query encoding. p50 and p95, and their ratio to BM25's in the same run. HNSW's recall@100 against the
  exact scan is reported beside it.
The growth exponent of each stage is the least-squares slope of log p50 against log size. Writes
``--out/cost_curve.json``, ``cost_curve.md`` and ``cost_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from twostage_search.benchmarks.evaluation import machine
from twostage_search.benchmarks.report import write_json
from twostage_search.benchmarks.studies import cost_curve_data as data
from twostage_search.benchmarks.studies import cost_curve_probe as probes
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

# One thread per query in the measuring children: numpy's BLAS (the dense scans) and ONNX Runtime (the dense
# query encoder; SPLADE's query side has one by default). With two BLAS threads on a loaded 2-core machine a
# 10,000 × 384 matrix-vector product took 88 ms p50 instead of 0.76 ms: the threads wait for each other.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STAGES = (
    "bm25",
    "bm25-csc",
    "splade-csc",
    "splade-csc-lookup",
    "splade-lucene",
    "dense-flat",
    "dense-hnsw",
    "hybrid",
    "hybrid-hnsw",
)
# The hybrids, composed (min-max, 1:2, as `twostage index` builds the default) over two indexes of the size.
COMPOSED = {"hybrid": ("bm25-csc", "dense-flat"), "hybrid-hnsw": ("bm25-csc", "dense-hnsw")}
# The indexes a stage needs built first: a hybrid's components, the index a stage shares, bm25-csc's source.
NEEDS = {
    "bm25-csc": ("bm25",),
    **COMPOSED,
    **{stage: (index,) for stage, (index, _) in probes.SHARED.items()},
}
T = TypeVar("T")


class Timed:
    """An iterator that adds up the seconds its source takes to give each item (to leave them out of a build)."""

    def __init__(self, source: Iterable[T]) -> None:
        self._source = iter(source)
        self.seconds = 0.0

    def __iter__(self) -> Iterator[Any]:
        while True:
            started = time.perf_counter()
            try:
                item = next(self._source)
            except StopIteration:
                self.seconds += time.perf_counter() - started
                return
            self.seconds += time.perf_counter() - started
            yield item


def _du(path: Path, skip: str = "") -> int:
    """Bytes of the files under ``path`` (symlinks followed once: an index is a link to its version)."""
    root = path.resolve()
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not (skip and f.name == skip))


def build_stage(stage: str, corpus: data.Corpus, where: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build ``stage`` at ``where`` from the corpus; return its build record."""
    from twostage_search.engine.dense import DenseEncoder
    from twostage_search.engine.encoders import create_encoder
    from twostage_search.indexes.bm25_csc import Bm25CscIndex
    from twostage_search.indexes.dense import DenseFlatIndex
    from twostage_search.indexes.dense_hnsw import HnswConfig
    from twostage_search.indexes.hybrid import Component, HybridIndex
    from twostage_search.indexes.impact_csc import ImpactCscIndex
    from twostage_search.indexes.lucene_bm25 import LuceneBM25Index
    from twostage_search.indexes.lucene_impact import LuceneImpactIndex

    if stage in probes.SHARED:  # another stage's index, searched with other options
        return {"seconds": 0.0, "composed_of": [probes.index_dir(stage)]}
    if stage in COMPOSED:  # over the size's bm25-csc and dense indexes
        lexical, dense = COMPOSED[stage]
        parts = [
            Component("bm25", str(where.parent / lexical), 1.0),
            Component("dense", str(where.parent / dense), 2.0),
        ]
        started = time.perf_counter()
        HybridIndex.compose(where, parts)
        return {"seconds": round(time.perf_counter() - started, 3), "composed_of": [lexical, dense]}
    if stage == "bm25-csc":  # Lucene's BM25 in process, from the size's lucene-bm25 index (its texts re-analysed)
        started = time.perf_counter()
        Bm25CscIndex.from_lucene_bm25(where.parent / "bm25", where, scores="anserini", progress=False)
        return {"seconds": round(time.perf_counter() - started, 3), "source": "bm25"}
    if stage == "bm25":
        source: Timed = Timed(corpus.documents())
        docs = (d for chunk in source for d in chunk)
        started = time.perf_counter()
        LuceneBM25Index.build(docs, where, threads=2, total=corpus.size, progress=False)
    elif stage in ("dense-flat", "dense-hnsw"):
        hnsw = HnswConfig(m=args.m, ef_construction=args.ef_construction) if stage == "dense-hnsw" else None
        source = Timed(corpus.dense_batches())
        started = time.perf_counter()
        DenseFlatIndex.build_encoded(
            source, where, encoder=DenseEncoder(), hnsw=hnsw, total=corpus.size, progress=False
        )
    else:
        backend = ImpactCscIndex if stage == "splade-csc" else LuceneImpactIndex
        source = Timed(corpus.sparse_batches())
        started = time.perf_counter()
        backend.build_encoded(source, where, encoder=create_encoder("splade"), total=corpus.size, progress=False)
    seconds = time.perf_counter() - started - source.seconds
    return {"seconds": round(seconds, 3), "source_seconds_left_out": round(source.seconds, 3)}


def build_size(size: int, args: argparse.Namespace, stages: list[str]) -> dict[str, Any]:
    real = data.titles(args.dataset)
    corpus = data.Corpus(real, data.load_encoded(args.cache), size)
    root = args.cache / str(size)
    root.mkdir(parents=True, exist_ok=True)
    records: dict[str, Any] = {}
    needed = {n for s in stages for n in NEEDS.get(s, ())}
    for stage in [s for s in STAGES if s in stages or s in needed]:
        record_path = root / f"{stage}.build.json"
        if not record_path.is_file():
            log.info("size %d: building %s", size, stage)
            record = build_stage(stage, corpus, root / stage, args)
            record["load_average"] = [round(x, 2) for x in os.getloadavg()]
            write_json(record_path, record)
        records[stage] = json.loads(record_path.read_text())
    return {"synthetic": corpus.synthetic_counts(), "builds": records}


def _child(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """Run this module in a child process (``probe``) and read the JSON it prints last."""
    cmd = [sys.executable, "-m", "twostage_search.benchmarks.studies.cost_curve", "probe",
           "--dataset", str(args.dataset), "--cache", str(args.cache), "--queries", str(args.queries),
           "--warmup", str(args.warmup), "--memory-queries", str(args.memory_queries), "--ef", str(args.ef),
           *extra]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **ONE_THREAD})
    if done.returncode != 0:
        raise RuntimeError(f"probe {' '.join(extra)} failed: {done.stderr.strip()[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log ``values`` against log ``sizes`` (None with fewer than two sizes)."""
    import numpy as np

    pairs = [(n, v) for n, v in zip(sizes, values, strict=True) if v > 0]
    if len(pairs) < 2:
        return None
    slope = np.polyfit(np.log([n for n, _ in pairs]), np.log([v for _, v in pairs]), 1)[0]
    return round(float(slope), 3)


def measure_size(size: int, args: argparse.Namespace, stages: list[str]) -> dict[str, Any]:
    """Build (cached), then measure latency and memory of every stage at ``size``; cached in ``<size>/result.json``."""
    record = build_size(size, args, stages)
    root = args.cache / str(size)
    for stage in stages:
        build = record["builds"][stage]
        parts = build.get("composed_of", [stage])
        build["index_bytes"] = sum(_du(root / p) for p in parts)
        build["index_bytes_without_docstore"] = sum(_du(root / p, skip="docs.sqlite") for p in parts)
        if "composed_of" in build:
            build["seconds"] = round(sum(record["builds"][p]["seconds"] for p in parts), 3)
    record["latency"] = _child(args, "--what", "latency", "--size", str(size), "--stages", ",".join(stages))
    record["memory"] = {
        stage: _child(args, "--what", "memory", "--size", str(size), "--stages", stage) for stage in stages
    }
    record["machine"] = machine()
    write_json(root / "result.json", record)
    return record


def summarise(results: dict[int, dict[str, Any]], stages: list[str], encoded: data.Encoded) -> dict[str, Any]:
    """The report: per size and stage the measures, p50/p95 as ratios to BM25, and each stage's exponent."""
    sizes = sorted(results)
    rows: dict[str, dict[str, Any]] = {stage: {} for stage in stages}
    for size in sizes:
        result = results[size]
        lat = result["latency"]["stages"]
        base = lat.get("bm25")
        for stage in (s for s in stages if s in lat):  # a size may lack a stage that could not be built
            row = {**lat[stage], **result["memory"][stage]}
            build = result["builds"][stage]
            row.update(
                build_seconds=build["seconds"],
                index_bytes=build["index_bytes"],
                index_mb=round(build["index_bytes"] / 2**20, 1),
                index_mb_without_docstore=round(build["index_bytes_without_docstore"] / 2**20, 1),
            )
            if base:
                row["p50_vs_bm25"] = round(lat[stage]["p50_ms"] / base["p50_ms"], 2)
                row["p95_vs_bm25"] = round(lat[stage]["p95_ms"] / base["p95_ms"], 2)
            rows[stage][str(size)] = row
    growth = {
        stage: {
            key: exponent([int(n) for n in by_size], [row[f"{key}_ms"] for row in by_size.values()])
            for key in ("p50", "search_p50")
        }
        for stage, by_size in rows.items()
    }
    return {
        "sizes": sizes,
        "stages": rows,
        "growth_exponent": growth,
        "synthetic": {str(n): results[n]["synthetic"] for n in sizes},
        "real_encoded": len(encoded.dense),
        "encode_docs_per_s": {
            "dense": round(encoded.dense_docs_per_s, 1),
            "splade": round(encoded.sparse_docs_per_s, 1),
        },
        "hnsw_recall_at_100": {str(n): results[n]["latency"].get("hnsw_recall_at_100") for n in sizes},
        "load_average_1min": {str(n): results[n]["latency"]["load_average_1min"] for n in sizes},
        "queries": results[sizes[0]]["latency"]["queries"],
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| stage | documents | p50 × BM25 | p95 × BM25 | search p50 ms | build s | index MB (no docstore) "
        "| peak RSS MB (over encoder) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, by_size in report["stages"].items():
        for size, r in by_size.items():
            lines.append(
                f"| {stage} | {int(size):,} | {r.get('p50_vs_bm25', '–')} | {r.get('p95_vs_bm25', '–')} | "
                f"{r['search_p50_ms']:.2f} | {r['build_seconds']:.1f} | "
                f"{r['index_mb']:.1f} ({r['index_mb_without_docstore']:.1f}) | "
                f"{r['peak_rss_mb']:.0f} ({r['over_encoder_mb']:+.0f}) |"
            )
    lines += [
        "",
        "| stage | growth exponent of p50 (end to end) | of search p50 (no query encoding) |",
        "| --- | --- | --- |",
    ]
    for stage, g in report["growth_exponent"].items():
        lines.append(f"| {stage} | {g['p50']} | {g['search_p50']} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.benchmarks.plots import cost_curve_plot

    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or "bm25" not in stages:
        raise SystemExit(f"--stages: bm25 and any of {', '.join(STAGES)} (unknown: {', '.join(unknown) or 'none'})")
    for size in (int(x) for x in args.sizes.split(",") if x):
        measure_size(size, args, stages)
    results = {
        int(p.parent.name): json.loads(p.read_text())
        for p in args.cache.glob("*/result.json")
        if p.parent.name.isdigit()
    }
    results = {n: r for n, r in results.items() if "bm25" in r["latency"]["stages"] and len(r["latency"]["stages"]) > 1}
    report = {
        "dataset": str(args.dataset),
        "how": __doc__,
        **summarise(results, stages, data.load_encoded(args.cache)),
        "hnsw": {"m": args.m, "ef_construction": args.ef_construction, "ef_search": args.ef},
        "machine": machine(),
    }
    write_json(args.out / "cost_curve.json", report)
    (args.out / "cost_curve.md").write_text(markdown(report), encoding="utf-8")
    cost_curve_plot(report, args.out / "cost_curve.png")
    return report


def probe(args: argparse.Namespace) -> dict[str, Any]:
    root = args.cache / str(args.size)
    stages = args.stages.split(",")
    if args.what == "latency":
        return probes.measure_latency(root, stages, args)
    return probes.measure_memory(root, stages[0], args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("encode", "build", "run", "probe"))
    parser.add_argument("--what", choices=("latency", "memory"), default="latency", help="probe only")
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/homedepot-search-relevance"))
    parser.add_argument("--cache", type=Path, default=Path("var/cost_curve"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cost_curve"))
    parser.add_argument("--limit", type=int, default=10_000, help="encode: real titles to encode (whole chunks)")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--size", type=int, default=0, help="probe only")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--memory-queries", type=int, default=50)
    parser.add_argument("--m", type=int, default=16, help="HNSW links per node")
    parser.add_argument("--ef", type=int, default=128, help="HNSW ef_search (at search time)")
    parser.add_argument("--ef-construction", type=int, default=128)
    args = parser.parse_args(argv)
    setup_logging(0)
    if args.command == "encode":
        data.encode(data.titles(args.dataset), args.cache, args.limit)
        return 0
    if args.command == "build":  # the indexes only (cached), e.g. before choosing --ef
        for size in (int(x) for x in args.sizes.split(",") if x):
            build_size(size, args, args.stages.split(","))
        return 0
    if args.command == "probe":
        print(json.dumps(probe(args)))
        return 0
    report = run(args)
    print(markdown(report))
    print(f"wrote {args.out / 'cost_curve.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
