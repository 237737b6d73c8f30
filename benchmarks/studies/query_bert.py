"""Distil a contextual dense query side for bge-small indexes: its first layers, fine-tuned end to end.

    python -m twostage_search.benchmarks.studies.query_bert fit --layers 2,3,4 --epochs 2 \
        --cache var/query_static --work var/query_bert --report benchmarks/results/query_bert/fit.json \
        --dense-index scifact=var/scifact-dense --bm25-index scifact=var/scifact-bm25 \
        --dense-index crowdflower-search-relevance=var/cf-dense --bm25-index crowdflower-search-relevance=var/cf-bm25 \
        --dense-index homedepot-search-relevance=var/hd-dense --bm25-index homedepot-search-relevance=var/hd-bm25
    python -m twostage_search.benchmarks.studies.query_bert export --layers 3 --epoch 2 --work var/query_bert \
        --out engine/students/bge-small-query-bert3 [--int8]

``fit``: for each ``--layers`` L, bge-small's embeddings and first L layers (fp32, dequantised from the INT8
export) with pooling and a linear head are trained end to end (``query_bert_train.py``) on the static table's
training texts and teacher vectors (``query_static.py``: no dev or test query among them; ``--cache`` holds the
teacher's vectors, computed there when missing), with the same loss (cosine + listwise KL over the teacher's
top 32 and 32 random documents of the text's corpus). Each epoch's weights go to ``--work``; after each epoch
the dev queries of the three sets are measured: cosine to the teacher, dense nDCG@10 and nDCG@10 in the default
hybrid (BM25 top 100 of ``--bm25-index``, read once and cached in ``--work``). The report names the (L, epoch)
with the best mean hybrid dev nDCG@10. ``--layer-ids`` builds a student from chosen layers instead (e.g.
``1,3,5,7,9,11``: every other layer, the last one kept, DistilBERT's initialisation); with ``--pooling cls
--head none`` (or ``identity``) the untrained student is already bge-small's own CLS vector of those layers.
``export`` writes one checkpoint as a student directory
(``engine/bert_query.py``): ONNX, or with ``--int8`` ONNX Runtime's dynamic INT8 quantisation of it.
``cost`` estimates the encode FLOPs per dev query of the full query side and of students (no timing).
``query_static_eval.py evaluate --student DIR`` measures a student against the full query side.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.studies.query_bert_train import HEADS
from twostage_search.benchmarks.studies.query_static import (
    CORPUS_OF,
    TEACHER,
    dev_queries,
    dev_sets,
    load_corpora,
    teacher_batched,
    training_texts,
)
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

TRAINED_ON = (
    "SciFact train queries (not dev), CrowdFlower/Home Depot train-split queries, titles, SciFact abstract "
    "sentences, title spans (no dev or test query)"
)


def tokeniser(max_length: int) -> Any:
    """The teacher's tokenizer, ``[CLS] … [SEP]`` added, truncated at ``max_length`` tokens."""
    from twostage_search.engine.dense import dense_model_files
    from twostage_search.engine.optional import require

    tokenizer = require("tokenizers", "dense").Tokenizer.from_file(str(dense_model_files(TEACHER)[1]))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def token_rows(texts: list[str], max_length: int) -> list[list[int]]:
    return [list(e.ids) for e in tokeniser(max_length).encode_batch(texts)]


def trunk(layer_ids: list[int]) -> Any:
    """bge-small's embeddings and its layers ``layer_ids`` (0-based, renumbered 0, 1, …) as a torch
    ``BertModel`` (fp32)."""
    from twostage_search.engine.dense import dense_model_files
    from twostage_search.rerankers.onnx_to_torch import encoder_from_onnx

    return encoder_from_onnx(dense_model_files(TEACHER)[0], layer_ids=layer_ids)


def layer_plans(args: argparse.Namespace) -> list[list[int]]:
    """The teacher layers of each student: ``--layer-ids`` (one student), else the first L of each ``--layers``."""
    if args.layer_ids:
        return [args.layer_ids]
    return [list(range(n)) for n in args.layers]


