"""The SQLite log store and its writer thread without the app: reads by experiment and time range, group
commit, the writer's age purge, and ``twostage log purge``."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest

from twostage_search.cli import main
from twostage_search.service.ubi.records import EventRecord, LogStore, QueryRecord, RejectedRecords
from twostage_search.service.ubi.sqlite import SQLiteLogStore
from twostage_search.service.ubi.writer import LogFull, LogWriter

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
NOW = datetime.now(UTC)


def query(qid: str, at: datetime, experiment: str = "e1") -> QueryRecord:
    return QueryRecord(
        qid, f"text of {qid}", "u1", at, f"r-{qid}", ("d1", "d2"), {"experiment": experiment, "arm": "a"}
    )


def click(qid: str, at: datetime, received: datetime | None = None, obj: str = "d1") -> EventRecord:
    return EventRecord("click", qid, "u1", at, received or at, object_id=obj, ordinal=1, event={"action_name": "click"})


def test_reads_by_experiment_and_time_range(tmp_path):
    store = SQLiteLogStore(tmp_path)
    assert isinstance(store, LogStore)
    hour = timedelta(hours=1)
    store.write(
        [query("q1", T0), query("q2", T0 + hour), query("q3", T0 + 2 * hour, "e2")],
        [click("q1", T0), click("q2", T0 + hour), click("q3", T0 + 2 * hour), click("unlogged", T0 + hour)],
    )
    assert [q.query_id for q in store.queries()] == ["q1", "q2", "q3"]
    assert [q.query_id for q in store.queries(experiment="e1", since=T0 + hour)] == ["q2"]
    assert [q.query_id for q in store.queries(until=T0 + hour)] == ["q1"]  # until is exclusive
    assert [e.query_id for e in store.events(experiment="e1")] == ["q1", "q2"]
    assert [e.query_id for e in store.events(since=T0 + hour, until=T0 + 2 * hour)] == ["q2", "unlogged"]
    q = next(store.queries())
    assert q == query("q1", T0)  # every field back as written
    store.write([query("q1", T0, "e2")], [])  # a query id logged again replaces its record
    assert [(q.query_id, q.experiment) for q in store.queries(experiment="e2")] == [("q1", "e2"), ("q3", "e2")]
    store.close()


def test_schema_newer_than_this_version_is_refused(tmp_path):
    SQLiteLogStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "ubi.sqlite3") as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(Exception, match="newer"):
        SQLiteLogStore(tmp_path)


class CountingStore(SQLiteLogStore):
    """Records the size of every write; the first write waits for ``gate``."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.writes: list[tuple[int, int]] = []
        self.gate, self.entered = threading.Event(), threading.Event()

    def write(self, queries, events) -> None:
        self.entered.set()
        assert self.gate.wait(30)
        self.writes.append((len(queries), len(events)))
        super().write(queries, events)


def test_group_commit_writes_what_queued_in_one_transaction(tmp_path):
    store = CountingStore(tmp_path)
    writer = LogWriter(store, maxsize=10)
    first = writer.submit_events([click("q0", T0)])
    assert store.entered.wait(30)  # the writer is inside the first write
    assert writer.log_query(query("q1", T0))
    later = [writer.submit_events([click("q1", T0, obj=d) for d in ("d1", "d2")]) for _ in range(3)]
    for i in range(6):  # fills the queue to its 10 items
        writer.submit_events([click(f"extra{i}", T0)])
    with pytest.raises(LogFull):
        writer.submit_events([click("refused", T0)])
    assert not first.done() and not any(f.done() for f in later)
    store.gate.set()
    first.result(30)
    for f in later:
        f.result(30)
    writer.close()
    assert store.writes == [(0, 1), (1, 3 * 2 + 6)]  # everything queued meanwhile: one commit
    assert "refused" not in {e.query_id for e in SQLiteLogStore(tmp_path).events()}


def test_writer_purges_records_older_than_max_age(tmp_path):
    store = SQLiteLogStore(tmp_path)
    store.write(
        [query("old", NOW - timedelta(days=40)), query("new", NOW - timedelta(days=10))],
        [click("old", NOW, received=NOW - timedelta(days=40)), click("new", NOW, received=NOW - timedelta(days=10))],
    )
    LogWriter(store, maxsize=10, max_age=timedelta(days=30)).close()  # purges at start
    reopened = SQLiteLogStore(tmp_path)
    assert [q.query_id for q in reopened.queries()] == ["new"]
    assert [e.query_id for e in reopened.events()] == ["new"]  # by when it was received


def test_purge_command(tmp_path, capsys):
    store = SQLiteLogStore(tmp_path)
    store.write(
        [query("q40", NOW - timedelta(days=40)), query("q20", NOW - timedelta(days=20)), query("q1", NOW)],
        [click("q40", NOW, received=NOW - timedelta(days=40)), click("q1", NOW, received=NOW - timedelta(days=1))],
    )
    store.close()
    assert main(["log", "purge", "--older-than", "30", "--data-dir", str(tmp_path)]) == 0
    assert "purged 1 query records and 1 events" in capsys.readouterr().out
    assert main(["log", "purge", "--older-than", "7", "--data-dir", str(tmp_path)]) == 0
    assert "purged 1 query records and 0 events" in capsys.readouterr().out
    store = SQLiteLogStore(tmp_path)
    assert [q.query_id for q in store.queries()] == ["q1"] and [e.query_id for e in store.events()] == ["q1"]


def test_purge_command_errors(tmp_path, capsys):
    assert main(["log", "purge", "--older-than", "30", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no query and event log" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # nothing created
    with pytest.raises(SystemExit) as exc:
        main(["log", "purge", "--older-than", "-1", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2


class PickyStore(CountingStore):
    """Like OpenSearch rejecting a document it cannot map: a write holding a ``poison`` event fails whole."""

    def write(self, queries, events) -> None:
        if any(e.action_name == "poison" for e in events):
            self.writes.append((len(queries), -len(events)))  # refused
            raise RejectedRecords("rejected 1 record: poison")
        super().write(queries, events)


def test_a_rejected_batch_fails_alone_not_the_others_of_its_commit(tmp_path):
    store = PickyStore(tmp_path)
    writer = LogWriter(store, maxsize=10)
    first = writer.submit_events([click("q0", T0)])
    assert store.entered.wait(30)  # the next four items queue up for one commit
    assert writer.log_query(query("q1", T0))
    good = writer.submit_events([click("q1", T0)])
    poison = EventRecord("poison", "q2", "u1", T0, T0)
    bad = writer.submit_events([click("q2", T0), poison])
    later = writer.submit_events([click("q3", T0)])
    store.gate.set()
    for f in (first, good, later):
        f.result(30)
    with pytest.raises(RejectedRecords, match="poison"):
        bad.result(30)
    writer.close()
    # the commit of all four is refused, then its parts are written one by one
    assert store.writes == [(0, 1), (1, -4), (1, 0), (0, 1), (0, -2), (0, 1)]
    reopened = SQLiteLogStore(tmp_path)
    assert [q.query_id for q in reopened.queries()] == ["q1"]
    assert [e.query_id for e in reopened.events()] == ["q0", "q1", "q3"]
