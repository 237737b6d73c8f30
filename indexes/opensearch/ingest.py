"""Bulk ingest: encode, send with back-off, resume an unfinished build, check the count."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from twostage_search.engine.batching import chunked, progress_bar
from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.engine.retry import backoff_delay
from twostage_search.engine.types import Document
from twostage_search.indexes.opensearch.client import OpenSearchError, OpenSearchUnavailableError, short_error
from twostage_search.indexes.opensearch.mapping import fingerprint, index_body

if TYPE_CHECKING:
    from twostage_search.indexes.opensearch.settings import OpenSearchSettings

log = logging.getLogger(__name__)


def _retryable(status: object) -> bool:
    # "N/A" is opensearch-py's status for connection errors and timeouts.
    return not isinstance(status, int) or status == 429 or status >= 500


def bulk_index(client: Any, actions: list[dict[str, Any]], settings: OpenSearchSettings) -> int:
    """Send index actions with ``helpers.streaming_bulk``; retry what failed with 429/5xx/connection errors.

    Back-off: :func:`~twostage_search.engine.retry.backoff_delay` with base ``retry_backoff`` and cap
    ``max_backoff``, ``max_retries`` times.
    Actions carry ``_id = doc_id``, so a retried or re-sent document overwrites itself. A document the
    cluster rejects (4xx, e.g. a mapping error) raises :class:`OpenSearchError` at once. Returns the
    number of documents indexed.
    """
    helpers = require("opensearchpy.helpers", "opensearch")
    by_id = {a["_id"]: a for a in actions}
    pending = actions
    last = ""
    for attempt in range(settings.max_retries + 1):
        if attempt:
            delay = backoff_delay(attempt, base=settings.retry_backoff, cap=settings.max_backoff)
            log.warning(
                "bulk: %d document(s) not indexed (%s); retry %d/%d in %.2fs",
                len(pending), last, attempt, settings.max_retries, delay,
            )  # fmt: skip
            time.sleep(delay)
        failed: list[dict[str, Any]] = []
        for _, item in helpers.streaming_bulk(
            client,
            pending,
            chunk_size=max(len(pending), 1),
            raise_on_error=False,
            raise_on_exception=False,
            yield_ok=False,
        ):
            ((_, info),) = item.items()
            status = info.get("status")
            last = f"{f'HTTP {status}' if isinstance(status, int) else 'connection error'}: {_short_item(info)}"
            if not _retryable(status):
                raise OpenSearchError(f"OpenSearch rejected document {info.get('_id')!r}: {last}")
            failed.append(by_id[info["_id"]])
        if not failed:
            return len(actions)
        pending = failed
    raise OpenSearchUnavailableError(
        f"bulk indexing failed after {settings.max_retries} retries ({last}); the partial index is kept: "
        "run the same build again to resume"
    )


def _short_item(info: Mapping[str, Any]) -> str:
    err = info.get("error")
    if isinstance(err, Mapping):
        cause = err.get("caused_by")
        reason = cause.get("reason") if isinstance(cause, Mapping) else err.get("reason")
        return f"{err.get('type')}: {reason}"
    exc = info.get("exception")
    if isinstance(exc, BaseException):
        return short_error(exc)
    return " ".join(str(err).split())[:200]


def alias_targets(client: Any, alias: str) -> list[str]:
    if not client.indices.exists_alias(name=alias):
        return []
    return sorted(client.indices.get_alias(name=alias))


def prepare_physical(
    client: Any, settings: OpenSearchSettings, alias: str, build_meta: dict[str, Any], resume: bool, fields: DocFields
) -> tuple[str, bool]:
    """The physical index to fill: an unfinished build of ``alias`` to resume, or a new one."""
    if client.indices.exists(index=alias) and not client.indices.exists_alias(name=alias):
        raise InputError(f"OpenSearch already has an index (not an alias) named {alias!r}; choose another name")
    live = set(alias_targets(client, alias))
    unfinished = []
    for name, body in client.indices.get(index=f"{alias}--*").items():
        meta = body.get("mappings", {}).get("_meta", {}).get("twostage", {})
        if name not in live and meta.get("alias") == alias and meta.get("state") == "building":
            unfinished.append((name, meta))
    keep = None
    if resume:
        same = {k: v for k, v in build_meta.items() if k != "state"}
        for name, meta in sorted(unfinished, reverse=True):  # newest first (the name holds a timestamp)
            if {k: meta.get(k) for k in same} == same:
                keep = name
                break
    for name, _ in unfinished:
        if name != keep:
            log.info("deleting the stale unfinished build %s", name)
            client.indices.delete(index=name)
    if keep is not None:
        log.warning("resuming the unfinished build %s of %s", keep, alias)
        return keep, True
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    name = f"{alias}--{stamp}-{uuid.uuid4().hex[:6]}"
    client.indices.create(index=name, body=index_body(settings, build_meta, fields.properties, fields.index_settings))
    return name, False


def _present(client: Any, index: str, doc_ids: list[str]) -> dict[str, str]:
    """doc_id → stored fingerprint for the given ids that ``index`` already holds."""
    resp = client.mget(index=index, body={"ids": doc_ids}, _source_includes=["fp"])
    return {d["_id"]: d.get("_source", {}).get("fp", "") for d in resp["docs"] if d.get("found")}


def all_ids(client: Any, index: str, page: int = 1000) -> Iterator[str]:
    """Every document id in ``index``, in no particular order (a scroll through ``helpers.scan``)."""
    helpers = require("opensearchpy.helpers", "opensearch")
    query = {"query": {"match_all": {}}, "_source": False}
    for hit in helpers.scan(client, query=query, index=index, size=page):
        yield hit["_id"]


class DocFields(Protocol):
    """What one backend stores per document beside ``doc_id``, ``title``, ``text`` and ``fp``.

    ``properties`` is the mapping of those fields, ``index_settings`` any index settings they need
    (``{"knn": True}``), and calling it encodes a chunk of documents into their field values.
    """

    properties: dict[str, Any]
    index_settings: dict[str, Any]

    def __call__(self, docs: list[Document]) -> list[dict[str, Any]]: ...


class IngestStats(NamedTuple):
    docs: int
    skipped: int
    """Documents a resumed build found already indexed with the same content."""
    encode_seconds: float


def ingest(
    client: Any,
    settings: OpenSearchSettings,
    index: str,
    docs: Iterable[Document],
    *,
    fields: DocFields,
    threads: int,
    chunk_size: int,
    total: int | None,
    progress: bool,
    resumed: bool,
) -> tuple[IngestStats, set[str]]:
    """Encode and bulk-index ``docs``; up to ``threads`` bulk requests run while the next chunk encodes."""
    seen: set[str] = set()
    n_docs = n_skipped = 0
    encode_seconds = 0.0
    inflight: deque[Future[int]] = deque()
    with progress_bar(total, "index", progress) as bar, ThreadPoolExecutor(threads, "twostage-bulk") as pool:
        for chunk in chunked(docs, chunk_size):
            fps = {}
            for doc in chunk:
                if doc.doc_id in seen:
                    raise InputError(f"duplicate doc_id in corpus: {doc.doc_id!r}")
                seen.add(doc.doc_id)
                fps[doc.doc_id] = fingerprint(doc)
            todo = chunk
            if resumed:
                have = _present(client, index, list(fps))
                todo = [d for d in chunk if have.get(d.doc_id) != fps[d.doc_id]]
                n_skipped += len(chunk) - len(todo)
                bar.update(len(chunk) - len(todo))
            n_docs += len(chunk)
            if not todo:
                continue
            t0 = time.perf_counter()
            values = fields(todo)
            encode_seconds += time.perf_counter() - t0
            actions = []
            for doc, own in zip(todo, values, strict=True):
                source = {"doc_id": doc.doc_id, "title": doc.title, "text": doc.text, "fp": fps[doc.doc_id], **own}
                actions.append({"_op_type": "index", "_index": index, "_id": doc.doc_id, "_source": source})
            while len(inflight) >= threads:
                bar.update(inflight.popleft().result())
            inflight.append(pool.submit(bulk_index, client, actions, settings))
        while inflight:
            bar.update(inflight.popleft().result())
    return IngestStats(n_docs, n_skipped, encode_seconds), seen


def count_check(client: Any, index: str, seen: set[str], resumed: bool) -> int:
    """Refresh and check that exactly the documents of this build are searchable; return the count."""
    client.indices.refresh(index=index)
    count = int(client.count(index=index)["count"])
    if resumed and count > len(seen):
        strays = [doc_id for doc_id in all_ids(client, index) if doc_id not in seen]
        log.info("deleting %d document(s) of the resumed build that are no longer in the corpus", len(strays))
        helpers = require("opensearchpy.helpers", "opensearch")
        helpers.bulk(client, ({"_op_type": "delete", "_index": index, "_id": i} for i in strays))
        client.indices.refresh(index=index)
        count = int(client.count(index=index)["count"])
    if count != len(seen):
        raise OpenSearchError(f"count check failed: sent {len(seen)} documents, {index!r} holds {count}")
    return count


class Built(NamedTuple):
    physical: str
    doc_count: int
    stats: IngestStats
    replaced: list[str]


def build_alias(
    client: Any,
    settings: OpenSearchSettings,
    alias: str,
    build_meta: dict[str, Any],
    docs: Iterable[Document],
    *,
    fields: DocFields,
    threads: int,
    chunk_size: int,
    total: int | None,
    progress: bool,
    resume: bool,
) -> Built:
    """Fill a new (or resumed) physical index, check its count, then point ``alias`` at it in one call.

    Readers of the alias never see a half-built index. Bad input deletes the new physical index; any
    other failure keeps it, marked ``building``, for the next build with the same ``build_meta`` to resume.
    """
    physical, resumed = prepare_physical(client, settings, alias, build_meta, resume, fields)
    try:
        stats, seen = ingest(
            client, settings, physical, docs, fields=fields, threads=threads, chunk_size=chunk_size,
            total=total, progress=progress, resumed=resumed,
        )  # fmt: skip
        if stats.docs == 0:
            raise InputError("corpus is empty: nothing to index")
        count = count_check(client, physical, seen, resumed)
    except InputError:
        with contextlib.suppress(Exception):
            client.indices.delete(index=physical)
        raise
    except BaseException:
        log.warning("build of %s failed; kept the partial index %s to resume from", alias, physical)
        raise
    client.indices.put_settings(index=physical, body={"index": {"refresh_interval": settings.refresh_interval}})
    client.indices.put_mapping(index=physical, body={"_meta": {"twostage": {**build_meta, "state": "complete"}}})
    old = [name for name in alias_targets(client, alias) if name != physical]
    actions = [{"remove": {"index": name, "alias": alias}} for name in old]
    client.indices.update_aliases(body={"actions": [*actions, {"add": {"index": physical, "alias": alias}}]})
    for name in old:
        client.indices.delete(index=name)
    return Built(physical, count, stats, old)
