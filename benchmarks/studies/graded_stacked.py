"""Fit and score the stacked graded model (``graded-stacked``) on the query-level splits of CrowdFlower and Home Depot.

    python -m twostage_search.benchmarks.studies.graded_stacked \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --homedepot ../shared/datasets/homedepot-search-relevance --homedepot-train \\
        --save rerankers/models/graded-stacked-crowdflower/model.json --out benchmarks/results/graded-stacked.json

Splits: the committed ones of the ``graded`` model (``benchmarks/data/splits``, 60/20/20 of the queries, seed 13;
Home Depot on the same seeded subsample of each split's queries). Signals (the cross-encoder's title logit ``ce``,
its title + description logit ``ce_text`` and the bge-small cosine ``bge``) are cached in ``--cache`` (one TSV per
signal and dataset).

Protocol: LightGBM trees (multiclass, P(grade)) are fitted on CrowdFlower train (and, as a second option,
on CrowdFlower train + Home Depot train with its 1/2/3 as 1/3/4); the feature set, the training data and the
trees' settings are chosen by quadratic κ on CrowdFlower dev with E[grade] cut at thresholds matching the dev
grade mix. The threshold rule (matching the dev grade mix, or the cuts that maximise dev κ) is chosen by
cross-fitting over the two halves of the dev queries; the final cuts come from all dev queries. Test is scored
once. Beside it: the ``graded`` ordinal model, the zero-shot cross-encoder logit and bge cosine with thresholds
fitted on dev, and the constant majority grade of train; bootstrap over test queries gives CIs for the
quadratic-κ differences.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.graded import (
    GradedPair,
    GradedSet,
    agreement,
    apply_thresholds,
    candidates,
    fit_thresholds,
    kappa_thresholds,
    threshold_rule,
)
from twostage_search.benchmarks.graded_data import Caches, fill, load_split_set, open_caches, stacked_rows
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.studies.graded_model import (
    HD_CUT,
    HD_SUBSAMPLE,
    HD_TO_CROWDFLOWER,
    bootstrap_kappa_diff,
    score_rows,
)
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.graded import RELATIVE, GradedReranker, load_graded_model
from twostage_search.rerankers.graded_stacked import (
    DENSE_MAX_LENGTH,
    GRADED_FEATURE,
    KNOWN,
    GradedStackedReranker,
    SignalScorer,
)
from twostage_search.rerankers.ordinal import OrdinalModel
from twostage_search.rerankers.stacked import StackedModel, fit_stacked, out_of_fold
from twostage_search.rerankers.stacked_features import QUERY, signals_read

log = logging.getLogger(__name__)

STACKED = "graded-stacked (LightGBM)"
GRADED = "graded (ordinal model, bundled)"
ZERO_SHOT = {
    "ce": "ms-marco cross-encoder on the title (64 tokens), dev thresholds",
    "ce_text": "ms-marco cross-encoder on title + description (128 tokens), dev thresholds",
    "bge": f"bge-small cosine, title + description ({DENSE_MAX_LENGTH} tokens), dev thresholds",
}
GRADED_SPEC = "bundled:graded-crowdflower"
MODEL_SIGNALS = ("ce", "ce_text", "bge")  # the signals scored by a model (BM25 is computed with the features)
CE_TEXT = tuple(f"ce_text{r}" for r in ("", *RELATIVE))
# The pair features of the earlier model: title logit, bge cosine, BM25, lexical (no ce_text, query-level, graded).
BASE = tuple(f for f in KNOWN if f not in (*CE_TEXT, *QUERY, GRADED_FEATURE))
# The feature sets tried: the base; with the title + description logit; with the query-level features; both;
# everything (the graded model's E[grade] too).
FEATURE_SETS = {
    "base": BASE,
    "base + ce_text": BASE + CE_TEXT,
    "base + query": BASE + QUERY,
    "base + ce_text + query": BASE + CE_TEXT + QUERY,
    "all": KNOWN,
}
# LightGBM settings tried (the rest: stacked.DEFAULT_PARAMS / FIXED); each is fitted to the most rounds once and
# read at every number of rounds in ROUNDS (its first trees).
GRID = [
    {"num_leaves": leaves, "min_data_in_leaf": min_data, "learning_rate": 0.03}
    for leaves in (3, 7)
    for min_data in (40, 150)
]
ROUNDS = (100, 200, 400)


def matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.array([[r[n] for n in names] for r in rows], dtype=np.float64).reshape(len(rows), len(names))


# ------------------------------------------------------------------------------------------ training
def train(
    train_rows: Sequence[Mapping[str, float]],
    train_grades: Sequence[int],
    train_queries: Sequence[str],
    dev_rows: Sequence[Mapping[str, float]],
    dev: Sequence[GradedPair],
    scale: Sequence[int],
    cut: int,
    extra: tuple[str, Sequence[Mapping[str, float]], Sequence[int]] | None = None,
) -> tuple[StackedModel, list[dict[str, Any]], dict[str, Any]]:
    """Fit every feature set × setting × training data; keep the best by dev κ (dev-mix thresholds); then
    choose the threshold rule by dev κ: the dev grade mix or the max-κ cuts (each cross-fitted over the dev
    halves; final cuts from all of dev), or the same two fitted on out-of-fold E[grade] of the train queries."""
    dev_grades = [p.grade for p in dev]
    data = [("CrowdFlower train", train_rows, train_grades)]
    if extra is not None:
        data.append((f"CrowdFlower train + {extra[0]}", [*train_rows, *extra[1]], [*train_grades, *extra[2]]))
    trials: list[dict[str, Any]] = []
    best: tuple[float, StackedModel, list[float]] | None = None
    for set_name, names in FEATURE_SETS.items():
        xd = matrix(dev_rows, names)
        for used, rows, grades in data:
            x = matrix(rows, names)
            for setting in GRID:
                started = time.perf_counter()
                full = fit_stacked(names, x, grades, scale, rounds=max(ROUNDS), params=setting)
                fit_s = time.perf_counter() - started
                for rounds in ROUNDS:
                    model = full.head(rounds)
                    expected = [float(v) for v in model.expected(xd)]
                    cuts = fit_thresholds(expected, dev_grades, scale)
                    labels = apply_thresholds(expected, cuts, scale)
                    kappa = agreement(dev_grades, labels, scale, cut)["kappa_quadratic"]
                    trial = {"features": set_name, "data": used, **setting, "rounds": rounds}
                    trials.append(trial | {"dev_kappa_quadratic": kappa, "fit_s_all_rounds": fit_s})
                    log.info("%s: dev κq %.4f", trial, kappa)
                    if best is None or kappa > best[0]:
                        best = (kappa, replace(model, meta=trial), expected)
    assert best is not None
    _, model, expected = best
    rules = threshold_rule(expected, dev, scale, cut)
    # the same two rules fitted on out-of-fold E[grade] of the CrowdFlower train queries, scored on all of dev
    setting = {k: v for k, v in (model.meta or {}).items() if k not in ("features", "data", "rounds")}
    oof = out_of_fold(
        model.features, matrix(train_rows, model.features), train_grades, train_queries, scale, setting, model.rounds
    )
    fitted = {
        "train out-of-fold grade mix": fit_thresholds(oof, train_grades, scale),
        "train out-of-fold max kappa": kappa_thresholds(oof, train_grades, scale),
    }
    for name, found in fitted.items():
        labels = apply_thresholds(expected, found, scale)
        rules[name] = agreement(dev_grades, labels, scale, cut)["kappa_quadratic"]
    rule = max(rules, key=lambda r: rules[r])
    cuts = fitted.get(rule) or (
        fit_thresholds(expected, dev_grades, scale)
        if rule == "dev grade mix"
        else kappa_thresholds(expected, dev_grades, scale)
    )
    return model.with_grade_cuts(cuts), trials, {"dev_kappa": rules, "chosen": rule}


# ------------------------------------------------------------------------------------------ the run
def grader_labels(
    data: GradedSet,
    stacked: StackedModel,
    graded: OrdinalModel,
    caches: Caches,
    majority_from: Sequence[int],
    in_domain: bool,
) -> tuple[dict[str, tuple[str, list[int]]], dict[str, list[float]]]:
    """Each grader's labels on ``data``'s test pairs ({grader: (domain, labels)}) and their test scores.

    On CrowdFlower (``in_domain``) the two trained models use their own cuts; elsewhere their E[grade] is cut
    by thresholds fitted on the set's dev split, as are the zero-shot signals everywhere.
    """
    test, dev = data.pairs("test"), data.pairs("dev")
    scale = data.grades
    test_rows, dev_rows = stacked_rows(data, test, caches, graded), stacked_rows(data, dev, caches, graded)
    dev_grades = [p.grade for p in dev]
    scores: dict[str, list[float]] = {}
    out: dict[str, tuple[str, list[int]]] = {}
    trained: list[tuple[str, Any, str]] = [
        (STACKED, stacked, "in-domain (CrowdFlower train)"),
        (GRADED, graded, "in-domain (CrowdFlower + Home Depot train)"),
    ]
    for name, model, domain in trained:
        x_test, x_dev = model.matrix(test_rows), model.matrix(dev_rows)
        scores[name] = [float(v) for v in model.expected(x_test)]
        if in_domain:
            out[name] = (domain, list(model.grade(x_test)))
        else:
            cuts = fit_thresholds([float(v) for v in model.expected(x_dev)], dev_grades, scale)
            where = "in-domain" if "Home Depot" in domain or "Home Depot" in str(model.meta) else "zero-shot"
            out[name] = (f"{where}, thresholds on dev", apply_thresholds(scores[name], cuts, scale))
    for signal in caches:
        thresholds = fit_thresholds([r[signal] for r in dev_rows], dev_grades, scale)
        scores[ZERO_SHOT[signal]] = [r[signal] for r in test_rows]
        out[ZERO_SHOT[signal]] = ("zero-shot", apply_thresholds(scores[ZERO_SHOT[signal]], thresholds, scale))
    majority = max(scale, key=lambda g: (list(majority_from).count(g), g))
    out[f"constant majority ({majority})"] = ("-", [majority] * len(test))
    return out, scores


def measure_speed(
    data: GradedSet, stacked: GradedStackedReranker, graded: GradedReranker, n: int = 5
) -> dict[str, float]:
    """Pairs per second on the pairs of ``n`` test queries, scored afresh (models loaded beforehand)."""
    chosen = set(data.splits["test"][:n])
    groups = [
        (q, list(g)) for q, g in groupby((p for p in data.pairs("test") if p.query_id in chosen), lambda p: p.query_id)
    ]
    pairs = sum(len(g) for _, g in groups)
    runs: dict[str, Callable[[Query, Sequence[Candidate]], object]] = {
        STACKED: lambda q, c: stacked.judge(q, c),
        GRADED: lambda q, c: graded.judge(q, c),
    }
    for signal in stacked.scorer.names:
        runs[ZERO_SHOT[signal]] = partial(stacked.scorer.logits, names=[signal])
    out = {}
    for name, run_one in runs.items():
        started = time.perf_counter()
        for qid, group in groups:
            run_one(data.queries[qid], candidates(data, group))
        out[name] = pairs / (time.perf_counter() - started)
    return out


def compare(
    data: GradedSet, labels: Mapping[str, tuple[str, Sequence[int]]], speed: Mapping[str, float]
) -> dict[str, Any]:
    test = data.pairs("test")
    against = [ZERO_SHOT["ce"], GRADED]
    return {
        "rows": score_rows(data, test, labels, speed),
        "kappa_quadratic_diff": {
            f"{STACKED} − {other}": bootstrap_kappa_diff(
                test, labels[STACKED][1], labels[other][1], data.grades, data.cut
            )
            for other in against
        },
        "test_queries": len(data.splits["test"]),
        "test_pairs": len(test),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    graded = load_graded_model(GRADED_SPEC)
    scorer = SignalScorer(threads=args.threads)
    cf = load_split_set(args.crowdflower)
    cf_caches = open_caches(args.cache, "crowdflower", MODEL_SIGNALS)
    split_pairs = {s: cf.pairs(s) for s in ("train", "dev", "test")}
    for s in ("test", "dev", "train"):
        fill(cf, split_pairs[s], cf_caches, scorer)
    train_rows = stacked_rows(cf, split_pairs["train"], cf_caches, graded)
    dev_rows = stacked_rows(cf, split_pairs["dev"], cf_caches, graded)
    train_grades = [p.grade for p in split_pairs["train"]]
    hd = load_split_set(args.homedepot, HD_SUBSAMPLE, cut=HD_CUT) if args.homedepot is not None else None
    hd_caches = open_caches(args.cache, "homedepot", MODEL_SIGNALS)
    extra = None
    if hd is not None and args.homedepot_train:
        hd_train = hd.pairs("train")
        fill(hd, hd_train, hd_caches, scorer)
        mapped = [HD_TO_CROWDFLOWER[p.grade] for p in hd_train]
        extra = ("Home Depot train (1/2/3 as 1/3/4)", stacked_rows(hd, hd_train, hd_caches, graded), mapped)
    train_queries = [p.query_id for p in split_pairs["train"]]
    model, trials, rule = train(
        train_rows, train_grades, train_queries, dev_rows, split_pairs["dev"], cf.grades, cf.cut, extra
    )
    chosen = model.meta or {}
    model = replace(
        model,
        meta={
            "trained_on": f"CrowdFlower search relevance, {chosen['data']} (benchmarks/data/splits, seed 13)",
            "feature_set": chosen["features"],
            "settings": {k: v for k, v in chosen.items() if k not in ("features", "data")},
            "grade_rule": f"E[grade] cut at thresholds: {rule['chosen']} (the rule chosen by CrowdFlower dev kappa)",
            "chosen_on": "quadratic kappa on CrowdFlower dev queries",
            "graded_model": GRADED_SPEC,
            "cross_encoder": "bundled:ms-marco-minilm-l12-int8 (ce: query + title, 64 tokens; "
            "ce_text: query + title + description, 128 tokens)",
            "dense": "bundled:bge-small-en-int8",
            "dense_max_length": DENSE_MAX_LENGTH,
        },
    )
    if args.save is not None:
        model.save(args.save)
    report |= {"trials": trials, "threshold_rule": rule, "model_meta": model.meta, "grade_cuts": model.grade_cuts}
    if args.exploratory is not None:  # earlier dev-only trials, kept beside this run's
        lines = args.exploratory.read_text(encoding="utf-8").splitlines()
        report["exploratory_trials"] = [json.loads(line) for line in lines if line.strip()]
    speed = {}
    if args.speed_queries:
        judge = GradedStackedReranker(model, threads=args.threads)
        speed = measure_speed(cf, judge, GradedReranker(graded, threads=args.threads), args.speed_queries)
        report["speed_load"] = os.getloadavg()[0]
    labels, _ = grader_labels(cf, model, graded, cf_caches, train_grades, in_domain=True)
    report["crowdflower"] = compare(cf, labels, speed)
    if hd is not None:  # the signals the chosen model reads, and the zero-shot ones of the comparison
        wanted = {*signals_read(model.features), "ce", "bge"}
        hd_used = {name: cache for name, cache in hd_caches.items() if name in wanted}
        for s in ("test", "dev"):
            fill(hd, hd.pairs(s), hd_used, scorer)
        labels, _ = grader_labels(hd, model, graded, hd_used, [p.grade for p in hd.pairs("dev")], in_domain=False)
        report["homedepot"] = compare(hd, labels, speed) | {"subsample_queries": HD_SUBSAMPLE}
    report["load_after"] = os.getloadavg()[0]
    return report


def table(report: Mapping[str, Any]) -> str:
    lines = []
    for name in ("crowdflower", "homedepot"):
        if name not in report:
            continue
        part = report[name]
        k = 3 if name == "homedepot" else 4
        lines += [
            f"{name} test ({part['test_queries']} queries, {part['test_pairs']} pairs)",
            f"| grader | domain | Acc@{k} | Acc@2 | Macro-F1@{k} | κ linear | κ quadratic | pairs/s |",
            "|" + " --- |" * 8,
        ]
        for r in part["rows"]:
            speed = f"{r['pairs_per_s']:.1f}" if r.get("pairs_per_s") else ""
            lines.append(
                f"| {r['grader']} | {r['domain']} | {r[f'acc@{k}']:.3f} | {r['acc@2']:.3f} | {r[f'macro_f1@{k}']:.3f} "
                f"| {r['kappa_linear']:.3f} | {r['kappa_quadratic']:.3f} | {speed} |"
            )
        for what, ci in part["kappa_quadratic_diff"].items():
            lines.append(f"Δ quadratic κ ({what}): {ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.graded_stacked", description=__doc__.split("\n")[0]
    )
    p.add_argument("--crowdflower", type=Path, required=True, help="the CrowdFlower search-relevance BEIR folder")
    p.add_argument("--homedepot", type=Path, default=None, help="the Home Depot search-relevance BEIR folder")
    p.add_argument("--homedepot-train", action="store_true", help="also try Home Depot train pairs as training data")
    p.add_argument("--cache", type=Path, default=Path("var/graded"), help="folder of cached signals")
    p.add_argument("--save", type=Path, default=None, help="write the fitted model (JSON) here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speed-queries", type=int, default=5, help="test queries scored afresh for pairs/s (0: none)")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    p.add_argument(
        "--exploratory", type=Path, default=None, help="JSON lines of earlier dev-only trials to keep in the report"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    args = parser().parse_args(argv)
    return run_study(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
