"""BM25 baseline first stage: a plain Lucene inverted index built and searched with Anserini (pyserini).

Build: each document's title and text (``Document.full_text``, BEIR's "flat" indexing) is written as an
Anserini ``JsonCollection`` record and indexed by ``io.anserini.index.IndexCollection`` in a child JVM
with Anserini's default English analyzer (Lucene ``StandardTokenizer``, lower-casing, Lucene's English
stop words, Porter stemming). Term frequencies and document lengths only — no positions, document
vectors or raw JSON — since the text lives in the document store.

Search runs in-process through ``io.anserini.search.SimpleSearcher`` (the Java class behind pyserini's
``LuceneSearcher``) with Lucene's ``BM25Similarity`` at Anserini's defaults ``k1 = 0.9, b = 0.4``: the
query is analysed the same way and becomes a bag of words (a repeated term counts as a boost). Ties are
broken by ``doc_id``, as for every backend.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twostage_search.engine.batching import chunked, progress_bar
from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.types import Candidate, Document, Query, RankedList
from twostage_search.indexes import _jvm, _lucene
from twostage_search.indexes.docstore import DocStore, DocStoreWriter
from twostage_search.indexes.meta import BM25IndexMeta, atomic_index, write_meta

log = logging.getLogger(__name__)

LUCENE_DIR = "lucene"
DOCS_DIR = "_docs"
DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
ANALYZER = "Anserini DefaultEnglishAnalyzer (StandardTokenizer, lowercase, Lucene English stop words, Porter)"


class LuceneBM25Index(BM25IndexMeta):
    """A Lucene inverted index of the documents' text for BM25, with its document store and ``meta.json``."""

    backend = "lucene-bm25"
    needs_encoder = False  # reads the text itself; ``build`` accepts and ignores ``encoder``

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        *,
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
        threads: int = 2,
        chunk_size: int = 1024,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
        encoder: object = None,
        scale: float | None = None,
    ) -> LuceneBM25Index:
        """Index ``docs`` for BM25 at ``path`` atomically (temp dir, then rename).

        ``k1`` and ``b`` are recorded as the index's BM25 parameters (searches use them). ``encoder``
        and ``scale`` are accepted so that every backend builds with the same call, and ignored: BM25
        reads the text itself. Raises :class:`InputError` (nothing written) on an empty corpus or bad
        parameters; any failure leaves an existing index at ``path`` untouched.
        """
        del encoder, scale  # SPLADE-only settings
        if k1 < 0 or not 0 <= b <= 1:
            raise InputError(f"BM25 needs k1 ≥ 0 and 0 ≤ b ≤ 1, got k1={k1}, b={b}")
        if threads < 1:
            raise InputError("threads must be at least 1")
        started = time.perf_counter()
        with atomic_index(path, overwrite=overwrite) as tmp:
            records = tmp / DOCS_DIR
            records.mkdir()
            shards = [(records / f"part-{i:03d}.jsonl").open("w", encoding="utf-8") for i in range(threads)]
            n_docs = n_empty = 0
            try:
                with progress_bar(total, "write", progress) as bar, DocStoreWriter(tmp) as store:
                    for chunk_no, chunk in enumerate(chunked(docs, chunk_size)):
                        shard = shards[chunk_no % threads]
                        for doc in chunk:
                            contents = doc.full_text
                            n_empty += not contents.strip()
                            shard.write(json.dumps({"id": doc.doc_id, "contents": contents}) + "\n")
                        store.add(chunk)
                        n_docs += len(chunk)
                        bar.update(len(chunk))
            finally:
                for shard in shards:
                    shard.close()
            if n_docs == 0:
                raise InputError("corpus is empty: nothing to index")
            write_seconds = time.perf_counter() - started
            index_started = time.perf_counter()
            indexed = _lucene.run_index_collection(
                records, tmp / LUCENE_DIR, collection="JsonCollection", threads=threads, log_path=tmp / "build.log"
            )
            index_seconds = time.perf_counter() - index_started
            for f in records.iterdir():
                f.unlink()
            records.rmdir()
            if indexed + n_empty != n_docs:
                raise TwoStageError(
                    f"Lucene indexed {indexed} of {n_docs - n_empty} non-empty documents; see build log"
                )
            meta = {
                "backend": cls.backend,
                "bm25": {"k1": k1, "b": b},
                "analyzer": ANALYZER,
                "fields": "title + text (flat)",
                "doc_count": n_docs,
                "indexed_count": indexed,
                "empty_docs": n_empty,
                "anserini": _jvm.anserini_version(),
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "build_seconds": {
                    "write": round(write_seconds, 3),
                    "index": round(index_seconds, 3),
                    "total": round(time.perf_counter() - started, 3),
                },
            }
            write_meta(tmp, meta)
        log.info("built %s: %d docs in %.1fs", path, n_docs, time.perf_counter() - started)
        return cls.open(path)

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | Path) -> LuceneBM25Index:
        path = Path(path)
        return cls(path, _lucene.open_meta(path, cls.backend, LUCENE_DIR))

    def retriever(self, encoder: object = None, *, k1: float | None = None, b: float | None = None) -> BM25Retriever:
        """A BM25 searcher over this index (``k1``/``b`` default to the recorded ones; ``encoder`` is ignored)."""
        del encoder
        return BM25Retriever(self, k1=self.k1 if k1 is None else k1, b=self.b if b is None else b)


