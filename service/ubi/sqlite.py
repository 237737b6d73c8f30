"""The embedded log store: one SQLite file (``ubi.sqlite3`` in the service's data directory) in WAL mode.

Two tables named after OpenSearch's UBI indices, ``ubi_queries`` and ``ubi_events``, with the UBI fields
as columns (lists and attribute objects as JSON text) and the whole event as sent in ``event``.

Durability: every :meth:`SQLiteLogStore.write` is one transaction. With ``synchronous=FULL`` (the
default) SQLite fsyncs the write-ahead log at each commit, so a committed batch survives a killed process
and a power loss. ``NORMAL`` in WAL mode fsyncs only at checkpoints: a committed batch survives a killed
process (the WAL is in the OS's page cache) but the last batches may be lost if the machine itself goes
down. One writer thread batches many requests into one commit, so the fsync is paid per batch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from twostage_search.engine.errors import InputError
from twostage_search.service.ubi.records import (
    EventRecord,
    PurgeCount,
    QueryRecord,
    epoch_ms,
    from_ms,
    jsonable,
)

FILENAME = "ubi.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS ubi_queries (
    query_id TEXT PRIMARY KEY,
    user_query TEXT NOT NULL,
    client_id TEXT,
    timestamp INTEGER NOT NULL,          -- epoch milliseconds, UTC
    experiment TEXT,
    arm TEXT,
    query_response_id TEXT NOT NULL,
    query_response_hit_ids TEXT NOT NULL, -- JSON array, served order
    query_attributes TEXT NOT NULL        -- JSON object
);
CREATE INDEX IF NOT EXISTS ubi_queries_experiment ON ubi_queries (experiment, timestamp);
CREATE INDEX IF NOT EXISTS ubi_queries_timestamp ON ubi_queries (timestamp);
CREATE TABLE IF NOT EXISTS ubi_events (
    id INTEGER PRIMARY KEY,
    action_name TEXT NOT NULL,
    query_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    session_id TEXT,
    timestamp INTEGER NOT NULL,          -- epoch milliseconds, UTC (the client's clock)
    received INTEGER NOT NULL,           -- epoch milliseconds, UTC (the service's clock)
    object_id TEXT,
    ordinal INTEGER,
    event TEXT NOT NULL                  -- the event as sent, JSON
);
CREATE INDEX IF NOT EXISTS ubi_events_query ON ubi_events (query_id);
CREATE INDEX IF NOT EXISTS ubi_events_timestamp ON ubi_events (timestamp);
CREATE INDEX IF NOT EXISTS ubi_events_received ON ubi_events (received);
"""

_QUERY_COLUMNS = (
    "query_id, user_query, client_id, timestamp, experiment, arm, "
    "query_response_id, query_response_hit_ids, query_attributes"
)
_EVENT_COLUMNS = "action_name, query_id, client_id, session_id, timestamp, received, object_id, ordinal, event"


def _dumps(value: object) -> str:
    return json.dumps(value, default=jsonable, separators=(",", ":"), ensure_ascii=False)


class SQLiteLogStore:
    """A :class:`~twostage_search.service.ubi.records.LogStore` in one SQLite file, created on first use.

    Args:
        path: the database file (its directory is created), or a data directory holding ``ubi.sqlite3``.
        synchronous: ``FULL`` (fsync at every commit) or ``NORMAL`` (survives a killed process, not a
            power loss); see the module docstring.
    """

    def __init__(self, path: str | Path, *, synchronous: Literal["FULL", "NORMAL"] = "FULL") -> None:
        path = Path(path)
        self.path = path / FILENAME if path.suffix != ".sqlite3" else path
        if synchronous not in ("FULL", "NORMAL"):
            raise InputError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.synchronous = synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = self._connect()
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self._conn.close()
                raise InputError(f"{self.path}: log schema {version} is newer than this twostage ({SCHEMA_VERSION})")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    # ------------------------------------------------------------------------------------- writes
    def write(self, queries: Sequence[QueryRecord], events: Sequence[EventRecord]) -> None:
        """Insert both lists in one transaction (a query id already stored is replaced)."""
        if not queries and not events:
            return
        query_rows = [
            (
                q.query_id,
                q.user_query,
                q.client_id,
                epoch_ms(q.timestamp),
                q.experiment,
                q.arm,
                q.query_response_id,
                _dumps(list(q.query_response_hit_ids)),
                _dumps(q.query_attributes),
            )
            for q in queries
        ]
        event_rows = [
            (
                e.action_name,
                e.query_id,
                e.client_id,
                e.session_id,
                epoch_ms(e.timestamp),
                epoch_ms(e.received),
                e.object_id,
                e.ordinal,
                _dumps(e.event),
            )
            for e in events
        ]
        with self._lock, self._transaction():
            if query_rows:
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO ubi_queries ({_QUERY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", query_rows
                )
            if event_rows:
                self._conn.executemany(
                    f"INSERT INTO ubi_events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", event_rows
                )

    def purge(self, before: datetime) -> PurgeCount:
        """Delete queries timestamped and events received before ``before``, in one transaction."""
        cutoff = epoch_ms(before)
        with self._lock, self._transaction():
            queries = self._conn.execute("DELETE FROM ubi_queries WHERE timestamp < ?", (cutoff,)).rowcount
            events = self._conn.execute("DELETE FROM ubi_events WHERE received < ?", (cutoff,)).rowcount
        return PurgeCount(queries, events)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` when the body raised."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -------------------------------------------------------------------------------------- reads
    def queries(
        self, *, experiment: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[QueryRecord]:
        where, params = _range("timestamp", since, until)
        if experiment is not None:
            where.append("experiment = ?")
            params.append(experiment)
        sql = f"SELECT {_QUERY_COLUMNS} FROM ubi_queries {_where(where)} ORDER BY timestamp, query_id"
        for row in self._read(sql, params):
            yield QueryRecord(
                query_id=row[0],
                user_query=row[1],
                client_id=row[2],
                timestamp=from_ms(row[3]),
                query_response_id=row[6],
                query_response_hit_ids=tuple(json.loads(row[7])),
                query_attributes=json.loads(row[8]),
            )

    def events(
        self, *, experiment: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[EventRecord]:
        where, params = _range("e.timestamp", since, until)
        join = ""
        if experiment is not None:
            join = "JOIN ubi_queries q ON q.query_id = e.query_id"
            where.append("q.experiment = ?")
            params.append(experiment)
        columns = ", ".join(f"e.{c.strip()}" for c in _EVENT_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM ubi_events e {join} {_where(where)} ORDER BY e.timestamp, e.id"
        for row in self._read(sql, params):
            yield EventRecord(
                action_name=row[0],
                query_id=row[1],
                client_id=row[2],
                session_id=row[3],
                timestamp=from_ms(row[4]),
                received=from_ms(row[5]),
                object_id=row[6],
                ordinal=row[7],
                event=json.loads(row[8]),
            )

    def _read(self, sql: str, params: list[Any]) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` from a connection of their own (reads never wait for the writer in WAL mode)."""
        with closing(self._connect()) as conn:
            yield from conn.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteLogStore({str(self.path)!r}, synchronous={self.synchronous!r})"


def _range(column: str, since: datetime | None, until: datetime | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(epoch_ms(since))
    if until is not None:
        where.append(f"{column} < ?")
        params.append(epoch_ms(until))
    return where, params


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""
