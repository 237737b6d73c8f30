"""UBI query and event records, and the :class:`LogStore` protocol every log backend implements.

Field names follow the UBI spec (schema 1.3.0): a query has ``query_id``, ``user_query``, ``client_id``,
``timestamp``, ``query_response_id``, ``query_response_hit_ids`` and free-form ``query_attributes``; an
event has ``action_name``, ``query_id``, ``session_id``, ``client_id``, ``timestamp`` and
``event_attributes`` (``object.object_id``, ``position.ordinal``, …).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

DEFAULT_DATA_DIR = Path("var/service")
"""The service's data directory unless configured (``TWOSTAGE_DATA_DIR``); the log lives in it."""

QUERY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,99}$"
"""A query id: at most 100 characters (UBI's limit) of letters, digits and ``_ . : @ + -`` (a UUID fits)."""

MAX_ID_CHARS = 100
"""UBI's limit on ``client_id``, ``session_id``, ``action_name`` (OpenSearch indexes no longer keyword)."""


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One search as served: the UBI query record.

    Attributes:
        query_id: the id the answer carried (joins the events of this search).
        user_query: the query text as sent.
        client_id: the user or client the request named (``user_id`` or the ``X-Client-ID`` header), if any.
        timestamp: when the service received the search (UTC).
        query_response_id: the request id of the answer.
        query_response_hit_ids: the served documents' ids, in served order.
        query_attributes: experiment, arm, config version, depths and the cost record (JSON-serialisable;
            values may be frozen dataclasses such as ``StageCost``, stored as objects).
    """

    query_id: str
    user_query: str
    client_id: str | None
    timestamp: datetime
    query_response_id: str
    query_response_hit_ids: tuple[str, ...]
    query_attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def experiment(self) -> str | None:
        value = self.query_attributes.get("experiment")
        return value if isinstance(value, str) else None

    @property
    def arm(self) -> str | None:
        value = self.query_attributes.get("arm")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One UBI event as accepted by ``POST /events``.

    Attributes:
        action_name: ``impression``, ``click``, ``add_to_cart``, ``purchase``, … (a configured list).
        query_id: the search the event belongs to.
        client_id: the user or client.
        timestamp: when the event happened (the client's clock, UTC).
        received: when the service accepted it (UTC); retention counts from here.
        session_id: the client's session, if sent.
        object_id: ``event_attributes.object.object_id`` (the document's id), if sent.
        ordinal: ``event_attributes.position.ordinal`` (1 = the first hit), if sent.
        event: the whole event as sent (UBI field names; extra fields kept).
    """

    action_name: str
    query_id: str
    client_id: str
    timestamp: datetime
    received: datetime
    session_id: str | None = None
    object_id: str | None = None
    ordinal: int | None = None
    event: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PurgeCount:
    """Records deleted by one purge."""

    queries: int
    events: int


class RejectedRecords(Exception):
    """The store refused some records of a write (e.g. OpenSearch rejected bulk items) and kept none of it.

    The writer then writes that batch's parts one by one, so one client's rejected events do not fail
    the other batches of the same commit.
    """


@runtime_checkable
class LogStore(Protocol):
    """Where query and event records go: the embedded SQLite file or OpenSearch's ``ubi_*`` indices.

    ``write`` is called by one writer thread with a batch of queued records and must be atomic and
    durable when it returns: one transaction (SQLite) or one acknowledged bulk request (OpenSearch; a
    partly rejected one is undone and raises :class:`RejectedRecords`). A query record whose
    ``query_id`` is already stored replaces it. Reads may run on other threads.
    """

    def write(self, queries: Sequence[QueryRecord], events: Sequence[EventRecord]) -> None:
        """Store both lists in one atomic, durable write."""
        ...

    def queries(
        self, *, experiment: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[QueryRecord]:
        """Query records (of ``experiment``; ``since <= timestamp < until``), oldest first."""
        ...

    def events(
        self, *, experiment: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[EventRecord]:
        """Events (whose query was logged under ``experiment``; ``since <= timestamp < until``), oldest first."""
        ...

    def purge(self, before: datetime) -> PurgeCount:
        """Delete queries timestamped and events received before ``before`` (SQLite: in one transaction;
        OpenSearch: one ``delete_by_query`` per index)."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------ helpers
def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """``2026-12-06T11:13:29.123Z``: UTC, milliseconds, trailing Z (OpenSearch's ``strict_date_time``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since 1970 (integer arithmetic: no float rounding)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def jsonable(value: object) -> Any:
    """``json.dumps`` default: frozen dataclasses (``StageCost``) become objects, tuples stay lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
