"""The (query, document) pairs to judge: from the UBI log or from a query set, top ranks first."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from twostage_search.service.ubi.records import LogStore


def query_key(text: str) -> str:
    """The query id of a typed or logged query: ``q-`` + a digest of its lower-cased, space-normalised text.

    The same text always gets the same id, so judgements of one query from the page, the log and the
    click model meet; queries of a query set keep the set's own ids.
    """
    normal = " ".join(text.lower().split())
    return "q-" + hashlib.blake2b(normal.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Pair:
    """A pair to judge and the best rank at which it was served (1 = top)."""

    query_id: str
    query: str
    doc_id: str
    rank: int


def top_ranks_first(pairs: Iterable[Pair]) -> list[Pair]:
    """Best rank first, then query id, then doc id (each pair once, at its best rank)."""
    best: dict[tuple[str, str], Pair] = {}
    for p in pairs:
        key = (p.query_id, p.doc_id)
        if key not in best or p.rank < best[key].rank:
            best[key] = p
    return sorted(best.values(), key=lambda p: (p.rank, p.query_id, p.doc_id))


def logged_pairs(store: LogStore, depth: int = 10) -> list[Pair]:
    """Every (query text, document) the service served within the top ``depth``, top ranks first.

    Queries are keyed by their text (:func:`~.pairs.query_key`): the same query searched twice is one.
    """
    return top_ranks_first(
        Pair(query_key(q.user_query), q.user_query, doc, rank)
        for q in store.queries()
        for rank, doc in enumerate(q.query_response_hit_ids[:depth], start=1)
    )
