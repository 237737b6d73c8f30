"""LLM reranker benchmark: the LORE judge's graded-label accuracy and listwise nDCG@10.

    python -m twostage_search.benchmarks.studies.first_stage                  # writes runs/first_stage.run (top 100)
    python -m twostage_search.benchmarks.studies.llm_rerank --queries 30 --listwise-queries 20 --listwise-depth 20

**LORE judge** (LORE report's measures): for a seeded sample of test queries, every judged-relevant
document and the ``--negatives`` highest-ranked unjudged documents of the first stage (hard negatives)
are judged L1–L4. Acc@2 is agreement of "L3–L4" with the human label "relevant", Macro-F1@2 the mean F1
of the two classes, and AUC (threshold-free) ranks pairs by ``E[L]``. The cross-encoder on the same
pairs is thresholded at logit 0 (it was trained with binary cross-entropy, so 0 is probability 0.5).
SciFact's labels are binary, so Acc@4 and Macro-F1@4 (four graded levels) cannot be computed on it:
they need a graded set (e.g. Amazon ESCI's E/S/C/I labels), which does not install offline here. Note
that SciFact's unjudged documents are not certainly irrelevant.

**Listwise** (RankGPT sliding window): the first stage's top ``--listwise-depth`` of a seeded sample of
``--listwise-queries`` test queries are reranked; the rest keep first-stage order. nDCG@10 against the
first stage on the same queries, with a paired t-test, parse repairs, tokens and time per query.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import evaluate, read_run
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER
from twostage_search.engine.optional import require
from twostage_search.engine.types import Candidate, Document, Query

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settings:
    """One benchmark run (recorded in the output JSON)."""

    dataset: Path = Path("benchmarks/data/scifact")
    split: str = "test"
    run: Path = Path("runs/first_stage.run")
    out: Path = Path("runs")
    backend: str = "llama-cpp"
    model: str | None = None
    threads: int | None = 2
    seed: int = 13
    queries: int = 30  # LORE: queries sampled
    negatives: int = 3  # LORE: hard negatives per query
    lore_modes: tuple[str, ...] = ("reasoning", "label")
    domain: str = "science"
    examples: str | None = "default"  # LORE few-shot examples: the domain preset's ("default") or none
    cross_encoder: str = DEFAULT_ONNX_CROSS_ENCODER  # general (MS MARCO), zero-shot here
    listwise_queries: int = 20
    listwise_depth: int = 20
    window: int = 20
    stride: int = 10
    max_passage_tokens: int = 100
    skip: tuple[str, ...] = field(default_factory=tuple)  # "lore", "listwise", "cross-encoder"


def binary_metrics(pred: list[bool], gold: list[bool]) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean of both classes' F1; a class never predicted nor true scores 0)."""
    metrics = require("sklearn.metrics", "bench")
    acc = metrics.accuracy_score(gold, pred)
    f1 = metrics.f1_score(gold, pred, labels=[False, True], average="macro", zero_division=0)
    return {"acc@2": round(float(acc), 4), "macro_f1@2": round(float(f1), 4)}


def auc(scores: list[float], gold: list[bool]) -> float:
    """ROC AUC: the probability that a random relevant pair scores above a random non-relevant one (ties
    count ½); NaN without both classes."""
    metrics = require("sklearn.metrics", "bench")
    if len(set(gold)) < 2:
        return float("nan")
    return round(float(metrics.roc_auc_score(gold, scores)), 4)


def _candidate(doc: Document, score: float = 0.0) -> Candidate:
    return Candidate(doc.doc_id, score, doc.text, doc.title)


def _backend(s: Settings) -> Any:
    from twostage_search.rerankers.llm.backends import create_backend

    options: dict[str, Any] = {"model": s.model}
    if s.threads and s.backend in ("llama-cpp", "transformers"):
        options["threads"] = s.threads
    return create_backend(s.backend, **options)


def lore_pairs(
    s: Settings, queries: dict[str, Query], qrels: dict[str, dict[str, int]], first: dict[str, list[tuple[str, float]]]
) -> list[tuple[str, str, bool]]:
    """(query_id, doc_id, relevant) pairs: judged positives + the top unjudged first-stage documents."""
    rng = random.Random(s.seed)
    chosen = sorted(rng.sample(sorted(queries), min(s.queries, len(queries))))
    pairs = []
    for qid in chosen:
        relevant = {d for d, r in qrels[qid].items() if r > 0}
        pairs += [(qid, d, True) for d in sorted(relevant)]
        negatives = [d for d, _ in first[qid] if d not in relevant][: s.negatives]
        pairs += [(qid, d, False) for d in negatives]
    return pairs


