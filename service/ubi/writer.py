"""One writer thread in front of a :class:`~.records.LogStore`: a bounded queue and group commit.

Request handlers never touch the store. A search hands its query record to the queue with
``put_nowait`` (:meth:`LogWriter.log_query`): when the queue is full the record is dropped and the caller
counts it, and the search is served anyway. An event batch is queued with a future
(:meth:`LogWriter.submit_events`) that the handler awaits: it resolves once a commit covers the batch, so
an acknowledged event is on disk; a full queue raises :class:`LogFull` at once (the handler answers 429).

The thread takes whatever is queued (up to ``batch`` items), writes it in one ``store.write`` (one
transaction: one fsync for many requests), resolves the batch's futures, and repeats. When the store
rejects part of a write and keeps none of it (:class:`~.records.RejectedRecords`, OpenSearch), the parts
are written one by one, so only the batch that holds the rejected records fails. It also purges
records older than ``max_age`` at start and every ``purge_every_s`` seconds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import timedelta

from twostage_search.service.ubi.records import EventRecord, LogStore, QueryRecord, RejectedRecords, utc_now

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1024
PURGE_EVERY_S = 3600.0


class LogFull(Exception):
    """The writer's queue is full: retry later."""


class LogClosed(Exception):
    """The writer has stopped (the service is shutting down)."""


@dataclass(frozen=True, slots=True)
class _Events:
    records: Sequence[EventRecord]
    done: Future[None]


_STOP = object()


class LogWriter:
    """The log's single writer thread (see the module docstring).

    Args:
        store: where batches go; closed by :meth:`close`.
        maxsize: queued items (query records and event batches) beyond which new ones are refused.
        batch: most items written in one commit.
        max_age: records older than this are purged (``None``: kept).
        purge_every_s: how often the purge runs while serving.
        on_lost: called with the number of query records a failed write lost (for a metric).
    """

    def __init__(
        self,
        store: LogStore,
        *,
        maxsize: int,
        batch: int = DEFAULT_BATCH,
        max_age: timedelta | None = None,
        purge_every_s: float = PURGE_EVERY_S,
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        if maxsize < 1 or batch < 1:
            raise ValueError("maxsize and batch must be at least 1")
        self.store, self.batch, self.max_age, self.purge_every_s = store, batch, max_age, purge_every_s
        self._on_lost = on_lost
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._lock = threading.Lock()  # orders "closed?" checks against the stop marker
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ubi-log-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Items waiting in the queue (not counting a batch being written)."""
        return self._queue.qsize()

    def log_query(self, record: QueryRecord) -> bool:
        """Queue ``record`` without waiting; ``False`` when the queue is full or closed (record dropped)."""
        with self._lock:
            if self._closed:
                return False
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                return False
        return True

    def submit_events(self, records: Sequence[EventRecord]) -> Future[None]:
        """Queue an event batch; the future resolves when it is committed (or fails with the store's error).

        Raises :class:`LogFull` when the queue is full, :class:`LogClosed` after :meth:`close`.
        """
        item = _Events(tuple(records), Future())
        with self._lock:
            if self._closed:
                raise LogClosed("the log writer has stopped")
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                raise LogFull(f"{self._queue.maxsize} items waiting for the log writer") from None
        return item.done

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, stop the thread, close the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout_s)  # waits while full; the thread keeps draining
        except queue.Full:
            log.error("the log writer's queue stayed full for %.0f s at shutdown", timeout_s)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("the log writer did not finish within %.0f s; closing the store under it", timeout_s)
        self.store.close()

    # ------------------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        next_purge = time.monotonic()
        stopping = False
        while not stopping:
            if self.max_age is not None and time.monotonic() >= next_purge:
                self._purge()
                next_purge = time.monotonic() + self.purge_every_s
            timeout = max(next_purge - time.monotonic(), 0.001) if self.max_age is not None else None
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            items = [first]
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in items):
                stopping = True
                items = [i for i in items if i is not _STOP]
                items += self._drain()  # closed: nothing new arrives
            self._write(items)

    def _drain(self) -> list[object]:
        rest: list[object] = []
        while True:
            try:
                rest.append(self._queue.get_nowait())
            except queue.Empty:
                return rest

    def _write(self, items: list[object]) -> None:
        queries = [i for i in items if isinstance(i, QueryRecord)]
        batches = [i for i in items if isinstance(i, _Events)]
        if not queries and not batches:
            return
        error = self._commit(queries, batches)
        if isinstance(error, RejectedRecords) and len(batches) + bool(queries) > 1:
            # the store kept nothing: write the parts alone, so that one client's rejected events
            # (e.g. a field OpenSearch cannot map) do not fail the other batches of this commit
            log.warning("log write rejected (%s); writing its %d parts one by one", error, len(batches) + bool(queries))
            parts: list[tuple[list[QueryRecord], list[_Events]]] = [(queries, [])] if queries else []
            for q, b in [*parts, *(([], [b]) for b in batches)]:
                self._finish(q, b, self._commit(q, b))
            return
        self._finish(queries, batches, error)

    def _commit(self, queries: list[QueryRecord], batches: list[_Events]) -> Exception | None:
        try:
            self.store.write(queries, [e for b in batches for e in b.records])
        except Exception as exc:
            return exc
        return None

    def _finish(self, queries: list[QueryRecord], batches: list[_Events], error: Exception | None) -> None:
        if error is not None:
            log.error(
                "log write failed: %d query records lost, %d event batches refused",
                len(queries), len(batches), exc_info=error,
            )  # fmt: skip
            if queries and self._on_lost is not None:
                self._on_lost(len(queries))
        for b in batches:
            _settle(b.done, error)

    def _purge(self) -> None:
        assert self.max_age is not None
        try:
            count = self.store.purge(utc_now() - self.max_age)
        except Exception:
            log.exception("log purge failed")
            return
        if count.queries or count.events:
            log.info("purged %d query records and %d events older than %s", count.queries, count.events, self.max_age)


def _settle(done: Future[None], error: BaseException | None) -> None:
    """Resolve a batch's future (a waiter that was cancelled has nobody to tell)."""
    try:
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
    except InvalidStateError:
        pass
