"""How deep to rerank: fixed k against depth decided while reranking, from cached reranker scores.

    python -m twostage_search.benchmarks.score_cache --dataset ../shared/datasets/trec-dl-2019-passage \\
        --out var/depth/scores-trec-dl-2019-passage.json        # and the same for 2020 (once, slow)
    python -m twostage_search.benchmarks.studies.depth_policy --out runs/depth

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import compare, mean
from twostage_search.benchmarks.published import published_dl
from twostage_search.benchmarks.score_cache import ScoreCache
from twostage_search.benchmarks.studies.depth_sets import KS, RunSet, load_dl, load_set, subset
from twostage_search.engine.chunked import ChunkedDepth, MarginRule, fit_chunked, rerank_in_chunks, transitions
from twostage_search.engine.cost import StageCost
from twostage_search.engine.costmodel import CostModel
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.stopping import ALL_FEATURES, CHUNK_FEATURES
from twostage_search.engine.types import Candidate, Query

log = logging.getLogger(__name__)

DL = Path("../shared/datasets")
LAMBDAS = tuple(float(x) for x in np.logspace(-7, -3, 33))
STOP_MODELS = {"stop model": CHUNK_FEATURES, "stop model, 9 features": ALL_FEATURES}
MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


class CachedScorer:
    """A :class:`~engine.protocols.PointwiseScorer` answering from a score cache (costs nothing here)."""

    def __init__(self, scores: Mapping[str, Mapping[str, float]]) -> None:
        self.scores = scores

    def score_candidates(self, query: Query, candidates: Sequence[Candidate]) -> tuple[list[float], StageCost]:
        values = [self.scores[query.query_id][c.doc_id] for c in candidates]
        return values, StageCost("rerank", 0.0, docs=len(candidates))


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


def fit_policy(
    rs: RunSet, cost: CostModel, first: int, chunk: int, c: float, names: Sequence[str] = CHUNK_FEATURES
) -> ChunkedDepth:
    feats, changed, gains = [], [], []
    for q in rs.ids:
        cands = rs.first[q].candidates()
        scores = [rs.scores[q][x.doc_id] for x in cands]
        for f, y, a, b in transitions(scores, [x.score for x in cands], first=first, chunk=chunk):
            feats.append(f)
            changed.append(y)
            gains.append(rs.ndcg_at(q, b) - rs.ndcg_at(q, a))
    per_doc = cost.predict_ms("rerank", 1) - cost.predict_ms("rerank", 0)
    meta = {"fitted_on": rs.name, "ms_per_doc": round(per_doc, 3)}
    return fit_chunked(cost, feats, changed, gains, c=c, names=names, chunk=chunk, first=first, meta=meta)


def cross_fitted(
    dev: RunSet, first: int, args: argparse.Namespace, costs: Any, names: Sequence[str]
) -> dict[float, Outcome]:
    """Each dev query's outcome at each λ under a stop model fitted on the other half of dev (2 folds,
    seeded), so that choosing λ on dev does not reward a model for fitting the queries it is scored on."""
    ids = dev.ids
    order = np.random.default_rng(args.seed).permutation(len(ids))
    folds = [[ids[i] for i in order[j::2]] for j in range(2)]
    held: dict[float, dict[str, tuple[float, int, float, float]]] = {lam: {} for lam in LAMBDAS}
    for j in range(2):
        base = fit_policy(subset(dev, folds[1 - j]), costs[0], first, args.chunk, args.c, names)
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
    chosen: dict[str, Any] = {}
    models = {}
    for model, names in STOP_MODELS.items():
        settings = [
            ((first, lam), out)
            for first in args.first
            for lam, out in cross_fitted(dev, first, args, costs, names).items()
        ]
        (first, lam), on_dev = choose(settings, target, args.tolerance)
        policy = fit_policy(dev, cost, first, args.chunk, args.c, names).with_lambda(lam)
        label = f"chunked, {model} (first {first}, λ={lam:.2e}, chosen on dev)"
        models[label] = policy
        chosen[model] = {"row": label, "policy": policy.to_dict(), "dev_cross_fitted": on_dev.summary()}
    rules = [
        ((f, m), ChunkedDepth(cost, MarginRule(m), 1.0, chunk=args.chunk, first=f)) for f in args.first for m in MARGINS
    ]
    (f, m), rule_dev = choose([(key, chunked(dev, p, *costs)) for key, p in rules], target, args.tolerance)
    rule = dict(rules)[(f, m)]
    rule_label = f"first {f}, margin {m:g}"
    rows = {
        f"fixed k={k_dev} (best on dev)": test_fixed[k_dev],
        f"fixed k={k_test} (best on test, reference)": test_fixed[k_test],
        **{label: chunked(test, policy, *costs) for label, policy in models.items()},
        f"chunked, margin rule ({rule_label}, chosen on dev)": chunked(test, rule, *costs),
    }
    chosen["margin rule"] = {"setting": rule_label, "dev": rule_dev.summary()}
    return {
        "run": run,
        "dev": dev.name,
        "test": test.name,
        "queries": {"dev": len(dev.ids), "test": len(test.ids)},
        "fixed_dev": {k: v.summary() for k, v in dev_fixed.items()},
        "fixed_test": {k: v.summary() for k, v in test_fixed.items()},
        "first_stage": {"dev": mean(list(dev.ndcg[0].values())), "test": mean(list(test.ndcg[0].values()))},
        "k_dev": k_dev,
        "k_test": k_test,
        "chosen": chosen,
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
        f"{r['test']}: reranker {r['reranker']}; cost {r['ms_per_doc']:.2f} ms per document measured "
        f"while scoring (calibrated: {r['calibrated']})."
        for r in report["results"]
    ]
    lines += [
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


def costs_of(cache: ScoreCache) -> tuple[tuple[CostModel, CostModel], dict[str, Any]]:
    """(proportional, calibrated) cost models of a cache's timed calls, and how they read."""
    costs = (cache.proportional_cost(), cache.cost_model())
    a, b = costs[1].stages["rerank"].coef[:2]
    about = {
        "reranker": f"{cache.reranker} {json.dumps(cache.params)}",
        "ms_per_doc": round(cache.ms_per_doc, 2),
        "calibrated": f"{a:.1f} + {b:.2f}·k ms per call, {len(cache.calls)} timed calls",
    }
    return costs, about


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    if args.runs:
        dev_cache, test_cache = ScoreCache.load(args.dev_cache), ScoreCache.load(args.test_cache)
        if (dev_cache.reranker, dev_cache.params) != (test_cache.reranker, test_cache.params):
            raise InputError("dev and test score caches come from different rerankers")
        merged = ScoreCache(dev_cache.reranker, dev_cache.params, calls=dev_cache.calls + test_cache.calls)
        costs, about = costs_of(merged)
        for name in args.runs:
            dev = load_dl(args.dev_dataset, name, dev_cache.scores, args.rel, args.partial)
            test = load_dl(args.test_dataset, name, test_cache.scores, args.rel, args.partial)
            results.append(evaluate_run(name, dev, test, args, costs) | about)
            log.info("%s done", name)
    for spec in args.set or []:
        if len(spec) < 3:
            raise InputError("--set takes DATASET CACHE RUN [RUN ...]")
        cache = ScoreCache.load(Path(spec[1]))
        costs, about = costs_of(cache)
        dev, test = load_set(Path(spec[0]), [Path(p) for p in spec[2:]], cache.scores, args.seed)
        results.append(evaluate_run("bm25", dev, test, args, costs) | about)
        log.info("%s done", spec[0])
    if not results:
        raise InputError("nothing to evaluate: give --runs or --set")
    table(results)
    return {"chunk": args.chunk, "first": args.first, "tolerance": args.tolerance, "rel": args.rel, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev-dataset", type=Path, default=DL / "trec-dl-2019-passage")
    parser.add_argument("--test-dataset", type=Path, default=DL / "trec-dl-2020-passage")
    parser.add_argument("--dev-cache", type=Path, default=Path("var/depth/scores-trec-dl-2019-passage.json"))
    parser.add_argument("--test-cache", type=Path, default=Path("var/depth/scores-trec-dl-2020-passage.json"))
    parser.add_argument("--runs", nargs="*", default=["bm25", "splade-pp-ed"], help="TREC DL runs (none: skip DL)")
    parser.add_argument(
        "--set", nargs="+", action="append", metavar="ARG", help="DATASET CACHE RUN [RUN ...]: SciFact or CrowdFlower"
    )
    parser.add_argument("--chunk", type=int, default=10, help="documents per chunk after the first")
    parser.add_argument("--first", type=int, nargs="+", default=[10, 20], help="first chunks to choose from on dev")
    parser.add_argument("--tolerance", type=float, default=0.002, help="dev nDCG@10 the chosen policy may lose")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the stop model")
    parser.add_argument("--rel", type=int, default=2, help="TREC DL: lowest relevant grade (binary measures)")
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
    save_policies(report, args.out / "policies")
    print(text)
    return 0


def save_policies(report: dict[str, Any], folder: Path) -> None:
    """Each chosen stop-model policy as a ``ChunkedDepth`` JSON (an experiment arm's ``chunked_policy``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in report["results"]:
        for model, chosen in r["chosen"].items():
            if "policy" in chosen:
                name = f"{r['dev'].replace('/', '-')}-{model.replace(', ', '-').replace(' ', '-')}.json"
                (folder / name).write_text(json.dumps(chosen["policy"], indent=2, default=_plain) + "\n", "utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    sys.exit(main())
