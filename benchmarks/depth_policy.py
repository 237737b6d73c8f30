"""How deep to rerank: fixed k against depth decided while reranking, from cached reranker scores.

    python -m twostage_search.benchmarks.score_cache --dataset ../shared/datasets/trec-dl-2019-passage \\
        --out var/depth/scores-trec-dl-2019-passage.json        # and the same for 2020 (once, slow)
    python -m twostage_search.benchmarks.depth_policy --out runs/depth

Every (query, document) of the top 100 of each first-stage run was scored once
(:mod:`benchmarks.score_cache`), so any depth and any stopping policy is evaluated offline: the cascade
ranking of depth d is the top d by the reranker above the rest in run order, and a chunked policy runs
through the engine's own loop (:func:`engine.chunked.rerank_in_chunks`) with the cached scores as its scorer.

Protocol (per first-stage run): on the **dev** set (DL19) the fixed k with the best mean nDCG@10 is chosen
(ties: the cheaper), and the price λ and first chunk of :class:`engine.chunked.ChunkedDepth` are chosen
as the cheapest setting whose dev nDCG@10 is within ``--tolerance`` of that fixed k's, each dev query
scored by a stop model fitted on the other half of dev (2 folds, ``--seed``); the stop model is then
refitted on every chunk transition of all dev queries. Only then is the **test** set (DL20) touched: the
dev-chosen fixed k, the fixed k best on test (for reference), the chunked policy and the hand margin rule
(its margin chosen the same way) each get their nDCG@10, the paired difference to the dev-chosen fixed k
(bootstrap 95% CI, randomisation test, Holm across the table) and their mean cost. Cost is documents
reranked × the reranker's measured ms per document (``proportional``), and separately the ``a + b·k``
model fitted on the timed calls (``calibrated``: each chunk is a call and pays ``a``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import compare, evaluate, mean, read_run
from twostage_search.benchmarks.published import published_dl
from twostage_search.benchmarks.score_cache import ScoreCache
from twostage_search.engine.beir import find_file, read_qrels, read_queries
from twostage_search.engine.chunked import ChunkedDepth, MarginRule, fit_chunked, rerank_in_chunks, transitions
from twostage_search.engine.cost import StageCost
from twostage_search.engine.costmodel import CostModel
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.pipeline import merge_cascade
from twostage_search.engine.types import Candidate, Query, RankedList

log = logging.getLogger(__name__)

DL = Path("../shared/datasets")
KS = (10, 20, 50, 100)
LAMBDAS = tuple(float(x) for x in np.logspace(-7, -3, 33))
MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


class CachedScorer:
    """A :class:`~engine.protocols.PointwiseScorer` answering from a score cache (costs nothing here)."""

    def __init__(self, scores: dict[str, dict[str, float]]) -> None:
        self.scores = scores

    def score_candidates(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[float], StageCost]:
        values = [self.scores[query.query_id][c.doc_id] for c in candidates]
        return values, StageCost("rerank", 0.0, docs=len(candidates))


@dataclass
class RunSet:
    """One first-stage run on one dataset: its queries, rankings, cached scores and nDCG@10 per depth."""

    name: str
    queries: dict[str, Query]
    first: dict[str, RankedList]
    scores: dict[str, dict[str, float]]
    ndcg: dict[int, dict[str, float]]

    @property
    def ids(self) -> list[str]:
        return list(self.queries)

    def ndcg_at(self, q: str, depth: int) -> float:
        return self.ndcg[depth][q]


def load_runset(dataset: Path, run: str, cache: ScoreCache, rel: int, partial: bool = False) -> RunSet:
    """The judged queries of ``run``; with ``partial``, only those whose every pair is in the cache."""
    qrels = read_qrels(dataset / "qrels" / "test.tsv")
    ranking = read_run(dataset / "runs" / f"{run}.top100.trec")
    all_queries = {q.query_id: q for q in read_queries(find_file(dataset, "queries"))}
    ids = sorted(q for q in qrels if q in ranking and q in all_queries)
    missing = [q for q in ids if any(d not in cache.scores.get(q, {}) for d, _ in ranking[q][:100])]
    if missing and not partial:
        raise InputError(f"score cache lacks pairs of {len(missing)} {dataset.name} {run} queries (run score_cache)")
    if missing:
        log.warning("%s %s: %d of %d queries not fully scored, left out", dataset.name, run, len(missing), len(ids))
        ids = [q for q in ids if q not in missing]
    first = {q: RankedList.from_candidates(q, [Candidate(d, s) for d, s in ranking[q][:100]]) for q in ids}
    depths = sorted({0, *KS, *range(10, 101, 10), *(len(first[q]) for q in ids)})
    ndcg: dict[int, dict[str, float]] = {}
    for k in depths:
        rankings = {}
        for q in ids:
            cands = first[q].candidates()
            head = RankedList.from_scores(q, cands[:k], [cache.scores[q][c.doc_id] for c in cands[:k]])
            rankings[q] = [(h.doc_id, h.score) for h in merge_cascade(q, head, cands[k:])]
        values = evaluate(qrels, ids, rankings, ["nDCG@10"], rel=rel, drop_query_id=False)["nDCG@10"]
        ndcg[k] = dict(zip(ids, values, strict=True))
    return RunSet(f"{dataset.name}/{run}", {q: all_queries[q] for q in ids}, first, cache.scores, ndcg)


# ------------------------------------------------------------------------------------ policies offline
@dataclass
class Outcome:
    """Per-query nDCG@10, depth and cost (both cost models) of one policy on one run set."""

    ndcg: list[float]
    depth: list[int]
    ms: list[float]
    ms_calibrated: list[float]

    def summary(self) -> dict[str, float]:
        return {
            "nDCG@10": round(mean(self.ndcg), 4),
            "mean_depth": round(mean([float(d) for d in self.depth]), 2),
            "mean_ms": round(mean(self.ms), 1),
            "mean_ms_calibrated": round(mean(self.ms_calibrated), 1),
        }


def fixed(rs: RunSet, k: int, cost: CostModel, calibrated: CostModel) -> Outcome:
    depths = [min(k, len(rs.first[q])) for q in rs.ids]
    return Outcome(
        [rs.ndcg_at(q, d) for q, d in zip(rs.ids, depths, strict=True)],
        depths,
        [cost.predict_ms("rerank", d) for d in depths],
        [calibrated.predict_ms("rerank", d) for d in depths],
    )


def chunked(rs: RunSet, policy: ChunkedDepth, cost: CostModel, calibrated: CostModel) -> Outcome:
    scorer = CachedScorer(rs.scores)
    out = Outcome([], [], [], [])
    for q in rs.ids:
        cands = rs.first[q].candidates()
        first = policy.decide(rs.queries[q], rs.first[q], None).rerank_depth
        loop = rerank_in_chunks(scorer, rs.queries[q], cands[: policy.limit(len(cands))], policy, first)
        d = len(loop.ranking)
        out.ndcg.append(rs.ndcg_at(q, d))
        out.depth.append(d)
        out.ms.append(cost.predict_ms("rerank", d))
        out.ms_calibrated.append(sum(calibrated.predict_ms("rerank", c) for c in loop.chunks))
    return out


def fit_policy(rs: RunSet, cost: CostModel, first: int, chunk: int, c: float) -> ChunkedDepth:
    feats, changed, gains = [], [], []
    for q in rs.ids:
        cands = rs.first[q].candidates()
        scores = [rs.scores[q][x.doc_id] for x in cands]
        for f, y, a, b in transitions(scores, [x.score for x in cands], first=first, chunk=chunk):
            feats.append(f)
            changed.append(y)
            gains.append(rs.ndcg_at(q, b) - rs.ndcg_at(q, a))
    return fit_chunked(cost, feats, changed, gains, c=c, chunk=chunk, first=first, meta={"fitted_on": rs.name})


def subset(rs: RunSet, ids: Sequence[str]) -> RunSet:
    return RunSet(rs.name, {q: rs.queries[q] for q in ids}, rs.first, rs.scores, rs.ndcg)


def cross_fitted(dev: RunSet, first: int, args: argparse.Namespace, costs: Any) -> dict[float, Outcome]:
    """Each dev query's outcome at each λ under a stop model fitted on the other half of dev (2 folds,
    seeded), so that choosing λ on dev does not reward a model for fitting the queries it is scored on."""
    ids = dev.ids
    order = np.random.default_rng(args.seed).permutation(len(ids))
    folds = [[ids[i] for i in order[j::2]] for j in range(2)]
    held: dict[float, dict[str, tuple[float, int, float, float]]] = {lam: {} for lam in LAMBDAS}
    for j in range(2):
        base = fit_policy(subset(dev, folds[1 - j]), costs[0], first, args.chunk, args.c)
        part = subset(dev, folds[j])
        for lam in LAMBDAS:
            out = chunked(part, base.with_lambda(lam), *costs)
            for q, nd, d, ms, msc in zip(part.ids, out.ndcg, out.depth, out.ms, out.ms_calibrated, strict=True):
                held[lam][q] = (nd, d, ms, msc)
    return {
        lam: Outcome(
            [per[q][0] for q in ids], [per[q][1] for q in ids], [per[q][2] for q in ids], [per[q][3] for q in ids]
        )
        for lam, per in held.items()
    }


def choose(scored: list[tuple[Any, Outcome]], target: float, tolerance: float) -> tuple[Any, Outcome]:
    """The cheapest setting on dev whose nDCG@10 is within ``tolerance`` of ``target`` (else the best)."""
    ok = [s for s in scored if mean(s[1].ndcg) >= target - tolerance]
    if ok:
        return min(ok, key=lambda s: (mean(s[1].ms), -mean(s[1].ndcg)))
    return max(scored, key=lambda s: (mean(s[1].ndcg), -mean(s[1].ms)))


# ------------------------------------------------------------------------------------ the table
def evaluate_run(run: str, dev: RunSet, test: RunSet, args: argparse.Namespace, costs: Any) -> dict[str, Any]:
    cost = costs[0]
    dev_fixed = {k: fixed(dev, k, *costs) for k in KS}
    test_fixed = {k: fixed(test, k, *costs) for k in KS}
    k_dev = max(KS, key=lambda k: (round(mean(dev_fixed[k].ndcg), 6), -k))
    k_test = max(KS, key=lambda k: (round(mean(test_fixed[k].ndcg), 6), -k))
    target = mean(dev_fixed[k_dev].ndcg)
    settings = [
        ((first, lam), out) for first in args.first for lam, out in cross_fitted(dev, first, args, costs).items()
    ]
    (first, lam), on_dev = choose(settings, target, args.tolerance)
    policy = fit_policy(dev, cost, first, args.chunk, args.c).with_lambda(lam)
    label = f"first {first}, λ={lam:.2e}"
    rules = [
        ((f, m), ChunkedDepth(cost, MarginRule(m), 1.0, chunk=args.chunk, first=f)) for f in args.first for m in MARGINS
    ]
    (f, m), rule_dev = choose([(key, chunked(dev, p, *costs)) for key, p in rules], target, args.tolerance)
    rule = dict(rules)[(f, m)]
    rule_label = f"first {f}, margin {m:g}"
    rows = {
        f"fixed k={k_dev} (best on dev)": test_fixed[k_dev],
        f"fixed k={k_test} (best on test, reference)": test_fixed[k_test],
        f"chunked, stop model ({label}, chosen on dev)": chunked(test, policy, *costs),
        f"chunked, margin rule ({rule_label}, chosen on dev)": chunked(test, rule, *costs),
    }
    return {
        "run": run,
        "dev": dev.name,
        "test": test.name,
        "queries": {"dev": len(dev.ids), "test": len(test.ids)},
        "fixed_dev": {k: v.summary() for k, v in dev_fixed.items()},
        "fixed_test": {k: v.summary() for k, v in test_fixed.items()},
        "k_dev": k_dev,
        "k_test": k_test,
        "chosen": {
            "stop_model": {"setting": label, "policy": policy.to_dict(), "dev_cross_fitted": on_dev.summary()},
            "margin_rule": {"setting": rule_label, "dev": rule_dev.summary()},
        },
        "_rows": rows,
    }


def table(results: list[dict[str, Any]]) -> None:
    """Paired comparisons to each run's dev-chosen fixed k, Holm across the whole table."""
    pairs, where = [], []
    for r in results:
        base = next(iter(r["_rows"].values()))
        for name, out in list(r["_rows"].items())[1:]:
            pairs.append((out.ndcg, base.ndcg))
            where.append((r, name))
    comparisons = compare(pairs)
    for r in results:
        base = next(iter(r["_rows"].values()))
        r["rows"] = [{"policy": n, **o.summary(), "cost_ratio": 1.0} for n, o in r["_rows"].items()]
        for row in r["rows"][1:]:
            out = r["_rows"][row["policy"]]
            row["cost_ratio"] = round(mean(out.ms) / mean(base.ms), 3)
            row["cost_ratio_calibrated"] = round(mean(out.ms_calibrated) / mean(base.ms_calibrated), 3)
        r["rows"][0]["cost_ratio_calibrated"] = 1.0
    for (r, name), cmp in zip(where, comparisons, strict=True):
        next(row for row in r["rows"] if row["policy"] == name)["vs_dev_k"] = cmp.as_dict()
    for r in results:
        del r["_rows"]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Reranker {report['reranker']}; cost {report['ms_per_doc']:.2f} ms per document measured while scoring "
        f"(calibrated: {report['calibrated']}).",
        "",
        "| set (queries) | first stage (ours / published) | k=10 | k=20 | k=50 | k=100 | mean ms at k=10/20/50/100 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for split in ("dev", "test"):
            fx = r[f"fixed_{split}"]
            dataset, run = r[split].split("/")
            pub = published_dl(dataset, run)
            ours = r["first_stage"][split]
            lines.append(
                f"| {r[split]} ({r['queries'][split]}) | {ours:.4f} / {pub[0].ndcg10 if pub else '–'} | "
                + " | ".join(f"{fx[k]['nDCG@10']:.4f}" for k in KS)
                + " | "
                + " / ".join(f"{fx[k]['mean_ms']:.0f}" for k in KS)
                + " |"
            )
    lines += [
        "",
        "| test set (queries) | policy | nDCG@10 | Δ vs dev-chosen k [95% CI] | p (Holm) | mean depth | mean ms "
        "| × cost | × cost (calibrated) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for row in r["rows"]:
            cmp = row.get("vs_dev_k")
            delta = f"{cmp['delta']:+.4f} [{cmp['ci95'][0]:+.4f}, {cmp['ci95'][1]:+.4f}]" if cmp else "–"
            p = f"{cmp['p_holm']:.2g}" if cmp and cmp["p_holm"] is not None else "–"
            lines.append(
                f"| {r['test']} ({r['queries']['test']}) | {row['policy']} | {row['nDCG@10']:.4f} | {delta} | {p} "
                f"| {row['mean_depth']:.1f} "
                f"| {row['mean_ms']:.0f} | {row['cost_ratio']:.2f} | {row['cost_ratio_calibrated']:.2f} |"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    dev_cache, test_cache = ScoreCache.load(args.dev_cache), ScoreCache.load(args.test_cache)
    if (dev_cache.reranker, dev_cache.params) != (test_cache.reranker, test_cache.params):
        raise InputError("dev and test score caches come from different rerankers")
    merged = ScoreCache(dev_cache.reranker, dev_cache.params, calls=dev_cache.calls + test_cache.calls)
    costs = (merged.proportional_cost(), merged.cost_model())
    a, b = costs[1].stages["rerank"].coef[:2]
    results = []
    for name in args.runs:
        dev = load_runset(args.dev_dataset, name, dev_cache, args.rel, args.partial)
        test = load_runset(args.test_dataset, name, test_cache, args.rel, args.partial)
        result = evaluate_run(name, dev, test, args, costs)
        result["first_stage"] = {"dev": mean(list(dev.ndcg[0].values())), "test": mean(list(test.ndcg[0].values()))}
        results.append(result)
        log.info("%s done", name)
    table(results)
    return {
        "reranker": f"{merged.reranker} {json.dumps(merged.params)}",
        "ms_per_doc": merged.ms_per_doc,
        "calibrated": f"{a:.1f} + {b:.2f}·k ms per call, {len(merged.calls)} timed calls",
        "chunk": args.chunk,
        "first": args.first,
        "tolerance": args.tolerance,
        "rel": args.rel,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev-dataset", type=Path, default=DL / "trec-dl-2019-passage")
    parser.add_argument("--test-dataset", type=Path, default=DL / "trec-dl-2020-passage")
    parser.add_argument("--dev-cache", type=Path, default=Path("var/depth/scores-trec-dl-2019-passage.json"))
    parser.add_argument("--test-cache", type=Path, default=Path("var/depth/scores-trec-dl-2020-passage.json"))
    parser.add_argument("--runs", nargs="+", default=["bm25", "splade-pp-ed"])
    parser.add_argument("--chunk", type=int, default=10, help="documents per chunk after the first")
    parser.add_argument("--first", type=int, nargs="+", default=[10, 20], help="first chunks to choose from on dev")
    parser.add_argument("--tolerance", type=float, default=0.002, help="dev nDCG@10 the chosen policy may lose")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the stop model")
    parser.add_argument("--rel", type=int, default=2)
    parser.add_argument("--seed", type=int, default=13, help="seeds the 2-fold split of dev for choosing λ")
    parser.add_argument("--partial", action="store_true", help="use only the queries whose pairs are all scored")
    parser.add_argument("--out", type=Path, default=Path("runs/depth"))
    args = parser.parse_args(argv)
    setup_logging(1)
    try:
        report = run(args)
    except TwoStageError as exc:
        print(f"depth_policy: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    text = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "depth_policy.json").write_text(json.dumps(report, indent=2, default=_plain) + "\n", "utf-8")
    (args.out / "depth_policy.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    sys.exit(main())
