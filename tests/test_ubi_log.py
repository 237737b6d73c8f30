"""The UBI query and event log through the real app: the query record of a search, the event round trip,
every kind of bad event batch (4xx JSON, nothing stored), 429 when the log writer's queue is full, and
logging switched off."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import need

need("fastapi", "service")
need("prometheus_client", "service")

from fastapi.testclient import TestClient

from tests.service_helpers import (
    TOKEN,
    FiveDocs,
    assert_error,
    event,
    identity_arms,
    search,
    small_app,
    write_experiment,
)
from twostage_search.service.app import create_app
from twostage_search.service.settings import Settings
from twostage_search.service.ubi.records import QueryRecord
from twostage_search.service.ubi.sqlite import SQLiteLogStore


def metric(c: TestClient, line_start: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------------------------- query records
def test_search_writes_its_query_record(tmp_path):
    data = tmp_path / "data"
    before = datetime.now(UTC)
    with small_app(tmp_path, FiveDocs(), data_dir=data) as c:
        first = search(c, query="ocean tides", k=3, user_id="u1", arm="a2")
        second = c.post(
            "/search", json={"query": "moon", "k": 2, "query_id": "my-query-1"}, headers={"X-Client-ID": "browser-7"}
        )
        anonymous = search(c, query="tides", k=1)
    after = datetime.now(UTC)
    for r in (first, second, anonymous):
        assert r.status_code == 200, r.text
    one, two = first.json(), second.json()
    assert uuid.UUID(one["query_id"]).version == 4 and two["query_id"] == "my-query-1"
    assert len({one["query_id"], anonymous.json()["query_id"]}) == 2  # a new id per search

    records = {q.query_id: q for q in SQLiteLogStore(data).queries()}  # written at shutdown at the latest
    assert set(records) == {one["query_id"], "my-query-1", anonymous.json()["query_id"]}
    q = records[one["query_id"]]
    assert (q.user_query, q.client_id, q.query_response_id) == ("ocean tides", "u1", one["request_id"])
    assert q.query_response_hit_ids == ("d1", "d2", "d3")
    assert before - timedelta(seconds=1) <= q.timestamp <= after  # when it arrived, to the millisecond
    a = q.query_attributes
    assert (a["experiment"], a["arm"], a["config_version"], a["k"], a["depth"]) == ("small", "a2", 1, 3, 10)
    assert a["rerank_depth"] == one["rerank_depth"] == 5  # all five candidates (depth 10)
    assert [c["stage"] for c in a["costs"]] == [c["stage"] for c in one["costs"]]
    assert set(a["costs"][0]) == {"stage", "wall_ms", "docs", "tokens_in", "tokens_out", "usd"}
    q2 = records["my-query-1"]
    assert (q2.client_id, q2.query_response_hit_ids) == ("browser-7", ("d1", "d2"))
    assert records[anonymous.json()["query_id"]].client_id is None


@pytest.mark.parametrize("query_id", ["has space", "", "x" * 101, "-leading-dash", "semi;colon"])
def test_bad_query_id_is_422(tmp_path, query_id):
    with small_app(tmp_path, FiveDocs(), data_dir=tmp_path / "data") as c:
        assert_error(search(c, query_id=query_id), 422, "invalid_request", "query_id")


def test_client_header_too_long_is_422(tmp_path):
    with small_app(tmp_path, FiveDocs(), data_dir=tmp_path / "data") as c:
        r = c.post("/search", json={"query": "tides"}, headers={"X-Client-ID": "c" * 101})
        assert_error(r, 422, "invalid_request", "X-Client-ID")


# ------------------------------------------------------------------------------------------ events
def test_event_round_trip(tmp_path):
    data = tmp_path / "data"
    with small_app(tmp_path, FiveDocs(), data_dir=data) as c:
        served = search(c, k=3, user_id="u1").json()
        qid = served["query_id"]
        batch = [
            event(
                "impression", query_id=qid, event_attributes={"object": {"object_id": "d1"}, "position": {"ordinal": 1}}
            ),
            event(
                "click",
                query_id=qid,
                page_id="/results",
                event_attributes={
                    "object": {"object_id": 42, "object_id_field": "doc_id"},
                    "position": {"ordinal": 2, "x": 10},
                },
            ),
        ]
        r = c.post("/events", json=batch)
        assert r.status_code == 200, r.text
        assert r.json() == {"stored": 2}
        stored = list(SQLiteLogStore(data).events())  # a 200 means committed: read while the app runs
        assert metric(c, 'twostage_events_total{action="click"}') == 1.0
        in_experiment = list(SQLiteLogStore(data).events(experiment="small"))
        elsewhere = list(SQLiteLogStore(data).events(experiment="other"))
    assert [(e.action_name, e.object_id, e.ordinal) for e in stored] == [("impression", "d1", 1), ("click", "42", 2)]
    e = stored[1]
    assert (e.query_id, e.client_id, e.session_id) == (qid, "u1", "s1")
    assert e.timestamp == datetime(2026, 12, 6, 11, 0, 0, 250_000, tzinfo=UTC)  # 13:00:00.250+02:00
    assert e.event["timestamp"] == "2026-12-06T11:00:00.250Z"
    assert e.event["page_id"] == "/results" and e.event["event_attributes"]["position"]["x"] == 10
    assert len(in_experiment) == 2 and elsewhere == []


BAD = [
    ([event("hover")], "0.action_name: unknown action 'hover'"),
    ([event(), event(action_name="")], "1.action_name"),
    ([event()] * 4, "more than 3 events"),
    ([], "at least 1"),
    ({"events": [event()]}, "list"),
    ([event(query_id=None)], "0.query_id"),
    ([{k: v for k, v in event().items() if k != "query_id"}], "0.query_id: Field required"),
    ([{k: v for k, v in event().items() if k != "client_id"}], "0.client_id: Field required"),
    ([event(query_id="not an id")], "0.query_id"),
    ([event(event_attributes={"object": {"name": "no id"}})], "object.object_id: Field required"),
    ([event(event_attributes={"position": {"ordinal": 0}})], "position.ordinal"),
    ([event(event_attributes={"position": {"ordinal": -3}})], "position.ordinal"),
    ([event(event_attributes={"position": {"ordinal": 1.5}})], "position.ordinal"),
    ([event(event_attributes={"position": {"ordinal": "2"}})], "position.ordinal"),
    ([event(event_attributes={"position": {"ordinal": True}})], "position.ordinal"),
    # larger than the stores' integer columns (was a 503 with the batch refused)
    ([event(event_attributes={"position": {"ordinal": 2**31}})], "position.ordinal"),
    ([event(event_attributes={"position": {"ordinal": 26245517364163610935296}})], "position.ordinal"),
    ([event(event_attributes={"position": {"x": 2**40}})], "position.x"),
    ([event(event_attributes={"position": {"scroll_depth": "far"}})], "position.scroll_depth"),
    ([event(timestamp="yesterday")], "0.timestamp"),
    ([event(timestamp="2026-13-01T00:00:00Z")], "0.timestamp"),
    ([event(timestamp="2026-12-06T11:00:00")], "0.timestamp"),  # no time zone
    ([event(timestamp=1733482800)], "0.timestamp"),
    ([{k: v for k, v in event().items() if k != "timestamp"}], "0.timestamp: Field required"),
]


@pytest.fixture(scope="module")
def strict_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strict")
    with small_app(tmp, FiveDocs(), data_dir=tmp / "data", event_batch_max=3) as c:
        yield c, tmp / "data"


@pytest.mark.parametrize(("body", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_events_are_422_and_not_stored(strict_app, body, words):
    c, data = strict_app
    assert_error(c.post("/events", json=body), 422, "invalid_request", words)
    assert list(SQLiteLogStore(data).events()) == []


def test_event_limits_in_openapi(strict_app):
    c, _ = strict_app
    schema = c.get("/openapi.json").json()
    body = schema["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["maxItems"] == 3
    action = schema["components"]["schemas"]["UbiEvent"]["properties"]["action_name"]
    assert action["enum"] == ["impression", "click", "add_to_cart", "purchase", "view", "watch"]


def test_body_not_json_is_422(strict_app):
    c, _ = strict_app
    r = c.post("/events", content=b"[{", headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_request")


# ------------------------------------------------------------------------------------ overload
class GatedStore:
    """A SQLite store whose writes wait for ``gate``: the writer thread stalls as on a slow disk."""

    def __init__(self, inner: SQLiteLogStore) -> None:
        self.inner = inner
        self.gate, self.entered = threading.Event(), threading.Event()
        self.queries, self.events, self.purge, self.close = inner.queries, inner.events, inner.purge, inner.close

    def write(self, queries, events) -> None:
        self.entered.set()
        assert self.gate.wait(30)
        self.inner.write(queries, events)


def test_full_writer_queue_gives_429_and_counts_dropped_queries(tmp_path):
    store = GatedStore(SQLiteLogStore(tmp_path / "data"))
    exp = write_experiment(tmp_path / "exp.yaml", "small", identity_arms("a1"))
    settings = Settings(index=tmp_path / "unused", experiment=exp, admin_token=TOKEN, log_queue=1, retry_after_s=3)
    app = create_app(settings, retriever=FiveDocs(), log_store=store)
    with TestClient(app, raise_server_exceptions=False) as c, ThreadPoolExecutor(2) as pool:
        writer = app.state.service.log
        first = pool.submit(c.post, "/events", json=[event(event_attributes={"object": {"object_id": "A"}})])
        assert store.entered.wait(30)  # the writer holds batch A and waits on the "disk"
        second = pool.submit(c.post, "/events", json=[event(event_attributes={"object": {"object_id": "B"}})])
        deadline = time.monotonic() + 30
        while writer.pending < 1:  # batch B fills the one-item queue
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = c.post("/events", json=[event(event_attributes={"object": {"object_id": "C"}})])
        body = assert_error(refused, 429, "overloaded", "event log is at capacity")
        assert refused.headers["Retry-After"] == "3" and body["request_id"]
        served = search(c)  # the search is served; its query record is dropped and counted
        assert served.status_code == 200 and served.json()["query_id"]
        assert metric(c, 'twostage_log_dropped_total{kind="query"}') == 1.0
        store.gate.set()
        assert first.result(30).json() == {"stored": 1} and second.result(30).json() == {"stored": 1}
    assert [e.object_id for e in store.inner.events()] == ["A", "B"]
    assert list(store.inner.queries()) == []


def test_logging_off(tmp_path):
    data = tmp_path / "data"
    with small_app(tmp_path, FiveDocs(), data_dir=data, log_enabled=False) as c:
        assert search(c).json()["query_id"]
        assert_error(c.post("/events", json=[event()]), 503, "log_disabled")
    assert not data.exists()


@pytest.mark.parametrize(("max_age_days", "kept"), [(30, ["recent"]), (0, ["old", "recent"])])
def test_service_purges_by_its_max_age(tmp_path, max_age_days, kept):
    data = tmp_path / "data"
    now = datetime.now(UTC)
    store = SQLiteLogStore(data)
    store.write(
        [QueryRecord(q, "x", None, now - timedelta(days=d), "r", ()) for q, d in (("old", 40), ("recent", 1))], []
    )
    store.close()
    with small_app(tmp_path, FiveDocs(), data_dir=data, log_max_age_days=max_age_days) as c:
        assert c.get("/readyz").status_code == 200
    assert [q.query_id for q in SQLiteLogStore(data).queries()] == kept
