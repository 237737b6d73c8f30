"""Cost–quality of rerank-depth policies, adaptive vs fixed k, with every choice made off the test split.

    python -m twostage_search.benchmarks.studies.first_stage --dataset ../shared/datasets/scifact --split train \\
        --index var/scifact --out runs/scifact-first/train
    python -m twostage_search.benchmarks.studies.first_stage --dataset ../shared/datasets/scifact --split test \\
        --index var/scifact --out runs/scifact-first
    python -m twostage_search.benchmarks.studies.cost_quality --dataset ../shared/datasets/scifact \\
        --train-run runs/scifact-first/train/first_stage.run --test-run runs/scifact-first/first_stage.run

Protocol. The *train* split's queries are shuffled with ``--seed`` and cut in two: **dev** (the first
``--dev-fraction``, default 30%) and **fit** (the rest). Every query's top ``max(--ks)`` first-stage
candidates are scored once by the reranker (cached in ``--scores-dir``); the cascade ranking for depth k
(top k by the reranker, the rest in first-stage order) gives each query's nDCG@10 at each k.

- The adaptive policy's per-depth gain regressions (:class:`engine.policy.AdaptiveDepth`) are fitted on
  the fit queries.
- For each fixed k, the price λ is chosen on the dev queries so that the adaptive policy's mean predicted
  cost there matches fixed k's (``for_mean_cost``).
- Only then is the test split touched: fixed k and the dev-matched adaptive policy run on every test
  query; each pair gets the nDCG@10 difference with a paired bootstrap 95% CI and a paired randomisation
  test (Holm-corrected across the table), and the difference in mean cost with its CI.

Cost is the reranker's measured milliseconds per document in this run (``--cost-model`` uses a
calibrated ``a + b·k`` model instead). ``--test-dataset``/``--test-run`` score another dataset's run,
e.g. fit and choose on DL19 (``--dev-fraction 0``: dev = fit) and report DL20.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import compare, evaluate, mean, read_run
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.costmodel import CostModel, LinearCost
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.models import trained_on
from twostage_search.engine.pipeline import merge_cascade
from twostage_search.engine.policy import AdaptiveDepth, DepthPolicy, FixedDepth, first_stage_features
from twostage_search.engine.types import Candidate, Query, RankedList

log = logging.getLogger(__name__)

KS = (0, 5, 10, 20, 30, 50, 100)
RUNTIME_PARAMS = frozenset({"threads", "batch_size", "device"})


@dataclass
class Split:
    """Queries of one split with their first-stage rankings and per-depth nDCG@10."""

    name: str
    queries: dict[str, Query]
    first: dict[str, RankedList]
    ndcg: dict[int, dict[str, float]]

    def gains(self) -> list[dict[int, float]]:
        return [{k: self.ndcg[k][q] - self.ndcg[0][q] for k in self.ndcg} for q in self.queries]

    def features(self) -> list[dict[str, float]]:
        return [first_stage_features(self.queries[q], self.first[q]) for q in self.queries]

    def pairs(self) -> list[tuple[Query, RankedList]]:
        return [(self.queries[q], self.first[q]) for q in self.queries]


class Scorer:
    """The reranker's score for each (query, candidate), computed once and cached as TSV."""

    def __init__(self, name: str, params: dict[str, Any], cache_dir: Path) -> None:
        self.name, self.params = name, params
        scoring = {k: v for k, v in params.items() if k not in RUNTIME_PARAMS}  # what changes a score
        key = hashlib.sha256(json.dumps([name, scoring], sort_keys=True).encode()).hexdigest()[:12]
        self.path = cache_dir / f"{name}-{key}.tsv"
        self.scores: dict[str, dict[str, float]] = {}
        self.ms_per_doc: float | None = None
        if self.path.is_file():
            meta = json.loads(self.path.with_suffix(".json").read_text())
            self.ms_per_doc = meta["ms_per_doc"]
            self._ms, self._docs = float(meta.get("ms", 0.0)), int(meta.get("docs", 0))
            for line in self.path.read_text().splitlines():
                q, d, s = line.split("\t")
                self.scores.setdefault(q, {})[d] = float(s)
        self._reranker: Any = None
        if not self.path.is_file():
            self._ms, self._docs = 0.0, 0

    def ensure(self, queries: dict[str, Query], first: dict[str, RankedList], depth: int) -> None:
        todo = [q for q in queries if any(c.doc_id not in self.scores.get(q, {}) for c in first[q].items[:depth])]
        if not todo:
            return
        if self._reranker is None:
            from twostage_search.engine.registry import rerankers

            self._reranker = rerankers.get(self.name)(**self.params)
        for i, q in enumerate(todo, 1):
            cands = first[q].candidates()[:depth]
            started = time.perf_counter()
            ranking = self._reranker.rerank(queries[q], cands)
            self._ms += (time.perf_counter() - started) * 1000
            self._docs += len(cands)
            self.scores[q] = {h.doc_id: h.score for h in ranking}
            if i % 20 == 0:  # keep what is scored: a long run can be stopped and resumed
                self.ms_per_doc = self._ms / max(self._docs, 1)
                self.save()
                log.info("scored %d/%d queries (%.1f ms/doc)", i, len(todo), self.ms_per_doc)
        self.ms_per_doc = self._ms / max(self._docs, 1)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        lines = (f"{q}\t{d}\t{s:.6f}\n" for q, docs in sorted(self.scores.items()) for d, s in sorted(docs.items()))
        tmp.write_text("".join(lines))
        tmp.replace(self.path)
        meta = {
            "reranker": self.name,
            "params": self.params,
            "ms_per_doc": self.ms_per_doc,
            "ms": self._ms,
            "docs": self._docs,
        }
        self.path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def load_split(
    name: str, dataset: Path, split: str, run_path: Path, qids: list[str] | None, ks: tuple[int, ...], rel: int
) -> tuple[dict[str, Query], dict[str, RankedList], dict[str, dict[str, int]]]:
    qrels = read_qrels(dataset / "qrels" / f"{split}.tsv")
    run = read_run(run_path)
    all_queries = {q.query_id: q for q in read_queries(find_file(dataset, "queries"))}
    ids = qids if qids is not None else sorted(q for q in qrels if q in run)
    depth = max(max(ks), 100)  # the reranker sees the top max(ks); the rest stay below in run order
    wanted = {d for q in ids for d, _ in run.get(q, [])[:depth]}
    docs = {d.doc_id: d for d in read_corpus(find_file(dataset, "corpus")) if d.doc_id in wanted}
    first = {
        q: RankedList.from_candidates(
            q, [Candidate(d, s, docs[d].text, docs[d].title) for d, s in run.get(q, [])[:depth]]
        )
        for q in ids
    }
    return {q: all_queries[q] for q in ids}, first, qrels


