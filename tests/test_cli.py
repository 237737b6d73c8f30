"""The ``twostage`` CLI: happy paths and one-line errors with a non-zero exit, nothing half-written."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import TINY
from twostage_search.cli import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("twostage: error: ")
    return err


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "idx"
    assert main(["index", str(TINY / "corpus.jsonl"), "--index", str(path), "--no-progress"]) == 0
    return path


def test_index_then_search_table(cli_index, capsys):
    capsys.readouterr()
    assert main(["search", "--index", str(cli_index), "what is the capital of france", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "d01" in out and "Paris" in out


def test_search_json(cli_index, capsys):
    capsys.readouterr()
    assert main(["search", "--index", str(cli_index), "young kitten pet", "--k", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["reranker"] == "identity"
    assert [h["rank"] for h in payload["hits"]] == [1, 2]
    assert payload["hits"][0]["doc_id"] == "d07"
    assert payload["hits"][0]["score"] >= payload["hits"][1]["score"]
    assert [c["stage"] for c in payload["costs"]] == ["encode", "retrieve", "rerank"]


def test_search_with_cross_encoder_and_rerank_depth(cli_index, capsys):
    capsys.readouterr()
    args = ["search", "--index", str(cli_index), "ocean tides", "--k", "3", "--json"]
    assert main([*args, "--reranker", "onnx-cross-encoder", "--rerank-depth", "4"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["hits"][0]["doc_id"] == "d10"
    rerank = payload["costs"][2]
    assert rerank["docs"] == 4 and rerank["tokens_in"] > 0


def test_missing_corpus_file(tmp_path, capsys):
    assert main(["index", str(tmp_path / "nope.jsonl"), "--index", str(tmp_path / "idx")]) == 2
    assert "file not found" in _one_line_error(capsys)
    assert not (tmp_path / "idx").exists()


def test_malformed_jsonl_writes_nothing(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    shutil.copy(TINY / "corpus.jsonl", corpus)
    with corpus.open("a") as fh:
        fh.write('{"_id": "broken", "text": \n')
    assert main(["index", str(corpus), "--index", str(tmp_path / "idx"), "--no-progress"]) == 2
    assert ":13: not valid JSON" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


def test_empty_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n")
    assert main(["index", str(corpus), "--index", str(tmp_path / "idx")]) == 2
    assert "empty" in _one_line_error(capsys)


def test_empty_query(cli_index, capsys):
    assert main(["search", "--index", str(cli_index), "   "]) == 2
    assert "empty" in _one_line_error(capsys)


def test_unknown_reranker(cli_index, capsys):
    assert main(["search", "--index", str(cli_index), "tides", "--reranker", "nope"]) == 2
    assert "unknown reranker 'nope'" in _one_line_error(capsys)


def test_unknown_encoder_and_backend(tmp_path, capsys):
    corpus = str(TINY / "corpus.jsonl")
    assert main(["index", corpus, "--index", str(tmp_path / "i"), "--encoder", "nope"]) == 2
    assert "unknown encoder 'nope'" in _one_line_error(capsys)
    assert main(["index", corpus, "--index", str(tmp_path / "i"), "--backend", "nope"]) == 2
    assert "unknown index backend 'nope'" in _one_line_error(capsys)
    assert not (tmp_path / "i").exists()


def test_missing_index(tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / "nope"), "tides"]) == 2
    assert "index not found" in _one_line_error(capsys)


def test_bad_k_is_a_usage_error(cli_index, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--index", str(cli_index), "tides", "--k", "0"])
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    exe = shutil.which("twostage") or f"{sys.executable} -m twostage_search.cli"
    done = subprocess.run(
        [*exe.split(), "search", "--index", str(tmp_path), "tides"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("twostage: error: ") and len(done.stderr.strip().splitlines()) == 1


def test_calibrate_fits_and_saves_a_cost_model(cli_index, tmp_path, capsys):
    from twostage_search.engine.costmodel import CostModel

    out = tmp_path / "cm.json"
    args = ["calibrate", "--index", str(cli_index), "--reranker", "identity", "--dataset", str(TINY)]
    assert main([*args, "--queries", "3", "--ks", "2", "4", "--out", str(out)]) == 0
    model = CostModel.load(out)
    assert set(model.stages) == {"retrieve", "rerank"}
    assert model.meta["queries"] == 3 and model.meta["ks"] == [2, 4]
    assert model.stages["rerank"].observations == 6
    assert "saved" in capsys.readouterr().out
    assert main([*args, "--ks", "4", "--out", str(out)]) == 2  # one k cannot fit a line
    assert "two positive k" in _one_line_error(capsys)
