"""The query and event log in OpenSearch (``ubi_queries`` / ``ubi_events``) against the real local node the
suite starts (or $OPENSEARCH_URL): UBI field names through the service, the report, click judgements and
the judging queue equal to SQLite's for the same traffic, purge, and rejected or unreachable writes."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import need

need("fastapi", "service")
need("opensearchpy", "opensearch")
need("pydantic_settings", "opensearch")

from tests.service_helpers import FiveDocs, assert_error, event, search, small_app
from twostage_search.cli import main
from twostage_search.engine.errors import MissingDependencyError
from twostage_search.indexes.opensearch.client import OpenSearchUnavailableError, make_client, resolve_settings
from twostage_search.indexes.opensearch.local import free_port
from twostage_search.service.judging.clicks import coec_judgements
from twostage_search.service.judging.pairs import logged_pairs
from twostage_search.service.report_output import report_for
from twostage_search.service.ubi.opensearch import OpenSearchLogStore
from twostage_search.service.ubi.records import EventRecord, LogStore, PurgeCount, QueryRecord, RejectedRecords
from twostage_search.service.ubi.sqlite import SQLiteLogStore
from twostage_search.service.ubi.stores import open_store

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


@pytest.fixture
def hosts(opensearch_url, monkeypatch):
    """The node, as the service and the commands find it: the ``opensearch`` index backend's setting."""
    monkeypatch.setenv("TWOSTAGE_OPENSEARCH_HOSTS", opensearch_url)
    return opensearch_url


@pytest.fixture
def prefix(name):
    """Index names of this test: ``PREFIX + "ubi_queries"`` under the session's prefix."""
    return name("-")


@pytest.fixture
def client(opensearch_url):
    c = make_client(resolve_settings(hosts=[opensearch_url]))
    yield c
    c.close()


def query(qid: str, at: datetime, experiment: str = "e1") -> QueryRecord:
    attributes = {"experiment": experiment, "arm": "a"}
    return QueryRecord(qid, f"text of {qid}", "u1", at, f"r-{qid}", ("d1", "d2"), attributes)


def click(qid: str, at: datetime, received: datetime | None = None) -> EventRecord:
    attributes = {"object": {"object_id": "d1"}, "position": {"ordinal": 1}}
    sent = {"action_name": "click", "query_id": qid, "client_id": "u1", "event_attributes": attributes}
    return EventRecord("click", qid, "u1", at, received or at, object_id="d1", ordinal=1, event=sent)


def at(doc: str, ordinal: int | None = None) -> dict:
    """``event_attributes``: the document and, if given, its position."""
    return {"object": {"object_id": doc}} | ({"position": {"ordinal": ordinal}} if ordinal else {})


def sources(client, index: str, **query) -> list[dict]:
    body = {"query": query or {"match_all": {}}, "sort": [{"timestamp": "asc"}], "size": 100}
    return [h["_source"] for h in client.search(index=index, body=body)["hits"]["hits"]]


# ------------------------------------------------------------------------------- through the service
def test_searches_and_events_land_in_the_ubi_indices(tmp_path, hosts, prefix, client):
    settings = {"log_store": "opensearch", "log_index_prefix": prefix, "log_refresh": "wait_for"}
    before = datetime.now(UTC) - timedelta(seconds=1)
    with small_app(tmp_path, FiveDocs(), data_dir=tmp_path / "data", **settings) as c:
        served = search(c, query="ocean tides", k=3, user_id="u1", arm="a2").json()
        qid = served["query_id"]
        batch = [
            event("impression", query_id=qid, timestamp="2026-12-06T11:00:01Z", event_attributes=at("d1")),
            event("click", query_id=qid, page_id="/results"),  # d2 at ordinal 2, sent at 13:00:00.250+02:00
        ]
        r = c.post("/events", json=batch)
        assert r.status_code == 200, r.text
        assert r.json() == {"stored": 2}
        stored = sources(client, f"{prefix}ubi_events", term={"query_id": qid})  # searchable at once: wait_for
    assert not (tmp_path / "data" / "ubi.sqlite3").exists()
    assert [e["action_name"] for e in stored] == ["click", "impression"]  # the click was sent with an older time
    clicked = stored[0]
    assert {k: clicked[k] for k in ("query_id", "client_id", "session_id", "timestamp", "page_id")} == {
        "query_id": qid,
        "client_id": "u1",
        "session_id": "s1",
        "timestamp": "2026-12-06T11:00:00.250Z",
        "page_id": "/results",
    }
    assert clicked["event_attributes"] == {"object": {"object_id": "d2"}, "position": {"ordinal": 2}}
    assert before <= datetime.fromisoformat(clicked["twostage"]["received"]) <= datetime.now(UTC)

    record = client.get(index=f"{prefix}ubi_queries", id=qid)["_source"]  # written at shutdown at the latest
    assert set(record) == {
        "query_id", "user_query", "client_id", "timestamp",
        "query_response_id", "query_response_hit_ids", "query_attributes",
    }  # fmt: skip
    assert (record["user_query"], record["client_id"]) == ("ocean tides", "u1")
    assert record["query_response_id"] == served["request_id"]
    assert record["query_response_hit_ids"] == ["d1", "d2", "d3"]
    assert (record["query_attributes"]["experiment"], record["query_attributes"]["arm"]) == ("small", "a2")
    assert [c["stage"] for c in record["query_attributes"]["costs"]] == [c["stage"] for c in served["costs"]]
    client.indices.refresh(index=f"{prefix}ubi_queries")
    found = sources(client, f"{prefix}ubi_queries", bool={"filter": [
        {"term": {"query_attributes.arm": "a2"}}, {"term": {"query_response_hit_ids": "d3"}},
    ]})  # fmt: skip
    assert [q["query_id"] for q in found] == [qid]  # searchable by UBI's fields, as its dashboards query them

    mappings = client.indices.get_mapping(index=f"{prefix}ubi_*")
    queries = mappings[f"{prefix}ubi_queries"]["mappings"]["properties"]
    events = mappings[f"{prefix}ubi_events"]["mappings"]["properties"]
    assert (queries["query_attributes"]["type"], queries["timestamp"]["type"]) == ("flat_object", "date")
    assert events["event_attributes"]["properties"]["position"]["properties"]["ordinal"]["type"] == "integer"
    assert events["event_attributes"]["properties"]["object"]["properties"]["object_id"]["type"] == "keyword"


