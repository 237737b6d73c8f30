"""First-stage index backends (entry-point group ``twostage_search.index_backends``).

``load(path)`` opens any index with the backend named in its ``meta.json``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twostage_search.engine.errors import InputError
from twostage_search.engine.registry import index_backends
from twostage_search.indexes.meta import read_meta

# What `twostage index` builds unless told otherwise: BM25 + dense (bge-small) fused by min-max scores,
# chosen on the SciFact and CrowdFlower dev splits (docs/first-stage.md, "Dense and hybrid first stages").
DEFAULT_BACKEND = "hybrid"


def load(path: str | Path) -> Any:
    """Open the index at ``path`` with the backend recorded in its ``meta.json``."""
    meta = read_meta(path)
    return index_backends.get(meta["backend"]).open(path)


def open_retriever(index: Any, options: Mapping[str, Any] | None = None, encoder: Any = None) -> Any:
    """``index.retriever(encoder, **options)`` (without ``encoder`` when it is ``None``), where an option the
    backend does not take is an :class:`InputError` naming the ones it does (e.g. ``ef_search`` for a dense
    index, ``query_side`` for ``impact-csc``). For a hybrid, ``COMPONENT.OPTION`` keys are that component's
    options (``dense.query_encoder``, ``splade.query_side``)."""
    options = dict(options or {})
    signature = inspect.signature(index.retriever)
    accepted = [n for n, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if "components" in accepted:  # a hybrid: "dense.query_encoder" is the dense component's query_encoder
        nested: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (options.pop("components", None) or {}).items()}
        for key in [k for k in options if "." in k]:
            name, _, option = key.partition(".")
            nested.setdefault(name, {})[option] = options.pop(key)
        if nested:
            options["components"] = nested
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        backend = getattr(index, "backend", type(index).__name__)
        takes = ", ".join(accepted) or "none"
        raise InputError(f"{backend} retrievers take no option {', '.join(unknown)} (they take: {takes})")
    return index.retriever(**options) if encoder is None else index.retriever(encoder, **options)
