"""Bundle the fine-tuned cross-encoder as the ``graded-ce`` model (a delta over the INT8 base) and measure it.

    python -m twostage_search.benchmarks.studies.graded_ce \\
        --finetuned var/finetune/best-model \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --homedepot ../shared/datasets/homedepot-search-relevance \\
        --bundle rerankers/models/graded-ce-crowdflower --out benchmarks/results/graded-ce.json

``--finetuned`` is the model ``graded_finetune --save`` wrote (transformers format, ``affine.pt`` beside it).
Its tensors above the ``--frozen`` lower layers are written as fp16 (``delta.safetensors``); the lower layers
must equal the dequantised base exactly (checked). The fp16 delta's logits are compared with the fp32 model's
on CrowdFlower dev and test (largest difference, dev and test quadratic κ of both). A one-feature ordinal model
over the fp16 model's logit is fitted on the CrowdFlower dev pairs (the training pairs' logits are fitted to
their grades; dev's are not), its hard grade cut on E[grade] by thresholds matching the dev grade mix, and
saved as ``model.json``. Agreement on test follows ``graded_finetune`` (its rows and bootstrap CI: dev
thresholds on each set's own dev pairs, beside the zero-shot INT8 cross-encoder), plus the shipped hard grades
on CrowdFlower test. Last, the bundled folder is loaded as a ``GradedCEReranker`` and its logits on a few
dev queries are compared with the study's path.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.finetune import UpperModel
from twostage_search.benchmarks.graded import GradedSet, agreement, apply_thresholds, candidates, fit_thresholds
from twostage_search.benchmarks.graded_data import load_split_set
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.studies.graded_ce_inputs import (
    PASSAGES,
    budget,
    cached_states,
    grader_tables,
    logits_cache,
)
from twostage_search.benchmarks.studies.graded_finetune import dev_kappa, score_test
from twostage_search.benchmarks.studies.graded_model import HD_CUT, HD_SUBSAMPLE, bootstrap_kappa_diff
from twostage_search.engine.atomic import atomic_write_text
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER
from twostage_search.rerankers.graded import MODEL_FILE
from twostage_search.rerankers.graded_ce import (
    DELTA_FILE,
    FEATURE,
    GradedCEReranker,
    apply_delta,
    meta_record,
    save_delta,
    trained_names,
)
from twostage_search.rerankers.onnx_cross_encoder import onnx_model_files
from twostage_search.rerankers.onnx_to_torch import tokenizer_from_file, torch_from_onnx
from twostage_search.rerankers.ordinal import OrdinalModel, fit_ordinal

log = logging.getLogger(__name__)

SHIPPED = "graded-ce (shipped: fp16 delta, grades cut on E[grade] at CrowdFlower dev thresholds)"


def lower_layers_match(base: Any, finetuned: Any, frozen: int) -> float:
    """Largest |difference| between the two models' tensors below the trained ones (0 when the base is right)."""
    a, b = base.state_dict(), finetuned.state_dict()
    trained = set(trained_names(list(a), frozen))
    return max(float((a[k] - b[k]).abs().max()) for k in a if k not in trained and k in b and a[k].is_floating_point())


def all_states(
    model: Any, tokenizer: Any, sets: Mapping[str, GradedSet], var: Path, frozen: int, kind: str = "ce"
) -> dict[Any, Any]:
    """Frozen lower-layer outputs of every dev and test pair (cached under ``var``, shared with graded_finetune)."""
    return {
        (name, split): cached_states(model, tokenizer, data, name, split, var, frozen, kind)
        for name, data in sets.items()
        for split in ("dev", "test")
    }


