"""The in-process impact index (``impact-csc``): the same rankings and scores as ``lucene-impact``, an
independent dot product in plain Python, hand-checked toy vectors (ties, int64 sums), atomic builds."""

import json
import mmap

import numpy as np
import pytest

from tests.helpers import need

need("scipy", "impact")

from twostage_search import indexes
from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.types import Document, Query, SparseVector
from twostage_search.indexes.impact_csc import ImpactCscIndex


@pytest.fixture(scope="module")
def csc_index(built_indexes):
    return built_indexes["impact-csc"]


@pytest.mark.parametrize("top_n", [None, 24, 2])
def test_same_top_100_and_scores_as_lucene_impact(built_indexes, csc_index, encoder, tiny_queries, top_n):
    lucene = built_indexes["lucene-impact"].retriever(encoder, query_top_n=top_n)
    csc = csc_index.retriever(encoder, query_top_n=top_n)
    # both encode queries onto their index's terms: the same terms, so the same query vectors
    assert csc.encoder.query.vocabulary == lucene.encoder.query.vocabulary
    for q in tiny_queries:
        want, got = lucene.retrieve(q, 100), csc.retrieve(q, 100)
        assert got.doc_ids == want.doc_ids and [h.score for h in got] == [h.score for h in want], q.text
        assert [(h.text, h.title) for h in got] == [(h.text, h.title) for h in want]
        (vector,) = csc.encoder.encode_queries([q.text])
        impacts = vector.top(top_n).quantize(csc_index.scale)
        assert csc.search_impacts(impacts, 100) == lucene.search_impacts(impacts, 100)
        assert len(got) > 0


def test_search_equals_a_plain_python_dot_product(csc_index, encoder, tiny_docs, tiny_queries):
    scale = csc_index.scale
    vectors = encoder.encode_docs([d.full_text for d in tiny_docs])
    doc_impacts = {d.doc_id: v.quantize(scale) for d, v in zip(tiny_docs, vectors, strict=True)}
    retriever = csc_index.retriever(encoder, query_top_n=None)
    assert sorted({t for v in doc_impacts.values() for t in v}) == csc_index.terms
    for q in tiny_queries:
        (vector,) = retriever.encoder.encode_queries([q.text])
        query = vector.quantize(scale)
        scores = {d: sum(w * v.get(t, 0) for t, w in query.items()) for d, v in doc_impacts.items()}
        expected = sorted(((d, s) for d, s in scores.items() if s > 0), key=lambda h: (-h[1], h[0]))
        assert retriever.search_impacts(query, 100) == expected, q.text
        for k in (1, 3):
            assert retriever.search_impacts(query, k) == expected[:k]
        ranking = retriever.retrieve(q, 100)
        assert [(h.doc_id, h.score) for h in ranking] == [(d, s / scale**2) for d, s in expected]


class Table:
    """A side encoder whose texts spell their vectors: ``"a:3 b:1"`` weighs term a 3.0 and term b 1.0."""

    def encode(self, texts):
        pairs = [(p.split(":") for p in text.split()) for text in texts]
        return [SparseVector.from_dict({t: float(w) for t, w in pair}) for pair in pairs]

    def config(self):
        return {"kind": "table"}


TOY = SparseEncoder("table", Table(), Table(), {})
# added out of id order, so that ties are not in insertion order; d5 has no terms
TOY_DOCS = [
    Document(i, text) for i, text in (("d3", "a:3 b:1"), ("d2", "b:2"), ("d1", "b:2"), ("d4", "c:5"), ("d5", ""))
]


def test_hand_checked_scores_and_ties(tmp_path):
    index = ImpactCscIndex.build(TOY_DOCS, tmp_path / "toy", encoder=TOY, scale=1, progress=False)
    assert index.terms == ["a", "b", "c"] and index.max_impact == 5 and len(index) == 5
    retriever = index.retriever(TOY)
    # d3: 1*3 + 2*1 = 5; d1, d2: 2*2 = 4 (tied: by doc_id); d4 shares no term; z is not in the index
    assert retriever.search_impacts({"a": 1, "b": 2, "z": 9}, 10) == [("d3", 5), ("d1", 4), ("d2", 4)]
    assert retriever.search_impacts({"a": 1, "b": 2}, 2) == [("d3", 5), ("d1", 4)]
    assert retriever.search_impacts({"b": 1}, 1) == [("d1", 2)]
    assert retriever.search_impacts({"c": 1}, 10) == [("d4", 5)]
    assert retriever.search_impacts({"z": 1}, 10) == [] and retriever.search_impacts({}, 10) == []
    assert retriever.search_impacts({"a": 1}, 0) == []
    ranking = retriever.retrieve(Query("q", "a:1 b:2"), 2)
    assert [(h.doc_id, h.score, h.text) for h in ranking] == [("d3", 5.0, "a:3 b:1"), ("d1", 4.0, "b:2")]
    meta = json.loads((index.path / "meta.json").read_text())
    assert (meta["doc_count"], meta["indexed_count"], meta["empty_docs"], meta["postings"]) == (5, 4, 1, 5)


