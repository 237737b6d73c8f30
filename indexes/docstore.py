"""The document store of an index: ``doc_id`` → title and text, in SQLite (stdlib, read-only at search).

An index's files never change after its build (a rebuild writes a new directory), so searches open the
database as immutable (no locks or change checks per statement) and memory-mapped (pages read from the
OS page cache without a copy into SQLite's own cache).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Document, RankedList

FILENAME = "docs.sqlite"
MMAP_BYTES = 1 << 40  # map the whole file (SQLite caps it at its compile-time limit, 2 GiB by default)


class DocStoreWriter:
    """Appends documents to a new ``path / docs.sqlite`` (used inside an atomic index build)."""

    def __init__(self, path: Path) -> None:
        self._con = sqlite3.connect(path / FILENAME)
        self._con.execute("CREATE TABLE docs (doc_id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL)")

    def add(self, docs: Iterable[Document]) -> None:
        try:
            self._con.executemany("INSERT INTO docs VALUES (?, ?, ?)", ((d.doc_id, d.title, d.text) for d in docs))
        except sqlite3.IntegrityError as exc:
            raise InputError(f"duplicate doc_id in corpus ({exc})") from None

    def __enter__(self) -> DocStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._con.commit()
        self._con.close()


class DocStore:
    """Read-only lookups of stored documents, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path / FILENAME
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            con.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            self._local.con = con
        return con

    def get_many(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        if not doc_ids:
            return {}
        out: dict[str, Document] = {}
        con = self._con()
        for start in range(0, len(doc_ids), 500):
            chunk = list(doc_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for doc_id, title, text in con.execute(
                f"SELECT doc_id, title, text FROM docs WHERE doc_id IN ({marks})", chunk
            ):
                out[doc_id] = Document(doc_id, text, title)
        return out

    def with_texts(self, ranking: RankedList) -> RankedList:
        """``ranking`` (same ids, scores and order) with each document's stored text and title."""
        docs = self.get_many(ranking.doc_ids)
        if len(docs) == len(ranking):  # every document found (the usual case): same ranking, texts added
            return RankedList.from_sorted(ranking.query_id, ((item.doc_id, item.score) for item in ranking), docs)
        return RankedList(
            ranking.query_id,
            tuple(
                dataclasses.replace(item, text=docs[item.doc_id].text, title=docs[item.doc_id].title)
                if item.doc_id in docs
                else item
                for item in ranking
            ),
        )

    def documents(self, batch: int = 1000) -> Iterator[Document]:
        """Every stored document, in the order they were added."""
        cursor = self._con().execute("SELECT doc_id, title, text FROM docs ORDER BY rowid")
        while rows := cursor.fetchmany(batch):
            yield from (Document(doc_id, text, title) for doc_id, title, text in rows)

    def __len__(self) -> int:
        return int(self._con().execute("SELECT COUNT(*) FROM docs").fetchone()[0])
