"""Depth decided while reranking (engine/chunked.py): features, the stop rule, the loop, TwoStage, fitting."""

import math

import pytest

from tests.helpers import MS_PER_DOC, TINY, CorpusOrderRetriever, need, numbered_candidates
from twostage_search.engine.chunked import (
    ChunkedDepth,
    ChunkState,
    LogisticStop,
    MarginRule,
    chunk_features,
    fit_chunked,
    rerank_in_chunks,
    transitions,
)
from twostage_search.engine.cost import StageCost
from twostage_search.engine.deadline import Deadline
from twostage_search.engine.errors import InputError
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.policy import Budget
from twostage_search.engine.stopping import ALL_FEATURES
from twostage_search.engine.types import Query, RankedList
from twostage_search.rerankers.identity import IdentityReranker

Q = Query("q", "x")


class TableScorer:
    """A deterministic pointwise scorer: scores from a table, 1 ms of reported cost per document."""

    def __init__(self, scores, on_call=None):
        self.scores = scores
        self.calls = []
        self.on_call = on_call

    def score_candidates(self, query, candidates):
        self.calls.append([c.doc_id for c in candidates])
        if self.on_call is not None:
            self.on_call()
        return [self.scores[c.doc_id] for c in candidates], StageCost("rerank", float(len(candidates)), len(candidates))

    def rerank(self, query, candidates):
        values, _ = self.score_candidates(query, candidates)
        return RankedList.from_scores(query.query_id, candidates, values)


def policy(margin=0.5, **kwargs):
    settings = {"chunk": 3, "first": 3, "top": 3, **kwargs}
    return ChunkedDepth(MS_PER_DOC, MarginRule(margin), 1.0, **settings)


# ------------------------------------------------------------------------------------------ features
def test_features_after_a_chunk_that_changed_nothing():
    state = ChunkState((5.0, 4.0, 3.0, 1.0, 0.0, 2.0), (10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0), last=3)
    f = chunk_features(state, top=3)
    # current top 3: 5, 4, 3; the last chunk (1, 0, 2) put nothing in; its best 2 is 1 below the 3rd, 3
    assert f["entered"] == 0.0
    assert f["margin"] == -1.0
    assert f["tenth"] == 3.0
    assert f["log_position"] == pytest.approx(math.log(6))
    assert f["first_ratio"] == pytest.approx(4.0 / 10.0)  # the next candidate's first-stage score / the top


def test_more_features_read_the_top_and_the_last_chunk():
    # scored in first-stage order; top 3 = 9 (rank 3), 5 (rank 0), 4 (rank 1); the 3rd score is 4
    state = ChunkState((5.0, 4.0, 3.0, 9.0, 3.5, 0.0), (1.0,) * 8, last=3)
    f = chunk_features(state, top=3)
    assert f["from_below"] == 1.0  # d03 sits below first-stage rank 3
    assert f["deepest"] == pytest.approx(4 / 6)  # the deepest top document is the 4th of 6 read
    assert f["chunk_mean"] == pytest.approx((9.0 + 3.5 + 0.0) / 3 - 4.0)
    assert f["near"] == 1.0  # 3.5 is within 1 below the 3rd score; 0 is not, 9 entered
    assert set(f) == set(ALL_FEATURES)


def test_a_stop_model_on_more_features_saves_and_checks_its_features(tmp_path):
    names = ("entered", "from_below")
    stop = LogisticStop((0.0, 1.0, -2.0), (0.0, 0.0), (1.0, 1.0), features=names)
    # z = entered − 2·from_below
    assert stop.p_change({"entered": 2.0, "from_below": 1.0, "margin": 0.0}) == pytest.approx(0.5)
    saved = ChunkedDepth(MS_PER_DOC, stop, 0.01, lam=1e-3, chunk=10, first=20)
    saved.save(tmp_path / "p.json")
    assert ChunkedDepth.load(tmp_path / "p.json", MS_PER_DOC) == saved
    with pytest.raises(InputError, match="unknown stop-model features"):
        LogisticStop((0.0, 1.0), (0.0,), (1.0,), features=("shoe_size",))
    with pytest.raises(InputError, match="differ in length"):
        LogisticStop((0.0, 1.0), (0.0,), (1.0,), features=names)


def test_features_count_the_documents_that_entered():
    f = chunk_features(ChunkState((1.0, 2.0, 3.0, 9.0, 0.0, 2.5), (3.0,) * 6, last=3), top=3)
    assert f["entered"] == 2.0  # 9 and 2.5 are in the top 3 (9, 3, 2.5)
    assert f["margin"] == 9.0 - 2.5


