"""Frozen, typed records shared by every stage, with TREC vocabulary (``query_id``, ``doc_id``, ``score``, ``rank``).

A :class:`RankedList` is always sorted by score descending, ties broken by ``doc_id`` ascending, with
contiguous ranks starting at 1, so that the same input always gives the same output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from twostage_search.engine.errors import InputError


@dataclass(frozen=True, slots=True)
class Query:
    """A query: identifier and text. The text must contain a non-space character."""

    query_id: str
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise InputError(f"query {self.query_id!r} is empty")


@dataclass(frozen=True, slots=True)
class Document:
    """A corpus document (BEIR ``_id``, ``title``, ``text``)."""

    doc_id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and body joined by a space, the text encoders and rerankers see."""
        return _joined(self.title, self.text)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An unranked candidate handed from one stage to the next."""

    doc_id: str
    score: float
    text: str = ""
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and text joined by a space, as a cross-encoder reads them (the text alone without a title)."""
        return _joined(self.title, self.text)


def _joined(title: str, text: str) -> str:
    return f"{title} {text}".strip() if title else text


@dataclass(frozen=True, slots=True)
class ScoredDoc:
    """One row of a ranking (ir_measures' ``ScoredDoc`` plus ``rank`` and the document's text)."""

    query_id: str
    doc_id: str
    score: float
    rank: int
    text: str = ""
    title: str = ""

    def as_candidate(self) -> Candidate:
        return Candidate(self.doc_id, self.score, self.text, self.title)


# The slot descriptors of ScoredDoc's fields, in field order (see _scored_docs).
_SCORED_DOC_SLOTS: tuple[Any, ...] = tuple(vars(ScoredDoc)[f.name].__set__ for f in fields(ScoredDoc))


def _order_key(c: Candidate | ScoredDoc) -> tuple[float, str]:
    return (-c.score, c.doc_id)


