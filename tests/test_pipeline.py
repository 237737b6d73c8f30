import pytest

from engine.errors import InputError, UnknownBackendError
from engine.pipeline import TwoStage
from engine.registry import Registry, rerankers
from engine.types import Candidate, Query, RankedList
from rerankers.identity import IdentityReranker


class ListRetriever:
    """A hand-checkable first stage: fixed scores, honours k."""

    def __init__(self, scores):
        self.scores = scores
        self.calls = []

    def retrieve(self, query, k):
        self.calls.append(k)
        return RankedList.from_candidates(query.query_id, [Candidate(d, s) for d, s in self.scores.items()], k=k)


class ReverseReranker:
    def rerank(self, query, candidates):
        return RankedList.from_scores(query.query_id, candidates, [-c.score for c in candidates])


def test_two_stage_retrieves_depth_and_returns_top_k():
    first = ListRetriever({"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5})
    result = TwoStage(first, ReverseReranker(), depth=3).search(Query("q", "x"), k=2)
    assert first.calls == [3]
    assert result.doc_ids == ["c", "b"]  # reversed among the top 3, cut to 2


def test_depth_is_at_least_k_and_identity_keeps_order():
    first = ListRetriever({"a": 3.0, "b": 2.0, "c": 1.0})
    result = TwoStage(first, IdentityReranker(), depth=1).search("x", k=2)
    assert first.calls == [2]
    assert result.doc_ids == ["a", "b"]


def test_bad_k_and_depth():
    with pytest.raises(InputError):
        TwoStage(ListRetriever({}), IdentityReranker(), depth=0)
    with pytest.raises(InputError):
        TwoStage(ListRetriever({}), IdentityReranker()).search("x", k=0)
    with pytest.raises(InputError):
        TwoStage(ListRetriever({}), IdentityReranker()).search("  ", k=1)


def test_registry_lookup_and_errors():
    assert "identity" in rerankers
    assert rerankers.get("identity") is IdentityReranker
    with pytest.raises(UnknownBackendError, match=r"unknown reranker 'nope' \(known: .*identity"):
        rerankers.get("nope")
    reg: Registry[object] = Registry("thing", "engine")
    reg.register("x")(int)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(float)
