"""The two stages composed explicitly: ``TwoStage(retriever, reranker).search(query, k)``."""

from __future__ import annotations

from engine.errors import InputError
from engine.protocols import Reranker, Retriever
from engine.types import Query, RankedList


class TwoStage:
    """Retrieve ``depth`` candidates with the first stage, rerank them, return the top ``k``.

    Args:
        retriever: the first stage.
        reranker: the second stage (``IdentityReranker`` keeps the first-stage order).
        depth: how many candidates the first stage hands to the reranker (at least ``k``).
    """

    def __init__(self, retriever: Retriever, reranker: Reranker, *, depth: int = 100) -> None:
        if depth < 1:
            raise InputError("depth must be at least 1")
        self.retriever = retriever
        self.reranker = reranker
        self.depth = depth

    def search(self, query: Query | str, k: int = 10) -> RankedList:
        if isinstance(query, str):
            query = Query("q", query)
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        first = self.retriever.retrieve(query, max(self.depth, k))
        return self.reranker.rerank(query, first.candidates()).head(k)
