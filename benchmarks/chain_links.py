"""The pieces of the teacher → assistant → student chain that do not depend on a data set's files.

A *teacher* gives each labelled (query, item) pair a grade or a score; the *assistant* is the ``graded``
reranker's ordinal model (:mod:`twostage_search.rerankers.graded`) fitted on the teacher's grades; the
*student* is a bi-encoder trained on the assistant's scores (:mod:`twostage_search.engine.dense_train`).
Every link is scored against human grades on held-out queries with :func:`~.graded.agreement`, a score
turned into grades by thresholds that use only the dev grade mix (:func:`mix_thresholds`, :func:`~.graded.
fit_thresholds`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from twostage_search.benchmarks.graded import GradedPair, agreement, fit_thresholds
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Query
from twostage_search.rerankers.ordinal import OrdinalModel, fit_ordinal, null_model


def mix_thresholds(scores: Sequence[float], mix: Sequence[int], scale: Sequence[int]) -> list[float]:
    """K−1 thresholds on ``scores``: their quantiles at the cumulative grade proportions of ``mix`` (the
    grades of other pairs, e.g. the dev split's), so the cut scores have ``mix``'s grade distribution.

    Unlike :func:`~.graded.fit_thresholds`, the scores and the grades need not belong to the same pairs: only
    the grade counts of ``mix`` are used.
    """
    if not scores or not mix:
        raise InputError("mix_thresholds needs scores and a non-empty grade mix")
    counts = np.array([sum(1 for g in mix if g == s) for s in scale], dtype=np.float64)
    cumulative = np.cumsum(counts)[:-1] / counts.sum()
    return [float(t) for t in np.quantile(np.asarray(scores, dtype=np.float64), cumulative)]


@dataclass(frozen=True, slots=True)
class TeacherGrades:
    """A teacher's grades of its labelled pairs and how they were made (``rule``)."""

    grades: list[int]
    rule: str
    thresholds: list[float] | None = None


def teacher_grades(
    scores: Sequence[float], hard: Sequence[int] | None, mix: Sequence[int], scale: Sequence[int]
) -> TeacherGrades:
    """The grades an assistant is fitted on: the teacher's hard grades when every grade of ``scale`` occurs in
    them (an ordinal model needs each grade), else its scores cut at :func:`mix_thresholds` of ``mix``."""
    if hard is not None and set(scale) <= set(hard):
        return TeacherGrades(list(hard), "the teacher's hard grades")
    cuts = mix_thresholds(scores, mix, scale)
    graded = [scale[int(np.searchsorted(cuts, s, side="right"))] for s in scores]
    return TeacherGrades(graded, "the teacher's score cut at its quantiles of the dev grade mix", cuts)


def fit_assistant(
    features: Sequence[str],
    train_rows: Sequence[Mapping[str, float]],
    train_grades: Sequence[int],
    dev_rows: Sequence[Mapping[str, float]],
    dev_grades: Sequence[int],
    scale: Sequence[int],
    meta: Mapping[str, Any],
) -> OrdinalModel:
    """The ordinal model on ``features`` fitted on the teacher's grades, its hard grade E[grade] cut by
    thresholds fitted on the dev pairs' human grades (the bundled ``graded`` model's rule). A feature that
    does not vary among the training pairs gets weight 0 (the ordinal fit refuses a constant column)."""
    x = np.array([[r[f] for f in features] for r in train_rows], dtype=np.float64).reshape(len(train_rows), -1)
    varying = [i for i in range(x.shape[1]) if np.ptp(x[:, i]) > 0]
    if not varying:
        raise InputError("fit_assistant: no feature varies among the training pairs")
    whole = len(varying) == x.shape[1]
    part = (
        fit_ordinal(features, x, train_grades, scale)
        if whole
        else fit_ordinal([features[i] for i in varying], x[:, varying], train_grades, scale)
    )
    # a feature constant over the pairs (e.g. a query-level one on a one-query sample) carries nothing: weight 0
    null = null_model(features, x, train_grades, scale)
    coef = [0.0] * len(features)
    for j, i in enumerate(varying):
        coef[i] = part.coef[j]
    model = replace(null, coef=tuple(coef), cuts=part.cuts)
    dev = model.expected(model.matrix([dict(r) for r in dev_rows]))
    cuts = fit_thresholds([float(v) for v in dev], list(dev_grades), scale)
    return replace(model.with_grade_cuts(cuts), meta=dict(meta))


def agreement_row(
    human: Sequence[int], judged: Sequence[int], scale: Sequence[int], cut: int, **extra: Any
) -> dict[str, Any]:
    """:func:`~.graded.agreement` without the confusion matrix, plus the predicted grade counts and ``extra``."""
    row = agreement(list(human), list(judged), scale, cut)
    row.pop("confusion")
    row["label_counts"] = {str(g): list(judged).count(g) for g in scale}
    return {**extra, **row}


def cosines(query_vectors: np.ndarray, doc_vectors: np.ndarray) -> list[float]:
    """Row-wise inner products of L2-normalised query and document vectors (the cosine a dense index ranks by)."""
    if query_vectors.shape != doc_vectors.shape:
        raise InputError(f"cosines: shapes {query_vectors.shape} and {doc_vectors.shape} differ")
    q = np.asarray(query_vectors, dtype=np.float64)
    d = np.asarray(doc_vectors, dtype=np.float64)
    return [float(v) for v in (q * d).sum(axis=1)]


def dense_scores(index: Any, encoder: Any, queries: Mapping[str, Query], pairs: Sequence[GradedPair]) -> list[float]:
    """The cosine of each pair from a dense index's stored document vectors (``index.doc_ids``, ``index.vectors``)
    and its query (of ``queries``) encoded by ``encoder``."""
    position = {d: i for i, d in enumerate(index.doc_ids)}
    qids = sorted({p.query_id for p in pairs})
    qv = encoder.encode_queries([queries[q].text for q in qids])
    qrow = {q: i for i, q in enumerate(qids)}
    query_vectors = np.stack([qv[qrow[p.query_id]] for p in pairs])
    doc_vectors = np.stack([np.asarray(index.vectors[position[p.doc_id]]) for p in pairs])
    return cosines(query_vectors, doc_vectors)
