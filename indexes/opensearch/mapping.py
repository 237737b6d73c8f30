"""What the cluster stores: the ``rank_features`` field, escaped feature names, the index mapping.

**Feature names.** ``rank_features`` rejects dots in feature names, and the ``rank_feature`` query
splits ``field.feature`` at the last dot, so wordpiece terms such as ``.`` or ``u.s`` are escaped
reversibly: ``%`` → ``%25`` first, then ``.`` → ``%2E`` (after escaping, every ``%`` starts an escape,
so :func:`unescape_term` is exact).

**Exact impacts.** Lucene's ``FeatureField`` (behind ``rank_features``) keeps a value's float32 bits
shifted right by 15: 9 significant bits, truncated. Every integer up to :data:`MAX_EXACT_IMPACT` (511)
survives exactly; larger ones lose their low bits (513 → 512, 1023 → 1022, 2047 → 2044). :func:`stored_impact` is that
rounding, so callers can check or reproduce what the cluster will score with.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twostage_search.engine.types import Document

if TYPE_CHECKING:
    from twostage_search.indexes.opensearch.settings import OpenSearchSettings

FIELD = "splade"
"""The ``rank_features`` field holding the quantised SPLADE document terms."""
SOURCE_FIELDS = ["doc_id", "title", "text"]
MAX_CLAUSES = 1024
"""OpenSearch's default ``indices.query.bool.max_clause_count``; longer queries are pruned to it."""
ESCAPE_SCHEME = "percent-v1"
_FORMAT = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,199}$")
MAX_EXACT_IMPACT = 511
"""The largest integer impact ``FeatureField`` stores exactly (9 significant bits)."""


def stored_impact(value: float) -> float:
    """The value ``FeatureField`` keeps for ``value``: float32, low 15 bits of the encoding dropped."""
    bits = struct.unpack(">i", struct.pack(">f", value))[0] >> 15
    return float(struct.unpack(">f", struct.pack(">i", bits << 15))[0])


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


def index_body(
    settings: OpenSearchSettings,
    build_meta: dict[str, Any],
    properties: dict[str, Any],
    index_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A physical index: the common fields plus a backend's ``properties`` and ``index_settings``."""
    return {
        "settings": {
            "index": {
                "number_of_shards": settings.shards,
                "number_of_replicas": settings.replicas,
                "refresh_interval": "-1",  # restored when the build completes
                **(index_settings or {}),
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
                **properties,
            },
        },
    }