def test_fewer_than_top_scored_always_continues():
    state = ChunkState((1.0, 2.0), (3.0,) * 9, last=2)
    assert math.isinf(chunk_features(state, top=3)["margin"])
    assert policy().next_chunk(state) == (3, "top not yet full")


# ------------------------------------------------------------------------------------------ the rule
def test_stops_when_a_chunk_changes_nothing_and_the_margin_is_large():
    state = ChunkState((5.0, 4.0, 3.0, 1.0, 0.0, 2.0), (1.0,) * 12, last=3)
    size, why = policy(margin=0.5).next_chunk(state)
    assert size == 0 and "not worth" in why
    assert policy(margin=1.5).next_chunk(state)[0] == 3  # margin 1 is not large enough for this rule


def test_continues_when_the_chunk_entered_the_top():
    state = ChunkState((5.0, 4.0, 3.0, 1.0, 9.0, 2.0), (1.0,) * 12, last=3)
    assert policy().next_chunk(state)[0] == 3


def test_price_of_a_millisecond_stops_even_a_promising_chunk():
    state = ChunkState((5.0, 4.0, 3.0, 1.0, 9.0, 2.0), (1.0,) * 12, last=3)
    # p = 1 and gain = 1: the next 3 documents (3 ms) are worth it while λ·3 < 1
    assert policy().with_lambda(0.3).next_chunk(state)[0] == 3
    assert policy().with_lambda(0.4).next_chunk(state)[0] == 0


def test_never_reranks_beyond_the_candidates_or_max_depth():
    state = ChunkState((5.0, 4.0, 3.0, 1.0, 9.0, 2.0), (1.0,) * 8, last=3)
    assert policy().next_chunk(state)[0] == 2  # 8 candidates, 6 scored
    assert policy(max_depth=6).next_chunk(state) == (0, "all candidates reranked")


def test_budget_left_decides_before_the_rule():
    state = ChunkState((5.0, 4.0, 3.0, 1.0, 9.0, 2.0), (1.0,) * 12, last=3, remaining=Budget(ms=2.0))
    assert policy().next_chunk(state) == (0, "next chunk does not fit the time left")


# ------------------------------------------------------------------------------------------ the loop
SCORES = {"d00": 1.0, "d01": 2.0, "d02": 3.0, "d03": 9.0, "d04": 0.0, "d05": 0.0, "d06": 0.0, "d07": 0.0}
SCORES |= {"d08": 1.0, "d09": 8.0, "d10": 8.0, "d11": 8.0}


def test_loop_scores_chunks_until_one_changes_nothing():
    scorer = TableScorer(SCORES)
    out = rerank_in_chunks(scorer, Q, numbered_candidates(12), policy(), 3)
    # chunk 1 fills the top; chunk 2 brings in d03 (9); chunk 3 (0, 0, 1) stays 1 below the 3rd (2): stop
    assert out.chunks == (3, 3, 3)
    assert scorer.calls == [["d00", "d01", "d02"], ["d03", "d04", "d05"], ["d06", "d07", "d08"]]
    assert out.ranking.doc_ids[:4] == ["d03", "d02", "d01", "d00"]
    assert len(out.ranking) == 9 and not out.cut
    assert out.costs[0].docs == 9 and out.costs[0].wall_ms == 9.0


def test_loop_stops_at_the_last_candidate():
    rising = {f"d{i:02d}": float(i) for i in range(8)}  # every chunk enters the top
    out = rerank_in_chunks(TableScorer(rising), Q, numbered_candidates(8), policy(), 3)
    assert out.chunks == (3, 3, 2) and len(out.ranking) == 8


def test_loop_respects_the_budget_and_the_deadline():
    rising = {f"d{i:02d}": float(i) for i in range(12)}
    out = rerank_in_chunks(TableScorer(rising), Q, numbered_candidates(12), policy(), 3, budget=Budget(ms=7.0))
    assert out.chunks == (3, 3)  # 3 + 3 ms spent; the third chunk (3 ms) would pass 7 ms
    deadline = Deadline.after(3600)
    scorer = TableScorer(rising, on_call=deadline.cancel)
    out = rerank_in_chunks(scorer, Q, numbered_candidates(12), policy(), 3, deadline=deadline)
    assert out.chunks == (3,) and out.cut and out.reason == "next chunk does not fit the time left"
    out = rerank_in_chunks(TableScorer(rising), Q, numbered_candidates(12), policy(), 3, deadline=Deadline(0.0))
    assert out.chunks == () and len(out.ranking) == 0 and out.costs == () and out.reason == "deadline passed"