def test_sums_beyond_int32_are_exact(tmp_path):
    index = ImpactCscIndex.build(TOY_DOCS, tmp_path / "big", encoder=TOY, scale=1e6, progress=False)
    retriever = index.retriever(TOY)
    # d3: 1e6 * 3e6 + 2e6 * 1e6 = 5e12; d1, d2: 2e6 * 2e6 = 4e12 (int32 ends at 2.1e9)
    want = [("d3", 5 * 10**12), ("d1", 4 * 10**12), ("d2", 4 * 10**12)]
    assert retriever.search_impacts({"a": 10**6, "b": 2 * 10**6}, 10) == want
    assert [h.score for h in retriever.retrieve(Query("q", "a:1 b:2"), 1)] == [5.0]
    with pytest.raises(InputError, match="int32"):
        ImpactCscIndex.build(TOY_DOCS, tmp_path / "huge", encoder=TOY, scale=1e9, progress=False)
    assert not (tmp_path / "huge").exists()


def _bases(array):
    while array is not None:
        yield array
        array = getattr(array, "base", None)


def test_arrays_are_memory_mapped_and_read_only(csc_index):
    for array in (csc_index.postings.indptr, csc_index.postings.indices, csc_index.postings.data):
        assert not array.flags.writeable
        assert any(isinstance(b, mmap.mmap) for b in _bases(array))  # views of the files, not copies
    assert csc_index.postings.data.dtype == np.int32


def test_meta_json_and_load(csc_index, built_indexes, tiny_docs):
    meta = json.loads((csc_index.path / "meta.json").read_text())
    lucene = built_indexes["lucene-impact"].meta
    assert meta["backend"] == "impact-csc"
    for field in ("scale", "doc_count", "indexed_count", "empty_docs", "encoder"):
        assert meta[field] == lucene[field], field
    assert meta["terms"] == len(csc_index.terms) and meta["doc_count"] == len(tiny_docs)
    assert isinstance(indexes.load(csc_index.path), ImpactCscIndex)


def test_truncated_arrays_are_refused(tmp_path):
    index = ImpactCscIndex.build(TOY_DOCS, tmp_path / "toy", encoder=TOY, scale=1, progress=False)
    np.save(index.path / "postings" / "impacts.npy", np.ones(2, dtype=np.int32))
    with pytest.raises(IndexLoadError, match="corrupt"):
        ImpactCscIndex.open(tmp_path / "toy")
    (index.path / "terms.json").unlink()
    with pytest.raises(IndexLoadError, match=r"terms\.json"):
        ImpactCscIndex.open(tmp_path / "toy")


def _docs_then_fail(docs):
    yield from docs
    raise RuntimeError("crash while encoding")


def test_rebuild_is_atomic_and_bad_input_writes_nothing(tmp_path):
    path = tmp_path / "idx"
    ImpactCscIndex.build(TOY_DOCS[:2], path, encoder=TOY, scale=1, progress=False)
    before = {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    with pytest.raises(RuntimeError, match="crash"):
        ImpactCscIndex.build(_docs_then_fail(TOY_DOCS), path, encoder=TOY, scale=1, progress=False)
    with pytest.raises(InputError, match="empty"):
        ImpactCscIndex.build([], path, encoder=TOY, scale=1, progress=False)
    with pytest.raises(InputError, match="duplicate"):
        ImpactCscIndex.build([*TOY_DOCS, Document("d1", "a:1")], path, encoder=TOY, scale=1, progress=False)
    with pytest.raises(InputError, match="scale"):
        ImpactCscIndex.build(TOY_DOCS, path, encoder=TOY, scale=0, progress=False)
    assert {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "idx.versions"]


def test_equality_benchmark_on_the_tiny_corpus(tmp_path, capsys):
    from tests.helpers import TINY
    from twostage_search.benchmarks.studies.impact_equality import main

    assert main(["--dataset", str(TINY), "--prune", "2,0", "--depth", "5", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "impact_equality-tiny-test.json").read_text())
    assert report["queries"] == 6 and set(report["levels"]) == {"top2", "all"}
    for row in report["levels"].values():
        assert row["same_index_terms"] and row["identical_search_impacts"] == row["identical_retrieve"] == 6
    assert "identical ids and scores 6/6" in capsys.readouterr().out
