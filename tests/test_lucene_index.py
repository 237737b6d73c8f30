"""The embedded Lucene impact index against an independent brute-force dot product."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from twostage_search import indexes
from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.types import Document, Query
from twostage_search.indexes.lucene_impact import LuceneImpactIndex


def _doc_matrix(encoder, docs, scale):
    """Quantised document impacts as a scipy sparse matrix, and its vocabulary (the index's terms)."""
    doc_vecs = [v.quantize(scale) for v in encoder.encode_docs([d.full_text for d in docs])]
    vocab = sorted({t for v in doc_vecs for t in v})
    col = {t: i for i, t in enumerate(vocab)}
    rows, cols, vals = [], [], []
    for r, v in enumerate(doc_vecs):
        for t, w in v.items():
            rows.append(r)
            cols.append(col[t])
            vals.append(w)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(vocab)), dtype=np.int64), col


def _query_impacts(encoder, text, col, scale):
    """The query's ``top_n`` heaviest terms among the index's terms (``col``), quantised: all its terms are
    weighed (no pruning), those the index lacks dropped, then the heaviest kept (ties by term)."""
    side = encoder.query.with_limits(max_length=encoder.query.max_length, top_n=None)
    (full,) = side.encode([text])
    present = sorted(((w, t) for t, w in full.as_dict().items() if t in col), key=lambda wt: (-wt[0], wt[1]))
    n = encoder.query.top_n or len(present)
    return {t: round(w * scale) for w, t in present[:n] if round(w * scale) > 0}


def _brute_force(encoder, docs, queries, scale):
    """Expected rankings computed independently: scipy sparse matrix of quantised impacts."""
    matrix, col = _doc_matrix(encoder, docs, scale)
    expected = {}
    for q in queries:
        qvec = np.zeros(len(col), dtype=np.int64)
        for t, w in _query_impacts(encoder, q.text, col, scale).items():
            qvec[col[t]] = w
        scores = matrix @ qvec
        order = sorted((i for i in range(len(docs)) if scores[i] > 0), key=lambda i: (-scores[i], docs[i].doc_id))
        expected[q.query_id] = [(docs[i].doc_id, int(scores[i])) for i in order]
    return expected


def test_search_equals_brute_force_dot_product(lucene_index, lucene_retriever, encoder, tiny_docs, tiny_queries):
    expected = _brute_force(encoder, tiny_docs, tiny_queries, lucene_index.scale)
    _, col = _doc_matrix(encoder, tiny_docs, lucene_index.scale)
    for q in tiny_queries:
        impacts = _query_impacts(encoder, q.text, col, lucene_index.scale)
        got = lucene_retriever.search_impacts(impacts, k=len(tiny_docs))
        assert got == expected[q.query_id], q.text
        ranking = lucene_retriever.retrieve(q, k=len(tiny_docs))
        assert ranking.doc_ids == [d for d, _ in expected[q.query_id]]
        assert [h.score for h in ranking] == pytest.approx([s / lucene_index.scale**2 for _, s in expected[q.query_id]])


def test_query_side_projects_onto_the_index_terms_only(lucene_index, lucene_retriever, encoder, tiny_docs):
    _, col = _doc_matrix(encoder, tiny_docs, lucene_index.scale)
    assert set(lucene_retriever.encoder.query.vocabulary) == set(col)
    text = "insulin and blood glucose in diabetes"
    (vector,) = lucene_retriever.encoder.encode_queries([text])
    assert vector.quantize(lucene_index.scale) == _query_impacts(encoder, text, col, lucene_index.scale)


def test_terms_that_are_query_syntax_are_searched_as_terms(lucene_index, lucene_retriever, encoder, tiny_docs):
    """Punctuation terms (quotes, brackets, operators) match exactly the documents that hold them."""
    matrix, col = _doc_matrix(encoder, tiny_docs, lucene_index.scale)
    odd = [t for t in col if not t.replace("#", "").isalnum()]
    assert odd  # the fixture has some
    for term in [*odd, "AND", "a b", ""]:
        got = lucene_retriever.search_impacts({term: 3}, k=len(tiny_docs))
        column = matrix[:, col[term]].toarray().ravel() * 3 if term in col else np.zeros(len(tiny_docs))
        hits = [(tiny_docs[i].doc_id, int(column[i])) for i in np.flatnonzero(column)]
        want = sorted(hits, key=lambda h: (-h[1], h[0]))
        assert got == want, term