# ------------------------------------------------------------------------------------------ TwoStage


def test_two_stage_reranks_in_chunks_on_the_tiny_corpus(tiny_docs):
    ids = [d.doc_id for d in tiny_docs]  # d01 … d12, first stage in that order
    table = dict(zip(ids, [1.0, 2.0, 3.0, 9.0, 0.0, 0.0, 0.0, 0.0, 1.0, 8.0, 8.0, 8.0], strict=True))
    scorer = TableScorer(table)
    engine = TwoStage(CorpusOrderRetriever(tiny_docs), scorer, depth=12, policy=policy())
    result = engine.run(Query("q1", "capital of france"), k=12)
    assert result.rerank_depth == 9
    assert "chunks 3+3+3" in result.decision.reason
    assert result.ranking.doc_ids == ["d04", "d03", "d02", "d01", "d09", "d05", "d06", "d07", "d08", *ids[9:]]
    assert result.reranked_ids == frozenset(ids[:9])
    assert result.cost("rerank").docs == 9
    # a request's own depth replaces the policy: one call, no chunks
    assert engine.run(Query("q1", "x"), k=5, rerank_depth=4).rerank_depth == 4
    assert scorer.calls[-1] == ids[:4]


def test_two_stage_gives_a_non_pointwise_reranker_the_first_chunk(tiny_docs):
    result = TwoStage(CorpusOrderRetriever(tiny_docs), IdentityReranker(), depth=12, policy=policy()).run("q", k=5)
    assert result.rerank_depth == 3 and result.decision.policy == "chunked"


# ------------------------------------------------------------------------------------------ fitting
def test_transitions_label_whether_the_next_chunk_changed_the_top():
    scores = [1.0, 2.0, 3.0, 9.0, 0.0, 0.0, 0.0, 0.0, 1.0, 8.0]
    steps = transitions(scores, [1.0] * 10, first=3, chunk=3, top=3)
    assert [(y, a, b) for _, y, a, b in steps] == [(True, 3, 6), (False, 6, 9), (True, 9, 10)]
    assert steps[1][0]["entered"] == 1.0  # d03 had entered with the chunk before


def test_fit_on_a_tiny_synthetic_set():
    # the next chunk changed the top exactly when the last chunk did: the model must learn `entered`
    feats, changed, gains = [], [], []
    for i in range(40):
        entered = float(i % 2)
        feats.append({"entered": entered, "margin": entered - 1.0 - (i % 5) / 10, "log_position": math.log(10 + i),
                      "tenth": 1.0, "first_ratio": 0.5})  # fmt: skip
        changed.append(bool(entered))
        gains.append(0.02 if entered else 0.0)
    fitted = fit_chunked(MS_PER_DOC, feats, changed, gains, chunk=10, first=20)
    assert fitted.gain == pytest.approx(0.02)  # the mean gain of the transitions that changed the top
    assert isinstance(fitted.stop, LogisticStop)
    assert fitted.stop.p_change(feats[1]) > 0.5 > fitted.stop.p_change(feats[0])
    assert (fitted.chunk, fitted.first) == (10, 20)
    with pytest.raises(InputError, match="both outcomes"):
        fit_chunked(MS_PER_DOC, feats, [True] * 40, gains)


def test_saved_policy_loads_back(tmp_path):
    stop = LogisticStop((0.5, 1.0, 2.0, 0.0, 0.0, -1.0), (0.0,) * 5, (1.0,) * 5)
    saved = ChunkedDepth(MS_PER_DOC, stop, 0.03, lam=1e-4, chunk=10, first=20)
    saved.save(tmp_path / "p.json")
    loaded = ChunkedDepth.load(tmp_path / "p.json", MS_PER_DOC)
    assert loaded == saved


