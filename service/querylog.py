"""The search side of the UBI log: each answer's ``query_id``, the client it names, and its query record.

The record is built from what the search route already holds and handed to the log writer's queue
without waiting (:meth:`~twostage_search.service.ubi.writer.LogWriter.log_query`); serialising and
writing happen on the writer's thread. A full queue drops the record and counts it in
``twostage_log_dropped{kind="query"}``: the search is served either way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from fastapi import Request

from twostage_search.engine.pipeline import SearchResult
from twostage_search.service.experiment import Deployment
from twostage_search.service.state import ApiError, ServiceState, arrival
from twostage_search.service.ubi.records import MAX_ID_CHARS, QueryRecord, utc_now

CLIENT_HEADER = "X-Client-ID"


def new_query_id(sent: str | None) -> str:
    """The client's ``query_id`` (validated by the request schema) or a new UUID."""
    return sent if sent is not None else str(uuid.uuid4())


def client_id(request: Request, user_id: str | None) -> str | None:
    """Who searched: the body's ``user_id``, else the ``X-Client-ID`` header, else nobody (``None``)."""
    if user_id is not None:
        return user_id
    header = request.headers.get(CLIENT_HEADER, "").strip()
    if len(header) > MAX_ID_CHARS:
        raise ApiError(422, "invalid_request", f"{CLIENT_HEADER}: longer than {MAX_ID_CHARS} characters")
    return header or None


def log_search(
    state: ServiceState,
    request: Request,
    *,
    query_id: str,
    user_query: str,
    client: str | None,
    deployment: Deployment,
    arm: str,
    k: int,
    result: SearchResult,
    took_ms: float,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Queue the query record of one served search (never waits; counts a drop when the queue is full)."""
    writer = state.log
    if writer is None:
        return
    decision = result.decision
    attributes = {
        "experiment": deployment.config.name,
        "arm": arm,
        "config_version": deployment.version,
        "k": k,
        "depth": deployment.config.arm(arm).depth if arm in deployment.pipelines else None,
        "rerank_depth": result.rerank_depth,
        "policy": decision.policy if decision is not None else None,
        "degraded": result.degraded,
        "cached": result.cached,
        "dropped": result.dropped,
        "took_ms": round(took_ms, 3),
        "usd": result.usd,
        "costs": result.costs,  # StageCost records, serialised on the writer's thread
        **(extra or {}),  # an interleaved search: mode, arms, teams (arm per served position), arm_costs
    }
    record = QueryRecord(
        query_id=query_id,
        user_query=user_query,
        client_id=client,
        timestamp=utc_now() - timedelta(seconds=time.monotonic() - arrival(request)),
        query_response_id=request.state.request_id,
        query_response_hit_ids=tuple(h.doc_id for h in result.ranking),
        query_attributes=attributes,
    )
    if not writer.log_query(record):
        state.metrics.log_dropped.labels("query").inc()
