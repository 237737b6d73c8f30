"""Command-line pieces of the ``hybrid`` backend: fusion flags of ``twostage index --backend hybrid`` and the
``twostage hybrid`` command, which writes a hybrid over existing indexes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twostage_search.engine.argtypes import positive_float, positive_int
from twostage_search.engine.errors import InputError
from twostage_search.engine.fusion import METHODS
from twostage_search.indexes.hybrid import DEFAULT_COMPONENTS, DEFAULT_METHOD, KNOWN_COMPONENTS, LEXICAL_BACKENDS


def add_fusion_arguments(p: Any, *, build: bool = False) -> None:
    if build:
        p.add_argument(
            "--components",
            default=None,
            help=f"comma-separated components to build (default {','.join(DEFAULT_COMPONENTS)}; known: "
            f"{','.join(KNOWN_COMPONENTS)})",
        )
        p.add_argument(
            "--lexical",
            choices=LEXICAL_BACKENDS,
            default=None,
            help=f"backend of the bm25 component (default {KNOWN_COMPONENTS['bm25']}: Lucene's BM25 scores, in "
            "process; lucene-bm25 ranks the same)",
        )
    p.add_argument(
        "--fusion", choices=METHODS, default=DEFAULT_METHOD, help=f"fusion method (default {DEFAULT_METHOD})"
    )
    p.add_argument("--rrf-k", type=positive_float, default=60.0, help="RRF k (default 60)")
    p.add_argument("--fusion-depth", type=positive_int, default=100, help="candidates per component (default 100)")
    p.add_argument("--weight", action="append", default=[], metavar="NAME=W", help="component weight (default 1)")


def add_compose_parser(sub: Any) -> None:
    hy = sub.add_parser("hybrid", help="combine existing indexes of one corpus into a hybrid (fused) index")
    hy.add_argument("--index", required=True, type=Path, help="hybrid index directory to create or replace")
    hy.add_argument(
        "--component",
        required=True,
        action="append",
        metavar="NAME=PATH[:WEIGHT]",
        help="a component index (repeat; e.g. splade=var/scifact dense=var/scifact-dense:1.5)",
    )
    add_fusion_arguments(hy)


def fusion(args: argparse.Namespace) -> Any:
    from twostage_search.indexes.hybrid import Fusion

    return Fusion(method=args.fusion, k=args.rrf_k, depth=args.fusion_depth)


def weights(values: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for value in values:
        name, sep, weight = value.partition("=")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise InputError(f"--weight takes NAME=NUMBER, got {value!r}") from None
        if not sep or not name.strip():
            raise InputError(f"--weight takes NAME=NUMBER, got {value!r}")
    return out


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """Extra ``build`` options of ``twostage index`` for ``--backend hybrid`` (none for other backends)."""
    if args.backend != "hybrid":
        if args.weight or args.dense_model or args.dense_encoder or args.components or args.lexical:
            raise InputError(
                "--components, --weight, --lexical, --dense-model and --dense-encoder apply only to --backend hybrid"
            )
        return {}
    options: dict[str, Any] = {"fusion": fusion(args), "weights": weights(args.weight)}
    if args.lexical:
        options["lexical"] = args.lexical
    if args.components:
        options["components"] = [c.strip() for c in args.components.split(",") if c.strip()]
    if args.dense_model or args.dense_encoder:
        from twostage_search.indexes.dense import DenseFlatIndex

        options["dense_encoder"] = DenseFlatIndex.create_encoder(
            kind=args.dense_encoder, model=args.dense_model, max_length=args.max_length
        )
    return options


def compose(args: argparse.Namespace) -> int:
    """``twostage hybrid``: write a hybrid index over existing component indexes."""
    from twostage_search.indexes.hybrid import Component, HybridIndex

    default_weights = weights(args.weight)
    parts = []
    for value in args.component:
        name, sep, rest = value.partition("=")
        path, _, weight = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if not sep or not name or not path:
            raise InputError(f"--component takes NAME=PATH[:WEIGHT], got {value!r}")
        try:
            w = float(weight) if weight else default_weights.get(name, 1.0)
        except ValueError:
            raise InputError(f"--component weight must be a number, got {value!r}") from None
        parts.append(Component(name, path, w))
    index = HybridIndex.compose(args.index, parts, fusion(args))
    described = ", ".join(f"{n} ×{w:g}" for n, w in index.weights.items())
    print(f"hybrid {args.index}: {described}; {index.fusion.method} fusion over the top {index.fusion.depth}")
    return 0
