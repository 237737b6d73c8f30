"""Simulated users (benchmarks.click_models, benchmarks.online_power) and the online_sim command end to end.

Hand examples: cascade clicks counted from the generator's own draws, the navigational model's stop
probabilities, exact CTR/MRR of a list, the 0-4 grade mapping, team-draft merges of two short lists, and
power on synthetic arms whose answer follows from the normal approximation (A/B) or is certain
(interleaving). One small end-to-end run on the graded fixture goes through `twostage serve`.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from tests.helpers import FIXTURES, need

need("scipy", "bench")

from twostage_search.benchmarks.click_models import (
    CLICK_MODELS,
    CascadeModel,
    expected_ctr_rr,
    map_grades,
)
from twostage_search.benchmarks.online_power import (
    Grid,
    credit,
    impressions_needed,
    interleavings,
    pair_lists,
    reciprocal_ranks,
    simulate_pair,
)
from twostage_search.benchmarks.studies import online_sim
from twostage_search.engine.interleave import clicks_per_team, team_draft
from twostage_search.engine.stats import two_proportion_z, welch_t

PERFECT, NAV, INFO = (CLICK_MODELS[m] for m in ("perfect", "navigational", "informational"))


def test_the_three_models_hold_the_standard_probabilities():
    assert PERFECT.click == (0.0, 0.2, 0.4, 0.8, 1.0) and set(PERFECT.stop) == {0.0}
    assert NAV.click == (0.05, 0.3, 0.5, 0.7, 0.95) and NAV.stop == (0.2, 0.3, 0.5, 0.7, 0.9)
    assert INFO.click == (0.4, 0.6, 0.7, 0.8, 0.9) and INFO.stop == (0.1, 0.2, 0.3, 0.4, 0.5)
    with pytest.raises(ValueError):
        CascadeModel("bad", (0.1,) * 4, (0.0,) * 5)


def test_perfect_user_clicks_every_grade_4_and_no_grade_0():
    grades = np.array([[4, 0, 4, 0, 4], [0, 0, 0, 0, 4], [0, 0, 0, 0, 0]])
    clicks = PERFECT.clicks(grades, np.random.default_rng(7))
    assert clicks.tolist() == (grades == 4).tolist()  # 3 + 1 + 0 clicks: stop 0, so all of them
    assert clicks.sum() == 4


def test_clicks_follow_the_generators_draws():
    # two uniforms per position (click, stop), row-major: position 0 uses u[0], u[1]; position 1 u[2], u[3]
    u = np.random.default_rng(3).random(4)
    clicks = PERFECT.clicks(np.array([[3, 1]]), np.random.default_rng(3))
    assert clicks.tolist() == [[bool(u[0] < 0.8), bool(u[2] < 0.2)]]


def test_a_user_who_always_stops_clicks_once():
    model = CascadeModel("stopper", (1.0,) * 5, (1.0,) * 5)
    clicks = model.clicks(np.full((5, 4), 2), np.random.default_rng(0))
    assert clicks.tolist() == [[True, False, False, False]] * 5


def test_navigational_stop_probabilities():
    rng = np.random.default_rng(11)
    n = 20_000
    both_4 = NAV.clicks(np.full((n, 2), 4), rng).all(axis=1).mean()
    both_2_then_4 = NAV.clicks(np.tile([2, 4], (n, 1)), rng).all(axis=1).mean()
    # click, read on (1 - stop), click: 0.95 * 0.1 * 0.95 and 0.5 * 0.5 * 0.95 (standard errors about 0.002, 0.003)
    assert abs(both_4 - 0.09025) < 0.01
    assert abs(both_2_then_4 - 0.2375) < 0.015


def test_expected_ctr_and_mrr_by_hand():
    # perfect on grades 0, 2, 4: no click needs (1)(0.6)(0) = 0; first click at 2 w.p. 0.4, else at 3 w.p. 0.6
    ctr, mrr = expected_ctr_rr(PERFECT, [0, 2, 4])
    assert ctr == pytest.approx(1.0) and mrr == pytest.approx(0.4 / 2 + 0.6 / 3)
    ctr, mrr = expected_ctr_rr(NAV, [4, 4])
    assert ctr == pytest.approx(1 - 0.05**2) and mrr == pytest.approx(0.95 + 0.05 * 0.95 / 2)


def test_grades_map_onto_0_to_4():
    assert map_grades({"q": {"a": 0, "b": 1, "c": 2, "d": 3}}) == {"q": {"a": 0, "b": 1, "c": 3, "d": 4}}
    assert map_grades({"q": {"a": 1, "b": 2, "c": 3, "d": 4}}) == {"q": {"a": 0, "b": 1, "c": 3, "d": 4}}
    assert map_grades({"q": {"a": 0, "b": 1}}) == {"q": {"a": 0, "b": 4}}
    assert map_grades({"q": {"a": 2}}, scale=(0, 4)) == {"q": {"a": 2}}
    with pytest.raises(ValueError):
        map_grades({"q": {"a": 2, "b": 2}})


def test_every_team_draft_merge_of_two_short_lists():
    merges = interleavings(["a1", "a2"], ["b1", "b2"], 2)
    assert merges == [(("a1", "b1"), (0, 1)), (("b1", "a1"), (1, 0))]
    shared = interleavings(["x", "y"], ["x", "z"], 2)  # x goes to whoever picks first; the other adds its next
    assert shared == [(("x", "z"), (0, 1)), (("x", "y"), (1, 0))]


def test_credit_matches_the_engines_click_credit():
    rng = random.Random(5)
    a, b = [f"d{i}" for i in range(8)], [f"d{i}" for i in (5, 1, 7, 0, 2, 3, 6, 4)]
    for _ in range(50):
        merged = team_draft([a, b], 6, rng)
        clicked = [rng.random() < 0.4 for _ in merged.doc_ids]
        got = credit(np.array([clicked]), np.array([merged.teams]))
        docs = [d for d, c in zip(merged.doc_ids, clicked, strict=True) if c]
        assert [int(got[0][0]), int(got[1][0])] == clicks_per_team(merged, docs, 2)


def test_reciprocal_rank_of_the_first_click():
    clicks = np.array([[False, True, True], [False, False, False], [True, False, False]])
    assert reciprocal_ranks(clicks).tolist() == [0.5, 0.0, 1.0]


def test_two_proportion_z_and_welch_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    z, p = two_proportion_z(30, 100, 45, 100)
    chi2 = stats.chi2_contingency([[30, 70], [45, 55]], correction=False)
    assert z > 0 and p == pytest.approx(chi2.pvalue) and z**2 == pytest.approx(chi2.statistic)
    x, y = np.array([0.0, 1.0, 0.5, 0.25, 1.0]), np.array([1.0, 1.0, 0.5, 1.0, 0.33, 1.0])
    t, p = welch_t(x.mean(), x.var(ddof=1), len(x), y.mean(), y.var(ddof=1), len(y))
    ref = stats.ttest_ind(y, x, equal_var=False)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)


def test_impressions_needed_is_the_first_size_with_enough_power():
    assert impressions_needed([0.1, 0.79, 0.8, 0.95], [50, 100, 200, 400], 0.8) == 200
    assert impressions_needed([0.1, 0.5], [50, 100], 0.8) is None


def _normal_power(p_a: float, p_b: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-proportion test with n/2 users per arm (normal approximation)."""
    z_alpha = 1.959963984540054  # the 97.5th percentile of the standard normal
    se = math.sqrt((p_a * (1 - p_a) + p_b * (1 - p_b)) / (n / 2))
    return 0.5 * math.erfc(-((abs(p_b - p_a) / se - z_alpha) / math.sqrt(2)))


