"""Stack the fine-tuned cross-encoder's logit with other signals in an ordinal model, chosen on CrowdFlower dev.

    python -m twostage_search.benchmarks.studies.graded_ce_stack \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --logits var/gradedce --signals var/gradedce/signals --out benchmarks/results/graded-ce-stack.json

``--logits`` holds the fine-tuned model's logits that ``graded_ce`` wrote (``ft-logits-crowdflower-{dev,test}.tsv``);
``--signals`` the zero-shot signal caches of ``graded_stacked`` (``ce``, ``ce_text``, ``bge``). The fine-tuned
logit of a training pair was fitted to its grade, so a stacker fitted on train would over-trust it: every
stacker here is fitted on the dev queries only, and feature sets are compared by quadratic κ of out-of-fold
E[grade] over ``--folds`` query-level folds of dev (E[grade] cut at thresholds matching the dev grade mix). The
features: the fine-tuned ``logit`` and its values relative to the query's other candidates, lexical features
(what the ``graded-ce`` reranker computes by itself), the zero-shot cross-encoder logits ``ce`` / ``ce_text``,
the ``graded`` ordinal model's and the ``graded-stacked`` trees' E[grade]. The set chosen on dev is refitted on
all of dev and scored once on test beside the shipped one-feature model; ``--save`` writes it as the graded-ce
``model.json`` (its delta: the shipped model's) when it beats the shipped model on dev.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.graded import GradedSet, agreement, apply_thresholds, candidates, fit_thresholds
from twostage_search.benchmarks.graded_data import LogitCache, fill, load_split_set, open_caches, stacked_rows
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.studies.graded_model import bootstrap_kappa_diff
from twostage_search.engine.logs import setup_logging
from twostage_search.rerankers.graded import LEXICAL, MATCH, RELATIVE, load_graded_model, pair_features
from twostage_search.rerankers.graded_ce import FEATURE, STACKED_FEATURES, load_graded_ce_model
from twostage_search.rerankers.graded_stacked import load_stacked_model
from twostage_search.rerankers.ordinal import OrdinalModel, fit_ordinal

log = logging.getLogger(__name__)

REL = tuple(f"{FEATURE}{s}" for s in RELATIVE)
CE = tuple(f"ce{s}" for s in ("", *RELATIVE))
CE_TEXT = tuple(f"ce_text{s}" for s in ("", *RELATIVE))
SETS: dict[str, tuple[str, ...]] = {
    "logit": (FEATURE,),
    "logit+relative": (FEATURE, *REL),
    "logit+lexical": (FEATURE, *LEXICAL, *MATCH),
    "logit+relative+lexical": (FEATURE, *REL, *LEXICAL, *MATCH),
    "logit+graded": (FEATURE, "graded"),
    "logit+stacked": (FEATURE, "stacked"),
    "logit+relative+stacked": (FEATURE, *REL, "stacked"),
    "logit+relative+lexical+ce+ce_text": (FEATURE, *REL, *LEXICAL, *MATCH, *CE, *CE_TEXT),
    "logit+relative+lexical+ce+ce_text+stacked": (FEATURE, *REL, *LEXICAL, *MATCH, *CE, *CE_TEXT, "stacked"),
}


def feature_rows(
    data: GradedSet, split: str, ft: LogitCache, signals: Any, graded: Any, stacked: Any
) -> list[dict[str, float]]:
    """Every pair's features: the stacked model's rows (with ``graded``), its E[grade] (``stacked``), the logit's."""
    pairs = data.pairs(split)
    rows = stacked_rows(data, pairs, signals, graded)
    e = stacked.expected(stacked.matrix(rows))
    out: list[dict[str, float]] = []
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        todo = list(group)
        logit = [ft.values[(qid, p.doc_id)] for p in todo]
        out += pair_features(data.queries[qid].text, candidates(data, todo), {FEATURE: logit})
    return [r | s | {"stacked": float(v)} for r, s, v in zip(rows, out, e, strict=True)]


def folds(pairs: Sequence[Any], k: int, seed: int = 13) -> np.ndarray:
    """A fold number per pair: the sorted query ids shuffled (seeded) and dealt round-robin into ``k`` folds."""
    queries = sorted({p.query_id for p in pairs})
    order = np.random.default_rng(seed).permutation(len(queries))
    fold = {queries[i]: n % k for n, i in enumerate(order)}
    return np.array([fold[p.query_id] for p in pairs])


def fit(
    names: Sequence[str], rows: Sequence[Mapping[str, float]], grades: Sequence[int], scale: Sequence[int]
) -> OrdinalModel:
    x = np.array([[r[n] for n in names] for r in rows], dtype=np.float64)
    model = fit_ordinal(tuple(names), x, grades, scale)
    cuts = fit_thresholds([float(v) for v in model.expected(x)], list(grades), scale)
    return model.with_grade_cuts(cuts)


