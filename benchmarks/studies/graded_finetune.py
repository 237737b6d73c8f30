"""Fine-tune the bundled MS MARCO cross-encoder (dequantised from its INT8 ONNX graph) on CrowdFlower grades.

    python -m twostage_search.benchmarks.studies.graded_finetune \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --homedepot ../shared/datasets/homedepot-search-relevance \\
        --out benchmarks/results/graded-finetune.json

The model reads what the ``graded`` model's ``ce`` logit reads: the query and the item title (64 tokens at most);
with ``--passage ce_text``, the query, the title and the description (128 tokens). Its embeddings and lower
``--frozen`` layers stay fixed (their outputs are computed once and cached); the upper layers, the pooler, the
classifier and a head from logit to grade are trained (:mod:`twostage_search.benchmarks.finetune`): an affine map
on the squared grade error (``--loss mse``), or a cumulative-logit head on the grade's negative log-likelihood
(``ordinal``), plus the squared error of E[grade] (``ordinal+mse``). Splits are the committed query-level ones.
Each setting (learning rate × loss × seed × training data: CrowdFlower train, or it plus the Home Depot train
subsample with 1/2/3 read as 1/3/4) runs ``--epochs`` epochs; after each, the dev predictions are cut into grades
by thresholds matching the dev grade mix (:func:`~twostage_search.benchmarks.graded.fit_thresholds`, as for the
zero-shot cross-encoder bar) and scored by quadratic κ. The best (setting, epoch) on CrowdFlower dev is scored once
on CrowdFlower test and on the Home Depot test subsample (thresholds on each set's dev split), beside the zero-shot
INT8 cross-encoder with dev thresholds (and, with ``--compare``, a bundled ``graded-ce`` delta, its logit cut the
same way), with bootstrap CIs over test queries. With ``--soup`` and several ``--seed``, the uniform average of the
seeds' trained tensors (:mod:`~twostage_search.benchmarks.soup`) is scored on dev beside them at each epoch and may
be chosen; on test the best soup and the best single run on dev are set side by side. ``--dev-only`` stops before
test.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.finetune import (
    LOSSES,
    TrainSetting,
    UpperModel,
    encode,
    token_lengths,
    train_epochs,
)
from twostage_search.benchmarks.graded import GradedSet, agreement, apply_thresholds, fit_thresholds
from twostage_search.benchmarks.graded_data import LogitCache, load_split_set
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.soup import rival, soup_rows, soup_table
from twostage_search.benchmarks.studies.graded_ce_inputs import (
    PASSAGES,
    budget,
    cached_states,
    fill_logits,
    finetuned,
    grader_tables,
    logits_cache,
    read_pairs,
    texts,
    zero_shot,
)
from twostage_search.benchmarks.studies.graded_model import (
    HD_CUT,
    HD_SUBSAMPLE,
    HD_TO_CROWDFLOWER,
    bootstrap_kappa_diff,
)
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER
from twostage_search.rerankers.graded import LOGITS
from twostage_search.rerankers.graded_ce import DELTA_FILE, apply_delta
from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker, onnx_model_files
from twostage_search.rerankers.onnx_to_torch import tokenizer_from_file, torch_from_onnx

log = logging.getLogger(__name__)


def parity(model: Any, tokenizer: Any, data: GradedSet, n: int, threads: int, kind: str = "ce") -> dict[str, Any]:
    """Torch (dequantised, fp32) vs ONNX INT8 logits on ``n`` seeded CrowdFlower dev pairs, one pair at a time."""
    import torch
    from scipy.stats import pearsonr, spearmanr

    pairs = data.sample("dev", n)
    onnx = OnnxCrossEncoderReranker(DEFAULT_ONNX_CROSS_ENCODER, max_length=budget(kind), threads=threads)
    read = read_pairs(data, pairs, kind)
    ref = [onnx.score(query, [text])[0] for query, text in read]
    enc = encode(tokenizer, read, budget(kind))
    got = []
    with torch.no_grad():
        for e in enc:
            feed = {k: torch.tensor([v]) for k, v in e.items()}
            got.append(float(model(**feed).logits[0, 0]))
    diff = np.abs(np.asarray(got) - np.asarray(ref))
    return {
        "pairs": len(pairs),
        "pearson": float(pearsonr(got, ref)[0]),
        "spearman": float(spearmanr(got, ref)[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "logit_range": [float(min(ref)), float(max(ref))],
    }


def split_check(
    model: Any, tokenizer: Any, data: GradedSet, dev_states: Sequence[np.ndarray], frozen: int, kind: str = "ce"
) -> Any:
    """Largest |logit| difference, first 64 dev pairs, between the cached-frozen path and the whole model."""
    import torch

    enc = encode(tokenizer, texts(data, "dev", kind)[:64], budget(kind))
    upper = UpperModel(model, frozen)
    split, _ = upper.predict(dev_states[:64])
    with torch.no_grad():
        whole = [float(model(**{k: torch.tensor([v]) for k, v in e.items()}).logits[0, 0]) for e in enc]
    return {"pairs": len(enc), "max_abs_diff": float(np.abs(split - np.asarray(whole)).max())}


def dev_kappa(pred: Sequence[float] | np.ndarray, grades: Sequence[int], data: GradedSet) -> tuple[float, list[float]]:
    values = [float(v) for v in pred]
    cuts = fit_thresholds(values, list(grades), data.grades)
    labels = apply_thresholds(values, cuts, data.grades)
    return float(agreement(list(grades), labels, data.grades, data.cut)["kappa_quadratic"]), cuts


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    var = args.var
    var.mkdir(parents=True, exist_ok=True)
    cf = load_split_set(args.crowdflower)
    hd = load_split_set(args.homedepot, HD_SUBSAMPLE, cut=HD_CUT) if args.homedepot is not None else None
    model_path, tokenizer_path = onnx_model_files(DEFAULT_ONNX_CROSS_ENCODER)
    started = time.perf_counter()
    model = torch_from_onnx(model_path)
    tokenizer = tokenizer_from_file(tokenizer_path)
    report: dict[str, Any] = {"load_before": os.getloadavg()[0], "convert_s": time.perf_counter() - started}
    kind = args.passage
    if args.compare is not None and kind != "ce":  # the bundle reads titles: it would be fed this passage's states
        raise SystemExit("--compare feeds the bundle titles: use it with --passage ce (graded_ce --compare serves any)")
    report["passage"] = {"logit": kind, "reads": LOGITS[kind][0], "max_length": budget(kind)}
    report["parity"] = (
        parity(model, tokenizer, cf, args.parity_pairs, args.threads, kind) if args.parity_pairs else None
    )
    report["token_lengths"] = token_lengths(tokenizer, texts(cf, "train", kind))
    log.info("parity %s; token lengths %s", report["parity"], report["token_lengths"])

    sets = {"crowdflower": cf} | ({"homedepot": hd} if hd is not None else {})
    states: dict[tuple[str, str], list[np.ndarray]] = {}
    started = time.perf_counter()
    for name, data in sets.items():
        for split in ("train", "dev", "test") if name == "crowdflower" or args.homedepot_train else ("dev", "test"):
            states[(name, split)] = cached_states(model, tokenizer, data, name, split, var, args.frozen, kind)
    report["frozen_states_s"] = time.perf_counter() - started
    report["split_check"] = split_check(model, tokenizer, cf, states[("crowdflower", "dev")], args.frozen, kind)
    log.info("frozen + upper vs whole model: %s", report["split_check"])
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cf_train = [float(p.grade) for p in cf.pairs("train")]
    trials: list[dict[str, Any]] = []
    data_options = {"crowdflower": (states[("crowdflower", "train")], cf_train)}
    if hd is not None and args.homedepot_train:
        hd_train = [float(HD_TO_CROWDFLOWER[p.grade]) for p in hd.pairs("train")]
        data_options["crowdflower + homedepot"] = (
            states[("crowdflower", "train")] + states[("homedepot", "train")],
            cf_train + hd_train,
        )
    if args.data != "all":
        data_options = {k: v for k, v in data_options.items() if k == args.data}
        if not data_options:
            raise SystemExit(f"--data {args.data!r}: not available (give --homedepot and --homedepot-train)")
    heads: dict[str, tuple[int, ...]] = {}
    for data_name, (x, y) in data_options.items():
        for lr, loss, seed in ((lr, loss, seed) for lr in args.lr for loss in args.loss for seed in args.seed):
            setting = TrainSetting(
                lr=lr, epochs=args.epochs, data=data_name, batch_size=args.batch_size, seed=seed, loss=loss
            )
            model.load_state_dict(base)
            upper = UpperModel(model, args.frozen, () if loss == "mse" else cf.grades)
            rows = run_setting(upper, setting, x, y, states, cf, args)
            heads[rows[0]["tag"]] = upper.grades
            trials += rows
    if args.soup:
        cf_dev, dev_states = [p.grade for p in cf.pairs("dev")], states[("crowdflower", "dev")]
        trials += soup_rows(
            model, base, heads, trials, var, args.frozen, lambda u: dev_kappa(u.predict(dev_states)[1], cf_dev, cf)
        )
    scored = [t for t in trials if t.get("epoch", 0) >= 1]
    top = max(scored, key=lambda t: t["dev_kappa_quadratic"])
    best = (top["dev_kappa_quadratic"], top["tag"], top["epoch"])
    report["trials"] = trials
    report["chosen"] = {"dev_kappa_quadratic": best[0], "tag": best[1], "epoch": best[2]}
    model.load_state_dict(base)
    upper = UpperModel(model, args.frozen, heads[best[1]])
    upper.load(torch.load(var / f"ckpt-{best[1]}-e{best[2]}.pt"))
    if args.save is not None:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
        torch.save({"affine": upper.affine.detach(), "head": upper.head.detach()}, args.save / "affine.pt")
    if args.dev_only:
        return report
    others = {}
    if (other := rival(scored, top)) is not None:  # a soup beside its best single run on test, or the reverse
        beside = UpperModel(copy.deepcopy(model), args.frozen, heads[other["tag"]])
        beside.model.load_state_dict(base)
        beside.load(torch.load(var / f"ckpt-{other['tag']}-e{other['epoch']}.pt"))
        others[f"{other['tag']} epoch {other['epoch']} (best on dev of its kind), dev thresholds"] = beside
    if args.compare is not None:  # a bundled delta replaces every trained tensor; the lower layers are the base's
        shipped = apply_delta(copy.deepcopy(model), args.compare / DELTA_FILE)
        others[f"{args.compare.name} (bundled), dev thresholds"] = UpperModel(shipped, args.frozen)
        report["compare_dev_kappa_quadratic"] = {
            k: dev_kappa(o.predict(states[("crowdflower", "dev")])[0], [p.grade for p in cf.pairs("dev")], cf)[0]
            for k, o in others.items()
        }
    for name, data in sets.items():
        report[name] = score_test(data, upper, states, name, logits_cache(var, name, kind), args, others, kind)
    report["load_after"] = os.getloadavg()[0]
    return report


def run_setting(
    upper: UpperModel,
    setting: TrainSetting,
    x: Sequence[np.ndarray],
    y: Sequence[float],
    states: Mapping[tuple[str, str], list[np.ndarray]],
    cf: GradedSet,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Train one setting (resuming from its last checkpoint under ``args.var``); a dev row per epoch."""
    import torch

    var, dev_states = args.var, states[("crowdflower", "dev")]
    cf_train = [float(p.grade) for p in cf.pairs("train")]
    cf_dev = [p.grade for p in cf.pairs("dev")]
    tag = f"{setting.data.replace(' + ', '+')}-lr{setting.lr:g}-ep{setting.epochs}-frozen{upper.frozen}"
    tag += "" if setting.loss == "mse" else f"-{setting.loss}"
    tag += "" if setting.seed == 13 else f"-seed{setting.seed}"
    tag += "" if args.passage == "ce" else f"-{args.passage}"
    base = {"tag": tag, "lr": setting.lr, "data": setting.data, "loss": setting.loss, "seed": setting.seed}
    if upper.grades:
        head: dict[str, Any] = {"head": upper.fit_head(states[("crowdflower", "train")], cf_train)}
    else:
        head = {"affine": upper.fit_affine(states[("crowdflower", "train")], cf_train)}
    rows = [base | {"epoch": 0, "dev_kappa_quadratic": dev_kappa(upper.predict(dev_states)[1], cf_dev, cf)[0]} | head]
    started = time.perf_counter()

    def on_epoch(epoch: int, opt_state: dict[str, Any]) -> None:
        kappa, cuts = dev_kappa(upper.predict(dev_states)[1], cf_dev, cf)
        torch.save(upper.state(), var / f"ckpt-{tag}-e{epoch}.pt")
        torch.save(opt_state | {"epoch": epoch}, var / f"opt-{tag}.pt")
        elapsed = time.perf_counter() - started
        rows.append(base | {"epoch": epoch, "dev_kappa_quadratic": kappa, "dev_cuts": cuts, "elapsed_s": elapsed})
        log.info("%s epoch %d: dev κq %.4f", tag, epoch, kappa)

    start, opt_state = 0, None
    if (var / f"opt-{tag}.pt").is_file():  # resume after the last saved epoch
        opt_state = torch.load(var / f"opt-{tag}.pt", weights_only=False)
        start = int(opt_state["epoch"])
        for e in range(1, start + 1):
            upper.load(torch.load(var / f"ckpt-{tag}-e{e}.pt"))
            kappa, cuts = dev_kappa(upper.predict(dev_states)[1], cf_dev, cf)
            rows.append(base | {"epoch": e, "dev_kappa_quadratic": kappa, "dev_cuts": cuts, "resumed": True})
    history = train_epochs(upper, x, y, setting, on_epoch, start_epoch=start, optimizer_state=opt_state)
    rows.append(base | {"history": history, "train_pairs": len(x), "train_s": time.perf_counter() - started})
    return rows