def fp16_check(fp32: UpperModel, fp16: UpperModel, states: Mapping[Any, Any], cf: GradedSet) -> dict[str, Any]:
    """fp32 vs fp16-delta logits on CrowdFlower dev and test: largest |Δ|, Spearman, κq at each split's own dev cuts."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    dev_grades = [p.grade for p in cf.pairs("dev")]
    test_grades = [p.grade for p in cf.pairs("test")]
    logits = {}
    for tag, upper in (("fp32", fp32), ("fp16", fp16)):
        dev, test = upper.predict(states[("crowdflower", "dev")])[0], upper.predict(states[("crowdflower", "test")])[0]
        logits[tag] = (dev, test)
        kappa, cuts = dev_kappa(dev, dev_grades, cf)
        test_kappa = agreement(test_grades, apply_thresholds(list(test), cuts, cf.grades), cf.grades, cf.cut)
        out[tag] = {"dev_kappa_quadratic": kappa, "test_kappa_quadratic": float(test_kappa["kappa_quadratic"])}
    for i, split in enumerate(("dev", "test")):
        a, b = logits["fp32"][i], logits["fp16"][i]
        out[f"{split}_max_abs_diff"] = float(np.abs(a - b).max())
        out[f"{split}_spearman"] = float(spearmanr(a, b)[0])
    return out


def fit_shipped(dev_logits: np.ndarray, cf: GradedSet, meta: Mapping[str, Any]) -> OrdinalModel:
    """The one-feature ordinal model over the logit, fitted on CrowdFlower dev, with dev-mix cuts on E[grade]."""
    grades = [p.grade for p in cf.pairs("dev")]
    x = np.asarray(dev_logits, dtype=np.float64).reshape(-1, 1)
    model = fit_ordinal((FEATURE,), x, grades, cf.grades)
    cuts = fit_thresholds([float(v) for v in model.expected(x)], grades, cf.grades)
    return replace(model.with_grade_cuts(cuts), meta=dict(meta))


def write_logits(path: Path, pairs: Sequence[Any], values: Sequence[float] | np.ndarray) -> None:
    """The logits as a ``LogitCache`` TSV (query id, doc id, logit), written atomically."""
    lines = "".join(f"{p.query_id}\t{p.doc_id}\t{float(v)!r}\n" for p, v in zip(pairs, values, strict=True))
    atomic_write_text(path, lines)


def serving_check(folder: Path, cf: GradedSet, study_logits: np.ndarray, queries: int) -> dict[str, Any]:
    """The bundled folder loaded as the reranker, on the first ``queries`` dev queries: its logits vs the study's."""
    reranker = GradedCEReranker(str(folder))
    pairs = cf.pairs("dev")
    got: list[float] = []
    for n, (qid, group) in enumerate(groupby(pairs, key=lambda p: p.query_id)):
        if n == queries:
            break
        todo = list(group)
        values, _ = reranker.logits(cf.queries[qid], candidates(cf, todo))
        got += values
    diff = np.abs(np.asarray(got) - study_logits[: len(got)])
    return {
        "pairs": len(got),
        "queries": queries,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }


def served_labels(spec: str, data: GradedSet, pairs: Sequence[Any]) -> list[int]:
    """The grades a graded-ce model (a folder or ``bundled:`` name) gives ``pairs`` when served as the reranker."""
    reranker = GradedCEReranker(spec)
    labels: list[int] = []
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        for j in reranker.judge(data.queries[qid], candidates(data, list(group))):
            if j.label is None:
                raise SystemExit(f"{spec} gave {j.doc_id} no grade")
            labels.append(j.label)
    return labels


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import BertForSequenceClassification

    torch.set_num_threads(args.threads)
    var: Path = args.var
    var.mkdir(parents=True, exist_ok=True)
    cf = load_split_set(args.crowdflower)
    hd = load_split_set(args.homedepot, HD_SUBSAMPLE, cut=HD_CUT) if args.homedepot is not None else None
    sets = {"crowdflower": cf} | ({"homedepot": hd} if hd is not None else {})
    model_path, tokenizer_path = onnx_model_files(DEFAULT_ONNX_CROSS_ENCODER)
    base = torch_from_onnx(model_path)
    tokenizer = tokenizer_from_file(tokenizer_path)
    finetuned: Any = BertForSequenceClassification.from_pretrained(str(args.finetuned), attn_implementation="eager")
    finetuned.eval()
    report: dict[str, Any] = {"load_before": os.getloadavg()[0], "lower_layers_max_abs_diff": 0.0}
    report["lower_layers_max_abs_diff"] = lower_layers_match(base, finetuned, args.frozen)
    if report["lower_layers_max_abs_diff"] != 0.0:
        raise SystemExit(f"{args.finetuned}: lower layers differ from the base ({report['lower_layers_max_abs_diff']})")
    delta = var / DELTA_FILE
    save_delta(finetuned, args.frozen, delta)
    half = apply_delta(copy.deepcopy(base), delta)
    report["delta_bytes"] = delta.stat().st_size
    report["delta_tensors"] = len(trained_names(list(finetuned.state_dict()), args.frozen))
    affine = torch.load(args.finetuned / "affine.pt")["affine"]
    uppers = {}
    for tag, net in (("fp32", finetuned), ("fp16", half)):
        uppers[tag] = UpperModel(net, args.frozen)
        uppers[tag].affine.data = affine.clone()
    started = time.perf_counter()
    states = all_states(base, tokenizer, sets, var, args.frozen, args.passage)
    report["frozen_states_s"] = time.perf_counter() - started
    report["fp16_vs_fp32"] = fp16_check(uppers["fp32"], uppers["fp16"], states, cf)
    log.info("fp16 vs fp32: %s", report["fp16_vs_fp32"])

    dev_logits = uppers["fp16"].predict(states[("crowdflower", "dev")])[0]
    meta = meta_record(
        DEFAULT_ONNX_CROSS_ENCODER,
        args.frozen,
        budget(args.passage),
        passage=args.passage,
        trained_on=args.trained_on,
        fitted_on="ordinal model and grade cuts: CrowdFlower dev queries",
        affine=[float(v) for v in affine],
        source=str(args.finetuned.name),
    )
    shipped = fit_shipped(dev_logits, cf, meta)
    args.bundle.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(delta, args.bundle / (DELTA_FILE + ".tmp"))
    (args.bundle / (DELTA_FILE + ".tmp")).replace(args.bundle / DELTA_FILE)
    shipped.save(args.bundle / MODEL_FILE)
    report["shipped"] = {"cuts": list(shipped.cuts), "grade_cuts": list(shipped.grade_cuts), "coef": list(shipped.coef)}

    for name, data in sets.items():
        for split in ("dev", "test"):
            values = uppers["fp16"].predict(states[(name, split)])[0]
            write_logits(var / f"ft-logits-{name}-{split}.tsv", data.pairs(split), values)
        cache = logits_cache(var, name, args.passage)
        report[name] = score_test(data, uppers["fp16"], states, name, cache, args, kind=args.passage)
    test_logits = uppers["fp16"].predict(states[("crowdflower", "test")])[0]
    labels = shipped.grade(np.asarray(test_logits).reshape(-1, 1))
    test_grades = [p.grade for p in cf.pairs("test")]
    report["crowdflower"]["rows"].append({"grader": SHIPPED} | agreement(test_grades, labels, cf.grades, cf.cut))
    if args.compare is not None:  # another served model on the same test pairs, whatever it reads
        test = cf.pairs("test")
        other = served_labels(args.compare, cf, test)
        row = {"grader": f"{args.compare} (served)"} | agreement(test_grades, other, cf.grades, cf.cut)
        report["crowdflower"]["rows"].append(row)
        diff = bootstrap_kappa_diff(test, list(labels), other, cf.grades, cf.cut)
        report["crowdflower"]["kappa_quadratic_diff_vs_compare"] = {"compare": args.compare} | diff
    report["serving_check"] = serving_check(args.bundle, cf, dev_logits, args.check_queries)
    log.info("serving check: %s", report["serving_check"])
    report["load_after"] = os.getloadavg()[0]
    return report


