"""Train and score the graded relevance model (``graded`` reranker) on query-level splits of graded e-commerce sets.

    python -m twostage_search.benchmarks.studies.graded_model \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --homedepot ../shared/datasets/homedepot-search-relevance \\
        --save rerankers/models/graded-crowdflower/model.json --out benchmarks/results/graded-model.json

Splits are committed (``benchmarks/data/splits/<dataset>.tsv``: ``query-id``, ``split``): 60/20/20 of the
queries into train/dev/test by :func:`~twostage_search.benchmarks.graded.split_queries` with seed 13, so no
query is in two splits. Home Depot is scored on a seeded subsample of each split's queries
(:data:`HD_SUBSAMPLE`). Cross-encoder logits are cached in ``--cache`` (one TSV per dataset).

Protocol: the ordinal model is fitted on CrowdFlower train; the feature set and the hard-grade rule (most
probable grade, or E[grade] cut by thresholds matching the dev grade mix) are chosen by quadratic κ on
CrowdFlower dev; test is scored once. Beside it: the zero-shot cross-encoder logit with thresholds fitted
on dev (:func:`~twostage_search.benchmarks.graded.fit_thresholds`) and the constant majority grade of train.
Bootstrap over test queries gives a CI for the quadratic-κ difference.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
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
)
from twostage_search.benchmarks.graded_data import (
    SEED,
    Caches,
    features,
    fill,
    load_split_set,
    open_caches,
)
from twostage_search.benchmarks.report import run_study
from twostage_search.engine.logs import setup_logging
from twostage_search.rerankers.graded import LEXICAL, LOGITS, MATCH, RELATIVE, GradedReranker
from twostage_search.rerankers.ordinal import OrdinalModel, fit_ordinal, null_model

log = logging.getLogger(__name__)

HD_CUT = 3  # Home Depot 1–3: "relevant" = 3 (perfect match); its 2 (partial) sits with CrowdFlower's 2, below the cut
HD_SUBSAMPLE = {"train": 600, "dev": 200, "test": 300}  # queries per split (seeded), Home Depot only
GRADED = "graded (ordinal model)"
ZERO_SHOT = {
    "ce": "ms-marco cross-encoder on the title (64 tokens), dev thresholds",
    "ce_text": "ms-marco cross-encoder on title + description (128 tokens), dev thresholds",
}
# Home Depot's 1–3 (irrelevant, partially relevant, perfect match; the mean of about three raters, rounded)
# on CrowdFlower's 1–4, for Home Depot train pairs used as extra training data: 1 → 1, 2 → 3, 3 → 4.
HD_TO_CROWDFLOWER = {1: 1, 2: 3, 3: 4}


def feature_sets(logits: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The feature sets tried (on train, chosen on dev) with the cross-encoder logits ``logits``."""
    out: dict[str, tuple[str, ...]] = {}
    for n in logits:
        rel = tuple(f"{n}{s}" for s in RELATIVE)
        out |= {
            n: (n,),
            f"{n}+relative": (n, *rel),
            f"{n}+relative+lexical": (n, *rel, *LEXICAL),
            f"{n}+relative+lexical+match": (n, *rel, *LEXICAL, *MATCH),
        }
    if len(logits) > 1:
        out["+".join(logits)] = tuple(logits)
        out["all"] = tuple(f"{n}{s}" for n in logits for s in ("", *RELATIVE)) + LEXICAL + MATCH
    return out


def matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.array([[r[n] for n in names] for r in rows], dtype=np.float64).reshape(len(rows), len(names))


