"""Scale-out SPLADE first stage on an OpenSearch cluster, through opensearch-py.

**Same numbers as the embedded index.** Documents are encoded and quantised exactly as for
``lucene-impact`` (``SparseVector.quantize(scale)``, integer impacts) and stored in a ``rank_features``
field. A query is a ``bool.should`` of ``rank_feature`` clauses with ``linear`` scoring and the query's
integer impacts as boosts: OpenSearch's linear score is ``boost × stored value`` and ``should`` clauses
add up, so a document's score is the integer dot product of the two quantised vectors, and the ranking
equals the embedded index's. Scores are reported divided by ``scale**2``. With ``query_mode=
"neural_sparse"`` the same weights go in a ``neural_sparse`` query's ``query_tokens`` map (the
neural-search plugin scores it with the same linear feature queries); a server without it (osmem, a
cluster without the plugin) answers 400, and the retriever falls back to ``rank_feature`` with a warning.

**Feature names.** ``rank_features`` rejects dots in feature names, and the ``rank_feature`` query
splits ``field.feature`` at the last dot, so wordpiece terms such as ``.`` or ``u.s`` are escaped
reversibly: ``%`` → ``%25`` first, then ``.`` → ``%2E`` (after escaping, every ``%`` starts an escape,
so :func:`unescape_term` is exact).

**Index lifecycle.** The local directory holds only ``meta.json`` (the cluster holds the documents,
their vectors, title and text). Searches go through an alias (``meta.json``'s ``opensearch.alias``);
each build writes a new physical index ``ALIAS--TIMESTAMP-RANDOM`` and, after a count check (documents
sent = documents searchable), swaps the alias to it in one ``_aliases`` call and deletes the old one,
so readers never see a half-built index. Documents are indexed with ``_id = doc_id`` (re-sending one
overwrites it, never duplicates it), and bulk requests are retried with exponential back-off on 429,
5xx and connection errors. A build that fails anyway keeps its partial physical index, marked
``building`` in the mapping's ``_meta``; the next build of the same alias with the same encoder and
scale resumes it: documents already there with the same content fingerprint are neither re-encoded
nor re-sent, and documents no longer in the corpus are deleted before the count check.

Connection settings: :class:`indexes.opensearch_settings.OpenSearchSettings` (environment
``TWOSTAGE_OPENSEARCH_*`` and ``OPENSEARCH_URL``); credentials are never logged nor written to
``meta.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from twostage_search.engine.cost import StageCost
from twostage_search.engine.encoders import SparseEncoder, create_encoder
from twostage_search.engine.errors import BackendUnavailableError, IndexLoadError, InputError, TwoStageError
from twostage_search.engine.optional import require
from twostage_search.engine.types import Candidate, Document, Query, RankedList, SparseVector
from twostage_search.indexes.meta import atomic_index, read_meta, write_meta

if TYPE_CHECKING:
    from twostage_search.indexes.opensearch_settings import OpenSearchSettings, QueryMode

log = logging.getLogger(__name__)

FIELD = "splade"
"""The ``rank_features`` field holding the quantised SPLADE document terms."""
SOURCE_FIELDS = ["doc_id", "title", "text"]
MAX_CLAUSES = 1024
"""OpenSearch's default ``indices.query.bool.max_clause_count``; longer queries are pruned to it."""
ESCAPE_SCHEME = "percent-v1"
_FORMAT = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,199}$")


class OpenSearchError(TwoStageError):
    """The cluster refused an operation (bad credentials, a rejected document, a failed count check)."""


class OpenSearchUnavailableError(OpenSearchError, BackendUnavailableError):
    """The cluster cannot be reached (connection refused, timeout, TLS failure) or kept failing."""


class OpenSearchIndexMissingError(OpenSearchError, IndexLoadError):
    """``meta.json`` names an alias that the cluster does not have (deleted, or a reset test cluster)."""


# ----------------------------------------------------------------------------------- feature names
_UNESCAPE_RE = re.compile(r"%(25|2E)")


def escape_term(term: str) -> str:
    """A SPLADE term as a ``rank_features`` feature name: ``%`` → ``%25``, then ``.`` → ``%2E``."""
    return term.replace("%", "%25").replace(".", "%2E")


