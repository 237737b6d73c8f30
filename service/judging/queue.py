"""The judging queue: the next (query, document) pair a person should grade.

Pairs come from the query log (what the service served) or from a query set whose queries are pooled
one at a time, as the queue runs dry: each arm of the experiment ranks the query and the union of
their top ``depth`` (each document at its best rank) is stored in the judgement store's pool, so a
restart does not search again. The queue serves top ranks first, never a pair the person already
graded or skipped, never a pair that ``max_judges`` people graded already, and the pairs the person
put off ("judge later") only after every other one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twostage_search.engine.types import Query
from twostage_search.service.judging.pairs import Pair, top_ranks_first
from twostage_search.service.judging.store import JudgementStore


def next_pair(pairs: Sequence[Pair], store: JudgementStore, judge: str, max_judges: int) -> Pair | None:
    """The first of ``pairs`` (already in queue order) that ``judge`` should grade now, if any."""
    seen = store.seen_by(judge)
    counts = store.human_counts()
    later: Pair | None = None
    for p in pairs:
        key = (p.query_id, p.doc_id)
        state = seen.get(key)
        if state in ("graded", "skip") or counts.get(key, 0) >= max_judges:
            continue
        if state == "later":
            later = later or p
            continue
        return p
    return later


def pooled_pairs(
    queries: Sequence[Query],
    store: JudgementStore,
    rank: Callable[[Query], Sequence[Sequence[str]]],
    judge: str,
    max_judges: int,
    depth: int,
) -> Pair | None:
    """The next pair from a query set: pooled pairs first; when none is left, pool the next query.

    ``rank(query)`` returns each arm's ranking (doc ids, best first) of the query.
    """
    pooled = store.pooled()
    while True:
        pair = next_pair(top_ranks_first(p for p in pooled if p.doc_id), store, judge, max_judges)
        if pair is not None:
            return pair
        done = {p.query_id for p in pooled}
        todo = next((q for q in queries if q.query_id not in done), None)
        if todo is None:
            return None
        new = [
            Pair(todo.query_id, todo.text, doc, r)
            for ranking in rank(todo)
            for r, doc in enumerate(ranking[:depth], start=1)
        ]
        new = top_ranks_first(new) or [Pair(todo.query_id, todo.text, "", 0)]  # nothing found: mark as pooled
        store.pool(new)
        pooled = store.pooled()
