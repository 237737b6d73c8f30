"""The LLM judge over logged pairs: the real bundled model (llama.cpp) through LORE, within a budget,
resuming where the last run stopped; and the budget's time limit with a stand-in judge."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.helpers import TINY
from twostage_search.engine.beir import read_corpus
from twostage_search.service.judging.llm import judge_id, judge_pairs
from twostage_search.service.judging.pairs import Pair, logged_pairs, query_key
from twostage_search.service.judging.store import JudgementStore
from twostage_search.service.ubi.records import QueryRecord
from twostage_search.service.ubi.sqlite import SQLiteLogStore

T0 = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)
CORPUS = {d.doc_id: d for d in read_corpus(TINY / "corpus.jsonl")}


def docs(ids):
    return {i: CORPUS[i] for i in ids if i in CORPUS}


@pytest.mark.slow
def test_lore_judges_logged_pairs_within_a_budget(tmp_path, llm):
    from twostage_search.rerankers.llm.lore import JudgementCache, LoreReranker

    log = SQLiteLogStore(tmp_path, synchronous="NORMAL")
    log.write(
        [
            QueryRecord("s1", "what is the capital of france", "u", T0, "r1", ("d01", "d02"), {}),
            QueryRecord("s2", "young kitten pet", "u", T0, "r2", ("d07",), {}),
            QueryRecord("s3", "What is the capital of France", "v", T0, "r3", ("d01", "missing-doc"), {}),
        ],
        [],
    )
    pairs = logged_pairs(log)
    log.close()
    assert len(pairs) == 4  # s1 and s3 are one query: d01@1, d02@2, missing-doc@2; d07@1
    judge = LoreReranker(llm, domain="science", cache=JudgementCache(0))
    store = JudgementStore(tmp_path)
    first = judge_pairs(pairs, judge, store, docs, max_pairs=2)
    assert (first.judged + first.unreadable, first.already, first.stopped_by) == (2, 0, "max_pairs")
    rest = judge_pairs(pairs, judge, store, docs)
    assert rest.already == first.judged and rest.missing == 1 and rest.left == 0 and rest.stopped_by == "done"
    stored = store.judgements()
    store.close()
    assert {(j.query_id, j.doc_id) for j in stored} <= {
        (query_key("what is the capital of france"), "d01"),
        (query_key("what is the capital of france"), "d02"),
        (query_key("young kitten pet"), "d07"),
    }
    assert len(stored) == first.judged + rest.judged >= 1
    for j in stored:
        assert j.source == "llm" and j.judge == judge_id(judge) == f"lore:{judge.prompt_id}"
        assert j.grade in (0, 1, 2, 3) and j.score is not None and 1.0 <= j.score <= 4.0


class SlowJudge:
    """A stand-in judge that takes 50 ms per query and labels everything L3 (grade 2)."""

    prompt_id = "stand-in"

    def judge(self, query, candidates):
        time.sleep(0.05)
        return [type("J", (), {"doc_id": c.doc_id, "label": 3, "expected": 3.0})() for c in candidates]


def test_time_budget_starts_no_query_after_it(tmp_path):
    pairs = [Pair("a", "qa", "d01", 1), Pair("b", "qb", "d02", 1), Pair("a", "qa", "d03", 2)]
    store = JudgementStore(tmp_path)
    run = judge_pairs(pairs, SlowJudge(), store, docs, max_seconds=0.01)  # the first query takes 50 ms
    assert (run.judged, run.left, run.stopped_by) == (2, 1, "max_seconds")  # query a: d01 and d03
    assert [(j.query_id, j.doc_id, j.grade) for j in store.judgements()] == [("a", "d01", 2), ("a", "d03", 2)]
    store.close()
