"""Cost models, depth policies, deadlines and the result cache, on hand-checkable doubles."""

import time

import pytest

from twostage_search.engine.cache import ResultCache
from twostage_search.engine.cost import StageCost
from twostage_search.engine.costmodel import CostModel, LinearCost, Observation
from twostage_search.engine.errors import InputError
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.policy import AdaptiveDepth, Budget, BudgetDepth, FixedDepth, first_stage_features
from twostage_search.engine.types import Candidate, Query, RankedList


def linear(a: float, b: float) -> LinearCost:
    return LinearCost.fit([Observation(k, a + b * k) for k in (5, 10, 20, 50)])


class ScoresRetriever:
    def __init__(self, scores):
        self.scores = scores

    def retrieve(self, query, k):
        return RankedList.from_candidates(query.query_id, [Candidate(d, s) for d, s in self.scores.items()], k=k)


class SlowPointwise:
    """Scores each document by its id (reversing the first stage), taking ``ms_per_doc`` per document."""

    def __init__(self, ms_per_doc: float):
        self.ms_per_doc = ms_per_doc
        self.scored = 0

    def score_candidates(self, query, candidates):
        time.sleep(self.ms_per_doc * len(candidates) / 1000)
        self.scored += len(candidates)
        cost = StageCost("rerank", self.ms_per_doc * len(candidates), docs=len(candidates))
        return [float(c.doc_id) for c in candidates], cost

    def rerank(self, query, candidates):
        scores, _ = self.score_candidates(query, candidates)
        return RankedList.from_scores(query.query_id, candidates, scores)


# ------------------------------------------------------------------------------------- cost model
def test_fit_recovers_a_plus_b_k_and_predicts():
    model = linear(12.0, 3.0)
    assert model.coef[:2] == pytest.approx([12.0, 3.0])
    assert model.predict_ms(10) == pytest.approx(42.0)
    assert model.predict_ms(0) == 0.0


def test_fit_needs_two_distinct_k():
    with pytest.raises(InputError):
        LinearCost.fit([Observation(10, 5.0), Observation(10, 6.0)])


def test_online_update_follows_a_slower_machine():
    model = linear(10.0, 2.0)
    for _ in range(300):
        for k in (5, 20, 50):
            model.update(Observation(k, 20.0 + 4.0 * k))  # twice as slow now
    assert model.predict_ms(30) == pytest.approx(20.0 + 4.0 * 30, rel=0.02)


def test_tokens_and_money():
    obs = [Observation(k, 1.0 + 0.5 * k, tokens=100 * k) for k in (5, 10, 20)]
    model = LinearCost.fit(obs, usd_per_token_in=1e-6)
    assert model.tokens_per_doc == pytest.approx(100.0)
    assert model.predict_usd(10) == pytest.approx(10 * 100 * 1e-6)


def test_cost_model_save_load_round_trip(tmp_path):
    model = CostModel({"rerank": linear(5.0, 2.0)}, {"reranker": "x"})
    model.save(tmp_path / "cm.json")
    loaded = CostModel.load(tmp_path / "cm.json")
    assert loaded.predict_ms("rerank", 7) == pytest.approx(19.0)
    assert loaded.meta == {"reranker": "x"}
    with pytest.raises(InputError, match="run 'twostage calibrate'"):
        CostModel.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------- policies
def _first(scores):
    return RankedList.from_candidates("q", [Candidate(str(i), s) for i, s in enumerate(scores)])


def test_fixed_and_budget_policies():
    first = _first([5.0, 4.0, 3.0] + [1.0] * 97)
    q = Query("q", "x")
    assert FixedDepth(20).decide(q, first, None).rerank_depth == 20
    assert FixedDepth(500).decide(q, first, None).rerank_depth == 100
    cost = CostModel({"rerank": linear(10.0, 10.0)})  # ms = 10 + 10·k
    policy = BudgetDepth(cost, ks=(0, 5, 10, 20, 50))
    assert policy.decide(q, first, Budget(ms=65)).rerank_depth == 5  # 60 ms fits, 110 does not
    assert policy.decide(q, first, Budget(ms=5)).rerank_depth == 0
    assert policy.decide(q, first, None).rerank_depth == 50
    money = CostModel({"rerank": LinearCost((0, 1, 0), tokens_per_doc=100, usd_per_token_in=1e-5)})
    assert BudgetDepth(money, ks=(5, 10, 20)).decide(q, first, Budget(usd=0.011)).rerank_depth == 10


