"""Hybrid first stage on OpenSearch: BM25 over ``title`` and ``text`` plus the SPLADE ``rank_features`` score.

One ``bool.should`` query: a ``multi_match`` (BM25, ``best_fields``) with boost ``bm25_weight`` and the
SPLADE ``rank_feature`` clauses with boost ``splade_weight / scale**2``, so a document's score is
``bm25_weight × BM25 + splade_weight × (SPLADE dot product)``. The weights must be chosen on a dev
split (``benchmarks/studies/opensearch_first_stage.py`` does that on SciFact's train queries). With
``splade_weight=0`` it is BM25 alone on the same cluster. Ties are broken by ``doc_id`` on the server.
"""

from __future__ import annotations

import time
from typing import Any

from twostage_search.engine.cost import StageCost
from twostage_search.engine.encoders import SparseEncoder
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.indexes.opensearch.client import translate_errors
from twostage_search.indexes.opensearch.mapping import FIELD, SOURCE_FIELDS, escape_term
from twostage_search.indexes.opensearch.search import OpenSearchRetriever, SearchTarget


class HybridRetriever:
    """BM25 + SPLADE in one OpenSearch query; see the module docstring for the score."""

    def __init__(
        self,
        index: SearchTarget,
        encoder: SparseEncoder,
        *,
        bm25_weight: float = 1.0,
        splade_weight: float = 1.0,
        query_top_n: int | None = None,
    ) -> None:
        if bm25_weight < 0 or splade_weight < 0 or bm25_weight + splade_weight == 0:
            raise InputError("hybrid weights must be non-negative and not both 0")
        self.index = index
        self.encoder = encoder
        self.bm25_weight = bm25_weight
        self.splade_weight = splade_weight
        self._splade = OpenSearchRetriever(index, encoder, query_top_n=query_top_n)

    def query_body(self, text: str, impacts: dict[str, int], size: int) -> dict[str, Any]:
        should: list[dict[str, Any]] = []
        if self.bm25_weight > 0:
            match = {"query": text, "fields": ["title", "text"], "boost": self.bm25_weight}
            should.append({"multi_match": match})
        if self.splade_weight > 0 and impacts:
            clauses = [
                {"rank_feature": {"field": f"{FIELD}.{escape_term(t)}", "boost": int(w), "linear": {}}}
                for t, w in impacts.items()
            ]
            should.append({"bool": {"should": clauses, "boost": self.splade_weight / self.index.scale**2}})
        return {
            "size": size,
            "query": {"bool": {"should": should}},
            "_source": SOURCE_FIELDS,
            "track_total_hits": False,
            "sort": [{"_score": {"order": "desc"}}, {"doc_id": {"order": "asc"}}],
        }

    def retrieve(self, query: Query, k: int) -> RankedList:
        return self.retrieve_with_cost(query, k)[0]

    def retrieve_with_cost(self, query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]:
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        started = time.perf_counter()
        impacts: dict[str, int] = {}
        if self.splade_weight > 0:
            (vector,) = self.encoder.encode_queries([query.text])
            impacts = self._splade.query_impacts(vector)
        encoded = time.perf_counter()
        hits: list[Candidate] = []
        if k > 0:
            missing = self.index.missing_message()
            with translate_errors(self.index.settings, f"searching {self.index.alias!r}", missing=missing):
                resp = self.index.client.search(index=self.index.alias, body=self.query_body(query.text, impacts, k))
            for h in resp["hits"]["hits"]:
                src = h.get("_source", {})
                score = h.get("_score") if h.get("_score") is not None else h["sort"][0]
                hits.append(Candidate(h["_id"], float(score), src.get("text", ""), src.get("title", "")))
        ranking = RankedList.from_candidates(query.query_id, hits)
        done = time.perf_counter()
        return ranking, (
            StageCost("encode", (encoded - started) * 1000),
            StageCost("retrieve", (done - encoded) * 1000, docs=len(ranking)),
        )

    def close(self) -> None:
        """Nothing to release: the client belongs to the index."""