class BM25Retriever:
    """First stage over a :class:`LuceneBM25Index`: Lucene BM25 through Anserini's ``SimpleSearcher``.

    Scores are Lucene's BM25 scores as Anserini reports them (rounded to 4 decimals). Ties are broken
    by ``doc_id``, at the cut-off too, so results do not depend on Lucene's internal document order.
    Only documents that share a term with the query are returned; a query whose terms all analyse
    away (stop words, unknown terms) returns an empty ranking.
    """

    name = "bm25"

    def __init__(self, index: LuceneBM25Index, *, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        self.index = index
        self.k1 = k1
        self.b = b
        with _jvm.JNI_LOCK:
            self._searcher = _jvm.autoclass("io.anserini.search.SimpleSearcher")(str(index.path / LUCENE_DIR))
            self._searcher.set_bm25(float(k1), float(b))
        self._docs = DocStore(index.path)

    def retrieve(self, query: Query, k: int, *, texts: bool = True) -> RankedList:
        """Top ``k`` for ``query``; ``texts=False`` skips the document store (ids and scores only)."""
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        hits = self.search_text(query.text, k)
        if not texts:
            return RankedList.from_candidates(query.query_id, (Candidate(d, s) for d, s in hits))
        docs = self._docs.get_many([doc_id for doc_id, _ in hits])
        return RankedList.from_candidates(
            query.query_id,
            (
                Candidate(doc_id, score, docs[doc_id].text, docs[doc_id].title)
                for doc_id, score in hits
                if doc_id in docs
            ),
        )

    def search_text(self, text: str, k: int) -> list[tuple[str, float]]:
        """Top ``k`` (doc_id, BM25 score) for a query text, in rank order.

        Ties need no extra work here: ``SimpleSearcher`` has Lucene sort the hits by score, then by the
        ``id`` field (so which tied documents make the cut follows ``doc_id``, not indexing order), rounds
        scores to 4 decimals and lowers each tied score by 1e-6 per position, so the scores follow
        that order.
        """
        if k == 0 or not text.strip():
            return []
        with _jvm.JNI_LOCK:  # pyjnius is not thread-safe (see indexes._jvm)
            return [(h.docid, float(h.score)) for h in self._searcher.search(text, k)]

    def with_texts(self, ranking: RankedList) -> RankedList:
        """``ranking`` with each document's text and title from the document store."""
        return self._docs.with_texts(ranking)

    def close(self) -> None:
        with _jvm.JNI_LOCK:
            self._searcher.close()


class LuceneBM25Scores:
    """Lucene's own float32 BM25 scores for an index, without Anserini's rounding: the reference another BM25
    implementation (``bm25-csc``) is checked against to the last bit.

    The query is the one :class:`BM25Retriever` runs (Anserini's bag of words over its default analyzer),
    scored by Lucene's ``BM25Similarity(k1, b)`` and sorted as ``SimpleSearcher`` sorts (score, then the
    ``id`` field); only the 4-decimal rounding and the tie perturbation of Anserini's reranker are left out.
    """

    def __init__(self, index: LuceneBM25Index, *, k1: float | None = None, b: float | None = None) -> None:
        jnius = _jvm.require_jnius()
        with _jvm.JNI_LOCK:
            directory = _jvm.autoclass("org.apache.lucene.store.FSDirectory").open(
                _jvm.autoclass("java.nio.file.Paths").get(str(index.path / LUCENE_DIR))
            )
            self._reader = jnius.cast(
                "org.apache.lucene.index.IndexReader",
                _jvm.autoclass("org.apache.lucene.index.DirectoryReader").open(directory),
            )
            self._searcher = _jvm.autoclass("org.apache.lucene.search.IndexSearcher")(self._reader)
            similarity = _jvm.autoclass("org.apache.lucene.search.similarities.BM25Similarity")
            self._searcher.setSimilarity(
                similarity(float(index.k1 if k1 is None else k1), float(index.b if b is None else b))
            )
            self._generator = _jvm.autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")()
            self._analyzer = _jvm.autoclass("io.anserini.index.IndexCollection").DEFAULT_ANALYZER
            sort_field = _jvm.autoclass("org.apache.lucene.search.SortField")
            by_id = sort_field("id", _jvm.autoclass("org.apache.lucene.search.SortField$Type").STRING_VAL)
            self._sort = _jvm.autoclass("org.apache.lucene.search.Sort")(sort_field.FIELD_SCORE, by_id)
            self._scored_docs = _jvm.autoclass("io.anserini.search.ScoredDocs")

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        """Top ``k`` (doc_id, Lucene's float32 score), score descending, ties by doc_id."""
        if k <= 0 or not text.strip():
            return []
        with _jvm.JNI_LOCK:
            query = self._generator.buildQuery("contents", self._analyzer, text)
            hits = self._scored_docs.fromTopDocs(self._searcher.search(query, k, self._sort, True), self._searcher)
            return list(zip(hits.docids, hits.scores, strict=True))

    def statistics(self) -> dict[str, Any]:
        """The ``contents`` field's BM25 statistics: documents with a term (``doc_count``), tokens
        (``sum_total_term_freq``) and each term's document frequency (``doc_freqs``, in Lucene's order)."""
        with _jvm.JNI_LOCK:
            terms = _jvm.autoclass("org.apache.lucene.index.MultiTerms").getTerms(self._reader, "contents")
            doc_freqs: dict[str, int] = {}
            it = terms.iterator()
            while (term := it.next()) is not None:
                doc_freqs[term.utf8ToString()] = int(it.docFreq())
            return {
                "doc_count": int(terms.getDocCount()),
                "sum_total_term_freq": int(terms.getSumTotalTermFreq()),
                "doc_freqs": doc_freqs,
            }

    def close(self) -> None:
        with _jvm.JNI_LOCK:
            self._reader.close()
