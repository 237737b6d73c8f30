"""What the SPLADE impact retrievers share (``lucene-impact``, ``impact-csc``): encode the query, prune it to
its heaviest terms, quantise it with the index's scale, search the integer impacts, fetch the texts.

A backend supplies :meth:`ImpactRetriever.search_impacts`, the exact top ``k`` (doc_id, integer score) of
the integer dot product, ties broken by ``doc_id``; everything else is here, so the backends rank the
same query vector the same way.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from twostage_search.engine.cost import StageCost
from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import InputError
from twostage_search.engine.splade_lookup import lookup_encoder
from twostage_search.engine.types import Query, RankedList
from twostage_search.indexes.docstore import DocStore


class LimitedQueryEncoders:
    """Query encoders limited to one index's terms (``SparseEncoder.with_query_vocabulary``), one per encoder.

    Retrievers opened on the same index and encoder share one limited encoder (and its vocabulary-sized
    projection) instead of each holding a copy; an entry lives as long as its encoder.
    """

    def __init__(self) -> None:
        self._limited: weakref.WeakKeyDictionary[SparseEncoder, SparseEncoder] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, encoder: SparseEncoder, terms: Callable[[], Collection[str]]) -> SparseEncoder:
        """``encoder`` limited to ``terms()`` (called only the first time for this encoder)."""
        with self._lock:
            limited = self._limited.get(encoder)
            if limited is None:
                limited = self._limited[encoder] = encoder.with_query_vocabulary(terms())
            return limited


class LookupIndex(Protocol):
    """What :func:`lookup_query_encoder` reads from an impact index."""

    meta: dict[str, Any]

    def doc_freqs(self) -> dict[str, int]: ...

    def __len__(self) -> int: ...


def lookup_query_encoder(
    index: LookupIndex, encoder: SparseEncoder | None, query_side: str, *, query_table: str | None, idf_power: float
) -> SparseEncoder | None:
    """The query-only lookup encoder for ``query_side="lookup"`` (``None`` for ``"model"``: open the model).

    Of a given ``encoder`` only its model and query limits are used (else ``meta.json``'s); the index's
    document frequencies are read only for the lookup.
    """
    if query_side == "model":
        return None
    if query_side != "lookup":
        raise InputError(f"query_side must be 'model' or 'lookup', got {query_side!r}")
    config = index.meta["encoder"] if encoder is None else encoder.config()
    return lookup_encoder(config, index.doc_freqs(), len(index), table=query_table, idf_power=idf_power)


class ScaledIndex(Protocol):
    """An impact index: its quantisation scale (``meta.json``'s ``scale``)."""

    @property
    def scale(self) -> float: ...


class ImpactRetriever:
    """First stage over an impact index: SPLADE-encode the query, exact integer impact search.

    Scores are the integer dot products divided by ``scale**2`` (≈ the float SPLADE dot product), ties
    broken by ``doc_id``. ``query_top_n`` keeps only the query's heaviest terms (query-term pruning: fewer
    posting lists to score, a slightly different ranking); ``None`` uses every term the encoder gives.
    Subclasses set ``encoder`` (usually limited to the index's terms) and implement :meth:`search_impacts`.
    """

    index: ScaledIndex
    encoder: SparseEncoder
    query_top_n: int | None
    _docs: DocStore

    def __init__(self, index: ScaledIndex, docs: DocStore, *, query_top_n: int | None) -> None:
        if query_top_n is not None and query_top_n < 1:
            raise InputError("query_top_n must be positive or None")
        self.index = index
        self.query_top_n = query_top_n
        self._docs = docs

    def retrieve(self, query: Query, k: int, *, texts: bool = True) -> RankedList:
        return self.retrieve_with_cost(query, k, texts=texts)[0]

    def retrieve_with_cost(
        self, query: Query, k: int, *, texts: bool = True
    ) -> tuple[RankedList, tuple[StageCost, ...]]:
        """The ranking and its cost split into ``encode`` (SPLADE query) and ``retrieve`` (search + texts).

        ``texts=False`` skips the document store: candidates carry ids and scores only (fill the ones
        you rerank or return with :meth:`with_texts`).
        """
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        started = time.perf_counter()
        (vector,) = self.encoder.encode_queries([query.text])
        encoded = time.perf_counter()
        ranking = self._search(query, vector.top(self.query_top_n).quantize(self.index.scale), k, texts)
        done = time.perf_counter()
        return ranking, (
            StageCost("encode", (encoded - started) * 1000, docs=0),
            StageCost("retrieve", (done - encoded) * 1000, docs=len(ranking)),
        )

    def with_texts(self, ranking: RankedList) -> RankedList:
        """``ranking`` with each document's text and title from the document store."""
        return self._docs.with_texts(ranking)

    def _search(self, query: Query, impacts: dict[str, int], k: int, texts: bool = True) -> RankedList:
        norm = self.index.scale**2
        hits = [(doc_id, score / norm) for doc_id, score in self.search_impacts(impacts, k)]  # order kept
        docs = self._docs.get_many([doc_id for doc_id, _ in hits]) if texts else None
        return RankedList.from_sorted(query.query_id, hits, docs)

    def search_impacts(self, impacts: Mapping[str, int], k: int) -> list[tuple[str, int]]:
        """Top ``k`` (doc_id, integer score) for integer query impacts, score descending, ties by doc_id."""
        raise NotImplementedError