# ---------------------------------------------------------------------------------------- training
def train(
    train_rows: Sequence[Mapping[str, float]],
    train_grades: Sequence[int],
    dev_rows: Sequence[Mapping[str, float]],
    dev_grades: Sequence[int],
    scale: Sequence[int],
    cut: int,
    sets: Mapping[str, tuple[str, ...]],
    extra: tuple[str, Sequence[Mapping[str, float]], Sequence[int]] | None = None,
) -> tuple[OrdinalModel, list[dict[str, Any]]]:
    """Fit one model per feature set on train (and, if ``extra`` = (name, rows, grades) is given, once more
    on train + those rows); keep the best by quadratic κ on dev (with its grade rule)."""
    trials: list[dict[str, Any]] = []
    best: tuple[float, OrdinalModel] | None = None
    data = [("train", train_rows, train_grades)]
    if extra is not None:
        data.append((f"train + {extra[0]}", [*train_rows, *extra[1]], [*train_grades, *extra[2]]))
    for (name, names), (used, rows, grades) in ((a, b) for a in sets.items() for b in data):
        x = matrix(rows, names)
        started = time.perf_counter()
        model = fit_ordinal(names, x, grades, scale)
        fit_s = time.perf_counter() - started
        xd = matrix(dev_rows, names)
        expected = model.expected(xd)
        cuts = fit_thresholds([float(v) for v in expected], list(dev_grades), scale)
        for rule, candidate in (("argmax", model), ("dev thresholds on E[grade]", model.with_grade_cuts(cuts))):
            kappa = agreement(list(dev_grades), candidate.grade(xd), scale, cut)["kappa_quadratic"]
            trials.append(
                {
                    "features": name,
                    "data": used,
                    "rule": rule,
                    "dev_kappa_quadratic": kappa,
                    "train_nll": model.nll(x, grades),
                    "null_nll": null_model(names, x, grades, scale).nll(x, grades),
                    "fit_s": fit_s,
                }
            )
            if best is None or kappa > best[0]:
                best = (kappa, replace(candidate, meta={"feature_set": name, "data": used}))
    assert best is not None
    return best[1], trials


def bootstrap_kappa_diff(
    pairs: Sequence[GradedPair],
    a: Sequence[int],
    b: Sequence[int],
    scale: Sequence[int],
    cut: int,
    resamples: int = 1000,
    seed: int = SEED,
) -> dict[str, Any]:
    """Quadratic κ(a) − κ(b) on ``pairs`` and its 95% percentile bootstrap CI over queries."""
    by_query: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_query.setdefault(p.query_id, []).append(i)
    groups = [by_query[q] for q in sorted(by_query)]
    human = [p.grade for p in pairs]

    def kappa(labels: Sequence[int], idx: Sequence[int]) -> float:
        return float(agreement([human[i] for i in idx], [labels[i] for i in idx], scale, cut)["kappa_quadratic"])

    everything = range(len(pairs))
    diff = kappa(a, everything) - kappa(b, everything)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(resamples):
        idx = [i for g in rng.integers(0, len(groups), len(groups)) for i in groups[g]]
        samples.append(kappa(a, idx) - kappa(b, idx))
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"diff": diff, "low": float(low), "high": float(high), "resamples": resamples, "unit": "query"}


# ------------------------------------------------------------------------------------------ the run
def grader_labels(
    data: GradedSet, model: OrdinalModel, caches: Caches, majority_from: Sequence[int], in_domain: bool
) -> dict[str, tuple[str, list[int]]]:
    """Each grader's labels for every pair of ``data``'s test split: {grader: (domain, labels)}.

    The zero-shot cross-encoder's thresholds come from the set's dev split; on a set with another grade
    scale the graded model's E[grade] is cut the same way (by thresholds fitted on that set's dev split).
    """
    test, dev = data.pairs("test"), data.pairs("dev")
    scale = data.grades
    test_rows = features(data, test, caches)
    if in_domain:
        trained = model.grade(model.matrix(test_rows))
    else:
        dev_expected = [float(v) for v in model.expected(model.matrix(features(data, dev, caches)))]
        cuts = fit_thresholds(dev_expected, [p.grade for p in dev], scale)
        trained = apply_thresholds([float(v) for v in model.expected(model.matrix(test_rows))], cuts, scale)
    domain = "in-domain" if in_domain else "zero-shot, thresholds on dev"
    if not in_domain and "Home Depot" in str((model.meta or {}).get("trained_on", "")):
        domain = "in-domain (Home Depot train queries in its training data), thresholds on dev"
    out = {GRADED: (domain, trained)}
    for name, cache in caches.items():
        dev_ce = [cache.values[(p.query_id, p.doc_id)] for p in dev]
        thresholds = fit_thresholds(dev_ce, [p.grade for p in dev], scale)
        out[ZERO_SHOT[name]] = ("zero-shot", apply_thresholds([r[name] for r in test_rows], thresholds, scale))
    majority = max(scale, key=lambda g: (list(majority_from).count(g), g))
    out[f"constant majority ({majority})"] = ("-", [majority] * len(test))
    return out


def score_rows(
    data: GradedSet,
    pairs: Sequence[GradedPair],
    labels: Mapping[str, tuple[str, Sequence[int]]],
    speed: Mapping[str, float],
) -> list[dict[str, Any]]:
    """One agreement row per grader on ``pairs``."""
    out = []
    for name, (domain, graded) in labels.items():
        m = agreement([p.grade for p in pairs], list(graded), data.grades, data.cut)
        m.pop("confusion")
        out.append({"grader": name, "domain": domain} | m | {"pairs_per_s": speed.get(name)})
    return out


