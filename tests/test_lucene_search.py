"""The Lucene retrievers and the in-process impact one shared between threads: N threads get exactly the
sequential answers (pyjnius is not thread-safe; without the process-wide JNI lock query maps get mixed up).
Also query-term pruning and text-less retrieval."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from twostage_search.engine.types import Query


def _queries(tiny_queries):
    extra = ["insulin", "volcano eruption lava", "capital city of france", "protein folding", "ocean tides moon"]
    return [*tiny_queries, *(Query(f"x{i}", t) for i, t in enumerate(extra))] * 4


@pytest.mark.parametrize("backend", ["lucene-impact", "lucene-bm25", "impact-csc"])
def test_threads_get_the_sequential_answers(built_indexes, encoder, tiny_queries, backend):
    index = built_indexes[backend]
    retriever = index.retriever(encoder)
    queries = _queries(tiny_queries)
    fresh = index.retriever(encoder)  # a new searcher, first used by 8 threads at once
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda q: fresh.retrieve(q, 5), queries))
    sequential = [retriever.retrieve(q, 5) for q in queries]
    assert [(r.doc_ids, [h.score for h in r]) for r in concurrent] == [
        (r.doc_ids, [h.score for h in r]) for r in sequential
    ]
    assert any(len(r) for r in sequential)


@pytest.mark.parametrize("backend", ["lucene-impact", "lucene-bm25", "impact-csc"])
def test_texts_are_fetched_only_when_asked(built_indexes, encoder, tiny_queries, tiny_docs, backend):
    retriever = built_indexes[backend].retriever(encoder)
    by_id = {d.doc_id: d for d in tiny_docs}
    for q in tiny_queries:
        full = retriever.retrieve(q, 5)
        bare = retriever.retrieve(q, 5, texts=False)
        assert bare.doc_ids == full.doc_ids and [h.score for h in bare] == [h.score for h in full]
        assert all(h.text == "" and h.title == "" for h in bare)
        filled = retriever.with_texts(bare.head(2))
        assert [(h.text, h.title) for h in filled] == [(by_id[d].text, by_id[d].title) for d in full.doc_ids[:2]]


def test_query_pruning_searches_the_heaviest_terms(lucene_index, encoder, tiny_queries):
    pruned = lucene_index.retriever(encoder, query_top_n=2)
    full = lucene_index.retriever(encoder)
    for q in tiny_queries:
        (vector,) = full.encoder.encode_queries([q.text])  # limited to the index's terms
        heaviest = dict(zip(vector.terms[:2], vector.weights[:2], strict=True))
        expected = full.search_impacts({t: round(w * lucene_index.scale) for t, w in heaviest.items()}, 5)
        assert pruned.retrieve(q, 5).doc_ids == [d for d, _ in expected]
    with pytest.raises(Exception, match="query_top_n"):
        lucene_index.retriever(encoder, query_top_n=0)


def test_pipeline_fetches_texts_only_for_reranked_or_returned(lucene_index, encoder, tiny_queries, tiny_docs):
    from twostage_search.engine.pipeline import TwoStage
    from twostage_search.indexes.lucene_impact import LuceneImpactRetriever
    from twostage_search.rerankers.identity import IdentityReranker

    fetched = []

    class Counting(LuceneImpactRetriever):
        def with_texts(self, ranking):
            fetched.append(len(ranking))
            return super().with_texts(ranking)

    retriever = Counting(lucene_index, encoder)
    by_id = {d.doc_id: d for d in tiny_docs}
    pipeline = TwoStage(retriever, IdentityReranker(), depth=10, rerank_depth=2)
    for q in tiny_queries:
        result = pipeline.run(q, k=3)
        assert result.ranking.doc_ids == retriever.retrieve(q, 10).doc_ids[:3]
        assert all(h.text == by_id[h.doc_id].text and h.title == by_id[h.doc_id].title for h in result.ranking)
        assert result.cost("retrieve") is not None and result.cost("encode") is not None
    assert fetched == [5] * len(tiny_queries)  # rerank_depth + k of the 10 retrieved


def test_top_k_with_ties_searches_once_unless_the_cutoff_is_tied():
    from twostage_search.indexes._lucene import top_k_with_ties

    hits = [("d9", 9), ("d1", 5), ("d7", 5), ("d3", 5), ("d2", 1), ("d5", 1)]  # engine order: ties unsorted
    calls = []

    def search(n):
        calls.append(n)
        return hits[:n]

    assert top_k_with_ties(search, 1) == [("d9", 9)] and calls == [2]
    calls.clear()
    assert top_k_with_ties(search, 2) == [("d9", 9), ("d1", 5)] and calls == [3, 6]  # the tie group is read whole
    calls.clear()
    assert top_k_with_ties(search, 4) == [("d9", 9), ("d1", 5), ("d3", 5), ("d7", 5)] and calls == [5]
