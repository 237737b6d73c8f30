"""First-stage index backends. ``load(path)`` opens any index by the backend named in its ``meta.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.registry import index_backends
from indexes import (
    lucene_bm25,  # noqa: F401  (registers "lucene-bm25", the BM25 baseline)
    lucene_impact,  # noqa: F401  (registers "lucene-impact")
    opensearch,  # noqa: F401  (registers "opensearch"; opensearch-py is imported on use)
)
from indexes._atomic import read_meta

DEFAULT_BACKEND = "lucene-impact"


def load(path: str | Path) -> Any:
    """Open the index at ``path`` with the backend recorded in its ``meta.json``."""
    meta = read_meta(path)
    return index_backends.get(meta["backend"]).open(path)