def subset(
    labels: Mapping[str, tuple[str, Sequence[int]]], pairs: Sequence[GradedPair], chosen: Sequence[GradedPair]
) -> dict[str, tuple[str, list[int]]]:
    index = {(p.query_id, p.doc_id): i for i, p in enumerate(pairs)}
    at = [index[(p.query_id, p.doc_id)] for p in chosen]
    return {name: (domain, [graded[i] for i in at]) for name, (domain, graded) in labels.items()}


def lore_labels(data: GradedSet, pairs: Sequence[GradedPair], store: Path, threads: int) -> tuple[list[int], float]:
    """The bundled LLM judge's (``lore``, label-only, zero-shot) grades for ``pairs`` and its pairs/s."""
    from twostage_search.benchmarks.studies.judges import JudgementStore, lore_grades, run_lore
    from twostage_search.rerankers.llm.lore import JudgementCache, LoreReranker

    judge = LoreReranker("llama-cpp", cache=JudgementCache(0), backend_options={"threads": threads})
    rows, _ = run_lore(data, pairs, judge, JudgementStore(store))
    return lore_grades(data, rows), 1000 * len(rows) / max(sum(r["ms"] for r in rows), 1e-9)


def measure_speed(
    data: GradedSet, model: GradedReranker, scorer: GradedReranker, n_queries: int = 5
) -> dict[str, float]:
    """Pairs per second on the pairs of a few test queries, scored afresh: the graded model (its
    cross-encoder passes and the ordinal model) and each cross-encoder logit alone."""
    chosen = set(data.splits["test"][:n_queries])
    groups = [
        (q, list(g)) for q, g in groupby((p for p in data.pairs("test") if p.query_id in chosen), lambda p: p.query_id)
    ]
    n = sum(len(g) for _, g in groups)
    out = {}
    for name, run_one in [(GRADED, lambda q, c: model.judge(q, c))] + [
        (ZERO_SHOT[logit], lambda q, c, logit=logit: scorer.logits(q, c, [logit])) for logit in scorer.logit_names
    ]:
        started = time.perf_counter()
        for qid, group in groups:
            run_one(data.queries[qid], candidates(data, group))
        out[name] = n / (time.perf_counter() - started)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import os

    cf = load_split_set(args.crowdflower)
    names = tuple(args.logits)
    k = len(names)
    probe = OrdinalModel(names, (0.0,) * k, (1.0,) * k, (1.0,) * k, (-1.0, 0.0, 1.0), cf.grades)
    scorer = GradedReranker(probe, threads=args.threads)  # for its cross-encoder logits only
    cf_caches = open_caches(args.cache, "crowdflower", names)
    split_pairs = {s: cf.pairs(s) for s in ("train", "dev", "test")}
    for s in ("test", "dev", "train"):
        fill(cf, split_pairs[s], cf_caches, scorer)
    train_rows, dev_rows = features(cf, split_pairs["train"], cf_caches), features(cf, split_pairs["dev"], cf_caches)
    train_grades = [p.grade for p in split_pairs["train"]]
    hd = load_split_set(args.homedepot, HD_SUBSAMPLE, cut=HD_CUT) if args.homedepot is not None else None
    hd_caches = open_caches(args.cache, "homedepot", names)
    extra = None
    if hd is not None and args.homedepot_train:
        hd_train = hd.pairs("train")
        fill(hd, hd_train, hd_caches, scorer)
        mapped = [HD_TO_CROWDFLOWER[p.grade] for p in hd_train]
        extra = ("Home Depot train (1/2/3 as 1/3/4)", features(hd, hd_train, hd_caches), mapped)
    model, trials = train(
        train_rows,
        train_grades,
        dev_rows,
        [p.grade for p in split_pairs["dev"]],
        cf.grades,
        cf.cut,
        feature_sets(names),
        extra,
    )
    chosen = model.meta or {}
    meta = {
        "trained_on": f"CrowdFlower search relevance, {chosen['data']} queries (benchmarks/data/splits, seed 13)",
        "train_pairs": len(train_rows) + (len(extra[1]) if extra and chosen["data"] != "train" else 0),
        "feature_set": chosen["feature_set"],
        "grade_rule": "dev thresholds on E[grade]" if model.grade_cuts else "most probable grade",
        "chosen_on": "quadratic kappa on CrowdFlower dev queries",
        "cross_encoder": "bundled:ms-marco-minilm-l12-int8 (ce: query + title, 64 tokens; ce_text: query + title "
        "+ description, 128 tokens)",
    }
    model = replace(model, meta=meta)
    if args.save is not None:
        model.save(args.save)
    speed = measure_speed(cf, GradedReranker(model, threads=args.threads), scorer)
    report: dict[str, Any] = {"load_before": os.getloadavg()[0], "trials": trials, "model": model.to_json()}
    test = cf.pairs("test")
    labels = grader_labels(cf, model, cf_caches, train_grades, in_domain=True)
    ci = {
        name: bootstrap_kappa_diff(test, labels[GRADED][1], labels[ZERO_SHOT[name]][1], cf.grades, cf.cut)
        for name in names
    }
    report["crowdflower"] = {
        "rows": score_rows(cf, test, labels, speed),
        "kappa_quadratic_diff_vs_zero_shot": ci,
        "test_queries": len(cf.splits["test"]),
        "test_pairs": len(test),
    }
    if args.lore_pairs:
        sample = cf.sample("test", args.lore_pairs)
        small = subset(labels, test, sample)
        lore, rate = lore_labels(cf, sample, args.cache / "lore-crowdflower.jsonl", args.threads)
        small["lore (Qwen2.5-Coder-0.5B, label-only)"] = ("zero-shot", lore)
        rows = score_rows(cf, sample, small, speed | {"lore (Qwen2.5-Coder-0.5B, label-only)": rate})
        report["crowdflower_lore_sample"] = {
            "rows": rows,
            "pairs": len(sample),
            "queries": len({p.query_id for p in sample}),
        }
    if hd is not None:
        for s in ("test", "dev"):
            fill(hd, hd.pairs(s), hd_caches, scorer)
        hd_test = hd.pairs("test")
        labels = grader_labels(hd, model, hd_caches, [p.grade for p in hd.pairs("dev")], in_domain=False)
        report["homedepot"] = {
            "rows": score_rows(hd, hd_test, labels, speed),
            "kappa_quadratic_diff_vs_zero_shot": {
                name: bootstrap_kappa_diff(hd_test, labels[GRADED][1], labels[ZERO_SHOT[name]][1], hd.grades, hd.cut)
                for name in names
            },
            "subsample_queries": HD_SUBSAMPLE,
            "test_queries": len(hd.splits["test"]),
            "test_pairs": len(hd_test),
        }
    report["load_after"] = os.getloadavg()[0]
    return report


