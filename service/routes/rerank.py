"""Rerank given documents (no first stage): ``POST /rerank`` (ours) and ``POST /v1/rerank``, the
Cohere/Jina shape that vLLM, TEI and Infinity also serve, so their client libraries work unchanged."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request

from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.pipeline import TwoStage, merge_cascade
from twostage_search.engine.types import Candidate, Query
from twostage_search.service.admission import Estimate, cost_key, predicted_ms
from twostage_search.service.experiment import Deployment
from twostage_search.service.routes.search import ERRORS, costs_of
from twostage_search.service.schemas import (
    Hit,
    RerankRequest,
    RerankResponse,
    V1Document,
    V1RerankRequest,
    V1RerankResponse,
    V1Result,
    V1Usage,
)
from twostage_search.service.settings import Settings
from twostage_search.service.state import (
    ApiError,
    BearerDep,
    ServiceState,
    SettingsDep,
    StateDep,
    check_query,
    deadline_of,
    execute,
    pick_arm,
)

router = APIRouter(tags=["rerank"])


def check_documents(texts: Sequence[str], settings: Settings) -> None:
    """The caps of one rerank call: documents, characters per document, characters in all."""
    if len(texts) > settings.max_rerank_docs:
        raise ApiError(422, "invalid_request", f"documents: more than {settings.max_rerank_docs}")
    longest = max((len(t) for t in texts), default=0)
    if longest > settings.max_doc_chars:
        raise ApiError(422, "invalid_request", f"documents: one is longer than {settings.max_doc_chars} characters")
    if sum(len(t) for t in texts) > settings.max_rerank_chars:
        raise ApiError(422, "invalid_request", f"documents: more than {settings.max_rerank_chars} characters in all")


async def rerank_docs(
    state: ServiceState, request: Request, arm: str, docs: list[Candidate]
) -> tuple[Deployment, PartialRanking]:
    """Rerank ``docs`` with the arm's reranker under admission control and the request's deadline."""
    query = Query(request.state.request_id, request.state.query)
    deadline = deadline_of(request, state.settings)
    deployment = state.store.acquire()
    pipeline: TwoStage | None = deployment.pipelines.get(arm)
    if pipeline is None:
        state.store.release(deployment)
        raise ApiError(503, "overloaded", "the experiment changed; retry", {"Retry-After": "1"})
    served = pipeline

    def work(deadline: Deadline = deadline) -> PartialRanking:
        return served.rerank_until(query, docs, deadline)

    chars = len(request.state.query) + sum(len(d.text) + len(d.title) for d in docs)
    cost = predicted_ms(served.cost_model, retrieve=0, rerank=len(docs))
    estimate = Estimate(cost, deadline.remaining_s(), chars=chars, key=cost_key(deployment.config.arm(arm)))
    partial = await execute(state, request, arm, deployment, work, deadline, estimate)
    state.metrics.observe_costs(arm, partial.costs)
    state.metrics.docs_reranked.labels(arm).inc(len(docs) - len(partial.unscored))
    if partial.degraded:
        state.metrics.degraded.labels(arm).inc()
    return deployment, partial


@router.post("/rerank", response_model=RerankResponse, responses=ERRORS)
async def rerank(
    body: RerankRequest, request: Request, state: StateDep, settings: SettingsDep, credentials: BearerDep
) -> RerankResponse:
    """Rerank the given documents with the arm's reranker (no first stage)."""
    check_query(body.query, settings)
    check_documents([d.title + d.text for d in body.documents], settings)
    ids = [d.doc_id for d in body.documents]
    if len(set(ids)) != len(ids):
        raise ApiError(422, "invalid_request", "documents: doc_id values must be unique")
    arm = pick_arm(
        state.store.current(),
        request,
        arm=body.arm,
        reranker=body.reranker,
        user_id=body.user_id,
        settings=settings,
        credentials=credentials,
    )
    docs = [Candidate(d.doc_id, d.score, d.text, d.title) for d in body.documents]
    request.state.query = body.query
    started = time.perf_counter()
    deployment, partial = await rerank_docs(state, request, arm, docs)
    took = (time.perf_counter() - started) * 1000
    ranking = merge_cascade(request.state.request_id, partial.ranking, list(partial.unscored))
    if body.k is not None:
        ranking = ranking.head(body.k)
    request.state.log.update(k=body.k, docs=len(docs), degraded=partial.degraded)
    incoming = {d.doc_id: d.score for d in body.documents}
    reranked = set(partial.ranking.doc_ids)
    return RerankResponse(
        request_id=request.state.request_id,
        experiment=deployment.config.name,
        config_version=deployment.version,
        arm=arm,
        reranker=deployment.config.arm(arm).reranker.name,
        took_ms=round(took, 3),
        degraded=partial.degraded,
        hits=[
            Hit(
                rank=h.rank,
                doc_id=h.doc_id,
                score=h.score,
                first_stage_score=incoming[h.doc_id],
                stage="rerank" if h.doc_id in reranked else "first",
                title=h.title,
                text=h.text,
            )
            for h in ranking
        ],
        costs=costs_of(partial.costs),
    )


def _model_arm(deployment: Deployment, model: str | None) -> tuple[str | None, str | None]:
    """``model`` names an arm, else a reranker; unset: the normal assignment."""
    if model is None:
        return None, None
    if model in deployment.pipelines:
        return model, None
    return None, model


@router.post("/v1/rerank", response_model=V1RerankResponse, responses=ERRORS)
async def v1_rerank(
    body: V1RerankRequest, request: Request, state: StateDep, settings: SettingsDep, credentials: BearerDep
) -> V1RerankResponse:
    """Cohere/Jina-compatible rerank: ``results`` sorted by ``relevance_score``, ``index`` into ``documents``.

    ``model`` names an arm or a reranker (admin token or ``allow_overrides`` needed, as for ``arm``);
    documents the deadline left unscored come last, in input order, with scores below every scored one.
    """
    check_query(body.query, settings)
    # The string form is bounded by the schema like the object's text; no model is built from input here.
    objects: list[dict[str, Any]] = [
        d.model_dump() if isinstance(d, V1Document) else {"text": d, "title": ""} for d in body.documents
    ]
    check_documents([d["title"] + d["text"] for d in objects], settings)
    current = state.store.current()
    named_arm, named_reranker = _model_arm(current, body.model)
    arm = pick_arm(
        current,
        request,
        arm=named_arm,
        reranker=named_reranker,
        user_id=None,
        settings=settings,
        credentials=credentials,
    )
    # Input order is the "first stage": ties and unscored documents keep it.
    n = len(objects)
    docs = [Candidate(str(i), float(n - i), d["text"], d["title"]) for i, d in enumerate(objects)]
    request.state.query = body.query
    _, partial = await rerank_docs(state, request, arm, docs)
    # Scored documents by score; unscored ones (deadline) after them in input order, at the lowest score.
    low = min((h.score for h in partial.ranking), default=0.0)
    order = [(int(h.doc_id), h.score) for h in partial.ranking] + [(int(c.doc_id), low) for c in partial.unscored]
    top = order[: body.top_n] if body.top_n is not None else order
    request.state.log.update(docs=n, degraded=partial.degraded)
    tokens = sum(c.tokens_in + c.tokens_out for c in partial.costs)
    return V1RerankResponse(
        id=request.state.request_id,
        model=arm,
        results=[
            V1Result(
                index=i,
                relevance_score=score,
                document=objects[i] if body.return_documents else None,
            )
            for i, score in top
        ],
        usage=V1Usage(total_tokens=tokens),
        degraded=partial.degraded,
    )
