"""What query-term pruning costs: top-N pruned versus full queries on the same impact index.

Pruning a SPLADE query to its N heaviest terms bounds the number of clauses (and the latency) of an
impact search; the price is that documents matched only through the dropped terms fall out of the
top ``k``. :func:`measure_pruning` reports both sides: the share of the query weight kept and the
overlap of the pruned top ``k`` with the full top ``k``. (On why long learned-sparse queries are
expensive for impact indexes: Mackenzie, Trotman and Lin, "Wacky Weights in Learned Sparse
Representations and the Revenge of Score-at-a-Time Query Evaluation", arXiv:2110.11540, 2021.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Query


class ImpactSearcher(Protocol):
    """A retriever that searches integer query impacts directly (``lucene-impact``, ``impact-csc``, ``opensearch``)."""

    encoder: Any
    index: Any

    def search_impacts(self, impacts: Mapping[str, int], k: int) -> list[tuple[str, int]]: ...


@dataclass(frozen=True, slots=True)
class PruningReport:
    """Means over the queries; ``overlap`` is |pruned top-k ∩ full top-k| / |full top-k|."""

    top_n: int
    k: int
    queries: int
    mean_terms: float
    mean_kept_terms: float
    mean_kept_weight: float
    mean_overlap: float
    min_overlap: float


def measure_pruning(retriever: ImpactSearcher, queries: Sequence[Query], *, top_n: int, k: int = 10) -> PruningReport:
    """Run every query twice, full and pruned to ``top_n`` terms, and compare the top ``k``."""
    if top_n < 1 or k < 1:
        raise InputError("top_n and k must be at least 1")
    if not queries:
        raise InputError("no queries to measure pruning on")
    scale = float(retriever.index.scale)
    vectors = retriever.encoder.encode_queries([q.text for q in queries])
    terms, kept_terms, kept_weight, overlaps = [], [], [], []
    for vector in vectors:
        pruned = vector.top(top_n)
        full_ids = [d for d, _ in retriever.search_impacts(vector.quantize(scale), k)]
        pruned_ids = {d for d, _ in retriever.search_impacts(pruned.quantize(scale), k)}
        terms.append(len(vector))
        kept_terms.append(len(pruned))
        kept_weight.append(sum(pruned.weights) / sum(vector.weights) if len(vector) else 1.0)
        overlaps.append(len(pruned_ids.intersection(full_ids)) / len(full_ids) if full_ids else 1.0)
    n = len(vectors)
    return PruningReport(
        top_n=top_n,
        k=k,
        queries=n,
        mean_terms=sum(terms) / n,
        mean_kept_terms=sum(kept_terms) / n,
        mean_kept_weight=sum(kept_weight) / n,
        mean_overlap=sum(overlaps) / n,
        min_overlap=min(overlaps),
    )