def table(report: Mapping[str, Any]) -> str:
    c = report["fp16_vs_fp32"]
    lines = [
        f"delta: {report['delta_tensors']} tensors, {report['delta_bytes'] / 1e6:.1f} MB (fp16)",
        f"fp16 vs fp32 logits: dev max |Δ| {c['dev_max_abs_diff']:.4f} (Spearman {c['dev_spearman']:.5f}), "
        f"test max |Δ| {c['test_max_abs_diff']:.4f}; dev κq {c['fp32']['dev_kappa_quadratic']:.4f} → "
        f"{c['fp16']['dev_kappa_quadratic']:.4f}, test κq {c['fp32']['test_kappa_quadratic']:.4f} → "
        f"{c['fp16']['test_kappa_quadratic']:.4f}",
        f"serving check: {report['serving_check']}",
    ]
    return "\n".join(lines + grader_tables(report))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.graded_ce", description=__doc__.split("\n")[0]
    )
    p.add_argument("--finetuned", type=Path, required=True, help="the model graded_finetune --save wrote")
    p.add_argument("--crowdflower", type=Path, required=True, help="the CrowdFlower search-relevance BEIR folder")
    p.add_argument("--homedepot", type=Path, default=None, help="the Home Depot search-relevance BEIR folder")
    p.add_argument("--frozen", type=int, default=8, help="lower encoder layers the fine-tuning kept fixed")
    p.add_argument("--passage", choices=PASSAGES, default="ce", help="what the model read (graded_finetune --passage)")
    p.add_argument(
        "--trained-on",
        default="CrowdFlower search relevance train queries (grades 1-4); query + title",
        help="what the fine-tuned model was trained on (recorded in model.json)",
    )
    p.add_argument("--bundle", type=Path, required=True, help="write the graded-ce model folder here")
    p.add_argument("--compare", default=None, help="a graded-ce model served beside it on CrowdFlower test")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check-queries", type=int, default=5, help="dev queries the served model is checked on")
    p.add_argument("--var", type=Path, default=Path("var/gradedce"), help="folder of caches")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    args = parser().parse_args(argv)
    return run_study(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