def unescape_term(name: str) -> str:
    """Inverse of :func:`escape_term`."""
    return _UNESCAPE_RE.sub(lambda m: "%" if m.group(1) == "25" else ".", name)


def default_alias(path: str | Path) -> str:
    """``twostage-NAME-HASH``: stable for one index directory (so a rebuild swaps it), distinct across them."""
    path = Path(path).absolute()
    name = re.sub(r"[^a-z0-9_-]+", "-", path.name.lower()).strip("-_") or "index"
    return f"twostage-{name[:60]}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def fingerprint(doc: Document) -> str:
    """Content hash of a document, so a resumed build re-sends documents whose text changed."""
    return hashlib.blake2b(f"{doc.title}\x1f{doc.text}".encode(), digest_size=12).hexdigest()


# --------------------------------------------------------------------------------- settings, client
def resolve_settings(settings: OpenSearchSettings | None = None, **overrides: Any) -> OpenSearchSettings:
    """``settings`` (or the environment) with ``overrides`` applied; bad values are an :class:`InputError`."""
    require("pydantic_settings", "opensearch")
    from pydantic import ValidationError

    from twostage_search.indexes.opensearch_settings import OpenSearchSettings

    try:
        if settings is None:
            return OpenSearchSettings(**overrides)
        if not overrides:
            return settings
        return OpenSearchSettings(**{**settings.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid OpenSearch settings: {problems}") from None


def _client(settings: OpenSearchSettings) -> Any:
    opensearchpy = require("opensearchpy", "opensearch")
    return opensearchpy.OpenSearch(
        hosts=list(settings.hosts),
        http_auth=settings.http_auth(),
        verify_certs=settings.verify_certs,
        ssl_show_warn=settings.verify_certs,
        ca_certs=str(settings.ca_certs) if settings.ca_certs else None,
        timeout=settings.timeout,
        max_retries=2,  # fail over between hosts; longer outages are the bulk back-off's job
        retry_on_timeout=True,
    )


def _short(exc: BaseException) -> str:
    """One line describing a transport error (no URLs with credentials can occur: auth is separate)."""
    info = getattr(exc, "info", None)
    if isinstance(info, Mapping):
        err = info.get("error")
        if isinstance(err, Mapping):
            return f"{err.get('type')}: {err.get('reason')}"
        if err:
            return str(err)
    text = str(info if isinstance(info, BaseException) else getattr(exc, "error", None) or exc)
    match = re.search(r"\[Errno -?\d+\][^'\")]*|Remote end closed[^'\")]*|timed out|Connection refused", text)
    line = match.group(0) if match else text
    return " ".join(line.split())[:200]


@contextlib.contextmanager
def _translate(settings: OpenSearchSettings, doing: str, *, missing: str | None = None) -> Iterator[None]:
    """Turn opensearch-py's exceptions into one-line :class:`TwoStageError` subclasses."""
    exc_mod = require("opensearchpy", "opensearch").exceptions
    where = ", ".join(settings.hosts)
    try:
        yield
    except exc_mod.SSLError as exc:
        raise OpenSearchUnavailableError(
            f"TLS error talking to OpenSearch at {where} while {doing} ({_short(exc)}); "
            "check TWOSTAGE_OPENSEARCH_CA_CERTS / TWOSTAGE_OPENSEARCH_VERIFY_CERTS"
        ) from None
    except exc_mod.ConnectionTimeout:
        raise OpenSearchUnavailableError(
            f"OpenSearch at {where} did not answer within {settings.timeout:g}s while {doing}"
        ) from None
    except exc_mod.ConnectionError as exc:
        raise OpenSearchUnavailableError(
            f"cannot reach OpenSearch at {where} while {doing} ({_short(exc)}); "
            "set TWOSTAGE_OPENSEARCH_HOSTS or OPENSEARCH_URL"
        ) from None
    except (exc_mod.AuthenticationException, exc_mod.AuthorizationException) as exc:
        raise OpenSearchError(
            f"OpenSearch at {where} refused the credentials while {doing} (HTTP {exc.status_code}); "
            "set TWOSTAGE_OPENSEARCH_USER / TWOSTAGE_OPENSEARCH_PASSWORD"
        ) from None
    except exc_mod.NotFoundError as exc:
        if missing is not None:
            raise OpenSearchIndexMissingError(missing) from None
        raise OpenSearchError(f"OpenSearch at {where}: not found while {doing} ({_short(exc)})") from None
    except exc_mod.TransportError as exc:
        raise OpenSearchError(
            f"OpenSearch at {where} failed while {doing}: HTTP {exc.status_code} {_short(exc)}"
        ) from None


def connect(settings: OpenSearchSettings) -> tuple[Any, dict[str, Any]]:
    """A client and the server's version info; :class:`OpenSearchUnavailableError` when unreachable."""
    client = _client(settings)
    with _translate(settings, "connecting"):
        info = client.info()
    version = info.get("version", {})
    server = {"distribution": version.get("distribution", "elasticsearch"), "version": version.get("number")}
    log.info("connected to %s at %s", server, ", ".join(settings.hosts))
    return client, server


# ------------------------------------------------------------------------------------------ ingest
def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="doc", disable=not enabled, dynamic_ncols=True)


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while chunk := list(islice(it, size)):
        yield chunk


def _retryable(status: object) -> bool:
    # "N/A" is opensearch-py's status for connection errors and timeouts.
    return not isinstance(status, int) or status == 429 or status >= 500


def bulk_index(client: Any, actions: list[dict[str, Any]], settings: OpenSearchSettings) -> int:
    """Send index actions with ``helpers.streaming_bulk``; retry what failed with 429/5xx/connection errors.

    Back-off: ``retry_backoff × 2**attempt`` seconds, at most ``max_backoff``, ``max_retries`` times.
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
            delay = min(settings.max_backoff, settings.retry_backoff * 2 ** (attempt - 1))
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
        return _short(exc)
    return " ".join(str(err).split())[:200]


def _index_body(settings: OpenSearchSettings, build_meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": {
            "index": {
                "number_of_shards": settings.shards,
                "number_of_replicas": settings.replicas,
                "refresh_interval": "-1",  # restored when the build completes
            }
        },
        "mappings": {
            "dynamic": "strict",
            "_meta": {"twostage": build_meta},
            "properties": {
                "doc_id": {"type": "keyword"},
                "title": {"type": "text"},
                "text": {"type": "text"},
                "fp": {"type": "keyword", "index": False},
                FIELD: {"type": "rank_features"},
            },
        },
    }


def _alias_targets(client: Any, alias: str) -> list[str]:
    if not client.indices.exists_alias(name=alias):
        return []
    return sorted(client.indices.get_alias(name=alias))


def _prepare_physical(
    client: Any, settings: OpenSearchSettings, alias: str, build_meta: dict[str, Any], resume: bool
) -> tuple[str, bool]:
    """The physical index to fill: an unfinished build of ``alias`` to resume, or a new one."""
    if client.indices.exists(index=alias) and not client.indices.exists_alias(name=alias):
        raise InputError(f"OpenSearch already has an index (not an alias) named {alias!r}; choose another name")
    live = set(_alias_targets(client, alias))
    unfinished = []
    for name, body in client.indices.get(index=f"{alias}--*").items():
        meta = body.get("mappings", {}).get("_meta", {}).get("twostage", {})
        if name not in live and meta.get("alias") == alias and meta.get("state") == "building":
            unfinished.append((name, meta))
    keep = None
    if resume:
        same = {k: build_meta[k] for k in ("format", "encoder", "scale", "escape")}
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
    client.indices.create(index=name, body=_index_body(settings, build_meta))
    return name, False


def _present(client: Any, index: str, doc_ids: list[str]) -> dict[str, str]:
    """doc_id → stored fingerprint for the given ids that ``index`` already holds."""
    resp = client.mget(index=index, body={"ids": doc_ids}, _source_includes=["fp"])
    return {d["_id"]: d.get("_source", {}).get("fp", "") for d in resp["docs"] if d.get("found")}


def _all_ids(client: Any, index: str, page: int = 1000) -> Iterator[str]:
    after: list[str] | None = None
    while True:
        body: dict[str, Any] = {"size": page, "query": {"match_all": {}}, "sort": [{"doc_id": "asc"}]}
        body["_source"] = False
        if after is not None:
            body["search_after"] = after
        hits = client.search(index=index, body=body)["hits"]["hits"]
        yield from (h["_id"] for h in hits)
        if len(hits) < page:
            return
        after = hits[-1]["sort"]


class _IngestStats(NamedTuple):
    docs: int
    skipped: int
    empty: int
    terms: int
    encode_seconds: float


def _ingest(
    client: Any,
    settings: OpenSearchSettings,
    index: str,
    docs: Iterable[Document],
    *,
    encoder: SparseEncoder,
    scale: float,
    threads: int,
    chunk_size: int,
    total: int | None,
    progress: bool,
    resumed: bool,
) -> tuple[_IngestStats, set[str]]:
    """Encode and bulk-index ``docs``; up to ``threads`` bulk requests run while the next chunk encodes."""
    seen: set[str] = set()
    n_docs = n_skipped = n_empty = n_terms = 0
    encode_seconds = 0.0
    inflight: deque[Future[int]] = deque()
    with _progress(total, "index", progress) as bar, ThreadPoolExecutor(threads, "twostage-bulk") as pool:
        for chunk in _chunks(docs, chunk_size):
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
            vecs = encoder.encode_docs([d.full_text for d in todo])
            encode_seconds += time.perf_counter() - t0
            actions = []
            for doc, vec in zip(todo, vecs, strict=True):
                impacts = vec.quantize(scale)
                n_terms += len(impacts)
                n_empty += not impacts
                source = {
                    "doc_id": doc.doc_id,
                    "title": doc.title,
                    "text": doc.text,
                    "fp": fps[doc.doc_id],
                    FIELD: {escape_term(t): w for t, w in impacts.items()},
                }
                actions.append({"_op_type": "index", "_index": index, "_id": doc.doc_id, "_source": source})
            while len(inflight) >= threads:
                bar.update(inflight.popleft().result())
            inflight.append(pool.submit(bulk_index, client, actions, settings))
        while inflight:
            bar.update(inflight.popleft().result())
    return _IngestStats(n_docs, n_skipped, n_empty, n_terms, encode_seconds), seen


def _count_check(client: Any, index: str, seen: set[str], resumed: bool) -> int:
    """Refresh and check that exactly the documents of this build are searchable; return the count."""
    client.indices.refresh(index=index)
    count = int(client.count(index=index)["count"])
    if resumed and count > len(seen):
        strays = [doc_id for doc_id in _all_ids(client, index) if doc_id not in seen]
        log.info("deleting %d document(s) of the resumed build that are no longer in the corpus", len(strays))
        helpers = require("opensearchpy.helpers", "opensearch")
        helpers.bulk(client, ({"_op_type": "delete", "_index": index, "_id": i} for i in strays))
        client.indices.refresh(index=index)
        count = int(client.count(index=index)["count"])
    if count != len(seen):
        raise OpenSearchError(f"count check failed: sent {len(seen)} documents, {index!r} holds {count}")
    return count


# ------------------------------------------------------------------------------------------- index
class OpenSearchIndex:
    """A SPLADE impact index on an OpenSearch cluster; the local directory holds its ``meta.json``."""

    backend = "opensearch"

    def __init__(self, path: Path, meta: dict[str, Any], settings: OpenSearchSettings, client: Any) -> None:
        self.path = path
        self.meta = meta
        self.settings = settings
        self.client = client

    # ----------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        *,
        encoder: SparseEncoder,
        scale: float = 100.0,
        threads: int = 2,
        chunk_size: int = 256,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
        index_name: str | None = None,
        resume: bool = True,
        settings: OpenSearchSettings | None = None,
        **connection: Any,
    ) -> OpenSearchIndex:
        """Encode ``docs`` into a new physical index on the cluster and point the alias at it.

        Args:
            index_name: the alias searches use (default :func:`default_alias` of ``path``).
            threads: bulk requests in flight while the next chunk is encoded.
            chunk_size: documents per encoder batch and per bulk request.
            resume: continue an unfinished build of the same alias, encoder and scale.
            settings, connection: :class:`OpenSearchSettings`, or its fields as keywords
                (``hosts=[...]``, ``user=``, ``password=``, ...); the environment fills the rest.

        ``meta.json`` is written atomically (temp dir + rename) after the alias swap; a failed build
        leaves the alias, the old physical index and the directory at ``path`` untouched.
        """
        if scale <= 0:
            raise InputError("scale must be positive")
        if threads < 1 or chunk_size < 1:
            raise InputError("threads and chunk_size must be at least 1")
        settings = resolve_settings(settings, **connection)
        alias = index_name or default_alias(path)
        if not _NAME_RE.match(alias) or "--" in alias:
            raise InputError(f"bad OpenSearch index name {alias!r}: use lowercase letters, digits, '_', '-', '.'")
        started = time.perf_counter()
        build_meta = {
            "format": _FORMAT,
            "alias": alias,
            "state": "building",
            "encoder": encoder.config(),
            "scale": scale,
            "escape": ESCAPE_SCHEME,
        }
        with atomic_index(path, overwrite=overwrite) as tmp:
            client, server = connect(settings)
            with contextlib.closing(client), _translate(settings, f"building {alias!r}"):
                physical, resumed = _prepare_physical(client, settings, alias, build_meta, resume)
                try:
                    stats, seen = _ingest(
                        client, settings, physical, docs,
                        encoder=encoder, scale=scale, threads=threads, chunk_size=chunk_size,
                        total=total, progress=progress, resumed=resumed,
                    )  # fmt: skip
                    if stats.docs == 0:
                        raise InputError("corpus is empty: nothing to index")
                    count = _count_check(client, physical, seen, resumed)
                except InputError:
                    with contextlib.suppress(Exception):
                        client.indices.delete(index=physical)
                    raise
                except BaseException:
                    log.warning("build of %s failed; kept the partial index %s to resume from", alias, physical)
                    raise
                client.indices.put_settings(
                    index=physical, body={"index": {"refresh_interval": settings.refresh_interval}}
                )
                client.indices.put_mapping(
                    index=physical, body={"_meta": {"twostage": {**build_meta, "state": "complete"}}}
                )
                old = [name for name in _alias_targets(client, alias) if name != physical]
                actions = [{"remove": {"index": name, "alias": alias}} for name in old]
                client.indices.update_aliases(
                    body={"actions": [*actions, {"add": {"index": physical, "alias": alias}}]}
                )
                for name in old:
                    client.indices.delete(index=name)
            total_seconds = time.perf_counter() - started
            meta = {
                "backend": cls.backend,
                "encoder": encoder.config(),
                "scale": scale,
                "doc_count": count,
                "empty_docs": stats.empty,
                "mean_doc_terms": stats.terms / max(stats.docs - stats.skipped, 1),
                "opensearch": {
                    "alias": alias,
                    "index": physical,
                    "hosts": list(settings.hosts),  # credentials were split off by OpenSearchSettings
                    "server": server,
                    "shards": settings.shards,
                    "replicas": settings.replicas,
                    "escape": ESCAPE_SCHEME,
                    "resumed_docs": stats.skipped,
                    "replaced": old,
                },
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "build_seconds": {"encode": round(stats.encode_seconds, 3), "total": round(total_seconds, 3)},
            }
            write_meta(tmp, meta)
        log.info("built %s (alias %s → %s): %d docs in %.1fs", path, alias, physical, count, total_seconds)
        return cls.open(path, settings=settings)

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def open(
        cls, path: str | Path, *, settings: OpenSearchSettings | None = None, **connection: Any
    ) -> OpenSearchIndex:
        """Open the index described by ``path/meta.json``; hosts default to the ones it was built on.

        Raises :class:`OpenSearchUnavailableError` when the cluster cannot be reached and
        :class:`OpenSearchIndexMissingError` when it no longer has the alias.
        """
        path = Path(path)
        meta = read_meta(path)
        if meta["backend"] != cls.backend:
            raise IndexLoadError(f"{path} is a {meta['backend']!r} index, not {cls.backend!r}")
        settings = resolve_settings(settings, **connection)
        if "hosts" not in settings.model_fields_set and meta["opensearch"].get("hosts"):
            settings = resolve_settings(settings, hosts=meta["opensearch"]["hosts"])
        client, _ = connect(settings)
        index = cls(path, meta, settings, client)
        with _translate(settings, f"opening {index.alias!r}"):
            if not client.indices.exists(index=index.alias):
                raise OpenSearchIndexMissingError(index.missing_message())
        return index

    @property
    def alias(self) -> str:
        return str(self.meta["opensearch"]["alias"])

    @property
    def scale(self) -> float:
        return float(self.meta["scale"])

    def __len__(self) -> int:
        return int(self.meta["doc_count"])

    def missing_message(self) -> str:
        return (
            f"OpenSearch index {self.alias!r} not found at {', '.join(self.settings.hosts)} "
            f"(deleted, or a different cluster); rebuild {self.path} with `twostage index --backend opensearch`"
        )

    def count(self) -> int:
        """Documents searchable through the alias now (asks the cluster)."""
        with _translate(self.settings, f"counting {self.alias!r}", missing=self.missing_message()):
            return int(self.client.count(index=self.alias)["count"])

    def encoder(self) -> SparseEncoder:
        """The encoder this index was built with, re-created from ``meta.json``."""
        cfg = self.meta["encoder"]
        return create_encoder(cfg["name"], **cfg.get("params", {}))

    def retriever(
        self,
        encoder: SparseEncoder | None = None,
        *,
        query_mode: QueryMode | None = None,
        query_top_n: int | None = None,
        server_sort: bool = True,
    ) -> OpenSearchRetriever:
        """A searcher over this index; ``query_mode``/``query_top_n`` default to the settings'."""
        return OpenSearchRetriever(
            self,
            encoder or self.encoder(),
            query_mode=query_mode or self.settings.query_mode,
            query_top_n=query_top_n if query_top_n is not None else self.settings.query_top_n,
            server_sort=server_sort,
        )

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------------------- search
class Hit(NamedTuple):
    doc_id: str
    score: int
    title: str
    text: str


class OpenSearchRetriever:
    """First stage over an :class:`OpenSearchIndex`: SPLADE-encode the query, exact impact search.

    Scores are the integer dot products divided by ``scale**2``. The cluster sorts by ``_score`` then
    ``doc_id``, so the cut-off at ``k`` is deterministic; with ``server_sort=False`` (a server that
    cannot sort on a keyword) the whole group tied with the k-th score is fetched and sorted here.

    Args:
        query_mode: ``rank_feature`` (a ``bool.should`` of linear ``rank_feature`` clauses) or
            ``neural_sparse`` (falls back to ``rank_feature``, with a warning, where unsupported).
        query_top_n: keep only the N heaviest query terms (None: all, but at most ``MAX_CLAUSES``);
            :func:`indexes.pruning.measure_pruning` measures what that costs.
    """

    def __init__(
        self,
        index: OpenSearchIndex,
        encoder: SparseEncoder,
        *,
        query_mode: QueryMode = "rank_feature",
        query_top_n: int | None = None,
        server_sort: bool = True,
    ) -> None:
        if query_mode not in ("rank_feature", "neural_sparse"):
            raise InputError(f"unknown query_mode {query_mode!r} (rank_feature, neural_sparse)")
        if query_top_n is not None and query_top_n < 1:
            raise InputError("query_top_n must be at least 1")
        self.index = index
        self.encoder = encoder
        self.query_mode: QueryMode = query_mode
        self.query_top_n = query_top_n
        self.server_sort = server_sort
        self._lock = threading.Lock()

    def retrieve(self, query: Query, k: int) -> RankedList:
        return self.retrieve_with_cost(query, k)[0]

    def retrieve_with_cost(self, query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]:
        """The ranking and its cost split into ``encode`` (SPLADE query) and ``retrieve`` (cluster search)."""
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        started = time.perf_counter()
        (vector,) = self.encoder.encode_queries([query.text])
        encoded = time.perf_counter()
        hits = self.search_hits(self.query_impacts(vector), k)
        norm = self.index.scale**2
        ranking = RankedList.from_candidates(
            query.query_id, (Candidate(h.doc_id, h.score / norm, h.text, h.title) for h in hits)
        )
        done = time.perf_counter()
        return ranking, (
            StageCost("encode", (encoded - started) * 1000),
            StageCost("retrieve", (done - encoded) * 1000, docs=len(ranking)),
        )

    def query_impacts(self, vector: SparseVector) -> dict[str, int]:
        """The integer query impacts sent to the cluster, after top-N pruning."""
        n = min(self.query_top_n or MAX_CLAUSES, MAX_CLAUSES)
        kept = vector.top(n)
        if len(kept) < len(vector):
            mass = sum(kept.weights) / sum(vector.weights)
            level = logging.WARNING if self.query_top_n is None else logging.DEBUG
            log.log(
                level,
                "query pruned from %d to %d terms (%.1f%% of its weight kept)",
                len(vector),
                len(kept),
                100 * mass,
            )
        return kept.quantize(self.index.scale)

    def search_impacts(self, impacts: Mapping[str, int], k: int) -> list[tuple[str, int]]:
        """Top ``k`` (doc_id, integer score) for integer query impacts, ties by doc_id."""
        return [(h.doc_id, h.score) for h in self.search_hits(impacts, k)]

    def search_hits(self, impacts: Mapping[str, int], k: int) -> list[Hit]:
        if k == 0 or not impacts:
            return []
        with _translate(self.index.settings, f"searching {self.index.alias!r}", missing=self.index.missing_message()):
            if self.server_sort:
                hits = self._search(impacts, k)
            else:
                fetch = k + 1
                while True:
                    hits = self._search(impacts, fetch)
                    # Grow the request until the group tied with the k-th score is complete.
                    if len(hits) < fetch or hits[-1].score != hits[k - 1].score:
                        break
                    fetch *= 2
        hits.sort(key=lambda h: (-h.score, h.doc_id))
        return hits[:k]

    def query_body(self, impacts: Mapping[str, int], size: int) -> dict[str, Any]:
        """The search request: ``rank_feature`` clauses (or ``neural_sparse``), sorted by score then doc_id."""
        if self.query_mode == "neural_sparse":
            tokens = {escape_term(t): int(w) for t, w in impacts.items()}
            query: dict[str, Any] = {"neural_sparse": {FIELD: {"query_tokens": tokens}}}
        else:
            clauses = [
                {"rank_feature": {"field": f"{FIELD}.{escape_term(t)}", "boost": int(w), "linear": {}}}
                for t, w in impacts.items()
            ]
            query = {"bool": {"should": clauses}}
        body: dict[str, Any] = {"size": size, "query": query, "_source": SOURCE_FIELDS, "track_total_hits": False}
        if self.server_sort:
            body["sort"] = [{"_score": {"order": "desc"}}, {"doc_id": {"order": "asc"}}]
        return body

    def _search(self, impacts: Mapping[str, int], size: int) -> list[Hit]:
        client = self.index.client
        try:
            resp = client.search(index=self.index.alias, body=self.query_body(impacts, size))
        except require("opensearchpy", "opensearch").exceptions.RequestError as exc:
            if self.query_mode != "neural_sparse" or "neural_sparse" not in f"{exc.error} {exc.info}":
                raise
            log.warning(
                "OpenSearch at %s does not support neural_sparse queries (%s); using rank_feature queries "
                "(same scores)", ", ".join(self.index.settings.hosts), _short(exc),
            )  # fmt: skip
            with self._lock:
                self.query_mode = "rank_feature"
            resp = client.search(index=self.index.alias, body=self.query_body(impacts, size))
        hits = []
        for h in resp["hits"]["hits"]:
            score = h.get("_score")
            if score is None:
                score = h["sort"][0]
            src = h.get("_source", {})
            hits.append(Hit(h["_id"], round(score), src.get("title", ""), src.get("text", "")))
        return hits

    def close(self) -> None:
        """Nothing to release: the client belongs to the index."""
