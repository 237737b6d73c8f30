"""The judgement store: ``judgements.sqlite3`` in the service's data directory (beside the UBI log).

One row per (query, document, source, judge): a person's grade from the judging page (source
``human``, judge = the name they logged in with), the LLM judge's (``llm``, judge = ``lore:<prompt id>``)
or the click model's (``clicks``, judge = ``coec``). Grades are TREC's 0–3 (0 irrelevant … 3 perfectly
relevant); ``score`` keeps the source's raw value where it has one (the LLM's expected label, the COEC
ratio). A judge grading a pair again replaces their grade. A person's "skip" and "judge later" are
kept in ``deferrals`` so the queue does not serve them that pair again (skip) or serves it last (later).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from twostage_search.engine.errors import InputError
from twostage_search.service.judging.pairs import Pair
from twostage_search.service.ubi.records import epoch_ms, from_ms, utc_now

FILENAME = "judgements.sqlite3"
SCHEMA_VERSION = 1
GRADES = (0, 1, 2, 3)
SOURCES = ("human", "llm", "clicks")
Source = Literal["human", "llm", "clicks"]
Deferral = Literal["skip", "later"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    query_id TEXT NOT NULL,
    query TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    grade INTEGER NOT NULL CHECK (grade BETWEEN 0 AND 3),
    score REAL,
    source TEXT NOT NULL,
    judge TEXT NOT NULL,
    created INTEGER NOT NULL,            -- epoch milliseconds, UTC
    PRIMARY KEY (query_id, doc_id, source, judge)
);
CREATE INDEX IF NOT EXISTS judgements_source ON judgements (source);
CREATE TABLE IF NOT EXISTS deferrals (
    query_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    judge TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('skip', 'later')),
    created INTEGER NOT NULL,
    PRIMARY KEY (query_id, doc_id, judge)
);
CREATE TABLE IF NOT EXISTS pool (         -- pairs of query-set queries to judge (doc_id '' : none found)
    query_id TEXT NOT NULL,
    query TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    rank INTEGER NOT NULL,
    PRIMARY KEY (query_id, doc_id)
);
"""


@dataclass(frozen=True, slots=True)
class Judgement:
    """One grade of one (query, document) pair by one judge.

    Attributes:
        query_id: the query set's id, or :func:`~.pairs.query_key` of the text.
        query: the query text.
        doc_id: the document.
        grade: 0–3 (TREC: irrelevant, related, highly relevant, perfectly relevant).
        source: ``human``, ``llm`` or ``clicks``.
        judge: who graded: a person's name, ``lore:<prompt id>``, ``coec``.
        score: the source's raw value (LLM: expected label 1–4; clicks: COEC), if any.
        created: when it was stored (UTC).
    """

    query_id: str
    query: str
    doc_id: str
    grade: int
    source: Source
    judge: str
    score: float | None = None
    created: datetime | None = None

    def __post_init__(self) -> None:
        if self.grade not in GRADES:
            raise InputError(f"grade must be 0, 1, 2 or 3, got {self.grade!r}")
        if self.source not in SOURCES:
            raise InputError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not self.judge or not self.query_id or not self.doc_id:
            raise InputError("a judgement needs a query_id, a doc_id and a judge")


