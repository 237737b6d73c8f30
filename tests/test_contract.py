"""One contract every registered retriever (index backend) and reranker passes (cf. PyTerrier's
``TransformerTestCase``): output is sorted with contiguous ranks, a reranker's output is a permutation
of its input ids, calls are deterministic, and empty input and k > n are handled."""

import pytest

from twostage_search.engine.protocols import Reranker, Retriever
from twostage_search.engine.registry import index_backends, rerankers
from twostage_search.engine.types import Candidate, Query, RankedList

QUERY = Query("q1", "what is the capital of france")


def _assert_valid(ranking: RankedList, query_id: str) -> None:
    assert isinstance(ranking, RankedList)
    assert ranking.query_id == query_id
    assert [h.rank for h in ranking] == list(range(1, len(ranking) + 1))
    keys = [(-h.score, h.doc_id) for h in ranking]
    assert keys == sorted(keys)


# ------------------------------------------------------------------------------------ retrievers
@pytest.fixture(params=index_backends.names())
def retriever(request, built_indexes, encoder) -> Retriever:
    if request.param == "opensearch":
        return request.getfixturevalue("os_index").retriever(encoder)
    if request.param == "opensearch-knn":
        return request.getfixturevalue("knn_index").retriever(encoder)
    if request.param not in built_indexes:
        pytest.skip(f"index backend {request.param!r}: its optional dependencies are not installed")
    return built_indexes[request.param].retriever(encoder)


def test_retriever_protocol(retriever):
    assert isinstance(retriever, Retriever)


def test_retriever_sorted_and_subset_of_corpus(retriever, tiny_docs):
    ranking = retriever.retrieve(QUERY, k=5)
    _assert_valid(ranking, "q1")
    assert 0 < len(ranking) <= 5  # a lexical retriever (BM25) returns only documents sharing a query term
    assert len(retriever.retrieve(QUERY, k=2)) == 2
    assert set(ranking.doc_ids) <= {d.doc_id for d in tiny_docs}


def test_retriever_deterministic(retriever):
    assert retriever.retrieve(QUERY, k=7) == retriever.retrieve(QUERY, k=7)


def test_retriever_k_larger_than_collection(retriever, tiny_docs):
    ranking = retriever.retrieve(QUERY, k=1000)
    _assert_valid(ranking, "q1")
    assert 0 < len(ranking) <= len(tiny_docs)


def test_retriever_prefix_property(retriever):
    assert retriever.retrieve(QUERY, k=3).doc_ids == retriever.retrieve(QUERY, k=10).doc_ids[:3]


def test_retriever_k_zero_and_no_matching_terms(retriever):
    assert len(retriever.retrieve(QUERY, k=0)) == 0
    ranking = retriever.retrieve(Query("q9", "zzzzqqqq"), k=5)  # may match sub-word pieces; must stay valid
    _assert_valid(ranking, "q9")


# ------------------------------------------------------------------------------------- rerankers
# Rerankers whose default model is not available offline get an offline one here.
OFFLINE_PARAMS = {"cross-encoder": {"model": "bundled:ce-minilm-l6-scifact"}}


@pytest.fixture(params=rerankers.names())
def reranker(request) -> Reranker:
    return rerankers.get(request.param)(**OFFLINE_PARAMS.get(request.param, {}))


@pytest.fixture
def candidates(tiny_docs) -> list[Candidate]:
    # Deliberately not sorted; scores from a pretend first stage.
    return [Candidate(d.doc_id, float((i * 7) % 5), d.text, d.title) for i, d in enumerate(tiny_docs)]


def test_reranker_protocol(reranker):
    assert isinstance(reranker, Reranker)


def test_reranker_output_is_a_sorted_permutation(reranker, candidates):
    ranking = reranker.rerank(QUERY, candidates)
    _assert_valid(ranking, "q1")
    assert sorted(ranking.doc_ids) == sorted(c.doc_id for c in candidates)
    by_id = {c.doc_id: c for c in candidates}
    assert all(h.text == by_id[h.doc_id].text for h in ranking)


def test_reranker_deterministic(reranker, candidates):
    assert reranker.rerank(QUERY, candidates) == reranker.rerank(QUERY, candidates)


def test_reranker_empty_and_single(reranker, candidates):
    assert len(reranker.rerank(QUERY, [])) == 0
    assert reranker.rerank(QUERY, candidates[:1]).doc_ids == [candidates[0].doc_id]


def test_reranker_does_not_mutate_input(reranker, candidates):
    before = list(candidates)
    reranker.rerank(QUERY, candidates)
    assert candidates == before
