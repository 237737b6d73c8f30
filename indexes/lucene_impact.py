"""Embedded SPLADE first stage: a Lucene impact index built and searched with Anserini (pyserini).

Build: documents are encoded with the SPLADE encoder, quantised to integer impacts
(``round(w * scale)``), written as Anserini ``JsonVectorCollection`` files and indexed by
``io.anserini.index.IndexCollection -impact -pretokenized`` in a child JVM. Search runs in-process
with the query's integer impacts, so a document's score is the exact integer
dot product of the two quantised vectors. We call the Java classes directly rather than pyserini's
Python wrapper: the wrapper's import pulls in torch/onnx/openai (~11 s) and drops query terms whose
idf is not positive, which would break the exact dot product. Searching goes through Lucene's
``IndexSearcher`` with Anserini's ``ImpactSimilarity`` (:class:`_lucene.ImpactQuerySearcher`): score-only top-k
collection, not ``SimpleImpactSearcher.search``'s sort of every match by (score, id).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twostage_search.engine.batching import chunked, progress_bar
from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.splade_lookup import DEFAULT_IDF_POWER
from twostage_search.engine.types import Document, SparseVector
from twostage_search.indexes import _jvm, _lucene
from twostage_search.indexes.docstore import DocStore, DocStoreWriter
from twostage_search.indexes.impact_retriever import ImpactRetriever, LimitedQueryEncoders, lookup_query_encoder
from twostage_search.indexes.meta import ImpactIndexMeta, atomic_index, write_meta

log = logging.getLogger(__name__)

LUCENE_DIR = "lucene"
VECTORS_DIR = "_vectors"


class LuceneImpactIndex(ImpactIndexMeta):
    """A Lucene impact index of quantised SPLADE vectors, with its document store and ``meta.json``."""

    backend = "lucene-impact"

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self._limited = LimitedQueryEncoders()

    def query_encoder(self, encoder: SparseEncoder, searcher: _lucene.ImpactQuerySearcher) -> SparseEncoder:
        """``encoder`` with its query side limited to the terms of this index (shared across retrievers)."""
        return self._limited.get(encoder, searcher.terms)

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        *,
        encoder: SparseEncoder,
        scale: float = 100.0,
        threads: int = 2,
        chunk_size: int = 256,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
    ) -> LuceneImpactIndex:
        """Encode ``docs`` and build the index at ``path`` atomically (temp dir, then rename).

        Raises :class:`InputError` (nothing written) on an empty corpus or bad parameters; any failure
        leaves an existing index at ``path`` untouched.
        """
        batches = ((chunk, encoder.encode_docs([d.full_text for d in chunk])) for chunk in chunked(docs, chunk_size))
        return cls.build_encoded(
            batches, path, encoder=encoder, scale=scale, threads=threads, total=total, progress=progress,
            overwrite=overwrite,
        )  # fmt: skip

    @classmethod
    def build_encoded(
        cls,
        batches: Iterable[tuple[Sequence[Document], Sequence[SparseVector]]],
        path: str | Path,
        *,
        encoder: SparseEncoder,
        scale: float = 100.0,
        threads: int = 2,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
    ) -> LuceneImpactIndex:
        """Build the index of documents whose SPLADE vectors are already computed, atomically, as :meth:`build`
        does (quantised with ``scale``, ``threads`` indexing threads).

        ``batches``: (documents, one vector per document) pairs. ``encoder`` is the encoder the vectors came
        from (or stand for): it is recorded in ``meta.json`` and encodes the queries. :meth:`build` is this
        over ``encoder.encode_docs``. Raises :class:`InputError` (nothing written) on an empty corpus, a
        batch whose vectors do not match its documents or bad parameters.
        """
        if scale <= 0:
            raise InputError("scale must be positive")
        if threads < 1:
            raise InputError("threads must be at least 1")
        started = time.perf_counter()
        with atomic_index(path, overwrite=overwrite) as tmp:
            vectors = tmp / VECTORS_DIR
            vectors.mkdir()
            shards = [(vectors / f"part-{i:03d}.jsonl").open("w", encoding="utf-8") for i in range(threads)]
            n_docs = n_terms = n_empty = 0
            encode_started = time.perf_counter()
            try:
                with progress_bar(total, "encode", progress) as bar, DocStoreWriter(tmp) as store:
                    for chunk_no, (chunk, vecs) in enumerate(batches):
                        if len(vecs) != len(chunk):
                            raise InputError(f"{len(chunk)} documents, {len(vecs)} vectors")
                        shard = shards[chunk_no % threads]
                        for doc, vec in zip(chunk, vecs, strict=True):
                            impacts = vec.quantize(scale)
                            n_terms += len(impacts)
                            n_empty += not impacts
                            shard.write(json.dumps({"id": doc.doc_id, "contents": "", "vector": impacts}) + "\n")
                        store.add(chunk)
                        n_docs += len(chunk)
                        bar.update(len(chunk))
            finally:
                for shard in shards:
                    shard.close()
            if n_docs == 0:
                raise InputError("corpus is empty: nothing to index")
            encode_seconds = time.perf_counter() - encode_started
            index_started = time.perf_counter()
            indexed = _lucene.run_index_collection(
                vectors,
                tmp / LUCENE_DIR,
                collection="JsonVectorCollection",
                threads=threads,
                log_path=tmp / "build.log",
                options=("-impact", "-pretokenized"),
            )
            index_seconds = time.perf_counter() - index_started
            for f in vectors.iterdir():
                f.unlink()
            vectors.rmdir()
            if indexed + n_empty != n_docs:
                raise TwoStageError(
                    f"Lucene indexed {indexed} of {n_docs - n_empty} non-empty documents; see build log"
                )
            meta = {
                "backend": cls.backend,
                "encoder": encoder.config(),
                "scale": scale,
                "doc_count": n_docs,
                "indexed_count": indexed,
                "empty_docs": n_empty,
                "mean_doc_terms": n_terms / n_docs,
                "anserini": _jvm.anserini_version(),
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "build_seconds": {
                    "encode": round(encode_seconds, 3),
                    "index": round(index_seconds, 3),
                    "total": round(time.perf_counter() - started, 3),
                },
            }
            write_meta(tmp, meta)
        log.info("built %s: %d docs in %.1fs", path, n_docs, time.perf_counter() - started)
        return cls.open(path)

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | Path) -> LuceneImpactIndex:
        path = Path(path)
        return cls(path, _lucene.open_meta(path, cls.backend, LUCENE_DIR))

    def retriever(
        self,
        encoder: SparseEncoder | None = None,
        *,
        query_top_n: int | None = None,
        index_terms_only: bool = True,
        query_side: str = "model",
        query_table: str | None = None,
        idf_power: float = DEFAULT_IDF_POWER,
    ) -> LuceneImpactRetriever:
        """A searcher over this index; pass ``encoder`` to share an already loaded one.

        ``query_top_n``, ``index_terms_only``: see :class:`LuceneImpactRetriever`. ``query_side``,
        ``query_table``, ``idf_power``: queries without a model, as for ``impact-csc``
        (:meth:`ImpactCscIndex.retriever <indexes.impact_csc.ImpactCscIndex.retriever>`).
        """
        lookup = lookup_query_encoder(self, encoder, query_side, query_table=query_table, idf_power=idf_power)
        if lookup is not None:
            return LuceneImpactRetriever(self, lookup, query_top_n=query_top_n, index_terms_only=False)
        return LuceneImpactRetriever(
            self, encoder or self.encoder(), query_top_n=query_top_n, index_terms_only=index_terms_only
        )

    def doc_freqs(self) -> dict[str, int]:
        """The number of documents each term of the index occurs in (read from Lucene)."""
        searcher = _lucene.ImpactQuerySearcher(self.path / LUCENE_DIR)
        try:
            return searcher.doc_freqs()
        finally:
            searcher.close()


class LuceneImpactRetriever(ImpactRetriever):
    """First stage over a :class:`LuceneImpactIndex`: SPLADE-encode the query, exact impact search.

    Scores are the integer dot products divided by ``scale**2`` (≈ the float SPLADE dot product).
    Ties are broken by ``doc_id`` and the whole tied group at the cut-off is fetched, so results do
    not depend on Lucene's internal document order.

    ``query_top_n`` keeps only the query's heaviest terms (query-term pruning: fewer posting lists to
    score, a slightly different ranking); ``None`` uses every term. With ``index_terms_only`` (the
    default) the query is encoded onto the terms the index holds (read from Lucene when the retriever
    opens): a term the index lacks would match nothing, so an unpruned search ranks exactly as with the
    whole vocabulary, a SPLADE query costs a fraction of the projection, and pruning keeps the heaviest
    terms that can match. ``False`` encodes onto the model's whole vocabulary. Safe to share between threads: query
    encoding runs concurrently; the Java calls of a search are serialised process-wide (pyjnius is not
    thread-safe, see :mod:`indexes._jvm`) and take a couple of milliseconds.
    """

    index: LuceneImpactIndex

    def __init__(
        self,
        index: LuceneImpactIndex,
        encoder: SparseEncoder,
        *,
        query_top_n: int | None = None,
        index_terms_only: bool = True,
    ) -> None:
        super().__init__(index, DocStore(index.path), query_top_n=query_top_n)
        self._searcher = _lucene.ImpactQuerySearcher(index.path / LUCENE_DIR)
        self.encoder = index.query_encoder(encoder, self._searcher) if index_terms_only else encoder

    def search_impacts(self, impacts: Mapping[str, int], k: int) -> list[tuple[str, int]]:
        """Top ``k`` (doc_id, integer score) for integer query impacts, ties by doc_id."""
        if k == 0 or not impacts:
            return []
        weights = {term: float(w) for term, w in impacts.items()}

        def search(n: int) -> list[tuple[str, int]]:
            # Integer impacts times integer weights: Lucene's float sums are exact below 2**24.
            return [(doc_id, round(score)) for doc_id, score in self._searcher.search(weights, n)]

        return _lucene.top_k_with_ties(search, k)

    def close(self) -> None:
        self._searcher.close()