class Both:
    """Writes every batch to SQLite and to OpenSearch (the service sees one store)."""

    def __init__(self, sqlite: SQLiteLogStore, opensearch: OpenSearchLogStore) -> None:
        self.sqlite, self.opensearch = sqlite, opensearch

    def write(self, queries, events) -> None:
        self.sqlite.write(queries, events)
        self.opensearch.write(queries, events)

    def queries(self, **kw):
        return self.opensearch.queries(**kw)

    def events(self, **kw):
        return self.opensearch.events(**kw)

    def purge(self, before):
        return self.opensearch.purge(before)

    def close(self) -> None:
        self.sqlite.close()
        self.opensearch.close()


def test_report_judgements_and_queue_equal_sqlites(tmp_path, hosts, prefix):
    from fastapi.testclient import TestClient

    from tests.service_helpers import TOKEN, identity_arms, write_experiment
    from twostage_search.service.app import create_app
    from twostage_search.service.settings import Settings

    exp = write_experiment(tmp_path / "exp.yaml", "small", identity_arms("a1", "a2"))
    settings = Settings(index=tmp_path / "unused", experiment=exp, admin_token=TOKEN, allow_overrides=True)
    both = Both(SQLiteLogStore(tmp_path / "data"), OpenSearchLogStore(prefix=prefix, refresh="wait_for"))
    assert isinstance(both.opensearch, LogStore)
    app = TestClient(create_app(settings, retriever=FiveDocs(), log_store=both), raise_server_exceptions=False)
    with app as c:
        for i in range(16):  # two arms, 8 users; clicks at rank 1, 2, 3 or none
            served = search(c, query=f"query {i % 5}", k=3, user_id=f"u{i % 8}", arm=f"a{1 + i % 2}").json()
            qid, hits, user = served["query_id"], [h["doc_id"] for h in served["hits"]], f"u{i % 8}"
            batch = [
                event("impression", query_id=qid, client_id=user, event_attributes=at(d, n))
                for n, d in enumerate(hits, 1)
            ]
            if rank := i % 4:
                when = f"2026-12-06T12:00:{i:02d}Z"
                batch.append(
                    event(query_id=qid, client_id=user, timestamp=when, event_attributes=at(hits[rank - 1], rank))
                )
            r = c.post("/events", json=batch)
            assert r.status_code == 200, r.text
    sqlite, opensearch = SQLiteLogStore(tmp_path / "data"), OpenSearchLogStore(prefix=prefix, create=False)
    queries = list(sqlite.queries())
    assert len(queries) == 16 and len(list(sqlite.events())) == 16 * 3 + 12
    assert list(opensearch.queries()) == queries  # every field back as written
    assert list(opensearch.events()) == list(sqlite.events())
    assert list(opensearch.queries(experiment="small", since=queries[4].timestamp)) == queries[4:]
    assert list(opensearch.events(experiment="small")) == list(sqlite.events(experiment="small"))
    assert list(opensearch.events(experiment="other")) == []

    on_sqlite, on_opensearch = report_for(sqlite).as_dict(), report_for(opensearch).as_dict()
    assert json.dumps(on_opensearch, sort_keys=True) == json.dumps(on_sqlite, sort_keys=True)
    arms = {a["arm"]: a for a in on_opensearch["arms"]}
    assert (arms["a1"]["queries"], arms["a2"]["queries"]) == (8, 8)
    assert coec_judgements(opensearch, min_impressions=1) == coec_judgements(sqlite, min_impressions=1)
    assert logged_pairs(opensearch, 3) == logged_pairs(sqlite, 3)
    sqlite.close()
    opensearch.close()


