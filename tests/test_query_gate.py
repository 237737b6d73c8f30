"""The per-query gate study's arithmetic: shares kept cheap within a loss budget, cross-fitted thresholds, signals."""

import json
import math
import shutil

import pytest

from tests.helpers import TINY, need
from twostage_search.benchmarks.evaluation import evaluate
from twostage_search.benchmarks.studies import query_gate as gate
from twostage_search.engine.errors import InputError


def test_max_share_keeps_the_highest_signals_within_the_budget():
    # n = 4: the top two cost nothing (share 0.5); admitting the third costs 0.04 / 4 = 0.01 > 0.005
    assert gate.max_share([4, 3, 2, 1], [0.0, 0.0, 0.04, 0.0], 0.005) == (0.5, 3.0)
    # a gain on one query pays for a loss on another: 0.03 − 0.03 = 0 ≤ 0 lets all three go cheap
    assert gate.max_share([3, 2, 1], [0.03, -0.03, 0.0], 0.0) == (1.0, 1.0)


def test_max_share_moves_equal_signals_together():
    # the tied pair costs 0.03 / 3 = 0.01 together: over a 0.005 budget nothing goes cheap
    share, threshold = gate.max_share([1, 1, 0], [0.0, 0.03, 0.0], 0.005)
    assert share == 0.0 and math.isinf(threshold)
    assert gate.max_share([1, 1, 0], [0.0, 0.03, 0.0], 0.01) == (1.0, 0.0)
    assert gate.in_sample([1, 1, 0], [0.0, 0.03, 0.0], 0.005) == {"share": 0.0, "threshold": None}


def test_cross_validated_thresholds_from_one_half_score_the_other():
    # a signal that separates free queries (1) from costly ones (0) exactly: whatever the split, the fitted
    # threshold is 1 or none, so the scored half never loses anything and keeps at most its free queries
    signal, loss = [1, 1, 1, 1, 0, 0, 0, 0], [0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.2]
    result = gate.cross_validated(signal, loss, 0.0, repeats=10)
    assert result["loss"] == 0.0 and result["max_loss"] == 0.0 and 0 < result["share"] <= 0.5
    # nothing is free: no threshold, every query runs the full side
    assert gate.cross_validated([1, 2, 3, 4], [0.1] * 4, 0.0, repeats=3) == {
        "share": 0.0, "loss": 0.0, "min_share": 0.0, "max_loss": 0.0
    }  # fmt: skip
    # everything is free: every query goes cheap
    assert gate.cross_validated([5] * 6, [0.0] * 6, 0.0, repeats=3)["min_share"] == 1.0


def test_bad_input():
    with pytest.raises(InputError):
        gate.max_share([1, 2], [0.0], 0.005)
    with pytest.raises(InputError):
        gate.max_share([], [], 0.005)
    with pytest.raises(InputError):
        gate.cross_validated([1], [0.0], 0.005, repeats=3)


def test_signals_come_from_the_cheap_search_alone():
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.5)]
    lexical = [("c", 7.0), ("d", 5.0)]
    hybrid = [("a", 2.0), ("c", 1.5), ("b", 1.0), ("d", 0.25)]
    found = gate.signals(lexical, dense, hybrid)
    assert found["dense_top1"] == 0.9
    assert found["dense_margin_2"] == pytest.approx(0.1)
    assert found["dense_margin_5"] == found["dense_margin_10"] == found["dense_margin_50"] == pytest.approx(0.4)
    assert found["hybrid_margin_10"] == 1.75
    assert found["overlap_bm25_dense_10"] == 0.1  # one shared document (c) of ten places
    assert gate.signals([], [], [])["dense_top1"] == 0.0 and gate.margin([], 10) == 0.0


def test_study_over_a_default_hybrid(built_indexes, tiny_queries, tiny_qrels, tmp_path):
    need("onnxruntime", "dense")
    # the tiny set dressed as SciFact, whose dev queries are the first 300 of qrels/train.tsv: all six here
    dataset = tmp_path / "scifact"
    (dataset / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        shutil.copy(TINY / name, dataset / name)
    shutil.copy(TINY / "qrels" / "test.tsv", dataset / "qrels" / "train.tsv")
    hybrid = built_indexes["hybrid"]
    argv = ["--dataset", str(dataset), "--index", str(hybrid.path), "--cache", str(tmp_path / "cache")]
    assert gate.main([*argv, "--out", str(tmp_path / "out"), "--repeats", "2"]) == 0
    report = json.loads((tmp_path / "out" / "scifact.json").read_text())
    assert report["queries"] == len(tiny_queries) and report["split"] == "dev"
    # the full side's hybrid is the index's own retriever: its nDCG@10 recomputed from that retriever
    retriever = hybrid.retriever()
    ids = [q.query_id for q in tiny_queries]
    rankings = {q.query_id: retriever.retrieve(q, 100).doc_ids for q in tiny_queries}
    want = evaluate(tiny_qrels, ids, rankings, ["nDCG@10"])["nDCG@10"]
    assert report["nDCG@10"]["full"] == pytest.approx(sum(want) / len(ids), abs=1e-4)
    assert set(report["gates"]) == set(gate.signals([], [], []))
    assert all(0 <= g["in_sample"]["share"] <= 1 for g in report["gates"].values())
    assert 0 <= report["oracle"] <= 1
    # an index that is not a BM25 + dense hybrid is refused with exit code 2
    other = ["--index", str(built_indexes["lucene-bm25"].path), "--dataset", str(dataset)]
    assert gate.main([*other, "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