def test_relevant_doc_ranks_first(lucene_retriever, tiny_queries, tiny_qrels):
    for q in tiny_queries:
        top = lucene_retriever.retrieve(q, k=3)
        assert top[0].doc_id in tiny_qrels[q.query_id], (q.text, top.doc_ids)
        assert top[0].text and top[0].title  # the document store returns the text for rerankers


def test_ties_are_broken_by_doc_id_at_the_cutoff(tmp_path, encoder):
    # Identical texts give identical vectors, so every document ties; ids are inserted out of order.
    ids = ["e", "c", "a", "d", "b", "f"]
    docs = [Document(i, "the moon orbits the earth") for i in ids]
    index = LuceneImpactIndex.build(docs, tmp_path / "ties", encoder=encoder, progress=False, threads=2)
    retriever = index.retriever(encoder)
    query = Query("q", "moon")
    assert retriever.retrieve(query, k=10).doc_ids == sorted(ids)
    assert len({h.score for h in retriever.retrieve(query, k=10)}) == 1
    for k in (1, 2, 3, 5):
        assert retriever.retrieve(query, k=k).doc_ids == sorted(ids)[:k]


def test_meta_json(lucene_index, tiny_docs):
    meta = json.loads((lucene_index.path / "meta.json").read_text())
    assert meta["backend"] == "lucene-impact"
    assert meta["doc_count"] == meta["indexed_count"] == len(tiny_docs)
    assert meta["encoder"]["name"] == "splade"
    assert meta["encoder"]["params"]["model"] == "bundled:splade-tiny"
    assert meta["scale"] == 100.0
    assert {"encode", "index", "total"} <= set(meta["build_seconds"])
    assert not (lucene_index.path / "_vectors").exists()


def test_load_dispatches_on_meta(lucene_index, tmp_path):
    assert isinstance(indexes.load(lucene_index.path), LuceneImpactIndex)
    with pytest.raises(IndexLoadError, match="index not found"):
        indexes.load(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(IndexLoadError, match=r"no meta\.json"):
        indexes.load(tmp_path / "plain")


def _docs_then_fail(docs):
    yield from docs
    raise RuntimeError("crash while encoding")


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_rebuild_over_existing_index_is_atomic(tmp_path, encoder, tiny_docs):
    path = tmp_path / "idx"
    LuceneImpactIndex.build(tiny_docs[:4], path, encoder=encoder, progress=False)
    before = _snapshot(path)

    with pytest.raises(RuntimeError, match="crash while encoding"):
        LuceneImpactIndex.build(_docs_then_fail(tiny_docs), path, encoder=encoder, progress=False)
    assert _snapshot(path) == before  # the old index is untouched
    assert _entries(tmp_path) == ["idx", "idx.versions"]  # no temp dir left behind
    assert len(_entries(tmp_path / "idx.versions")) == 1

    with pytest.raises(InputError, match="empty"):
        LuceneImpactIndex.build([], path, encoder=encoder, progress=False)
    assert _snapshot(path) == before

    rebuilt = LuceneImpactIndex.build(tiny_docs, path, encoder=encoder, progress=False)
    assert len(rebuilt) == len(tiny_docs)
    assert rebuilt.retriever(encoder).retrieve(Query("q", "ocean tides moon"), k=1).doc_ids == ["d10"]
    assert _entries(tmp_path) == ["idx", "idx.versions"]
    # a versioned build: idx is a symlink flipped to the new version; the previous one is kept for
    # readers still on it (a serving process until its reload-index), older ones removed
    assert path.is_symlink() and len(_entries(tmp_path / "idx.versions")) == 2
    LuceneImpactIndex.build(tiny_docs[:3], path, encoder=encoder, progress=False)
    assert len(_entries(tmp_path / "idx.versions")) == 2 and (path / "meta.json").is_file()


def _entries(directory):
    return sorted(p.name for p in directory.iterdir())


def test_refuses_to_overwrite_a_directory_that_is_not_an_index(tmp_path, encoder, tiny_docs):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="twostage did not write"):
        LuceneImpactIndex.build(tiny_docs[:2], target, encoder=encoder, progress=False)
    assert (target / "thesis.tex").read_text() == "years of work"


def test_duplicate_doc_ids_are_rejected(tmp_path, encoder):
    docs = [Document("a", "one"), Document("a", "two")]
    with pytest.raises(InputError, match="duplicate"):
        LuceneImpactIndex.build(docs, tmp_path / "dup", encoder=encoder, progress=False)
    assert not (tmp_path / "dup").exists()
