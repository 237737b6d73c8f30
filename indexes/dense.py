"""Dense first stage (``dense-flat``): exact inner-product search over a memory-mapped matrix of vectors.

Build: each document's title and text (``Document.full_text``) is encoded by a registered dense encoder
(:func:`~twostage_search.engine.dense.create_dense_encoder`; default the ``onnx`` kind,
:class:`~twostage_search.engine.dense.DenseEncoder` on bge-small-en-v1.5 INT8, CLS pooling, L2 normalised;
``sentence-transformers`` loads a local sentence-transformers directory, such as a bi-encoder trained here)
and appended, row by row, to ``vectors.bin`` (raw little-endian float32, or float16 with
``dtype="float16"``: half the memory, scores change by about 1e-3). ``doc_ids.json`` holds the row order,
``docs.sqlite`` the texts, ``meta.json`` the encoder (its kind and the settings that re-create it: model,
pooling, query prefix, ...), the dimension and the dtype. The directory is written atomically like every index.

Search: the query vector's inner product with every row (a matrix-vector product over the memory map; the
OS page cache keeps the matrix in memory after the first queries), the top ``k`` by score, ties broken
by ``doc_id`` (the whole tied group at the cut-off is considered). Exact, so recall is the model's own;
at 384 dimensions a scan costs about 1 ms per 10,000 documents on one core.

Approximate search: ``build(..., hnsw=HnswConfig(...))`` (or :meth:`DenseFlatIndex.add_hnsw` on an existing
index) also writes an HNSW graph of the same vectors (:mod:`indexes.dense_hnsw`; float or 8-bit); a retriever
then takes its candidates from the graph (``refine_factor × k`` of them) and scores them exactly against the
matrix, so scores are the exact scan's and only recall can differ. ``retriever(search="exact")`` keeps the
exact scan, the reference.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np

from twostage_search.engine.batching import chunked, progress_bar
from twostage_search.engine.cost import StageCost
from twostage_search.engine.dense import (
    DEFAULT_DENSE,
    ONNX_KIND,
    DenseTextEncoder,
    create_dense_encoder,
    dense_encoder_from_config,
)
from twostage_search.engine.dense_query import (
    FULL,
    CachedQueryEncoder,
    QueryEncoder,
    check_teacher,
    student_config,
    student_for,
)
from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.types import Document, Query, RankedList
from twostage_search.indexes import docstore
from twostage_search.indexes.dense_hnsw import HNSW_FILE, HnswConfig, HnswGraph, build_hnsw
from twostage_search.indexes.docstore import DocStore, DocStoreWriter
from twostage_search.indexes.meta import atomic_index, read_meta, write_meta
from twostage_search.indexes.topk import top_k

log = logging.getLogger(__name__)

VECTORS = "vectors.bin"
DOC_IDS = "doc_ids.json"
DTYPES = ("float32", "float16")
SIMILARITY = "inner product of L2-normalised vectors (cosine), exact"
Search = Literal["exact", "hnsw"]


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


class DenseFlatIndex:
    """Unit vectors of every document in one memory-mapped matrix, with doc ids, document store and ``meta.json``."""

    backend = "dense-flat"
    needs_encoder = False  # no SPLADE encoder: it brings its own (``create_encoder``, recorded in meta.json)

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.doc_ids: list[str] = json.loads((path / DOC_IDS).read_text(encoding="utf-8"))
        shape = (int(meta["doc_count"]), int(meta["dim"]))
        self.vectors = np.memmap(path / VECTORS, dtype=np.dtype(meta["dtype"]).newbyteorder("<"), mode="r", shape=shape)

    @classmethod
    def create_encoder(
        cls,
        *,
        kind: str | None = None,
        model: str | None = None,
        max_length: int = 256,
        batch_size: int | None = None,
        threads: int | None = None,
        **_: Any,
    ) -> DenseTextEncoder:
        """The encoder ``twostage index --backend dense-flat`` builds with: ``--encoder`` (a registered dense
        encoder kind: ``onnx``, the default, or ``sentence-transformers`` with ``--model DIR``), ``--model``,
        ``--max-length``, ``--batch-size`` (default: 1 for ONNX, the kind's own otherwise), ``--threads``."""
        kind = kind or ONNX_KIND
        if kind == ONNX_KIND:
            return create_dense_encoder(
                kind, model=model or DEFAULT_DENSE, max_length=max_length, batch_size=batch_size or 1, threads=threads
            )
        if model is None:
            raise InputError(f"dense encoder {kind!r} needs --model (a local model directory)")
        params: dict[str, Any] = {"model": model, "max_length": max_length, "threads": threads}
        if batch_size is not None:
            params["batch_size"] = batch_size
        return create_dense_encoder(kind, **params)

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        *,
        encoder: object = None,
        dtype: str = "float32",
        chunk_size: int = 256,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
        threads: int | None = None,
        scale: float | None = None,
        hnsw: HnswConfig | None = None,
    ) -> DenseFlatIndex:
        """Encode ``docs`` and write the index at ``path`` atomically.

        ``encoder`` is a dense encoder (:class:`~twostage_search.engine.dense.DenseTextEncoder`, recorded in
        ``meta.json``); anything else (such as the SPLADE encoder every backend is handed by generic callers)
        is ignored and the default dense model is loaded. ``threads`` and
        ``scale`` are accepted so every backend builds with the same call. ``hnsw`` also builds an HNSW graph
        of the vectors for approximate search. Raises :class:`InputError` (nothing written) on an empty
        corpus or bad parameters.
        """
        del threads, scale
        _check_dtype(dtype)
        dense = encoder if isinstance(encoder, DenseTextEncoder) else create_dense_encoder()
        batches = ((chunk, dense.encode_docs([d.full_text for d in chunk])) for chunk in chunked(docs, chunk_size))
        return cls.build_encoded(
            batches, path, encoder=dense, dtype=dtype, total=total, progress=progress, overwrite=overwrite, hnsw=hnsw
        )

    @classmethod
    def build_encoded(
        cls,
        batches: Iterable[tuple[Sequence[Document], np.ndarray]],
        path: str | Path,
        *,
        encoder: DenseTextEncoder,
        dtype: str = "float32",
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
        hnsw: HnswConfig | None = None,
    ) -> DenseFlatIndex:
        """Write the index of documents whose vectors are already computed, atomically, as :meth:`build` does.

        ``batches``: (documents, their vectors as a ``len(documents)`` × ``encoder.dim`` matrix, L2-normalised
        by the caller) pairs. ``encoder`` is the encoder the vectors came from (or are meant to stand for): it is
        recorded in ``meta.json`` and encodes the queries. :meth:`build` is this over ``encoder.encode_docs``.
        Raises :class:`InputError` (nothing written) on an empty corpus, a matrix of the wrong shape or bad
        parameters.
        """
        _check_dtype(dtype)
        started = time.perf_counter()
        with atomic_index(path, overwrite=overwrite) as tmp:
            ids: list[str] = []
            with (
                (tmp / VECTORS).open("wb") as out,
                DocStoreWriter(tmp) as store,
                progress_bar(total, "encode", progress) as bar,
            ):
                for chunk, vectors in batches:
                    if vectors.shape != (len(chunk), encoder.dim):
                        raise InputError(
                            f"{len(chunk)} documents need {len(chunk)}×{encoder.dim} vectors, got {vectors.shape}"
                        )
                    out.write(vectors.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
                    store.add(chunk)
                    ids.extend(d.doc_id for d in chunk)
                    bar.update(len(chunk))
            if not ids:
                raise InputError("corpus is empty: nothing to index")
            (tmp / DOC_IDS).write_text(json.dumps(ids), encoding="utf-8")
            seconds = time.perf_counter() - started
            meta: dict[str, Any] = {
                "backend": cls.backend,
                "encoder": encoder.config(),
                "dim": encoder.dim,
                "dtype": dtype,
                "similarity": SIMILARITY,
                "fields": "title + text (flat)",
                "doc_count": len(ids),
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "build_seconds": {"encode": round(seconds, 3), "total": round(seconds, 3)},
            }
            if hnsw is not None:
                meta["hnsw"] = cls._build_hnsw(tmp, meta, hnsw)
            write_meta(tmp, meta)
        log.info("built %s: %d docs in %.1fs", path, len(ids), time.perf_counter() - started)
        return cls.open(path)

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | Path) -> DenseFlatIndex:
        path = Path(path)
        meta = read_meta(path, backend=cls.backend, files=(VECTORS, DOC_IDS))
        expected = int(meta["doc_count"]) * int(meta["dim"]) * np.dtype(meta["dtype"]).itemsize
        if (path / VECTORS).stat().st_size != expected:
            raise IndexLoadError(f"corrupt index: {path / VECTORS} is not {meta['doc_count']}×{meta['dim']}")
        if "hnsw" in meta and not (path / HNSW_FILE).is_file():
            raise IndexLoadError(f"incomplete index (no {HNSW_FILE}): {path}")
        return cls(path, meta)

    @staticmethod
    def _build_hnsw(directory: Path, meta: dict[str, Any], config: HnswConfig) -> dict[str, Any]:
        started = time.perf_counter()
        shape = (int(meta["doc_count"]), int(meta["dim"]))
        vectors = np.memmap(directory / VECTORS, dtype=np.dtype(meta["dtype"]).newbyteorder("<"), mode="r", shape=shape)
        built = build_hnsw(vectors, directory / HNSW_FILE, config)
        return {**built, "build_seconds": round(time.perf_counter() - started, 3)}

    @classmethod
    def add_hnsw(cls, path: str | Path, config: HnswConfig | None = None) -> DenseFlatIndex:
        """Rewrite the index at ``path`` with an HNSW graph of its vectors (no re-encoding), atomically: a
        new version holding copies of its files and the graph, as a build writes it."""
        old = cls.open(path)
        with atomic_index(path, overwrite=True) as tmp:
            for name in (VECTORS, DOC_IDS, docstore.FILENAME):
                shutil.copy2(old.path / name, tmp / name)
            meta = {key: value for key, value in old.meta.items() if key not in ("format", "hnsw")}
            meta["hnsw"] = cls._build_hnsw(tmp, meta, config or HnswConfig())
            write_meta(tmp, meta)
        return cls.open(path)

    @classmethod
    def set_query_encoder(cls, path: str | Path, spec: str = FULL) -> DenseFlatIndex:
        """Record ``spec`` as the query side retrievers of the index at ``path`` use by default, atomically.

        ``spec``: ``"full"`` (the encoder that built the index) or a student fitted onto that encoder
        (``bundled:bge-small-query-l2``, ``bundled:bge-small-query-static`` or a directory;
        :mod:`twostage_search.engine.dense_query`, :mod:`twostage_search.engine.static_query`,
        :mod:`twostage_search.engine.bert_query`). The
        documents are not re-encoded: a student maps queries into the index's own space.
        """
        old = cls.open(path)
        if spec != FULL:
            check_teacher(student_config(Path(resolve_model(spec))), old.meta["encoder"])
        with atomic_index(path, overwrite=True) as tmp:
            for name in (VECTORS, DOC_IDS, docstore.FILENAME, HNSW_FILE):
                if (old.path / name).is_file():
                    shutil.copy2(old.path / name, tmp / name)
            meta = {key: value for key, value in old.meta.items() if key not in ("format", "query_encoder")}
            if spec != FULL:
                meta["query_encoder"] = spec
            write_meta(tmp, meta)
        return cls.open(path)

    def __len__(self) -> int:
        return int(self.meta["doc_count"])

    def encoder(self, **overrides: Any) -> DenseTextEncoder:
        """The encoder this index was built with, re-created from ``meta.json`` (``threads=`` etc. may be set)."""
        return dense_encoder_from_config(self.meta["encoder"], **overrides)

    @property
    def has_hnsw(self) -> bool:
        return "hnsw" in self.meta

    def query_encoder(self, spec: str | None = None, *, encoder: object = None) -> QueryEncoder:
        """The query side: ``spec`` (default: the index's recorded ``query_encoder``, else ``"full"``).

        ``"full"`` is the encoder that built the index (``encoder``, a loaded dense encoder with the same
        config, is shared when given); anything else names a student fitted onto that encoder (a
        :class:`~twostage_search.engine.dense_query.TruncatedQueryEncoder`, a
        :class:`~twostage_search.engine.static_query.StaticQueryEncoder` or a
        :class:`~twostage_search.engine.bert_query.OnnxQueryEncoder`), or ``encoder`` may be a loaded one.
        """
        spec = spec or str(self.meta.get("query_encoder", FULL))
        if spec == FULL:
            return encoder if self._same_encoder(encoder) else self.encoder()
        return student_for(spec, self.meta["encoder"], encoder)

    def _same_encoder(self, encoder: object) -> TypeGuard[DenseTextEncoder]:
        """``encoder`` is a loaded dense encoder of this index's kind and model (so it may be shared)."""
        if not isinstance(encoder, DenseTextEncoder):
            return False
        mine, theirs = self.meta["encoder"], encoder.config()
        return all(mine.get(k) == theirs.get(k) for k in ("kind", "model", "query_prefix", "sha256"))

    def retriever(
        self,
        encoder: object = None,
        *,
        search: Search | None = None,
        ef_search: int | None = None,
        refine_factor: int | None = None,
        query_encoder: str | None = None,
        query_cache: int = 0,
    ) -> DenseRetriever:
        """A searcher over this index; pass a loaded dense encoder of the same model to share it (others are ignored).

        ``search``: ``"hnsw"`` (the default when the index has a graph) or ``"exact"`` (the full scan, the
        default otherwise); ``ef_search`` and ``refine_factor`` (the graph's top ``refine_factor × k`` are
        scored exactly; :class:`~indexes.dense_hnsw.HnswConfig`) override the graph's stored settings.
        ``query_encoder``: see :meth:`query_encoder`. ``query_cache``: keep the vectors of the last N distinct
        queries (LRU; 0: none).
        """
        if query_cache < 0:
            raise InputError(f"query_cache must be non-negative, got {query_cache}")
        dense: QueryEncoder = self.query_encoder(query_encoder, encoder=encoder)
        if query_cache:
            dense = CachedQueryEncoder(dense, query_cache)
        mode = search or ("hnsw" if self.has_hnsw else "exact")
        if mode not in ("exact", "hnsw"):
            raise InputError(f"search must be 'exact' or 'hnsw', got {mode!r}")
        graph = None
        if mode == "hnsw":
            if not self.has_hnsw:
                raise InputError(f"{self.path} has no HNSW graph: build it with hnsw=HnswConfig() or add_hnsw")
            stored = self.meta["hnsw"]
            ef = ef_search if ef_search is not None else int(stored["ef_search"])
            refine = refine_factor if refine_factor is not None else int(stored.get("refine_factor", 1))
            graph = HnswGraph(self.path / HNSW_FILE, rows=len(self), ef_search=ef, refine_factor=refine)
        return DenseRetriever(self, dense, graph=graph)


