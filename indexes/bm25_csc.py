"""Embedded BM25 without a Lucene index (``bm25-csc``): term frequencies in compressed sparse arrays, scored in
process exactly as Lucene scores ``lucene-bm25``.

Build: each document's title and text (``Document.full_text``, as for ``lucene-bm25``) is analysed by the
analyzer ``lucene-bm25`` indexes and searches with (Anserini's default English analyzer, run in the embedded
JVM: one round trip per document, :class:`~indexes._lucene.EnglishAnalyzer`). Its term frequencies are
written as the compressed sparse arrays of :mod:`indexes.csc` (values ``postings/freqs.npy``, int32), its
length as Lucene keeps it in ``norms.npy`` (one byte per document: ``SmallFloat.intToByte4`` of the number
of tokens), with the document store and ``meta.json`` (``k1``, ``b``, the number of documents with a term
and of tokens). The directory is written atomically like every index. :meth:`Bm25CscIndex.from_lucene_bm25`
builds one from the document store of an existing ``lucene-bm25`` index, with its ``k1`` and ``b``.

Search: the query is analysed by the same analyzer (one round trip into the JVM, two JNI calls); each
distinct term is one clause whose boost is its count (Anserini's bag-of-words query, as Lucene's
``BooleanQuery`` merges repeated clauses). Every posting of a query term is scored as Lucene 9's
``BM25Similarity`` scores it, in float32 with Lucene's operations in Lucene's order::

    idf     = (float) ln(1 + (N - df + 0.5) / (df + 0.5))         (double, then float)
    avgdl   = (float) (tokens / N)
    cache[i] = 1 / (k1 * ((1 - b) + b * LENGTH_TABLE[i] / avgdl))   (LENGTH_TABLE[i] = SmallFloat.byte4ToInt(i))
    score   = w - w / (1 + freq * cache[norm])                      (w = boost * idf)

with ``N`` the documents holding at least one term (Lucene's ``docCount``); a document's clause scores are
added in double and rounded to float, as Lucene's disjunctions do. The top ``k`` are taken by score, ties
broken by ``doc_id`` over the whole tied group at the cut-off, as ``lucene-bm25`` ranks. Scores are Lucene's
float32 scores; ``lucene-bm25`` reports Anserini's copy of them rounded to 4 decimals (and lowered by 1e-6
per position within a tie), its ranking the same. An index built with ``scores="anserini"`` (as ``hybrid``
builds its ``bm25-csc`` component) reports those instead, to the bit, so a fusion over it is a fusion over
``lucene-bm25``.
The arrays are memory-mapped and only read: a retriever may be shared by any number of threads.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.batching import chunked, progress_bar
from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.types import Document, Query, RankedList
from twostage_search.indexes import _jvm, _lucene
from twostage_search.indexes.csc import CscPostings, PostingsBuilder, open_meta, sum_rows
from twostage_search.indexes.docstore import DocStore, DocStoreWriter
from twostage_search.indexes.lucene_bm25 import ANALYZER, DEFAULT_B, DEFAULT_K1, LuceneBM25Index
from twostage_search.indexes.meta import BM25IndexMeta, atomic_index, write_meta
from twostage_search.indexes.topk import top_k

log = logging.getLogger(__name__)

FREQS = "freqs.npy"
NORMS = "norms.npy"
SCORES = ("lucene", "anserini")  # Lucene's float32 scores, or lucene-bm25's (Anserini's rounding)


# ------------------------------------------------------------------ Lucene's one-byte lengths (SmallFloat)
def _long_to_int4(i: int) -> int:
    """``SmallFloat.longToInt4``: ``i`` ≥ 0 as 4 significant bits and a shift, in 8 bits."""
    bits = i.bit_length()
    if bits < 4:  # subnormal
        return i
    shift = bits - 4
    return ((i >> shift) & 0x07) | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits, shift = i & 0x07, (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_FREE_VALUES = 255 - _long_to_int4(2**31 - 1)  # SmallFloat.NUM_FREE_VALUES (24): lengths kept exactly


def int_to_byte4(n: int) -> int:
    """``SmallFloat.intToByte4``: how Lucene's ``BM25Similarity`` stores a document length (0..255)."""
    if n < 0:
        raise ValueError(f"a length is never negative, got {n}")
    return n if n < _FREE_VALUES else _FREE_VALUES + _long_to_int4(n - _FREE_VALUES)


