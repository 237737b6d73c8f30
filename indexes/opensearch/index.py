"""The ``opensearch`` index backend: build (alias swap, resume) and open."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import InputError
from twostage_search.engine.splade_lookup import DEFAULT_IDF_POWER, model_vocabulary
from twostage_search.engine.types import Document
from twostage_search.indexes.impact_retriever import lookup_query_encoder
from twostage_search.indexes.meta import ImpactIndexMeta, atomic_index, read_meta, write_meta
from twostage_search.indexes.opensearch.client import (
    OpenSearchIndexMissingError,
    connect,
    resolve_settings,
    translate_errors,
)
from twostage_search.indexes.opensearch.doc_freqs import DOC_FREQS_FILE, cached_doc_freqs, count_terms, doc_freqs_text
from twostage_search.indexes.opensearch.ingest import Built, DocFields, build_alias
from twostage_search.indexes.opensearch.mapping import (
    ESCAPE_SCHEME,
    FIELD,
    MAX_EXACT_IMPACT,
    default_alias,
    escape_term,
)
from twostage_search.indexes.opensearch.search import OpenSearchRetriever

if TYPE_CHECKING:
    from twostage_search.indexes.opensearch.settings import OpenSearchSettings, QueryMode

log = logging.getLogger(__name__)

_FORMAT = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,199}$")


def check_alias(alias: str) -> str:
    """``alias`` when it is a usable OpenSearch index name (and free of ``--``, which builds append)."""
    if not _NAME_RE.match(alias) or "--" in alias:
        raise InputError(f"bad OpenSearch index name {alias!r}: use lowercase letters, digits, '_', '-', '.'")
    return alias


def cluster_record(
    settings: OpenSearchSettings, server: Any, alias: str, built: Built, seconds: float, **extra: Any
) -> dict[str, Any]:
    """What ``meta.json`` records of a build on the cluster: where it lives, how it was built, when."""
    physical, _, stats, old = built
    return {
        "opensearch": {
            "alias": alias,
            "index": physical,
            "hosts": list(settings.hosts),  # credentials were split off by OpenSearchSettings
            "server": server,
            "shards": settings.shards,
            "replicas": settings.replicas,
            **extra,
            "resumed_docs": stats.skipped,
            "replaced": old,
        },
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": {"encode": round(stats.encode_seconds, 3), "total": round(seconds, 3)},
    }


class AliasedIndex:
    """An index on an OpenSearch cluster searched through an alias; the local directory holds its ``meta.json``."""

    backend: str

    def __init__(self, path: Path, meta: dict[str, Any], settings: OpenSearchSettings, client: Any) -> None:
        self.path = path
        self.meta = meta
        self.settings = settings
        self.client = client

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def build_on_cluster(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        fields: DocFields,
        build_meta: dict[str, Any],
        describe: Callable[[Built], dict[str, Any]],
        *,
        settings: OpenSearchSettings,
        threads: int,
        chunk_size: int,
        total: int | None,
        progress: bool,
        overwrite: bool,
        resume: bool,
        extra_files: Callable[[Built], dict[str, str]] | None = None,
        **record: Any,
    ) -> Self:
        """Fill the alias ``build_meta["alias"]`` (:func:`~.ingest.build_alias`), then write ``meta.json``.

        ``meta.json`` holds the backend, what ``describe`` says of the finished build, and the cluster
        record (with ``record`` added to it); it is written atomically (temp dir + rename) after the alias
        swap, so a failed build leaves the alias, the old physical index and ``path`` untouched; so are the
        files ``extra_files`` names (file name → text), beside it.
        """
        if threads < 1 or chunk_size < 1:
            raise InputError("threads and chunk_size must be at least 1")
        alias = build_meta["alias"]
        started = time.perf_counter()
        with atomic_index(path, overwrite=overwrite) as tmp:
            client, server = connect(settings)
            with contextlib.closing(client), translate_errors(settings, f"building {alias!r}"):
                built = build_alias(
                    client, settings, alias, build_meta, docs, fields=fields, threads=threads,
                    chunk_size=chunk_size, total=total, progress=progress, resume=resume,
                )  # fmt: skip
            seconds = time.perf_counter() - started
            meta = {
                "backend": cls.backend,
                **describe(built),
                **cluster_record(settings, server, alias, built, seconds, **record),
            }
            write_meta(tmp, meta)
            for file_name, text in (extra_files(built) if extra_files else {}).items():
                (tmp / file_name).write_text(text, encoding="utf-8")
        log.info("built %s (alias %s → %s): %d docs in %.1fs", path, alias, built.physical, built.doc_count, seconds)
        return cls.open(path, settings=settings)

    @classmethod
    def open(cls, path: str | Path, *, settings: OpenSearchSettings | None = None, **connection: Any) -> Self:
        """Open the index described by ``path/meta.json``; hosts default to the ones it was built on.

        Raises :class:`OpenSearchUnavailableError` when the cluster cannot be reached and
        :class:`OpenSearchIndexMissingError` when it no longer has the alias.
        """
        path = Path(path)
        meta = read_meta(path, backend=cls.backend)
        settings = resolve_settings(settings, **connection)
        if "hosts" not in settings.model_fields_set and meta["opensearch"].get("hosts"):
            settings = resolve_settings(settings, hosts=meta["opensearch"]["hosts"])
        client, _ = connect(settings)
        index = cls(path, meta, settings, client)
        with translate_errors(settings, f"opening {index.alias!r}"):
            if not client.indices.exists(index=index.alias):
                raise OpenSearchIndexMissingError(index.missing_message())
        return index

    @property
    def alias(self) -> str:
        return str(self.meta["opensearch"]["alias"])

    def missing_message(self) -> str:
        return (
            f"OpenSearch index {self.alias!r} not found at {', '.join(self.settings.hosts)} "
            f"(deleted, or a different cluster); rebuild {self.path} with `twostage index --backend {self.backend}`"
        )

    def count(self) -> int:
        """Documents searchable through the alias now (asks the cluster)."""
        with translate_errors(self.settings, f"counting {self.alias!r}", missing=self.missing_message()):
            return int(self.client.count(index=self.alias)["count"])

    def close(self) -> None:
        self.client.close()


class SpladeFields:
    """The ``rank_features`` field of quantised SPLADE document terms, with the build's impact statistics."""

    def __init__(self, encoder: SparseEncoder, scale: float, settings: OpenSearchSettings) -> None:
        self.encoder = encoder
        self.index_settings: dict[str, Any] = {}
        self.scale = scale
        self.check = settings.impact_check
        self.properties: dict[str, Any] = {FIELD: {"type": "rank_features"}}
        self.terms = self.empty = self.inexact = self.max_impact = 0
        self.doc_freqs: Counter[str] = Counter()

    def __call__(self, docs: list[Document]) -> list[dict[str, Any]]:
        out = []
        for doc, vec in zip(docs, self.encoder.encode_docs([d.full_text for d in docs]), strict=True):
            impacts = vec.quantize(self.scale)
            self.doc_freqs.update(impacts.keys())
            self.terms += len(impacts)
            self.empty += not impacts
            top = max(impacts.values(), default=0)
            self.max_impact = max(self.max_impact, top)
            if top > MAX_EXACT_IMPACT:
                if self.check == "error":
                    raise InputError(
                        f"document {doc.doc_id!r} has an impact of {top} (weight {top / self.scale:.2f} × scale "
                        f"{self.scale:g}); rank_features stores integers above {MAX_EXACT_IMPACT} inexactly. "
                        f"Use a scale of at most {MAX_EXACT_IMPACT / (top / self.scale):.1f}, or "
                        "TWOSTAGE_OPENSEARCH_IMPACT_CHECK=warn"
                    )
                self.inexact += sum(w > MAX_EXACT_IMPACT for w in impacts.values())
            out.append({FIELD: {escape_term(t): w for t, w in impacts.items()}})
        return out

    def warn_inexact(self) -> None:
        if self.inexact:
            log.warning(
                "%d document impact(s) exceed %d (max %d): rank_features keeps 9 significant bits, so their "
                "scores differ slightly from the embedded index's; a smaller scale keeps them exact",
                self.inexact, MAX_EXACT_IMPACT, self.max_impact,
            )  # fmt: skip


