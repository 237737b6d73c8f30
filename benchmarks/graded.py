"""Graded relevance sets and the agreement measures of a relevance judge against human grades.

A graded set is a BEIR-format folder whose qrels hold K grades (CrowdFlower: 1–4, LLMJudge and TREC DL:
0–3). Its queries are split once, by a seeded shuffle of the sorted query ids, into named parts
(``train``/``dev``/``test``); settings (e.g. a cross-encoder's grade thresholds) are chosen on ``dev`` and
every judge is scored on the same sampled ``test`` pairs.

Measures (scikit-learn): Acc@K (exact grade), Acc@2 (relevant vs not at the dataset's cut), Macro-F1
over the K grades, Cohen's κ unweighted, linear- and quadratic-weighted, and the K×K confusion matrix (rows: human
grade, columns: judge grade).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.engine.types import Candidate, Document, Query

log = logging.getLogger(__name__)

# Relevant/irrelevant cut per known scale: TREC's "relevance ≥ 2" on 0–3 (DL guidelines, LLMJudge),
# "3–4 relevant" on CrowdFlower's 1–4 (the LORE report's Acc@2: L1–L2 vs L3–L4).
DEFAULT_CUTS: dict[tuple[int, int], int] = {(0, 3): 2, (1, 4): 3}
SPLIT_SEED = 13


@dataclass(frozen=True, slots=True)
class GradedPair:
    """One judged (query, document) pair and its human grade."""

    query_id: str
    doc_id: str
    grade: int


@dataclass
class GradedSet:
    """A graded judging set: queries, the documents its qrels name, the grades, and its scale and cut."""

    name: str
    queries: dict[str, Query]
    corpus: dict[str, Document]
    qrels: dict[str, dict[str, int]]
    grades: tuple[int, ...]
    cut: int
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def pairs(self, split: str) -> list[GradedPair]:
        """Every judged pair of the split's queries (sorted by query id, then doc id)."""
        if split not in self.splits:
            raise InputError(f"unknown split {split!r} (have {', '.join(self.splits)})")
        return [
            GradedPair(q, d, g)
            for q in sorted(self.splits[split])
            for d, g in sorted(self.qrels.get(q, {}).items())
            if d in self.corpus
        ]

    def sample(self, split: str, n: int | None, per_query: int = 10, seed: int = SPLIT_SEED) -> list[GradedPair]:
        """A seeded cluster sample of about ``n`` pairs of the split: up to ``per_query`` pairs of each query,
        queries in seeded random order, until ``n`` pairs (all pairs when ``n`` is None).

        Pairs of one query share the judge's prompt prefix (cheaper for an LLM judge), so queries are
        sampled whole-ish rather than pairs uniformly.
        """
        pairs = self.pairs(split)
        if n is None or n >= len(pairs):
            return pairs
        rng = random.Random(seed)
        by_query: dict[str, list[GradedPair]] = {}
        for p in pairs:
            by_query.setdefault(p.query_id, []).append(p)
        order = sorted(by_query)
        rng.shuffle(order)
        chosen: list[GradedPair] = []
        for q in order:
            group = by_query[q]
            take = rng.sample(group, min(per_query, len(group), n - len(chosen)))
            chosen.extend(take)
            if len(chosen) >= n:
                break
        return sorted(chosen, key=lambda p: (p.query_id, p.doc_id))

    def binary(self, grade: int) -> int:
        return int(grade >= self.cut)


def split_queries(
    query_ids: Sequence[str], parts: Mapping[str, float], seed: int = SPLIT_SEED
) -> dict[str, tuple[str, ...]]:
    """Split query ids by fractions (in the order given; the last part takes the rest), seeded."""
    ids = sorted(query_ids)
    random.Random(seed).shuffle(ids)
    out: dict[str, tuple[str, ...]] = {}
    start = 0
    names = list(parts)
    for i, name in enumerate(names):
        end = len(ids) if i == len(names) - 1 else start + round(parts[name] * len(ids))
        out[name] = tuple(sorted(ids[start:end]))
        start = end
    return out


def load_graded(
    dataset: str | Path, *, parts: Mapping[str, float] | None = None, cut: int | None = None, split: str = "test"
) -> GradedSet:
    """Read a graded BEIR folder (only the documents the qrels judge) and split its queries.

    ``parts`` defaults to train 40% / dev 20% / test 40% of the queries (seed :data:`SPLIT_SEED`);
    ``cut`` defaults to the known cut of the scale (:data:`DEFAULT_CUTS`).
    """
    root = Path(dataset)
    qrels = read_qrels(root / "qrels" / f"{split}.tsv")
    if not qrels:
        raise InputError(f"{root}: no qrels in qrels/{split}.tsv")
    judged = {d for docs in qrels.values() for d in docs}
    corpus = {d.doc_id: d for d in read_corpus(find_file(root, "corpus")) if d.doc_id in judged}
    queries = {q.query_id: q for q in read_queries(find_file(root, "queries")) if q.query_id in qrels}
    grades = tuple(sorted({g for docs in qrels.values() for g in docs.values()}))
    if len(grades) < 2:
        raise InputError(f"{root}: the qrels hold fewer than two grades")
    if cut is None:
        scale = (grades[0], grades[-1])
        if scale not in DEFAULT_CUTS:
            raise InputError(f"{root}: no default relevant cut for grades {grades}; pass cut=")
        cut = DEFAULT_CUTS[scale]
    splits = split_queries(list(queries), parts or {"train": 0.4, "dev": 0.2, "test": 0.4})
    return GradedSet(root.name, queries, corpus, qrels, grades, cut, splits)


