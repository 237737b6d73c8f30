"""The scale-out log store: OpenSearch indices ``ubi_queries`` and ``ubi_events`` (the ``opensearch`` extra).

The indices have the mappings of OpenSearch's User Behavior Insights plugin (schema 1.3.0), so UBI's
dashboards and the Search Relevance Workbench read them as they are, with three changes:
``user_query`` (both indices) and ``query_response_hit_ids`` keep keywords up to 8,191 characters
(``ignore_above``: a longer one stays in ``_source`` but is not searchable, where UBI's mapping would
reject the document), ``session_id`` is a keyword, and every event carries ``twostage.received`` (when the
service accepted it: retention counts from there) and ``twostage.seq`` (write order, the tie-break of
reads). An index that already exists (e.g. made by the UBI plugin) is used as it is, with those
``twostage`` fields added to its mapping.

**Writes.** :meth:`OpenSearchLogStore.write` sends one batch of the single writer as one ``_bulk`` request
(``helpers.streaming_bulk``): query records with ``_id = query_id`` (a re-sent record replaces itself),
events with a fresh ``_id`` each. It returns only when OpenSearch acknowledged every item. With the index
default ``index.translog.durability: request`` an acknowledged document is fsynced to the translog of its
primary shard (and of the in-sync replicas), so it survives a killed node. It becomes *searchable* at the
next refresh (``index.refresh_interval``, 1 s by default) unless ``refresh="wait_for"``, which makes the
bulk request wait for that refresh.

**Partial failures.** OpenSearch has no transaction over several documents. When some items of a bulk
request fail (a mapping conflict, a blocked or read-only index, a full disk), the store deletes the items
of the same request that were indexed and raises :class:`~.records.RejectedRecords`: the writer then
answers that batch 503 and keeps nothing of it. If the clean-up itself fails, the documents it could not
delete stay (logged with their count) and the write raises :class:`OpenSearchError`. A whole request that
fails (cluster unreachable, timeout) raises :class:`OpenSearchUnavailableError`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.indexes.opensearch.client import (
    OpenSearchError,
    OpenSearchUnavailableError,
    connect,
    resolve_settings,
    short_error,
    translate_errors,
)
from twostage_search.service.ubi.records import (
    EventRecord,
    PurgeCount,
    QueryRecord,
    RejectedRecords,
    epoch_ms,
    iso,
    jsonable,
)

if TYPE_CHECKING:
    from twostage_search.indexes.opensearch.settings import OpenSearchSettings

log = logging.getLogger(__name__)

QUERIES = "ubi_queries"
EVENTS = "ubi_events"
OURS = "twostage"
"""The events' own object: ``received`` (date) and ``seq`` (keyword); not part of the event as sent."""
PAGE = 1000
LONG_KEYWORD = 8191  # characters: at most 32,764 bytes of UTF-8, under Lucene's 32,766-byte term limit

Refresh = Literal["false", "wait_for"]

QUERIES_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "timestamp": {"type": "date", "format": "strict_date_time"},
        "query_id": {"type": "keyword", "ignore_above": 100},
        "query": {"type": "text"},
        "query_response_id": {"type": "keyword", "ignore_above": 100},
        "query_response_hit_ids": {"type": "keyword", "ignore_above": LONG_KEYWORD},
        "user_query": {"type": "keyword", "ignore_above": LONG_KEYWORD},
        "query_attributes": {"type": "flat_object"},
        "client_id": {"type": "keyword", "ignore_above": 100},
        "application": {"type": "keyword", "ignore_above": 100},
    },
}
_TEXT_256 = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
OUR_EVENT_FIELDS: dict[str, Any] = {
    OURS: {"properties": {"received": {"type": "date", "format": "strict_date_time"}, "seq": {"type": "keyword"}}}
}
EVENTS_MAPPING: dict[str, Any] = {
    "properties": {
        "application": {"type": "keyword", "ignore_above": 256},
        "action_name": {"type": "keyword", "ignore_above": 100},
        "client_id": {"type": "keyword", "ignore_above": 100},
        "query_id": {"type": "keyword", "ignore_above": 100},
        "session_id": {"type": "keyword", "ignore_above": 100},
        "message": {"type": "keyword", "ignore_above": 1024},
        "message_type": {"type": "keyword", "ignore_above": 100},
        "user_query": {"type": "keyword", "ignore_above": LONG_KEYWORD},
        "timestamp": {"type": "date", "format": "strict_date_time", "ignore_malformed": True, "doc_values": True},
        "event_attributes": {
            "dynamic": True,
            "properties": {
                "position": {
                    "properties": {
                        **{n: {"type": "integer"} for n in ("ordinal", "x", "y", "page_depth", "scroll_depth")},
                        "trail": _TEXT_256,
                    }
                },
                "object": {
                    "properties": {
                        "internal_id": {"type": "keyword"},
                        "object_id": {"type": "keyword", "ignore_above": 256},
                        "object_id_field": {"type": "keyword", "ignore_above": 100},
                        "name": {"type": "keyword", "ignore_above": 256},
                        "description": _TEXT_256,
                        "object_detail": {"type": "object"},
                    }
                },
            },
        },
        **OUR_EVENT_FIELDS,
    }
}


