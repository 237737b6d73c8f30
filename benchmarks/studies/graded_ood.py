"""The trained graded models out of their domain: LLMJudge 2024 (agreement with NIST labels, place among the 33
submitted LLM judges) and SciFact (as rerankers of BM25's top k: nDCG@10).

    python -m twostage_search.benchmarks.studies.graded_ood \\
        --llmjudge ../shared/datasets/llmjudge-2024-test \\
        --submissions ../shared/datasets/llmjudge-2024-test/baselines/llmjudge-benchmark-submissions \\
        --scifact benchmarks/data/scifact --bm25-index var/scifact-bm25 --out benchmarks/results/graded-ood.json

Both trained models (``graded``, ``graded-stacked``) are fitted on CrowdFlower (and ``graded`` also on Home Depot)
product search; nothing is tuned on these sets except where said.

- **LLMJudge** (grades 0–3, relevant = grade ≥ 2): the judges study's split (seed 13: 10 train / 5 dev / 10 test
  queries) and pair samples (``--test-pairs``, ``--dev-pairs``, up to ``--per-query`` pairs of each query). Each
  model's E[grade] is cut into 0–3 by thresholds fitted on the dev pairs (as is the zero-shot cross-encoder's
  logit), and, untuned, its L1–L4 read as 0–3. The 33 submissions are scored on the same test pairs and every
  grader is placed among them by Cohen's κ.
- **SciFact** test (binary qrels): the first ``--scifact-queries`` (by id) of a seeded sample of
  ``--scifact-sample`` test queries; BM25's top ``--depth``
  reranked by each model's E[grade] and by the zero-shot cross-encoder (the default ``onnx-cross-encoder``, title
  + abstract, 256 tokens). nDCG@10: differences against BM25 and against the cross-encoder, 95% bootstrap CIs,
  paired randomisation tests, Holm over the table's comparisons.

Scores are cached per pair under ``--cache`` (JSON lines), so reruns are cheap.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import compare, evaluate, mean
from twostage_search.benchmarks.graded import (
    GradedPair,
    GradedSet,
    agreement,
    apply_thresholds,
    candidates,
    fit_thresholds,
    load_graded,
    place,
    submission_rows,
)
from twostage_search.benchmarks.report import run_study
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Candidate, Query

log = logging.getLogger(__name__)

SEED = 13
GRADED, STACKED, CE = "graded", "graded-stacked", "ms-marco cross-encoder (zero-shot)"
SIGNALS = ("ce", "bge", "ce256")
Models = tuple[Any, Any] | None  # (graded, graded-stacked), None: only score the signals


class SignalCache:
    """Per-pair signals in a JSON-lines file, appended query by query: ``ce`` and ``bge`` (the inputs of the two
    trained models, :class:`~twostage_search.rerankers.graded_stacked.SignalScorer`) and ``ce256`` (the default
    cross-encoder's logit on title + text, 256 tokens)."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        self.threads = threads
        self.values: dict[tuple[str, str, str], float] = {}
        self._scorers: dict[str, Any] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a killed run: scored again
                    continue
                self.values[(r["signal"], r["query"], r["doc"])] = float(r["value"])

    def _score(self, signal: str, query: Query, items: Sequence[Candidate]) -> list[float]:
        if not self._scorers:
            from twostage_search.rerankers.graded_stacked import SignalScorer
            from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker

            self._scorers = {
                "signals": SignalScorer(threads=self.threads),
                "ce256": OnnxCrossEncoderReranker(threads=self.threads),
            }
        if signal == "ce256":
            return list(self._scorers["ce256"].score_candidates(query, items)[0])
        return list(self._scorers["signals"].logits(query, items, [signal])[0][signal])

    def get(self, query: Query, items: Sequence[Candidate]) -> dict[str, list[float]]:
        """Every signal of ``items`` for ``query`` (from the file, or scored and appended)."""
        out = {}
        for signal in SIGNALS:
            keys = [(signal, query.query_id, c.doc_id) for c in items]
            if any(k not in self.values for k in keys):
                values = self._score(signal, query, items)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as fh:
                    for k, v in zip(keys, values, strict=True):
                        self.values[k] = float(v)
                        record = {"signal": k[0], "query": k[1], "doc": k[2], "value": float(v)}
                        fh.write(json.dumps(record) + "\n")
            out[signal] = [self.values[k] for k in keys]
        return out


def system_scores(
    models: Models, query: Query, items: Sequence[Candidate], signals: Mapping[str, Sequence[float]]
) -> dict[str, list[float]]:
    """Each system's score of ``items``: E[grade] of the two trained models, the default cross-encoder's logit."""
    if models is None:
        return {}
    graded, stacked = models
    ce = {"ce": signals["ce"]}
    return {
        GRADED: [j.expected for j in graded.judgements(query, items, ce)],
        STACKED: [j.expected for j in stacked.judgements(query, items, {k: signals[k] for k in ("ce", "bge")})],
        CE: list(signals["ce256"]),
    }


# --------------------------------------------------------------------------------------------- LLMJudge
def pair_scores(
    data: GradedSet, pairs: Sequence[GradedPair], cache: SignalCache, models: Models
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        items = candidates(data, list(group))
        signals = cache.get(data.queries[qid], items)
        for name, values in system_scores(models, data.queries[qid], items, signals).items():
            out.setdefault(name, []).extend(values)
    return out


def llmjudge(args: argparse.Namespace, cache: SignalCache, models: Models) -> dict[str, Any]:
    data = load_graded(args.llmjudge)
    test = data.sample("test", args.test_pairs, args.per_query)
    dev = data.sample("dev", args.dev_pairs, args.per_query)
    dev_scores, test_scores = pair_scores(data, dev, cache, models), pair_scores(data, test, cache, models)
    human, dev_grades = [p.grade for p in test], [p.grade for p in dev]
    rows: list[dict[str, Any]] = []
    for name in test_scores:
        cuts = fit_thresholds(dev_scores[name], dev_grades, data.grades)
        row = {"judge": name, "rule": "thresholds fitted on LLMJudge dev pairs", "thresholds": cuts}
        labels = apply_thresholds(test_scores[name], cuts, data.grades)
        rows.append(row | agreement(human, labels, data.grades, data.cut))
        if name != CE:  # untuned: the model's E[grade] rounded into L1–L4, read as 0–3
            untuned = [min(max(round(s), 1), 4) - 1 for s in test_scores[name]]
            rule = {"judge": name, "rule": "untuned: L1–L4 as 0–3 (E[grade] rounded)"}
            rows.append(rule | agreement(human, untuned, data.grades, data.cut))
    subs = submission_rows(data, args.submissions, test)
    place(rows, subs)
    for r in (*rows, *subs):
        r.pop("confusion", None)
    return {
        "test_queries": len({p.query_id for p in test}),
        "test_pairs": len(test),
        "dev_pairs": len(dev),
        "rows": rows,
        "submissions": subs,
    }


# ---------------------------------------------------------------------------------------------- SciFact
def scifact(args: argparse.Namespace, cache: SignalCache, models: Models) -> dict[str, Any]:
    from twostage_search import indexes

    qrels = read_qrels(args.scifact / "qrels" / "test.tsv")
    everyone = sorted(
        (q for q in read_queries(find_file(args.scifact, "queries")) if q.query_id in qrels), key=lambda q: q.query_id
    )
    sample = random.Random(SEED).sample(everyone, min(args.scifact_sample, len(everyone)))
    queries = sorted(sample, key=lambda q: q.query_id)[: args.scifact_queries]
    corpus = {d.doc_id: d for d in read_corpus(find_file(args.scifact, "corpus"))}
    retriever = indexes.load(args.bm25_index).retriever()
    runs: dict[str, dict[str, list[tuple[str, float]]]] = {"BM25": {}}
    for q in queries:
        head = retriever.retrieve(q, args.depth)
        items = [Candidate(i.doc_id, i.score, corpus[i.doc_id].text, corpus[i.doc_id].title) for i in head.items]
        runs["BM25"][q.query_id] = [(c.doc_id, c.score) for c in items]
        for name, scores in system_scores(models, q, items, cache.get(q, items)).items():
            ranked = sorted(zip([c.doc_id for c in items], scores, strict=True), key=lambda r: (-r[1], r[0]))
            runs.setdefault(name, {})[q.query_id] = ranked
    ids = [q.query_id for q in queries]
    ndcg = {name: evaluate(qrels, ids, run, ["nDCG@10"])["nDCG@10"] for name, run in runs.items()}
    if models is None:
        return {"queries": len(ids)}
    pairs = [(name, base) for name in (GRADED, STACKED) for base in ("BM25", CE)] + [(CE, "BM25")]
    comparisons = compare([(ndcg[a], ndcg[b]) for a, b in pairs], seed=SEED)
    return {
        "queries": len(ids),
        "depth": args.depth,
        "ndcg@10": {name: mean(v) for name, v in ndcg.items()},
        "differences": [
            {"system": a, "baseline": b} | c.as_dict() for (a, b), c in zip(pairs, comparisons, strict=True)
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    cache = SignalCache(args.cache / "ood-signals.jsonl", args.threads)
    models: Models = None
    if not args.score_only:
        from twostage_search.rerankers.graded import GradedReranker
        from twostage_search.rerankers.graded_stacked import GradedStackedReranker

        models = (GradedReranker(threads=args.threads), GradedStackedReranker(threads=args.threads))
    if args.llmjudge is not None:
        report["llmjudge"] = llmjudge(args, cache, models)
    if args.scifact is not None:
        report["scifact"] = scifact(args, cache, models)
    report["load_after"] = os.getloadavg()[0]
    return report


def table(report: Mapping[str, Any]) -> str:
    lines = []
    if "llmjudge" in report and report["llmjudge"]["rows"]:
        part = report["llmjudge"]
        lines += [
            f"LLMJudge test ({part['test_queries']} queries, {part['test_pairs']} pairs; out of domain)",
            "| grader | rule | Acc@4 | Acc@2 | κ | κ linear | κ quadratic | rank by κ |",
            "|" + " --- |" * 8,
        ]
        for r in part["rows"]:
            lines.append(
                f"| {r['judge']} | {r['rule']} | {r['acc@4']:.3f} | {r['acc@2']:.3f} | {r['kappa']:.3f} "
                f"| {r['kappa_linear']:.3f} | {r['kappa_quadratic']:.3f} | {r['rank_by_kappa']} |"
            )
        ks = [s["kappa"] for s in part["submissions"]]
        if ks:
            lines.append(
                f"submissions: best κ {max(ks):.3f}, median {sorted(ks)[len(ks) // 2]:.3f}, worst {min(ks):.3f}"
            )
    if "scifact" in report and "differences" in report["scifact"]:
        part = report["scifact"]
        lines += [f"SciFact test ({part['queries']} queries, BM25 top {part['depth']} reranked; out of domain)"]
        lines += [f"nDCG@10 {name}: {v:.4f}" for name, v in part["ndcg@10"].items()]
        for d in part["differences"]:
            lines.append(
                f"{d['system']} − {d['baseline']}: {d['delta']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] "
                f"p {d['p']:.4f}, Holm {d['p_holm']:.4f}"
            )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.graded_ood", description=__doc__.split("\n")[0]
    )
    p.add_argument("--llmjudge", type=Path, default=None, help="the LLMJudge 2024 BEIR folder")
    p.add_argument("--submissions", type=Path, default=None, help="the folder of LLMJudge submission label files")
    p.add_argument("--test-pairs", type=int, default=400)
    p.add_argument("--dev-pairs", type=int, default=200)
    p.add_argument("--per-query", type=int, default=40)
    p.add_argument("--scifact", type=Path, default=None, help="the SciFact BEIR folder (test qrels)")
    p.add_argument("--bm25-index", type=Path, default=Path("var/scifact-bm25"))
    p.add_argument("--scifact-sample", type=int, default=100, help="test queries sampled (seeded)")
    p.add_argument("--scifact-queries", type=int, default=100, help="of those, the first N by query id")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--cache", type=Path, default=Path("var/graded"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--score-only", action="store_true", help="only fill the signal cache (no models, no report)")
    p.add_argument("--out", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    args = parser().parse_args(argv)
    if args.llmjudge is not None and args.submissions is None:
        print("error: --llmjudge needs --submissions", file=sys.stderr)
        return 2
    return run_study(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
