"""Choose the dense component's ``ef_search`` inside a hybrid by the fused ranking, not by the dense one alone.

    python -m twostage_search.benchmarks.studies.hybrid_ann --dataset ../shared/datasets/homedepot-search-relevance \\
        --hybrid var/hd-hybrid-bm25csc-static --splits-file benchmarks/data/splits/homedepot-search-relevance.tsv \\
        --grade-offset 1 --rel 1 --ef 64,128,256,384,512,768

``--hybrid`` is a hybrid index whose dense component (``--component``, default ``dense``) has an HNSW graph.
Every query of the dev and test splits (as ``first_stage_ratio`` defines them: ``--splits-file`` with its
``dev`` and ``test`` queries, else ``qrels/train.tsv``'s first ``--dev-queries`` ids and ``qrels/test.tsv``)
runs through the hybrid with the dense component's exact scan (the reference) and with its graph at each
``ef_search`` (``retriever(components={"dense": {"ef_search": ef}})``), to the fusion's depth. Reported per
setting and split: nDCG@10 and R@100 of the fused top ``--depth`` (grades shifted by ``--grade-offset``,
``--rel`` the lowest that R@100 counts), their differences from the reference, the share of queries whose
fused top ``--depth`` is identical to the reference's and the mean overlap of the two sets, the dense
component's own recall@``--depth`` against its exact scan, and the mean number of distances the graph
search computes (its cost, the same on any machine; no times are measured). The chosen ``ef_search`` is the
smallest whose dev nDCG@10 and R@100 are both within ``--tolerance`` of the reference's.
``--extra NAME=PATH`` adds another hybrid (e.g. one whose dense component holds an 8-bit graph) with the
same settings, against the same reference. Writes ``--out/hybrid_ann-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.datasets import judged_queries
from twostage_search.benchmarks.evaluation import evaluate, machine, mean, overlap_share
from twostage_search.engine.argtypes import named_path
from twostage_search.engine.errors import InputError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Query

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100")


def _rankings(retriever: Any, queries: list[Query], depth: int) -> dict[str, list[str]]:
    return {q.query_id: retriever.retrieve(q, depth).doc_ids for q in queries}


def _distances(dense: Any, queries: list[Query], depth: int) -> tuple[float, dict[str, list[str]]]:
    """Mean distances the dense component's graph computes per query (for its ``refine_factor × depth``
    candidates, as the retriever asks), and its own top ``depth``."""
    vectors = dense.encoder.encode_queries([q.text for q in queries])
    wanted = depth * dense.graph.refine_factor
    counted = [dense.graph.search_counted(v.astype(dense.index.vectors.dtype), wanted)[1] for v in vectors]
    found = {q.query_id: [d for d, _ in dense.search_vector(v, depth)] for q, v in zip(queries, vectors, strict=True)}
    return float(np.mean(counted)), found


def measure(
    index: Any, component: str, ef: int | None, splits: dict[str, tuple[list[Query], Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """Fused rankings (and the dense component's own) of every split with the graph at ``ef`` (None: exact)."""
    options: dict[str, Any] = {"search": "exact"} if ef is None else {"search": "hnsw", "ef_search": ef}
    # the fused pass encodes each query once; the dense component's own pass below reuses those vectors
    options["query_cache"] = max(len(queries) for queries, _ in splits.values())
    retriever = index.retriever(components={component: options})
    try:
        out: dict[str, Any] = {}
        for name, (queries, _) in splits.items():
            fused = _rankings(retriever, queries, args.depth)
            dense = retriever.components[component]
            if ef is None:
                out[name] = {"fused": fused, "dense": _rankings(dense, queries, args.depth), "distances": None}
            else:
                distances, own = _distances(dense, queries, args.depth)
                out[name] = {"fused": fused, "dense": own, "distances": distances}
        return out
    finally:
        retriever.close()


def compare_to(found: dict[str, Any], reference: dict[str, Any], qrels: Any, queries: list[Query], rel: int) -> Any:
    ids = [q.query_id for q in queries]
    mine = evaluate(qrels, ids, found["fused"], MEASURES, rel=rel)
    ref = evaluate(qrels, ids, reference["fused"], MEASURES, rel=rel)
    row: dict[str, Any] = {}
    for m in MEASURES:
        row[m] = round(mean(mine[m]), 4)
        row[f"delta_{m}"] = round(mean(mine[m]) - mean(ref[m]), 4)
    row["identical_top"] = round(sum(found["fused"][q] == reference["fused"][q] for q in ids) / len(ids), 4)
    row["mean_overlap"] = round(mean([overlap_share(found["fused"][q], reference["fused"][q]) for q in ids]), 4)
    row["dense_recall"] = round(mean([overlap_share(found["dense"][q], reference["dense"][q]) for q in ids]), 4)
    row["distances"] = None if found["distances"] is None else round(found["distances"], 1)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes

    hybrids = {"hybrid": args.hybrid, **{n: p for n, p, _ in (named_path(s, "--extra") for s in args.extra)}}
    splits: dict[str, tuple[list[Query], Any]] = {}
    for split in ("dev", "test"):
        splits[split] = judged_queries(
            args.dataset,
            split,
            splits_file=args.splits_file,
            dev_queries=args.dev_queries,
            grade_offset=args.grade_offset,
            max_queries=args.max_queries,
        )
    opened = {name: indexes.load(path) for name, path in hybrids.items()}
    for name, index in opened.items():
        if args.component not in index.components or not index.components[args.component].has_hnsw:
            raise InputError(f"{hybrids[name]}: no component {args.component!r} with an HNSW graph")
    efs = [int(x) for x in args.ef.split(",")]
    reference = measure(opened["hybrid"], args.component, None, splits, args)
    reference_quality = {
        split: {
            m: round(mean(v), 4)
            for m, v in evaluate(
                qrels, [q.query_id for q in queries], reference[split]["fused"], MEASURES, rel=args.rel
            ).items()
        }
        for split, (queries, qrels) in splits.items()
    }
    rows: list[dict[str, Any]] = []
    for name, index in opened.items():
        graph_meta = index.components[args.component].meta["hnsw"]
        for ef in efs:
            found = measure(index, args.component, ef, splits, args)
            row: dict[str, Any] = {"hybrid": name, "scalar": graph_meta.get("scalar", "f32"), "ef_search": ef}
            for split, (queries, qrels) in splits.items():
                row[split] = compare_to(found[split], reference[split], qrels, queries, args.rel)
            rows.append(row)
            log.info("%s", row)
    chosen: dict[str, Any] = {}
    for name in opened:
        passing = [
            r
            for r in rows
            if r["hybrid"] == name and all(abs(r["dev"][f"delta_{m}"]) <= args.tolerance for m in MEASURES)
        ]
        chosen[name] = min(passing, key=lambda r: r["ef_search"]) if passing else None
    return {
        "dataset": args.dataset.name,
        "hybrids": {name: str(path) for name, path in hybrids.items()},
        "component": args.component,
        "depth": args.depth,
        "tolerance": args.tolerance,
        "grade_offset": args.grade_offset,
        "rel": args.rel,
        "queries": {split: len(q) for split, (q, _) in splits.items()},
        "splits_file": str(args.splits_file) if args.splits_file else None,
        "reference": {"search": "exact", **reference_quality},
        "settings": rows,
        "chosen": chosen,
        "machine": machine(),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.hybrid_ann", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dataset", type=Path, required=True, help="BEIR folder (queries, qrels)")
    p.add_argument("--hybrid", type=Path, required=True, help="a hybrid index whose dense component has a graph")
    p.add_argument("--extra", action="append", default=[], help="NAME=PATH: another hybrid with the same settings")
    p.add_argument("--component", default="dense")
    p.add_argument("--ef", default="64,128,256,384,512,768", help="ef_search values of the dense component")
    p.add_argument("--tolerance", type=float, default=0.005, help="largest |Δ| of dev nDCG@10 and R@100")
    p.add_argument("--splits-file", type=Path, help="committed query-level split file (query-id<TAB>split)")
    p.add_argument("--dev-queries", type=int, default=300)
    p.add_argument("--max-queries", type=int, default=0, help="a seeded sample of this many per split (0: all)")
    p.add_argument("--grade-offset", type=int, default=0)
    p.add_argument("--rel", type=int, default=1)
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("runs"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging()
    try:
        report = run(args)
    except (InputError, OSError) as exc:  # one line and a nonzero status, as every command
        log.error("%s", exc)
        return exit_status(exc)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"hybrid_ann-{report['dataset']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    ref = report["reference"]
    print(f"{report['dataset']}: reference (exact dense) dev {ref['dev']}, test {ref['test']}")
    print(f"{'hybrid':<10} {'kind':>4} {'ef':>5} {'dists':>8} | dev ΔnDCG ΔR@100 ident ovl denseR | test ...")
    for r in report["settings"]:
        cells = [
            f"{r[s]['delta_nDCG@10']:+.4f} {r[s]['delta_R@100']:+.4f} {r[s]['identical_top']:.3f} "
            f"{r[s]['mean_overlap']:.4f} {r[s]['dense_recall']:.4f}"
            for s in ("dev", "test")
        ]
        head = f"{r['hybrid']:<10} {r['scalar']:>4} {r['ef_search']:>5} {r['dev']['distances']:>8.1f}"
        print(f"{head} | {' | '.join(cells)}")
    for name, c in report["chosen"].items():
        print(f"chosen for {name}: {'ef_search ' + str(c['ef_search']) if c else 'none within the tolerance'}")
    print(f"wrote {path}")
    return 0 if all(report["chosen"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