class OpenSearchLogStore:
    """A :class:`~twostage_search.service.ubi.records.LogStore` in two OpenSearch indices (module docstring).

    Args:
        settings: the cluster (default: ``TWOSTAGE_OPENSEARCH_*`` / ``OPENSEARCH_URL``, as for the index).
        prefix: put before the index names (``prefix + "ubi_queries"``), e.g. one pair per environment.
        refresh: ``"false"`` (searchable within the refresh interval) or ``"wait_for"`` (a write returns
            once its documents are searchable).
        create: create missing indices; else a missing index is an :class:`InputError` (readers, purge).
    """

    def __init__(
        self,
        settings: OpenSearchSettings | None = None,
        *,
        prefix: str = "",
        refresh: Refresh = "false",
        create: bool = True,
    ) -> None:
        require("opensearchpy", "opensearch")
        if refresh not in ("false", "wait_for"):
            raise InputError(f"refresh must be false or wait_for, got {refresh!r}")
        self.settings = resolve_settings(settings)
        self.queries_index, self.events_index = f"{prefix}{QUERIES}", f"{prefix}{EVENTS}"
        self.refresh = refresh
        self.client, self.server = connect(self.settings)
        self._where = ", ".join(self.settings.hosts)
        try:
            with translate_errors(self.settings, "preparing the log indices"):
                self._prepare(self.queries_index, QUERIES_MAPPING, None, create)
                self._prepare(self.events_index, EVENTS_MAPPING, OUR_EVENT_FIELDS, create)
        except BaseException:
            self.client.close()
            raise

    def _prepare(self, index: str, mapping: dict[str, Any], extra: dict[str, Any] | None, create: bool) -> None:
        indices = self.client.indices
        if indices.exists(index=index):
            if extra is not None:  # additive: an index made by the UBI plugin gains our fields
                indices.put_mapping(index=index, body={"properties": extra})
            return
        if not create:
            raise InputError(f"no query and event log in OpenSearch at {self._where}: index {index!r} missing")
        body = {
            "settings": {"number_of_shards": self.settings.shards, "number_of_replicas": self.settings.replicas},
            "mappings": mapping,
        }
        exc_mod = require("opensearchpy", "opensearch").exceptions
        try:
            indices.create(index=index, body=body)
            log.info("created the log index %s at %s", index, self._where)
        except exc_mod.RequestError as exc:  # another service instance created it first
            if "resource_already_exists" not in str(exc.error):
                raise

    # ------------------------------------------------------------------------------------- writes
    def write(self, queries: Sequence[QueryRecord], events: Sequence[EventRecord]) -> None:
        """Index both lists in one bulk request; return once every item is acknowledged (module docstring)."""
        if not queries and not events:
            return
        actions = [{"_index": self.queries_index, "_id": q.query_id, "_source": query_document(q)} for q in queries]
        batch = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        for i, e in enumerate(events):
            seq = f"{batch}-{i:06d}"
            actions.append({"_index": self.events_index, "_id": seq, "_source": event_document(e, seq)})
        helpers = require("opensearchpy.helpers", "opensearch")
        indexed: list[tuple[str, str]] = []
        failures: list[str] = []
        request_failed = False
        with translate_errors(self.settings, "writing the log"):
            for ok, item in helpers.streaming_bulk(
                self.client,
                actions,
                chunk_size=len(actions),
                max_chunk_bytes=2**31 - 1,  # one request: one acknowledgement for the whole batch
                raise_on_error=False,
                raise_on_exception=False,
                refresh=self.refresh,
            ):
                ((_, info),) = item.items()
                if ok:
                    indexed.append((info["_index"], info["_id"]))
                else:
                    failures.append(_item_error(info))
                    request_failed = request_failed or "exception" in info
        if not failures:
            return
        if request_failed:  # the bulk request itself failed: no item was indexed
            raise OpenSearchUnavailableError(f"cannot write the log to OpenSearch at {self._where}: {failures[0]}")
        self._undo(indexed)
        log.warning("OpenSearch at %s rejected %d of %d log records", self._where, len(failures), len(actions))
        raise RejectedRecords(f"OpenSearch rejected {len(failures)} of {len(actions)} records: {failures[0]}")

    def _undo(self, indexed: list[tuple[str, str]]) -> None:
        """Delete what a failed bulk request indexed, so the batch is all or nothing."""
        if not indexed:
            return
        helpers = require("opensearchpy.helpers", "opensearch")
        deletes = [{"_op_type": "delete", "_index": index, "_id": _id} for index, _id in indexed]
        try:
            _, errors = helpers.bulk(
                self.client, deletes, chunk_size=len(deletes), raise_on_error=False, refresh=self.refresh
            )
        except Exception as exc:  # transport error: nothing is known to be deleted
            errors = [{"delete": {"error": short_error(exc)}}] * len(deletes)
        left = [e for e in errors if e.get("delete", {}).get("status") != 404]  # 404: not there, as wanted
        if left:
            log.error("a failed log write left %d of its records in OpenSearch (clean-up failed)", len(left))
            raise OpenSearchError(
                f"OpenSearch at {self._where} rejected part of a log write and {len(left)} records of it "
                "could not be removed again"
            )

    def purge(self, before: datetime) -> PurgeCount:
        """``delete_by_query``: queries timestamped and events received before ``before`` (two requests)."""
        counts = []
        for index, field in ((self.queries_index, "timestamp"), (self.events_index, f"{OURS}.received")):
            query = {"range": {field: {"lt": epoch_ms(before), "format": "epoch_millis"}}}
            with translate_errors(self.settings, f"purging {index}"):
                body = {"query": query}
                done = self.client.delete_by_query(index=index, body=body, conflicts="proceed", refresh=True)
            if done.get("failures"):
                raise OpenSearchError(f"purging {index} at {self._where} failed: {done['failures'][0]}")
            counts.append(int(done.get("deleted", 0)))
        return PurgeCount(*counts)

    # -------------------------------------------------------------------------------------- reads
    def queries(
        self, *, experiment: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[QueryRecord]:
        filters = _range("timestamp", since, until)
        if experiment is not None:
            filters.append({"term": {"query_attributes.experiment": experiment}})
        sort = [{"timestamp": "asc"}, {"query_id": "asc"}]
        for source in self._scan(self.queries_index, filters, sort):
            yield query_record(source)

    def events(
        self, *, experiment: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[EventRecord]:
        """Events oldest first; with ``experiment``, those whose query record is of it (joined here)."""
        wanted = {q.query_id for q in self.queries(experiment=experiment)} if experiment is not None else None
        sort = [{"timestamp": "asc"}, {f"{OURS}.seq": "asc"}]
        for source in self._scan(self.events_index, _range("timestamp", since, until), sort):
            if wanted is None or source.get("query_id") in wanted:
                yield event_record(source)

    def _scan(self, index: str, filters: list[dict[str, Any]], sort: list[dict[str, str]]) -> Iterator[dict[str, Any]]:
        """Every matching ``_source`` in ``sort`` order, a page at a time (``search_after``)."""
        body: dict[str, Any] = {"query": {"bool": {"filter": filters}}, "sort": sort, "size": PAGE}
        body["track_total_hits"] = False
        while True:
            with translate_errors(self.settings, f"reading {index}"):
                hits = self.client.search(index=index, body=body)["hits"]["hits"]
            for hit in hits:
                yield hit["_source"]
            if len(hits) < PAGE:
                return
            body["search_after"] = hits[-1]["sort"]

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"OpenSearchLogStore({self._where!r}, {self.queries_index!r}, {self.events_index!r})"


# ------------------------------------------------------------------------------------ documents
def _plain(value: object) -> Any:
    """JSON types only (cost records are frozen dataclasses)."""
    return json.loads(json.dumps(value, default=jsonable))


def query_document(q: QueryRecord) -> dict[str, Any]:
    return {
        "query_id": q.query_id,
        "user_query": q.user_query,
        "client_id": q.client_id,
        "timestamp": iso(q.timestamp),
        "query_response_id": q.query_response_id,
        "query_response_hit_ids": list(q.query_response_hit_ids),
        "query_attributes": _plain(q.query_attributes),
    }


def event_document(e: EventRecord, seq: str) -> dict[str, Any]:
    """The event as sent, its record's fields filled in where it lacks them, and ``twostage``."""
    doc: dict[str, Any] = _plain(e.event)
    doc.update(action_name=e.action_name, query_id=e.query_id, client_id=e.client_id, timestamp=iso(e.timestamp))
    if e.session_id is not None:
        doc["session_id"] = e.session_id
    attributes = doc.setdefault("event_attributes", {})
    if e.object_id is not None:
        attributes.setdefault("object", {}).setdefault("object_id", e.object_id)
    if e.ordinal is not None:
        attributes.setdefault("position", {}).setdefault("ordinal", e.ordinal)
    if not attributes:
        del doc["event_attributes"]
    doc[OURS] = {"received": iso(e.received), "seq": seq}
    return doc


def query_record(source: Mapping[str, Any]) -> QueryRecord:
    return QueryRecord(
        query_id=source["query_id"],
        user_query=source["user_query"],
        client_id=source.get("client_id"),
        timestamp=datetime.fromisoformat(source["timestamp"]),
        query_response_id=source["query_response_id"],
        query_response_hit_ids=tuple(source.get("query_response_hit_ids") or ()),
        query_attributes=source.get("query_attributes") or {},
    )


def event_record(source: Mapping[str, Any]) -> EventRecord:
    event = {k: v for k, v in source.items() if k != OURS}
    attributes = event.get("event_attributes") or {}
    obj, position = attributes.get("object") or {}, attributes.get("position") or {}
    object_id = obj.get("object_id")
    return EventRecord(
        action_name=event["action_name"],
        query_id=event["query_id"],
        client_id=event["client_id"],
        timestamp=datetime.fromisoformat(event["timestamp"]),
        received=datetime.fromisoformat(source[OURS]["received"]),
        session_id=event.get("session_id"),
        object_id=str(object_id) if object_id is not None else None,
        ordinal=position.get("ordinal"),
        event=event,
    )


def _range(field: str, since: datetime | None, until: datetime | None) -> list[dict[str, Any]]:
    bounds: dict[str, Any] = {}
    if since is not None:
        bounds["gte"] = epoch_ms(since)
    if until is not None:
        bounds["lt"] = epoch_ms(until)
    return [{"range": {field: {**bounds, "format": "epoch_millis"}}}] if bounds else []


def _item_error(info: Mapping[str, Any]) -> str:
    status = info.get("status")
    err = info.get("error")
    if isinstance(err, Mapping):
        cause = err.get("caused_by")
        reason = f"{err.get('reason')}" + (f" ({cause.get('reason')})" if isinstance(cause, Mapping) else "")
        return f"HTTP {status} {err.get('type')}: {' '.join(reason.split())[:300]}"
    exc = info.get("exception")
    if isinstance(exc, BaseException):  # the request itself failed (status "N/A": no connection)
        return f"{f'HTTP {status}' if isinstance(status, int) else 'connection error'}: {short_error(exc)}"
    return f"HTTP {status}: {' '.join(str(err).split())[:200]}"
