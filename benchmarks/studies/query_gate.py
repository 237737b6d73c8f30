"""Route each query to a cheap or the full dense query side? How many queries a gate could send cheap (dev only).

    python -m twostage_search.benchmarks.studies.query_gate --dataset ../shared/datasets/scifact \
        --index var/scifact-hybrid
    # CrowdFlower, Home Depot: --grade-offset 1 over their default hybrids

The cheap side (default: the static table, ``bundled:bge-small-query-static``) costs about a tenth of bge-small's
12-layer pass but ranks worse on some queries. A per-query gate would search with the cheap vector first and run
the full encoder only where a signal of that first search says the cheap ranking is unsafe. Its saving is the
share of queries it keeps cheap; for the *median* query to skip the full encoder that share must exceed 0.5.

Over a default hybrid (``twostage index``: BM25 + dense) and the dev queries (SciFact: the first 300 train
queries; CrowdFlower, Home Depot: the committed query split), per query: the hybrid's nDCG@10 with the full and
with the cheap query side, and gate signals computed from the cheap search alone (the dense top-1 score, its
margins over ranks 2, 5, 10 and 50, the hybrid's top-1 − top-10 margin, the overlap of BM25's and the dense
top 10). For each signal (cheap where the signal ≥ a threshold):

- ``in_sample``: the largest share of dev queries kept cheap while the mean nDCG@10 loss against the full side
  stays ≤ ``--tolerance`` (the threshold fitted and scored on the same queries: an upper bound);
- ``cross_validated``: the threshold fitted on a random half of the dev queries, applied to the other half
  (``--repeats`` splits, both directions): the share kept cheap and the loss, mean and worst;

and ``oracle``: the same share with the per-query loss itself as the signal (no gate can beat it).
Test queries are not read: nothing here is chosen for use.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from twostage_search.benchmarks.evaluation import evaluate, machine
from twostage_search.benchmarks.studies.query_static import full_vectors
from twostage_search.benchmarks.studies.query_student import split_ids
from twostage_search.engine.beir import find_file, read_queries
from twostage_search.engine.errors import InputError
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

DEPTH = 100
CHEAP = "bundled:bge-small-query-static"
Hits = list[tuple[str, float]]


def max_share(signal: ArrayLike, loss: ArrayLike, tolerance: float) -> tuple[float, float]:
    """The largest share of queries a threshold on ``signal`` keeps cheap (those with signal ≥ threshold) while
    the summed per-query ``loss`` of the cheap ones, over all queries, stays ≤ ``tolerance``; and that threshold
    (``inf``: none, every query runs the full side). Queries with equal signals go cheap together."""
    values, losses = np.asarray(signal, dtype=float), np.asarray(loss, dtype=float)
    if values.shape != losses.shape or values.ndim != 1 or not len(values):
        raise InputError("signal and loss must be non-empty sequences of one length")
    best, threshold = 0.0, float("inf")
    for cut in np.unique(values)[::-1]:  # descending: each cut admits one more group of equal signals
        cheap = values >= cut
        if losses[cheap].sum() / len(values) <= tolerance:
            best, threshold = float(cheap.mean()), float(cut)
    return best, threshold


def cross_validated(
    signal: ArrayLike, loss: ArrayLike, tolerance: float, *, repeats: int, seed: int = 0
) -> dict[str, float]:
    """Threshold fitted on one random half, scored on the other (and the other way round), ``repeats`` splits:
    the share kept cheap and the mean loss over the scored half, their means, the smallest share and the
    largest loss."""
    values, losses = np.asarray(signal, dtype=float), np.asarray(loss, dtype=float)
    if len(values) < 2 or repeats < 1:
        raise InputError("cross-validation needs at least two queries and one repeat")
    rng = np.random.default_rng(seed)
    shares, scored = [], []
    for _ in range(repeats):
        order = rng.permutation(len(values))
        halves = order[: len(values) // 2], order[len(values) // 2 :]
        for fit, score in (halves, halves[::-1]):
            _, threshold = max_share(values[fit], losses[fit], tolerance)
            cheap = values[score] >= threshold
            shares.append(float(cheap.mean()))
            scored.append(float(losses[score][cheap].sum() / len(score)))
    return {
        "share": round(float(np.mean(shares)), 4),
        "loss": round(float(np.mean(scored)), 4),
        "min_share": round(min(shares), 4),
        "max_loss": round(max(scored), 4),
    }


def in_sample(signal: ArrayLike, loss: ArrayLike, tolerance: float) -> dict[str, float | None]:
    share, threshold = max_share(signal, loss, tolerance)
    return {"share": round(share, 4), "threshold": threshold if np.isfinite(threshold) else None}


def overlap(a: Hits, b: Hits, k: int = 10) -> float:
    return len({d for d, _ in a[:k]} & {d for d, _ in b[:k]}) / k


def margin(hits: Hits, rank: int) -> float:
    """Top-1 score minus the score at 1-based ``rank`` (the last one when the list is shorter; 0 when empty)."""
    if not hits:
        return 0.0
    return hits[0][1] - hits[min(rank, len(hits)) - 1][1]


def signals(lexical: Hits, dense: Hits, hybrid: Hits) -> dict[str, float]:
    """Gate signals from the cheap search alone (no full encoder pass)."""
    return {
        "dense_top1": dense[0][1] if dense else 0.0,
        **{f"dense_margin_{r}": margin(dense, r) for r in (2, 5, 10, 50)},
        "hybrid_margin_10": margin(hybrid, 10),
        "overlap_bm25_dense_10": overlap(lexical, dense),
    }


def study(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes
    from twostage_search.engine.fusion import fuse
    from twostage_search.engine.types import Query
    from twostage_search.indexes.hybrid import HybridIndex

    hybrid = indexes.load(args.index)
    if not isinstance(hybrid, HybridIndex) or set(hybrid.components) != {"bm25", "dense"}:
        raise InputError(f"{args.index} is not a BM25 + dense hybrid (twostage index builds one)")
    dense_index = hybrid.components["dense"]
    dense = dense_index.retriever(query_encoder="full", search="exact")
    cheap = dense_index.query_encoder(args.cheap)  # the index checks the student's teacher
    bm25 = hybrid.components["bm25"].retriever()
    weights = [hybrid.weights["bm25"], hybrid.weights["dense"]]
    fusion = hybrid.fusion
    texts = {q.query_id: q.text for q in read_queries(find_file(args.dataset, "queries"))}
    ids, graded = split_ids(args.dataset, "dev")
    ids = [q for q in ids if q in texts]
    if not ids:
        raise InputError(f"{args.dataset} has no dev queries")
    qrels = {q: {d: g - args.grade_offset for d, g in docs.items()} for q, docs in graded.items()}
    args.cache.mkdir(parents=True, exist_ok=True)
    full = full_vectors([texts[q] for q in ids], args.cache)
    runs: dict[str, dict[str, Hits]] = {"full": {}, "cheap": {}}
    found: dict[str, list[float]] = {}
    for row, query_id in enumerate(ids):
        lexical = [(h.doc_id, h.score) for h in bm25.retrieve(Query(query_id, texts[query_id]), DEPTH)]
        for side, vector in (("full", full[row]), ("cheap", cheap.encode_queries([texts[query_id]])[0])):
            hits = dense.search_vector(vector, DEPTH)
            runs[side][query_id] = fused = fuse([lexical, hits], weights, method=fusion.method, k=fusion.k)[:DEPTH]
            if side == "cheap":
                for name, value in signals(lexical, hits, fused).items():
                    found.setdefault(name, []).append(value)
    ndcg = {side: np.array(evaluate(qrels, ids, run, ["nDCG@10"])["nDCG@10"]) for side, run in runs.items()}
    loss = ndcg["full"] - ndcg["cheap"]
    gates = {
        name: {
            "in_sample": in_sample(values, loss, args.tolerance),
            "cross_validated": cross_validated(values, loss, args.tolerance, repeats=args.repeats),
        }
        for name, values in found.items()
    }
    return {
        "dataset": args.dataset.name,
        "index": str(args.index),
        "cheap": args.cheap,
        "hybrid": {"weights": weights, **fusion.as_dict()},
        "split": "dev",
        "queries": len(ids),
        "tolerance": args.tolerance,
        "nDCG@10": {side: round(float(v.mean()), 4) for side, v in ndcg.items()},
        "loss_all_cheap": round(float(loss.mean()), 4),
        "queries_cheap_worse": round(float((loss > 0).mean()), 4),
        "queries_cheap_better": round(float((loss < 0).mean()), 4),
        "oracle": round(max_share(-loss, loss, args.tolerance)[0], 4),
        "gates": gates,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--index", type=Path, required=True, help="a BM25 + dense hybrid (twostage index)")
    parser.add_argument("--cheap", default=CHEAP, help="the cheap query side (a student spec)")
    parser.add_argument(
        "--grade-offset", type=int, default=0, help="subtracted from every grade (1: CrowdFlower, Home Depot)"
    )
    parser.add_argument("--tolerance", type=float, default=0.005, help="the mean nDCG@10 loss allowed")
    parser.add_argument("--repeats", type=int, default=50, help="random half splits for cross-validation")
    parser.add_argument("--cache", type=Path, default=Path("var/query_static"), help="full-side query vectors")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/query_gate"))
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        report = study(args)
    except InputError as error:
        log.error("%s", error)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.dataset.name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    json.dump({k: v for k, v in report.items() if k != "machine"}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
