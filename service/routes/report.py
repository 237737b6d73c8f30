"""``GET /admin/report``: the experiment report from the service's own log (admin token).

The same report as ``twostage report`` (:mod:`twostage_search.service.report`), as JSON. The control,
weights and mode are the served experiment's when the report is about it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from twostage_search.engine.errors import InputError
from twostage_search.service.experiment import NAME_CHARS, NAME_PATTERN
from twostage_search.service.report_output import report_for
from twostage_search.service.schemas import ErrorResponse
from twostage_search.service.state import AdminDep, ApiError, StateDep

router = APIRouter(prefix="/admin", tags=["admin"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or wrong admin token"},
    403: {"model": ErrorResponse, "description": "admin endpoints are disabled"},
    404: {"model": ErrorResponse, "description": "the log holds no queries of that experiment"},
    503: {"model": ErrorResponse, "description": "the log is disabled"},
}


@router.get("/report", responses=ERRORS)
def experiment_report(
    _: AdminDep,
    state: StateDep,
    experiment: Annotated[
        str | None,
        Query(max_length=NAME_CHARS, pattern=NAME_PATTERN, description="default: the served experiment"),
    ] = None,
    click_action: Annotated[list[str] | None, Query(description="action_name counted as a click")] = None,
) -> dict[str, Any]:
    """Per arm CTR, MRR, abandonment, latency and cost; differences against the control; SRM; interleaving."""
    if state.log is None:
        raise ApiError(503, "log_disabled", "this service does not log (TWOSTAGE_LOG_ENABLED=false)")
    config = state.store.current().config if state.store.loaded else None
    try:
        report = report_for(
            state.log.store, experiment=experiment, config=config, click_actions=click_action or ["click"]
        )
    except InputError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return report.as_dict()
