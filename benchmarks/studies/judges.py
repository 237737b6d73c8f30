"""Graded judge evaluation: a relevance judge's labels against human grades, with its cost per pair.

    python -m twostage_search.benchmarks.studies.judges --dataset ../shared/datasets/crowdflower-search-relevance \\
        --judge lore --judge cross-encoder --test-pairs 200 --dev-pairs 300
    python -m twostage_search.benchmarks.studies.judges --dataset ../shared/datasets/llmjudge-2024-test \\
        --judge lore --judge cross-encoder --submissions \\
        ../shared/datasets/llmjudge-2024-test/baselines/llmjudge-benchmark-submissions

Judges:

- ``lore``: the LORE judge (:class:`~twostage_search.rerankers.llm.lore.LoreReranker`) on any registered
  LLM backend (``--backend``, ``--backend-option k=v``); its L1–L4 map onto the set's four grades in order.
  Zero-shot: nothing is tuned. Judgements are kept in ``--judgements`` (JSONL) so reruns and the
  distillation benchmark reuse them.
- ``cross-encoder``: a cross-encoder's logits (``--ce-model``) turned into grades by K−1 thresholds
  fitted on the ``dev`` split's pairs (:func:`~twostage_search.benchmarks.graded.fit_thresholds`).
- ``--submissions DIR``: label files (``qid 0 docid label``), e.g. LLMJudge's 33 submitted judges; our
  judges are placed among them by Cohen's κ on the same test pairs.

Every judge is scored on one seeded sample of ``--test-pairs`` pairs of the ``test`` queries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

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
from twostage_search.engine.errors import InputError
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.models import SCIFACT_CROSS_ENCODER

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- LORE
class JudgementStore:
    """LORE judgements on disk (one JSON line each), keyed by the judge's prompt id, query and document."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[(row["prompt_id"], row["query_id"], row["doc_id"])] = row

    def get(self, prompt_id: str, query_id: str, doc_id: str) -> dict[str, Any] | None:
        return self.rows.get((prompt_id, query_id, doc_id))

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self.rows[(row["prompt_id"], row["query_id"], row["doc_id"])] = row
        if self.path is not None and rows:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:  # append-only: a killed run keeps what it judged
                fh.writelines(json.dumps(r) + "\n" for r in rows)


def lore_judge(args: argparse.Namespace) -> Any:
    from twostage_search.rerankers.llm.lore import JudgementCache, LoreReranker

    options: dict[str, Any] = {}
    for item in args.backend_option:
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value[:1] in "0123456789[{tfn-" else value
    if args.backend == "llama-cpp":
        options.setdefault("threads", args.threads)
    return LoreReranker(
        args.backend,
        domain=args.domain,
        examples=args.examples,
        cache=JudgementCache(0),
        backend_options=options,
    )


def run_lore(
    dataset: GradedSet, pairs: Sequence[GradedPair], judge: Any, store: JudgementStore
) -> tuple[list[dict[str, Any]], float]:
    """LORE's judgement rows for ``pairs`` (from the store, else judged now, query by query); wall s spent."""
    from twostage_search.rerankers.llm.lore import NEUTRAL

    spent = 0.0
    rows: list[dict[str, Any]] = []
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        todo = [p for p in group]
        missing = [p for p in todo if store.get(judge.prompt_id, qid, p.doc_id) is None]
        if missing:
            started = time.perf_counter()
            judgements = judge.judge(dataset.queries[qid], candidates(dataset, missing))
            wall = time.perf_counter() - started
            spent += wall
            store.add(
                [
                    {
                        "prompt_id": judge.prompt_id,
                        "query_id": qid,
                        "doc_id": j.doc_id,
                        "label": j.label,
                        "expected": j.expected,
                        "probs": j.probs,
                        "source": j.source,
                        "ms": wall * 1000 / len(missing),
                        "tokens_in": j.tokens_in,
                        "tokens_out": j.tokens_out,
                        "load": os.getloadavg()[0],
                    }
                    for j in judgements
                ]
            )
            log.info("%s: judged %d pairs in %.1fs", qid, len(missing), wall)
        for p in todo:
            row = store.get(judge.prompt_id, qid, p.doc_id)
            assert row is not None
            rows.append(row if row["label"] is not None else {**row, "label": round(NEUTRAL)})
    return rows, spent