# ---------------------------------------------------------------------------------------- retention
def test_purge_by_query_timestamp_and_event_receipt(hosts, prefix, capsys):
    store = OpenSearchLogStore(prefix=prefix, refresh="wait_for")
    store.write(
        [query("q40", NOW - 40 * DAY), query("q20", NOW - 20 * DAY), query("q1", NOW - DAY)],
        [click("q40", NOW - 40 * DAY), click("q1", NOW - 40 * DAY, received=NOW - DAY)],  # a late event of q1
    )
    assert store.purge(NOW - 30 * DAY) == PurgeCount(1, 1)
    assert main(["log", "purge", "--store", "opensearch", "--index-prefix", prefix, "--older-than", "7"]) == 0
    where = f"OpenSearch {prefix}ubi_queries/{prefix}ubi_events"
    assert f"{where}: purged 1 query records and 0 events" in capsys.readouterr().out
    assert [q.query_id for q in store.queries()] == ["q1"]
    assert [(e.query_id, e.received) for e in store.events()] == [("q1", NOW - DAY)]
    store.close()


def test_commands_refuse_a_log_that_is_not_there(tmp_path, hosts, prefix, client, capsys):
    judge = ["judge", "run", "--source", "clicks", "--data-dir", str(tmp_path)]
    for command in (["log", "purge", "--older-than", "1"], ["report"], judge):
        assert main([*command, "--store", "opensearch", "--index-prefix", prefix]) == 2, command
        missing = f"no query and event log in OpenSearch at {hosts}: index '{prefix}ubi_queries' missing"
        assert missing in capsys.readouterr().err
    assert not client.indices.exists(index=f"{prefix}ubi_queries")  # nothing created
    assert not client.indices.exists(index=f"{prefix}ubi_events")


# ------------------------------------------------------------------------------------------ failures
def test_a_partly_rejected_write_keeps_nothing(hosts, prefix, client):
    store = OpenSearchLogStore(prefix=prefix, refresh="wait_for")
    client.indices.put_settings(index=store.events_index, body={"index.blocks.write": True})
    try:
        with pytest.raises(RejectedRecords, match=r"rejected 1 of 2 records: HTTP 403 cluster_block_exception"):
            store.write([query("q1", NOW)], [click("q1", NOW)])
    finally:
        client.indices.put_settings(index=store.events_index, body={"index.blocks.write": False})
    assert list(store.queries()) == []  # the query record the same bulk request indexed is deleted again
    store.write([query("q1", NOW)], [click("q1", NOW)])
    assert [q.query_id for q in store.queries()] == ["q1"] and len(list(store.events())) == 1
    store.close()


def test_events_opensearch_cannot_map_are_503_and_not_stored(tmp_path, hosts, prefix, client):
    settings = {"log_store": "opensearch", "log_index_prefix": prefix, "log_refresh": "wait_for"}
    with small_app(tmp_path, FiveDocs(), data_dir=tmp_path / "data", **settings) as c:
        # object_detail is an object in UBI's mapping; the request's schema leaves it free (numbers out of the
        # mapping's range are refused before, as a 422)
        bad = event(event_attributes={"object": {"object_id": "d1", "object_detail": "flat"}})
        r = c.post("/events", json=[event(client_id="first"), bad])
        body = assert_error(r, 503, "log_rejected", "event_attributes.object.object_detail")
        assert "kept none of it" in body["message"] and int(r.headers["Retry-After"]) > 0
        assert c.post("/events", json=[event(client_id="second")]).status_code == 200
    assert [e["client_id"] for e in sources(client, f"{prefix}ubi_events")] == ["second"]


def test_unreachable_cluster_and_missing_extra_are_clear_errors(monkeypatch):
    monkeypatch.setenv("TWOSTAGE_OPENSEARCH_HOSTS", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("TWOSTAGE_OPENSEARCH_TIMEOUT", "5")
    with pytest.raises(OpenSearchUnavailableError, match=r"cannot reach OpenSearch at http://127\.0\.0\.1"):
        open_store("opensearch")
    monkeypatch.setitem(sys.modules, "opensearchpy", None)
    with pytest.raises(MissingDependencyError, match=r"twostage-search\[opensearch\]"):
        open_store("opensearch")
