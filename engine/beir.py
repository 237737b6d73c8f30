"""Readers for BEIR-format files: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``.

Files may be gzip-compressed (``.gz``). Every malformed line raises :class:`InputError` naming the file
and line number; nothing is silently skipped.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Document, Query


def _open_text(path: Path) -> IO[str]:
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open(encoding="utf-8")


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise InputError(f"{path}:{lineno}: expected a JSON object")
                yield lineno, record
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise InputError(f"{path}: cannot read ({exc})") from None


def _field(path: Path, lineno: int, record: dict[str, Any], name: str, required: bool = True) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise InputError(f"{path}:{lineno}: missing field {name!r}")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "_id":
        return str(value)
    if not isinstance(value, str):
        raise InputError(f"{path}:{lineno}: field {name!r} must be a string")
    return value


def read_corpus(path: str | Path) -> Iterator[Document]:
    """Yield documents of a BEIR ``corpus.jsonl`` (``_id``, ``text``, optional ``title``).

    Raises :class:`InputError` on a malformed line, an empty ``_id`` or a duplicate ``_id``.
    """
    path = Path(path)
    seen: set[str] = set()
    for lineno, record in _jsonl(path):
        doc_id = _field(path, lineno, record, "_id")
        if not doc_id.strip():
            raise InputError(f"{path}:{lineno}: empty '_id'")
        if doc_id in seen:
            raise InputError(f"{path}:{lineno}: duplicate '_id' {doc_id!r}")
        seen.add(doc_id)
        yield Document(doc_id, _field(path, lineno, record, "text"), _field(path, lineno, record, "title", False))


def read_queries(path: str | Path) -> Iterator[Query]:
    """Yield queries of a BEIR ``queries.jsonl`` (``_id``, ``text``)."""
    path = Path(path)
    for lineno, record in _jsonl(path):
        query_id = _field(path, lineno, record, "_id")
        text = _field(path, lineno, record, "text")
        if not text.strip():
            raise InputError(f"{path}:{lineno}: empty query text")
        yield Query(query_id, text)


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read qrels → {query_id: {doc_id: rel}}: a BEIR TSV (``query-id  corpus-id  score``, header line) or
    TREC qrels (``query-id iteration doc-id relevance``, separated by spaces or tabs; no header)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with _open_text(path) as fh:
        rows = csv.reader(fh, delimiter="\t")
        for lineno, row in enumerate(rows, start=1):
            if not row or (lineno == 1 and row[0] == "query-id"):
                continue
            fields = row[0].split() if len(row) == 1 else row
            if len(fields) == 4:  # TREC: the iteration column is unused
                fields = [fields[0], fields[2], fields[3]]
            if len(fields) != 3:
                raise InputError(
                    f"{path}:{lineno}: expected 3 tab-separated columns (BEIR) or 4 (TREC qrels), got {len(fields)}"
                )
            try:
                rel = int(fields[2])
            except ValueError:
                raise InputError(f"{path}:{lineno}: relevance {fields[2]!r} is not an integer") from None
            qrels.setdefault(fields[0], {})[fields[1]] = rel
    return qrels


def find_file(dataset: str | Path, stem: str) -> Path:
    """``DATASET/STEM.jsonl`` or ``DATASET/STEM.jsonl.gz``, whichever exists."""
    dataset = Path(dataset)
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (dataset / name).is_file():
            return dataset / name
    raise InputError(f"{dataset}: no {stem}.jsonl or {stem}.jsonl.gz")


def count_docs(path: str | Path) -> int:
    """Validate a corpus file completely and return its number of documents (a cheap first pass)."""
    return sum(1 for _ in read_corpus(path))


def read_trec_run(path: str | Path) -> dict[str, list[tuple[str, float]]]:
    """A TREC run file (``qid Q0 docid rank score tag``) → ``{query_id: [(doc_id, score), ...]}``.

    Each query's list is in rank order: score descending, ties by ``doc_id`` ascending (the order every
    ranking in this project follows; the file's rank column is not used). A repeated (query, document)
    pair or a malformed line is an :class:`InputError` naming the line.
    """
    path = Path(path)
    run: dict[str, dict[str, float]] = {}
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InputError(f"{path}:{lineno}: expected 6 columns of a TREC run, got {len(parts)}")
            try:
                score = float(parts[4])
            except ValueError:
                raise InputError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
            docs = run.setdefault(parts[0], {})
            if parts[2] in docs:
                raise InputError(f"{path}:{lineno}: document {parts[2]!r} repeats for query {parts[0]!r}")
            docs[parts[2]] = score
    return {q: sorted(docs.items(), key=lambda r: (-r[1], r[0])) for q, docs in run.items()}
