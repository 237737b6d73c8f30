"""Judgements from the LORE LLM judge over pairs the service served, within a budget.

The judge (:class:`~twostage_search.rerankers.llm.lore.LoreReranker`, by default the bundled model on
llama.cpp) grades pairs query by query, top ranks first (:func:`~.pairs.logged_pairs`), skipping pairs
it already graded with the same prompt (its judge id is ``lore:<prompt id>``). It stops at
``max_pairs`` pairs or after ``max_seconds``, whichever comes first, and stores each query's grades
as soon as they are made, so a run that is stopped keeps what it did and the next run goes on from
there. LORE's labels L1–L4 become grades 0–3; an unreadable answer stores nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Protocol

from twostage_search.engine.types import Candidate, Document, Query
from twostage_search.service.judging.pairs import Pair
from twostage_search.service.judging.store import Judgement, JudgementStore

log = logging.getLogger(__name__)


class PairJudge(Protocol):
    """What :func:`judge_pairs` needs of the judge (LORE has it)."""

    prompt_id: str

    def judge(self, query: Query, candidates: Sequence[Candidate]) -> Sequence[Any]:
        """One judgement per candidate, in order, with ``doc_id``, ``label`` (1–4 or None) and ``expected``."""
        ...


@dataclass(frozen=True, slots=True)
class JudgeRun:
    """What one budgeted run did."""

    judged: int
    unreadable: int
    missing: int  # pairs whose document text was not found
    already: int
    left: int
    seconds: float
    stopped_by: str  # "done", "max_pairs" or "max_seconds"


def judge_id(judge: PairJudge) -> str:
    return f"lore:{judge.prompt_id}"


def judge_pairs(
    pairs: Sequence[Pair],
    judge: PairJudge,
    store: JudgementStore,
    docs: Callable[[Sequence[str]], Mapping[str, Document]],
    *,
    max_pairs: int | None = None,
    max_seconds: float | None = None,
) -> JudgeRun:
    """Grade ``pairs`` (in their order, a query's pairs together) with ``judge`` until the budget is spent.

    Args:
        pairs: what to judge, e.g. :func:`~.pairs.logged_pairs` (top ranks first).
        judge: the LLM judge.
        store: where the grades go (source ``llm``).
        docs: the documents' titles and texts by id (an index's document store, a corpus file).
        max_pairs: stop after grading this many pairs (None: no limit).
        max_seconds: start no query after this many seconds (None: no limit).
    """
    who = judge_id(judge)
    done = {(j.query_id, j.doc_id) for j in store.judgements(sources=["llm"]) if j.judge == who}
    todo = [p for p in pairs if (p.query_id, p.doc_id) not in done]
    first: dict[str, int] = {}
    for i, p in enumerate(todo):
        first.setdefault(p.query_id, i)
    ordered = sorted(todo, key=lambda p: (first[p.query_id], p.rank, p.doc_id))  # a query's pairs together
    started = time.monotonic()
    judged = unreadable = missing = 0
    stopped = "done"
    for qid, group in groupby(ordered, key=lambda p: p.query_id):
        if max_pairs is not None and judged + unreadable >= max_pairs:
            stopped = "max_pairs"
            break
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            stopped = "max_seconds"
            break
        batch = list(group)
        if max_pairs is not None:
            batch = batch[: max_pairs - judged - unreadable]
        texts = docs([p.doc_id for p in batch])
        missing += sum(p.doc_id not in texts for p in batch)
        batch = [p for p in batch if p.doc_id in texts]
        if not batch:
            continue
        query = Query(qid, batch[0].query)
        candidates = [Candidate(p.doc_id, 0.0, texts[p.doc_id].text, texts[p.doc_id].title) for p in batch]
        results = judge.judge(query, candidates)
        grades = [
            Judgement(qid, query.text, r.doc_id, int(r.label) - 1, "llm", who, float(r.expected))
            for r in results
            if r.label is not None
        ]
        store.add(grades)
        judged += len(grades)
        unreadable += len(batch) - len(grades)
        log.info("%s: %d pairs judged", qid, len(grades))
    left = len(ordered) - judged - unreadable - missing
    if stopped == "done" and left:
        stopped = "max_pairs"  # the last query was cut short
    if missing:
        log.warning("%d pairs skipped: their documents were not found", missing)
    return JudgeRun(judged, unreadable, missing, len(pairs) - len(todo), left, time.monotonic() - started, stopped)