def byte4_to_int(b: int) -> int:
    """``SmallFloat.byte4ToInt``: the length a stored byte stands for (exact below 40, rounded down above)."""
    return b if b < _FREE_VALUES else _FREE_VALUES + _int4_to_long(b - _FREE_VALUES)


def length_table() -> np.ndarray:
    """``BM25Similarity.LENGTH_TABLE``: the length of each of the 256 norm bytes, as float32."""
    return np.array([byte4_to_int(i) for i in range(256)], dtype=np.float32)


def norm_inverse(k1: float, b: float, avgdl: np.float32) -> np.ndarray:
    """Lucene's per-query cache ``1 / (k1 * ((1 - b) + b * LENGTH_TABLE[i] / avgdl))`` over the 256 norms, in
    float32 like Java (``k1 = 0`` gives infinity, so a term scores its full weight, as in Lucene)."""
    k1_, b_ = np.float32(k1), np.float32(b)
    with np.errstate(divide="ignore"):
        return np.float32(1) / (k1_ * ((np.float32(1) - b_) + b_ * length_table() / np.float32(avgdl)))


def anserini_scores(hits: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """``hits`` (in rank order, Lucene's float32 scores) with the scores ``lucene-bm25`` reports: Anserini's
    ``ScoreTiesAdjusterReranker`` rounds each to 4 decimals in double (``(float) (Math.round(s * 1e4) /
    1e4)``, halves up) and lowers the i-th of a run of scores within 1e-4 of the one before by ``i * 1e-6``,
    in float32."""
    out: list[tuple[str, float]] = []
    dup = 0
    previous = np.float32(0)
    for doc_id, score in hits:
        current = np.float32(math.floor(float(score) * 1e4 + 0.5) / 1e4)  # exact products, one division
        if not out or previous - current > np.float32(1e-4):
            dup = 0
        else:
            dup += 1
            current = current - np.float32(1e-6) * np.float32(dup)
        out.append((doc_id, float(current)))
        previous = current
    return out


def _check_parameters(k1: float, b: float, scores: str) -> None:
    if not k1 >= 0 or not 0 <= b <= 1:
        raise InputError(f"BM25 needs k1 ≥ 0 and 0 ≤ b ≤ 1, got k1={k1}, b={b}")
    if scores not in SCORES:
        raise InputError(f"scores must be one of {', '.join(SCORES)}, got {scores!r}")


class Bm25CscIndex(BM25IndexMeta):
    """Term frequencies and one-byte document lengths as memory-mapped arrays, with the document store and
    ``meta.json``; scores as ``lucene-bm25`` (Lucene's ``BM25Similarity``) in process."""

    backend = "bm25-csc"
    needs_encoder = False  # reads the text itself; ``build`` accepts and ignores ``encoder``

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.arrays = CscPostings(path, FREQS, int(meta["doc_count"]))
        self.norms: np.ndarray = np.load(path / NORMS, mmap_mode="r", allow_pickle=False)
        if self.norms.dtype != np.uint8 or len(self.norms) != len(self.arrays.doc_ids):
            raise IndexLoadError(f"corrupt index: {path / NORMS} does not match {len(self.arrays.doc_ids)} documents")
        self.doc_count_with_terms = int(meta["indexed_count"])  # BM25's N (Lucene's docCount)
        self.avgdl = np.float32(int(meta["total_tokens"]) / max(self.doc_count_with_terms, 1))

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        *,
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
        threads: int | None = None,
        chunk_size: int = 1024,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
        encoder: object = None,
        scale: float | None = None,
        scores: str = "lucene",
    ) -> Bm25CscIndex:
        """Analyse ``docs`` and write the index at ``path`` atomically (temp dir, then rename).

        ``k1`` and ``b`` are recorded as the index's BM25 parameters, ``scores`` (:data:`SCORES`) as the
        scores its retrievers report by default (searches use them). ``threads``,
        ``encoder`` and ``scale`` are accepted so that every backend builds with the same call, and ignored.
        Raises :class:`InputError` (nothing written) on an empty corpus, a duplicate ``doc_id`` or bad
        parameters; any failure leaves an existing index at ``path`` untouched.
        """
        del threads, encoder, scale
        _check_parameters(k1, b, scores)
        analyze = _lucene.EnglishAnalyzer()
        started = time.perf_counter()
        postings = PostingsBuilder()
        norms = bytearray()
        total_tokens = 0
        with atomic_index(path, overwrite=overwrite) as tmp:
            with DocStoreWriter(tmp) as store, progress_bar(total, "analyse", progress) as bar:
                for chunk in chunked(docs, chunk_size):
                    for doc in chunk:
                        tokens = analyze(doc.full_text)
                        postings.add(doc.doc_id, Counter(tokens))
                        norms.append(int_to_byte4(len(tokens)))
                        total_tokens += len(tokens)
                    store.add(chunk)
                    bar.update(len(chunk))
            ids = postings.doc_ids
            if not ids:
                raise InputError("corpus is empty: nothing to index")
            analyse_seconds = time.perf_counter() - started
            terms, max_freq = postings.write(tmp, FREQS)
            np.save(tmp / NORMS, np.frombuffer(bytes(norms), dtype=np.uint8), allow_pickle=False)
            empty = postings.empty_docs
            write_meta(
                tmp,
                {
                    "backend": cls.backend,
                    "bm25": {"k1": k1, "b": b},
                    "scores": scores,
                    "analyzer": ANALYZER,
                    "fields": "title + text (flat)",
                    "doc_count": len(ids),
                    "indexed_count": len(ids) - empty,
                    "empty_docs": empty,
                    "total_tokens": total_tokens,
                    "terms": len(terms),
                    "postings": postings.postings,
                    "max_freq": max_freq,
                    "anserini": _jvm.anserini_version(),
                    "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "build_seconds": {
                        "analyse": round(analyse_seconds, 3),
                        "total": round(time.perf_counter() - started, 3),
                    },
                },
            )
        log.info("built %s: %d docs in %.1fs", path, len(ids), time.perf_counter() - started)
        return cls.open(path)

    @classmethod
    def from_lucene_bm25(
        cls,
        source: str | Path,
        path: str | Path,
        *,
        scores: str = "lucene",
        progress: bool = True,
        overwrite: bool = True,
    ) -> Bm25CscIndex:
        """Build the ``bm25-csc`` index of the documents of the ``lucene-bm25`` index at ``source`` (read from
        its document store, in indexing order), with its ``k1`` and ``b`` (``scores`` as for :meth:`build`)."""
        lucene = LuceneBM25Index.open(source)
        docs = DocStore(lucene.path).documents()
        return cls.build(
            docs,
            path,
            k1=lucene.k1,
            b=lucene.b,
            scores=scores,
            total=len(lucene),
            progress=progress,
            overwrite=overwrite,
        )

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str | Path) -> Bm25CscIndex:
        path = Path(path)
        return cls(path, open_meta(path, cls.backend, FREQS, files=(NORMS,)))

    def idf(self, df: int) -> np.float32:
        """Lucene's BM25 idf of a term in ``df`` documents: ``ln(1 + (N - df + 0.5) / (df + 0.5))`` in double,
        then float."""
        n = self.doc_count_with_terms
        return np.float32(math.log(1 + (n - df + 0.5) / (df + 0.5)))

    def doc_freqs(self) -> dict[str, int]:
        """The number of documents each term of the index occurs in."""
        return self.arrays.doc_freqs()

    def retriever(
        self, encoder: object = None, *, k1: float | None = None, b: float | None = None, scores: str | None = None
    ) -> Bm25CscRetriever:
        """A BM25 searcher over this index (``k1``, ``b`` and ``scores`` default to the recorded ones; ``encoder``
        is ignored).

        ``scores="lucene"`` reports Lucene's float32 scores, ``"anserini"`` the scores ``lucene-bm25`` reports
        (:func:`anserini_scores`: the same ranking, so a fusion over them is a fusion over ``lucene-bm25``).
        """
        del encoder
        return Bm25CscRetriever(
            self,
            k1=self.k1 if k1 is None else k1,
            b=self.b if b is None else b,
            scores=str(self.meta.get("scores", "lucene")) if scores is None else scores,
        )


