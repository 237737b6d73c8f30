"""The student study's data: each dataset with its evaluation corpus, and the assistant that grades the
first stage's candidates (``benchmarks/studies/student.py``)."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.graded import GradedPair, GradedSet
from twostage_search.benchmarks.graded_data import LogitCache, load_split_set
from twostage_search.engine.beir import find_file, read_corpus
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Document

SEED = 13


@dataclass
class Data:
    """One dataset: its graded set (committed splits, sampled), whole corpus and the evaluation corpus."""

    name: str
    graded: GradedSet
    corpus: dict[str, Document]
    eval_ids: list[str]

    def candidates(self, ids: Sequence[str]) -> list[Candidate]:
        """The items ``ids`` as a reranker receives them (text and title, no first-stage score)."""
        return [Candidate(d, 0.0, self.corpus[d].text, self.corpus[d].title) for d in ids]


def load_data(
    path: Path, sizes: Mapping[str, int] | None, extra: int, train: int | None = None, cut: int | None = None
) -> Data:
    """The dataset with its committed splits (``sizes``: seeded subsample per split; ``train``: only the first
    ``train`` train queries by id) and its evaluation corpus: every item judged for a dev or test query plus
    ``extra`` other items (seeded)."""
    graded = load_split_set(path, sizes, cut=cut)
    if train is not None:
        graded.splits["train"] = graded.splits["train"][:train]
    corpus = {d.doc_id: d for d in read_corpus(find_file(path, "corpus"))}
    judged = {d for s in ("dev", "test") for q in graded.splits[s] for d in graded.qrels.get(q, {}) if d in corpus}
    rest = sorted(set(corpus) - judged)
    eval_ids = sorted(judged | set(random.Random(SEED).sample(rest, min(extra, len(rest)))))
    return Data(path.name, graded, corpus, eval_ids)


ASSISTANTS = ("graded", "graded-ce")


class _FineTunedLogits:
    """``graded-ce``'s logit under the name a :class:`LogitCache` asks for (its ``LogitSource`` shape)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def logits(self, query: Any, candidates: Sequence[Candidate], names: Sequence[str]) -> tuple[Any, Any]:
        values, cost = self.model.logits(query, candidates)
        return {name: values for name in names}, cost


class Assistant:
    """A graded reranker's E[grade] over BM25 candidates (``graded`` or ``graded-ce``), its cross-encoder logits
    cached on disk."""

    def __init__(self, cache: Path, kind: str = "graded", *, graded_model: Any = None) -> None:
        """``graded_model``: for ``graded``, an ordinal model to use instead of the bundled one."""
        if kind == "graded":
            from twostage_search.rerankers.graded import GradedReranker

            self.model: Any = GradedReranker(*([] if graded_model is None else [graded_model]), threads=2)
            self._source: Any = self.model
            self._prefix = "ce"
        elif kind == "graded-ce":
            from twostage_search.rerankers.graded_ce import GradedCEReranker

            self.model = GradedCEReranker(threads=2)
            self._source = _FineTunedLogits(self.model)
            self._prefix = "graded-ce"
        else:
            raise InputError(f"unknown assistant {kind!r} (known: {', '.join(ASSISTANTS)})")
        self.kind = kind
        self.cache = cache

    def scores(self, data: Data, ranked_ids: Mapping[str, Sequence[str]]) -> dict[str, list[float]]:
        """E[grade] of each query's candidates (in the given order)."""
        view = GradedSet(data.name, data.graded.queries, data.corpus, {}, data.graded.grades, data.graded.cut)
        pairs = [GradedPair(q, d, 0) for q, ids in ranked_ids.items() for d in ids]
        cache = LogitCache(self.cache / f"{self._prefix}-logits-{data.name}.tsv")
        cache.fill(view, pairs, self._source, "ce")
        out = {}
        for q, ids in ranked_ids.items():
            values = [cache.values[(q, d)] for d in ids]
            logits: Any = {"ce": values} if self.kind == "graded" else values
            out[q] = [j.expected for j in self.model.judgements(data.graded.queries[q], data.candidates(ids), logits)]
        return out

    def ms_per_query(self, data: Data, ranked_ids: Mapping[str, Sequence[str]], qids: Sequence[str]) -> float:
        """Milliseconds per query to judge ``qids``' candidates afresh (cross-encoder and ordinal model, no cache)."""
        started = time.perf_counter()
        for q in qids:
            self.model.judge(data.graded.queries[q], data.candidates(ranked_ids[q]))
        return (time.perf_counter() - started) * 1000 / max(len(qids), 1)