def lexical_runs(specs: list[str], dev: dict[str, Any], work: Path) -> dict[str, dict[str, Any]]:
    """BM25 top 100 of each dev query of the sets with a ``NAME=PATH`` BM25 index, cached in ``work``."""
    from twostage_search import indexes
    from twostage_search.engine.types import Query

    out: dict[str, dict[str, Any]] = {}
    texts = {name: dict(zip(d.query_ids, queries, strict=True)) for name, (d, queries) in dev.items()}
    for spec in specs:
        name, _, path = spec.partition("=")
        file = work / f"bm25-{name}.json"
        if file.is_file():
            out[name] = json.loads(file.read_text(encoding="utf-8"))
            continue
        retriever = indexes.load(Path(path)).retriever()
        run = {q: [(h.doc_id, h.score) for h in retriever.retrieve(Query(q, t), 100)] for q, t in texts[name].items()}
        file.write_text(json.dumps(run), encoding="utf-8")
        out[name] = run
    return out


def fit(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from twostage_search.benchmarks.studies.query_bert_train import BertSettings, dev_measure, student_module, train
    from twostage_search.engine.optional import require

    torch = require("torch", "export")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    items = training_texts(args.datasets)[: args.train_texts or None]
    texts = [t for _, t in items]
    targets = teacher_batched(texts, args.cache)
    corpora = load_corpora(args.dense_index)
    queries = dev_queries(args.datasets)
    dev = {
        name: replace(d, token_ids=token_rows(queries[name], args.max_length))
        for name, d in dev_sets(args.datasets, corpora, args.cache, 0).items()
    }
    lexical = lexical_runs(args.bm25_index, {n: (d, queries[n]) for n, d in dev.items()}, args.work)
    static = dev_static = None
    if args.static:
        from twostage_search.engine.static_query import StaticQueryEncoder

        side = StaticQueryEncoder(args.static)
        static = side.encode_queries(texts)
        dev_static = {n: side.encode_queries(queries[n]) for n in dev}
    measure = dev_measure({n: d for n, d in dev.items() if n in lexical}, lexical, dev_static)
    rows = token_rows(texts, args.max_length)
    corpus_of = [CORPUS_OF.get(source[:2]) if CORPUS_OF.get(source[:2]) in corpora else None for source, _ in items]
    report: dict[str, Any] = {"training_texts": len(texts), "runs": {}}
    for ids in layer_plans(args):
        layers = len(ids)
        name = checkpoint_name(ids, args.pooling, args.static, args.head)
        settings = BertSettings(
            layers=layers,
            pooling=args.pooling,
            head=args.head,
            epochs=args.epochs,
            lr=args.lr,
            head_lr=args.head_lr,
            batch=args.batch,
            max_length=args.max_length,
            listwise=args.listwise,
            tau=args.tau,
            warmup=args.warmup,
            word_embeddings=args.word_embeddings,
            measure_every=args.measure_every,
            seed=args.seed,
        )
        torch.manual_seed(args.seed)
        dim = corpora[next(iter(corpora))].vectors.shape[1]
        model = student_module(trunk(ids), dim, args.pooling, residual=static is not None, head=args.head)

        def checkpoint(m: Any, epoch: int, name: str = name) -> None:
            torch.save(m.state_dict(), args.work / f"{name}-e{epoch}.pt")

        def progress(
            history: list[dict[str, Any]], name: str = name, model: Any = model, s: Any = settings, ids: Any = ids
        ) -> None:
            report["runs"][name] = {
                "settings": s.__dict__ | {"static": args.static, "layer_ids": ids},
                "parameters": sum(p.numel() for p in model.parameters()),
                "history": history,
            }
            write(args.report, report)

        train(model, rows, targets, corpus_of, corpora, settings, measure, checkpoint, static, progress)
    candidates = [
        (hybrid_score(entry), name, entry["epoch"])
        for name, run in report["runs"].items()
        for entry in run["history"]
        if isinstance(entry["epoch"], int) and entry["epoch"] > 0
    ]
    if candidates:
        score, name, epoch = max(candidates)
        report["chosen"] = {"run": name, "epoch": epoch, "mean_dev_hybrid_ndcg10": round(score, 4)}
    write(args.report, report)
    return report


def checkpoint_name(layer_ids: list[int], pooling: str, static: str | None, head: str = "fit") -> str:
    """``L3-mean`` (the first 3 layers), ``L6-ids1-3-5-7-9-11-cls-head-identity``, ``L3-mean-residual``."""
    layers = f"L{len(layer_ids)}" + (
        "" if layer_ids == list(range(len(layer_ids))) else "-ids" + "-".join(map(str, layer_ids))
    )
    return f"{layers}-{pooling}" + ("" if head == "fit" else f"-head-{head}") + ("-residual" if static else "")


def hybrid_score(entry: dict[str, Any]) -> float:
    values = [v for k, v in entry.items() if k.startswith("hybrid/")]
    return float(np.mean(values)) if values else float("-inf")


def write(path: Path | None, report: dict[str, Any]) -> None:
    from twostage_search.engine.atomic import atomic_write_text

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def export(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.benchmarks.studies.query_bert_train import export_onnx, student_module
    from twostage_search.engine.atomic import atomic_directory
    from twostage_search.engine.bert_query import MODEL_FILE, student_document
    from twostage_search.engine.dense import BGE_QUERY_PREFIX
    from twostage_search.engine.optional import require

    torch = require("torch", "export")
    (ids,) = layer_plans(args)
    model = student_module(trunk(ids), 384, args.pooling, residual=args.static is not None, head=args.head)
    name = checkpoint_name(ids, args.pooling, args.static, args.head)
    state = torch.load(args.work / f"{name}-e{args.epoch}.pt", weights_only=True)
    model.load_state_dict(state)
    parameters = sum(p.numel() for p in model.parameters())
    teacher = {"model": TEACHER, "pooling": "cls", "query_prefix": BGE_QUERY_PREFIX, "max_length": 256}
    document = student_document(
        teacher,
        layers=len(ids),
        layer_ids=ids,
        head=args.head,
        pooling=args.pooling,
        dim=384,
        max_length=256,
        parameters=parameters,
        int8=args.int8,
        static=args.static,
        training={"epoch": args.epoch, "trained_on": TRAINED_ON, "study": "benchmarks/studies/query_bert.py"},
    )
    with atomic_directory(args.out, marker="student.json") as tmp:
        if args.int8:
            quantization = require("onnxruntime.quantization", "export")
            with tempfile.TemporaryDirectory() as scratch:
                fp32 = Path(scratch) / "fp32.onnx"
                export_onnx(model, fp32)
                quantization.quantize_dynamic(
                    str(fp32), str(tmp / MODEL_FILE), weight_type=quantization.QuantType.QInt8
                )
        else:
            export_onnx(model, tmp / MODEL_FILE)
        (tmp / "student.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    size = (args.out / MODEL_FILE).stat().st_size
    return {"out": str(args.out), "parameters": parameters, "model_bytes": size, "int8": args.int8}


def layer_flops(tokens: int, hidden: int = 384, intermediate: int = 1536) -> int:
    """Multiply-adds × 2 of one BERT layer over ``tokens`` tokens: Q, K, V, output and the two feed-forward
    matrices per token, plus the attention products (scores and weighted sum, ``tokens²·hidden`` each)."""
    per_token = 4 * hidden * hidden + 2 * hidden * intermediate
    return 2 * (tokens * per_token + 2 * tokens * tokens * hidden)


def cost(args: argparse.Namespace) -> dict[str, Any]:
    """Encode FLOPs per query (no timing): the teacher (12 layers over ``[CLS] prefix query [SEP]``) against
    students of ``--layers`` or ``--layer-ids`` (over ``[CLS] query [SEP]``, plus the head unless ``--head none``),
    averaged over each set's dev queries."""
    from twostage_search.engine.dense import BGE_QUERY_PREFIX

    tokenizer = tokeniser(256)
    out: dict[str, Any] = {"method": layer_flops.__doc__, "sets": {}}
    for name, texts in dev_queries(args.datasets).items():
        plain = [len(e.ids) for e in tokenizer.encode_batch(texts)]
        prefixed = [len(e.ids) for e in tokenizer.encode_batch([BGE_QUERY_PREFIX + t for t in texts])]
        full = float(np.mean([12 * layer_flops(n) for n in prefixed]))
        row: dict[str, Any] = {
            "queries": len(texts),
            "tokens_full": round(float(np.mean(prefixed)), 2),
            "tokens_student": round(float(np.mean(plain)), 2),
            "mflop_full": round(full / 1e6, 1),
        }
        head = 0 if args.head == "none" else 2 * 384 * 384
        for layers in sorted({len(ids) for ids in layer_plans(args)}):
            student = float(np.mean([layers * layer_flops(n) + head for n in plain]))
            row[f"mflop_L{layers}"] = round(student / 1e6, 1)
            row[f"ratio_L{layers}"] = round(student / full, 4)
        out["sets"][name] = row
    return out


def layer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layer-ids",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="the teacher's layers (0-based, e.g. 1,3,5,7,9,11: every other one, the last kept) instead of --layers",
    )
    parser.add_argument("--head", choices=HEADS, default="fit", help="fit (ridge; zero if residual), identity or none")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="train students of each --layers, checkpoint and measure dev per epoch")
    f.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    f.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[3])
    f.add_argument("--pooling", choices=("cls", "mean"), default="mean")
    layer_options(f)
    f.add_argument("--epochs", type=int, default=2)
    f.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the embeddings and layers")
    f.add_argument("--head-lr", type=float, default=1e-3)
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--max-length", type=int, default=64, help="tokens per training text, [CLS] and [SEP] included")
    f.add_argument("--listwise", type=float, default=1.0)
    f.add_argument("--tau", type=float, default=0.05)
    f.add_argument("--warmup", type=int, default=100, help="optimiser steps of linear warm-up")
    f.add_argument(
        "--word-embeddings", action="store_true", help="train the word-piece table too (each step is dearer)"
    )
    f.add_argument("--measure-every", type=int, default=0, help="also measure dev every N steps (no checkpoint)")
    f.add_argument("--train-texts", type=int, default=0, help="the first N (seeded order) training texts (0: all)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--static", default=None, help="a static student: train a contextual residual over it")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--dense-index", action="append", default=[], help="NAME=PATH of a teacher dense-flat index")
    f.add_argument("--bm25-index", action="append", default=[], help="NAME=PATH of a BM25 index (dev hybrid)")
    f.add_argument("--cache", type=Path, default=Path("var/query_static"), help="the teacher's vectors")
    f.add_argument("--work", type=Path, default=Path("var/query_bert"), help="checkpoints and BM25 runs")
    f.add_argument("--report", type=Path, default=None)
    e = sub.add_parser("export", help="write one checkpoint as a student directory (ONNX, optionally INT8)")
    e.add_argument("--layers", type=lambda s: [int(s)], default=[])
    e.add_argument("--epoch", type=int, required=True)
    e.add_argument("--pooling", choices=("cls", "mean"), default="mean")
    layer_options(e)
    e.add_argument("--work", type=Path, default=Path("var/query_bert"))
    e.add_argument("--int8", action="store_true", help="ONNX Runtime dynamic INT8 quantisation of the weights")
    e.add_argument("--static", default=None, help="the static student a residual checkpoint was trained over")
    e.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("cost", help="encode FLOPs per dev query: the full query side against students")
    c.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    c.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[2, 3, 4])
    layer_options(c)
    c.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "export" and len(layer_plans(args)) != 1:
        parser.error("export needs --layers or --layer-ids")
    setup_logging(args.verbose)
    report = {"fit": fit, "export": export, "cost": cost}[args.command](args)
    if args.command == "cost":
        write(args.out, report)
    json.dump({k: v for k, v in report.items() if k != "runs"}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