def lore_grades(dataset: GradedSet, rows: Sequence[dict[str, Any]]) -> list[int]:
    """L1–L4 onto the set's K grades, in order (K = 4: L1 → the lowest grade … L4 → the highest)."""
    k = len(dataset.grades)
    return [dataset.grades[round((int(r["label"]) - 1) * (k - 1) / 3)] for r in rows]


def cost_row(ms: Sequence[float], tokens_in: Sequence[int], tokens_out: Sequence[int]) -> dict[str, float]:
    n = max(len(ms), 1)
    return {
        "ms_per_pair": sum(ms) / n,
        "pairs_per_s": 1000 * n / max(sum(ms), 1e-9),
        "tokens_in_per_pair": sum(tokens_in) / n,
        "tokens_out_per_pair": sum(tokens_out) / n,
    }


# ------------------------------------------------------------------------------------- cross-encoder
def ce_scores(model: Any, dataset: GradedSet, pairs: Sequence[GradedPair]) -> tuple[list[float], float]:
    """Cross-encoder logits for ``pairs`` (query by query) and the wall seconds spent."""
    scores: list[float] = []
    started = time.perf_counter()
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        scores += model.score_candidates(dataset.queries[qid], candidates(dataset, list(group)))[0]
    return scores, time.perf_counter() - started


def ce_judge_row(
    model: Any, name: str, dataset: GradedSet, dev: Sequence[GradedPair], test: Sequence[GradedPair]
) -> dict[str, Any]:
    """A cross-encoder turned into a graded judge by thresholds fitted on ``dev``, scored on ``test``."""
    dev_scores, _ = ce_scores(model, dataset, dev)
    thresholds = fit_thresholds(dev_scores, [p.grade for p in dev], dataset.grades)
    scores, wall = ce_scores(model, dataset, test)
    grades = apply_thresholds(scores, thresholds, dataset.grades)
    row: dict[str, Any] = {"judge": name, "kind": "cross-encoder, thresholds on dev", "thresholds": thresholds}
    row |= agreement([p.grade for p in test], grades, dataset.grades, dataset.cut)
    row |= {"ms_per_pair": wall * 1000 / len(test), "pairs_per_s": len(test) / wall}
    row["scores"] = scores
    return row


# ------------------------------------------------------------------------------------------ the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    dataset = load_graded(args.dataset, cut=args.cut)
    test = dataset.sample("test", args.test_pairs, args.per_query)
    if args.only_judged:  # score every judge on the sampled pairs LORE has already judged (a stopped run)
        stored = JudgementStore(args.judgements)
        prompt_id = lore_judge(args).prompt_id
        test = [p for p in test if stored.get(prompt_id, p.query_id, p.doc_id) is not None]
        if not test:
            raise InputError("--only-judged: no sampled test pair is in the judgement store")
    dev = dataset.sample("dev", args.dev_pairs, args.per_query)
    human = [p.grade for p in test]
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "grades": list(dataset.grades),
        "cut": f"relevant = grade ≥ {dataset.cut}",
        "split": {k: len(v) for k, v in dataset.splits.items()} | {"seed": 13, "rule": "seeded shuffle of sorted ids"},
        "test_queries": sorted({p.query_id for p in test}),
        "test_pairs": len(test),
        "only_judged": args.only_judged,
        "dev_pairs": len(dev),
        "human_grade_counts": {str(g): human.count(g) for g in dataset.grades},
        "load_before": os.getloadavg()[0],
        "judges": [],
    }
    rows: list[dict[str, Any]] = report["judges"]
    for name in args.judge:
        if name == "lore":
            judge = lore_judge(args)
            store = JudgementStore(args.judgements)
            judged, _ = run_lore(dataset, test, judge, store)
            row: dict[str, Any] = {"judge": f"lore ({args.backend}, {judge.prompt_id})", "kind": "LLM judge, zero-shot"}
            row |= agreement(human, lore_grades(dataset, judged), dataset.grades, dataset.cut)
            row |= cost_row(
                [r["ms"] for r in judged], [r["tokens_in"] for r in judged], [r["tokens_out"] for r in judged]
            )
            row["sources"] = {s: sum(1 for r in judged if r["source"] == s) for s in {r["source"] for r in judged}}
            row["load_while_judging"] = sum(r.get("load", 0.0) for r in judged) / len(judged)
            rows.append(row)
        elif name == "cross-encoder":
            from twostage_search.rerankers.cross_encoder import CrossEncoderReranker

            model = CrossEncoderReranker(args.ce_model, threads=args.threads, max_length=args.ce_max_length)
            row = ce_judge_row(model, f"cross-encoder ({args.ce_model})", dataset, dev, test)
            row.pop("scores")
            rows.append(row)
        else:
            raise InputError(f"unknown judge {name!r} (lore, cross-encoder)")
    if args.submissions is not None:
        subs = submission_rows(dataset, args.submissions, test, all_pairs=True)
        place(rows, subs)
        report["submissions"] = subs
    report["load_after"] = os.getloadavg()[0]
    return report


