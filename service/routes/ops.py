"""Liveness, readiness and metrics: async handlers on the event loop, never behind a search thread."""

from __future__ import annotations

from fastapi import APIRouter, Response

from twostage_search.service.metrics import CONTENT_TYPE
from twostage_search.service.schemas import ErrorResponse, Health, Readiness
from twostage_search.service.state import ApiError, StateDep, retry

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers (no state, no thread)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorResponse}})
async def readyz(state: StateDep) -> Readiness:
    """Readiness: index and models loaded, an experiment serving, not shutting down."""
    if not state.ready or not state.store.loaded:
        raise ApiError(503, "not_ready", "not ready", retry(state.settings))
    d = state.store.current()
    return Readiness(
        status="ready",
        experiment=d.config.name,
        config_version=d.version,
        arms={a.name: a.weight for a in d.config.arms},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
