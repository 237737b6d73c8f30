"""The depth policies an earlier ``depth_policy`` run chose on dev, scored on test queries it did not use.

    python -m twostage_search.benchmarks.studies.depth_replicate --report benchmarks/results/depth_policy.json \\
        --result scifact-test/bm25 --skip 64 \\
        --set ../shared/datasets/scifact var/depth/scores-scifact-new.json \\
              runs/depth/bench/scifact-test/runs/BM25@100.run --out runs/depth-replicate

Nothing is chosen here: the fixed k best on dev, the fitted stop models with their λ and first chunk, and
the margin rule's setting all come from the report (chosen on dev there). The test queries are the set's
seeded test order (:func:`~benchmarks.studies.depth_sets.sample_order`, ``--seed``) after the first
``--skip`` (those the report scored), up to the first one whose top 100 is not fully in the score cache
(so they stay a seeded prefix). A chunked policy decides with the cost per document it was fitted at
(its ``meta``), so that its λ buys the depths it was chosen for; costs are reported as documents ×
this cache's measured ms per document, and calibrated (``a + b·k`` per call from this cache's calls).

Each row is compared with the dev-chosen fixed k over these queries (paired bootstrap 95% CI,
randomisation test, Holm across this table), and pooled with the report's row of the same name (means
weighted by query counts; no CI, since the report keeps no per-query values; this one does).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import compare, mean, read_run
from twostage_search.benchmarks.score_cache import ScoreCache
from twostage_search.benchmarks.studies.depth_policy import Outcome, chunked, costs_of, fixed
from twostage_search.benchmarks.studies.depth_sets import KS, RunSet, runset, sample_order, split_ids
from twostage_search.engine.beir import find_file, read_qrels, read_queries
from twostage_search.engine.chunked import ChunkedDepth, MarginRule
from twostage_search.engine.costmodel import CostModel, LinearCost
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging


def test_queries(dataset: Path, runs: list[Path], cache: ScoreCache, seed: int, skip: int) -> RunSet:
    """The fully scored seeded prefix of the test order after its first ``skip`` queries."""
    dev, test, offset = split_ids(dataset)
    members = set(test)
    order = [q for q in sample_order(dev, test, seed) if q in members][skip:]
    ranking: dict[str, list[tuple[str, float]]] = {}
    for path in runs:
        ranking.update(read_run(path))
    done = 0
    for q in order:
        docs = [d for d, _ in ranking.get(q, [])[:100]]
        if not docs or any(d not in cache.scores.get(q, {}) for d in docs):
            break
        done += 1
    qrels: dict[str, dict[str, int]] = {}
    for split in ("train", "test"):
        path = dataset / "qrels" / f"{split}.tsv"
        if path.is_file():
            for q, graded in read_qrels(path).items():
                qrels.setdefault(q, {}).update({d: g - offset for d, g in graded.items()})
    queries = {q.query_id: q for q in read_queries(find_file(dataset, "queries"))}
    name = f"{dataset.name}-test/bm25"
    return runset(name, qrels, queries, ranking, order[:done], cache.scores, drop_query_id=True)


def policies(result: dict[str, Any], chunk: int) -> dict[str, ChunkedDepth]:
    """The chunked policies the report chose on dev, each priced at the ms per document it was fitted at."""
    out = {}
    for chosen in result["chosen"].values():
        if "policy" in chosen:
            data = chosen["policy"]
            fitted = CostModel({"rerank": LinearCost((0.0, float(data["meta"]["ms_per_doc"]), 0.0))})
            out[chosen["row"]] = ChunkedDepth.from_dict(data, fitted)
    setting = result["chosen"]["margin rule"]["setting"]
    match = re.fullmatch(r"first (\d+), margin ([\d.]+)", setting)
    if match is None:
        raise InputError(f"cannot read the margin rule's setting {setting!r}")
    first, margin = int(match[1]), float(match[2])
    one = CostModel({"rerank": LinearCost((0.0, 1.0, 0.0))})  # p is 0 or 1 and λ is 0: the price never decides
    out[f"chunked, margin rule ({setting}, chosen on dev)"] = ChunkedDepth(
        one, MarginRule(margin), 1.0, chunk=chunk, first=first
    )
    return out


def replicate(args: argparse.Namespace) -> dict[str, Any]:
    report = json.loads(args.report.read_text(encoding="utf-8"))
    result = next((r for r in report["results"] if r["test"] == args.result), None)
    if result is None:
        raise InputError(f"{args.report} has no result for {args.result}")
    dataset, cache_path, *runs = args.set
    cache = ScoreCache.load(Path(cache_path))
    test = test_queries(Path(dataset), [Path(r) for r in runs], cache, args.seed, args.skip)
    costs, about = costs_of(cache)
    k_dev = int(result["k_dev"])
    by_k = {k: fixed(test, k, *costs) for k in KS}
    k_test = max(KS, key=lambda k: (round(mean(by_k[k].ndcg), 6), -k))
    rows: dict[str, Outcome] = {
        f"fixed k={k_dev} (best on dev)": by_k[k_dev],
        f"fixed k={k_test} (best on test, reference)": by_k[k_test],
        **{label: chunked(test, p, *costs) for label, p in policies(result, int(report["chunk"])).items()},
    }
    base = rows[f"fixed k={k_dev} (best on dev)"]
    names = list(rows)[1:]
    comparisons = dict(zip(names, compare([(rows[n].ndcg, base.ndcg) for n in names]), strict=True))
    earlier = {row["policy"]: row for row in result["rows"]}
    n_old, n_new = int(result["queries"]["test"]), len(test.ids)
    out_rows = []
    for name, outcome in rows.items():
        row: dict[str, Any] = {"policy": name, **outcome.summary()}
        row["cost_ratio"] = round(mean(outcome.ms) / mean(base.ms), 3)
        row["cost_ratio_calibrated"] = round(mean(outcome.ms_calibrated) / mean(base.ms_calibrated), 3)
        if name in comparisons:
            row["vs_dev_k"] = comparisons[name].as_dict()
        old = earlier.get(name)
        if old is not None:
            old_base = next(iter(earlier.values()))
            pooled = (n_old * old["nDCG@10"] + n_new * mean(outcome.ndcg)) / (n_old + n_new)
            base_pooled = (n_old * old_base["nDCG@10"] + n_new * mean(base.ndcg)) / (n_old + n_new)
            depth = n_old * old["mean_depth"] + n_new * mean([float(d) for d in outcome.depth])
            base_depth = n_old * old_base["mean_depth"] + n_new * mean([float(d) for d in base.depth])
            row["pooled"] = {
                "queries": n_old + n_new,
                "nDCG@10": round(pooled, 4),
                "delta": round(pooled - base_pooled, 4),
                "cost_ratio": round(depth / base_depth, 3),
            }
        row["per_query"] = {"query_ids": test.ids, "nDCG@10": outcome.ndcg, "depth": outcome.depth}
        out_rows.append(row)
    return {
        "report": str(args.report),
        "result": args.result,
        "skip": args.skip,
        "seed": args.seed,
        "queries": n_new,
        "earlier_queries": n_old,
        "k_dev": k_dev,
        "k_test": k_test,
        "first_stage": mean(list(test.ndcg[0].values())),
        "fixed_test": {k: v.summary() for k, v in by_k.items()},
        "rows": out_rows,
        **about,
    }


def markdown(rep: dict[str, Any]) -> str:
    name, n = rep["result"], rep["queries"]
    fx = rep["fixed_test"]
    lines = [
        f"{name}, test queries {rep['skip'] + 1}–{rep['skip'] + n} of the seeded order ({n} queries not in the "
        f"earlier run); reranker {rep['reranker']}; {rep['ms_per_doc']:.2f} ms per document measured while "
        f"scoring (calibrated: {rep['calibrated']}).",
        "",
        f"First stage {rep['first_stage']:.4f}; fixed k=10/20/50/100: "
        + " / ".join(f"{fx[k]['nDCG@10']:.4f}" for k in KS),
        "",
        "| policy (chosen on dev in the earlier run) | nDCG@10 | Δ vs dev-chosen k [95% CI] | p (Holm) "
        "| mean depth | × cost | × cost (calibrated) | pooled with the earlier run: nDCG@10, Δ, × cost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rep["rows"]:
        cmp = row.get("vs_dev_k")
        delta = f"{cmp['delta']:+.4f} [{cmp['ci95'][0]:+.4f}, {cmp['ci95'][1]:+.4f}]" if cmp else "–"
        p = f"{cmp['p_holm']:.2g}" if cmp and cmp["p_holm"] is not None else "–"
        pooled = row.get("pooled")
        both = (
            f"{pooled['nDCG@10']:.4f}, {pooled['delta']:+.4f}, {pooled['cost_ratio']:.2f} ({pooled['queries']} q)"
            if pooled
            else "–"
        )
        lines.append(
            f"| {row['policy']} | {row['nDCG@10']:.4f} | {delta} | {p} | {row['mean_depth']:.1f} "
            f"| {row['cost_ratio']:.2f} | {row['cost_ratio_calibrated']:.2f} | {both} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=Path("benchmarks/results/depth_policy.json"))
    parser.add_argument("--result", required=True, help="the report's test set, e.g. scifact-test/bm25")
    parser.add_argument("--set", nargs="+", required=True, metavar="ARG", help="DATASET CACHE RUN [RUN ...]")
    parser.add_argument("--skip", type=int, required=True, help="test queries of the seeded order already used")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=Path("runs/depth-replicate"))
    args = parser.parse_args(argv)
    setup_logging(1)
    try:
        if len(args.set) < 3:
            raise InputError("--set takes DATASET CACHE RUN [RUN ...]")
        rep = replicate(args)
    except TwoStageError as exc:
        print(f"depth_replicate: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    text = markdown(rep)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.result.replace("/", "-")
    for path, body in (
        (args.out / f"{stem}.json", json.dumps(rep, indent=2) + "\n"),
        (args.out / f"{stem}.md", text + "\n"),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(path)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