class JudgementStore:
    """Judgements in one SQLite file (WAL mode), created on first use; safe to share between threads.

    Args:
        path: the database file, or a data directory holding ``judgements.sqlite3``.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path / FILENAME if path.suffix != ".sqlite3" else path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=10000")
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self._conn.close()
                raise InputError(f"{self.path}: schema {version} is newer than this twostage ({SCHEMA_VERSION})")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")

    # ------------------------------------------------------------------------------------- writes
    def add(self, judgements: Iterable[Judgement]) -> int:
        """Store judgements in one transaction (a judge's earlier grade of a pair is replaced); a person's
        grade also clears their skip/later mark of that pair. Returns how many were stored."""
        now = epoch_ms(utc_now())
        rows = [
            (j.query_id, j.query, j.doc_id, j.grade, j.score, j.source, j.judge, _ms(j.created, now))
            for j in judgements
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO judgements VALUES (?,?,?,?,?,?,?,?)", rows)
                self._conn.executemany(
                    "DELETE FROM deferrals WHERE query_id = ? AND doc_id = ? AND judge = ?",
                    [(r[0], r[2], r[6]) for r in rows if r[5] == "human"],
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return len(rows)

    def defer(self, query_id: str, doc_id: str, judge: str, state: Deferral) -> None:
        """Record a person's ``skip`` (never serve them this pair again) or ``later`` (serve it last)."""
        if state not in ("skip", "later"):
            raise InputError(f"state must be skip or later, got {state!r}")
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO deferrals VALUES (?,?,?,?,?)",
                (query_id, doc_id, judge, state, epoch_ms(utc_now())),
            )

    def pool(self, pairs: Iterable[Pair]) -> None:
        """Add pairs of a query set to the judging pool (a pair already there keeps its rank)."""
        rows = [(p.query_id, p.query, p.doc_id, p.rank) for p in pairs]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT OR IGNORE INTO pool VALUES (?,?,?,?)", rows)
            self._conn.execute("COMMIT")

    # -------------------------------------------------------------------------------------- reads
    def pooled(self) -> list[Pair]:
        """The pool's pairs (the markers of queries that found nothing, too: doc id '')."""
        sql = "SELECT query_id, query, doc_id, rank FROM pool ORDER BY rank, query_id, doc_id"
        return [Pair(r[0], r[1], r[2], r[3]) for r in self._read(sql, [])]

    def grades_by(self, judge: str, query_id: str) -> dict[str, int]:
        """doc_id → the grade ``judge`` (a person) gave for ``query_id``."""
        sql = "SELECT doc_id, grade FROM judgements WHERE source = 'human' AND judge = ? AND query_id = ?"
        return {r[0]: r[1] for r in self._read(sql, [judge, query_id])}

    def judgements(self, *, sources: Sequence[str] | None = None) -> list[Judgement]:
        """Every judgement (of ``sources``), ordered by query id, doc id, source, judge."""
        where, params = "", list(sources or ())
        if sources:
            where = f"WHERE source IN ({','.join('?' * len(params))})"
        sql = (
            "SELECT query_id, query, doc_id, grade, source, judge, score, created FROM judgements "
            f"{where} ORDER BY query_id, doc_id, source, judge"
        )
        return [Judgement(r[0], r[1], r[2], r[3], r[4], r[5], r[6], from_ms(r[7])) for r in self._read(sql, params)]

    def human_counts(self) -> dict[tuple[str, str], int]:
        """(query_id, doc_id) → how many people graded it."""
        sql = "SELECT query_id, doc_id, count(*) FROM judgements WHERE source = 'human' GROUP BY query_id, doc_id"
        return {(r[0], r[1]): r[2] for r in self._read(sql, [])}

    def seen_by(self, judge: str) -> dict[tuple[str, str], str]:
        """(query_id, doc_id) → ``graded``, ``skip`` or ``later`` for one person."""
        sql = "SELECT query_id, doc_id, state FROM deferrals WHERE judge = ?"
        out: dict[tuple[str, str], str] = {(r[0], r[1]): r[2] for r in self._read(sql, [judge])}
        sql = "SELECT query_id, doc_id FROM judgements WHERE source = 'human' AND judge = ?"
        out.update({(r[0], r[1]): "graded" for r in self._read(sql, [judge])})
        return out

    def _read(self, sql: str, params: list[Any]) -> Iterator[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path, check_same_thread=False)) as conn:
            conn.execute("PRAGMA busy_timeout=10000")
            yield from conn.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"JudgementStore({str(self.path)!r})"


def _ms(moment: datetime | None, default: int) -> int:
    return epoch_ms(moment) if moment is not None else default