def test_ab_power_matches_the_normal_approximation():
    # one result per list: grade 1 (click 0.2) against grade 2 (click 0.4) for the perfect user
    lists = pair_lists([["x"]], [["y"]], [{"x": 1, "y": 2}], 1)
    sizes = (100, 200, 400)
    expected = [_normal_power(0.2, 0.4, n) for n in sizes]  # about 0.61, 0.89, 0.99
    assert expected[0] < 0.7 and expected[1] > 0.85
    ctr = simulate_pair(lists, PERFECT, Grid(sizes=sizes, runs=200), sign=1)[0]
    assert ctr.method == "A/B CTR"
    assert ctr.needed == impressions_needed(expected, sizes, 0.8) == 200
    assert ctr.effect == pytest.approx(0.2, abs=0.03) and ctr.significant_wrong == 0


def test_interleaving_power_when_b_always_wins_and_when_the_arms_are_equal():
    # B ranks the only relevant document first; the perfect user clicks it wherever the merge puts it
    lists = pair_lists([["x", "y"]], [["y", "x"]], [{"y": 4}], 2)
    _, _, tdi = simulate_pair(lists, PERFECT, Grid(sizes=(50, 100), runs=20), sign=1)
    assert tdi.needed == 50 and tdi.power == [1.0, 1.0] and tdi.effect == 0.5
    # the same list twice: the coin decides which team places the clicked top document, so a win is as
    # likely as a loss and only about 5% of the runs are significant (false positives), in either direction
    same = pair_lists([["x", "y"]], [["x", "y"]], [{"x": 4, "y": 2}], 2)
    ab_ctr, _, tdi = simulate_pair(same, INFO, Grid(sizes=(50, 100), runs=50), sign=1)
    assert tdi.needed is None and tdi.significant_right + tdi.significant_wrong <= 0.2
    assert ab_ctr.needed is None and ab_ctr.significant_right + ab_ctr.significant_wrong <= 0.2


