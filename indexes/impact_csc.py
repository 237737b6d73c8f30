"""Embedded SPLADE first stage without a JVM (``impact-csc``): integer impacts in compressed sparse arrays,
exact dot products with scipy.sparse.

Build: documents are encoded and quantised exactly as for ``lucene-impact`` (``round(w * scale)``, the same
``scale`` and ``meta.json`` fields), and the impacts are written as the compressed sparse arrays of
:mod:`indexes.csc` (values ``postings/impacts.npy``, int32), with the document store. The directory is
written atomically like every index.

Search: the arrays are memory-mapped (``np.load(mmap_mode="r")``); the query's integer impacts form a
one-row sparse matrix whose product with the posting matrix (scipy's compiled kernel, which runs
without the GIL) is the exact integer score of every document sharing a term with the query; the top
``k`` are taken by score, ties broken by ``doc_id`` over the whole tied group at the cut-off, as
``lucene-impact`` does. Same quantised query, same documents, same integer scores as ``lucene-impact``
(whose float sums are exact below 2**24; these are exact in int32, or int64 when a query could
overflow int32).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.batching import chunked, progress_bar
from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.engine.splade_lookup import DEFAULT_IDF_POWER
from twostage_search.engine.types import Document, SparseVector
from twostage_search.indexes.csc import INT32_MAX, CscPostings, PostingsBuilder, open_meta
from twostage_search.indexes.docstore import DocStore, DocStoreWriter
from twostage_search.indexes.impact_retriever import ImpactRetriever, LimitedQueryEncoders, lookup_query_encoder
from twostage_search.indexes.meta import ImpactIndexMeta, atomic_index, write_meta
from twostage_search.indexes.topk import top_k

log = logging.getLogger(__name__)

IMPACTS = "impacts.npy"


class ImpactCscIndex(ImpactIndexMeta):
    """Quantised SPLADE impacts as memory-mapped compressed sparse arrays (one row per term), with doc ids,
    document store and ``meta.json``."""

    backend = "impact-csc"

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.arrays = arrays = CscPostings(path, IMPACTS, int(meta["doc_count"]))
        self.terms, self.doc_ids, self.term_rows = arrays.terms, arrays.doc_ids, arrays.term_rows
        self.max_impact = int(meta["max_impact"])
        sparse = require("scipy.sparse", "impact")
        # Built once and only read afterwards: a search multiplies it or selects its rows, never changes it.
        self.postings = sparse.csr_array((arrays.values, arrays.docs, arrays.indptr), shape=arrays.shape)
        self._limited = LimitedQueryEncoders()

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        *,
        encoder: SparseEncoder,
        scale: float = 100.0,
        chunk_size: int = 256,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
        threads: int | None = None,
    ) -> ImpactCscIndex:
        """Encode ``docs`` and write the index at ``path`` atomically (temp dir, then rename).

        ``threads`` is accepted so every backend builds with the same call (the encoder sets its own).
        Raises :class:`InputError` (nothing written) on an empty corpus, a duplicate ``doc_id`` or bad
        parameters; any failure leaves an existing index at ``path`` untouched.
        """
        del threads
        batches = ((chunk, encoder.encode_docs([d.full_text for d in chunk])) for chunk in chunked(docs, chunk_size))
        return cls.build_encoded(
            batches, path, encoder=encoder, scale=scale, total=total, progress=progress, overwrite=overwrite
        )

    @classmethod
    def build_encoded(
        cls,
        batches: Iterable[tuple[Sequence[Document], Sequence[SparseVector]]],
        path: str | Path,
        *,
        encoder: SparseEncoder,
        scale: float = 100.0,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
    ) -> ImpactCscIndex:
        """Write the index of documents whose SPLADE vectors are already computed, atomically, as :meth:`build`
        does (quantised with ``scale``).

        ``batches``: (documents, one vector per document) pairs. ``encoder`` is the encoder the vectors came
        from (or stand for): it is recorded in ``meta.json`` and encodes the queries. :meth:`build` is this
        over ``encoder.encode_docs``. Raises :class:`InputError` (nothing written) on an empty corpus, a
        batch whose vectors do not match its documents or bad parameters.
        """
        if scale <= 0:
            raise InputError("scale must be positive")
        require("scipy.sparse", "impact")  # searching needs it: say so before encoding anything
        started = time.perf_counter()
        postings = PostingsBuilder()
        with atomic_index(path, overwrite=overwrite) as tmp:
            with (
                DocStoreWriter(tmp) as store,
                progress_bar(total, "encode", progress) as bar,
            ):
                for chunk, vectors in batches:
                    if len(vectors) != len(chunk):
                        raise InputError(f"{len(chunk)} documents, {len(vectors)} vectors")
                    for doc, vector in zip(chunk, vectors, strict=True):
                        try:
                            postings.add(doc.doc_id, vector.quantize(scale))
                        except InputError:
                            raise InputError(f"scale {scale} gives impacts beyond int32: use a smaller one") from None
                    store.add(chunk)
                    bar.update(len(chunk))
            ids = postings.doc_ids
            if not ids:
                raise InputError("corpus is empty: nothing to index")
            encode_seconds = time.perf_counter() - started
            terms, max_impact = postings.write(tmp, IMPACTS)
            empty = postings.empty_docs
            write_meta(
                tmp,
                {
                    "backend": cls.backend,
                    "encoder": encoder.config(),
                    "scale": scale,
                    "doc_count": len(ids),
                    "indexed_count": len(ids) - empty,
                    "empty_docs": empty,
                    "mean_doc_terms": postings.postings / len(ids),
                    "terms": len(terms),
                    "postings": postings.postings,
                    "max_impact": max_impact,
                    "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "build_seconds": {
                        "encode": round(encode_seconds, 3),
                        "total": round(time.perf_counter() - started, 3),
                    },
                },
            )
        log.info("built %s: %d docs in %.1fs", path, len(ids), time.perf_counter() - started)
        return cls.open(path)

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | Path) -> ImpactCscIndex:
        path = Path(path)
        return cls(path, open_meta(path, cls.backend, IMPACTS))

    def query_encoder(self, encoder: SparseEncoder) -> SparseEncoder:
        """``encoder`` with its query side limited to the terms of this index (shared across retrievers)."""
        return self._limited.get(encoder, lambda: self.terms)

    def retriever(
        self,
        encoder: SparseEncoder | None = None,
        *,
        query_top_n: int | None = None,
        index_terms_only: bool = True,
        query_side: str = "model",
        query_table: str | None = None,
        idf_power: float = DEFAULT_IDF_POWER,
    ) -> ImpactCscRetriever:
        """A searcher over this index; pass ``encoder`` to share an already loaded one.

        ``query_top_n``, ``index_terms_only``: as for ``lucene-impact`` (:class:`ImpactCscRetriever`).
        ``query_side="lookup"`` encodes queries without a network pass: each word piece weighs its
        ``query_table`` weight (default: the bundled table of the index's model) times this index's IDF to
        the power ``idf_power`` (:mod:`engine.splade_lookup`); ``"model"`` (the default) runs the encoder.
        """
        lookup = lookup_query_encoder(self, encoder, query_side, query_table=query_table, idf_power=idf_power)
        if lookup is not None:  # it keeps the index's terms only already
            return ImpactCscRetriever(self, lookup, query_top_n=query_top_n, index_terms_only=False)
        return ImpactCscRetriever(
            self, encoder or self.encoder(), query_top_n=query_top_n, index_terms_only=index_terms_only
        )

    def doc_freqs(self) -> dict[str, int]:
        """The number of documents each term of the index occurs in."""
        return self.arrays.doc_freqs()

    def scores(self, rows: Sequence[int], weights: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(document rows, integer scores) of every document with a positive dot product with the query
        whose weight on term row ``rows[i]`` is ``weights[i]`` (distinct rows, positive weights)."""
        sparse = require("scipy.sparse", "impact")
        n = len(rows)
        index_dtype = self.postings.indptr.dtype
        weights64 = np.asarray(weights, dtype=np.int64)
        if int(weights64.sum()) * self.max_impact <= INT32_MAX:  # no sum can overflow int32
            query = sparse.csr_array(
                (weights64.astype(np.int32), np.asarray(rows, dtype=index_dtype), np.array([0, n], dtype=index_dtype)),
                shape=(1, self.postings.shape[0]),
            )
            result = query @ self.postings
        else:  # the query's posting lists only, widened to int64 (never the whole matrix)
            selected = self.postings[np.asarray(rows, dtype=np.int64)].astype(np.int64)
            query = sparse.csr_array(
                (weights64, np.arange(n, dtype=index_dtype), np.array([0, n], dtype=index_dtype)), shape=(1, n)
            )
            result = query @ selected
        return np.asarray(result.indices), np.asarray(result.data, dtype=np.int64)


class ImpactCscRetriever(ImpactRetriever):
    """First stage over an :class:`ImpactCscIndex`: SPLADE-encode the query, exact impact search in process.

    Ranks exactly as ``lucene-impact`` over the same documents and encoder: scores are the integer dot
    products divided by ``scale**2``, ties broken by ``doc_id``. ``query_top_n`` keeps the query's heaviest
    terms (``None``: all); with ``index_terms_only`` (the default) the query is encoded onto the terms the
    index holds, as for ``lucene-impact``. Safe to share between threads without a lock: the arrays are
    read-only and every search allocates its own; scipy's product runs without the GIL.
    """

    index: ImpactCscIndex

    def __init__(
        self,
        index: ImpactCscIndex,
        encoder: SparseEncoder,
        *,
        query_top_n: int | None = None,
        index_terms_only: bool = True,
    ) -> None:
        super().__init__(index, DocStore(index.path), query_top_n=query_top_n)
        self.encoder = index.query_encoder(encoder) if index_terms_only else encoder

    def search_impacts(self, impacts: Mapping[str, int], k: int) -> list[tuple[str, int]]:
        """Top ``k`` (doc_id, integer score) for integer query impacts, ties by doc_id."""
        if k <= 0:
            return []
        matched = self.index.arrays.matched({t: int(w) for t, w in impacts.items()})
        if not matched:
            return []
        rows, scores = self.index.scores([r for r, _ in matched], [w for _, w in matched])
        return top_k(scores, self.index.doc_ids, k, rows=rows)

    def close(self) -> None:
        """Nothing to release (the memory maps close with the index)."""
