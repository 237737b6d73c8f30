"""The cascade in pair mode: ``graded`` judges every pair, only pairs whose P(grade) is uncertain go to the second
judge (the real bundled LLM through ``lore``, whose cache serves a repeated pair). Probabilities come from
hand-made ordinal models over one lexical feature (the share of query words in the title), so every expected
value is computed by hand below."""

from __future__ import annotations

import math

import pytest

from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.cascade import CascadeReranker, entropy, margin_uncertainty
from twostage_search.rerankers.ordinal import OrdinalModel

QUERY = Query("q", "red shoes")
# title_overlap (share of the query's words in the title): a 1, b 1/2, c 0.
ITEMS = [
    Candidate("a", 0.0, "", "red shoes"),
    Candidate("b", 0.0, "", "red hat"),
    Candidate("c", 0.0, "", "blender"),
]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _probs(z: float, cuts: tuple[float, float, float]) -> list[float]:
    """P(grade = k) of a cumulative-logit model: P(≤k) = σ(θ_k − z)."""
    le = [_sigmoid(t - z) for t in cuts]
    return [le[0], le[1] - le[0], le[2] - le[1], 1 - le[2]]


CUTS = (0.5, 1.5, 2.5)
# β = 4 on title_overlap (unstandardised): z = 4, 2, 0 for a, b, c.
P = {"a": _probs(4.0, CUTS), "b": _probs(2.0, CUTS), "c": _probs(0.0, CUTS)}


def _graded(beta: float, cuts: tuple[float, float, float] = CUTS):
    from twostage_search.rerankers.graded import GradedReranker

    return GradedReranker(OrdinalModel(("title_overlap",), (0.0,), (1.0,), (beta,), cuts, (1, 2, 3, 4)))


def test_uncertainty_measures_by_hand():
    assert entropy([1.0, 0.0, 0.0, 0.0]) == 0.0
    assert entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert margin_uncertainty([0.7, 0.2, 0.1, 0.0]) == pytest.approx(0.5)
    assert margin_uncertainty([0.4, 0.4, 0.1, 0.1]) == pytest.approx(1.0)


def test_pair_mode_sends_only_uncertain_pairs_to_the_second_judge():
    # Hand values: H(a) ≈ 0.65, H(b) ≈ 1.35, H(c) ≈ 1.06 nats; a threshold of 1.2 sends b only.
    h = {k: -sum(p * math.log(p) for p in v) for k, v in P.items()}
    assert h["a"] < 1.2 < h["b"] and h["c"] < 1.2
    second = _graded(0.0, (-3.0, -2.0, -1.0))  # constant: P(≤k) = σ(−3), σ(−2), σ(−1)
    cascade = CascadeReranker(_graded(4.0), second, judge_above=1.2)
    out = cascade.judge_explained(QUERY, ITEMS)
    assert out.escalated == (1,)
    assert list(out.uncertainty) == pytest.approx([h["a"], h["b"], h["c"]])
    const = _probs(0.0, (-3.0, -2.0, -1.0))
    assert list(out.judgements[1].probs) == pytest.approx(const)
    assert list(out.judgements[0].probs) == pytest.approx(P["a"])
    assert list(out.judgements[2].probs) == pytest.approx(P["c"])
    assert [c.stage for c in out.costs] == ["rerank", "rerank2"] and out.costs[1].docs == 1
    # Ranked by E[grade]: a (≈ 3.71) > b (constant ≈ 3.56) > c (≈ 1.64).
    e = {k: sum((i + 1) * p for i, p in enumerate(v)) for k, v in (("a", P["a"]), ("b", const), ("c", P["c"]))}
    assert e["a"] > e["b"] > e["c"]
    ranking, costs = cascade.rerank_with_costs(QUERY, ITEMS)
    assert ranking.doc_ids == ["a", "b", "c"] and len(costs) == 2
    # Margin: 1 − (top − second) = a 0.29, b 0.87, c 0.57; above 0.5 are b and c. Nothing above 2 nats.
    m = {k: 1 - (sorted(v)[-1] - sorted(v)[-2]) for k, v in P.items()}
    by_margin = CascadeReranker(_graded(4.0), second, judge_above=0.5, uncertainty="margin")
    assert m["a"] < 0.5 < m["c"] < m["b"]
    assert by_margin.judge_explained(QUERY, ITEMS).escalated == (1, 2)
    quiet = CascadeReranker(_graded(4.0), second, judge_above=2.0).judge_explained(QUERY, ITEMS)
    assert quiet.escalated == () and [c.stage for c in quiet.costs] == ["rerank"]


def test_pair_mode_under_a_passed_deadline_serves_the_first_judge_only():
    from twostage_search.engine.deadline import Deadline

    cascade = CascadeReranker(_graded(4.0), _graded(0.0, (-3.0, -2.0, -1.0)), judge_above=1.2)
    late = cascade.rerank_until(QUERY, ITEMS, Deadline.after(0))
    assert late.degraded and [c.stage for c in late.costs] == ["rerank"]
    assert late.ranking.doc_ids == ["a", "b", "c"]  # E[grade] from P above: 3.71 > 2.82 (b) > 1.64
    on_time = cascade.rerank_until(QUERY, ITEMS, Deadline.after(3600))
    assert not on_time.degraded and [c.stage for c in on_time.costs] == ["rerank", "rerank2"]


def test_pair_mode_needs_two_judges():
    with pytest.raises(ValueError):
        CascadeReranker("identity", "identity", judge_above=0.5)
    with pytest.raises(ValueError):
        CascadeReranker(_graded(4.0), _graded(0.0), judge_above=0.5, uncertainty="variance")


def test_pair_mode_calls_the_real_llm_once_per_uncertain_pair_and_then_its_cache(llm):
    from twostage_search.rerankers.llm.lore import JudgementCache, LoreReranker

    lore = LoreReranker(llm, cache=JudgementCache())
    cascade = CascadeReranker(_graded(4.0), lore, judge_above=1.2)
    first = cascade.judge_explained(QUERY, ITEMS)
    assert first.escalated == (1,) and (first.judged, first.cached) == (1, 0)
    assert len(lore.cache) == 1 and first.costs[1].docs == 1
    assert first.judgements[1].source != "graded" and first.judgements[1].label in (1, 2, 3, 4)
    assert first.judgements[0].source == first.judgements[2].source == "graded"
    again = cascade.judge_explained(QUERY, ITEMS)
    assert (again.judged, again.cached) == (0, 1) and again.judgements[1].cached
    assert again.judgements[1].label == first.judgements[1].label and again.costs[1].docs == 0
    # The margin rule also sends c: one new LLM call, b from the cache.
    wider = CascadeReranker(_graded(4.0), lore, judge_above=0.5, uncertainty="margin").judge_explained(QUERY, ITEMS)
    assert wider.escalated == (1, 2) and (wider.judged, wider.cached) == (1, 1) and len(lore.cache) == 2


def test_benchmark_threshold_sends_the_target_share():
    from twostage_search.benchmarks.studies.graded_cascade import threshold_for

    values = [0.1, 0.5, 0.3, 0.9]
    assert threshold_for(values, 0.5, 1.0) == 0.3  # 0.9 and 0.5 are above: 2 of 4
    assert threshold_for(values, 0.25, 1.0) == 0.5
    assert threshold_for(values, 0.0, 1.0) == 1.0  # share 0: the largest possible uncertainty, nothing above