def cv_kappa(
    names: Sequence[str], rows: Sequence[dict[str, float]], pairs: Sequence[Any], data: GradedSet, k: int
) -> float:
    """Quadratic κ of out-of-fold E[grade] on dev, cut at thresholds matching the dev grade mix."""
    grades = [p.grade for p in pairs]
    fold = folds(pairs, k)
    expected = np.zeros(len(rows))
    for f in range(k):
        train = [i for i in range(len(rows)) if fold[i] != f]
        held = [i for i in range(len(rows)) if fold[i] == f]
        model = fit(names, [rows[i] for i in train], [grades[i] for i in train], data.grades)
        expected[held] = model.expected(model.matrix([rows[i] for i in held]))
    values = [float(v) for v in expected]
    labels = apply_thresholds(values, fit_thresholds(values, grades, data.grades), data.grades)
    return float(agreement(grades, labels, data.grades, data.cut)["kappa_quadratic"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    cf = load_split_set(args.crowdflower)
    signals = open_caches(args.signals, "crowdflower", ("ce", "ce_text", "bge"))
    if args.fill:  # score the pairs the caches lack with the stacked model's own scorer
        from twostage_search.rerankers.graded_stacked import SignalScorer

        fill(cf, [*cf.pairs("dev"), *cf.pairs("test")], signals, SignalScorer(threads=args.threads))
    graded, stacked = (
        load_graded_model("bundled:graded-crowdflower"),
        load_stacked_model("bundled:graded-stacked-crowdflower"),
    )
    ft = {s: LogitCache(args.logits / f"ft-logits-crowdflower-{s}.tsv") for s in ("dev", "test")}
    rows = {s: feature_rows(cf, s, ft[s], signals, graded, stacked) for s in ("dev", "test")}
    dev, test = cf.pairs("dev"), cf.pairs("test")
    dev_grades, test_grades = [p.grade for p in dev], [p.grade for p in test]
    trials: list[dict[str, Any]] = [
        {"features": n, "dev_cv_kappa_quadratic": cv_kappa(f, rows["dev"], dev, cf, args.folds)}
        for n, f in SETS.items()
    ]
    for t in trials:
        log.info("%s: dev CV κq %.4f", t["features"], t["dev_cv_kappa_quadratic"])
    best = max(trials, key=lambda t: t["dev_cv_kappa_quadratic"])
    shipped, _ = load_graded_ce_model(args.shipped)
    chosen = fit(SETS[best["features"]], rows["dev"], dev_grades, cf.grades)
    labels = {
        "shipped graded-ce (logit only)": shipped.grade(shipped.matrix(rows["test"])),
        f"chosen on dev: {best['features']}": chosen.grade(chosen.matrix(rows["test"])),
    }
    test_rows = [{"grader": g} | agreement(test_grades, v, cf.grades, cf.cut) for g, v in labels.items()]
    a, b = labels.values()
    report: dict[str, Any] = {
        "trials": trials,
        "chosen": best,
        "test": test_rows,
        "kappa_quadratic_diff_chosen_vs_shipped": bootstrap_kappa_diff(test, list(b), list(a), cf.grades, cf.cut),
        "folds": args.folds,
    }
    shipped_cv = next(t for t in trials if t["features"] == "logit")["dev_cv_kappa_quadratic"]
    if args.save is not None and best["dev_cv_kappa_quadratic"] > shipped_cv:
        meta = dict(shipped.meta or {}) | {
            "feature_set": best["features"],
            "fitted_on": "ordinal model and grade cuts: CrowdFlower dev queries "
            f"(feature set chosen by {args.folds}-fold CV on dev)",
            "delta_model": args.shipped,
        }
        meta.pop("delta", None)
        if set(chosen.features) & set(STACKED_FEATURES):
            meta["stacked_model"] = "bundled:graded-stacked-crowdflower"
        replace(chosen, meta=meta).save(args.save)
        report["saved"] = str(args.save)
    return report


def table(report: Mapping[str, Any]) -> str:
    lines = [f"| feature set | dev κq ({report['folds']}-fold CV over dev queries) |", "| --- | --- |"]
    lines += [f"| {t['features']} | {t['dev_cv_kappa_quadratic']:.4f} |" for t in report["trials"]]
    lines += [
        "",
        "CrowdFlower test",
        "| grader | Acc@4 | Acc@2 | Macro-F1@4 | κ linear | κ quadratic |",
        "|" + " --- |" * 6,
    ]
    for r in report["test"]:
        lines.append(
            f"| {r['grader']} | {r['acc@4']:.3f} | {r['acc@2']:.3f} | {r['macro_f1@4']:.3f} "
            f"| {r['kappa_linear']:.3f} | {r['kappa_quadratic']:.3f} |"
        )
    ci = report["kappa_quadratic_diff_chosen_vs_shipped"]
    lines.append(f"Δ κ quadratic (chosen − shipped): {ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.graded_ce_stack", description=__doc__.split("\n")[0]
    )
    p.add_argument("--crowdflower", type=Path, required=True, help="the CrowdFlower search-relevance BEIR folder")
    p.add_argument("--logits", type=Path, required=True, help="the folder graded_ce wrote the fine-tuned logits to")
    p.add_argument("--signals", type=Path, required=True, help="graded_stacked's signal caches (ce, ce_text, bge)")
    p.add_argument("--shipped", default="bundled:graded-ce-crowdflower", help="the graded-ce model compared against")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fill", action="store_true", help="score the dev and test pairs the signal caches lack")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads when filling")
    p.add_argument("--save", type=Path, default=None, help="write the chosen model.json here if it may be served")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    args = parser().parse_args(argv)
    return run_study(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
