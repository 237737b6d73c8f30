"""The baseline reranker: keeps the first-stage order."""

from __future__ import annotations

from collections.abc import Sequence

from twostage_search.engine.types import Candidate, Query, RankedList


class IdentityReranker:
    """Returns the candidates ranked by their incoming scores (the first stage's order).

    The baseline of every comparison and the test double of the pipeline.
    """

    name = "identity"

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return RankedList.from_candidates(query.query_id, candidates)