def test_score_cache_round_trip_and_cost_models(tmp_path):
    from twostage_search.benchmarks.score_cache import ScoreCache

    cache = ScoreCache("onnx-cross-encoder", {"threads": 1}, {"q": {"d1": 0.5}}, [(10, 12.0, 0), (20, 22.0, 0)])
    cache.calls.append((50, 52.0, 0))
    cache.save(tmp_path / "s.json")
    loaded = ScoreCache.load(tmp_path / "s.json")
    assert loaded.scores == {"q": {"d1": 0.5}} and loaded.calls == cache.calls
    assert loaded.ms_per_doc == pytest.approx(86.0 / 80.0)
    calibrated = loaded.cost_model().stages["rerank"]  # 2 ms per call + 1 ms per document, exactly
    assert calibrated.coef[:2] == pytest.approx([2.0, 1.0])
    assert loaded.proportional_cost().predict_ms("rerank", 10) == pytest.approx(10.75)


def test_score_cache_scores_the_listed_queries_in_order(tmp_path, tiny_docs, tiny_queries):
    from twostage_search.benchmarks.score_cache import score_runs

    need("onnxruntime", "rerank")
    ids = [q.query_id for q in tiny_queries]
    run = tmp_path / "first.trec"
    run.write_text("".join(f"{q} Q0 {d.doc_id} {i + 1} {10 - i} t\n" for q in ids for i, d in enumerate(tiny_docs[:2])))
    order = [ids[2], ids[0]]
    cache = score_runs(TINY, [str(run)], tmp_path / "s.json", "onnx-cross-encoder", {"threads": 1}, 2, order)
    assert list(cache.scores) == order  # only the listed queries, in the listed order
    assert all(set(docs) == {tiny_docs[0].doc_id, tiny_docs[1].doc_id} for docs in cache.scores.values())
    assert [k for k, _, _ in cache.calls] == [2, 2]  # one call of 10 (cut to the 2 candidates) per query


def test_depth_sets_interleave_seeded_samples_of_dev_and_test():
    from twostage_search.benchmarks.studies.depth_sets import sample_order

    order = sample_order(["a", "b", "c", "d"], ["x", "y"], seed=13)
    again = sample_order(["a", "b", "c", "d"], ["x", "y"], seed=13)
    assert order == again and sorted(order) == ["a", "b", "c", "d", "x", "y"]
    assert {order[0], order[2]} == {"x", "y"} and set(order[1::2][:2]) <= {"a", "b", "c", "d"}
    assert set(order[4:]) <= {"a", "b", "c", "d"}  # test ran out: dev only from there


def test_score_caches_merge_and_refuse_another_reranker():
    from twostage_search.benchmarks.score_cache import ScoreCache

    a = ScoreCache("onnx-cross-encoder", {"threads": 1}, {"q1": {"d1": 0.5}}, [(10, 12.0, 0)])
    b = ScoreCache("onnx-cross-encoder", {"threads": 2}, {"q1": {"d2": 0.25}, "q2": {"d1": 1.0}}, [(20, 22.0, 0)])
    a.merge(b)  # threads change the time a score takes, not the score
    assert a.scores == {"q1": {"d1": 0.5, "d2": 0.25}, "q2": {"d1": 1.0}}
    assert a.calls == [(10, 12.0, 0), (20, 22.0, 0)]
    with pytest.raises(InputError, match="cannot merge"):
        a.merge(ScoreCache("cross-encoder", {"threads": 1}))


def test_depth_replicate_takes_the_dev_choices_from_the_report():
    from twostage_search.benchmarks.studies.depth_replicate import policies

    stop = LogisticStop((0.5, 1.0, 2.0, 0.0, 0.0, -1.0), (0.0,) * 5, (1.0,) * 5)
    saved = ChunkedDepth(MS_PER_DOC, stop, 0.03, lam=1e-4, chunk=10, first=20, meta={"ms_per_doc": 2.5})
    result = {
        "chosen": {
            "stop model": {"row": "chunked, stop model (chosen on dev)", "policy": saved.to_dict()},
            "margin rule": {"setting": "first 10, margin 4"},
        }
    }
    got = policies(result, chunk=10)
    model = got["chunked, stop model (chosen on dev)"]
    assert (model.stop, model.lam, model.first) == (stop, 1e-4, 20)
    assert model.cost.predict_ms("rerank", 4) == 10.0  # priced at the 2.5 ms per document it was fitted at
    rule = got["chunked, margin rule (first 10, margin 4, chosen on dev)"]
    assert (rule.stop, rule.first, rule.chunk, rule.lam) == (MarginRule(4.0), 10, 10, 0.0)
    result["chosen"]["margin rule"]["setting"] = "margin four"
    with pytest.raises(InputError, match="margin rule's setting"):
        policies(result, chunk=10)