def test_features_confident_vs_flat():
    q = Query("q", "three word query")
    sure = first_stage_features(q, _first([10.0, 2.0, 1.0, 1.0]))
    flat = first_stage_features(q, _first([5.0, 5.0, 5.0, 5.0]))
    assert sure["gap"] == pytest.approx(0.8) and flat["gap"] == 0.0
    assert flat["entropy"] == pytest.approx(1.0) and sure["entropy"] < 0.2
    assert sure["qlen"] == 3.0


def test_adaptive_reranks_uncertain_queries_deeper():
    cost = CostModel({"rerank": linear(0.0, 1.0)})  # 1 ms per document
    q = Query("q", "x y")
    flat, sure = _first([5.0, 5.0, 4.9, 4.9] + [4.0] * 96), _first([10.0, 1.0, 0.5, 0.5] + [0.1] * 96)
    feats = [first_stage_features(q, flat)] * 20 + [first_stage_features(q, sure)] * 20
    # Training signal: reranking helps flat (uncertain) rankings and never helps confident ones.
    gains = [{0: 0.0, 10: 0.10, 50: 0.20}] * 20 + [{0: 0.0, 10: 0.0, 50: 0.0}] * 20
    policy = AdaptiveDepth.fit(cost, feats, gains, ridge=1e-6, lam=0.001)
    assert policy.predicted_gains(q, flat)[50] == pytest.approx(0.20, abs=1e-3)
    assert policy.decide(q, flat, None).rerank_depth == 50
    assert policy.decide(q, sure, None).rerank_depth == 0
    assert policy.decide(q, flat, Budget(ms=20)).rerank_depth == 10  # 50 does not fit 20 ms
    # λ = 0.005 per ms: 0 → 0.0, 10 → 0.10 − 0.05 = 0.05, 50 → 0.20 − 0.25 = −0.05: 10 wins
    assert policy.with_lambda(0.005).decide(q, flat, None).rerank_depth == 10
    # λ = 0.02 per ms: 10 → 0.10 − 0.20 < 0: reranking never pays, 0 wins
    assert policy.with_lambda(0.02).decide(q, flat, None).rerank_depth == 0
    pairs = [(q, flat)] * 5 + [(q, sure)] * 5
    tuned = policy.for_mean_cost(pairs, target_ms=6.0)
    mean = sum(tuned.decide(x, f, None).predicted_ms for x, f in pairs) / len(pairs)
    assert mean <= 6.0


def test_adaptive_save_load(tmp_path):
    cost = CostModel({"rerank": linear(0.0, 1.0)})
    q = Query("q", "x")
    feats = [first_stage_features(q, _first([float(i + 2), 1.0])) for i in range(12)]
    gains = [{0: 0.0, 10: 0.01 * i} for i in range(12)]
    policy = AdaptiveDepth.fit(cost, feats, gains, lam=0.5)
    policy.save(tmp_path / "p.json")
    loaded = AdaptiveDepth.load(tmp_path / "p.json", cost)
    assert loaded.predicted_gains(q, _first([3.0, 1.0])) == pytest.approx(policy.predicted_gains(q, _first([3.0, 1.0])))
    assert loaded.lam == 0.5


# -------------------------------------------------------------------------------------- pipeline
SCORES = {str(i): float(100 - i) for i in range(40)}


def test_deadline_returns_partial_rerank_merged_with_first_stage_order_and_flags_degraded():
    reranker = SlowPointwise(ms_per_doc=5.0)
    engine = TwoStage(ScoresRetriever(SCORES), reranker, depth=40, rerank_depth=40, chunk=4)
    result = engine.run(Query("q", "x"), k=40, budget=Budget(ms=60))
    assert result.degraded
    n = result.rerank_depth
    assert 0 < n < 40 and reranker.scored == n
    ids = result.ranking.doc_ids
    assert ids[:n] == [str(i) for i in reversed(range(n))]  # the scored head, reranked
    assert ids[n:] == [str(i) for i in range(n, 40)]  # the rest in first-stage order
    assert sorted(ids, key=int) == [str(i) for i in range(40)]