class DenseRetriever:
    """First stage over a :class:`DenseFlatIndex`: encode the query, exact inner product, top ``k``.

    Scores are cosine similarities in [-1, 1]. With ``graph`` (an HNSW graph of the same vectors) the
    candidates come from the graph and are scored exactly against the matrix. Safe to share between threads
    (no lock: the encoder, the memory maps and the graph are read-only).
    """

    name = "dense"

    def __init__(self, index: DenseFlatIndex, encoder: QueryEncoder, *, graph: HnswGraph | None = None) -> None:
        if encoder.dim != index.vectors.shape[1]:
            raise InputError(f"encoder gives {encoder.dim}-d vectors, the index holds {index.vectors.shape[1]}-d")
        self.index = index
        self.encoder = encoder
        self.graph = graph
        self._docs = DocStore(index.path)

    def retrieve(self, query: Query, k: int, *, texts: bool = True) -> RankedList:
        return self.retrieve_with_cost(query, k, texts=texts)[0]

    def retrieve_with_cost(
        self, query: Query, k: int, *, texts: bool = True
    ) -> tuple[RankedList, tuple[StageCost, ...]]:
        """The ranking and its cost split into ``encode`` (query vector) and ``retrieve`` (scan + texts).

        ``texts=False`` skips the document store: candidates carry ids and scores only (fill the ones
        you rerank or return with :meth:`with_texts`).
        """
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        started = time.perf_counter()
        vector = self.encoder.encode_queries([query.text])[0]
        encoded = time.perf_counter()
        hits = self.search_vector(vector, k)
        docs = self._docs.get_many([doc_id for doc_id, _ in hits]) if texts else None
        ranking = RankedList.from_sorted(query.query_id, hits, docs)
        done = time.perf_counter()
        tokens = self.encoder.count_tokens([self.encoder.query_prefix + query.text])
        return ranking, (
            StageCost("encode", (encoded - started) * 1000, docs=0, tokens_in=tokens),
            StageCost("retrieve", (done - encoded) * 1000, docs=len(ranking)),
        )

    def with_texts(self, ranking: RankedList) -> RankedList:
        """``ranking`` with each document's text and title from the document store."""
        return self._docs.with_texts(ranking)

    def search_vector(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Top ``k`` (doc_id, inner product) for a query vector, exact or over the HNSW graph's candidates, in
        ranking order (score descending, ties by ``doc_id``)."""
        query = vector.astype(self.index.vectors.dtype)
        if self.graph is None:
            return top_k(np.asarray(self.index.vectors @ query, dtype=np.float32), self.index.doc_ids, k)
        rows = self.graph.search(query, k * self.graph.refine_factor)
        scores = np.asarray(self.index.vectors[rows] @ query, dtype=np.float32)
        return top_k(scores, self.index.doc_ids, k, rows=rows)

    def close(self) -> None:
        """Nothing to release (the memory map closes with the index)."""
