"""The HTTP service: ``create_app(settings)`` → a FastAPI app serving an A/B experiment of rerankers.

The index, its retriever and each arm's reranker are loaded once in ``lifespan`` and kept on
``app.state.service`` (:class:`~twostage_search.service.state.ServiceState`). Routes live in
``service/routes/`` (search, rerank, admin, ops). Searches run on each arm's own worker threads under
admission control (:mod:`twostage_search.service.admission`); health endpoints are async and never wait
for them. Every request logs one JSON line (logger ``twostage_search.service.access``) with its request
id, arm, pseudonymous user hash, k, status and time.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twostage_search.engine import __version__
from twostage_search.engine.protocols import Retriever, SupportsClose
from twostage_search.service.admission import Admission
from twostage_search.service.experiment import (
    ExperimentStore,
    RerankerFactory,
    default_reranker_factory,
    format_validation_error,
    load_experiment,
)
from twostage_search.service.judging.store import JudgementStore
from twostage_search.service.metrics import Metrics
from twostage_search.service.openapi import service_openapi
from twostage_search.service.routes import admin, events, judge, judge_api, ops, report, rerank, search
from twostage_search.service.schemas import ErrorResponse
from twostage_search.service.settings import Settings
from twostage_search.service.state import ApiError, ServiceState
from twostage_search.service.ubi.records import LogStore
from twostage_search.service.ubi.stores import open_store
from twostage_search.service.ubi.writer import LogWriter

log = logging.getLogger(__name__)
access_log = logging.getLogger("twostage_search.service.access")


class BodyLimit:
    """ASGI middleware answering 413 when a request body exceeds ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = ErrorResponse(error="too_large", message=f"request body over {self.limit} bytes").model_dump_json()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    pass


def open_log(settings: Settings, store: LogStore | None, metrics: Metrics) -> LogWriter:
    """The log writer over ``store`` (default: the configured ``log_store``, created on first use)."""
    if store is None:
        store = open_store(
            settings.log_store,
            data_dir=settings.data_dir,
            synchronous=settings.log_synchronous,
            index_prefix=settings.log_index_prefix,
            refresh=settings.log_refresh,
        )
    days = settings.log_max_age_days
    return LogWriter(
        store,
        maxsize=settings.log_queue,
        max_age=timedelta(days=days) if days > 0 else None,
        on_lost=metrics.log_dropped.labels("query").inc,
    )


def create_app(
    settings: Settings | None = None,
    *,
    retriever: Retriever | None = None,
    reranker_factory: RerankerFactory = default_reranker_factory,
    log_store: LogStore | None = None,
) -> FastAPI:
    """The service app.

    Args:
        settings: configuration (default: ``Settings()`` from the environment).
        retriever: serve this first stage instead of opening ``settings.index`` (embedding, tests).
        reranker_factory: creates each arm's reranker from its config (default: the registry).
        log_store: where the query and event log goes (default: ``settings.log_store``).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned: list[object] = []
        if retriever is not None:
            first: Retriever = retriever
        else:
            first, _ = await run_in_threadpool(lambda: admin.open_index_at(settings))
            owned.append(first)
        store = ExperimentStore(first, reranker_factory)
        config = load_experiment(settings.experiment)
        prepare = admin.warm_up if settings.warmup else None
        deployment = await run_in_threadpool(
            lambda: store.swap(config, source=str(settings.experiment), prepare=prepare)
        )
        metrics = Metrics()
        metrics.serving(deployment)
        admission = Admission(
            settings.workers,
            settings.queue,
            max_chars=settings.queue_max_chars,
            prior_ms=settings.admission_prior_ms,
        )
        state = ServiceState(settings, store, metrics, admission, ready=True, owned=owned)
        if settings.log_enabled:
            state.log = await run_in_threadpool(open_log, settings, log_store, metrics)
            owned.append(state.log)  # closed after the searches: it writes what they queued
        if settings.judge_token is not None:
            state.judgements = await run_in_threadpool(JudgementStore, settings.data_dir)
            owned.append(state.judgements)
        app.state.service = state
        log.info("serving %s on index %s", settings.experiment, settings.index)
        try:
            yield
        finally:
            state.ready = False
            admission.shutdown()
            for resource in state.owned:
                if isinstance(resource, SupportsClose):
                    resource.close()

    app = FastAPI(
        title="twostage",
        version=__version__,
        summary="SPLADE retrieve-and-rerank search with A/B experiments over rerankers.",
        lifespan=lifespan,
    )
    for module in (search, rerank, events, ops, admin, report, judge, judge_api):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        """The generated schema with this configuration's limits (k, query length, documents, events, …)."""
        return service_openapi(app, settings)

    app.openapi = openapi  # type: ignore[method-assign]

    # ------------------------------------------------------------------ middleware and errors
    @app.middleware("http")
    async def access(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.arrived = time.monotonic()  # deadlines count from here
        rid = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        request.state.request_id = rid
        request.state.log = {}
        started = time.perf_counter()
        response = await call_next(request)
        seconds = time.perf_counter() - started
        response.headers["X-Request-ID"] = rid
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        fields: dict[str, Any] = request.state.log
        arm = fields.get("arm") or ""
        state: ServiceState | None = getattr(request.app.state, "service", None)
        if state is not None and endpoint != "/metrics":
            state.metrics.requests.labels(endpoint, arm, str(response.status_code)).inc()
            state.metrics.request_seconds.labels(endpoint, arm).observe(seconds)
        record = {"request_id": rid, "method": request.method, "endpoint": endpoint, "status": response.status_code}
        record.update(fields)
        record["ms"] = round(seconds * 1000, 2)
        access_log.info(json.dumps(record, separators=(",", ":")))
        return response

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    def _error(request: Request, status: int, kind: str, message: str, headers: dict[str, str]) -> JSONResponse:
        state: ServiceState | None = getattr(request.app.state, "service", None)
        route = request.scope.get("route")
        if state is not None:
            state.metrics.errors.labels(getattr(route, "path", "other"), kind).inc()
        request.state.log = {**getattr(request.state, "log", {}), "error": kind}
        body = ErrorResponse(error=kind, message=message, request_id=getattr(request.state, "request_id", None))
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(request, exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        return _error(request, 422, "invalid_request", "; ".join(parts) or "invalid request", {})

    @app.exception_handler(ValidationError)
    async def invalid_inside(request: Request, exc: ValidationError) -> JSONResponse:
        # A model built from request data inside an endpoint: still the client's input, still a 422.
        log.warning("validation error inside %s: %s", request.url.path, exc.title)
        return _error(request, 422, "invalid_request", format_validation_error(exc) or "invalid request", {})

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # Last resort (Starlette re-raises it after this answer, so it is logged): JSON, never plain text.
        return _error(request, 500, "internal", "internal error", {})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(request, exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))

    return app
