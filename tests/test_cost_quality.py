"""The cost–quality protocol on a small real slice: fit/dev on DL19, report on DL20, real cross-encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import need
from twostage_search.benchmarks.evaluation import evaluate, mean, read_run
from twostage_search.engine.beir import read_qrels

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
DL19, DL20 = SHARED / "trec-dl-2019-passage", SHARED / "trec-dl-2020-passage"


def test_dl19_to_dl20_slice(tmp_path):
    need("onnxruntime", "rerank")  # the default reranker: onnx-cross-encoder (MS MARCO, zero-shot on DL)
    from twostage_search.benchmarks.studies.cost_quality import main

    out = tmp_path / "out"
    argv = [
        "--dataset", str(DL19), "--train-split", "test", "--train-run", str(DL19 / "runs/bm25.top100.trec"),
        "--test-dataset", str(DL20), "--test-run", str(DL20 / "runs/bm25.top100.trec"),
        "--ks", "1", "2", "--dev-fraction", "0", "--fit-queries", "10", "--test-queries", "4", "--rel", "2",
        "--scores-dir", str(tmp_path / "scores"), "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "cost_quality.json").read_text())
    assert report["splits"]["fit"] == "test: 10 queries" and report["splits"]["dev"] == "test: 10 queries (= fit)"
    assert report["splits"]["test"] == "test: 4 queries" and report["reranker"]["in_domain"] is False
    # fixed k=0 is the run itself: its nDCG@10 on the 4 seeded DL20 queries, computed from the run file
    run, qrels = read_run(DL20 / "runs/bm25.top100.trec"), read_qrels(DL20 / "qrels/test.tsv")
    scored = [line.split("\t")[0] for line in (tmp_path / "scores").glob("*.tsv").__next__().read_text().splitlines()]
    test_ids = sorted(set(scored) & set(qrels))
    assert len(test_ids) == 4
    expected = mean(evaluate(qrels, test_ids, run, ["nDCG@10"], rel=2)["nDCG@10"])
    fixed0 = next(r for r in report["rows"] if r["policy"] == "fixed k=0")
    assert fixed0["nDCG@10"] == pytest.approx(expected, abs=1e-4) and fixed0["mean_k"] == 0
    [comparison] = report["comparisons"]  # k=1: the only depth strictly between 0 and max(ks)
    assert comparison["fixed_k"] == 1
    lo, hi = comparison["nDCG@10_difference"]["ci95"]
    assert lo <= comparison["nDCG@10_difference"]["delta"] <= hi
    # λ was matched on dev: the adaptive policy's mean k there does not exceed the target depth
    assert comparison["dev"]["adaptive"]["mean_k"] <= 1.0 + 1e-9
    assert (out / "cost_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
