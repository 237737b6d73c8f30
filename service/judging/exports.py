"""One grade per (query, document) from many judgements; TREC qrels, Quepid CSV, BEIR queries; agreement.

Merging: sources are taken in precedence order (default ``human``, then ``llm``, then ``clicks``): a
pair graded by a person gets the people's grade, else the LLM's, else the click model's. Within one
source, several judges' grades become their median (the lower middle one for an even count, so the
result is always a grade that someone gave).

Agreement between two sources is measured on the pairs both graded (each side's merged grade):
Cohen's κ, κ with linear weights (a 3-vs-2 disagreement counts less than 3-vs-0), and the 4×4
confusion matrix (rows: the first source's grade 0–3, columns: the second's), by scikit-learn.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import median_low
from typing import Any

from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.service.judging.store import GRADES, SOURCES, Judgement

Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Qrel:
    """The exported grade of one pair: query id and text, document, grade, and the source it came from."""

    query_id: str
    query: str
    doc_id: str
    grade: int
    source: str


def by_source(judgements: Iterable[Judgement]) -> dict[str, dict[Pair, int]]:
    """source → (query_id, doc_id) → the median grade of that source's judges."""
    grades: dict[str, dict[Pair, list[int]]] = {}
    for j in judgements:
        grades.setdefault(j.source, {}).setdefault((j.query_id, j.doc_id), []).append(j.grade)
    return {s: {p: int(median_low(g)) for p, g in pairs.items()} for s, pairs in grades.items()}


def merge(judgements: Sequence[Judgement], precedence: Sequence[str] = SOURCES) -> list[Qrel]:
    """One :class:`Qrel` per judged pair, by source precedence; sorted by query id, then doc id."""
    unknown = [s for s in precedence if s not in SOURCES]
    if unknown:
        raise InputError(f"unknown source {unknown[0]!r} (sources: {', '.join(SOURCES)})")
    texts = {j.query_id: j.query for j in judgements}
    grades = by_source(judgements)
    out: dict[Pair, Qrel] = {}
    for source in precedence:
        for (qid, did), grade in grades.get(source, {}).items():
            if (qid, did) not in out:
                out[qid, did] = Qrel(qid, texts[qid], did, grade, source)
    return [out[p] for p in sorted(out)]


def trec_qrels(qrels: Iterable[Qrel]) -> str:
    """TREC qrels lines, ``query_id 0 doc_id grade`` (trec_eval, ir_measures, ``twostage bench``)."""
    lines = []
    for q in qrels:
        if any(c.isspace() for c in q.query_id + q.doc_id):
            raise InputError(f"ids with white space cannot go into TREC qrels: {q.query_id!r} {q.doc_id!r}")
        lines.append(f"{q.query_id} 0 {q.doc_id} {q.grade}\n")
    return "".join(lines)


def quepid_csv(qrels: Iterable[Qrel]) -> str:
    """Quepid's ratings import: ``query,docid,rating`` with a header, the query as its text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["query", "docid", "rating"])
    writer.writerows([q.query, q.doc_id, q.grade] for q in qrels)
    return buffer.getvalue()


def beir_queries(qrels: Iterable[Qrel]) -> str:
    """A BEIR ``queries.jsonl`` of the exported queries (``{"_id", "text"}``), one per query id."""
    seen: dict[str, str] = {}
    for q in qrels:
        seen.setdefault(q.query_id, q.query)
    return "".join(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n" for qid, text in seen.items())


# ------------------------------------------------------------------------------------------ agreement
@dataclass(frozen=True, slots=True)
class Agreement:
    """How two sources agree on the pairs both graded."""

    first: str
    second: str
    pairs: int
    kappa: float | None
    weighted_kappa: float | None
    confusion: tuple[tuple[int, ...], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "pairs": self.pairs,
            "kappa": self.kappa,
            "weighted_kappa": self.weighted_kappa,
            "confusion": [list(r) for r in self.confusion],
        }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def agreement(first: Sequence[int], second: Sequence[int], names: tuple[str, str] = ("a", "b")) -> Agreement:
    """Cohen's κ, linear-weighted κ and the confusion matrix of two equally long grade lists (0–3).

    κ is ``None`` where it is undefined (both sides gave one and the same grade throughout).
    """
    metrics = require("sklearn.metrics", "bench")
    if len(first) != len(second) or not first:
        raise InputError("agreement needs two equally long, non-empty grade lists")
    labels = list(GRADES)
    with warnings.catch_warnings():  # κ of constant lists is 0/0: NaN (with a warning), reported as None
        warnings.simplefilter("ignore")
        kappa = metrics.cohen_kappa_score(first, second, labels=labels)
        weighted = metrics.cohen_kappa_score(first, second, labels=labels, weights="linear")
    confusion = metrics.confusion_matrix(first, second, labels=labels)
    return Agreement(
        names[0],
        names[1],
        len(first),
        _finite(kappa),
        _finite(weighted),
        tuple(tuple(int(v) for v in row) for row in confusion),
    )


def source_agreement(judgements: Sequence[Judgement]) -> list[Agreement]:
    """:func:`agreement` for every two sources (in ``human, llm, clicks`` order) that graded a pair in common."""
    grades = by_source(judgements)
    out = []
    for a, b in combinations([s for s in SOURCES if s in grades], 2):
        common = sorted(set(grades[a]) & set(grades[b]))
        if common:
            out.append(agreement([grades[a][p] for p in common], [grades[b][p] for p in common], (a, b)))
    return out