def _scored_docs(query_id: str, rows: Iterable[tuple[str, float, int, str, str]]) -> tuple[ScoredDoc, ...]:
    """``ScoredDoc(query_id, doc_id, score, rank, text, title)`` for each row of ``(doc_id, score, rank, text,
    title)``: the same records as the constructor gives, written straight into the slots.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` for each field; rankings build
    hundreds of rows per query (a hybrid's components, the fused list, the texts), where that was a
    measurable part of a first stage's time. ``score`` must already be a ``float``.
    """
    new = object.__new__
    set_query, set_doc, set_score, set_rank, set_text, set_title = _SCORED_DOC_SLOTS
    out = []
    for doc_id, score, rank, text, title in rows:
        item = new(ScoredDoc)
        set_query(item, query_id)
        set_doc(item, doc_id)
        set_score(item, score)
        set_rank(item, rank)
        set_text(item, text)
        set_title(item, title)
        out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RankedList:
    """A ranking for one query: sorted by score descending (ties by ``doc_id``), ranks 1..n, unique ids.

    Build one with :meth:`from_candidates` (or :meth:`from_sorted` for hits already in order); the
    constructor only validates.
    """

    query_id: str
    items: tuple[ScoredDoc, ...] = field(default=())

    def __post_init__(self) -> None:
        seen: set[str] = set()
        previous: tuple[float, str] | None = None
        for i, item in enumerate(self.items):
            if item.rank != i + 1:
                raise ValueError(f"ranks must be contiguous from 1, got {item.rank} at position {i}")
            if item.query_id != self.query_id:
                raise ValueError(f"item for query {item.query_id!r} in ranking of {self.query_id!r}")
            if item.doc_id in seen:
                raise ValueError(f"duplicate doc_id {item.doc_id!r} in ranking")
            if math.isnan(item.score):
                raise ValueError(f"NaN score for doc {item.doc_id!r}")
            seen.add(item.doc_id)
            key = _order_key(item)
            if previous is not None and previous > key:
                raise ValueError("items must be sorted by score descending, ties by doc_id")
            previous = key

    @classmethod
    def from_candidates(cls, query_id: str, candidates: Iterable[Candidate], k: int | None = None) -> RankedList:
        """Sort candidates (score descending, ``doc_id`` ascending) and keep the top ``k``."""
        ordered = sorted(candidates, key=_order_key)
        if k is not None:
            ordered = ordered[: max(k, 0)]
        rows = ((c.doc_id, float(c.score), rank, c.text, c.title) for rank, c in enumerate(ordered, start=1))
        return cls(query_id, _scored_docs(query_id, rows))

    @classmethod
    def from_sorted(
        cls,
        query_id: str,
        hits: Iterable[tuple[str, float]],
        docs: Mapping[str, Document | ScoredDoc] | None = None,
    ) -> RankedList:
        """Rank ``hits``, (doc_id, score) pairs **already in ranking order** (score descending, ties by
        ``doc_id``, unique ids, no NaN), as an index's top ``k`` or a fusion's output is: the ranking
        :meth:`from_candidates` gives for them, without sorting or checking them again.

        With ``docs`` (a document or a ranked row per id) each hit takes its text and title, and a hit
        ``docs`` lacks is left out.
        For rankings built by code that guarantees the order; anything else goes through :meth:`from_candidates`.
        """
        if docs is None:
            rows = ((d, float(s), rank, "", "") for rank, (d, s) in enumerate(hits, start=1))
        else:
            found = [(d, s, docs[d]) for d, s in hits if d in docs]
            rows = ((d, float(s), rank, doc.text, doc.title) for rank, (d, s, doc) in enumerate(found, start=1))
        return cls._unchecked(query_id, _scored_docs(query_id, rows))

    @classmethod
    def _unchecked(cls, query_id: str, items: tuple[ScoredDoc, ...]) -> RankedList:
        """A ranking of ``items`` known to be valid (a valid ranking's head, hits in order): no checks."""
        ranking = object.__new__(cls)
        object.__setattr__(ranking, "query_id", query_id)
        object.__setattr__(ranking, "items", items)
        return ranking

    @classmethod
    def from_scores(cls, query_id: str, candidates: Sequence[Candidate], scores: Sequence[float]) -> RankedList:
        """Re-score ``candidates`` with ``scores`` (same order) and sort them."""
        if len(candidates) != len(scores):
            raise ValueError(f"{len(scores)} scores for {len(candidates)} candidates")
        return cls.from_candidates(
            query_id,
            (Candidate(c.doc_id, float(s), c.text, c.title) for c, s in zip(candidates, scores, strict=True)),
        )

    def candidates(self) -> list[Candidate]:
        """The ranking as candidates for the next stage, in rank order."""
        return [item.as_candidate() for item in self.items]

    @property
    def doc_ids(self) -> list[str]:
        return [item.doc_id for item in self.items]

    def head(self, k: int) -> RankedList:
        return RankedList._unchecked(self.query_id, self.items[: max(k, 0)])

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ScoredDoc]:
        return iter(self.items)

    def __getitem__(self, i: int) -> ScoredDoc:
        return self.items[i]


@dataclass(frozen=True, slots=True)
class SparseVector:
    """A sparse term-weight vector (SPLADE output), terms sorted by weight descending then term.

    Weights are non-negative; zero weights are dropped.
    """

    terms: tuple[str, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.terms) != len(self.weights):
            raise ValueError("terms and weights differ in length")
        if len(set(self.terms)) != len(self.terms):
            raise ValueError("duplicate terms in sparse vector")
        if any(w < 0 or math.isnan(w) for w in self.weights):
            raise ValueError("sparse weights must be non-negative numbers")

    @classmethod
    def from_dict(cls, weights: Mapping[str, float]) -> SparseVector:
        items = sorted(((t, float(w)) for t, w in weights.items() if w > 0), key=lambda tw: (-tw[1], tw[0]))
        return cls(tuple(t for t, _ in items), tuple(w for _, w in items))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.terms, self.weights, strict=True))

    def top(self, n: int | None) -> SparseVector:
        """Keep the ``n`` heaviest terms (all when ``n`` is None)."""
        if n is None or n >= len(self.terms):
            return self
        return SparseVector(self.terms[:n], self.weights[:n])

    def quantize(self, scale: float) -> dict[str, int]:
        """Integer impacts ``round(weight * scale)``, dropping terms that round to zero."""
        out: dict[str, int] = {}
        for t, w in zip(self.terms, self.weights, strict=True):
            q = round(w * scale)
            if q > 0:
                out[t] = q
        return out

    def dot(self, other: SparseVector) -> float:
        small, large = (self, other) if len(self) <= len(other) else (other, self)
        lookup = large.as_dict()
        return sum(w * lookup.get(t, 0.0) for t, w in zip(small.terms, small.weights, strict=True))

    def __len__(self) -> int:
        return len(self.terms)
