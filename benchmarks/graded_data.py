"""Query-level splits of the graded e-commerce sets, the logit caches the graded models are fitted on, and their
feature rows.

Splits are committed (``benchmarks/data/splits/<dataset>.tsv``: ``query-id``, ``split``): 60/20/20 of the
queries into train/dev/test by :func:`~twostage_search.benchmarks.graded.split_queries` with seed 13, so no
query is in two splits.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Protocol

from twostage_search.benchmarks.graded import GradedPair, GradedSet, candidates, load_graded, split_queries
from twostage_search.engine.cost import StageCost
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.graded import LOGITS, pair_features
from twostage_search.rerankers.graded_stacked import with_graded
from twostage_search.rerankers.ordinal import OrdinalModel
from twostage_search.rerankers.stacked_features import stacked_features

log = logging.getLogger(__name__)

SPLITS_DIR = Path(__file__).parent / "data" / "splits"
PARTS = {"train": 0.6, "dev": 0.2, "test": 0.2}
SEED = 13


# ------------------------------------------------------------------------------------------- splits
def write_splits(query_ids: Sequence[str], path: Path, seed: int = SEED) -> dict[str, tuple[str, ...]]:
    """Split ``query_ids`` 60/20/20 (seeded) and write the split file (TSV, sorted by query id)."""
    splits = split_queries(query_ids, PARTS, seed)
    rows = sorted((q, name) for name, ids in splits.items() for q in ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("query-id\tsplit\n" + "".join(f"{q}\t{s}\n" for q, s in rows), encoding="utf-8")
    return splits


def read_splits(path: Path) -> dict[str, tuple[str, ...]]:
    """A split file as {split: sorted query ids}; a query listed twice is an error."""
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        if not line.strip():
            continue
        qid, _, name = line.partition("\t")
        if not name or qid in seen:
            raise InputError(f"{path}:{lineno}: expected one 'query-id<TAB>split' line per query")
        seen.add(qid)
        out.setdefault(name, []).append(qid)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def subsample(
    splits: Mapping[str, tuple[str, ...]], sizes: Mapping[str, int], seed: int = SEED
) -> dict[str, tuple[str, ...]]:
    """Up to ``sizes[split]`` queries of each split: one seeded shuffle per split, in the order of ``sizes``."""
    rng = random.Random(seed)
    out = {}
    for name, n in sizes.items():
        ids = sorted(splits[name])
        rng.shuffle(ids)
        out[name] = tuple(sorted(ids[:n]))
    return out


def load_split_set(dataset: Path, sizes: Mapping[str, int] | None = None, cut: int | None = None) -> GradedSet:
    """A graded set with its committed splits (optionally subsampled)."""
    data = load_graded(dataset, cut=cut)
    path = SPLITS_DIR / f"{dataset.name}.tsv"
    if not path.is_file():
        raise InputError(f"no split file {path}")
    data.splits = read_splits(path)
    if sizes:
        data.splits = subsample(data.splits, sizes)
    return data


# ------------------------------------------------------------------------------------ logits, features
class LogitSource(Protocol):
    """What scores a cache's pairs: ``GradedReranker`` (its cross-encoder logits) or the stacked model's
    ``SignalScorer`` (its logits and cosines)."""

    def logits(
        self, query: Query, candidates: Sequence[Candidate], names: Sequence[str] | None = None
    ) -> tuple[dict[str, list[float]], StageCost]: ...


class LogitCache:
    """Cross-encoder logits of (query, doc) pairs in a TSV (``query-id``, ``doc-id``, logit), appended to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[tuple[str, str], float] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                parts = line.split("\t")
                if len(parts) == 3:  # a line cut short by a killed run is skipped (and scored again)
                    self.values[(parts[0], parts[1])] = float(parts[2])

    def fill(self, data: GradedSet, pairs: Sequence[GradedPair], model: LogitSource, name: str) -> None:
        """Score the pairs not in the cache with ``model``'s ``name`` logit (query by query) and append them."""
        missing = [p for p in pairs if (p.query_id, p.doc_id) not in self.values]
        if not missing:
            return
        log.info("%s: scoring %d pairs", self.path.name, len(missing))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for qid, group in groupby(missing, key=lambda p: p.query_id):
                todo = list(group)
                logits, _ = model.logits(data.queries[qid], candidates(data, todo), [name])
                for p, s in zip(todo, logits[name], strict=True):
                    self.values[(qid, p.doc_id)] = s
                    fh.write(f"{qid}\t{p.doc_id}\t{s!r}\n")
                fh.flush()


Caches = Mapping[str, LogitCache]


def open_caches(folder: Path, dataset: str, names: Sequence[str] = tuple(LOGITS)) -> dict[str, LogitCache]:
    """The logit caches of one dataset, ``<name>-logits-<dataset>.tsv`` for each of ``names`` (``_`` written
    ``-``): by default the graded model's ``ce`` (title) and ``ce_text``; the stacked model's also ``bge``."""
    return {name: LogitCache(folder / f"{name.replace('_', '-')}-logits-{dataset}.tsv") for name in names}


def fill(data: GradedSet, pairs: Sequence[GradedPair], caches: Caches, model: LogitSource) -> None:
    for name, cache in caches.items():
        cache.fill(data, pairs, model, name)


def features(data: GradedSet, pairs: Sequence[GradedPair], caches: Caches) -> list[dict[str, float]]:
    """Feature rows of ``pairs`` (input order; each query's pairs are its candidates)."""
    rows: list[dict[str, float]] = []
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        todo = list(group)
        logits = {name: [c.values[(qid, p.doc_id)] for p in todo] for name, c in caches.items()}
        rows += pair_features(data.queries[qid].text, candidates(data, todo), logits)
    return rows


def stacked_rows(
    data: GradedSet, pairs: Sequence[GradedPair], caches: Caches, graded: OrdinalModel
) -> list[dict[str, float]]:
    """The stacked model's feature rows of ``pairs`` (input order; each query's pairs are its candidates), with
    ``graded``'s E[grade] as a feature."""
    out: list[dict[str, float]] = []
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        todo = list(group)
        signals = {name: [c.values[(qid, p.doc_id)] for p in todo] for name, c in caches.items()}
        out += with_graded(stacked_features(data.queries[qid].text, candidates(data, todo), signals), graded)
    return out
