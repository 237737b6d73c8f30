"""What every route shares: the service state, its dependencies, error answers and running work.

``ServiceState`` is created once by the app's ``lifespan`` and kept on ``app.state.service``; routes get
it (and the settings, the admin check) through the ``Annotated[..., Depends()]`` aliases below, so a
router can be mounted on any app that sets ``app.state.service``.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from twostage_search.engine.deadline import Deadline
from twostage_search.engine.errors import BackendUnavailableError, InputError
from twostage_search.service.admission import Admission, Estimate, Expired, Overloaded
from twostage_search.service.experiment import Deployment, ExperimentStore, UnknownArmError, user_hash
from twostage_search.service.judging.store import JudgementStore
from twostage_search.service.metrics import Metrics
from twostage_search.service.settings import Settings
from twostage_search.service.ubi.writer import LogWriter

log = logging.getLogger("twostage_search.service")

T = TypeVar("T")

RERANK_SHARE = 0.9
"""Share of the request timeout (from arrival) given to the stages as their cooperative deadline; the
rest is slack before the hard timeout answers 504."""


class ApiError(Exception):
    """An error answer: HTTP status, machine-readable kind, message for the client."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


@dataclass
class ServiceState:
    """Everything the endpoints share, created once by ``lifespan``."""

    settings: Settings
    store: ExperimentStore
    metrics: Metrics
    admission: Admission
    ready: bool = False
    owned: list[object] = field(default_factory=list)  # resources to close at shutdown
    log: LogWriter | None = None  # the query and event log (None: logging off)
    judgements: JudgementStore | None = None  # relevance judgements (None: no judge token set)


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


def optional_token(request: Request) -> str | None:
    """The bearer token of a public endpoint, if any (optional there, so not declared in the schema)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


BearerDep = Annotated[str | None, Depends(optional_token)]


def is_admin(settings: Settings, token: str | None) -> bool:
    """Whether ``token`` is the admin token (constant-time comparison)."""
    if settings.admin_token is None or token is None:
        return False
    return secrets.compare_digest(token.encode(), settings.admin_token.get_secret_value().encode())


def require_admin(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Bearer-token check of the admin endpoints."""
    if settings.admin_token is None:
        raise ApiError(403, "admin_disabled", "admin endpoints are disabled (set TWOSTAGE_ADMIN_TOKEN)")
    if not is_admin(settings, credentials.credentials if credentials is not None else None):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


AdminDep = Annotated[None, Depends(require_admin)]


# ------------------------------------------------------------------------------------- helpers
def retry(settings: Settings) -> dict[str, str]:
    return {"Retry-After": str(settings.retry_after_s)}


def check_query(query: str, settings: Settings) -> None:
    if not query.strip():
        raise ApiError(422, "invalid_request", "query: must contain a non-space character")
    if len(query) > settings.max_query_chars:
        raise ApiError(422, "invalid_request", f"query: longer than {settings.max_query_chars} characters")


def arrival(request: Request) -> float:
    """When the request arrived (``time.monotonic()``, set by the access middleware)."""
    return float(getattr(request.state, "arrived", time.monotonic()))


def deadline_of(request: Request, settings: Settings) -> Deadline:
    """The stages' cooperative deadline: a share of the request timeout, counted from arrival."""
    return Deadline.after(settings.request_timeout_s * RERANK_SHARE, start=arrival(request))


def pick_arm(
    deployment: Deployment,
    request: Request,
    *,
    arm: str | None,
    reranker: str | None,
    user_id: str | None,
    settings: Settings,
    credentials: str | None,
) -> str:
    """The arm serving this request; naming one needs the admin token or ``allow_overrides``."""
    if (arm is not None or reranker is not None) and not (settings.allow_overrides or is_admin(settings, credentials)):
        raise ApiError(403, "override_forbidden", "arm and reranker overrides need the admin token")
    rid: str = request.state.request_id
    try:
        chosen = deployment.pick(arm=arm, reranker=reranker, user_id=user_id or rid)
    except UnknownArmError as exc:
        raise ApiError(422, "unknown_arm", str(exc)) from None
    request.state.log.update(arm=chosen, user=user_hash(user_id) if user_id else None, version=deployment.version)
    return chosen


def _unavailable_types() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "backend down" (OpenSearch's and the LLM client's derive from the engine's)."""
    types: list[type[BaseException]] = [BackendUnavailableError]
    llm = sys.modules.get("twostage_search.rerankers.llm.backends.openai_http")
    if llm is not None and isinstance(getattr(llm, "LLMRequestError", None), type):
        types.append(llm.LLMRequestError)
    return tuple(types)


async def execute(
    state: ServiceState,
    request: Request,
    arm: str,
    deployment: Deployment,
    work: Callable[[], T],
    deadline: Deadline,
    estimate: Estimate | None = None,
) -> T:
    """Run ``work`` under the arm's admission control and map every failure to an error answer.

    ``estimate`` (predicted service time, deadline, size) decides admission; without one, the arm's
    prior against ``deadline``. ``deployment`` (taken with ``store.acquire``) is released when the work
    ends, not when the client stops waiting, so its index stays open while a thread still uses it.
    """
    settings = state.settings
    if estimate is None:
        estimate = Estimate(None, deadline.remaining_s())
    hard_s = max(settings.request_timeout_s - (time.monotonic() - arrival(request)), 0.001)
    try:
        return await state.admission.run(
            arm, work, estimate, deadline, hard_s, done=lambda: state.store.release(deployment)
        )
    except Overloaded as exc:
        state.metrics.rejected.labels(arm, "overloaded").inc()
        message = f"arm {arm!r} is at capacity ({exc.reason}); retry later"
        raise ApiError(429, "overloaded", message, {"Retry-After": str(exc.retry_after_s)}) from None
    except Expired:
        state.metrics.rejected.labels(arm, "expired").inc()
        raise ApiError(
            503, "overloaded", "the request waited past its deadline; retry later", retry(settings)
        ) from None
    except TimeoutError:
        raise ApiError(504, "timeout", f"no answer within {settings.request_timeout_s:g} s") from None
    except RuntimeError as exc:  # executor shut down: the service is stopping
        if "shutdown" not in str(exc):
            log.exception("request failed")
            raise ApiError(500, "internal", "internal error") from None
        raise ApiError(503, "shutting_down", "the service is stopping", retry(settings)) from None
    except _unavailable_types() as exc:
        log.warning("backend unavailable: %s", exc)
        raise ApiError(503, "backend_unavailable", "a search backend is unavailable", retry(settings)) from None
    except InputError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    except Exception:
        log.exception("request failed")
        raise ApiError(500, "internal", "internal error") from None
