"""The judging pages (HTML, judge token): side by side, the judging queue, login.

``GET /judge`` shows a query's results from two arms next to each other — rank moves, each arm's
latency and cost, the lists' Jaccard overlap and rank-biased overlap — with 0–3 grade buttons on every
document; ``GET /judge/queue`` serves one unjudged pair at a time. Grades go to ``POST /judge/grades``
(:mod:`.judge_api`). Pages are Jinja2 templates with autoescaping, under a Content-Security-Policy that
allows only the page's own script and style files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from twostage_search.engine import types
from twostage_search.engine.protocols import FetchesTextsLater
from twostage_search.engine.types import Candidate, RankedList
from twostage_search.service.judging.overlap import jaccard, rank_moves, rbo
from twostage_search.service.judging.pairs import Pair, logged_pairs, query_key
from twostage_search.service.judging.queue import next_pair, pooled_pairs
from twostage_search.service.routes.judge_auth import (
    NAME_COOKIE,
    SECURITY_HEADERS,
    TOKEN_COOKIE,
    JudgeSession,
    session_of,
    templates,
    token_ok,
    valid_name,
)
from twostage_search.service.state import ApiError, ServiceState, StateDep, check_query, deadline_of, execute

router = APIRouter(prefix="/judge", tags=["judging"], include_in_schema=False)

RBO_P = 0.9
TEXT_CHARS = 600
STATIC = {"judge.js": "text/javascript", "judge.css": "text/css"}


def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    response = templates().TemplateResponse(request, name, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def login_page(request: Request, state: ServiceState, error: str = "", status: int = 200) -> HTMLResponse:
    if state.settings.judge_token is None:
        raise ApiError(403, "judging_disabled", "the judging page is disabled (set TWOSTAGE_JUDGE_TOKEN)")
    return page(request, "login.html", {"error": error}, status)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The page's script and style sheet (package data)."""
    if name not in STATIC:
        raise ApiError(404, "not_found", f"no static file {name!r}")
    body = resources.files("twostage_search.service").joinpath("templates", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"X-Content-Type-Options": "nosniff"})


@router.post("/login")
async def login(request: Request, state: StateDep) -> Response:
    """The login form: the judge token and the judge's name; sets the session cookies."""
    form = await request.form()
    token, name = str(form.get("token", "")), str(form.get("name", "")).strip()
    if not token_ok(state, token):
        return login_page(request, state, "wrong judge token", 401)
    if valid_name(name) is None:
        return login_page(request, state, "name: 1–64 letters, digits or _ . @ + -", 422)
    response = RedirectResponse("/judge", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/judge")
    response.set_cookie(NAME_COOKIE, name, httponly=True, samesite="strict", secure=secure, path="/judge")
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/judge", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/judge")
    response.delete_cookie(NAME_COOKIE, path="/judge")
    return response


async def run_arm(state: ServiceState, request: Request, arm: str, text: str, k: int) -> dict[str, Any]:
    """One arm's top ``k`` for the page: hits, latency and cost (not logged: judging is not traffic)."""
    deployment = state.store.acquire()
    if arm not in deployment.pipelines:
        state.store.release(deployment)
        raise ApiError(422, "unknown_arm", f"unknown arm {arm!r}")
    pipeline = deployment.pipelines[arm]
    query = types.Query(request.state.request_id, text)
    started = time.perf_counter()
    result = await execute(
        state, request, arm, deployment, lambda: pipeline.run(query, k), deadline_of(request, state.settings)
    )
    return {
        "name": arm,
        "hits": list(result.ranking),
        "took_ms": (time.perf_counter() - started) * 1000,
        "usd": result.usd,
        "rerank_depth": result.rerank_depth,
        "tokens": result.tokens_in + result.tokens_out,
        "degraded": result.degraded,
    }


def _rows(arm: dict[str, Any], other: dict[str, Any], grades: dict[str, int]) -> list[dict[str, Any]]:
    ids = [h.doc_id for h in arm["hits"]]
    moves = rank_moves([h.doc_id for h in other["hits"]], ids)
    return [
        {"hit": h, "move": m, "grade": grades.get(h.doc_id), "text": _cut(h.text)}
        for h, m in zip(arm["hits"], moves, strict=True)
    ]


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS].rstrip() + "…"


