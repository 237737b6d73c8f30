"""The online_live command: simulated users search a real `twostage serve`, their events land in the
log, and `twostage report` counts them.

By hand: the events one results page sends; the experiment copy with its mode replaced. End to end on the
graded fixture (10 queries, BM25), in both modes: every search is a query record, every sent event is
in the SQLite log (counted there with SQL, not with the report's code), and the report's counts match.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

import pytest
import yaml

from tests.helpers import FIXTURES, need

need("scipy", "bench")

from twostage_search.benchmarks.studies import online_live


def test_a_page_sends_one_impression_per_shown_document_and_its_clicks():
    shown = datetime(2026, 12, 6, 11, 0, 0, 250_000, tzinfo=UTC)
    events = online_live.page_events("q-1", "user-7", ["d3", "d1", "d9"], [False, True, True], shown)
    assert [(e["action_name"], e["event_attributes"]["position"]["ordinal"]) for e in events] == [
        ("impression", 1),
        ("impression", 2),
        ("impression", 3),
        ("click", 2),
        ("click", 3),
    ]
    assert [e["event_attributes"]["object"]["object_id"] for e in events] == ["d3", "d1", "d9", "d1", "d9"]
    assert {e["query_id"] for e in events} == {"q-1"} and {e["client_id"] for e in events} == {"user-7"}
    assert {e["session_id"] for e in events} == {"session-user-7"}
    # impressions when the page was shown; the click on position i, i seconds later (read top down)
    assert [e["timestamp"] for e in events] == [
        "2026-12-06T11:00:00.250Z",
        "2026-12-06T11:00:00.250Z",
        "2026-12-06T11:00:00.250Z",
        "2026-12-06T11:00:02.250Z",
        "2026-12-06T11:00:03.250Z",
    ]


def test_a_page_without_clicks_sends_impressions_only():
    events = online_live.page_events("q", "u", ["a", "b"], [False, False], datetime(2026, 1, 1, tzinfo=UTC))
    assert [e["action_name"] for e in events] == ["impression", "impression"]


def test_the_mode_is_replaced_in_a_copy(tmp_path):
    source = tmp_path / "exp.yaml"
    source.write_text("name: x\nmode: interleave\narms:\n  - {name: a, weight: 1.0, reranker: {name: identity}}\n")
    assert online_live.experiment_file(source, None, tmp_path / "d") == source
    (tmp_path / "d").mkdir()
    copy = online_live.experiment_file(source, "split", tmp_path / "d")
    assert copy != source and yaml.safe_load(copy.read_text())["mode"] == "split"
    assert yaml.safe_load(source.read_text())["mode"] == "interleave"


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        online_live.parse_args(["--dataset", "x", "--index", "y", "--impressions", "0"])
    assert exc.value.code == 2
    assert "--impressions" in capsys.readouterr().err


def test_a_missing_index_is_one_line(tmp_path, capsys):
    args = ["--dataset", str(FIXTURES / "graded"), "--index", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert online_live.main(args) != 0
    assert "no index at" in capsys.readouterr().err


@pytest.fixture(scope="module")
def graded_index(tmp_path_factory):
    need("fastapi", "service")
    need("uvicorn", "service")
    need("pyserini", "lucene")
    from twostage_search.cli import main

    index = tmp_path_factory.mktemp("live") / "bm25"
    graded = FIXTURES / "graded"
    argv = ["index", str(graded / "corpus.jsonl"), "--index", str(index), "--backend", "lucene-bm25", "--no-progress"]
    assert main(argv) == 0
    return index


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["interleave", "split"])
def test_end_to_end_the_events_land_in_the_log_and_the_report_counts_them(tmp_path, monkeypatch, graded_index, mode):
    from tests.service_helpers import write_experiment

    monkeypatch.setenv("TWOSTAGE_WARMUP", "false")
    arms = [
        {"name": "first", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 3},
        {"name": "deep", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 10},
    ]
    exp = write_experiment(tmp_path / "exp.yaml", "live", arms)
    data, out = tmp_path / "data", tmp_path / "out"
    args = ["--dataset", str(FIXTURES / "graded"), "--index", str(graded_index), "--experiment", str(exp)]
    args += ["--mode", mode, "--model", "perfect", "--impressions", "12", "--users", "5", "--k", "3"]
    args += ["--data-dir", str(data), "--out", str(out), "--seed", "1"]
    assert online_live.main(args) == 0

    sent = json.loads((out / "online_live.json").read_text())["sent"]
    assert sent["searches"] == 12
    with sqlite3.connect(data / "ubi.sqlite3") as db:
        queries = db.execute("SELECT count(*), count(DISTINCT client_id) FROM ubi_queries").fetchone()
        actions = dict(db.execute("SELECT action_name, count(*) FROM ubi_events GROUP BY 1").fetchall())
        clicked = db.execute("SELECT count(DISTINCT query_id) FROM ubi_events WHERE action_name = 'click'").fetchone()
        orphans = db.execute(
            "SELECT count(*) FROM ubi_events WHERE query_id NOT IN (SELECT query_id FROM ubi_queries)"
        ).fetchone()
    assert queries[0] == 12 and queries[1] <= 5
    assert actions.get("impression") == sent["impressions"] and actions.get("click", 0) == sent["clicks"]
    assert sent["impressions"] <= 12 * 3 and sent["clicks"] > 0  # grade-4 documents are always clicked
    assert clicked[0] == sent["searches_with_click"] and orphans[0] == 0

    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == mode and report["control"] == "first"
    rows = {a["arm"]: a for a in report["arms"]}
    for name in ("report.md", "report.png"):
        assert (out / name).stat().st_size > 0
    if mode == "interleave":
        assert rows["interleaved"]["queries"] == 12 and rows["interleaved"]["users"] == queries[1]
        (pair,) = report["pairs"]
        assert pair["wins"] + pair["ties"] + pair["losses"] == clicked[0]  # queries with a click
        assert rows["interleaved"]["ctr"] == pytest.approx(clicked[0] / 12)
    else:
        assert rows["first"]["queries"] + rows["deep"]["queries"] == 12
        assert sum(report["srm_counts"].values()) == queries[1]
        ctr = (rows["first"]["ctr"] * rows["first"]["queries"] + rows["deep"]["ctr"] * rows["deep"]["queries"]) / 12
        assert ctr == pytest.approx(clicked[0] / 12)


def test_a_data_dir_with_a_log_is_refused(tmp_path, capsys, graded_index):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ubi.sqlite3").write_bytes(b"")
    args = ["--dataset", str(FIXTURES / "graded"), "--index", str(graded_index), "--data-dir", str(data)]
    assert online_live.main([*args, "--out", str(tmp_path / "o")]) != 0
    assert "holds a log already" in capsys.readouterr().err
