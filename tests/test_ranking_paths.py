"""The fast paths of the first stages give exactly what the checked paths give: rankings built from hits
already in order (``RankedList.from_sorted``), texts fetched after the search, and the hybrid fetching the
texts of its fused top k once instead of every component fetching its own."""

import pytest

from tests.helpers import need

need("onnxruntime", "dense")
need("tokenizers", "dense")

from twostage_search.engine.dense import DenseEncoder
from twostage_search.engine.fusion import fuse
from twostage_search.engine.types import Candidate, Document, RankedList, ScoredDoc
from twostage_search.indexes.dense import DenseFlatIndex
from twostage_search.indexes.docstore import DocStore
from twostage_search.indexes.hybrid import Fusion, HybridRetriever

HITS = [("c", 3.0), ("a", 2.0), ("b", 2.0), ("d", 1)]  # score descending, the tie by doc_id, an int score
DOCS = {d: Document(d, f"text {d}", f"Title {d}") for d in "abcd"}


def _rows(ranking):
    return [(h.query_id, h.doc_id, h.score, type(h.score), h.rank, h.text, h.title) for h in ranking]


def test_from_sorted_is_from_candidates_without_the_sort():
    expected = RankedList.from_candidates("q", [Candidate(d, s) for d, s in HITS])
    ranking = RankedList.from_sorted("q", HITS)
    assert _rows(ranking) == _rows(expected) and ranking == expected
    assert RankedList("q", ranking.items) == ranking  # passes the constructor's checks
    assert len(RankedList.from_sorted("q", [])) == 0


def test_from_sorted_takes_texts_and_leaves_out_hits_without_a_document():
    docs = {d: doc for d, doc in DOCS.items() if d != "a"}
    expected = RankedList.from_candidates(
        "q", [Candidate(d, s, DOCS[d].text, DOCS[d].title) for d, s in HITS if d != "a"]
    )
    ranking = RankedList.from_sorted("q", HITS, docs)
    assert _rows(ranking) == _rows(expected)
    assert [h.rank for h in ranking] == [1, 2, 3]
    rows = {"c": ScoredDoc("x", "c", 9.0, 7, "row text", "Row title")}  # a ranked row lends its text and title
    assert [(h.doc_id, h.score, h.text, h.title) for h in RankedList.from_sorted("q", HITS, rows)] == [
        ("c", 3.0, "row text", "Row title")
    ]


def test_head_is_the_checked_prefix():
    ranking = RankedList.from_candidates("q", [Candidate(d, s) for d, s in HITS])
    assert ranking.head(2) == RankedList("q", ranking.items[:2])
    assert ranking.head(-1) == RankedList("q")


def test_docstore_with_texts_fills_found_documents_and_keeps_missing_ones(built_indexes, tiny_docs):
    store = DocStore(built_indexes["lucene-bm25"].path)
    by_id = {d.doc_id: d for d in tiny_docs}
    ids = sorted(by_id)[:3]
    bare = RankedList.from_candidates("q", [Candidate(d, 1.0 / (i + 1)) for i, d in enumerate(ids)])
    filled = store.with_texts(bare)
    assert [(h.doc_id, h.score, h.rank, h.text, h.title) for h in filled] == [
        (d, 1.0 / (i + 1), i + 1, by_id[d].text, by_id[d].title) for i, d in enumerate(ids)
    ]
    with_missing = RankedList.from_candidates("q", [Candidate(ids[0], 2.0), Candidate("no-such-doc", 1.0)])
    assert [(h.doc_id, h.text) for h in store.with_texts(with_missing)] == [
        (ids[0], by_id[ids[0]].text),
        ("no-such-doc", ""),
    ]


