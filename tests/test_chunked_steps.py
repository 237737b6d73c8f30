"""Depth decided while a listwise reranker works: its window steps as chunks (engine/chunk_loop.py).

A deterministic fake listwise reranker orders each window by a hidden worth table (ties by doc_id), so
every expected order below is worked out by hand from the table and the step rule: the first chunk is
ordered on its own, each next step orders the current top 3 with the next 3 candidates, and what a step
pushes down stays above the rest of the earlier order.
"""

import math

import pytest

from tests.helpers import MS_PER_DOC, CorpusOrderRetriever, numbered_candidates
from twostage_search.engine.chunked import (
    RANK_FEATURES,
    ChunkedDepth,
    ChunkState,
    EnteredRule,
    LogisticStop,
    MarginRule,
    chunk_features,
    rerank_in_steps,
)
from twostage_search.engine.cost import StageCost
from twostage_search.engine.deadline import Deadline
from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.policy import Budget
from twostage_search.engine.protocols import PointwiseScorer, RerankInSteps
from twostage_search.engine.stopping import stop_model_from_dict
from twostage_search.engine.types import Query, RankedList

Q = Query("q", "x")
WORTH = {"d00": 1, "d01": 2, "d02": 3, "d03": 9, "d04": 0, "d05": 0, "d06": 0, "d07": 0, "d08": 1}
WORTH |= {"d09": 8, "d10": 8, "d11": 8}


class WindowStepper:
    """A fake listwise reranker: a step shows the top ``keep`` of the order so far with the new candidates
    and orders that window by ``worth`` (ties by doc_id); 1 ms of reported cost per new document."""

    name = "fake-listwise"

    def __init__(self, worth, keep=3, on_call=None):
        self.worth, self.keep, self.on_call = worth, keep, on_call
        self.windows = []

    def _order(self, block):
        return sorted(block, key=lambda c: (-self.worth[c.doc_id], c.doc_id))

    def rerank_step(self, query, ranked, new):
        block = [*ranked[: self.keep if ranked else 0], *new]
        self.windows.append([c.doc_id for c in block])
        if self.on_call is not None:
            self.on_call()
        return [*self._order(block), *ranked[len(block) - len(new) :]], StageCost("rerank", float(len(new)), len(new))

    def rerank(self, query, candidates):
        ordered = self._order(candidates)
        return RankedList.from_scores(query.query_id, ordered, [float(len(ordered) - i) for i in range(len(ordered))])


def policy(stop=None, **kwargs):
    settings = {"chunk": 3, "first": 3, "top": 3, **kwargs}
    return ChunkedDepth(MS_PER_DOC, stop or EnteredRule(), 1.0, **settings)


# ------------------------------------------------------------------------------------------ evidence
def test_a_listwise_step_gives_the_rank_features_only():
    # after step 2 of the worked example the order is d03 d02 d01 d00 d04 d05: minus each position
    state = ChunkState((-3.0, -2.0, -1.0, 0.0, -4.0, -5.0), tuple(float(12 - i) for i in range(12)), 3, ordinal=True)
    f = chunk_features(state, top=3)
    assert set(f) == set(RANK_FEATURES)  # no margin, 10th score, chunk mean or near misses: no scores
    assert f["entered"] == 1.0  # d03 of the last chunk (d03 d04 d05) is in the top 3 (d03 d02 d01)
    assert f["log_position"] == pytest.approx(math.log(6))
    assert f["first_ratio"] == pytest.approx(6.0 / 12.0)  # the next candidate (d06, 6) over the top (12)
    assert f["from_below"] == 1.0  # d03 sits below first-stage rank 3
    assert f["deepest"] == pytest.approx(4 / 6)


def test_which_stop_models_can_follow_a_listwise_reranker():
    assert not policy(EnteredRule()).needs_scores()
    assert policy(MarginRule(1.0)).needs_scores()
    rank_only = LogisticStop((0.0,) * 6, (0.0,) * 5, (1.0,) * 5, features=RANK_FEATURES)
    assert not policy(rank_only).needs_scores()
    assert policy(LogisticStop((0.0,) * 6, (0.0,) * 5, (1.0,) * 5)).needs_scores()  # the 5 first features
    assert stop_model_from_dict(EnteredRule().to_dict()) == EnteredRule()


