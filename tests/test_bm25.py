"""The ``lucene-bm25`` baseline against an independent BM25: Lucene's formula computed here in numpy
float32 over the tokens of Anserini's analyzer, on the tiny fixture."""

import json

import pytest

from tests.bm25_reference import bm25 as _bm25
from tests.helpers import TINY
from twostage_search import indexes
from twostage_search.cli import main
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Document, Query
from twostage_search.indexes import _jvm
from twostage_search.indexes.lucene_bm25 import LuceneBM25Index


@pytest.fixture(scope="module")
def bm25_index(built_indexes):
    return built_indexes["lucene-bm25"]


@pytest.fixture(scope="module")
def analyze():
    """Anserini's default analyzer (the one IndexCollection and SimpleSearcher use), as a function."""
    utils = _jvm.autoclass("io.anserini.analysis.AnalyzerUtils")
    analyzer = _jvm.autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()
    return lambda text: list(utils.analyze(analyzer, text).toArray())


EXTRA_QUERIES = ["cat cat kitten", "the capital city of Germany", "Paris France Berlin", "coffee, vaccines & virus!"]


def test_scores_equal_independent_bm25(bm25_index, analyze, tiny_docs, tiny_queries):
    retriever = bm25_index.retriever()
    doc_tokens = [analyze(d.full_text) for d in tiny_docs]
    texts = [q.text for q in tiny_queries] + EXTRA_QUERIES
    for text in texts:
        expected = _bm25(tiny_docs, doc_tokens, analyze(text))
        got = retriever.search_text(text, len(tiny_docs))
        assert [d for d, _ in got] == [d for d, _ in expected], text
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1.5e-4), text
        ranking = retriever.retrieve(Query("x", text), k=3)
        assert ranking.doc_ids == [d for d, _ in expected[:3]]
        assert all(h.text == next(d.text for d in tiny_docs if d.doc_id == h.doc_id) for h in ranking)


def test_every_query_finds_its_relevant_document_first(bm25_index, tiny_queries, tiny_qrels):
    retriever = bm25_index.retriever()
    for q in tiny_queries:
        assert retriever.retrieve(q, k=1).doc_ids == list(tiny_qrels[q.query_id]), q.text


def test_stop_words_only_and_empty_results(bm25_index):
    retriever = bm25_index.retriever()
    assert len(retriever.retrieve(Query("s", "the of and is"), k=5)) == 0
    assert len(retriever.retrieve(Query("u", "zzzzqqqq"), k=5)) == 0
    assert retriever.search_text('AND OR ( " :', 5) == []  # not query syntax: analysed as text


def test_parameters_are_recorded_and_used(bm25_index, analyze, tiny_docs):
    assert bm25_index.meta["bm25"] == {"k1": 0.9, "b": 0.4}
    assert bm25_index.meta["doc_count"] == len(tiny_docs)
    assert isinstance(indexes.load(bm25_index.path), LuceneBM25Index)
    doc_tokens = [analyze(d.full_text) for d in tiny_docs]
    text = "young cats kept as pets in the largest city"
    other = bm25_index.retriever(k1=1.2, b=0.75).search_text(text, 12)
    expected = _bm25(tiny_docs, doc_tokens, analyze(text), k1=1.2, b=0.75)
    assert len(expected) >= 3
    assert [d for d, _ in other] == [d for d, _ in expected]
    assert [s for _, s in other] == pytest.approx([s for _, s in expected], abs=1.5e-4)
    assert other != bm25_index.retriever().search_text(text, 12)


def test_ties_are_broken_by_doc_id(tmp_path):
    # Same text → same score; indexed in reverse id order so Lucene's own order would be wrong.
    docs = [Document(f"t{i}", "identical text about volcanoes") for i in (3, 1, 2, 0)] + [
        Document("z", "volcanoes volcanoes erupt"),
        Document("a", "nothing relevant here"),
    ]
    index = LuceneBM25Index.build(docs, tmp_path / "ties", progress=False)
    retriever = index.retriever()
    top = retriever.retrieve(Query("q", "identical volcanoes"), k=10)
    tied = [h for h in top if h.doc_id.startswith("t")]
    assert [h.doc_id for h in tied] == ["t0", "t1", "t2", "t3"]
    # Anserini lowers each tied score by 1e-6 per position so that scores follow the doc_id order.
    assert tied[0].score - tied[-1].score == pytest.approx(3e-6, abs=5e-7)
    for k in (1, 2, 3):
        cut = retriever.retrieve(Query("q", "identical volcanoes"), k=k)
        assert cut.doc_ids == top.doc_ids[:k]  # the cut inside a tied group follows doc_id too
    with pytest.raises(InputError, match="empty"):
        LuceneBM25Index.build([], tmp_path / "empty", progress=False)
    assert not (tmp_path / "empty").exists()


def test_cli_builds_and_searches_bm25(tmp_path, capsys):
    path = tmp_path / "cli-bm25"
    corpus = str(TINY / "corpus.jsonl")
    assert main(["index", corpus, "--index", str(path), "--backend", "lucene-bm25", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(path), "ocean tides moon", "--k", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["hits"][0]["doc_id"] == "d10"
    assert json.loads((path / "meta.json").read_text())["backend"] == "lucene-bm25"