# ------------------------------------------------------------------------------------------ measures
def agreement(human: Sequence[int], judge: Sequence[int], grades: Sequence[int], cut: int) -> dict[str, Any]:
    """Acc@K, Acc@2 (grade ≥ ``cut`` is relevant), Macro-F1@K, Macro-F1@2, κ, linear/quadratic κ, confusion."""
    metrics = require("sklearn.metrics", "bench")
    if len(human) != len(judge) or not human:
        raise InputError("agreement needs two equally long, non-empty label lists")
    labels = list(grades)
    hb = [int(g >= cut) for g in human]
    jb = [int(g >= cut) for g in judge]
    return {
        "pairs": len(human),
        f"acc@{len(labels)}": float(metrics.accuracy_score(human, judge)),
        "acc@2": float(metrics.accuracy_score(hb, jb)),
        f"macro_f1@{len(labels)}": float(
            metrics.f1_score(human, judge, labels=labels, average="macro", zero_division=0)
        ),
        "macro_f1@2": float(metrics.f1_score(hb, jb, labels=[0, 1], average="macro", zero_division=0)),
        "kappa": float(metrics.cohen_kappa_score(human, judge, labels=labels)),
        "kappa_linear": float(metrics.cohen_kappa_score(human, judge, labels=labels, weights="linear")),
        "kappa_quadratic": float(metrics.cohen_kappa_score(human, judge, labels=labels, weights="quadratic")),
        "confusion": metrics.confusion_matrix(human, judge, labels=labels).tolist(),
    }


def fit_thresholds(scores: Sequence[float], grades: Sequence[int], scale: Sequence[int]) -> list[float]:
    """K−1 score thresholds that turn scores into grades, chosen on a dev split by matching its grade mix.

    The thresholds are the dev scores' quantiles at the dev grades' cumulative proportions, so the
    thresholded dev scores have (up to ties) the dev grade distribution. No test data is used.
    """
    np = require("numpy", "bench")
    if len(scores) != len(grades) or not scores:
        raise InputError("fit_thresholds needs as many scores as grades")
    counts = [sum(1 for g in grades if g == s) for s in scale]
    cumulative = np.cumsum(counts)[:-1] / len(grades)
    return [float(t) for t in np.quantile(np.asarray(scores, dtype=float), cumulative)]


def apply_thresholds(scores: Sequence[float], thresholds: Sequence[float], scale: Sequence[int]) -> list[int]:
    """Grade ``scale[i]`` where ``i`` thresholds are ≤ the score (thresholds ascending)."""
    return [scale[sum(1 for t in thresholds if s >= t)] for s in scores]


def read_label_file(path: str | Path) -> dict[tuple[str, str], int]:
    """A TREC qrels-style label file (``qid 0 docid label``) as {(qid, docid): label}."""
    out: dict[tuple[str, str], int] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise InputError(f"{path}:{lineno}: expected 'qid 0 docid label', got {line!r}")
        try:
            out[(parts[0], parts[2])] = round(float(parts[3]))
        except ValueError:
            raise InputError(f"{path}:{lineno}: label {parts[3]!r} is not a number") from None
    return out


def load_submissions(dataset: GradedSet, folder: str | Path) -> dict[str, dict[tuple[str, str], int]]:
    """Every ``*.txt`` label file in ``folder`` (e.g. the 33 LLMJudge submissions), keyed by file stem.

    Only labels of pairs the set's qrels judge are kept (ids as in the set's files).
    """
    root = Path(folder)
    files = sorted(root.glob("*.txt"))
    if not files:
        raise InputError(f"{root}: no *.txt label files")
    out: dict[str, dict[tuple[str, str], int]] = {}
    for f in files:
        labels = read_label_file(f)
        out[f.stem] = {k: v for k, v in labels.items() if k[1] in dataset.qrels.get(k[0], {})}
    return out


