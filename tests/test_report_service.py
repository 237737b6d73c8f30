"""Interleaved serving through the real app, ``GET /admin/report`` and the ``twostage report`` command."""

from __future__ import annotations

from collections.abc import Sequence

from tests.helpers import need

need("fastapi", "service")
need("prometheus_client", "service")
need("scipy", "bench")
need("matplotlib", "bench")

from fastapi.testclient import TestClient

from tests.service_helpers import AUTH, TOKEN, assert_error, identity_arms, search, small_app, write_experiment
from twostage_search import cli
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.config import RerankerConfig
from twostage_search.rerankers.identity import IdentityReranker
from twostage_search.service.app import create_app
from twostage_search.service.settings import Settings
from twostage_search.service.ubi.sqlite import SQLiteLogStore

DOCS = {"d1": 5.0, "d2": 4.0, "d3": 3.0, "d4": 2.0, "d5": 1.0}


class FiveDocs:
    def retrieve(self, query: Query, k: int) -> RankedList:
        return RankedList.from_candidates(query.query_id, [Candidate(d, s, f"text {d}") for d, s in DOCS.items()], k)


class Reverse:
    """Ranks the candidates in reverse first-stage order (d5 first)."""

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return RankedList.from_candidates(query.query_id, [Candidate(c.doc_id, -c.score, c.text) for c in candidates])


def factory(config: RerankerConfig):
    return Reverse() if config.params.get("reverse") else IdentityReranker()


def interleave_app(tmp_path, **settings) -> TestClient:
    arms = identity_arms("first", "reverse")
    arms[1]["reranker"] = {"name": "identity", "params": {"reverse": True}}
    arms[1]["max_rerank_depth"] = 3
    exp = write_experiment(tmp_path / "exp.yaml", "tdi", arms)
    exp.write_text(exp.read_text() + "mode: interleave\n")
    s = Settings(index=tmp_path / "unused", experiment=exp, admin_token=TOKEN, data_dir=tmp_path / "data", **settings)
    return TestClient(create_app(s, retriever=FiveDocs(), reranker_factory=factory), raise_server_exceptions=False)


def test_interleaved_search_merges_both_arms_and_logs_the_teams(tmp_path):
    with interleave_app(tmp_path) as c:
        first = search(c, k=4, user_id="u1", query_id="q-int")
        again = search(c, k=4, user_id="u2", query_id="q-int")
        too_deep = search(c, k=4, rerank_depth=4)  # within the control's cap, over the other arm's
        body = {"query": "tides", "k": 2, "user_id": "u1", "arm": "reverse", "query_id": "q-arm"}
        plain = c.post("/search", json=body, headers=AUTH)
    assert first.status_code == 200, first.text
    body = first.json()
    ids = [h["doc_id"] for h in body["hits"]]
    assert body["arm"] == "interleaved" and ids == [h["doc_id"] for h in again.json()["hits"]]
    # d1..d5 against d5..d1, four picks: two from each end, whichever team starts
    assert sorted(ids) == ["d1", "d2", "d4", "d5"]
    assert [h["score"] for h in body["hits"]] == [4.0, 3.0, 2.0, 1.0]
    stages = [cost["stage"] for cost in body["costs"]]
    assert "first/retrieve" in stages and "reverse/retrieve" in stages and "reverse/rerank" in stages
    assert body["rerank_depth"] == 10  # both arms reranked the first stage's 5 documents
    assert_error(too_deep, 422, "invalid_request", "at most 3")
    assert plain.json()["arm"] == "reverse" and [h["doc_id"] for h in plain.json()["hits"]] == ["d5", "d4"]

    records = {q.query_id: q for q in SQLiteLogStore(tmp_path / "data").queries()}
    a = records["q-int"].query_attributes
    assert records["q-int"].arm == "interleaved" and a["mode"] == "interleave" and a["arms"] == ["first", "reverse"]
    team = dict(zip(records["q-int"].query_response_hit_ids, a["teams"], strict=True))
    assert team == {"d1": "first", "d2": "first", "d4": "reverse", "d5": "reverse"}
    assert set(a["arm_costs"]) == {"first", "reverse"} and a["arm_costs"]["reverse"]["docs"] == 5
    assert records["q-arm"].query_attributes.get("teams") is None


def test_report_route_needs_the_admin_token_and_answers_json(tmp_path):
    with interleave_app(tmp_path) as c:
        ids = []
        for i in range(4):
            r = search(c, k=4, user_id=f"u{i}", query_id=f"q{i}")
            ids.append((r.json()["query_id"], r.json()["hits"][0]["doc_id"]))
        events = [
            {
                "action_name": "click",
                "query_id": qid,
                "client_id": "u",
                "timestamp": "2026-12-06T12:00:00Z",
                "event_attributes": {"object": {"object_id": doc}},
            }
            for qid, doc in ids
        ]
        assert c.post("/events", json=events).status_code == 200
        assert_error(c.get("/admin/report"), 401, "unauthorized")
        assert_error(c.get("/admin/report", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        ok = c.get("/admin/report", headers=AUTH)
        missing = c.get("/admin/report", params={"experiment": "nope"}, headers=AUTH)
    assert ok.status_code == 200, ok.text
    report = ok.json()
    assert (report["experiment"], report["mode"], report["control"]) == ("tdi", "interleave", "first")
    (pair,) = report["pairs"]
    # each query's top document was clicked: one team wins it, never a tie
    assert pair["wins"] + pair["losses"] == 4 and pair["ties"] == 0
    assert {a["arm"]: a["queries"] for a in report["arms"]} == {"interleaved": 4, "first": 4, "reverse": 4}
    assert_error(missing, 404, "not_found", "nope")


def test_report_route_is_off_without_an_admin_token(tmp_path):
    exp = write_experiment(tmp_path / "exp.yaml", "small", identity_arms("a1", "a2"))
    s = Settings(index=tmp_path / "unused", experiment=exp, data_dir=tmp_path / "data")
    with TestClient(create_app(s, retriever=FiveDocs()), raise_server_exceptions=False) as c:
        assert_error(c.get("/admin/report", headers=AUTH), 403, "admin_disabled")


def test_cli_writes_the_table_json_and_plot(tmp_path, capsys):
    data = tmp_path / "data"
    with small_app(tmp_path, FiveDocs(), data_dir=data) as c:
        for i in range(40):
            r = search(c, k=3, user_id=f"user-{i}")
            body = r.json()
            if body["arm"] == "a2" or i % 4 == 0:  # a2's users always click the top hit, a1's one in four
                event = {
                    "action_name": "click",
                    "query_id": body["query_id"],
                    "client_id": f"user-{i}",
                    "timestamp": "2026-12-06T12:00:00Z",
                    "event_attributes": {"object": {"object_id": "d1"}},
                }
                assert c.post("/events", json=[event]).status_code == 200
    out = tmp_path / "report"
    status = cli.main(["report", "--data-dir", str(data), "--config", str(tmp_path / "exp.yaml"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    table = (out / "report.md").read_text()
    assert table in printed
    assert "| a1 |" in table and "| a2 | ctr |" in table and "Quality per cost" in table and "Sample ratio" in table
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"experiment": "small"' in (out / "report.json").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]  # no temp files


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["report", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no query and event log" in capsys.readouterr().err