def test_no_deadline_reranks_everything():
    engine = TwoStage(ScoresRetriever(SCORES), SlowPointwise(0.0), depth=40, rerank_depth=10)
    result = engine.run(Query("q", "x"), k=10)
    assert not result.degraded and result.rerank_depth == 10
    assert result.ranking.doc_ids == [str(i) for i in reversed(range(10))]


def test_budget_policy_in_the_pipeline_and_online_cost_updates():
    cost = CostModel({"rerank": linear(0.0, 1.0), "retrieve": linear(0.0, 0.0)})
    engine = TwoStage(ScoresRetriever(SCORES), SlowPointwise(0.0), depth=40, policy=BudgetDepth(cost), cost_model=cost)
    result = engine.run(Query("q", "x"), k=5, budget=Budget(ms=25))
    assert result.decision is not None and result.decision.policy == "budget"
    assert result.rerank_depth == 20  # 1 ms/doc predicted: 20 fits in 25 ms, 30 does not
    before = cost.stages["rerank"].observations
    engine.run(Query("q", "x"), k=5, budget=Budget(ms=25))
    assert cost.stages["rerank"].observations == before + 1


def test_result_cache_hits_misses_and_ttl():
    cache = ResultCache(maxsize=10, ttl_s=0.2)
    reranker = SlowPointwise(0.0)
    engine = TwoStage(ScoresRetriever(SCORES), reranker, depth=10, cache=cache, cache_key="arm-a")
    first = engine.run(Query("q1", "same query"), k=5)
    again = engine.run(Query("q2", "same query"), k=5)
    assert again.cached and [c.stage for c in again.costs] == ["cache"]
    assert again.ranking.doc_ids == first.ranking.doc_ids and again.ranking.query_id == "q2"
    assert reranker.scored == 10  # the second call cost nothing
    assert not engine.run(Query("q3", "same query"), k=3).cached  # another k is another answer
    assert cache.stats()["hits"] == 1
    time.sleep(0.25)
    assert not engine.run(Query("q4", "same query"), k=5).cached  # expired


def test_cache_rejects_bad_bounds():
    with pytest.raises(ValueError):
        ResultCache(maxsize=-1)
    with pytest.raises(ValueError):
        ResultCache(ttl_s=0)
    off = ResultCache[int](maxsize=0)  # a size of 0 turns caching off
    off.put("k", 1)
    assert off.get("k") is None and len(off) == 0
    lru = ResultCache[int](maxsize=2, ttl_s=None)  # no expiry: least recently used goes first
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)
    with pytest.raises(InputError):
        Budget(ms=0)


# --------------------------------------------------------------------------------------- cascade
def test_cascade_runs_the_second_reranker_only_on_hard_queries_top_k2():
    from twostage_search.rerankers.cascade import CascadeReranker

    class Reverse:
        def rerank(self, query, candidates):
            return RankedList.from_scores(query.query_id, candidates, [-c.score for c in candidates])

    cands = [Candidate(str(i), float(10 - i)) for i in range(6)]  # first stage: 0 > 1 > … > 5
    cascade = CascadeReranker("identity", Reverse(), k2=3, hard_margin=2.0)
    ranking, costs = cascade.rerank_with_costs(Query("q", "x"), cands)
    assert [c.stage for c in costs] == ["rerank", "rerank2"]  # margin 1.0 < 2.0: hard
    assert ranking.doc_ids == ["2", "1", "0", "3", "4", "5"]
    assert costs[1].docs == 3
    easy = [Candidate("a", 10.0), Candidate("b", 1.0)]  # margin 9.0: easy, second stage skipped
    ranking, costs = cascade.rerank_with_costs(Query("q", "x"), easy)
    assert [c.stage for c in costs] == ["rerank"] and ranking.doc_ids == ["a", "b"]
    engine = TwoStage(ScoresRetriever(SCORES), cascade, depth=6)
    assert [c.stage for c in engine.run(Query("q", "x"), k=6).costs] == ["retrieve", "rerank", "rerank2"]
