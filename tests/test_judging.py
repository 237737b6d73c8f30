"""Judgements: the store, exports (TREC qrels that `twostage bench` reads, Quepid CSV), agreement, COEC
from a hand-built log, the queue's order, and RBO/Jaccard — every expected value worked out by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.helpers import TINY, need
from twostage_search.cli import main
from twostage_search.engine.types import Query
from twostage_search.service.judging.clicks import click_stats, coec_judgements, position_ctr
from twostage_search.service.judging.exports import agreement, beir_queries, merge, quepid_csv, trec_qrels
from twostage_search.service.judging.overlap import jaccard, rank_moves, rbo
from twostage_search.service.judging.pairs import Pair, logged_pairs, query_key
from twostage_search.service.judging.queue import next_pair, pooled_pairs
from twostage_search.service.judging.store import Judgement, JudgementStore
from twostage_search.service.ubi.records import EventRecord, QueryRecord
from twostage_search.service.ubi.sqlite import SQLiteLogStore

T0 = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)


def J(qid, doc, grade, source="human", judge="ann", query="q text", score=None):
    return Judgement(qid, query, doc, grade, source, judge, score)


# ------------------------------------------------------------------------------------------ overlap
def test_rbo_and_jaccard_by_hand():
    # X1 = 0, X2 = 2, X3 = 2: (0.1/0.9)·(0 + 2/2·0.81 + 2/3·0.729) + 2/3·0.729 = 0.144 + 0.486
    assert rbo(["a", "b", "c"], ["b", "a", "d"]) == pytest.approx(0.63, abs=1e-12)
    assert rbo(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0, abs=1e-12)
    assert rbo(["a", "b"], ["c", "d"]) == 0.0
    # uneven: s = 1, l = 2, X1 = 1, X2 = 1 (the short list's a is in the long list's top 2):
    # (0.1/0.9)·(0.9 + 1/2·0.81 + 1·(2-1)/(1·2)·0.81) + ((1-1)/2 + 1/1)·0.81 = 0.1 + 0.09 + 0.81 = 1.0
    assert rbo(["a"], ["a", "b"]) == pytest.approx(1.0, abs=1e-12)
    # s = 1, l = 2, short [b], long [a, b]: X1 = 0 = X_s, X2 = 1:
    # (0.1/0.9)·(0 + 1/2·0.81 + 0) + ((1-0)/2 + 0/1)·0.81 = 0.045 + 0.405
    assert rbo(["b"], ["a", "b"]) == pytest.approx(0.45, abs=1e-12)
    assert rbo([], []) == 1.0 and rbo([], ["a"]) == 0.0
    assert jaccard(["a", "b", "c"], ["b", "a", "d"]) == 0.5
    assert rank_moves(["a", "b", "c"], ["b", "a", "d"]) == [1, -1, None]


# --------------------------------------------------------------------------------- store and exports
def test_store_replaces_a_judges_grade_and_exports(tmp_path):
    store = JudgementStore(tmp_path)
    store.add([J("q1", "d1", 1), J("q1", "d1", 3), J("q1", "d2", 0, judge="bob")])
    store.add([J("q1", "d1", 0, judge="bob"), J("q1", "d1", 2, judge="cy")])  # human: ann 3, bob 0, cy 2 → 2
    store.add([J("q1", "d2", 3, "llm", "lore:x", score=3.7), J("q1", "d3", 1, "clicks", "coec", score=0.6)])
    store.add([J("q2", "d9", 2, "llm", "lore:x", query='with "quotes", commas')])
    assert {(j.judge, j.grade) for j in store.judgements(sources=["human"]) if j.doc_id == "d1"} == {
        ("ann", 3),
        ("bob", 0),
        ("cy", 2),
    }
    qrels = merge(store.judgements())
    # d1: people's median of 0, 2, 3 = 2; d2: a person (bob: 0) wins over the LLM's 3; d3: clicks only
    assert trec_qrels(qrels) == "q1 0 d1 2\nq1 0 d2 0\nq1 0 d3 1\nq2 0 d9 2\n"
    assert [q.source for q in qrels] == ["human", "human", "clicks", "llm"]
    assert trec_qrels(merge(store.judgements(sources=["llm"]), ["llm"])) == "q1 0 d2 3\nq2 0 d9 2\n"
    assert trec_qrels(merge(store.judgements(), ["llm", "human"])) == "q1 0 d1 2\nq1 0 d2 3\nq2 0 d9 2\n"
    assert quepid_csv(qrels) == (
        'query,docid,rating\nq text,d1,2\nq text,d2,0\nq text,d3,1\n"with ""quotes"", commas",d9,2\n'
    )
    assert [json.loads(line) for line in beir_queries(qrels).splitlines()] == [
        {"_id": "q1", "text": "q text"},
        {"_id": "q2", "text": 'with "quotes", commas'},
    ]
    # an even number of people: the lower middle grade (always one somebody gave)
    assert merge([J("q", "d", 1), J("q", "d", 3, judge="bob")])[0].grade == 1
    with pytest.raises(ValueError, match="grade must be"):
        J("q", "d", 4)
    store.close()


def test_exported_qrels_are_a_bench_split(tmp_path):
    """The TREC qrels export dropped into a BEIR folder is a split `twostage bench --split` reads."""
    need("ir_measures", "bench")
    from twostage_search.benchmarks.datasets import load_beir

    dataset = tmp_path / "tiny"
    (dataset / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (dataset / name).write_text((TINY / name).read_text())
    data = tmp_path / "data"
    store = JudgementStore(data)
    store.add([J("q1", "d01", 3), J("q1", "d02", 0), J("q6", "d10", 2, "llm", "lore:x")])
    store.close()
    out = dataset / "qrels" / "judged.tsv"
    assert main(["judge", "export", "--data-dir", str(data), "--format", "trec", "--out", str(out)]) == 0
    assert out.read_text() == "q1 0 d01 3\nq1 0 d02 0\nq6 0 d10 2\n"
    loaded = load_beir(dataset, "judged")
    assert loaded.qrels == {"q1": {"d01": 3, "d02": 0}, "q6": {"d10": 2}}
    assert [q.query_id for q in loaded.queries] == ["q1", "q6"]


# ------------------------------------------------------------------------------------------ agreement
def test_agreement_by_hand():
    need("sklearn", "bench")
    a = agreement([0, 1, 2, 3], [0, 1, 2, 2], ("human", "llm"))
    # p_o = 3/4; p_e = 1/4·(1/4 + 1/4 + 2/4 + 0) = 1/4 → κ = (3/4 - 1/4) / (3/4) = 2/3
    assert a.kappa == pytest.approx(2 / 3, abs=1e-12)
    # linear weights |i-j|/3: observed disagreement 1/3·1/4 = 1/12; expected 1/4·(1.25+.75+.75+1.75)/3 = 3/8
    assert a.weighted_kappa == pytest.approx(1 - (1 / 12) / (3 / 8), abs=1e-12)
    assert a.confusion == ((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 1, 0))
    assert agreement([2, 2], [2, 2]).kappa is None  # one grade throughout: κ undefined


def test_agreement_command(tmp_path, capsys):
    need("sklearn", "bench")
    store = JudgementStore(tmp_path)
    store.add([J("q", "d1", 0), J("q", "d2", 3), J("q", "d1", 0, "llm", "lore:x"), J("q", "d2", 2, "llm", "lore:x")])
    store.add([J("q", "d3", 1, "clicks", "coec")])  # overlaps no other source
    store.close()
    assert main(["judge", "agreement", "--data-dir", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["first"], r["second"], r["pairs"]) for r in rows] == [("human", "llm", 2)]
    assert rows[0]["confusion"] == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    # human 0, 3; llm 0, 2: p_o = 1/2, p_e = P(0)·P(0) = 1/2·1/2 = 1/4 → κ = (1/2 - 1/4) / (3/4) = 1/3
    assert rows[0]["kappa"] == pytest.approx(1 / 3, abs=1e-12)


# ---------------------------------------------------------------------------------------------- COEC
def _log(tmp_path) -> SQLiteLogStore:
    def q(qid, text, hits):
        return QueryRecord(qid, text, "u", T0, f"r-{qid}", tuple(hits), {})

    def e(action, qid, doc, ordinal):
        return EventRecord(action, qid, "u", T0, T0, object_id=doc, ordinal=ordinal)

    log = SQLiteLogStore(tmp_path / "ubi.sqlite3", synchronous="NORMAL")
    log.write(
        [q("s1", "tides", ["a", "b"]), q("s2", "Tides ", ["a", "b"]), q("s3", "paris", ["c", "d"])],
        [
            e("click", "s1", "b", 2),  # s1, s2: no impression events → the served hits count as shown
            e("click", "s2", "a", None),  # no ordinal: its served rank, 1
            e("impression", "s3", "c", 1),  # s3 showed only c
            e("click", "s3", "c", 1),
            e("click", "s3", "zz", 1),  # never shown: not counted as a click on a pair
        ],
    )
    return log


def test_coec_by_hand(tmp_path):
    log = _log(tmp_path)
    # position 1 shown: s1 a, s2 a, s3 c (3), clicked: s2 a, s3 c (2; zz was not shown); position 2: s1 b, s2 b / s1 b
    assert position_ctr(log) == {1: pytest.approx(2 / 3, abs=1e-12), 2: 1 / 2}
    stats = {(s.query, s.doc_id): (s.impressions, s.clicks, s.expected) for s in click_stats(log)}
    assert stats.keys() == {("tides", "a"), ("tides", "b"), ("paris", "c")}
    assert stats["tides", "a"] == (2, 1, pytest.approx(4 / 3, abs=1e-12))  # shown twice at 1: 2 · 2/3
    assert stats["tides", "b"] == (2, 1, pytest.approx(1.0, abs=1e-12))  # twice at 2: 2 · 1/2
    assert stats["paris", "c"] == (1, 1, pytest.approx(2 / 3, abs=1e-12))
    grades = {(j.query, j.doc_id): (j.grade, j.score) for j in coec_judgements(log, min_impressions=1)}
    # COEC: a 1/(4/3) = 0.75 → grade 1 (0.5 ≤ c < 1); b 1/1 = 1 → 2 (1 ≤ c < 2); c 1/(2/3) = 1.5 → 2
    assert grades == {
        ("tides", "a"): (1, pytest.approx(0.75, abs=1e-12)),
        ("tides", "b"): (2, pytest.approx(1.0, abs=1e-12)),
        ("paris", "c"): (2, pytest.approx(1.5, abs=1e-12)),
    }
    assert {j.query_id for j in coec_judgements(log, min_impressions=2)} == {query_key("tides")}
    assert query_key("Tides ") == query_key("tides") != query_key("paris")
    log.close()


def test_logged_pairs_top_ranks_first(tmp_path):
    log = _log(tmp_path)
    pairs = logged_pairs(log, depth=2)
    t, p = query_key("tides"), query_key("paris")
    expected = sorted([Pair(t, "tides", "a", 1), Pair(p, "paris", "c", 1)], key=lambda x: x.query_id)
    expected += sorted([Pair(t, "tides", "b", 2), Pair(p, "paris", "d", 2)], key=lambda x: x.query_id)
    assert pairs == expected
    assert logged_pairs(log, depth=1) == expected[:2]
    log.close()


# --------------------------------------------------------------------------------------------- queue
def test_queue_order_skip_later_and_max_judges(tmp_path):
    store = JudgementStore(tmp_path)
    pairs = [Pair("q1", "one", "d1", 1), Pair("q2", "two", "d3", 1), Pair("q1", "one", "d2", 2)]
    assert next_pair(pairs, store, "ann", 2) == pairs[0]
    store.add([J("q1", "d1", 2, judge="ann", query="one")])
    assert next_pair(pairs, store, "ann", 2) == pairs[1]
    store.defer("q2", "d3", "ann", "later")
    assert next_pair(pairs, store, "ann", 2) == pairs[2]
    store.defer("q1", "d2", "ann", "skip")
    assert next_pair(pairs, store, "ann", 2) == pairs[1]  # put off: served when nothing else is left
    store.add([J("q2", "d3", 0, judge="ann", query="two")])  # grading clears the "later" mark
    assert next_pair(pairs, store, "ann", 2) is None
    store.add([J("q1", "d1", 1, judge="bob", query="one")])  # q1/d1: ann and bob → 2 people, the cap
    assert next_pair(pairs, store, "cy", 2) == pairs[1]
    assert next_pair(pairs, store, "cy", 3) == pairs[0]
    store.close()


def test_query_set_is_pooled_one_query_at_a_time(tmp_path):
    store = JudgementStore(tmp_path)
    calls: list[str] = []

    def rank(query):
        calls.append(query.query_id)
        return {"s1": [["d1", "d2"], ["d2", "d3"]], "s2": [[], []]}[query.query_id]

    queries = [Query("s1", "first"), Query("s2", "second")]
    nxt = pooled_pairs(queries, store, rank, "ann", 1, depth=5)
    assert nxt == Pair("s1", "first", "d1", 1) and calls == ["s1"]
    store.add([J("s1", "d1", 1, query="first"), J("s1", "d2", 1, query="first")])
    assert pooled_pairs(queries, store, rank, "ann", 1, depth=5) == Pair("s1", "first", "d3", 2)
    assert calls == ["s1"]  # pooled once, kept in the store
    store.add([J("s1", "d3", 0, query="first")])
    assert pooled_pairs(queries, store, rank, "ann", 1, depth=5) is None  # s2 found nothing
    assert calls == ["s1", "s2"]
    assert pooled_pairs(queries, store, rank, "ann", 1, depth=5) is None and calls == ["s1", "s2"]
    store.close()


def test_clicks_command_and_errors(tmp_path, capsys):
    _log(tmp_path).close()
    argv = ["judge", "run", "--source", "clicks", "--data-dir", str(tmp_path), "--min-impressions", "2"]
    assert main(argv) == 0
    assert "2 click judgements" in capsys.readouterr().out
    store = JudgementStore(tmp_path)
    assert [(j.query, j.doc_id, j.grade, j.judge) for j in store.judgements()] == sorted(
        [("tides", "a", 1, "coec"), ("tides", "b", 2, "coec")], key=lambda r: r[1]
    )
    store.close()
    assert main([*argv, "--thresholds", "2,1,3"]) == 2
    assert "three increasing" in capsys.readouterr().err
    assert main(["judge", "export", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no judgements at" in capsys.readouterr().err
    lore = ["judge", "run", "--source", "lore", "--data-dir", str(tmp_path)]
    assert main(lore) == 2
    assert "--index DIR or --corpus FILE" in capsys.readouterr().err
