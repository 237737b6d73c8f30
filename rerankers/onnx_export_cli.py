"""``twostage export-onnx``: a sentence-transformers cross-encoder (or, with ``--bi-encoder``, a bi-encoder) to
ONNX, INT8 or fp32 (:mod:`~twostage_search.rerankers.onnx_export`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from twostage_search.engine.argtypes import positive_int
from twostage_search.engine.errors import InputError


def add_export_parser(sub: Any) -> None:
    x = sub.add_parser("export-onnx", help="export a sentence-transformers cross-encoder or bi-encoder to ONNX")
    x.add_argument("model", help="bundled:NAME, a local model directory, or a hub name")
    x.add_argument("out", type=Path, help="output directory (model.onnx + tokenizer.json; written atomically)")
    x.add_argument(
        "--precision",
        choices=["int8", "fp32"],
        default=None,
        help="int8: dynamic quantisation (default int8 for a cross-encoder, fp32 for a bi-encoder)",
    )
    x.add_argument("--opset", type=positive_int, default=17)
    x.add_argument(
        "--graded-ce",
        action="store_true",
        help="a graded-ce model (bundled:NAME or a folder with a delta): writes a graded-ce model folder",
    )
    x.add_argument(
        "--bi-encoder",
        action="store_true",
        help="a bi-encoder (CLS or mean pooling) for the onnx dense encoder: also writes dense.json",
    )


def export_from_args(args: argparse.Namespace) -> int:
    from twostage_search.rerankers.onnx_export import export_bi_encoder, export_cross_encoder

    if args.graded_ce and args.bi_encoder:
        raise InputError("--graded-ce and --bi-encoder exclude each other")
    if args.graded_ce:
        from twostage_search.rerankers.graded_ce_export import export_graded_ce

        info = export_graded_ce(args.model, args.out, precision=args.precision or "int8", opset=args.opset)
        print(f"{args.out}: {info['precision']} ONNX graded-ce, max |torch - ONNX| logit {info['max_abs_logit_diff']}")
        print(f"use it with: --reranker graded-ce (params: {{model: {args.out}}})")
        return 0
    if args.bi_encoder:
        info = export_bi_encoder(args.model, args.out, precision=args.precision or "fp32", opset=args.opset)
        print(
            f"{args.out}: {info['precision']} ONNX bi-encoder ({info['pooling']} pooling, query prefix "
            f"{info['query_prefix']!r}), max 1 - cos to torch {info['max_cosine_distance']}"
        )
        print(f"use it with: twostage index CORPUS --backend dense-flat --model {args.out}")
        return 0
    info = export_cross_encoder(args.model, args.out, precision=args.precision or "int8", opset=args.opset)
    print(f"{args.out}: {info['precision']} ONNX, max |torch - ONNX| logit {info['max_abs_logit_diff']}")
    print(f"use it with: --reranker onnx-cross-encoder (params: {{model: {args.out}}})")
    return 0