def run_lore(
    s: Settings,
    backend: Any,
    pairs: list[tuple[str, str, bool]],
    queries: dict[str, Query],
    corpus: dict[str, Document],
) -> list[dict[str, Any]]:
    from twostage_search.rerankers.llm.lore import LoreReranker

    rows = []
    gold = [rel for _, _, rel in pairs]
    by_query: dict[str, list[str]] = defaultdict(list)
    for qid, d, _ in pairs:
        by_query[qid].append(d)
    for mode in s.lore_modes:
        judge = LoreReranker(backend, domain=s.domain, examples=s.examples, reasoning=mode == "reasoning")
        judgements = {}
        started = time.perf_counter()
        tokens_in = tokens_out = 0
        sources: dict[str, int] = defaultdict(int)
        for qid, doc_ids in by_query.items():
            for j in judge.judge(queries[qid], [_candidate(corpus[d]) for d in doc_ids]):
                judgements[(qid, j.doc_id)] = j
                tokens_in += j.tokens_in
                tokens_out += j.tokens_out
                sources[j.source] += 1
        seconds = time.perf_counter() - started
        labels = [judgements[(q, d)].label for q, d, _ in pairs]
        expected = [judgements[(q, d)].expected for q, d, _ in pairs]
        histogram = {f"L{i}": labels.count(i) for i in (1, 2, 3, 4)}
        histogram["none"] = labels.count(None)
        rows.append(
            {
                "system": f"LORE ({mode})",
                **binary_metrics([(lab or 0) >= 3 for lab in labels], gold),
                "auc": auc(expected, gold),
                "acc@4": None,
                "macro_f1@4": None,
                "labels": histogram,
                "label_sources": dict(sources),
                "ms_per_pair": round(1000 * seconds / len(pairs), 1),
                "tokens_in_per_pair": round(tokens_in / len(pairs), 1),
                "tokens_out_per_pair": round(tokens_out / len(pairs), 1),
            }
        )
        log.info("%s", rows[-1])
    return rows


def run_cross_encoder(
    s: Settings, pairs: list[tuple[str, str, bool]], queries: dict[str, Query], corpus: dict[str, Document]
) -> dict[str, Any]:
    from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker

    ce = OnnxCrossEncoderReranker(s.cross_encoder, threads=s.threads)
    started = time.perf_counter()
    scores = [ce.score(queries[q].text, [corpus[d].full_text])[0] for q, d, _ in pairs]
    seconds = time.perf_counter() - started
    gold = [rel for _, _, rel in pairs]
    return {
        "system": "cross-encoder (logit > 0)",
        **binary_metrics([x > 0 for x in scores], gold),
        "auc": auc(scores, gold),
        "ms_per_pair": round(1000 * seconds / len(pairs), 1),
    }


def ndcg10(qrels: dict[str, dict[str, int]], rankings: dict[str, list[str]]) -> dict[str, float]:
    """Per-query nDCG@10 of ranked doc-id lists (the shared rules of :mod:`benchmarks.evaluation`)."""
    ids = list(rankings)
    return dict(zip(ids, evaluate(qrels, ids, rankings, ["nDCG@10"])["nDCG@10"], strict=True))


def run_listwise(
    s: Settings,
    backend: Any,
    queries: dict[str, Query],
    qrels: dict[str, dict[str, int]],
    first: dict[str, list[tuple[str, float]]],
    corpus: dict[str, Document],
) -> list[dict[str, Any]]:
    from scipy import stats

    from twostage_search.rerankers.llm.listwise import ListwiseLLMReranker

    rng = random.Random(s.seed + 1)
    chosen = sorted(rng.sample(sorted(queries), min(s.listwise_queries, len(queries))))
    reranker = ListwiseLLMReranker(backend, window=s.window, stride=s.stride, max_passage_tokens=s.max_passage_tokens)
    base = {q: [d for d, _ in first[q]] for q in chosen}
    reranked: dict[str, list[str]] = {}
    ms: list[float] = []
    repairs: dict[str, int] = defaultdict(int)
    tokens_in = tokens_out = 0
    for qid in chosen:
        head = [_candidate(corpus[d], score) for d, score in first[qid][: s.listwise_depth]]
        result = reranker.rerank_explained(queries[qid], head)
        reranked[qid] = result.ranking.doc_ids + base[qid][s.listwise_depth :]
        ms.append(result.cost.wall_ms)
        tokens_in += result.cost.tokens_in
        tokens_out += result.cost.tokens_out
        for k, v in result.repairs.items():
            repairs[k] += v
        log.info("listwise %s: %.0f ms, repairs %s", qid, result.cost.wall_ms, result.repairs)
    before, after = ndcg10(qrels, base), ndcg10(qrels, reranked)
    b, a = [before[q] for q in chosen], [after[q] for q in chosen]
    t = stats.ttest_rel(a, b)
    return [
        {"system": f"first stage ({s.run.name})", "queries": len(chosen), "nDCG@10": round(statistics.fmean(b), 4)},
        {
            "system": f"+ listwise LLM @{s.listwise_depth} (window {s.window}, stride {s.stride})",
            "queries": len(chosen),
            "nDCG@10": round(statistics.fmean(a), 4),
            "delta_nDCG@10": round(statistics.fmean(a) - statistics.fmean(b), 4),
            "p_value": float(f"{t.pvalue:.3g}") if t.pvalue == t.pvalue else None,
            "repairs": dict(repairs),
            "ms_per_query_mean": round(statistics.fmean(ms), 1),
            "tokens_in_per_query": round(tokens_in / len(chosen), 1),
            "tokens_out_per_query": round(tokens_out / len(chosen), 1),
        },
    ]