class OpenSearchIndex(AliasedIndex, ImpactIndexMeta):
    """A SPLADE impact index on an OpenSearch cluster; the local directory holds its ``meta.json``."""

    backend = "opensearch"

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
        settings = resolve_settings(settings, **connection)
        alias = check_alias(index_name or default_alias(path))
        build_meta = {
            "format": _FORMAT,
            "alias": alias,
            "state": "building",
            "encoder": encoder.config(),
            "scale": scale,
            "escape": ESCAPE_SCHEME,
        }
        fields = SpladeFields(encoder, scale, settings)

        def describe(built: Built) -> dict[str, Any]:
            fields.warn_inexact()
            stats = built.stats
            return {
                "encoder": encoder.config(),
                "scale": scale,
                "doc_count": built.doc_count,
                "empty_docs": fields.empty,
                "max_impact": fields.max_impact,
                "inexact_impacts": fields.inexact,
                "mean_doc_terms": fields.terms / max(stats.docs - stats.skipped, 1),
            }

        def doc_freqs(built: Built) -> dict[str, str]:
            # Every document of the build went through ``fields`` unless a resumed build skipped some: then the
            # lookup counts them on the cluster when it first needs them.
            return {} if built.stats.skipped else {DOC_FREQS_FILE: doc_freqs_text(built.physical, fields.doc_freqs)}

        return cls.build_on_cluster(
            docs, path, fields, build_meta, describe, settings=settings, threads=threads, chunk_size=chunk_size,
            total=total, progress=progress, overwrite=overwrite, resume=resume, extra_files=doc_freqs,
            escape=ESCAPE_SCHEME,
        )  # fmt: skip

    def retriever(
        self,
        encoder: SparseEncoder | None = None,
        *,
        query_mode: QueryMode | None = None,
        query_top_n: int | None = None,
        server_sort: bool = True,
        query_side: str = "model",
        query_table: str | None = None,
        idf_power: float = DEFAULT_IDF_POWER,
    ) -> OpenSearchRetriever:
        """A searcher over this index; ``query_mode``/``query_top_n`` default to the settings'.

        ``query_side="lookup"`` encodes queries without a network pass, as for ``impact-csc``: each word
        piece weighs its ``query_table`` weight times the index's IDF to the power ``idf_power``; the document
        frequencies are counted on the cluster the first time (:meth:`doc_freqs`).
        """
        lookup = lookup_query_encoder(self, encoder, query_side, query_table=query_table, idf_power=idf_power)
        return OpenSearchRetriever(
            self,
            lookup or encoder or self.encoder(),
            query_mode=query_mode or self.settings.query_mode,
            query_top_n=query_top_n if query_top_n is not None else self.settings.query_top_n,
            server_sort=server_sort,
        )

    def doc_freqs(self) -> dict[str, int]:
        """The number of documents holding each word piece of the index's SPLADE model.

        A build keeps them in ``doc_freqs.json`` in the index directory. Where that file is missing or was
        written for another physical index (an index built before this file existed, or a resumed build), they
        are counted on the cluster (one ``rank_feature`` count per word piece of the vocabulary, batched: some
        seconds for a 30k-piece vocabulary) and kept there.
        """
        model = str(self.meta["encoder"].get("params", {}).get("model", ""))

        def count(terms: list[str]) -> dict[str, int]:
            log.info("counting the documents of %d terms on %s (once per build)", len(terms), self.alias)
            with translate_errors(self.settings, f"counting terms of {self.alias!r}", missing=self.missing_message()):
                return count_terms(self.client, self.alias, terms)

        return cached_doc_freqs(
            self.path, str(self.meta["opensearch"]["index"]), count, lambda: model_vocabulary(model)
        )
