import pytest

from twostage_search.engine.errors import InputError, UnknownBackendError
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.registry import Registry, rerankers
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.identity import IdentityReranker


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


def test_rerank_depth_keeps_the_tail_in_first_stage_order_below_the_reranked_block():
    first = ListRetriever({"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0})
    engine = TwoStage(first, ReverseReranker(), depth=5, rerank_depth=3)
    result = engine.run(Query("q", "x"), k=5)
    assert result.ranking.doc_ids == ["c", "b", "a", "d", "e"]
    scores = [h.score for h in result.ranking]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 5  # monotone, no ties
    assert result.rerank_depth == 3
    assert [c.stage for c in result.costs] == ["retrieve", "rerank"]
    assert result.costs[0].docs == 5 and result.costs[1].docs == 3
    assert result.wall_ms >= 0


def test_rerank_depth_zero_is_the_first_stage_and_identity_cascade_is_a_no_op():
    scores = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0}
    first_only = TwoStage(ListRetriever(scores), ReverseReranker(), depth=4).run("x", k=4, rerank_depth=0)
    assert first_only.ranking.doc_ids == ["a", "b", "c", "d"]
    assert [c.stage for c in first_only.costs] == ["retrieve"]
    identity = TwoStage(ListRetriever(scores), IdentityReranker(), depth=4, rerank_depth=2).search("x", k=4)
    assert identity.doc_ids == ["a", "b", "c", "d"]


def test_reranker_that_reports_its_cost_is_used():
    from twostage_search.engine.cost import StageCost

    class Costed(ReverseReranker):
        def rerank_with_cost(self, query, candidates):
            return self.rerank(query, candidates), StageCost("rerank", 1.5, docs=len(candidates), tokens_in=42)

    result = TwoStage(ListRetriever({"a": 2.0, "b": 1.0}), Costed(), depth=2).run("x", k=2)
    assert result.costs[1] == StageCost("rerank", 1.5, docs=2, tokens_in=42)
    assert result.ranking.doc_ids == ["b", "a"]
