"""The HTTP service: ``create_app(settings)`` → a FastAPI app serving an A/B experiment of rerankers.

The index, its retriever and each arm's reranker are loaded once in ``lifespan`` and kept on
``app.state.service``; endpoints doing inference are plain ``def`` (FastAPI runs them in its thread pool)
and hand the work to a bounded executor so a hard timeout can be enforced. Every request logs one JSON
line (logger ``twostage_search.service.access``) with its request id, arm, pseudonymous user hash, k, status and time.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Body, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from twostage_search.engine.cost import StageCost
from twostage_search.engine.costed import costed_retriever
from twostage_search.engine.errors import BackendUnavailableError, InputError
from twostage_search.engine.pipeline import SearchResult, TwoStage
from twostage_search.engine.policy import Budget
from twostage_search.engine.protocols import Retriever, SupportsClose
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.service.experiment import (
    Deployment,
    ExperimentError,
    ExperimentStore,
    RerankerFactory,
    UnknownArmError,
    default_reranker_factory,
    load_experiment,
    parse_experiment,
    user_hash,
)
from twostage_search.service.metrics import CONTENT_TYPE, Metrics
from twostage_search.service.schemas import (
    Cost,
    ErrorResponse,
    ExperimentInfo,
    Explanation,
    Health,
    Hit,
    Readiness,
    RerankRequest,
    RerankResponse,
    SearchRequest,
    SearchResponse,
)
from twostage_search.service.settings import Settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("twostage_search.service.access")

T = TypeVar("T")

RERANK_SHARE = 0.9
"""Share of the request timeout given to reranking as its deadline; the rest is slack for the hard cap."""


class ApiError(Exception):
    """An error answer: HTTP status, machine-readable kind, message for the client."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def _unavailable_types() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "backend down" (OpenSearch's and the LLM client's derive from the engine's)."""
    types: list[type[BaseException]] = [BackendUnavailableError]
    llm = sys.modules.get("twostage_search.rerankers.llm.backends.openai_http")
    if llm is not None and isinstance(getattr(llm, "LLMRequestError", None), type):
        types.append(llm.LLMRequestError)
    return tuple(types)


@dataclass
class ServiceState:
    """Everything the endpoints share, created once by ``lifespan``."""

    settings: Settings
    store: ExperimentStore
    metrics: Metrics
    executor: ThreadPoolExecutor
    ready: bool = False
    owned: list[object] = field(default_factory=list)  # resources to close at shutdown


# --------------------------------------------------------------------------------- dependencies
def get_state(request: Request) -> ServiceState:
    state: ServiceState | None = getattr(request.app.state, "service", None)
    if state is None:
        raise ApiError(503, "not_ready", "the service is starting", {"Retry-After": "1"})
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="TWOSTAGE_ADMIN_TOKEN")