def build_split(
    name: str, queries: dict[str, Query], first: dict[str, RankedList], qrels: Any, scorer: Scorer, ks: Any, rel: int
) -> Split:
    scorer.ensure(queries, first, max(ks))
    ids = list(queries)
    ndcg: dict[int, dict[str, float]] = {}
    for k in ks:
        rankings = {}
        for q in ids:
            cands = first[q].candidates()
            head = RankedList.from_scores(q, cands[:k], [scorer.scores[q][c.doc_id] for c in cands[:k]])
            rankings[q] = [(h.doc_id, h.score) for h in merge_cascade(q, head, cands[k:])]
        ndcg[k] = dict(zip(ids, evaluate(qrels, ids, rankings, ["nDCG@10"], rel=rel)["nDCG@10"], strict=True))
    return Split(name, queries, first, ndcg)


def apply(split: Split, policy: DepthPolicy, cost: CostModel, ks: tuple[int, ...]) -> dict[str, list[float]]:
    """Per-query nDCG@10, chosen k and predicted rerank ms of a policy on a split."""
    nd, kk, ms = [], [], []
    for q, query in split.queries.items():
        k = policy.decide(query, split.first[q], None).rerank_depth
        k = max((x for x in ks if x <= k), default=0)
        nd.append(split.ndcg[k][q])
        kk.append(float(k))
        ms.append(cost.predict_ms("rerank", k))
    return {"nDCG@10": nd, "k": kk, "ms": ms}