def score_test(
    data: GradedSet,
    upper: UpperModel,
    states: Mapping[tuple[str, str], list[np.ndarray]],
    name: str,
    cache: Path,
    args: argparse.Namespace,
    others: Mapping[str, UpperModel] | None = None,
    kind: str = "ce",
) -> dict[str, Any]:
    """The chosen model, the zero-shot cross-encoder and ``others`` (fine-tuned models compared, their logits cut
    the same way) on the set's test pairs, thresholds from its dev pairs."""
    dev, test = data.pairs("dev"), data.pairs("test")
    dev_grades, test_grades = [p.grade for p in dev], [p.grade for p in test]
    _, dev_pred = upper.predict(states[(name, "dev")])
    _, test_pred = upper.predict(states[(name, "test")])
    cuts = fit_thresholds(list(dev_pred), dev_grades, data.grades)
    finetuned_, zero_shot_ = finetuned(kind), zero_shot(kind)
    labels = {finetuned_: apply_thresholds(list(test_pred), cuts, data.grades)}
    logits = LogitCache(cache)
    onnx = OnnxCrossEncoderReranker(DEFAULT_ONNX_CROSS_ENCODER, max_length=budget(kind), threads=args.threads)
    fill_logits(data, [*dev, *test], logits, onnx, kind)
    ce_dev = [logits.values[(p.query_id, p.doc_id)] for p in dev]
    ce_cuts = fit_thresholds(ce_dev, dev_grades, data.grades)
    labels[zero_shot_] = apply_thresholds([logits.values[(p.query_id, p.doc_id)] for p in test], ce_cuts, data.grades)
    for grader, other in (others or {}).items():
        other_cuts = fit_thresholds(list(other.predict(states[(name, "dev")])[0]), dev_grades, data.grades)
        labels[grader] = apply_thresholds(list(other.predict(states[(name, "test")])[0]), other_cuts, data.grades)
    majority = max(data.grades, key=lambda g: (dev_grades.count(g), g))
    labels[f"constant majority of dev ({majority})"] = [majority] * len(test)
    rows = []
    for grader, graded in labels.items():
        m = agreement(test_grades, graded, data.grades, data.cut)
        rows.append({"grader": grader} | m)
    ci = bootstrap_kappa_diff(test, labels[finetuned_], labels[zero_shot_], data.grades, data.cut)
    vs = {k: bootstrap_kappa_diff(test, labels[finetuned_], labels[k], data.grades, data.cut) for k in others or {}}
    return {
        "rows": rows,
        "kappa_quadratic_diff_vs_zero_shot": ci,
        "kappa_quadratic_diff_vs": vs,
        "test_queries": len(data.splits["test"]),
        "test_pairs": len(test),
        "dev_cuts": cuts,
    }


