"""Compressed sparse posting arrays, the storage of the in-process index backends (``impact-csc``, ``bm25-csc``).

An index holds one integer value per (term, document) pair: a SPLADE impact or a term frequency. The pairs
are one compressed sparse matrix with a row per term of the index's vocabulary and a column per document
(CSR over terms: the CSC arrays of the document × term matrix), in the index directory as::

    postings/indptr.npy   row offsets (a term's postings are docs[indptr[t]:indptr[t + 1]])
    postings/docs.npy     document rows, ascending within a term
    postings/<values>     the values (int32), e.g. impacts.npy or freqs.npy
    terms.json            the vocabulary, sorted (code-point order = UTF-8 byte order, Lucene's term order)
    doc_ids.json          the doc_id of each document row

:class:`PostingsBuilder` collects the postings in document order during a build and writes these files
(inside the build's atomic temp directory); :class:`CscPostings` opens them memory-mapped
(``np.load(mmap_mode="r")``) and checks that they fit together. Neither changes after the build, so any
number of threads may read them.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.indexes.meta import read_meta

POSTINGS = "postings"
INDPTR, DOCS = "indptr.npy", "docs.npy"
TERMS = "terms.json"
DOC_IDS = "doc_ids.json"
INT32_MAX = int(np.iinfo(np.int32).max)


class PostingsBuilder:
    """The postings of a build in document order: :meth:`add` each document's ``{term: value}``, then
    :meth:`write` the arrays. Values must be int32."""

    def __init__(self) -> None:
        self._vocab: dict[str, int] = {}  # term -> id in order of first appearance
        self._term_ids, self._values, self._lengths = array("i"), array("i"), array("i")
        self.doc_ids: list[str] = []

    def add(self, doc_id: str, values: Mapping[str, int]) -> None:
        """Append a document (its row is the number of documents added before it).

        Raises :class:`InputError` when a value does not fit int32.
        """
        vocab = self._vocab
        self._term_ids.extend(vocab.setdefault(term, len(vocab)) for term in values)
        try:
            self._values.extend(values.values())
        except OverflowError:
            raise InputError(f"document {doc_id!r}: a value beyond int32") from None
        self._lengths.append(len(values))
        self.doc_ids.append(doc_id)

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def postings(self) -> int:
        return len(self._values)

    @property
    def empty_docs(self) -> int:
        """Documents without any posting."""
        return self._lengths.count(0)

    def write(self, path: Path, values_name: str) -> tuple[list[str], int]:
        """Write ``postings/`` (values as ``values_name``), ``terms.json`` and ``doc_ids.json`` under ``path``;
        return the sorted vocabulary and the largest value (0 without postings)."""
        terms = sorted(self._vocab)
        rank = np.empty(len(terms), dtype=np.int64)
        rank[[self._vocab[t] for t in terms]] = np.arange(len(terms))
        rows = rank[np.frombuffer(self._term_ids, dtype=np.intc)]
        order = np.argsort(rows, kind="stable")  # by term; documents stay ascending within a term
        lengths = np.frombuffer(self._lengths, dtype=np.intc)
        docs = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[order]
        values = np.frombuffer(self._values, dtype=np.intc)[order]
        # scipy keeps int32 index arrays as they are; int64 only when the counts need it (then both are int64).
        index_dtype = np.int32 if max(len(values), len(lengths)) <= INT32_MAX else np.int64
        indptr = np.zeros(len(terms) + 1, dtype=index_dtype)
        np.cumsum(np.bincount(rows, minlength=len(terms)), out=indptr[1:])
        out = path / POSTINGS
        out.mkdir()
        np.save(out / INDPTR, indptr, allow_pickle=False)
        np.save(out / DOCS, docs.astype(index_dtype), allow_pickle=False)
        np.save(out / values_name, values.astype(np.int32), allow_pickle=False)
        (path / TERMS).write_text(json.dumps(terms), encoding="utf-8")
        (path / DOC_IDS).write_text(json.dumps(self.doc_ids), encoding="utf-8")
        return terms, int(values.max()) if len(values) else 0


def open_meta(path: Path, backend: str, values_name: str, files: tuple[str, ...] = ()) -> dict[str, Any]:
    """``meta.json`` of a CSC index at ``path``, checked to be ``backend`` with every array present."""
    meta = read_meta(path, backend=backend, files=(TERMS, DOC_IDS, *files), dirs=(POSTINGS,))
    for name in (INDPTR, DOCS, values_name):
        if not (path / POSTINGS / name).is_file():
            raise IndexLoadError(f"incomplete index (no {POSTINGS}/{name}): {path}")
    return meta


class CscPostings:
    """The memory-mapped posting arrays of an index directory, with its vocabulary and document ids.

    ``indptr``, ``docs`` and ``values`` are read-only memory maps; ``term_rows`` maps a term to its row.
    """

    def __init__(self, path: Path, values_name: str, doc_count: int) -> None:
        self.terms: list[str] = json.loads((path / TERMS).read_text(encoding="utf-8"))
        self.doc_ids: list[str] = json.loads((path / DOC_IDS).read_text(encoding="utf-8"))
        self.term_rows = {term: row for row, term in enumerate(self.terms)}
        postings = path / POSTINGS
        arrays = [np.load(postings / name, mmap_mode="r", allow_pickle=False) for name in (INDPTR, DOCS, values_name)]
        self.indptr, self.docs, self.values = arrays
        if (
            len(self.doc_ids) != doc_count
            or len(self.indptr) != len(self.terms) + 1
            or len(self.docs) != len(self.values)
            or (len(self.indptr) and int(self.indptr[-1]) != len(self.docs))
            or self.docs.dtype != self.indptr.dtype
            or self.values.dtype != np.int32
        ):
            raise IndexLoadError(f"corrupt index: the arrays under {postings} do not match {TERMS}/{DOC_IDS}")

    @property
    def shape(self) -> tuple[int, int]:
        """(terms, documents)."""
        return len(self.terms), len(self.doc_ids)

    def doc_freqs(self) -> dict[str, int]:
        """The number of documents each term occurs in, terms in index order."""
        return dict(zip(self.terms, np.diff(self.indptr).tolist(), strict=True))

    def matched(self, weights: Mapping[str, Any]) -> list[tuple[int, Any]]:
        """(row, weight) of the terms of ``weights`` with a positive weight that the index holds, by row."""
        rows = self.term_rows
        return sorted((rows[t], w) for t, w in weights.items() if w > 0 and t in rows)

    def row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(document rows, values) of one term row (views of the memory maps)."""
        start, end = int(self.indptr[row]), int(self.indptr[row + 1])
        return self.docs[start:end], self.values[start:end]


def sum_rows(parts: Sequence[tuple[np.ndarray, np.ndarray]], n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """(document rows ascending, sums in float64) of every document in ``parts``: each part is one term's
    (document rows, values), rows distinct within a part. A document's values are added in float64 in part
    order (``np.bincount``), over an array of ``n_docs`` sums when the postings are many for the corpus,
    else over the distinct documents only (sorted with ``np.unique``)."""
    if len(parts) == 1:
        docs, values = parts[0]
        return np.asarray(docs), np.asarray(values, dtype=np.float64)
    docs = np.concatenate([d for d, _ in parts])
    values = np.concatenate([v for _, v in parts]).astype(np.float64)
    if 8 * len(docs) >= n_docs:  # one pass over the corpus is cheaper than sorting the postings
        rows = np.flatnonzero(np.bincount(docs, minlength=n_docs))
        return rows, np.bincount(docs, weights=values, minlength=n_docs)[rows]
    rows, inverse = np.unique(docs, return_inverse=True)
    return rows, np.bincount(inverse, weights=values)
