"""Admin endpoints (bearer token; root-equivalent within the allowlists): the experiment and the index.

``PUT /admin/experiment`` accepts only what :mod:`twostage_search.service.allowlist` allows;
``POST /admin/reload`` re-reads the (trusted) experiment file; ``POST /admin/reload-index`` reopens the
index at ``settings.index`` — resolving a symlink to the versioned directory it points at — and swaps
it in: requests in flight finish on the old index, which is closed when the last of them ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body
from starlette.concurrency import run_in_threadpool

from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.protocols import Retriever, SupportsClose
from twostage_search.engine.types import Query
from twostage_search.service.allowlist import check_experiment
from twostage_search.service.experiment import Deployment, ExperimentConfig, ExperimentError, load_experiment
from twostage_search.service.experiment import parse_experiment as parse
from twostage_search.service.schemas import ErrorResponse, ExperimentInfo
from twostage_search.service.settings import Settings
from twostage_search.service.state import AdminDep, ApiError, ServiceState, StateDep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"])

EXAMPLE_EXPERIMENT: dict[str, Any] = {
    "name": "ce-vs-identity",
    "arms": [
        {"name": "control", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 100},
        {"name": "ce20", "weight": 0.5, "reranker": {"name": "onnx-cross-encoder"}, "depth": 100, "rerank_depth": 20},
    ],
}

REJECTED: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "invalid or not allowed; the old one keeps serving"}
}


def warm_up(pipelines: Mapping[str, TwoStage]) -> None:
    """One small query per arm, so the first real request does not pay lazy initialisation."""
    for name, pipeline in pipelines.items():
        try:
            pipeline.run(Query("warm-up", "warm up query"), 1, rerank_depth=min(2, pipeline.depth))
        except Exception as exc:  # a backend down at start: report, serve anyway (requests get 503)
            log.warning("warm-up of arm %r failed: %s", name, exc)


def info(d: Deployment) -> ExperimentInfo:
    return ExperimentInfo(
        version=d.version, source=d.source, loaded_at=d.loaded_at, config=d.config.model_dump(mode="json")
    )


def swap(
    state: ServiceState, parse_config: Callable[[], ExperimentConfig], source: str, retriever: Retriever | None = None
) -> ExperimentInfo:
    try:
        prepare = warm_up if state.settings.warmup else None
        deployment = state.store.swap(parse_config(), source=source, prepare=prepare, retriever=retriever)
    except ExperimentError as exc:
        state.metrics.swaps.labels("rejected").inc()
        log.warning("experiment rejected: %s", exc)
        raise ApiError(422, "invalid_experiment", str(exc)) from None
    state.metrics.swaps.labels("ok").inc()
    state.metrics.serving(deployment)
    return info(deployment)


@router.get("/experiment", response_model=ExperimentInfo)
async def get_experiment(_: AdminDep, state: StateDep) -> ExperimentInfo:
    """The experiment being served (arms, weights, version)."""
    return info(state.store.current())


@router.put("/experiment", response_model=ExperimentInfo, responses=REJECTED)
def put_experiment(
    _: AdminDep, state: StateDep, config: Annotated[dict[str, Any], Body(examples=[EXAMPLE_EXPERIMENT])]
) -> ExperimentInfo:
    """Validate an experiment against the allowlists, build its pipelines and swap it in atomically.

    In-flight requests finish on the old experiment. Relative ``cost_model`` paths are resolved
    against the directory of the configured experiment file (and must stay inside it).
    """
    base = state.settings.experiment.parent

    def checked() -> ExperimentConfig:
        parsed = parse(config, base_dir=base)
        check_experiment(parsed, state.settings, base)
        return parsed

    return swap(state, checked, "admin")


@router.post("/reload", response_model=ExperimentInfo, responses=REJECTED)
def reload_experiment(_: AdminDep, state: StateDep) -> ExperimentInfo:
    """Re-read the experiment file and swap it in (same checks as PUT, except the allowlists)."""
    return swap(state, lambda: load_experiment(state.settings.experiment), str(state.settings.experiment))


def open_index_at(settings: Settings) -> tuple[Retriever, str]:
    """Open ``settings.index`` at the directory it resolves to now (a symlink names one version)."""
    from twostage_search import indexes

    path = settings.index.resolve()
    return indexes.open_retriever(indexes.load(path), settings.retriever_options), str(path)


@router.post("/reload-index", response_model=ExperimentInfo, responses=REJECTED)
async def reload_index(_: AdminDep, state: StateDep) -> ExperimentInfo:
    """Reopen the index (e.g. after ``twostage index`` flipped its symlink) and swap it in under load."""
    try:
        retriever, path = await run_in_threadpool(open_index_at, state.settings)
    except Exception as exc:
        log.warning("index reload failed: %s", exc)
        raise ApiError(422, "invalid_index", f"cannot open the index: {exc}") from None
    old = state.store.retriever
    current = state.store.current().config
    try:
        result = await run_in_threadpool(swap, state, lambda: current, f"index {path}", retriever)
    except ApiError:
        if isinstance(retriever, SupportsClose):
            retriever.close()
        raise
    if old in state.owned and isinstance(old, SupportsClose):
        state.owned.remove(old)
        state.store.retire(old, old.close)
    state.owned.append(retriever)
    return result
