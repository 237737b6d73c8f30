"""The reranker throughput study end to end on the graded fixture (structure and counts; no timing is checked)."""

import json
from pathlib import Path

import pytest

from tests.helpers import need

need("onnxruntime", "rerank")

from twostage_search.benchmarks.studies import reranker_speed

GRADED = Path(__file__).parent / "fixtures" / "graded"


@pytest.fixture
def splits(tmp_path):
    path = tmp_path / "splits.tsv"
    path.write_text("query-id\tsplit\nq00\ttest\nq01\ttest\nq02\tdev\n")
    return path


def test_every_reranker_sees_the_same_pairs(tmp_path, splits, capsys):
    argv = [
        "--dataset",
        str(GRADED),
        "--splits-file",
        str(splits),
        "--warmup",
        "1",
        "--out",
        str(tmp_path / "reranker_speed.json"),
    ]
    assert reranker_speed.main([*argv, "--reranker", "identity", "--reranker", "onnx-cross-encoder:batch_size=4"]) == 0
    report = json.loads((tmp_path / "reranker_speed.json").read_text())
    judged = [line.split("\t")[0] for line in (GRADED / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    assert report["queries"] == 2 and report["pairs"] == judged.count("q00") + judged.count("q01")
    assert list(report["rerankers"]) == ["identity", "onnx-cross-encoder:batch_size=4"]
    assert report["rerankers"]["identity"]["throughput_vs_first"] == [1.0, 1.0, 1.0]
    assert all(r["pairs_per_s"] > 0 for r in report["rerankers"].values())
    assert "| onnx-cross-encoder:batch_size=4 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reranker", "identity", "--reranker", "identity"], "each --reranker once"),
        (["--reranker", "identity", "--split", "train"], "unknown split 'train'"),
        (["--reranker", "identity:batch_size"], "is not key=value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(splits, capsys, extra, message):
    assert reranker_speed.main(["--dataset", str(GRADED), "--splits-file", str(splits), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
