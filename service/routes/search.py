"""``POST /search``: retrieve and rerank with the request's arm, under admission control and caps."""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request

from twostage_search.engine.cost import StageCost
from twostage_search.engine.costed import costed_retriever
from twostage_search.engine.deadline import Deadline
from twostage_search.engine.pipeline import SearchResult, TwoStage
from twostage_search.engine.policy import Budget
from twostage_search.engine.protocols import Retriever
from twostage_search.engine.types import Query, RankedList
from twostage_search.service.admission import Estimate, cost_key, predicted_ms
from twostage_search.service.experiment import ArmConfig, Deployment
from twostage_search.service.interleaving import INTERLEAVED_ARM, Interleaved, run_interleaved
from twostage_search.service.querylog import client_id, log_search, new_query_id
from twostage_search.service.schemas import Cost, ErrorResponse, Explanation, Hit, SearchRequest, SearchResponse
from twostage_search.service.settings import Settings
from twostage_search.service.state import (
    RERANK_SHARE,
    ApiError,
    BearerDep,
    SettingsDep,
    StateDep,
    check_query,
    deadline_of,
    execute,
    pick_arm,
)

router = APIRouter(tags=["search"])

ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "arm/reranker override without the admin token"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid input (query, k, a cap exceeded, unknown arm, …)"},
    429: {"model": ErrorResponse, "description": "the arm is at capacity; see Retry-After"},
    503: {"model": ErrorResponse, "description": "a backend is down or the request expired in the queue"},
    504: {"model": ErrorResponse, "description": "no answer within the request timeout"},
}


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


def with_filters(pipeline: TwoStage, request: SearchRequest, settings: Settings) -> TwoStage:
    f = request.filters
    if f is None or (f.include_doc_ids is None and not f.exclude_doc_ids):
        return pipeline
    for name, ids in (("include_doc_ids", f.include_doc_ids), ("exclude_doc_ids", f.exclude_doc_ids)):
        if ids is not None and len(ids) > settings.max_filter_ids:
            raise ApiError(422, "invalid_request", f"filters.{name}: more than {settings.max_filter_ids} ids")
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
        min_score=pipeline.min_score,
    )


def capped_budget(body: SearchRequest, arm: ArmConfig, settings: Settings) -> tuple[Budget, float]:
    """The request's money budget and its latency budget in ms (else the arm's), within the arm's caps."""
    cap = arm.max_budget_ms if arm.max_budget_ms is not None else settings.request_timeout_s * 1000 * RERANK_SHARE
    if body.budget_ms is not None and body.budget_ms > cap:
        raise ApiError(422, "invalid_request", f"budget_ms: must be at most {cap:g} on arm {arm.name!r}")
    ms = body.budget_ms if body.budget_ms is not None else arm.budget_ms
    usd = body.budget_usd if body.budget_usd is not None else arm.budget_usd
    return Budget(usd=usd), min(ms if ms is not None else math.inf, cap)


def estimate_search(pipeline: TwoStage, body: SearchRequest, arm: ArmConfig, deadline: Deadline) -> Estimate:
    """What admission needs: the arm's predicted time for this search (its depths), deadline and size."""
    depth = max(pipeline.depth, body.k)
    rerank = min(body.rerank_depth if body.rerank_depth is not None else pipeline.rerank_depth, depth)
    return Estimate(
        predicted_ms(pipeline.cost_model, retrieve=depth, rerank=rerank),
        deadline.remaining_s(),
        chars=len(body.query),
        key=cost_key(arm),
    )


def combined(estimates: list[Estimate]) -> Estimate:
    """One request that runs every arm in turn (interleaving): their predicted times add up."""
    if len(estimates) == 1:
        return estimates[0]
    times = [e.predicted_ms for e in estimates]
    total = None if any(t is None for t in times) else sum(t for t in times if t is not None)
    return Estimate(total, estimates[0].deadline_s, chars=estimates[0].chars, key=tuple(e.key for e in estimates))


def hits(result: SearchResult) -> list[Hit]:
    """The served hits with their first-stage score and the stage that ordered each."""
    return [
        Hit(
            rank=h.rank,
            doc_id=h.doc_id,
            score=h.score,
            first_stage_score=result.first_scores.get(h.doc_id),
            stage=result.stage_of(h.doc_id),
            title=h.title,
            text=h.text,
        )
        for h in result.ranking
    ]


def costs_of(costs: tuple[StageCost, ...] | list[StageCost]) -> list[Cost]:
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


