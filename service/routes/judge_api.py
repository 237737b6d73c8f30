"""The judging API (judge token): store a grade, skip or put off a pair, export, agreement.

``POST /judge/grades`` takes ``{"query", "doc_id", "grade"}`` (``query_id`` optional: default, the
query text's :func:`~twostage_search.service.judging.pairs.query_key`); the grade is stored under the
judge's name with source ``human``. ``GET /judge/export?format=trec|csv|queries`` returns the merged
grades (:mod:`twostage_search.service.judging.exports`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from twostage_search.service.judging.exports import beir_queries, merge, quepid_csv, source_agreement, trec_qrels
from twostage_search.service.judging.pairs import query_key
from twostage_search.service.judging.store import SOURCES, Judgement
from twostage_search.service.routes.judge_auth import JudgeDep
from twostage_search.service.state import ApiError
from twostage_search.service.ubi.records import QUERY_ID_PATTERN

router = APIRouter(prefix="/judge", tags=["judging"], include_in_schema=False)

DocId = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^\S+$")]


class GradeIn(BaseModel):
    query: str = Field(min_length=1, max_length=10_000)
    query_id: str | None = Field(default=None, pattern=QUERY_ID_PATTERN)
    doc_id: DocId
    grade: int = Field(ge=0, le=3)


class DeferIn(BaseModel):
    query: str = Field(min_length=1, max_length=10_000)
    query_id: str | None = Field(default=None, pattern=QUERY_ID_PATTERN)
    doc_id: DocId
    state: Literal["skip", "later"]


class Stored(BaseModel):
    stored: int
    judge: str


@router.post("/grades", response_model=Stored)
def grade(body: GradeIn, session: JudgeDep) -> Stored:
    """Store one person's grade of one pair (their earlier grade of it is replaced)."""
    qid = body.query_id or query_key(body.query)
    n = session.store.add([Judgement(qid, body.query, body.doc_id, body.grade, "human", session.name)])
    return Stored(stored=n, judge=session.name)


@router.post("/defer", response_model=Stored)
def defer(body: DeferIn, session: JudgeDep) -> Stored:
    """``skip`` (never serve this judge the pair again) or ``later`` (serve it after every other pair)."""
    session.store.defer(body.query_id or query_key(body.query), body.doc_id, session.name, body.state)
    return Stored(stored=1, judge=session.name)


@router.get("/export", response_class=PlainTextResponse)
async def export(
    session: JudgeDep, format: Literal["trec", "csv", "queries"] = "trec", source: str = ",".join(SOURCES)
) -> PlainTextResponse:
    """The merged grades as TREC qrels, Quepid CSV, or the BEIR queries.jsonl of their queries."""
    precedence = [s.strip() for s in source.split(",") if s.strip()]
    if not precedence or any(s not in SOURCES for s in precedence):
        raise ApiError(422, "invalid_request", f"source: a comma-separated list of {', '.join(SOURCES)}")
    qrels = merge(await run_in_threadpool(session.store.judgements, sources=precedence), precedence)
    text = {"trec": trec_qrels, "csv": quepid_csv, "queries": beir_queries}[format](qrels)
    media = "text/csv" if format == "csv" else "text/plain"
    return PlainTextResponse(text, media_type=media)


@router.get("/agreement")
async def agreement(session: JudgeDep) -> list[dict[str, object]]:
    """Cohen's κ, linear-weighted κ and the confusion matrix for every two sources that overlap."""
    judgements = await run_in_threadpool(session.store.judgements)
    return [a.as_dict() for a in source_agreement(judgements)]
