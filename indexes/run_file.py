"""A first stage read from a TREC run file: rerank someone else's candidates (as PyTerrier and rank_llm do).

    from twostage_search.indexes.run_file import RunRetriever
    from twostage_search.engine.pipeline import TwoStage

    first = RunRetriever("../shared/datasets/trec-dl-2019-passage/runs/bm25.top100.trec",
                         "../shared/datasets/trec-dl-2019-passage/corpus.jsonl")
    engine = TwoStage(first, reranker, depth=100)

Queries are matched by ``query_id``; each gets the run's documents in rank order (score descending, ties
by ``doc_id``) with their run scores and the corpus's title and text. A query the run does not hold gets an
empty ranking. Every document the run names must be in the corpus (checked when the retriever is built).
"""

from __future__ import annotations

import time
from pathlib import Path

from twostage_search.engine.beir import read_corpus, read_trec_run
from twostage_search.engine.cost import StageCost
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Query, RankedList


class RunRetriever:
    """A :class:`~twostage_search.engine.protocols.Retriever` backed by a TREC run and a BEIR corpus."""

    def __init__(self, run: str | Path, corpus: str | Path) -> None:
        self.run_path = Path(run)
        self.corpus_path = Path(corpus)
        ranked = read_trec_run(self.run_path)
        if not ranked:
            raise InputError(f"{self.run_path}: the run is empty")
        wanted = {d for rows in ranked.values() for d, _ in rows}
        texts: dict[str, tuple[str, str]] = {}
        for doc in read_corpus(self.corpus_path):
            if doc.doc_id in wanted:
                texts[doc.doc_id] = (doc.text, doc.title)
        missing = wanted - texts.keys()
        if missing:
            shown = ", ".join(repr(d) for d in sorted(missing)[:3])
            raise InputError(f"{self.run_path}: {len(missing)} document(s) not in {self.corpus_path}: {shown}")
        self._lists = {
            q: tuple(Candidate(d, s, *texts[d]) for d, s in rows)  # text, title
            for q, rows in ranked.items()
        }

    @property
    def query_ids(self) -> frozenset[str]:
        """The queries the run holds."""
        return frozenset(self._lists)

    def depth(self, query_id: str) -> int:
        """How many candidates the run holds for a query (0 if none)."""
        return len(self._lists.get(query_id, ()))

    def retrieve(self, query: Query, k: int) -> RankedList:
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        return RankedList.from_candidates(query.query_id, self._lists.get(query.query_id, ())[:k])

    def retrieve_with_cost(self, query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]:
        started = time.perf_counter()
        ranking = self.retrieve(query, k)
        return ranking, (StageCost("retrieve", (time.perf_counter() - started) * 1000, docs=len(ranking)),)

    def close(self) -> None:
        self._lists = {}
