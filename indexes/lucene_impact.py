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
import threading
import time
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twostage_search.engine.batching import chunked, progress_bar
from twostage_search.engine.cost import StageCost
from twostage_search.engine.encoders import SparseEncoder, encoder_from_meta
from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.types import Candidate, Document, Query, RankedList
from twostage_search.indexes import _jvm, _lucene
from twostage_search.indexes.docstore import DocStore, DocStoreWriter
from twostage_search.indexes.meta import atomic_index, write_meta

log = logging.getLogger(__name__)

LUCENE_DIR = "lucene"
VECTORS_DIR = "_vectors"


class LuceneImpactIndex:
    """A Lucene impact index of quantised SPLADE vectors, with its document store and ``meta.json``."""

    backend = "lucene-impact"

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        # Query encoders limited to this index's terms, one per encoder: retrievers opened on the same
        # encoder share its (vocabulary-sized) projection instead of each holding a copy.
        self._limited: weakref.WeakKeyDictionary[SparseEncoder, SparseEncoder] = weakref.WeakKeyDictionary()
        self._limited_lock = threading.Lock()

    def query_encoder(self, encoder: SparseEncoder, searcher: _lucene.ImpactQuerySearcher) -> SparseEncoder:
        """``encoder`` with its query side limited to the terms of this index (shared across retrievers)."""
        with self._limited_lock:
            limited = self._limited.get(encoder)
            if limited is None:
                limited = self._limited[encoder] = encoder.with_query_vocabulary(searcher.terms())
            return limited

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
                    for chunk_no, chunk in enumerate(chunked(docs, chunk_size)):
                        vecs = encoder.encode_docs([d.full_text for d in chunk])
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

    @property
    def scale(self) -> float:
        return float(self.meta["scale"])

    def __len__(self) -> int:
        return int(self.meta["doc_count"])

    def encoder(self) -> SparseEncoder:
        """The encoder this index was built with, re-created from ``meta.json``."""
        return encoder_from_meta(self.meta["encoder"])

    def retriever(
        self, encoder: SparseEncoder | None = None, *, query_top_n: int | None = None, index_terms_only: bool = True
    ) -> LuceneImpactRetriever:
        """A searcher over this index; pass ``encoder`` to share an already loaded one.

        ``query_top_n``, ``index_terms_only``: see :class:`LuceneImpactRetriever`.
        """
        return LuceneImpactRetriever(
            self, encoder or self.encoder(), query_top_n=query_top_n, index_terms_only=index_terms_only
        )


class LuceneImpactRetriever:
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

    def __init__(
        self,
        index: LuceneImpactIndex,
        encoder: SparseEncoder,
        *,
        query_top_n: int | None = None,
        index_terms_only: bool = True,
    ) -> None:
        if query_top_n is not None and query_top_n < 1:
            raise InputError("query_top_n must be positive or None")
        self.index = index
        self.query_top_n = query_top_n
        self._searcher = _lucene.ImpactQuerySearcher(index.path / LUCENE_DIR)
        self.encoder = index.query_encoder(encoder, self._searcher) if index_terms_only else encoder
        self._docs = DocStore(index.path)

    def retrieve(self, query: Query, k: int, *, texts: bool = True) -> RankedList:
        return self.retrieve_with_cost(query, k, texts=texts)[0]

    def retrieve_with_cost(
        self, query: Query, k: int, *, texts: bool = True
    ) -> tuple[RankedList, tuple[StageCost, ...]]:
        """The ranking and its cost split into ``encode`` (SPLADE query) and ``retrieve`` (search + texts).

        ``texts=False`` skips the document store: candidates carry ids and scores only (fill the ones
        you rerank or return with :meth:`with_texts`).
        """
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        started = time.perf_counter()
        (vector,) = self.encoder.encode_queries([query.text])
        encoded = time.perf_counter()
        ranking = self._search(query, vector.top(self.query_top_n).quantize(self.index.scale), k, texts)
        done = time.perf_counter()
        return ranking, (
            StageCost("encode", (encoded - started) * 1000, docs=0),
            StageCost("retrieve", (done - encoded) * 1000, docs=len(ranking)),
        )

    def with_texts(self, ranking: RankedList) -> RankedList:
        """``ranking`` with each document's text and title from the document store."""
        return self._docs.with_texts(ranking)

    def _search(self, query: Query, impacts: dict[str, int], k: int, texts: bool = True) -> RankedList:
        hits = self.search_impacts(impacts, k)
        norm = self.index.scale**2
        if not texts:
            return RankedList.from_candidates(query.query_id, (Candidate(d, score / norm) for d, score in hits))
        docs = self._docs.get_many([doc_id for doc_id, _ in hits])
        return RankedList.from_candidates(
            query.query_id,
            (
                Candidate(doc_id, score / norm, docs[doc_id].text, docs[doc_id].title)
                for doc_id, score in hits
                if doc_id in docs
            ),
        )

    def search_impacts(self, impacts: dict[str, int], k: int) -> list[tuple[str, int]]:
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
