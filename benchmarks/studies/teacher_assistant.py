"""Teacher → assistant, measured: an LLM judge's labels train a cross-encoder, scored on held-out queries.

    python -m twostage_search.benchmarks.studies.teacher_assistant \\
        --dataset ../shared/datasets/crowdflower-search-relevance \\
        --train-pairs 160 --dev-pairs 150 --test-pairs 120 --epochs 2

The LLMDistill4Ads / LORE loop on a graded set, CPU-sized:

1. The queries are split once (seeded, see :mod:`.graded`): ``train`` 40% / ``dev`` 20% / ``test`` 40%.
   A cluster sample (up to ``--per-query`` pairs of each query, queries in seeded order) is drawn from each.
2. The teacher — the LORE judge on the bundled Qwen2.5-Coder-0.5B (llama.cpp), label-only mode — labels the
   train pairs; its expected label ``E[L]`` is the training target. Judgements come from (and go to) the
   ``--judgements`` store shared with :mod:`.judges`, so the judge evaluation's test labels are reused.
3. Two assistants are fine-tuned from the same base cross-encoder with the Pearson loss (1 − r per batch):
   one on the teacher's ``E[L]``, one on the human grades of the same pairs.
4. On the test pairs: each assistant (grades by thresholds fitted on the dev pairs' human grades), the
   untrained base (same thresholding) and the teacher are scored against the human grades; the assistants'
   agreement with the teacher (κ on grades, Pearson on scores) is reported.
5. Cost: the teacher and the assistant judge the same ``--timing-pairs`` test pairs, interleaved query by
   query in this process (no cache), and the pairs/s ratio is reported beside the load average.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
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
)
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.studies.judges import (
    JudgementStore,
    ce_scores,
    lore_grades,
    lore_judge,
    run_lore,
)
from twostage_search.benchmarks.studies.judges import parser as judges_parser
from twostage_search.engine.errors import InputError
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.models import SCIFACT_CROSS_ENCODER
from twostage_search.engine.optional import require

log = logging.getLogger(__name__)


def passage(dataset: GradedSet, doc_id: str) -> str:
    doc = dataset.corpus[doc_id]
    return f"{doc.title} {doc.text}".strip() if doc.title else doc.text


def assistant_row(
    name: str, model: Any, dataset: GradedSet, dev: Sequence[GradedPair], test: Sequence[GradedPair], teacher: Any
) -> dict[str, Any]:
    """One cross-encoder as a graded judge (dev thresholds), against humans and against the teacher."""
    scipy_stats = require("scipy.stats", "bench")
    dev_scores, _ = ce_scores(model, dataset, dev)
    thresholds = fit_thresholds(dev_scores, [p.grade for p in dev], dataset.grades)
    scores, wall = ce_scores(model, dataset, test)
    grades = apply_thresholds(scores, thresholds, dataset.grades)
    row: dict[str, Any] = {"judge": name, "thresholds_on_dev": thresholds}
    row |= agreement([p.grade for p in test], grades, dataset.grades, dataset.cut)
    row["vs_teacher"] = {
        "kappa": agreement(teacher["grades"], grades, dataset.grades, dataset.cut)["kappa"],
        "acc": sum(a == b for a, b in zip(teacher["grades"], grades, strict=True)) / len(grades),
        "pearson_scores": float(scipy_stats.pearsonr(teacher["expected"], scores)[0]),
    }
    row["ms_per_pair_scoring_test"] = wall * 1000 / len(test)
    return row


def timing(dataset: GradedSet, pairs: Sequence[GradedPair], judge: Any, assistant: Any) -> dict[str, float]:
    """Teacher vs assistant on the same pairs, interleaved query by query, in this process."""
    from itertools import groupby

    llm_s = ce_s = 0.0
    n = 0
    load = []
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        cands = candidates(dataset, list(group))
        query = dataset.queries[qid]
        started = time.perf_counter()
        judge.judge(query, cands)
        llm_s += time.perf_counter() - started
        started = time.perf_counter()
        assistant.score_candidates(query, cands)
        ce_s += time.perf_counter() - started
        n += len(cands)
        load.append(os.getloadavg()[0])
    return {
        "pairs": n,
        "teacher_pairs_per_s": n / llm_s,
        "assistant_pairs_per_s": n / ce_s,
        "assistant_over_teacher": llm_s / ce_s,
        "load_avg_1min": sum(load) / len(load),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.rerankers.cross_encoder import CrossEncoderReranker
    from twostage_search.rerankers.training import Pair, TrainConfig, train_cross_encoder

    dataset = load_graded(args.dataset)
    train = dataset.sample("train", args.train_pairs, args.per_query)
    dev = dataset.sample("dev", args.dev_pairs, args.per_query)
    test = dataset.sample("test", args.test_pairs, args.per_query)
    jargs = judges_parser().parse_args(["--dataset", str(args.dataset), "--threads", str(args.threads)])
    judge = lore_judge(jargs)
    store = JudgementStore(args.judgements[0])  # new judgements are appended to the first file
    for extra in args.judgements[1:]:
        store.rows.update(JudgementStore(extra).rows)
    if args.only_judged:  # use the sampled pairs the teacher has already judged (a stopped labelling run)
        train = [p for p in train if store.get(judge.prompt_id, p.query_id, p.doc_id) is not None]
        test = [p for p in test if store.get(judge.prompt_id, p.query_id, p.doc_id) is not None]
        if not train or not test:
            raise InputError("--only-judged: no sampled train or test pair is in the judgement stores")
    taught, spent = run_lore(dataset, train, judge, store)
    log.info("teacher labelled %d train pairs (%.0fs new)", len(train), spent)
    held, _ = run_lore(dataset, test, judge, store)
    teacher: dict[str, Any] = {"grades": lore_grades(dataset, held), "expected": [float(r["expected"]) for r in held]}
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "split": {k: len(v) for k, v in dataset.splits.items()} | {"seed": 13},
        "pairs": {"train": len(train), "dev": len(dev), "test": len(test), "per_query": args.per_query},
        "only_judged": args.only_judged,
        "teacher": f"lore label-only, {judge.prompt_id}, target E[L]",
        "base": args.base,
        "train_config": {"epochs": args.epochs, "batch_size": 16, "max_length": args.max_length, "loss": "pearson"},
        "load_before": os.getloadavg()[0],
    }
    human_test = [p.grade for p in test]
    teacher_row: dict[str, Any] = {"judge": "teacher (LORE, zero-shot)"}
    teacher_row |= agreement(human_test, teacher["grades"], dataset.grades, dataset.cut)
    rows = [teacher_row]
    report["teacher_train_label_counts"] = {str(g): lore_grades(dataset, taught).count(g) for g in dataset.grades}
    targets = {
        "assistant (CE trained on teacher E[L])": [float(r["expected"]) for r in taught],
        "CE trained on human grades": [float(p.grade) for p in train],
    }
    models: dict[str, Any] = {}
    for name, labels in targets.items():
        pairs = [
            Pair(dataset.queries[p.query_id].text, passage(dataset, p.doc_id), y)
            for p, y in zip(train, labels, strict=True)
        ]
        out = args.work / ("teacher" if "teacher" in name else "human")
        config = TrainConfig(base_model=args.base, epochs=args.epochs, max_length=args.max_length, loss="pearson")
        started = time.perf_counter()
        train_cross_encoder(pairs, out, config)
        report.setdefault("train_seconds", {})[name] = time.perf_counter() - started
        models[name] = CrossEncoderReranker(str(out), threads=args.threads, max_length=args.max_length)
    models["base CE, untrained here"] = CrossEncoderReranker(
        args.base, threads=args.threads, max_length=args.max_length
    )
    for name, model in models.items():
        rows.append(assistant_row(name, model, dataset, dev, test, teacher))
    report["rows"] = rows
    assistant = models["assistant (CE trained on teacher E[L])"]
    if args.timing_pairs:
        from twostage_search.rerankers.llm.lore import JudgementCache

        judge.cache = JudgementCache(0)
        report["cost"] = timing(dataset, test[: args.timing_pairs], judge, assistant)
    report["load_after"] = os.getloadavg()[0]
    return report


def table(report: dict[str, Any]) -> str:
    k = len(next(iter(report["rows"]))["confusion"])
    lines = [
        f"{report['dataset']}: {report['pairs']}; load {report['load_before']:.2f} → {report['load_after']:.2f}",
        f"| judge | Acc@{k} | Acc@2 | Macro-F1@{k} | κ | κ linear | κ vs teacher | r vs teacher E[L] |",
        "|" + " --- |" * 8,
    ]
    for r in report["rows"]:
        vt = r.get("vs_teacher", {})
        lines.append(
            f"| {r['judge']} | {r[f'acc@{k}']:.3f} | {r['acc@2']:.3f} | {r[f'macro_f1@{k}']:.3f} | {r['kappa']:.3f} "
            f"| {r['kappa_linear']:.3f} | {vt.get('kappa', float('nan')):.3f} "
            f"| {vt.get('pearson_scores', float('nan')):.3f} |"
        )
    if "cost" in report:
        c = report["cost"]
        lines.append(
            f"cost on {c['pairs']} test pairs, interleaved: teacher {c['teacher_pairs_per_s']:.3f} pairs/s, "
            f"assistant {c['assistant_pairs_per_s']:.2f} pairs/s (×{c['assistant_over_teacher']:.0f}); "
            f"load {c['load_avg_1min']:.1f}"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.teacher_assistant", description=__doc__.split("\n")[0]
    )
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--train-pairs", type=int, default=160)
    p.add_argument("--dev-pairs", type=int, default=150)
    p.add_argument("--test-pairs", type=int, default=120)
    p.add_argument("--per-query", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--base", default=SCIFACT_CROSS_ENCODER, help="cross-encoder both assistants start from")
    p.add_argument(
        "--judgements", type=Path, nargs="+", default=[Path("runs/lore-crowdflower.jsonl")], help="LORE stores to read"
    )
    p.add_argument("--work", type=Path, default=Path("runs/teacher-assistant"), help="where the assistants are saved")
    p.add_argument("--only-judged", action="store_true", help="keep only sampled pairs the stores hold")
    p.add_argument("--timing-pairs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    args = parser().parse_args(argv)
    return run_study(args, run, table)


if __name__ == "__main__":
    raise SystemExit(main())