def table(report: Mapping[str, Any]) -> str:
    lines = []
    for name in ("crowdflower", "crowdflower_lore_sample", "homedepot"):
        if name not in report:
            continue
        part = report[name]
        k = 3 if name == "homedepot" else 4
        lines += [
            f"{name} test",
            f"| grader | domain | Acc@{k} | Acc@2 | Macro-F1@{k} | κ linear | κ quadratic | pairs/s |",
        ]
        lines.append("|" + " --- |" * 8)
        for r in part["rows"]:
            speed = f"{r['pairs_per_s']:.1f}" if r.get("pairs_per_s") else ""
            lines.append(
                f"| {r['grader']} | {r['domain']} | {r[f'acc@{k}']:.3f} | {r['acc@2']:.3f} | {r[f'macro_f1@{k}']:.3f} "
                f"| {r['kappa_linear']:.3f} | {r['kappa_quadratic']:.3f} | {speed} |"
            )
        for logit, ci in part.get("kappa_quadratic_diff_vs_zero_shot", {}).items():
            lines.append(
                f"Δ quadratic κ (graded − zero-shot {logit}): {ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
            )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.graded_model", description=__doc__.split("\n")[0]
    )
    p.add_argument("--crowdflower", type=Path, required=True, help="the CrowdFlower search-relevance BEIR folder")
    p.add_argument("--homedepot", type=Path, default=None, help="the Home Depot search-relevance BEIR folder")
    p.add_argument("--cache", type=Path, default=Path("var/graded"), help="folder of cached cross-encoder logits")
    p.add_argument("--save", type=Path, default=None, help="write the fitted model (JSON) here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--logits", nargs="+", choices=tuple(LOGITS), default=list(LOGITS), help="cross-encoder logits to use"
    )
    p.add_argument(
        "--homedepot-train", action="store_true", help="also try Home Depot train pairs as extra training data"
    )
    p.add_argument("--lore-pairs", type=int, default=0, help="also run the LLM judge on a seeded sample of test pairs")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    args = parser().parse_args(argv)
    return run_study(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
