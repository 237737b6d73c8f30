"""What the INT8 ONNX export of a ``graded-ce`` model costs in quality: each export beside its fp32 model.

    twostage export-onnx bundled:graded-ce-text-crowdflower var/gce-text-int8 --graded-ce
    python -m twostage_search.benchmarks.studies.graded_ce_onnx \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --pair bundled:graded-ce-text-crowdflower=var/gce-text-int8 --out benchmarks/results/graded-ce-onnx.json

Each ``--pair REFERENCE=EXPORT`` names a served model and its export (``twostage export-onnx --graded-ce``).
Both grade every judged pair of the CrowdFlower dev and test queries (the committed query split) as the
``graded-ce`` reranker serves them. Reported per split and model: agreement with the human grades (Acc@4,
Acc@2, Macro-F1, κ), nDCG@10 of each query's judged items reranked by E[grade] (gain: grade − 1), and for the
export the largest and mean |logit − reference logit| and the share of pairs graded alike. On test: the
export's quadratic κ − the reference's with a 95% bootstrap CI over queries, and its nDCG@10 difference with a
bootstrap CI and a paired randomisation test, Holm-corrected across the pairs. Speed is measured by
``reranker_speed`` (side by side in one run), not here. The models were trained on CrowdFlower train queries:
in-domain.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import compare, evaluate, ranked
from twostage_search.benchmarks.graded import GradedPair, GradedSet, agreement, candidates
from twostage_search.benchmarks.graded_data import load_split_set
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.studies.graded_model import bootstrap_kappa_diff
from twostage_search.engine.errors import InputError
from twostage_search.engine.logs import setup_logging
from twostage_search.rerankers.graded_ce import GradedCEReranker

log = logging.getLogger(__name__)

SPLITS = ("dev", "test")


def graded(reranker: GradedCEReranker, data: GradedSet, pairs: Sequence[GradedPair]) -> dict[str, Any]:
    """Logits, grades and E[grade] the served model gives ``pairs`` (a split's, sorted by query; pair order)."""
    logits: list[float] = []
    labels: list[int] = []
    expected: list[float] = []
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        query, items = data.queries[qid], candidates(data, list(group))
        values, _ = reranker.logits(query, items)
        judged = reranker.judgements(query, items, values)
        logits += values
        labels += [int(j.label or 0) for j in judged]
        expected += [j.expected for j in judged]
    return {"logits": logits, "labels": labels, "expected": expected}


def ndcg10(data: GradedSet, pairs: Sequence[GradedPair], expected: Sequence[float]) -> list[float]:
    """Per-query nDCG@10 of the judged ``pairs`` ranked by ``expected`` (gain: grade − lowest grade)."""
    low = min(data.grades)
    qrels: dict[str, dict[str, int]] = {}
    runs: dict[str, list[tuple[str, float]]] = {}
    for p, e in zip(pairs, expected, strict=True):
        qrels.setdefault(p.query_id, {})[p.doc_id] = p.grade - low
        runs.setdefault(p.query_id, []).append((p.doc_id, e))
    queries = sorted(qrels)
    return evaluate(qrels, queries, {q: ranked(runs[q]) for q in queries}, ["nDCG@10"], drop_query_id=False)["nDCG@10"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    pairs: list[tuple[str, str]] = []
    for spec in args.pair:
        reference, sep, export = spec.partition("=")
        if not sep or not reference or not export:
            raise InputError(f"--pair wants REFERENCE=EXPORT, got {spec!r}")
        pairs.append((reference, export))
    data = load_split_set(args.crowdflower)
    report: dict[str, Any] = {"dataset": "crowdflower", "in_domain": True, "pairs": []}
    tests: list[tuple[list[float], list[float]]] = []
    for reference, export in pairs:
        entry: dict[str, Any] = {"reference": reference, "export": export}
        served = {"reference": GradedCEReranker(reference, threads=2), "export": GradedCEReranker(export, threads=2)}
        for split in SPLITS:
            judged = data.pairs(split)
            human = [p.grade for p in judged]
            got = {name: graded(reranker, data, judged) for name, reranker in served.items()}
            rows = {}
            for name, g in got.items():
                per_query = ndcg10(data, judged, g["expected"])
                rows[name] = agreement(human, g["labels"], data.grades, data.cut) | {
                    "ndcg@10": float(np.mean(per_query)),
                    "ndcg@10_per_query": per_query,
                }
            diff = np.abs(np.array(got["export"]["logits"]) - np.array(got["reference"]["logits"]))
            same = np.mean(np.array(got["export"]["labels"]) == np.array(got["reference"]["labels"]))
            rows["export"] |= {"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean())}
            rows["export"]["same_grade_share"] = float(same)
            entry[split] = {"queries": len({p.query_id for p in judged}), "pairs": len(judged), "rows": rows}
            if split == "test":
                entry["kappa_quadratic_diff"] = bootstrap_kappa_diff(
                    judged, got["export"]["labels"], got["reference"]["labels"], data.grades, data.cut
                )
                tests.append((rows["export"]["ndcg@10_per_query"], rows["reference"]["ndcg@10_per_query"]))
            log.info("%s vs %s on %s: %s", export, reference, split, rows["export"]["kappa_quadratic"])
        report["pairs"].append(entry)
    for entry, comparison in zip(report["pairs"], compare(tests), strict=True):
        entry["ndcg@10_diff"] = comparison.as_dict()
    return report


def table(report: Mapping[str, Any]) -> str:
    lines = ["CrowdFlower (in-domain: the models were trained on its train queries)"]
    lines += ["| model | split | Acc@4 | Acc@2 | Macro-F1 | κ lin | κ quad | nDCG@10 | Δlogit max / mean | alike |"]
    lines += ["|" + " --- |" * 10]
    for entry in report["pairs"]:
        for split in SPLITS:
            for name in ("reference", "export"):
                r = entry[split]["rows"][name]
                extra = (
                    f"{r['max_abs_logit_diff']:.3f} / {r['mean_abs_logit_diff']:.3f} | {r['same_grade_share']:.3f}"
                    if name == "export"
                    else "| "
                )
                lines.append(
                    f"| {entry[name]} | {split} | {r['acc@4']:.3f} | {r['acc@2']:.3f} | {r['macro_f1@4']:.3f} "
                    f"| {r['kappa_linear']:.3f} | {r['kappa_quadratic']:.3f} | {r['ndcg@10']:.4f} | {extra} |"
                )
        k, n = entry["kappa_quadratic_diff"], entry["ndcg@10_diff"]
        lines.append(
            f"test, export − reference: κ quad {k['diff']:+.4f} [{k['low']:+.4f}, {k['high']:+.4f}]; nDCG@10 "
            f"{n['delta']:+.4f} [{n['ci95'][0]:+.4f}, {n['ci95'][1]:+.4f}] p {n['p']:.3f} (Holm {n['p_holm']:.3f})"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.graded_ce_onnx", description=__doc__.split("\n")[0]
    )
    p.add_argument("--crowdflower", type=Path, required=True, help="the CrowdFlower search-relevance BEIR folder")
    p.add_argument("--pair", action="append", required=True, help="REFERENCE=EXPORT (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    return run_study(parser().parse_args(argv), run, table)


if __name__ == "__main__":
    sys.exit(main())
