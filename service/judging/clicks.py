"""Judgements from clicks: COEC, clicks over expected clicks (Zhang & Jones 2007), over the UBI log.

A document shown high is clicked more whatever its relevance (position bias; see Chapelle & Zhang, "A
Dynamic Bayesian Network Click Model for Web Search Ranking", WWW 2009). COEC corrects for it by
comparing a document's clicks with what an average document would have got at the positions where it
was shown (W. V. Zhang and R. Jones, "Comparing Click Logs and Editorial Labels for Training Query
Rewriting", WWW 2007 workshop on query log analysis):

    CTR(p)      = clicks at position p / impressions at position p     (all queries of the log)
    COEC(q, d)  = clicks(q, d) / Σ over d's impressions for q of CTR(position)

Impressions are the log's ``impression`` events (``object_id`` and ``position.ordinal``); a logged
search with no impression event counts its served hits as shown, at their served rank. Clicks are
``click`` events; a click without an ordinal takes the document's served rank, and a click on a
document the search did not show is not counted. Queries are grouped by
their text (lower-cased, spaces normalised: :func:`~.pairs.query_key`). A pair shown fewer than
``min_impressions`` times gets no judgement. COEC becomes a 0–3 grade by thresholds (default: below 0.5
→ 0, below 1 → 1, below 2 → 2, else 3: a document clicked as often as an average one at its positions
has COEC 1).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from twostage_search.engine.errors import InputError
from twostage_search.service.judging.pairs import query_key
from twostage_search.service.judging.store import Judgement
from twostage_search.service.ubi.records import LogStore

DEFAULT_THRESHOLDS = (0.5, 1.0, 2.0)
JUDGE = "coec"


@dataclass(frozen=True, slots=True)
class ClickStats:
    """The clicks of one (query, document) pair: impressions, clicks, expected clicks, COEC."""

    query_id: str
    query: str
    doc_id: str
    impressions: int
    clicks: int
    expected: float

    @property
    def coec(self) -> float:
        return self.clicks / self.expected if self.expected > 0 else 0.0


def position_ctr(store: LogStore, *, click_actions: Sequence[str] = ("click",)) -> dict[int, float]:
    """Click-through rate at each position (1 = top) over every impression in the log."""
    return _ctr(*_counts(store, click_actions))


def _ctr(shown: dict[tuple[str, str, int], int], clicked: dict[tuple[str, str, int], int]) -> dict[int, float]:
    at: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for (_, _, pos), n in shown.items():
        at[pos][0] += n
    for (_, _, pos), n in clicked.items():
        at[pos][1] += n
    return {p: c / n for p, (n, c) in sorted(at.items()) if n}


def click_stats(store: LogStore, *, click_actions: Sequence[str] = ("click",)) -> list[ClickStats]:
    """Impressions, clicks and expected clicks of every (query text, document) pair in the log."""
    shown, clicked = _counts(store, click_actions)
    ctr = _ctr(shown, clicked)
    texts: dict[str, str] = {}
    pairs: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for (text, doc, pos), n in shown.items():
        key = query_key(text)
        texts.setdefault(key, text)
        row = pairs[key, doc]
        row[0] += n
        row[2] += n * ctr.get(pos, 0.0)
    for (text, doc, _), n in clicked.items():
        pairs[query_key(text), doc][1] += n
    return [
        ClickStats(q, texts[q], d, int(row[0]), int(row[1]), float(row[2])) for (q, d), row in sorted(pairs.items())
    ]


def coec_judgements(
    store: LogStore,
    *,
    min_impressions: int = 10,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    click_actions: Sequence[str] = ("click",),
) -> list[Judgement]:
    """A ``clicks`` judgement (judge ``coec``, score = COEC) for each pair shown ≥ ``min_impressions`` times."""
    if len(thresholds) != 3 or list(thresholds) != sorted(thresholds) or thresholds[0] < 0:
        raise InputError("COEC thresholds: three increasing non-negative numbers (grade 1, 2 and 3 start there)")
    if min_impressions < 1:
        raise InputError("min_impressions must be at least 1")
    return [
        Judgement(s.query_id, s.query, s.doc_id, bisect.bisect_right(list(thresholds), s.coec), "clicks", JUDGE, s.coec)
        for s in click_stats(store, click_actions=click_actions)
        if s.impressions >= min_impressions
    ]


def _counts(
    store: LogStore, click_actions: Sequence[str]
) -> tuple[dict[tuple[str, str, int], int], dict[tuple[str, str, int], int]]:
    """(query text, doc, position) → impressions, and → clicks."""
    served: dict[str, tuple[str, dict[str, int]]] = {}
    for q in store.queries():
        served[q.query_id] = (q.user_query, {d: i + 1 for i, d in enumerate(q.query_response_hit_ids)})
    impressions: dict[str, list[tuple[str, int]]] = defaultdict(list)
    clicks: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for e in store.events():
        if e.query_id not in served or e.object_id is None:
            continue
        position = e.ordinal or served[e.query_id][1].get(e.object_id)
        if position is None:
            continue
        if e.action_name == "impression":
            impressions[e.query_id].append((e.object_id, position))
        elif e.action_name in click_actions:
            clicks[e.query_id].append((e.object_id, position))
    shown: dict[tuple[str, str, int], int] = defaultdict(int)
    clicked: dict[tuple[str, str, int], int] = defaultdict(int)
    for query_id, (text, ranks) in served.items():
        seen = impressions.get(query_id) or list(ranks.items())
        for doc, pos in seen:
            shown[text, doc, pos] += 1
        shown_here = {doc for doc, _ in seen}
        for doc, pos in clicks.get(query_id, ()):
            if doc in shown_here:  # a click on something never shown is inconsistent: not counted
                clicked[text, doc, pos] += 1
    return shown, clicked
