"""Search: SPLADE-encode the query, exact integer impact search on the cluster."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from twostage_search.engine.cost import StageCost
from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.engine.types import Candidate, Query, RankedList, SparseVector
from twostage_search.indexes.opensearch.client import short_error, translate_errors
from twostage_search.indexes.opensearch.mapping import FIELD, MAX_CLAUSES, SOURCE_FIELDS, escape_term

if TYPE_CHECKING:
    from twostage_search.indexes.opensearch.settings import OpenSearchSettings, QueryMode

log = logging.getLogger(__name__)


class SearchTarget(Protocol):
    """What a retriever needs of an index (:class:`~.index.OpenSearchIndex` is one)."""

    client: Any
    settings: OpenSearchSettings

    @property
    def alias(self) -> str: ...

    @property
    def scale(self) -> float: ...

    def missing_message(self) -> str: ...


class Hit(NamedTuple):
    doc_id: str
    score: int
    title: str
    text: str


class OpenSearchRetriever:
    """First stage over an :class:`~.index.OpenSearchIndex`: SPLADE-encode the query, exact impact search.

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
        index: SearchTarget,
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
        missing = self.index.missing_message()
        with translate_errors(self.index.settings, f"searching {self.index.alias!r}", missing=missing):
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
                "(same scores)", ", ".join(self.index.settings.hosts), short_error(exc),
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