def run(s: Settings) -> dict[str, Any]:
    qrels = read_qrels(s.dataset / "qrels" / f"{s.split}.tsv")
    queries = {q.query_id: q for q in read_queries(find_file(s.dataset, "queries")) if q.query_id in qrels}
    first = read_run(s.run)
    missing = set(queries) - set(first)
    if missing:
        raise InputError(f"{s.run} has no ranking for {len(missing)} queries of the {s.split} split")
    corpus = {d.doc_id: d for d in read_corpus(find_file(s.dataset, "corpus"))}
    report: dict[str, Any] = {"settings": {k: str(v) for k, v in asdict(s).items()}}
    backend = _backend(s) if {"lore", "listwise"} - set(s.skip) else None
    report["model"] = getattr(backend, "model", None)
    pairs = lore_pairs(s, queries, qrels, first)
    judge_rows: list[dict[str, Any]] = []
    if "lore" not in s.skip:
        judge_rows += run_lore(s, backend, pairs, queries, corpus)
    if "cross-encoder" not in s.skip:
        judge_rows.append(run_cross_encoder(s, pairs, queries, corpus))
    report["judge"] = {
        "pairs": len(pairs),
        "relevant": sum(rel for _, _, rel in pairs),
        "queries": len({q for q, _, _ in pairs}),
        "rows": judge_rows,
    }
    if "listwise" not in s.skip:
        report["listwise"] = run_listwise(s, backend, queries, qrels, first, corpus)
    report["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "llm_rerank.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Settings()
    parser.add_argument("--dataset", type=Path, default=d.dataset)
    parser.add_argument("--split", default=d.split)
    parser.add_argument("--run", type=Path, default=d.run, help="first-stage TREC run")
    parser.add_argument("--out", type=Path, default=d.out)
    parser.add_argument("--backend", default=d.backend, help="LLM backend (llama-cpp, transformers, vllm, openai)")
    parser.add_argument("--model", default=d.model, help="model for the backend (default: the bundled LLM)")
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--queries", type=int, default=d.queries, help="LORE: queries sampled")
    parser.add_argument("--negatives", type=int, default=d.negatives, help="LORE: hard negatives per query")
    parser.add_argument("--lore-modes", nargs="+", default=list(d.lore_modes), choices=["reasoning", "label"])
    parser.add_argument("--domain", default=d.domain, help="LORE rules preset or domain description")
    parser.add_argument("--no-examples", dest="examples", action="store_const", const=None, default="default")
    parser.add_argument("--listwise-queries", type=int, default=d.listwise_queries)
    parser.add_argument("--listwise-depth", type=int, default=d.listwise_depth)
    parser.add_argument("--window", type=int, default=d.window)
    parser.add_argument("--stride", type=int, default=d.stride)
    parser.add_argument("--max-passage-tokens", type=int, default=d.max_passage_tokens)
    parser.add_argument("--skip", nargs="*", default=[], choices=["lore", "listwise", "cross-encoder"])
    args = parser.parse_args(argv)
    settings = Settings(
        **{k: v for k, v in vars(args).items() if k not in ("lore_modes", "skip")},
        lore_modes=tuple(args.lore_modes),
        skip=tuple(args.skip),
    )
    setup_logging(1)
    try:
        report = run(settings)
    except TwoStageError as exc:
        print(f"llm_rerank: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    for row in report["judge"]["rows"]:
        print(json.dumps(row))
    for row in report.get("listwise", []):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