class Bm25CscRetriever:
    """First stage over a :class:`Bm25CscIndex`: Lucene's BM25 in process, ranked as ``lucene-bm25`` ranks.

    Only documents that share a term with the query are returned; a query whose terms all analyse away
    (stop words, unknown terms) returns an empty ranking. Safe to share between threads: the arrays are
    read-only, every search allocates its own, and the analyser call holds :data:`_jvm.JNI_LOCK`.
    """

    name = "bm25"

    def __init__(
        self, index: Bm25CscIndex, *, k1: float = DEFAULT_K1, b: float = DEFAULT_B, scores: str = "lucene"
    ) -> None:
        _check_parameters(k1, b, scores)
        self.scores = scores
        self.index = index
        self.k1 = k1
        self.b = b
        self._norm_inverse = norm_inverse(k1, b, index.avgdl)
        self._analyze = _lucene.EnglishAnalyzer()
        self._docs = DocStore(index.path)

    def retrieve(self, query: Query, k: int, *, texts: bool = True) -> RankedList:
        """Top ``k`` for ``query``; ``texts=False`` skips the document store (ids and scores only)."""
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        hits = self.search_text(query.text, k)
        docs = self._docs.get_many([doc_id for doc_id, _ in hits]) if texts else None
        return RankedList.from_sorted(query.query_id, hits, docs)

    def search_text(self, text: str, k: int) -> list[tuple[str, float]]:
        """Top ``k`` (doc_id, BM25 score) for a query text, in rank order."""
        if k <= 0 or not text.strip():
            return []
        return self.search_terms(self._analyze(text), k)

    def search_terms(self, tokens: Sequence[str], k: int) -> list[tuple[str, float]]:
        """Top ``k`` (doc_id, BM25 score) for an analysed query (a repeated token counts as a boost)."""
        if k <= 0:
            return []
        arrays, index = self.index.arrays, self.index
        matched = arrays.matched(Counter(tokens))
        if not matched:
            return []
        one = np.float32(1)
        parts = []
        for row, boost in matched:
            docs, freqs = arrays.row(row)
            weight = np.float32(boost) * index.idf(len(docs))
            denominator = one + freqs.astype(np.float32) * self._norm_inverse[index.norms[docs]]
            parts.append((docs, weight - weight / denominator))  # k1 = 0: w / inf = 0, the full weight
        rows, sums = sum_rows(parts, len(arrays.doc_ids))
        hits = top_k(sums.astype(np.float32), arrays.doc_ids, k, rows=rows)
        return anserini_scores(hits) if self.scores == "anserini" else hits

    def with_texts(self, ranking: RankedList) -> RankedList:
        """``ranking`` with each document's text and title from the document store."""
        return self._docs.with_texts(ranking)

    def close(self) -> None:
        """Nothing to release (the memory maps close with the index)."""
