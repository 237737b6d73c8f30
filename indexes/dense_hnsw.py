"""Approximate search for ``dense-flat``: an HNSW graph (usearch) stored beside the exact vectors.

HNSW (Malkov and Yashunin, "Efficient and robust approximate nearest neighbor search using Hierarchical
Navigable Small World graphs", arXiv:1603.09320) links every vector to ``m`` neighbours per layer; a search
walks the graph keeping the ``ef_search`` best candidates, so it visits a small part of the collection.

The graph is built with usearch (installed with the ``dense`` extra) and saved as one file,
``hnsw.usearch``, inside the index directory, so it is written atomically with the rest of the index. It
is opened with usearch's ``view``: the file is memory-mapped, not read into memory, and shared between
processes through the page cache. Built on one thread the graph is the same, byte for byte, on every build
of the same vectors. Why usearch rather than FAISS or hnswlib (from their documentation): hnswlib has no
memory-mapped loading (``load_index`` reads the whole graph into memory); FAISS memory-maps only flat and
IVF codes, not an HNSW graph, and would be a new compiled dependency, though its searches run
concurrently without the GIL; usearch views the whole file and is already installed. Its Python ``search``
holds the GIL, so the graph searches of one process run one at a time (safe to share between threads),
while query encoding and the exact re-scoring run in parallel.

A search returns candidate rows; :class:`~indexes.dense.DenseRetriever` scores them exactly against the
stored vectors, so a document's score is the same as in the exact scan and only recall can differ. The graph
may hold its own 8-bit (or float16) copy of the vectors (``HnswConfig.scalar``): a quarter (half) of the
bytes per distance and a smaller file, with approximate distances that misorder close candidates, which
re-scoring the graph's top ``refine_factor × k`` exactly recovers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.optional import require

HNSW_FILE = "hnsw.usearch"
USEARCH_DTYPES = {"float32": "f32", "float16": "f16"}
# The graph's own copy of the vectors: float32, float16, or 8-bit integers (usearch scales a unit vector's
# components by 127 and rounds): a quarter of float32's bytes per distance, approximate distances only.
SCALARS = ("f32", "f16", "i8")


@dataclass(frozen=True, slots=True)
class HnswConfig:
    """HNSW settings: ``m`` links per node and layer (usearch's ``connectivity``), ``ef_construction``
    candidates kept while inserting (``expansion_add``), ``ef_search`` while searching (``expansion_search``;
    a retriever may override it), ``scalar``, the kind of the graph's copy of the vectors (one of
    :data:`SCALARS`; default: the index's own dtype), and ``refine_factor``: a search for the top ``k``
    takes the graph's top ``refine_factor × k`` candidates, scores them exactly against the stored
    vectors and keeps the best ``k`` (FAISS's ``k_factor``; a retriever may override it). The scores are
    exact whatever the graph holds, so a quantized graph changes only which documents are found; its
    approximate distances misorder close candidates, which a ``refine_factor`` above 1 recovers."""

    m: int = 16
    ef_construction: int = 128
    ef_search: int = 128
    scalar: str | None = None
    refine_factor: int = 1

    def __post_init__(self) -> None:
        for name in ("m", "ef_construction", "ef_search", "refine_factor"):
            if getattr(self, name) < 1:
                raise InputError(f"HNSW {name} must be at least 1, got {getattr(self, name)}")
        if self.scalar is not None and self.scalar not in SCALARS:
            raise InputError(f"HNSW scalar must be one of {', '.join(SCALARS)}, got {self.scalar!r}")


def build_hnsw(vectors: np.ndarray, path: Path, config: HnswConfig) -> dict[str, Any]:
    """Build the graph of ``vectors`` (rows = keys 0..n-1, inner product) and save it to ``path``.

    Returns what ``meta.json`` records under ``hnsw``. One thread, so the same vectors give the same graph.
    """
    usearch = require("usearch", "dense")
    from usearch.index import Index

    dtype = str(vectors.dtype.newbyteorder("=").name)
    if dtype not in USEARCH_DTYPES:
        raise InputError(f"HNSW supports {', '.join(USEARCH_DTYPES)} vectors, not {dtype}")
    scalar = config.scalar or USEARCH_DTYPES[dtype]
    graph = Index(
        ndim=int(vectors.shape[1]),
        metric="ip",  # inner product (usearch distance 1 - dot; for i8, minus the integer dot product)
        dtype=scalar,
        connectivity=config.m,
        expansion_add=config.ef_construction,
        expansion_search=config.ef_search,
    )
    graph.add(np.arange(len(vectors), dtype=np.uint64), np.ascontiguousarray(vectors), threads=1)
    graph.save(str(path))
    return {"library": "usearch", "version": usearch.__version__, "file": path.name, **asdict(config), "scalar": scalar}


class HnswGraph:
    """A saved HNSW graph, memory-mapped (usearch ``view``), searched with a fixed ``ef_search``; a retriever
    scores its top ``refine_factor × k`` exactly."""

    def __init__(self, path: Path, *, rows: int, ef_search: int, refine_factor: int = 1) -> None:
        require("usearch", "dense")
        from usearch.index import Index

        for name, value in (("ef_search", ef_search), ("refine_factor", refine_factor)):
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if not path.is_file():
            raise IndexLoadError(f"incomplete index (no {path.name}): {path.parent}")
        graph = Index.restore(str(path), view=True, expansion_search=ef_search)
        if graph is None or len(graph) != rows:
            raise IndexLoadError(f"corrupt index: {path} does not hold the index's {rows} vectors")
        self.ef_search = ef_search
        self.refine_factor = refine_factor
        self._graph = graph

    def search(self, vector: np.ndarray, k: int) -> np.ndarray:
        """The rows of (about) the ``k`` nearest vectors by inner product, best first by the graph's distance
        (usearch searches with ``max(ef_search, k)`` candidates)."""
        return self.search_counted(vector, k)[0]

    def search_counted(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        """:meth:`search` and the number of distances it computed (its cost, independent of the machine)."""
        if k <= 0:
            return np.zeros(0, dtype=np.int64), 0
        matches = self._graph.search(vector, k, threads=1)
        return np.asarray(matches.keys, dtype=np.int64), int(matches.computed_distances)
