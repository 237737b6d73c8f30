"""``POST /events``: a batch of UBI events (impressions, clicks, …), answered once it is on disk.

The handler validates the batch, queues it for the log writer and waits until a commit covers it: a 200
means every event of the batch is stored (SQLite: committed; OpenSearch: acknowledged). A full writer
queue answers 429 with Retry-After (nothing of the batch is stored); a failed write answers 503, also
when OpenSearch rejected part of the batch (the part it had indexed is deleted again). Nothing is ever
dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Body

from twostage_search.service.schemas import ErrorResponse
from twostage_search.service.state import ApiError, SettingsDep, StateDep, retry
from twostage_search.service.ubi.records import RejectedRecords, utc_now
from twostage_search.service.ubi.schemas import MAX_EVENTS, EventsStored, UbiEvent
from twostage_search.service.ubi.writer import LogClosed, LogFull

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])

ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid events (missing ids, unknown action, bad timestamp, …)"},
    429: {"model": ErrorResponse, "description": "the log writer is at capacity; nothing stored, see Retry-After"},
    503: {"model": ErrorResponse, "description": "the log is disabled, failing, rejected the batch or shutting down"},
    504: {"model": ErrorResponse, "description": "not known to be stored within the request timeout"},
}

Events = Annotated[
    list[UbiEvent],
    Body(min_length=1, max_length=MAX_EVENTS, description="UBI events (at most event_batch_max)"),
]


@router.post("/events", response_model=EventsStored, responses=ERRORS)
async def post_events(events: Events, state: StateDep, settings: SettingsDep) -> EventsStored:
    """Store a batch of UBI events; a 200 answer means all of them are on disk."""
    writer = state.log
    if writer is None:
        raise ApiError(503, "log_disabled", "this service does not log events (TWOSTAGE_LOG_ENABLED=false)")
    if len(events) > settings.event_batch_max:
        raise ApiError(422, "invalid_request", f"more than {settings.event_batch_max} events in one batch")
    allowed = settings.event_actions
    for i, event in enumerate(events):
        if event.action_name not in allowed:
            raise ApiError(
                422,
                "invalid_request",
                f"{i}.action_name: unknown action {event.action_name!r} (accepted: {', '.join(allowed)})",
            )
    received = utc_now()
    records = [e.record(received) for e in events]
    try:
        done = writer.submit_events(records)
    except LogFull:
        state.metrics.rejected.labels("", "log_full").inc()
        raise ApiError(429, "overloaded", "the event log is at capacity; retry later", retry(settings)) from None
    except LogClosed:
        raise ApiError(503, "shutting_down", "the service is stopping", retry(settings)) from None
    try:
        # shielded: a client that gives up does not cancel the write, which still resolves the future
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), timeout=settings.request_timeout_s)
    except TimeoutError:
        raise ApiError(504, "timeout", f"the events were not stored within {settings.request_timeout_s:g} s") from None
    except RejectedRecords as exc:
        log.warning("event batch rejected by the log store: %s", exc)
        message = f"the event log's store rejected the batch and kept none of it ({exc})"
        raise ApiError(503, "log_rejected", message, retry(settings)) from None
    except Exception as exc:
        log.warning("event batch not stored: %s", exc)
        raise ApiError(503, "log_unavailable", "the event log cannot write; retry later", retry(settings)) from None
    for action, count in Counter(r.action_name for r in records).items():
        state.metrics.events.labels(action).inc(count)
    return EventsStored(stored=len(records))


def openapi_limits(schema: dict[str, Any], event_batch_max: int, actions: list[str]) -> None:
    """Put this configuration's batch limit and action names into the generated OpenAPI schema."""
    body = schema["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["maxItems"] = event_batch_max
    schema["components"]["schemas"]["UbiEvent"]["properties"]["action_name"]["enum"] = list(actions)
