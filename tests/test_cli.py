"""The ``twostage`` CLI: happy paths and one-line errors with a non-zero exit, nothing half-written.

Exit status 0 on success, 2 for bad usage (argparse errors, bad arguments, missing files, malformed
input), 1 for failures at run time (a failed download, a backend down, a missing extra). Logs go to
stderr at the level of ``-q``/``-v``; stdout holds only the command's output.
"""

import json
import logging
import shutil
import subprocess
import sys

import pytest

from tests.helpers import TINY
from twostage_search.cli import main
from twostage_search.engine.errors import (
    BackendUnavailableError,
    IndexLoadError,
    InputError,
    MissingDependencyError,
    TwoStageError,
    UnknownBackendError,
    exit_status,
)
from twostage_search.engine.logs import HANDLER_NAME, level_for, setup_logging


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


def test_exit_status_by_error_class():
    usage = [InputError("x"), UnknownBackendError("x"), IndexLoadError("x"), FileNotFoundError(2, "x")]
    usage += [IsADirectoryError(21, "x"), NotADirectoryError(20, "x"), PermissionError(13, "x")]
    runtime = [BackendUnavailableError("x"), MissingDependencyError("x"), TwoStageError("x"), OSError(28, "x")]
    assert [exit_status(e) for e in usage] == [2] * len(usage)
    assert [exit_status(e) for e in runtime] == [1] * len(runtime)


def test_failed_download_is_a_runtime_failure(tmp_path, capsys):
    # Nothing listens on port 9 of the loopback: what a machine without network sees, fast.
    argv = [
        "fetch-beir",
        "scifact",
        "--out",
        str(tmp_path / "s"),
        "--source",
        "zip",
        "--url",
        "http://127.0.0.1:9/s.zip",
    ]
    assert main(argv) == 1
    assert "cannot download http://127.0.0.1:9/s.zip" in _one_line_error(capsys)
    assert not (tmp_path / "s").exists()


def test_backend_down_is_a_runtime_failure(cli_index, monkeypatch, capsys):
    from twostage_search import indexes

    def down(path):
        raise BackendUnavailableError("cannot reach OpenSearch at http://127.0.0.1:1 while searching")

    monkeypatch.setattr(indexes, "load", down)
    assert main(["search", "--index", str(cli_index), "tides"]) == 1
    assert "cannot reach OpenSearch" in _one_line_error(capsys)


def test_usage_errors_exit_2_from_argparse_too(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-q", "-v", "search", "--index", "x", "tides"])  # -q and -v exclude each other
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_documents_the_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 for bad usage" in out and "1 for a failure at run time" in out and "-q, --quiet" in out


def test_verbosity_levels():
    assert [level_for(v) for v in (-1, 0, 1, 2, 3)] == [
        logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("verbosity", "shown"), [(-1, ["error"]), (0, ["warning", "error"]), (1, ["info", "warning", "error"])]
)
def test_setup_logging_writes_its_level_to_stderr_once(verbosity, shown, capsys):
    setup_logging(verbosity)
    setup_logging(verbosity)  # a second call replaces the handler: each record once
    log = logging.getLogger("twostage_search.example")
    for level in ("debug", "info", "warning", "error"):
        getattr(log, level)(f"message-at-{level}")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert [w.removeprefix("message-at-") for w in captured.err.split() if w.startswith("message-at-")] == shown
    assert sum(h.get_name() == HANDLER_NAME for h in logging.getLogger().handlers) == 1


def test_verbose_logs_go_to_stderr_and_json_stays_alone_on_stdout(tmp_path, cli_index, capsys):
    capsys.readouterr()
    idx = tmp_path / "idx"
    assert main(["-v", "index", str(TINY / "corpus.jsonl"), "--index", str(idx), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "built" in captured.err and "built" not in captured.out  # the backends' INFO lines
    docs = sum(1 for line in (TINY / "corpus.jsonl").read_text().splitlines() if line.strip())
    assert captured.out.startswith(f"indexed {docs} documents") and len(captured.out.splitlines()) == 1
    assert main(["-q", "index", str(TINY / "corpus.jsonl"), "--index", str(idx), "--no-progress"]) == 0
    assert "built" not in capsys.readouterr().err
    assert main(["-vv", "search", "--index", str(cli_index), "ocean tides", "--k", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and [h["rank"] for h in json.loads(out)["hits"]] == [1, 2]