@router.post("/search", response_model=SearchResponse, responses=ERRORS)
async def search(
    body: SearchRequest, request: Request, state: StateDep, settings: SettingsDep, credentials: BearerDep
) -> SearchResponse:
    """Retrieve and rerank with the arm assigned to ``user_id`` (or the ``arm`` named, with the admin token)."""
    check_query(body.query, settings)
    if body.k > settings.k_max:
        raise ApiError(422, "invalid_request", f"k: must be at most {settings.k_max}")
    current = state.store.current()
    client = client_id(request, body.user_id)
    interleave = current.config.mode == "interleave" and body.arm is None and body.reranker is None
    if interleave:  # every arm ranks; budget caps and defaults: the first (control) arm's
        arm = INTERLEAVED_ARM
        request.state.log.update(arm=arm, version=current.version)
        config = current.config.arms[0]
    else:
        arm = pick_arm(
            current,
            request,
            arm=body.arm,
            reranker=body.reranker,
            user_id=client,
            settings=settings,
            credentials=credentials,
        )
        config = current.config.arm(arm)
    capped = current.config.arms if interleave else [config]  # interleaved: every arm's cap holds
    max_depth = min(a.max_rerank_depth if a.max_rerank_depth is not None else a.depth for a in capped)
    if body.rerank_depth is not None and body.rerank_depth > max_depth:
        raise ApiError(422, "invalid_request", f"rerank_depth: must be at most {max_depth} on arm {arm!r}")
    budget, budget_ms = capped_budget(body, config, settings)
    request.state.log["k"] = body.k
    expires = deadline_of(request, settings)  # queued past it: not started (503)
    deadline = expires  # the stages' deadline: the budget's when earlier, same cancel flag
    if math.isfinite(budget_ms):
        deadline = expires.earliest(expires.after(budget_ms / 1000, start=request.state.arrived))
    query = Query(request.state.request_id, body.query)
    deployment = state.store.acquire()  # this request finishes on this snapshot (and index), whatever swaps
    if interleave and deployment.config.mode != "interleave":  # swapped between the two looks
        interleave = False
        deployment, arm = _reassign(state, deployment, request, body)
    elif not interleave and arm not in deployment.pipelines:  # serve the new assignment's arm
        deployment, arm = _reassign(state, deployment, request, body)
    names = [a.name for a in deployment.config.arms] if interleave else [arm]
    try:
        served = {name: with_filters(deployment.pipelines[name], body, settings) for name in names}
    except ApiError:
        state.store.release(deployment)
        raise
    query_id = new_query_id(body.query_id)

    def run(name: str) -> SearchResult:
        return served[name].run(query, body.k, rerank_depth=body.rerank_depth, budget=budget, deadline=deadline)

    def work() -> SearchResult | Interleaved:
        if interleave:
            return run_interleaved({name: partial(run, name) for name in names}, query_id, body.k)
        return run(arm)

    started = time.perf_counter()
    estimates = [estimate_search(served[n], body, deployment.config.arm(n), deadline) for n in names]
    outcome = await execute(state, request, arm, deployment, work, expires, combined(estimates))
    merged = outcome if isinstance(outcome, Interleaved) else None
    result = outcome.result if isinstance(outcome, Interleaved) else outcome
    took = (time.perf_counter() - started) * 1000
    m = state.metrics
    m.observe_costs(arm, result.costs)
    m.docs_reranked.labels(arm).inc(result.rerank_depth)
    if result.cached:
        m.cache_hits.labels(arm).inc()
    if result.degraded:
        m.degraded.labels(arm).inc()
    if result.dropped:
        m.dropped.labels(arm).inc(result.dropped)
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
            budget_ms=budget_ms if math.isfinite(budget_ms) else None,
            budget_usd=budget.usd,
            arm_config=_served_config(deployment, arm),
        )
    response = SearchResponse(
        request_id=request.state.request_id,
        query_id=query_id,
        experiment=deployment.config.name,
        config_version=deployment.version,
        arm=arm,
        k=body.k,
        rerank_depth=result.rerank_depth,
        degraded=result.degraded,
        dropped=result.dropped,
        cached=result.cached,
        took_ms=round(took, 3),
        hits=hits(result),
        costs=costs_of(result.costs),
        usd=result.usd,
        explain=explanation,
    )
    log_search(
        state,
        request,
        query_id=query_id,
        user_query=body.query,
        client=client,
        deployment=deployment,
        arm=arm,
        k=body.k,
        result=result,
        took_ms=took,
        extra=merged.attributes() if merged is not None else None,
    )
    return response


def _served_config(deployment: Deployment, arm: str) -> dict[str, Any]:
    """The served arm's configuration; for an interleaved answer, the whole experiment's."""
    if arm == INTERLEAVED_ARM and deployment.config.mode == "interleave":
        return deployment.config.model_dump(mode="json")
    return deployment.config.arm(arm).model_dump(mode="json")


def _reassign(state: Any, deployment: Any, request: Request, body: SearchRequest) -> tuple[Any, str]:
    """The arm vanished in a swap between picking and acquiring: assign again on the held deployment."""
    if body.arm is not None or body.reranker is not None:
        state.store.release(deployment)
        raise ApiError(422, "unknown_arm", f"arm {body.arm or body.reranker!r} was removed by a swap")
    arm: str = deployment.config.assign(client_id(request, body.user_id) or request.state.request_id)
    request.state.log.update(arm=arm, version=deployment.version)
    return deployment, arm
