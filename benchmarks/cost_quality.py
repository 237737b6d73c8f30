"""Cost–quality curve of rerank-depth policies: fixed k vs adaptive (and an oracle bound).

    twostage calibrate --index var/scifact --reranker onnx-cross-encoder --out runs/costmodel-cross-encoder.json
    python -m twostage_search.benchmarks.cost_quality --cost-model runs/costmodel-cross-encoder.json

Method. Every query's top-100 first-stage candidates (``--train-run``/``--test-run`` TREC runs from
``benchmarks.first_stage``) are scored once by the cross-encoder (cached in ``--scores-dir``; computed on
``--device`` when missing). For each depth k, the cascade ranking (top k by cross-encoder, the rest in
first-stage order) gives every query's nDCG@10. Latency per query = its measured first-stage time
(encode + retrieve, run here) + the calibrated rerank cost ``a + b·k`` for the k the policy picks;
tokens per query = k × tokens per document. The adaptive policy (``engine.policy.AdaptiveDepth``) is
fitted on the *train* split's gains and its price λ is tuned on train to match each fixed k's mean cost;
everything reported is on the test split. ``--validate N`` re-runs N test queries end to end with the
real reranker to check the predicted latencies against measured ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import operator
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.rerank import read_run
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.costmodel import CostModel
from twostage_search.engine.errors import TwoStageError
from twostage_search.engine.pipeline import merge_cascade
from twostage_search.engine.policy import AdaptiveDepth, DepthPolicy, FixedDepth, first_stage_features
from twostage_search.engine.types import Candidate, Query, RankedList

log = logging.getLogger(__name__)

KS = (0, 5, 10, 20, 30, 50, 100)


def ndcg10_per_query(qrels: dict[str, dict[str, int]], rankings: dict[str, RankedList]) -> dict[str, float]:
    import ir_measures

    qrels_rows = [ir_measures.Qrel(q, d, r) for q, docs in qrels.items() for d, r in docs.items() if q in rankings]
    run_rows = [ir_measures.ScoredDoc(q, h.doc_id, h.score) for q, r in rankings.items() for h in r]
    measure = ir_measures.parse_measure("nDCG@10")
    values = {m.query_id: float(m.value) for m in ir_measures.iter_calc([measure], qrels_rows, run_rows)}
    return {q: values.get(q, 0.0) for q in rankings}


def read_scores(path: Path) -> dict[str, dict[str, float]]:
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    with path.open() as fh:
        for line in fh:
            qid, did, s = line.rstrip("\n").split("\t")
            scores[qid][did] = float(s)
    return scores


def score_all(
    run: dict[str, list[tuple[str, float]]], queries: dict[str, Query], corpus: dict[str, Any], path: Path, args: Any
) -> dict[str, dict[str, float]]:
    """Cross-encoder scores of every query's top 100, cached in ``path``."""
    if path.is_file():
        return read_scores(path)
    from twostage_search.benchmarks.rerank import cross_encoder

    ce = cross_encoder(args.reranker, args.model, device=args.device, threads=args.threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for qid in sorted(run):
            docs = [d for d, _ in run[qid][:100]]
            for d, s in zip(docs, ce.score(queries[qid].text, [corpus[d].full_text for d in docs]), strict=True):
                fh.write(f"{qid}\t{d}\t{s:.5f}\n")
    tmp.replace(path)
    return read_scores(path)


class Split:
    """One split's first-stage rankings, cross-encoder scores and per-k nDCG@10."""

    def __init__(self, name: str, args: Any, corpus: dict[str, Any], all_queries: dict[str, Query]) -> None:
        self.qrels = read_qrels(args.dataset / "qrels" / f"{name}.tsv")
        run = read_run(getattr(args, f"{name}_run"))
        self.queries = {q: all_queries[q] for q in sorted(self.qrels) if q in run}
        self.first = {
            q: RankedList.from_candidates(
                q, [Candidate(d, s, corpus[d].text, corpus[d].title) for d, s in run[q][:100]]
            )
            for q in self.queries
        }
        scores = score_all(run, all_queries, corpus, args.scores_dir / f"{name}_ce.tsv", args)
        self.ndcg: dict[int, dict[str, float]] = {}
        for k in KS:
            rankings = {}
            for q, first in self.first.items():
                cands = first.candidates()
                head = RankedList.from_scores(q, cands[:k], [scores[q][c.doc_id] for c in cands[:k]])
                rankings[q] = merge_cascade(q, head, cands[k:])
            self.ndcg[k] = ndcg10_per_query(self.qrels, rankings)
        self.features = {q: first_stage_features(self.queries[q], self.first[q]) for q in self.queries}

    def gains(self) -> list[dict[int, float]]:
        return [{k: self.ndcg[k][q] - self.ndcg[0][q] for k in KS} for q in self.queries]


def evaluate_policy(
    split: Split, policy: DepthPolicy, retrieve_ms: dict[str, float], cost: CostModel
) -> dict[str, Any]:
    ks, ms, nd = [], [], []
    tokens_per_doc = cost.stages["rerank"].tokens_per_doc
    for q, query in split.queries.items():
        k = policy.decide(query, split.first[q], None).rerank_depth
        k = max((x for x in KS if x <= k), default=0)
        ks.append(k)
        ms.append(retrieve_ms[q] + cost.predict_ms("rerank", k))
        nd.append(split.ndcg[k][q])
    return {
        "nDCG@10": round(float(np.mean(nd)), 4),
        "mean_ms": round(float(np.mean(ms)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "mean_k": round(float(np.mean(ks)), 2),
        "tokens_per_query": round(float(np.mean(ks)) * tokens_per_doc, 1),
        "k_histogram": {str(k): ks.count(k) for k in KS if ks.count(k)},
    }


def _best_k(split: Split, q: str, lam: float, cost: CostModel) -> int:
    """The oracle's depth for query ``q``: best true nDCG@10 minus λ × predicted cost."""
    return max(KS, key=lambda k: split.ndcg[k][q] - lam * cost.predict_ms("rerank", k))


def measure_retrieval(index_path: Path, queries: dict[str, Query]) -> dict[str, float]:
    from twostage_search import indexes

    retriever = indexes.load(index_path).retriever()
    for q in list(queries.values())[:20]:
        retriever.retrieve_with_cost(q, 100)
    out = {}
    for qid, q in queries.items():
        _, costs = retriever.retrieve_with_cost(q, 100)
        out[qid] = sum(c.wall_ms for c in costs)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    cost = CostModel.load(args.cost_model)
    all_queries = {q.query_id: q for q in read_queries(find_file(args.dataset, "queries"))}
    corpus = {d.doc_id: d for d in read_corpus(find_file(args.dataset, "corpus"))}
    train = Split("train", args, corpus, all_queries)
    test = Split("test", args, corpus, all_queries)
    retrieve_ms = measure_retrieval(args.index, test.queries)
    adaptive = AdaptiveDepth.fit(cost, [train.features[q] for q in train.queries], train.gains(), ridge=args.ridge)

    rows: list[dict[str, Any]] = []
    fixed = {k: evaluate_policy(test, FixedDepth(k), retrieve_ms, cost) for k in KS}
    for k, r in fixed.items():
        rows.append({"policy": f"fixed k={k}", **r})
    train_pairs = [(train.queries[q], train.first[q]) for q in train.queries]
    matched = []
    for k in KS[1:-1]:
        target = cost.predict_ms("rerank", k)
        policy = adaptive.for_mean_cost(train_pairs, target)
        r = evaluate_policy(test, policy, retrieve_ms, cost)
        rows.append({"policy": f"adaptive ≈ cost of k={k} (λ={policy.lam:.2e})", **r})
        matched.append((k, r))
    lambdas = np.logspace(-7, -2, 61)
    sweep = [evaluate_policy(test, adaptive.with_lambda(lam), retrieve_ms, cost) for lam in lambdas]
    oracle = []
    for lam in lambdas:
        ks = {q: _best_k(test, q, float(lam), cost) for q in test.queries}
        nd = np.mean([test.ndcg[ks[q]][q] for q in test.queries])
        ms = np.mean([retrieve_ms[q] + cost.predict_ms("rerank", ks[q]) for q in test.queries])
        oracle.append({"nDCG@10": round(float(nd), 4), "mean_ms": round(float(ms), 1)})

    fixed_ms = np.array([fixed[k]["mean_ms"] for k in KS])
    fixed_nd = np.array([fixed[k]["nDCG@10"] for k in KS])
    frontier = sorted([*sweep, *(r for _, r in matched)], key=lambda r: r["mean_ms"])
    comparisons = []
    for k, r in matched:
        at_equal_cost = float(np.interp(r["mean_ms"], fixed_ms, fixed_nd))
        gain_fixed = at_equal_cost - fixed[0]["nDCG@10"]
        gain_adaptive = r["nDCG@10"] - fixed[0]["nDCG@10"]
        # cheapest point of the adaptive sweep that reaches fixed k's quality
        reach = [s["mean_ms"] for s in frontier if s["nDCG@10"] >= fixed[k]["nDCG@10"]]
        comparisons.append(
            {
                "fixed_k": k,
                "fixed_nDCG@10": fixed[k]["nDCG@10"],
                "fixed_mean_ms": fixed[k]["mean_ms"],
                "adaptive_nDCG@10": r["nDCG@10"],
                "adaptive_mean_ms": r["mean_ms"],
                "fixed_nDCG@10_at_adaptive_cost": round(at_equal_cost, 4),
                "quality_ratio_at_equal_cost": round(r["nDCG@10"] / at_equal_cost, 4),
                "gain_ratio_at_equal_cost": round(gain_adaptive / gain_fixed, 3) if gain_fixed > 0 else None,
                "cost_ratio_at_equal_quality": round(min(reach) / fixed[k]["mean_ms"], 3) if reach else None,
            }
        )
    report = {
        "dataset": str(args.dataset),
        "test_queries": len(test.queries),
        "train_queries": len(train.queries),
        "cost_model": {n: m.to_dict()["coef"][:2] for n, m in cost.stages.items()},
        "retrieve_ms": {
            "mean": round(float(np.mean(list(retrieve_ms.values()))), 1),
            "p95": round(float(np.percentile(list(retrieve_ms.values()), 95)), 1),
        },
        "rows": rows,
        "comparisons": comparisons,
        "adaptive_sweep": sweep,
        "oracle_sweep": oracle,
    }
    if args.validate:
        report["validation"] = validate(args, test, adaptive, cost, matched)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, fixed, args.out / "cost_quality.png")
    return report


def validate(args: Any, test: Split, adaptive: AdaptiveDepth, cost: CostModel, matched: list[Any]) -> dict[str, Any]:
    """Measured end-to-end latency of N test queries vs the model's prediction (fixed k=20 and adaptive)."""
    from twostage_search import indexes
    from twostage_search.benchmarks.rerank import cross_encoder
    from twostage_search.engine.pipeline import TwoStage

    retriever = indexes.load(args.index).retriever()
    ce = cross_encoder(args.reranker, args.model, threads=args.threads)
    qids = list(test.queries)[: args.validate]
    target = cost.predict_ms("rerank", 20)
    policies: dict[str, DepthPolicy] = {"fixed k=20": FixedDepth(20)}
    train_like = [(test.queries[q], test.first[q]) for q in qids]
    policies["adaptive ≈ k=20"] = adaptive.for_mean_cost(train_like, target)
    out = {}
    for name, policy in policies.items():
        engine = TwoStage(retriever, ce, depth=100, policy=policy)
        measured, predicted = [], []
        for q in qids:
            started = time.perf_counter()
            result = engine.run(test.queries[q], k=10)
            measured.append((time.perf_counter() - started) * 1000)
            predicted.append(
                result.stage_ms("encode") + result.stage_ms("retrieve") + cost.predict_ms("rerank", result.rerank_depth)
            )
        out[name] = {
            "queries": len(qids),
            "measured_mean_ms": round(float(np.mean(measured)), 1),
            "predicted_mean_ms": round(float(np.mean(predicted)), 1),
            "mean_abs_error_ms": round(float(np.mean(np.abs(np.array(measured) - predicted))), 1),
        }
    return out


def plot(report: dict[str, Any], fixed: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    sweep = sorted(report["adaptive_sweep"], key=lambda r: r["mean_ms"])
    oracle = sorted(report["oracle_sweep"], key=lambda r: r["mean_ms"])
    for ax, key, label in ((axes[0], "mean_ms", "mean ms / query"), (axes[1], "p95_ms", "p95 ms / query")):
        ax.plot([fixed[k][key] for k in KS], [fixed[k]["nDCG@10"] for k in KS], "o-", label="fixed k")
        for k in KS:
            ax.annotate(str(k), (fixed[k][key], fixed[k]["nDCG@10"]), textcoords="offset points", xytext=(3, -10))
        ordered = sorted(sweep, key=operator.itemgetter(key))
        ax.plot([r[key] for r in ordered], [r["nDCG@10"] for r in ordered], "s-", ms=3, label="adaptive (λ sweep)")
        if key == "mean_ms":
            ax.plot([r["mean_ms"] for r in oracle], [r["nDCG@10"] for r in oracle], ":", label="oracle k (bound)")
        ax.set_xlabel(label)
        ax.set_ylabel("nDCG@10")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot([fixed[k]["tokens_per_query"] for k in KS], [fixed[k]["nDCG@10"] for k in KS], "o-", label="fixed k")
    axes[2].plot([r["tokens_per_query"] for r in sweep], [r["nDCG@10"] for r in sweep], "s-", ms=3, label="adaptive")
    axes[2].set_xlabel("reranker input tokens / query (money = tokens × price)")
    axes[2].set_ylabel("nDCG@10")
    axes[2].grid(alpha=0.3)
    axes[2].legend()
    fig.suptitle(f"SciFact test ({report['test_queries']} queries): SPLADE + cross-encoder, rerank depth policies")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"))
    parser.add_argument("--index", type=Path, default=Path("var/scifact"))
    parser.add_argument("--train-run", type=Path, default=Path("runs/train/first_stage.run"))
    parser.add_argument("--test-run", type=Path, default=Path("runs/first_stage.run"))
    parser.add_argument("--scores-dir", type=Path, default=Path("runs/ce-scores"))
    parser.add_argument("--cost-model", type=Path, default=Path("runs/costmodel-cross-encoder.json"))
    parser.add_argument("--reranker", default="onnx-cross-encoder", help="registered cross-encoder")
    parser.add_argument("--model", default=None, help="model of the reranker (default: the reranker's own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--validate", type=int, default=0, help="re-run N test queries end to end")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        report = run(args)
    except TwoStageError as exc:
        print(f"cost_quality: error: {exc}", file=sys.stderr)
        return 2
    for row in report["rows"]:
        name, nd, mean, p95, k = row["policy"], row["nDCG@10"], row["mean_ms"], row["p95_ms"], row["mean_k"]
        print(f"{name:<42} nDCG@10 {nd:.4f}  mean {mean:8.1f} ms  p95 {p95:8.1f} ms  mean k {k:6.2f}")
    for c in report["comparisons"]:
        print(json.dumps(c))
    if "validation" in report:
        print(json.dumps(report["validation"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