@pytest.mark.slow
def test_end_to_end_on_the_graded_fixture(tmp_path, monkeypatch):
    need("fastapi", "service")
    need("uvicorn", "service")
    need("pyserini", "lucene")
    need("onnxruntime", "rerank")
    from tests.service_helpers import write_experiment
    from twostage_search.cli import main

    graded = FIXTURES / "graded"
    index = tmp_path / "bm25"
    argv = ["index", str(graded / "corpus.jsonl"), "--index", str(index), "--backend", "lucene-bm25", "--no-progress"]
    assert main(argv) == 0
    arms = [
        {"name": "first", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 10},
        {"name": "ce", "weight": 0.5, "reranker": {"name": "onnx-cross-encoder"}, "depth": 10, "rerank_depth": 10},
    ]
    exp = write_experiment(tmp_path / "exp.yaml", "sim", arms)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--dataset", str(graded), "--index", str(index), "--experiment", str(exp), "--pairs", "first:ce"]
    args += ["--k", "3", "--fetch-k", "3", "--runs", "5", "--sizes", "20", "40"]
    args += ["--out", str(out), "--cache", str(cache)]
    assert online_sim.main(args) == 0
    report = json.loads((out / "online_sim.json").read_text())
    assert report["queries"] == 10
    assert [r["model"] for r in report["rows"]] == ["perfect", "navigational", "informational"]
    assert "| first → ce | perfect |" in (out / "online_sim.md").read_text()

    cached = json.loads(next(cache.glob("*.json")).read_text())
    assert set(cached) == {"first", "ce"}
    qrels = {}
    for line in (graded / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g) - 1  # gains on 0-3
    for arm in ("first", "ce"):
        rankings = cached[arm]["rankings"]
        assert len(rankings) == 10 and all(1 <= len(r) <= 3 for r in rankings.values())  # BM25 may match fewer

        def ndcg(q: str, ranking: list[str]) -> float:
            dcg = sum(qrels[q].get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking))
            ideal = sorted(qrels[q].values(), reverse=True)
            return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))

        by_hand = sum(ndcg(q, r) for q, r in rankings.items()) / 10
        assert report["rows"][0][f"ndcg10_{'a' if arm == 'first' else 'b'}"] == pytest.approx(by_hand, abs=1e-4)

    # a second run reads every ranking from the cache: no server is started, and the table is the same
    def no_server(*a, **k):
        raise AssertionError("the service was started although every ranking is cached")

    monkeypatch.setattr(online_sim, "Service", no_server)
    first_table = (out / "online_sim.md").read_text()
    assert online_sim.main(args) == 0
    assert (out / "online_sim.md").read_text() == first_table
