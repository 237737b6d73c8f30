"""Commands that change a built ``dense-flat`` index, or a hybrid's dense component, without re-encoding anything:

- ``twostage hnsw``: add (or replace) its HNSW graph (:meth:`DenseFlatIndex.add_hnsw
  <indexes.dense.DenseFlatIndex.add_hnsw>`);
- ``twostage query-side``: record the query side its searches use by default, the full encoder or a student
  fitted onto it (:meth:`DenseFlatIndex.set_query_encoder <indexes.dense.DenseFlatIndex.set_query_encoder>`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twostage_search.engine.argtypes import positive_int
from twostage_search.engine.errors import InputError

if TYPE_CHECKING:
    from twostage_search.indexes.dense import DenseFlatIndex

COMPONENT_HELP = "the hybrid's component to change (default dense)"


def add_dense_parsers(sub: Any) -> None:
    """``twostage hnsw`` and ``twostage query-side``."""
    add_hnsw_parser(sub)
    q = sub.add_parser(
        "query-side",
        help="record the query side a dense-flat index (or a hybrid's dense component) searches with, atomically",
    )
    q.add_argument("--index", required=True, type=Path, help="a dense-flat index, or a hybrid with a dense component")
    q.add_argument("--component", default="dense", help=COMPONENT_HELP)
    q.add_argument(
        "query_encoder",
        metavar="QUERY_SIDE",
        help="'full' (the encoder that built the index) or a student fitted onto it: "
        "bundled:bge-small-query-static, bundled:bge-small-query-l2 or a student directory",
    )


def dense_commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    return {"hnsw": hnsw_from_args, "query-side": query_side_from_args}


def dense_target(path: Path, component: str) -> DenseFlatIndex:
    """The ``dense-flat`` index at ``path``, or the hybrid's ``component`` there."""
    from twostage_search import indexes
    from twostage_search.indexes.dense import DenseFlatIndex
    from twostage_search.indexes.hybrid import HybridIndex

    index = indexes.load(path)
    if isinstance(index, HybridIndex):
        if component not in index.components:
            raise InputError(f"{path} has no component {component!r} (it has {', '.join(index.components)})")
        index = index.components[component]
    if not isinstance(index, DenseFlatIndex):
        raise InputError(f"{index.path} is a {index.meta.get('backend')} index, not a dense-flat index")
    return index


def add_hnsw_parser(sub: Any) -> None:
    from twostage_search.indexes.dense_hnsw import SCALARS, HnswConfig

    defaults = HnswConfig()
    h = sub.add_parser(
        "hnsw", help="add an HNSW graph to a dense-flat index (or a hybrid's dense component), atomically"
    )
    h.add_argument("--index", required=True, type=Path, help="a dense-flat index, or a hybrid with a dense component")
    h.add_argument("--component", default="dense", help=COMPONENT_HELP)
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
    from twostage_search.indexes.dense import DenseFlatIndex
    from twostage_search.indexes.dense_hnsw import HnswConfig

    config = HnswConfig(
        m=args.m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        scalar=args.scalar,
        refine_factor=args.refine_factor,
    )
    index = dense_target(args.index, args.component)
    target = index.path
    started = time.perf_counter()
    DenseFlatIndex.add_hnsw(target, config)
    print(
        f"added an HNSW graph to {target} (m {config.m}, ef_search {config.ef_search}, "
        f"scalar {config.scalar or 'as the vectors'}, refine_factor {config.refine_factor}) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return 0


def query_side_from_args(args: argparse.Namespace) -> int:
    """Record the query side; print the index, the old and the new setting."""
    from twostage_search.engine.dense_query import FULL
    from twostage_search.indexes.dense import DenseFlatIndex

    index = dense_target(args.index, args.component)
    before = index.meta.get("query_encoder", FULL)
    DenseFlatIndex.set_query_encoder(index.path, args.query_encoder)
    print(f"{index.path}: searches encode queries with {args.query_encoder} (was {before})")
    return 0
