"""The experiment report on small synthetic logs whose numbers are worked out by hand below.

Split log (experiment ``ab``, control ``control``, treatment ``treat``, 50/50):

==== ===== ===== ============ ================================= ======= ============
arm  query user  hits         clicks (in time order)            took ms first click
==== ===== ===== ============ ================================= ======= ============
ctl  c1    u1    d1 d2 d3     d2                                10      rank 2
ctl  c2    u1    d1 d2 d3     (an impression only)              20      –
ctl  c3    u2    (none)       –                                 30      –
ctl  c4    u3    d1 d2        d2, then d1                       40      rank 2
trt  t1    u4    d1 d2        d1                                5       rank 1
trt  t2    u4    d3 d1        d1, then d3                       15      rank 2
trt  t3    u5    d1           –                                 25      –
==== ===== ===== ============ ================================= ======= ============

control: 4 queries, 3 users, CTR 2/4, MRR (1/2 + 0 + 0 + 1/2)/4 = 1/4, abandonment 2/4, zero-result 1/4,
p50 25 ms, p95 30 + 0.85·10 = 38.5 ms (linear interpolation); treat: 3 queries, 2 users, CTR 2/3,
MRR (1 + 1/2 + 0)/3 = 1/2, abandonment 1/3, zero-result 0, p50 15, p95 15 + 0.9·10 = 24.
ΔCTR = 2/3 − 1/2 = 1/6, ΔMRR = 1/2 − 1/4 = 1/4. Costs: control 1 ms, 0 documents, 0 tokens, $0 per
query; treat 3 + 7 = 10 ms, 20 documents, 100 + 0 tokens, $0.001.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import need

need("scipy", "bench")

from scipy import stats

from twostage_search.service.experiment import parse_experiment
from twostage_search.service.report import build_report
from twostage_search.service.ubi.records import EventRecord, QueryRecord

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
AB = parse_experiment({"name": "ab", "arms": [{"name": "control", "weight": 0.5}, {"name": "treat", "weight": 0.5}]})
COST = {
    "control": ([{"stage": "retrieve", "wall_ms": 1.0, "docs": 10}], 0, 0.0),
    "treat": (
        [
            {"stage": "retrieve", "wall_ms": 3.0, "docs": 10},
            {"stage": "rerank", "wall_ms": 7.0, "docs": 20, "tokens_in": 100},
        ],
        20,
        0.001,
    ),
    "interleaved": (  # every arm's stages, named ARM/STAGE, as the service logs them
        [
            {"stage": "A/retrieve", "wall_ms": 2.0, "docs": 10},
            {"stage": "B/retrieve", "wall_ms": 1.0, "docs": 10},
            {"stage": "B/rerank", "wall_ms": 7.0, "docs": 20, "tokens_in": 50},
        ],
        20,
        0.002,
    ),
}


def query(i: int, qid: str, user: str | None, arm: str, hits: list[str], took: float, **extra) -> QueryRecord:
    costs, depth, usd = COST.get(arm, ([], 0, 0.0))
    attributes = {"experiment": "ab", "arm": arm, "took_ms": took, "costs": costs, "rerank_depth": depth, "usd": usd}
    attributes.update(extra)
    return QueryRecord(qid, "q", user, T0 + timedelta(seconds=i), f"r-{qid}", tuple(hits), attributes)


def click(qid: str, doc: str, second: int, action: str = "click") -> EventRecord:
    at = T0 + timedelta(minutes=1, seconds=second)
    return EventRecord(action, qid, "u", at, at, object_id=doc)


SPLIT_QUERIES = [
    query(0, "c1", "u1", "control", ["d1", "d2", "d3"], 10),
    query(1, "c2", "u1", "control", ["d1", "d2", "d3"], 20),
    query(2, "c3", "u2", "control", [], 30),
    query(3, "c4", "u3", "control", ["d1", "d2"], 40),
    query(4, "t1", "u4", "treat", ["d1", "d2"], 5),
    query(5, "t2", "u4", "treat", ["d3", "d1"], 15),
    query(6, "t3", "u5", "treat", ["d1"], 25),
]
SPLIT_EVENTS = [
    click("c1", "d2", 0),
    click("c2", "d1", 1, action="impression"),
    click("c4", "d1", 3),
    click("c4", "d2", 2),  # earlier: the first click
    click("t1", "d1", 4),
    click("t2", "d1", 5),
    click("t2", "d3", 6),
    click("unlogged", "d1", 7),
]


def test_split_report_numbers():
    report = build_report(SPLIT_QUERIES, SPLIT_EVENTS, experiment="ab", config=AB)
    assert (report.mode, report.control) == ("split", "control")
    c, t = report.arm("control"), report.arm("treat")
    assert (c.queries, c.users, t.queries, t.users) == (4, 3, 3, 2)
    assert (c.ctr, c.mrr, c.abandonment, c.zero_result_rate) == (0.5, 0.25, 0.5, 0.25)
    assert (t.ctr, t.mrr, t.abandonment, t.zero_result_rate) == (pytest.approx(2 / 3), 0.5, pytest.approx(1 / 3), 0.0)
    assert (c.p50_ms, c.p95_ms, t.p50_ms, t.p95_ms) == (25.0, pytest.approx(38.5), 15.0, pytest.approx(24.0))
    assert (c.mean_ms, c.mean_docs, c.mean_tokens, c.mean_usd) == (1.0, 0.0, 0.0, 0.0)
    assert (t.mean_ms, t.mean_docs, t.mean_tokens, t.mean_usd) == (10.0, 20.0, 100.0, pytest.approx(0.001))
    diffs = {d.metric: d for d in report.differences}
    assert diffs["ctr"].delta == pytest.approx(1 / 6) and diffs["mrr"].delta == pytest.approx(0.25)
    for d in diffs.values():
        assert d.arm == "treat" and d.low <= d.delta <= d.high and 0 < d.p_value <= 1
        assert d.p_holm == d.p_value  # one arm against the control: Holm changes nothing
    assert report.srm_counts == {"control": 3, "treat": 2}
    # chi-square of 3 vs 2 users against 2.5/2.5: (0.25 + 0.25) / 2.5 = 0.2, 1 dof: p = erfc(sqrt(0.1))
    assert report.srm_p == pytest.approx(math.erfc(math.sqrt(0.1)))
    assert report.progress and {p.arm for p in report.progress} == {"treat"}
    assert report.progress[-1].queries == 7 and report.progress[-1].value == pytest.approx(1 / 6)
    # The plot's last point is the table's interval (same resamples), not a second estimate of it.
    assert (report.progress[-1].low, report.progress[-1].high) == (diffs["ctr"].low, diffs["ctr"].high)


def test_holm_across_arms_and_a_clear_difference():
    config = parse_experiment(
        {"name": "ab", "arms": [{"name": n, "weight": 1 / 3} for n in ("control", "same", "better")]}
    )
    queries, events = [], []
    for i in range(300):  # 100 users per arm, one query each; control and same: 20% click, better: 60%
        arm = ("control", "same", "better")[i % 3]
        queries.append(query(i, f"q{i}", f"u{i}", arm, ["d1"], 10))
        if (i // 3) % 5 < (3 if arm == "better" else 1):
            events.append(click(f"q{i}", "d1", i))
    report = build_report(queries, events, experiment="ab", config=config)
    assert report.arm("control").ctr == 0.2 and report.arm("same").ctr == 0.2 and report.arm("better").ctr == 0.6
    ctr = {d.arm: d for d in report.differences if d.metric == "ctr"}
    assert ctr["same"].delta == pytest.approx(0.0) and ctr["same"].p_holm > 0.5
    assert ctr["better"].delta == pytest.approx(0.4) and ctr["better"].p_holm < 0.01
    assert ctr["better"].low > 0.25 and ctr["better"].high < 0.55
    # Holm: the smaller raw p-value is doubled, the larger kept (and never below the first)
    ps = sorted((d.p_value, d.arm) for d in ctr.values())
    assert ctr[ps[0][1]].p_holm == pytest.approx(min(1.0, 2 * ps[0][0]))
    assert ctr[ps[1][1]].p_holm == pytest.approx(max(ps[1][0], ctr[ps[0][1]].p_holm))


def test_srm_flags_a_60_40_split_of_a_50_50_experiment():
    queries = [query(i, f"q{i}", f"u{i}", "control" if i < 600 else "treat", ["d1"], 1) for i in range(1000)]
    report = build_report(queries, [], experiment="ab", config=AB)
    assert report.srm_counts == {"control": 600, "treat": 400}
    # (600 − 500)² / 500 + (400 − 500)² / 500 = 40 on 1 degree of freedom: p = erfc(sqrt(20)) ≈ 2.5e-10
    assert report.srm_p == pytest.approx(math.erfc(math.sqrt(20)))
    assert report.srm_p < 0.001
    off = build_report(queries[100:900], [], experiment="ab", config=AB)  # 500 / 300: also off
    assert off.srm_p < 0.001
    balanced = [query(i, f"q{i}", f"u{i}", ("control", "treat")[i % 2], ["d1"], 1) for i in range(1000)]
    assert build_report(balanced, [], experiment="ab", config=AB).srm_p == pytest.approx(1.0)


def test_without_a_config_the_arms_come_from_the_log_and_srm_is_skipped():
    report = build_report(SPLIT_QUERIES, SPLIT_EVENTS, experiment="ab")
    assert [a.arm for a in report.arms] == ["control", "treat"] and report.srm_p is None


# ------------------------------------------------------------------------------------ interleaving
AI = parse_experiment(
    {"name": "ab", "mode": "interleave", "arms": [{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5}]}
)
ABAB, BABA = ["A", "B", "A", "B"], ["B", "A", "B", "A"]
HITS = ["d1", "d2", "d3", "d4"]
# query: teams, clicks → credit A:B → B against A
INTERLEAVED = {
    "i1": (ABAB, ["d2"]),  # 0:1 → B wins
    "i2": (BABA, ["d1", "d2"]),  # 1:1 → tie
    "i3": (ABAB, ["d1", "d3"]),  # 2:0 → B loses
    "i4": (ABAB, ["d2", "d4"]),  # 0:2 → B wins
    "i5": (ABAB, []),  # no click: not counted
    "i6": (BABA, ["d1"]),  # 0:1 → B wins
}
ARM_COSTS = {
    "A": {"wall_ms": 2.0, "docs": 0, "tokens": 0, "usd": 0.0},
    "B": {"wall_ms": 8.0, "docs": 20, "tokens": 50, "usd": 0.002},
}


def interleaved_log() -> tuple[list[QueryRecord], list[EventRecord]]:
    queries, events = [], []
    for i, (qid, (teams, clicks)) in enumerate(INTERLEAVED.items()):
        queries.append(
            query(
                i,
                qid,
                f"u{i}",
                "interleaved",
                HITS,
                10,
                mode="interleave",
                arms=["A", "B"],
                teams=teams,
                arm_costs=ARM_COSTS,
            )
        )
        events += [click(qid, d, 10 * i + j) for j, d in enumerate(clicks)]
    return queries, events


def test_interleaving_wins_sign_test_and_costs():
    queries, events = interleaved_log()
    report = build_report(queries, events, experiment="ab", config=AI)
    assert report.mode == "interleave" and report.control == "A" and report.srm_p is None
    (pair,) = report.pairs
    assert (pair.arm, pair.other, pair.wins, pair.ties, pair.losses) == ("B", "A", 3, 1, 1)
    assert pair.win_rate == 0.75
    # two-sided exact binomial test of 3 wins in 4: 2 · (C(4,3) + C(4,4)) / 2⁴ = 10/16
    assert pair.p_value == pytest.approx(10 / 16) and pair.p_holm == pytest.approx(10 / 16)
    # Clopper-Pearson: the 2.5% quantile of Beta(3, 2) and the 97.5% quantile of Beta(4, 1)
    assert pair.low == pytest.approx(stats.beta.ppf(0.025, 3, 2)) and pair.high == pytest.approx(
        stats.beta.ppf(0.975, 4, 1)
    )
    served, a, b = report.arm("interleaved"), report.arm("A"), report.arm("B")
    assert served.queries == a.queries == b.queries == 6
    assert served.ctr == pytest.approx(5 / 6) and served.abandonment == pytest.approx(1 / 6)
    # the served list's first click: i1 rank 2, i2 1, i3 1, i4 2, i5 none, i6 1 → (1/2 + 1 + 1 + 1/2 + 0 + 1) / 6
    assert served.mrr == pytest.approx(4 / 6)
    assert (served.mean_ms, served.mean_docs, served.mean_tokens, served.mean_usd) == (10.0, 20.0, 50.0, 0.002)
    # clicks on the arm's own documents: A got some in i2, i3 (2/6); B in i1, i2, i4, i6 (4/6)
    assert a.ctr == pytest.approx(2 / 6) and b.ctr == pytest.approx(4 / 6)
    # MRR on own documents: A: i2 d2 (rank 2), i3 d1 (1) → (1/2 + 1)/6; B: i1 1/2, i2 1, i4 1/2, i6 1 → 3/6
    assert a.mrr == pytest.approx(1.5 / 6) and b.mrr == pytest.approx(3 / 6)
    assert (a.mean_ms, b.mean_ms, b.mean_docs, b.mean_tokens, b.mean_usd) == (
        2.0,
        8.0,
        20.0,
        50.0,
        pytest.approx(0.002),
    )
    assert report.progress[-1].metric == "win_rate" and report.progress[-1].value == 0.75


def test_multileaving_reports_every_pair_against_the_control_first():
    config = parse_experiment(
        {"name": "m", "mode": "interleave", "arms": [{"name": n, "weight": 0.3} for n in ("A", "B", "C")]}
    )
    q = query(
        0,
        "m1",
        "u1",
        "interleaved",
        ["d1", "d2", "d3"],
        10,
        mode="interleave",
        arms=["A", "B", "C"],
        teams=["A", "B", "C"],
    )
    report = build_report([q], [click("m1", "d2", 0), click("m1", "d3", 1)], experiment="m", config=config)
    pairs = {(p.arm, p.other): (p.wins, p.ties, p.losses) for p in report.pairs}
    # credit A 0, B 1, C 1: B beats A, C beats A, B ties C
    assert pairs == {("B", "A"): (1, 0, 0), ("C", "A"): (1, 0, 0), ("B", "C"): (0, 1, 0)}
    tested = [p for p in report.pairs if p.other == "A"]
    assert all(p.p_value == 1.0 and p.p_holm == 1.0 for p in tested)  # one win of one: p = 1
    assert next(p for p in report.pairs if p.other == "C").p_value is None


def test_statistics_edge_cases():
    from twostage_search.engine.stats import bootstrap_ratio_diff, sign_test, srm_test

    assert sign_test(0, 0) is None
    assert sign_test(5, 0).p_value == pytest.approx(2 / 32)  # 2 · (1/2)⁵
    with pytest.raises(ValueError):
        srm_test([10], [1.0])
    assert srm_test([0, 0], [0.5, 0.5]) == 1.0
    with pytest.raises(ValueError):
        bootstrap_ratio_diff(([], []), ([1.0], [1.0]))
    same = bootstrap_ratio_diff(([1.0, 0.0], [1.0, 1.0]), ([1.0, 0.0], [1.0, 1.0]))
    assert same.delta == 0.0 and same.low <= 0.0 <= same.high and same.p_value > 0.5