def _summary(values: dict[str, list[float]]) -> dict[str, float]:
    return {
        "nDCG@10": round(mean(values["nDCG@10"]), 4),
        "mean_k": round(mean(values["k"]), 2),
        "mean_ms": round(mean(values["ms"]), 1),
        "p95_ms": round(float(np.percentile(values["ms"], 95)), 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    ks = tuple(sorted(set(args.ks) | {0}))
    params = json.loads(args.reranker_params) if args.reranker_params else {}
    model = params.get("model", f"{args.reranker}'s default")
    test_dataset = args.test_dataset or args.dataset
    in_domain = bool(model) and trained_on(str(model)) == Path(test_dataset).resolve().name
    scorer = Scorer(args.reranker, params, args.scores_dir)

    train_ids = sorted(q for q in read_qrels(args.dataset / "qrels" / f"{args.train_split}.tsv"))
    random.Random(args.seed).shuffle(train_ids)
    run_ids = set(read_run(args.train_run))
    train_ids = [q for q in train_ids if q in run_ids]
    n_dev = round(len(train_ids) * args.dev_fraction)
    dev_ids, fit_ids = train_ids[:n_dev], train_ids[n_dev:]
    fit_ids = fit_ids[: args.fit_queries] if args.fit_queries else fit_ids
    dev_ids = dev_ids[: args.dev_queries] if args.dev_queries else dev_ids
    if args.dev_fraction == 0:
        dev_ids = fit_ids
    test_qrels = read_qrels(Path(test_dataset) / "qrels" / f"{args.test_split}.tsv")
    test_ids = sorted(test_qrels)
    if args.test_queries:
        random.Random(args.seed).shuffle(test_ids)
        test_ids = sorted(test_ids[: args.test_queries])

    q, f, qr = load_split("train", args.dataset, args.train_split, args.train_run, fit_ids + dev_ids, ks, args.rel)
    fit = build_split("fit", {i: q[i] for i in fit_ids}, f, qr, scorer, ks, args.rel)
    dev = build_split("dev", {i: q[i] for i in dev_ids}, f, qr, scorer, ks, args.rel)
    tq, tf, tqr = load_split("test", Path(test_dataset), args.test_split, args.test_run, test_ids, ks, args.rel)
    test = build_split("test", tq, tf, tqr, scorer, ks, args.rel)

    if args.cost_model:
        cost = CostModel.load(args.cost_model)
        cost_source = f"calibrated model {args.cost_model}"
    else:
        assert scorer.ms_per_doc is not None
        cost = CostModel({"rerank": LinearCost((0.0, scorer.ms_per_doc, 0.0))})
        cost_source = f"measured {scorer.ms_per_doc:.2f} ms per document reranked (cost ∝ k)"
    adaptive = AdaptiveDepth.fit(cost, fit.features(), fit.gains(), ridge=args.ridge)
    fixed = {k: apply(test, FixedDepth(k), cost, ks) for k in ks}
    rows: list[dict[str, Any]] = [{"policy": f"fixed k={k}", **_summary(v)} for k, v in fixed.items()]
    matched: list[tuple[int, float, dict[str, list[float]], dict[str, list[float]]]] = []
    for k in ks[1:-1]:
        policy = adaptive.for_mean_cost(dev.pairs(), cost.predict_ms("rerank", k))
        on_dev = apply(dev, policy, cost, ks)
        matched.append((k, policy.lam, on_dev, apply(test, policy, cost, ks)))
    quality = compare([(a["nDCG@10"], fixed[k]["nDCG@10"]) for k, _, _, a in matched])
    costs = compare([(a["ms"], fixed[k]["ms"]) for k, _, _, a in matched])
    comparisons = []
    for (k, lam, on_dev, on_test), cq, cc in zip(matched, quality, costs, strict=True):
        rows.append({"policy": f"adaptive, λ={lam:.2e} chosen on dev to cost as k={k}", **_summary(on_test)})
        comparisons.append(
            {
                "fixed_k": k,
                "lambda": lam,
                "dev": {
                    "adaptive": _summary(on_dev),
                    "fixed_nDCG@10": round(mean([dev.ndcg[k][i] for i in dev.queries]), 4),
                },
                "test_fixed": _summary(fixed[k]),
                "test_adaptive": _summary(on_test),
                "nDCG@10_difference": cq.as_dict(),
                "ms_difference": {"delta": round(cc.delta, 1), "ci95": [round(cc.ci_low, 1), round(cc.ci_high, 1)]},
            }
        )
    report = {
        "dataset": str(args.dataset),
        "test_dataset": str(test_dataset),
        "reranker": {"name": args.reranker, "params": params, "model": model, "in_domain": in_domain},
        "splits": {
            "fit": f"{args.train_split}: {len(fit.queries)} queries",
            "dev": f"{args.train_split}: {len(dev.queries)} queries" + (" (= fit)" if args.dev_fraction == 0 else ""),
            "test": f"{args.test_split}: {len(test.queries)} queries",
            "seed": args.seed,
        },
        "ks": list(ks),
        "rel": args.rel,
        "cost": cost_source,
        "rows": rows,
        "comparisons": comparisons,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def plot(report: dict[str, Any], path: Path) -> Path:
    """nDCG@10 against mean cost on test: fixed k, and adaptive (λ from dev) with its 95% CI of the
    difference from fixed k drawn around the fixed-k point it was matched to."""
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, no backend switch

    fixed = [r for r in report["rows"] if r["policy"].startswith("fixed")]
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.subplots()
    ax.plot([r["mean_ms"] for r in fixed], [r["nDCG@10"] for r in fixed], "o-", label="fixed k (test)")
    for c in report["comparisons"]:
        a, q = c["test_adaptive"], c["nDCG@10_difference"]
        base = c["test_fixed"]["nDCG@10"]
        err = [[a["nDCG@10"] - (base + q["ci95"][0])], [(base + q["ci95"][1]) - a["nDCG@10"]]]
        ax.errorbar([a["mean_ms"]], [a["nDCG@10"]], yerr=err, fmt="s", color="tab:red", capsize=3)
        ax.annotate(f"k={c['fixed_k']}", (a["mean_ms"], a["nDCG@10"]), textcoords="offset points", xytext=(4, 4))
    ax.plot([], [], "s", color="tab:red", label="adaptive, λ chosen on dev (bars: 95% CI vs fixed k)")
    ax.set_xlabel("mean predicted rerank ms / query")
    ax.set_ylabel("nDCG@10")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{Path(report['test_dataset']).name} test, {report['splits']['test']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def markdown(report: dict[str, Any]) -> str:
    label = "in-domain" if report["reranker"]["in_domain"] else "zero-shot"
    s = report["splits"]
    lines = [
        f"{report['test_dataset']}: reranker {report['reranker']['name']} ({report['reranker']['model']}, {label}); "
        f"fit {s['fit']}, dev {s['dev']}, test {s['test']}; cost: {report['cost']}",
        "",
        "| policy | nDCG@10 | mean k | mean ms | p95 ms |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['policy']} | {r['nDCG@10']:.4f} | {r['mean_k']:.2f} | {r['mean_ms']:.1f} | {r['p95_ms']:.1f} |"
        for r in report["rows"]
    ]
    lines += [
        "",
        "| adaptive vs fixed k (test) | ΔnDCG@10 [95% CI] | p (Holm) | Δ mean ms [95% CI] |",
        "|---|---|---|---|",
    ]
    for c in report["comparisons"]:
        q, m = c["nDCG@10_difference"], c["ms_difference"]
        lines.append(
            f"| k={c['fixed_k']} | {q['delta']:+.4f} [{q['ci95'][0]:+.4f}, {q['ci95'][1]:+.4f}] | {q['p_holm']:.2g} "
            f"| {m['delta']:+.1f} [{m['ci95'][0]:+.1f}, {m['ci95'][1]:+.1f}] |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/scifact"), help="fit/dev data")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--train-run", type=Path, required=True, help="first-stage TREC run of the train split")
    parser.add_argument("--test-dataset", type=Path, default=None, help="default: --dataset")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--test-run", type=Path, required=True)
    parser.add_argument("--reranker", default="onnx-cross-encoder", help="a registered pointwise reranker")
    parser.add_argument("--reranker-params", default=None, help='JSON, e.g. \'{"model": "...", "threads": 2}\'')
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="candidate depths (0 is always added)")
    parser.add_argument("--dev-fraction", type=float, default=0.3, help="share of train queries held out as dev")
    parser.add_argument("--fit-queries", type=int, default=None, help="subsample: at most N fit queries")
    parser.add_argument("--dev-queries", type=int, default=None, help="subsample: at most N dev queries")
    parser.add_argument("--test-queries", type=int, default=None, help="subsample: N seeded test queries")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--rel", type=int, default=1, help="lowest relevant grade for binary measures")
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--cost-model", type=Path, default=None, help="calibrated cost model (twostage calibrate)")
    parser.add_argument("--scores-dir", type=Path, default=Path("runs/rerank-scores"))
    parser.add_argument("--out", type=Path, default=Path("runs/cost-quality"))
    args = parser.parse_args(argv)
    setup_logging(1)
    if not 0 <= args.dev_fraction < 1:
        print("cost_quality: error: --dev-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except (TwoStageError, InputError) as exc:
        print(f"cost_quality: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    text = markdown(report)
    (args.out / "cost_quality.md").write_text(text + "\n", encoding="utf-8")
    plot(report, args.out / "cost_quality.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