def table(report: dict[str, Any]) -> str:
    k = len(report["grades"])
    head = f"| judge | Acc@{k} | Acc@2 | Macro-F1@{k} | κ | κ linear | pairs/s | rank by κ |"
    lines = [
        f"{report['dataset']}: {report['test_pairs']} test pairs ({report['cut']}); load {report['load_before']:.2f}",
        head,
        "|" + " --- |" * 8,
    ]
    subs = report.get("submissions", [])
    shown = list(report["judges"]) + subs[:3] + ([subs[len(subs) // 2]] if subs else []) + subs[-1:]
    for r in shown:
        speed = f"{r['pairs_per_s']:.2f}" if "pairs_per_s" in r else ""
        lines.append(
            f"| {r['judge']} | {r[f'acc@{k}']:.3f} | {r['acc@2']:.3f} | {r[f'macro_f1@{k}']:.3f} | {r['kappa']:.3f} "
            f"| {r['kappa_linear']:.3f} | {speed} | {r.get('rank_by_kappa', '')} |"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.judges", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dataset", type=Path, required=True, help="graded BEIR folder (qrels/test.tsv holds the grades)")
    p.add_argument("--judge", action="append", default=[], help="lore | cross-encoder (repeatable)")
    p.add_argument("--test-pairs", type=int, default=200, help="seeded sample of test-split pairs (default 200)")
    p.add_argument("--per-query", type=int, default=10, help="at most this many sampled pairs per query")
    p.add_argument("--dev-pairs", type=int, default=300, help="seeded sample of dev-split pairs for thresholds")
    p.add_argument("--cut", type=int, default=None, help="relevant = grade ≥ cut (default: per scale)")
    p.add_argument("--submissions", type=Path, default=None, help="folder of label files to rank against")
    p.add_argument("--backend", default="llama-cpp", help="LLM backend for lore (registered name)")
    p.add_argument("--backend-option", action="append", default=[], metavar="K=V")
    p.add_argument("--domain", default="e-commerce", help="LORE domain preset or description")
    p.add_argument("--examples", default=None, help="LORE few-shot examples: 'default' or a preset name")
    p.add_argument("--judgements", type=Path, default=None, help="JSONL store of LORE judgements (reused)")
    p.add_argument(
        "--only-judged", action="store_true", help="restrict the test sample to pairs in --judgements (all judges)"
    )
    p.add_argument("--ce-model", default=SCIFACT_CROSS_ENCODER)
    p.add_argument("--ce-max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    args = parser().parse_args(argv)
    if not args.judge and args.submissions is None:
        print("error: give --judge and/or --submissions", file=sys.stderr)
        return 2
    return run_study(args, run, table)


if __name__ == "__main__":
    raise SystemExit(main())
