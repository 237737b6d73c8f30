"""First-stage index backends (entry-point group ``twostage_search.index_backends``).

``load(path)`` opens any index with the backend named in its ``meta.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twostage_search.engine.registry import index_backends
from twostage_search.indexes.meta import read_meta

# What `twostage index` builds unless told otherwise: BM25 + dense (bge-small) fused by min-max scores,
# chosen on the SciFact and CrowdFlower dev splits (docs/first-stage.md, "Dense and hybrid first stages").
DEFAULT_BACKEND = "hybrid"


def load(path: str | Path) -> Any:
    """Open the index at ``path`` with the backend recorded in its ``meta.json``."""
    meta = read_meta(path)
    return index_backends.get(meta["backend"]).open(path)
