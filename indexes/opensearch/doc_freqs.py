"""Document frequencies of SPLADE terms on the cluster, for queries without a model (``query_side="lookup"``).

``rank_features`` keeps no per-term statistics that OpenSearch reports, so each term's document frequency is
the hit count of a ``rank_feature`` query on it (``_msearch`` in batches, ``size`` 0). Counting every word
piece of the model's vocabulary takes one pass over it; the result is kept in the index directory
(``doc_freqs.json``), tied to the physical index it was counted on, so a rebuild (a new physical index
behind the alias) counts again and later opens read the file. A build writes the file from the vectors it
indexed, so only indexes built before it existed, or resumed builds, are counted this way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twostage_search.engine.atomic import atomic_write_text
from twostage_search.engine.errors import InputError
from twostage_search.indexes.opensearch.mapping import FIELD, escape_term

log = logging.getLogger(__name__)

DOC_FREQS_FILE = "doc_freqs.json"
BATCH = 500


def count_terms(client: Any, index: str, terms: Sequence[str], *, batch: int = BATCH) -> dict[str, int]:
    """How many documents of ``index`` hold each of ``terms`` in the SPLADE field (terms held by none are left out)."""
    counts: dict[str, int] = {}
    for start in range(0, len(terms), batch):
        chunk = terms[start : start + batch]
        body: list[dict[str, Any]] = []
        for term in chunk:
            query = {"rank_feature": {"field": f"{FIELD}.{escape_term(term)}", "linear": {}}}
            body += [{}, {"size": 0, "track_total_hits": True, "query": query}]
        responses = client.msearch(index=index, body=body)["responses"]
        for term, resp in zip(chunk, responses, strict=True):
            if "error" in resp:
                raise InputError(f"counting documents with the term {term!r} failed: {resp['error']}")
            total = int(resp["hits"]["total"]["value"])
            if total:
                counts[term] = total
    return counts


def doc_freqs_text(physical: str, doc_freqs: Mapping[str, int]) -> str:
    """``doc_freqs.json``'s text: the physical index counted, and each term's document frequency."""
    return json.dumps({"index": physical, "doc_freqs": dict(doc_freqs)}, sort_keys=True) + "\n"


def cached_doc_freqs(
    folder: Path, physical: str, count: Any, vocabulary: Callable[[], Iterable[str]]
) -> dict[str, int]:
    """The document frequencies of ``physical`` from ``folder/doc_freqs.json``, else ``count`` of the terms of
    ``vocabulary()`` (read only then), kept there.

    A file counted on another physical index (before a rebuild) is not used. Writing it is best effort: an
    index directory that cannot be written (a read-only deployment) costs one count per open.
    """
    target = folder / DOC_FREQS_FILE
    try:
        kept = json.loads(target.read_text(encoding="utf-8"))
        if kept.get("index") == physical:
            return {str(t): int(n) for t, n in kept["doc_freqs"].items()}
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s (%s); counting again", target, exc)
    counts: dict[str, int] = count(sorted(set(vocabulary())))
    try:
        atomic_write_text(target, doc_freqs_text(physical, counts))
    except OSError as exc:
        log.warning("could not keep the document frequencies in %s (%s)", target, exc)
    return counts