def table(report: Mapping[str, Any]) -> str:
    lines = []
    par = report.get("parity")
    if par:
        lines.append(
            f"torch vs ONNX INT8 on {par['pairs']} pairs: Pearson {par['pearson']:.4f}, "
            f"Spearman {par['spearman']:.4f}, max |Δ| {par['max_abs_diff']:.3f}"
        )
    lines.append("| setting | epoch | dev κ quadratic |")
    lines.append("| --- | --- | --- |")
    for t in report["trials"]:
        if "dev_kappa_quadratic" in t:
            lines.append(f"| {t['tag']} | {t['epoch']} | {t['dev_kappa_quadratic']:.4f} |")
    lines += soup_table(report["trials"])
    c = report["chosen"]
    lines.append(f"chosen on dev: {c['tag']} epoch {c['epoch']} (dev κq {c['dev_kappa_quadratic']:.4f})")
    return "\n".join(lines + grader_tables(report))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.graded_finetune", description=__doc__.split("\n")[0]
    )
    p.add_argument("--crowdflower", type=Path, required=True, help="the CrowdFlower search-relevance BEIR folder")
    p.add_argument("--homedepot", type=Path, default=None, help="the Home Depot search-relevance BEIR folder")
    p.add_argument("--homedepot-train", action="store_true", help="also train on the Home Depot train subsample")
    p.add_argument(
        "--data",
        choices=("all", "crowdflower", "crowdflower + homedepot"),
        default="all",
        help="train on this training data only (default: every option given)",
    )
    p.add_argument("--lr", type=float, nargs="+", default=[5e-5], help="learning rates tried")
    p.add_argument("--loss", choices=LOSSES, nargs="+", default=["mse"], help="training losses tried")
    p.add_argument("--seed", type=int, nargs="+", default=[13], help="training seeds tried (batch order, dropout)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--passage", choices=PASSAGES, default="ce", help="ce: query + title; ce_text: + description")
    p.add_argument("--soup", action="store_true", help="also score the uniform soup of each setting's seeds per epoch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--frozen", type=int, default=8, help="lower encoder layers kept fixed (outputs cached)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parity-pairs", type=int, default=200, help="pairs for the torch-vs-ONNX check (0: skip)")
    p.add_argument("--var", type=Path, default=Path("var/finetune"), help="folder of caches and checkpoints")
    p.add_argument("--save", type=Path, default=None, help="save the dev-chosen model (transformers format) here")
    p.add_argument("--compare", type=Path, default=None, help="a graded-ce bundle folder to compare with on test")
    p.add_argument("--dev-only", action="store_true", help="train and score on dev only (no test scores)")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(1)
    args = parser().parse_args(argv)
    return run_study(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