# ------------------------------------------------------------------------------------------ the loop
def test_steps_go_on_while_a_step_puts_something_into_the_top():
    reranker = WindowStepper(WORTH)
    assert isinstance(reranker, RerankInSteps) and not isinstance(reranker, PointwiseScorer)
    out = rerank_in_steps(reranker, Q, numbered_candidates(12), policy(), 3)
    # step 1 orders d00 d01 d02 alone -> d02 d01 d00 (all 3 entered: go on)
    # step 2 shows d02 d01 d00 + d03 d04 d05 -> d03 d02 d01 d00 d04 d05 (d03 entered: go on)
    # step 3 shows d03 d02 d01 + d06 d07 d08 -> d03 d02 d01 d08 d06 d07, then d00 d04 d05 (nothing entered: stop)
    assert reranker.windows == [
        ["d00", "d01", "d02"],
        ["d02", "d01", "d00", "d03", "d04", "d05"],
        ["d03", "d02", "d01", "d06", "d07", "d08"],
    ]
    assert out.chunks == (3, 3, 3) and "not worth" in out.reason and not out.cut
    assert out.ranking.doc_ids == ["d03", "d02", "d01", "d08", "d06", "d07", "d00", "d04", "d05"]
    assert [h.score for h in out.ranking] == [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert out.costs[0].docs == 9 and out.costs[0].wall_ms == 9.0


def test_steps_respect_the_price_the_budget_and_the_deadline():
    # at λ = 0.4 per ms, 3 ms of next step cost 1.2 > p·gain = 1: only the first chunk
    out = rerank_in_steps(WindowStepper(WORTH), Q, numbered_candidates(12), policy().with_lambda(0.4), 3)
    assert out.chunks == (3,)
    rising = {f"d{i:02d}": i for i in range(12)}  # every step puts its candidates on top: never stops by itself
    assert rerank_in_steps(WindowStepper(rising), Q, numbered_candidates(12), policy(), 3).chunks == (3, 3, 3, 3)
    out = rerank_in_steps(WindowStepper(rising), Q, numbered_candidates(12), policy(), 3, budget=Budget(ms=7.0))
    assert out.chunks == (3, 3)  # 6 ms spent; the next step (3 ms) would pass 7 ms
    deadline = Deadline.after(3600)
    cancelling = WindowStepper(rising, on_call=deadline.cancel)
    out = rerank_in_steps(cancelling, Q, numbered_candidates(12), policy(), 3, deadline=deadline)
    assert out.chunks == (3,) and out.cut


def test_a_stop_model_that_reads_scores_is_refused_for_a_listwise_reranker(tiny_docs):
    with pytest.raises(InputError, match="reranks listwise"):
        rerank_in_steps(WindowStepper(WORTH), Q, numbered_candidates(12), policy(MarginRule(1.0)), 3)
    with pytest.raises(InputError, match="fake-listwise reranks listwise"):
        TwoStage(CorpusOrderRetriever(tiny_docs), WindowStepper(WORTH), policy=policy(MarginRule(1.0)))


def test_a_step_that_loses_a_candidate_is_an_error():
    class Lossy(WindowStepper):
        def rerank_step(self, query, ranked, new):
            order, cost = super().rerank_step(query, ranked, new)
            return order[:-1], cost

    with pytest.raises(TwoStageError, match="not return a permutation"):
        rerank_in_steps(Lossy(WORTH), Q, numbered_candidates(12), policy(), 3)


# ------------------------------------------------------------------------------------------ TwoStage


def test_two_stage_runs_a_listwise_rerankers_steps_as_chunks(tiny_docs):
    ids = [d.doc_id for d in tiny_docs]  # d01 … d12, first stage in that order
    worth = dict(zip(ids, [1, 2, 3, 9, 0, 0, 0, 0, 1, 8, 8, 8], strict=True))  # WORTH shifted by one id
    reranker = WindowStepper(worth)
    result = TwoStage(CorpusOrderRetriever(tiny_docs), reranker, depth=12, policy=policy()).run(Query("q1", "x"), k=12)
    assert result.rerank_depth == 9 and "chunks 3+3+3" in result.decision.reason
    # the 9 read lead in the steps' order, the 3 not read follow in first-stage order
    assert result.ranking.doc_ids == ["d04", "d03", "d02", "d09", "d07", "d08", "d01", "d05", "d06", *ids[9:]]
    assert result.reranked_ids == frozenset(ids[:9])
    assert result.cost("rerank").docs == 9