def submission_rows(
    dataset: GradedSet, folder: str | Path, test: Sequence[GradedPair], *, all_pairs: bool = False
) -> list[dict[str, Any]]:
    """An :func:`agreement` row on the ``test`` pairs (``judge``: the file stem, ``kind``: ``submission``) for each
    label file in ``folder`` (:func:`load_submissions`), best κ first. A submission that leaves a test pair
    unlabelled is left out (logged). With ``all_pairs``, a submission that labels every pair of the set's splits
    also gets its κ on them all (``kappa_all_pairs``)."""
    human = [p.grade for p in test]
    everything = [p for split in dataset.splits for p in dataset.pairs(split)] if all_pairs else []
    rows = []
    for stem, labels in load_submissions(dataset, folder).items():
        missing = [p for p in test if (p.query_id, p.doc_id) not in labels]
        if missing:
            log.warning("%s: %d test pairs unlabelled, skipped", stem, len(missing))
            continue
        row = {"judge": stem, "kind": "submission"}
        row |= agreement(human, [labels[(p.query_id, p.doc_id)] for p in test], dataset.grades, dataset.cut)
        if everything and all((p.query_id, p.doc_id) in labels for p in everything):
            given = [labels[(p.query_id, p.doc_id)] for p in everything]
            full = agreement([p.grade for p in everything], given, dataset.grades, dataset.cut)
            row["kappa_all_pairs"] = full["kappa"]
        rows.append(row)
    return sorted(rows, key=lambda r: -float(r["kappa"]))


def place(rows: Sequence[dict[str, Any]], submissions: Sequence[Mapping[str, Any]]) -> None:
    """Set each row's rank by κ among the submissions (1 = better than all), e.g. ``rank_by_kappa: 30 of 34``."""
    for row in rows:
        better = sum(1 for s in submissions if s["kappa"] > row["kappa"])
        row["rank_by_kappa"] = f"{better + 1} of {len(submissions) + 1}"


def candidates(dataset: GradedSet, pairs: Sequence[GradedPair]) -> list[Candidate]:
    out = []
    for p in pairs:
        doc = dataset.corpus[p.doc_id]
        out.append(Candidate(p.doc_id, 0.0, doc.text, doc.title))
    return out


def kappa_thresholds(
    scores: Sequence[float], grades: Sequence[int], scale: Sequence[int], *, steps: int = 100, passes: int = 3
) -> list[float]:
    """K−1 score thresholds that maximise quadratic κ on held-out (score, grade) pairs.

    Starts from :func:`fit_thresholds` (the grade mix) and moves one threshold at a time to the score quantile
    (``steps`` evenly spaced levels, kept between its neighbours) that gives the highest quadratic κ, for up to
    ``passes`` rounds (coordinate ascent; ties keep the current threshold).
    """
    np = require("numpy", "bench")
    metrics = require("sklearn.metrics", "bench")
    cuts = fit_thresholds(scores, grades, scale)
    levels = sorted({float(v) for v in np.quantile(np.asarray(scores, dtype=float), np.linspace(0, 1, steps + 1))})

    def kappa(c: Sequence[float]) -> float:
        labels = apply_thresholds(scores, c, scale)
        return float(metrics.cohen_kappa_score(grades, labels, labels=list(scale), weights="quadratic"))

    best = kappa(cuts)
    for _ in range(passes):
        moved = False
        for i in range(len(cuts)):
            low = cuts[i - 1] if i > 0 else -math.inf
            high = cuts[i + 1] if i + 1 < len(cuts) else math.inf
            for level in levels:
                if not low < level < high or level == cuts[i]:
                    continue
                trial = [*cuts[:i], level, *cuts[i + 1 :]]
                value = kappa(trial)
                if value > best:
                    best, cuts, moved = value, trial, True
        if not moved:
            break
    return cuts


def dev_halves(pairs: Sequence[GradedPair], seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Indices of ``pairs`` in two halves by query (a seeded shuffle of the sorted query ids)."""
    np = require("numpy", "bench")
    queries = sorted({p.query_id for p in pairs})
    rng = np.random.default_rng(seed)
    rng.shuffle(queries)
    first = set(queries[: len(queries) // 2])
    a = [i for i, p in enumerate(pairs) if p.query_id in first]
    b = [i for i, p in enumerate(pairs) if p.query_id not in first]
    return a, b


def threshold_rule(
    expected: Sequence[float], dev: Sequence[GradedPair], scale: Sequence[int], cut: int
) -> dict[str, float]:
    """Quadratic κ of the two threshold rules on ``expected`` (a score of each dev pair, e.g. E[grade]): the cuts
    matching the grade mix (:func:`fit_thresholds`) and those maximising κ (:func:`kappa_thresholds`), each
    fitted on one half of the dev queries (:func:`dev_halves`) and scored on the other, the two halves averaged."""
    np = require("numpy", "bench")
    grades = [p.grade for p in dev]
    halves = dev_halves(dev)
    out: dict[str, float] = {}
    for rule in ("dev grade mix", "max dev kappa"):
        kappas = []
        for fit_on, score_on in (halves, halves[::-1]):
            e, g = [expected[i] for i in fit_on], [grades[i] for i in fit_on]
            cuts = fit_thresholds(e, g, scale) if rule == "dev grade mix" else kappa_thresholds(e, g, scale)
            labels = apply_thresholds([expected[i] for i in score_on], cuts, scale)
            kappas.append(agreement([grades[i] for i in score_on], labels, scale, cut)["kappa_quadratic"])
        out[rule] = float(np.mean(kappas))
    return out
