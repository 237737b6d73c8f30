"""``twostage hnsw``: add (or replace) the HNSW graph of a ``dense-flat`` index, or of a hybrid's dense component,
without re-encoding anything (:meth:`DenseFlatIndex.add_hnsw <indexes.dense.DenseFlatIndex.add_hnsw>`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from twostage_search.engine.argtypes import positive_int
from twostage_search.engine.errors import InputError


def add_hnsw_parser(sub: Any) -> None:
    from twostage_search.indexes.dense_hnsw import SCALARS, HnswConfig

    defaults = HnswConfig()
    h = sub.add_parser(
        "hnsw", help="add an HNSW graph to a dense-flat index (or a hybrid's dense component), atomically"
    )
    h.add_argument("--index", required=True, type=Path, help="a dense-flat index, or a hybrid with a dense component")
    h.add_argument("--component", default="dense", help="the hybrid's component to give the graph (default dense)")
    h.add_argument("--m", type=positive_int, default=defaults.m, help=f"links per node (default {defaults.m})")
    h.add_argument("--ef-construction", type=positive_int, default=defaults.ef_construction)
    h.add_argument(
        "--ef-search",
        type=positive_int,
        default=defaults.ef_search,
        help="candidates kept while searching; choose it on dev queries of your corpus "
        f"(default {defaults.ef_search}; a retriever may override it)",
    )
    h.add_argument(
        "--scalar",
        choices=SCALARS,
        default=None,
        help="the graph's copy of the vectors (default: the index's own dtype; i8: a quarter of the bytes)",
    )
    h.add_argument(
        "--refine-factor",
        type=positive_int,
        default=defaults.refine_factor,
        help="score the graph's top FACTOR × k exactly (2 recovers an i8 graph's recall; default 1)",
    )


def hnsw_from_args(args: argparse.Namespace) -> int:
    """Add the graph; print where, its settings and the seconds it took."""
    from twostage_search import indexes
    from twostage_search.indexes.dense import DenseFlatIndex
    from twostage_search.indexes.dense_hnsw import HnswConfig
    from twostage_search.indexes.hybrid import HybridIndex

    config = HnswConfig(
        m=args.m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        scalar=args.scalar,
        refine_factor=args.refine_factor,
    )
    index = indexes.load(args.index)
    if isinstance(index, HybridIndex):
        if args.component not in index.components:
            raise InputError(f"{args.index} has no component {args.component!r} (it has {', '.join(index.components)})")
        index = index.components[args.component]
    if not isinstance(index, DenseFlatIndex):
        raise InputError(f"{index.path} is a {index.meta.get('backend')} index: a graph goes on a dense-flat index")
    target = index.path
    started = time.perf_counter()
    DenseFlatIndex.add_hnsw(target, config)
    print(
        f"added an HNSW graph to {target} (m {config.m}, ef_search {config.ef_search}, "
        f"scalar {config.scalar or 'as the vectors'}, refine_factor {config.refine_factor}) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return 0