@router.get("", response_class=HTMLResponse)
async def side_by_side(
    request: Request,
    state: StateDep,
    q: str = "",
    a: str | None = None,
    b: str | None = None,
    k: int = Query(default=10, ge=1, le=100),
) -> HTMLResponse:
    """Type a query; see two arms' top ``k`` side by side and grade the documents."""
    session = session_of(request, state)
    if session is None:
        return login_page(request, state)
    arms = [arm.name for arm in state.store.current().config.arms]
    a = a or arms[0]
    b = b or (arms[1] if len(arms) > 1 else arms[0])
    context: dict[str, Any] = {"judge": session.name, "arms": arms, "a": a, "b": b, "q": q, "k": k, "result": None}
    if q.strip():
        check_query(q, state.settings)
        k = min(k, state.settings.k_max)
        left, right = await asyncio.gather(run_arm(state, request, a, q, k), run_arm(state, request, b, q, k))
        qid = query_key(q)
        grades = await run_in_threadpool(session.store.grades_by, session.name, qid)
        la, ra = [h.doc_id for h in left["hits"]], [h.doc_id for h in right["hits"]]
        context["result"] = {
            "query_id": qid,
            "arms": [left | {"rows": _rows(left, right, grades)}, right | {"rows": _rows(right, left, grades)}],
            "jaccard": jaccard(la, ra),
            "rbo": rbo(la, ra, RBO_P),
            "rbo_p": RBO_P,
        }
    return page(request, "judge.html", context)


def _texts(state: ServiceState, pair: Pair) -> tuple[str, str]:
    """The pair's document title and text, if the first stage can fetch them by id."""
    retriever = state.store.retriever
    if isinstance(retriever, FetchesTextsLater):
        ranking = retriever.with_texts(RankedList.from_candidates(pair.query_id, [Candidate(pair.doc_id, 0.0)]))
        for item in ranking:
            return item.title, item.text
    return "", ""


def _rank_arms(state: ServiceState, depth: int) -> Callable[[types.Query], list[list[str]]]:
    """Each arm's top ``depth`` doc ids for a query (pooling a query set for the queue)."""

    def rank(query: types.Query) -> list[list[str]]:
        deployment = state.store.acquire()
        try:
            return [[h.doc_id for h in p.run(query, depth).ranking] for p in deployment.pipelines.values()]
        finally:
            state.store.release(deployment)

    return rank


def _next(state: ServiceState, session: JudgeSession, source: str) -> Pair | None:
    settings = state.settings
    if source == "queries":
        from twostage_search.engine.beir import read_queries

        if settings.judge_queries is None:
            raise ApiError(422, "invalid_request", "no query set configured (TWOSTAGE_JUDGE_QUERIES)")
        queries = list(read_queries(settings.judge_queries))
        rank = _rank_arms(state, settings.judge_depth)
        most, depth = settings.judge_max_per_pair, settings.judge_depth
        return pooled_pairs(queries, session.store, rank, session.name, most, depth)
    if state.log is None:
        raise ApiError(422, "invalid_request", "the query log is off: no logged pairs to judge")
    pairs = logged_pairs(state.log.store, settings.judge_depth)
    return next_pair(pairs, session.store, session.name, settings.judge_max_per_pair)


@router.get("/queue", response_class=HTMLResponse)
async def queue(request: Request, state: StateDep, source: Literal["log", "queries"] = "log") -> HTMLResponse:
    """The next pair to grade: top ranks first, unjudged by this judge, graded by fewer than N people."""
    session = session_of(request, state)
    if session is None:
        return login_page(request, state)
    pair = await run_in_threadpool(_next, state, session, source)
    title, text = await run_in_threadpool(_texts, state, pair) if pair is not None else ("", "")
    context = {"judge": session.name, "source": source, "pair": pair, "title": title, "text": text}
    return page(request, "queue.html", context)