@pytest.mark.parametrize("backend", ["impact-csc", "lucene-impact", "dense-flat"])
def test_index_rankings_equal_sorted_candidates_with_stored_texts(
    built_indexes, encoder, tiny_queries, tiny_docs, backend
):
    """What the search found, sorted and checked by ``from_candidates`` with the corpus's texts: the ranking."""
    index = built_indexes[backend]
    retriever = index.retriever(encoder)
    by_id = {d.doc_id: d for d in tiny_docs}
    for q in tiny_queries:
        if backend == "dense-flat":
            hits = retriever.search_vector(retriever.encoder.encode_queries([q.text])[0], 5)
        else:
            (vector,) = retriever.encoder.encode_queries([q.text])
            impacts = vector.top(retriever.query_top_n).quantize(index.scale)
            hits = [(d, s / index.scale**2) for d, s in retriever.search_impacts(impacts, 5)]
        expected = RankedList.from_candidates(
            q.query_id, [Candidate(d, s, by_id[d].text, by_id[d].title) for d, s in hits]
        )
        assert _rows(retriever.retrieve(q, 5)) == _rows(expected)
        bare = retriever.retrieve(q, 5, texts=False)
        assert _rows(bare) == _rows(RankedList.from_candidates(q.query_id, [Candidate(d, s) for d, s in hits]))
        assert _rows(retriever.with_texts(bare)) == _rows(expected)


class _Recording:
    """A component that records whether it was asked for texts; ``lazy=False`` hides ``with_texts``."""

    def __init__(self, inner, asked, name):
        self.inner, self.asked, self.name = inner, asked, name

    def retrieve(self, query, k, **kwargs):
        self.asked.append((self.name, kwargs.get("texts", True)))
        return self.inner.retrieve(query, k, **kwargs)


class _Lazy(_Recording):
    def with_texts(self, ranking):
        return self.inner.with_texts(ranking)


def _reference(parts, weights, fusion, query, k):
    """Every component with its texts, fused, cut to ``k``, each text from the first component returning it."""
    rankings = {n: r.retrieve(query, max(k, fusion.depth)) for n, r in parts.items()}
    fused = fuse(
        [[(h.doc_id, h.score) for h in rankings[n]] for n in parts],
        [weights[n] for n in parts],
        method=fusion.method,
        k=fusion.k,
    )[:k]
    texts = {}
    for ranking in rankings.values():
        for h in ranking:
            texts.setdefault(h.doc_id, h)
    return RankedList.from_candidates(
        query.query_id, [Candidate(d, s, texts[d].text, texts[d].title) for d, s in fused]
    )


@pytest.fixture(scope="module")
def dense_copy(tmp_path_factory, tiny_docs):
    """A dense index whose stored texts differ from the BM25 index's: shows which component's text is kept."""
    docs = [Document(d.doc_id, d.text + " (dense copy)", d.title) for d in tiny_docs]
    path = tmp_path_factory.mktemp("dense-copy") / "idx"
    return DenseFlatIndex.build(docs, path, encoder=DenseEncoder(threads=1), progress=False)


@pytest.mark.parametrize("lazy", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("fusion", [Fusion(), Fusion("rrf", depth=3), Fusion("zscore", depth=4)])
def test_hybrid_fetching_texts_once_equals_components_with_texts(built_indexes, dense_copy, tiny_queries, lazy, fusion):
    names = ("bm25", "dense")  # bm25 first: its texts win where both return a document
    inner = {"bm25": built_indexes["lucene-bm25"].retriever(), "dense": dense_copy.retriever()}
    weights = {"bm25": 1.0, "dense": 2.0}
    asked: list[tuple[str, bool]] = []
    parts = {n: (_Lazy if is_lazy else _Recording)(inner[n], asked, n) for n, is_lazy in zip(names, lazy, strict=True)}
    sequential = HybridRetriever(parts, weights, fusion, parallel=False)
    parallel = HybridRetriever(parts, weights, fusion, parallel=True)
    sources: set[bool] = set()  # texts from the dense copy (documents only it returned) and from BM25
    try:
        for q in tiny_queries:
            for k in (2, 5):
                expected = _reference(inner, weights, fusion, q, k)
                sources.update(h.text.endswith("(dense copy)") for h in expected)
                asked.clear()
                assert _rows(sequential.retrieve(q, k)) == _rows(expected)
                assert sorted(asked) == sorted((n, not is_lazy) for n, is_lazy in zip(names, lazy, strict=True))
                assert _rows(parallel.retrieve(q, k)) == _rows(expected)
    finally:
        parallel.close()
    assert sources == {True, False}
