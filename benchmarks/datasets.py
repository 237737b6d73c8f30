"""BEIR-format datasets for benchmarks: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``.

``load_beir(dir, split)`` reads and checks a dataset completely before any benchmark work starts: every
malformed line is an :class:`InputError` with its file and line number (the readers in
:mod:`engine.beir`), and so are duplicate query ids, an empty split, and qrels that name a query or a
document the dataset does not have. Files may be gzip-compressed (``corpus.jsonl.gz``).

Datasets available offline here (see ``/work/shared/datasets/README.md`` and the README):
``benchmarks/data/scifact`` (BEIR SciFact, CC BY-NC 2.0). More BEIR sets can be fetched where there is
network access: ``twostage fetch-beir NAME --out DIR`` (:mod:`benchmarks.fetch`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from twostage_search.benchmarks.graded_data import read_splits
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Document, Query


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR-format dataset, validated.

    Attributes:
        name: the directory's name (``scifact``), used to key cached indexes and published figures.
        path: the dataset directory.
        split: the qrels split (``test``, ``dev``, ``train``).
        corpus_path: ``corpus.jsonl`` or ``corpus.jsonl.gz``.
        queries: the split's queries (those with qrels), in ``queries.jsonl`` order.
        qrels: ``{query_id: {doc_id: relevance}}`` for those queries.
        doc_ids: every document id of the corpus.
        fingerprint: SHA-256 of the corpus file's bytes (hex), to key indexes built from it.
    """

    name: str
    path: Path
    split: str
    corpus_path: Path
    queries: tuple[Query, ...]
    qrels: dict[str, dict[str, int]]
    doc_ids: frozenset[str]
    fingerprint: str

    @property
    def doc_count(self) -> int:
        return len(self.doc_ids)

    def documents(self) -> Iterator[Document]:
        """Stream the corpus (it is read again from disk, not held in memory)."""
        return read_corpus(self.corpus_path)

    def head(self, n: int | None) -> BeirDataset:
        """The same dataset restricted to its first ``n`` queries (all when ``n`` is None)."""
        if n is None or n >= len(self.queries):
            return self
        if n < 1:
            raise InputError(f"max_queries must be at least 1, got {n}")
        queries = self.queries[:n]
        keep = {q.query_id for q in queries}
        qrels = {q: docs for q, docs in self.qrels.items() if q in keep}
        return BeirDataset(
            self.name, self.path, self.split, self.corpus_path, queries, qrels, self.doc_ids, self.fingerprint
        )


def available_splits(path: str | Path) -> list[str]:
    """The splits that have a ``qrels/{split}.tsv`` file, sorted."""
    qrels_dir = Path(path) / "qrels"
    if not qrels_dir.is_dir():
        return []
    return sorted(p.name.removesuffix(".gz").removesuffix(".tsv") for p in qrels_dir.glob("*.tsv*"))


def _qrels_file(path: Path, split: str) -> Path:
    for name in (f"{split}.tsv", f"{split}.tsv.gz"):
        if (path / "qrels" / name).is_file():
            return path / "qrels" / name
    splits = available_splits(path)
    have = f"splits here: {', '.join(splits)}" if splits else "no qrels/*.tsv at all"
    raise InputError(f"{path}: no qrels/{split}.tsv ({have})")


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first(ids: set[str]) -> str:
    return ", ".join(repr(i) for i in sorted(ids)[:3]) + (", ..." if len(ids) > 3 else "")


def load_beir(path: str | Path, split: str = "test") -> BeirDataset:
    """Read and validate one split of a BEIR-format dataset directory.

    Raises :class:`InputError` (one line) when the directory or a file is missing, a line is malformed,
    a query id repeats, the split has no judgements, or its qrels name queries or documents that the
    dataset does not have.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"dataset directory not found: {path}")
    corpus_path = find_file(path, "corpus")
    queries_path = find_file(path, "queries")
    qrels_path = _qrels_file(path, split)
    qrels = read_qrels(qrels_path)
    if not qrels:
        raise InputError(f"{qrels_path}: no judgements")
    all_queries: dict[str, Query] = {}
    for query in read_queries(queries_path):
        if query.query_id in all_queries:
            raise InputError(f"{queries_path}: duplicate query id {query.query_id!r}")
        all_queries[query.query_id] = query
    unknown_queries = set(qrels) - set(all_queries)
    if unknown_queries:
        raise InputError(
            f"{qrels_path}: {len(unknown_queries)} query id(s) not in {queries_path.name}: {_first(unknown_queries)}"
        )
    doc_ids = frozenset(d.doc_id for d in read_corpus(corpus_path))
    if not doc_ids:
        raise InputError(f"{corpus_path}: corpus is empty")
    judged = {d for docs in qrels.values() for d in docs}
    unknown_docs = judged - doc_ids
    if unknown_docs:
        raise InputError(
            f"{qrels_path}: {len(unknown_docs)} document id(s) not in {corpus_path.name}: {_first(unknown_docs)}"
        )
    queries = tuple(q for q in all_queries.values() if q.query_id in qrels)
    return BeirDataset(
        name=path.resolve().name,
        path=path,
        split=split,
        corpus_path=corpus_path,
        queries=queries,
        qrels=qrels,
        doc_ids=doc_ids,
        fingerprint=fingerprint(corpus_path),
    )


def split_queries(dataset: Path, split: str, dev_queries: int) -> tuple[list[Query], dict[str, dict[str, int]]]:
    """The queries and qrels of ``test`` or of ``dev`` (the first ``dev_queries`` ids of train.tsv, file order)."""
    if split not in ("dev", "test"):
        raise InputError(f"split must be dev or test, got {split!r}")
    qrels = read_qrels(dataset / "qrels" / ("train.tsv" if split == "dev" else "test.tsv"))
    if split == "dev":
        qrels = dict(list(qrels.items())[:dev_queries])  # read_qrels keeps file order
    queries = [q for q in read_queries(find_file(dataset, "queries")) if q.query_id in qrels]
    return queries, qrels


def judged_queries(
    dataset: Path,
    split: str,
    *,
    splits_file: Path | None = None,
    dev_queries: int = 300,
    grade_offset: int = 0,
    max_queries: int = 0,
    seed: int = 13,
) -> tuple[list[Query], dict[str, dict[str, int]]]:
    """A split's judged queries, sorted by id (a seeded sample of ``max_queries`` if non-zero), and their qrels
    with ``grade_offset`` taken off every grade.

    ``splits_file``: a committed query-level split (``query-id<TAB>split``) over ``qrels/test.tsv``; without
    it the dataset's own splits, dev being the first ``dev_queries`` of train (:func:`split_queries`)."""
    import random

    if splits_file is None:
        queries, qrels = split_queries(dataset, split, dev_queries)
    else:
        splits = read_splits(splits_file)
        if split not in splits:
            raise InputError(f"{splits_file} has no split {split!r} (it has {', '.join(sorted(splits))})")
        wanted = set(splits[split])
        qrels = {q: docs for q, docs in read_qrels(dataset / "qrels" / "test.tsv").items() if q in wanted}
        queries = [q for q in read_queries(find_file(dataset, "queries")) if q.query_id in qrels]
    qrels = {q: {d: g - grade_offset for d, g in docs.items()} for q, docs in qrels.items()}
    queries = sorted(queries, key=lambda q: q.query_id)
    if max_queries and len(queries) > max_queries:
        queries = sorted(random.Random(seed).sample(queries, max_queries), key=lambda q: q.query_id)
    if not queries:
        raise InputError(f"no judged queries in split {split!r} of {dataset}")
    return queries, qrels