def require_admin(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Bearer-token check of the admin endpoints (constant-time comparison)."""
    if settings.admin_token is None:
        raise ApiError(403, "admin_disabled", "admin endpoints are disabled (set TWOSTAGE_ADMIN_TOKEN)")
    expected = settings.admin_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, expected):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


AdminDep = Annotated[None, Depends(require_admin)]


# ------------------------------------------------------------------------------------- filters
class FilteredRetriever:
    """A retriever that drops excluded ids and keeps only included ones (fetching extra for excluded)."""

    def __init__(self, inner: Retriever, include: frozenset[str] | None, exclude: frozenset[str]) -> None:
        self.inner, self.include, self.exclude = inner, include, exclude
        self._inner_costed = costed_retriever(inner)

    def retrieve(self, query: Query, k: int) -> RankedList:
        return self.retrieve_with_cost(query, k)[0]

    def retrieve_with_cost(self, query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]:
        fetch = k + len(self.exclude)
        ranking, costs = self._inner_costed(query, fetch)
        kept = [
            c
            for c in ranking.candidates()
            if c.doc_id not in self.exclude and (self.include is None or c.doc_id in self.include)
        ]
        return RankedList.from_candidates(query.query_id, kept, k), costs


def _with_filters(pipeline: TwoStage, request: SearchRequest) -> TwoStage:
    f = request.filters
    if f is None or (f.include_doc_ids is None and not f.exclude_doc_ids):
        return pipeline
    include = frozenset(f.include_doc_ids) if f.include_doc_ids is not None else None
    retriever = FilteredRetriever(pipeline.retriever, include, frozenset(f.exclude_doc_ids or ()))
    return TwoStage(  # same stages and policy, no cache (filters change the answer)
        retriever,
        pipeline.reranker,
        depth=pipeline.depth,
        rerank_depth=pipeline.rerank_depth,
        policy=pipeline.policy,
        cost_model=pipeline.cost_model,
        budget=pipeline.budget,
        chunk=pipeline.chunk,
    )


# ------------------------------------------------------------------------------------- helpers
def _check_query(query: str, settings: Settings) -> None:
    if not query.strip():
        raise ApiError(422, "invalid_request", "query: must contain a non-space character")
    if len(query) > settings.max_query_chars:
        raise ApiError(422, "invalid_request", f"query: longer than {settings.max_query_chars} characters")


def _execute(state: ServiceState, work: Callable[[], T]) -> T:
    """Run ``work`` on the search executor with the hard timeout; map failures to error answers."""
    settings = state.settings
    try:
        future = state.executor.submit(work)
    except RuntimeError:  # executor shut down: the service is stopping
        raise ApiError(503, "shutting_down", "the service is stopping", _retry(settings)) from None
    try:
        return future.result(timeout=settings.request_timeout_s)
    except FutureTimeout:
        future.cancel()
        raise ApiError(504, "timeout", f"no answer within {settings.request_timeout_s:g} s") from None
    except _unavailable_types() as exc:
        log.warning("backend unavailable: %s", exc)
        raise ApiError(503, "backend_unavailable", "a search backend is unavailable", _retry(settings)) from None
    except InputError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    except Exception:
        log.exception("request failed")
        raise ApiError(500, "internal", "internal error") from None


def _retry(settings: Settings) -> dict[str, str]:
    return {"Retry-After": str(settings.retry_after_s)}


def _budget(request: SearchRequest, pipeline: TwoStage, settings: Settings) -> Budget:
    """The request's budget (else the arm's), its latency capped by the request timeout."""
    base = pipeline.budget or Budget()
    ms = request.budget_ms if request.budget_ms is not None else base.ms
    usd = request.budget_usd if request.budget_usd is not None else base.usd
    cap = settings.request_timeout_s * 1000 * RERANK_SHARE
    return Budget(ms=min(ms if ms is not None else math.inf, cap), usd=usd)


def _pick(deployment: Deployment, request: Request, body: SearchRequest | RerankRequest) -> str:
    rid: str = request.state.request_id
    try:
        arm = deployment.pick(arm=body.arm, reranker=body.reranker, user_id=body.user_id or rid)
    except UnknownArmError as exc:
        raise ApiError(422, "unknown_arm", str(exc)) from None
    request.state.log.update(
        arm=arm, user=user_hash(body.user_id) if body.user_id else None, version=deployment.version
    )
    return arm


def _hits(ranking: RankedList) -> list[Hit]:
    return [Hit(rank=h.rank, doc_id=h.doc_id, score=h.score, title=h.title, text=h.text) for h in ranking]


def _costs(costs: tuple[StageCost, ...] | list[StageCost]) -> list[Cost]:
    return [
        Cost(
            stage=c.stage,
            wall_ms=round(c.wall_ms, 3),
            docs=c.docs,
            tokens_in=c.tokens_in,
            tokens_out=c.tokens_out,
            usd=c.usd,
        )
        for c in costs
    ]


def _warm_up(pipelines: Mapping[str, TwoStage]) -> None:
    """One small query per arm, so the first real request does not pay lazy initialisation."""
    for name, pipeline in pipelines.items():
        try:
            pipeline.run(Query("warm-up", "warm up query"), 1, rerank_depth=min(2, pipeline.depth))
        except Exception as exc:  # a backend down at start: report, serve anyway (requests get 503)
            log.warning("warm-up of arm %r failed: %s", name, exc)


# ------------------------------------------------------------------------------------- the app
EXAMPLE_EXPERIMENT: dict[str, Any] = {
    "name": "ce-vs-identity",
    "arms": [
        {"name": "control", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 100},
        {"name": "ce20", "weight": 0.5, "reranker": {"name": "cross-encoder"}, "depth": 100, "rerank_depth": 20},
    ],
}

ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "invalid input (query, k, unknown arm, …)"},
    503: {"model": ErrorResponse, "description": "a backend is down; see Retry-After"},
    504: {"model": ErrorResponse, "description": "no answer within the request timeout"},
}


def create_app(
    settings: Settings | None = None,
    *,
    retriever: Retriever | None = None,
    reranker_factory: RerankerFactory = default_reranker_factory,
) -> FastAPI:
    """The service app.

    Args:
        settings: configuration (default: ``Settings()`` from the environment).
        retriever: serve this first stage instead of opening ``settings.index`` (embedding, tests).
        reranker_factory: creates each arm's reranker from its config (default: the registry).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned: list[object] = []
        if retriever is not None:
            first: Retriever = retriever
        else:
            from twostage_search import indexes

            first = await run_in_threadpool(lambda: indexes.load(settings.index).retriever())
            owned.append(first)
        store = ExperimentStore(first, reranker_factory)
        config = load_experiment(settings.experiment)
        prepare = _warm_up if settings.warmup else None
        deployment = await run_in_threadpool(
            lambda: store.swap(config, source=str(settings.experiment), prepare=prepare)
        )
        metrics = Metrics()
        metrics.serving(deployment)
        executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="twostage-search")
        state = ServiceState(settings, store, metrics, executor, ready=True, owned=owned)
        app.state.service = state
        log.info("serving %s on index %s", settings.experiment, settings.index)
        try:
            yield
        finally:
            state.ready = False
            executor.shutdown(wait=True, cancel_futures=True)
            for resource in owned:
                if isinstance(resource, SupportsClose):
                    resource.close()

    app = FastAPI(
        title="twostage",
        version="0.1.0",
        summary="SPLADE retrieve-and-rerank search with A/B experiments over rerankers.",
        lifespan=lifespan,
    )

    def openapi() -> dict[str, Any]:
        """The generated schema with this configuration's limits (k, query length, documents)."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            models = schema["components"]["schemas"]
            for name in ("SearchRequest", "RerankRequest"):
                models[name]["properties"]["query"]["maxLength"] = settings.max_query_chars
            models["SearchRequest"]["properties"]["k"]["maximum"] = settings.k_max
            models["RerankRequest"]["properties"]["documents"]["maxItems"] = settings.max_rerank_docs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # ------------------------------------------------------------------ middleware and errors
    @app.middleware("http")
    async def access(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(request, exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))

    # ------------------------------------------------------------------ endpoints
    @app.post("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
    def search(body: SearchRequest, request: Request, state: StateDep, settings: SettingsDep) -> SearchResponse:
        """Retrieve and rerank with the arm assigned to ``user_id`` (or the ``arm`` named)."""
        _check_query(body.query, settings)
        if body.k > settings.k_max:
            raise ApiError(422, "invalid_request", f"k: must be at most {settings.k_max}")
        deployment = state.store.current()  # this request finishes on this snapshot, whatever swaps happen
        arm = _pick(deployment, request, body)
        request.state.log["k"] = body.k
        pipeline = deployment.pipelines[arm]
        budget = _budget(body, pipeline, settings)
        served = _with_filters(pipeline, body)
        query = Query(request.state.request_id, body.query)
        started = time.perf_counter()
        result: SearchResult = _execute(
            state, lambda: served.run(query, body.k, rerank_depth=body.rerank_depth, budget=budget)
        )
        took = (time.perf_counter() - started) * 1000
        m = state.metrics
        m.observe_costs(arm, result.costs)
        m.docs_reranked.labels(arm).inc(result.rerank_depth)
        if result.cached:
            m.cache_hits.labels(arm).inc()
        if result.degraded:
            m.degraded.labels(arm).inc()
        request.state.log.update(rerank_depth=result.rerank_depth, degraded=result.degraded, cached=result.cached)
        explanation = None
        if body.explain:
            d = result.decision
            explanation = Explanation(
                policy=d.policy if d else "",
                reason=d.reason if d else ("cached result" if result.cached else ""),
                rerank_depth=d.rerank_depth if d else result.rerank_depth,
                predicted_ms=d.predicted_ms if d else 0.0,
                hard=d.hard if d else False,
                budget_ms=budget.ms,
                budget_usd=budget.usd,
                arm_config=deployment.config.arm(arm).model_dump(mode="json"),
            )
        return SearchResponse(
            request_id=request.state.request_id,
            experiment=deployment.config.name,
            config_version=deployment.version,
            arm=arm,
            k=body.k,
            rerank_depth=result.rerank_depth,
            degraded=result.degraded,
            cached=result.cached,
            took_ms=round(took, 3),
            hits=_hits(result.ranking),
            costs=_costs(result.costs),
            usd=result.usd,
            explain=explanation,
        )

    @app.post("/rerank", response_model=RerankResponse, responses=ERRORS, tags=["search"])
    def rerank(body: RerankRequest, request: Request, state: StateDep, settings: SettingsDep) -> RerankResponse:
        """Rerank the given documents with the arm's reranker (no first stage)."""
        _check_query(body.query, settings)
        if len(body.documents) > settings.max_rerank_docs:
            raise ApiError(422, "invalid_request", f"documents: more than {settings.max_rerank_docs}")
        ids = [d.doc_id for d in body.documents]
        if len(set(ids)) != len(ids):
            raise ApiError(422, "invalid_request", "documents: doc_id values must be unique")
        deployment = state.store.current()
        arm = _pick(deployment, request, body)
        pipeline = deployment.pipelines[arm]
        docs = [Candidate(d.doc_id, d.score, d.text, d.title) for d in body.documents]
        query = Query(request.state.request_id, body.query)
        started = time.perf_counter()
        ranking, costs = _execute(state, lambda: pipeline.rerank_costed(query, docs))
        took = (time.perf_counter() - started) * 1000
        state.metrics.observe_costs(arm, costs)
        state.metrics.docs_reranked.labels(arm).inc(len(docs))
        if body.k is not None:
            ranking = ranking.head(body.k)
        request.state.log.update(k=body.k, docs=len(docs))
        return RerankResponse(
            request_id=request.state.request_id,
            experiment=deployment.config.name,
            config_version=deployment.version,
            arm=arm,
            reranker=deployment.config.arm(arm).reranker.name,
            took_ms=round(took, 3),
            hits=_hits(ranking),
            costs=_costs(costs),
        )

    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorResponse}}, tags=["ops"])
    def readyz(state: StateDep) -> Readiness:
        """Readiness: index and models loaded, an experiment serving, not shutting down."""
        if not state.ready or not state.store.loaded:
            raise ApiError(503, "not_ready", "not ready", _retry(state.settings))
        d = state.store.current()
        return Readiness(
            status="ready",
            experiment=d.config.name,
            config_version=d.version,
            arms={a.name: a.weight for a in d.config.arms},
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
        tags=["ops"],
    )
    def metrics(state: StateDep) -> Response:
        """Prometheus metrics."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    def _info(d: Deployment) -> ExperimentInfo:
        return ExperimentInfo(
            version=d.version, source=d.source, loaded_at=d.loaded_at, config=d.config.model_dump(mode="json")
        )

    @app.get("/admin/experiment", response_model=ExperimentInfo, tags=["admin"])
    def get_experiment(_: AdminDep, state: StateDep) -> ExperimentInfo:
        """The experiment being served (arms, weights, version)."""
        return _info(state.store.current())

    @app.put(
        "/admin/experiment",
        response_model=ExperimentInfo,
        responses={422: {"model": ErrorResponse, "description": "invalid experiment; the old one keeps serving"}},
        tags=["admin"],
    )
    def put_experiment(
        _: AdminDep, state: StateDep, config: Annotated[dict[str, Any], Body(examples=[EXAMPLE_EXPERIMENT])]
    ) -> ExperimentInfo:
        """Validate an experiment, build its pipelines and swap it in atomically.

        In-flight requests finish on the old experiment. Relative ``cost_model`` paths are resolved
        against the directory of the configured experiment file.
        """
        return _swap(state, lambda: parse_experiment(config, base_dir=state.settings.experiment.parent), "admin")

    @app.post("/admin/reload", response_model=ExperimentInfo, responses={422: {"model": ErrorResponse}}, tags=["admin"])
    def reload_experiment(_: AdminDep, state: StateDep) -> ExperimentInfo:
        """Re-read the experiment file and swap it in (same checks as PUT)."""
        return _swap(state, lambda: load_experiment(state.settings.experiment), str(state.settings.experiment))

    def _swap(state: ServiceState, parse: Callable[[], Any], source: str) -> ExperimentInfo:
        try:
            prepare = _warm_up if state.settings.warmup else None
            deployment = state.store.swap(parse(), source=source, prepare=prepare)
        except ExperimentError as exc:
            state.metrics.swaps.labels("rejected").inc()
            log.warning("experiment rejected: %s", exc)
            raise ApiError(422, "invalid_experiment", str(exc)) from None
        state.metrics.swaps.labels("ok").inc()
        state.metrics.serving(deployment)
        return _info(deployment)

    return app
