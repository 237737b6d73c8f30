"""Who may use the judging page: the judge token (``TWOSTAGE_JUDGE_TOKEN``, never the admin token).

A request proves it with ``Authorization: Bearer <token>`` or with the cookie the login form sets
(HttpOnly, SameSite=Strict). The judge's name (who graded) comes from the login form's cookie, or the
``X-Judge-Name`` header with a bearer token. Templates are rendered by Jinja2 with autoescaping on:
every value a template shows (document text included) is HTML-escaped.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from functools import cache
from typing import Annotated

from fastapi import Depends, Request
from starlette.templating import Jinja2Templates

from twostage_search.service.judging.store import JudgementStore
from twostage_search.service.state import ApiError, ServiceState, StateDep, optional_token

TOKEN_COOKIE = "twostage_judge"
NAME_COOKIE = "twostage_judge_name"
NAME_HEADER = "X-Judge-Name"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
DEFAULT_NAME = "judge"
SECURITY_HEADERS = {
    # Defence in depth: besides escaping, no inline script runs and nothing loads from elsewhere.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def templates() -> Jinja2Templates:
    """The page templates (package data ``service/templates``), autoescaped."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("twostage_search.service", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return Jinja2Templates(env=env)


def token_ok(state: ServiceState, token: str | None) -> bool:
    """Whether ``token`` is the judge token (constant-time)."""
    expected = state.settings.judge_token
    if expected is None or not token:
        return False
    return secrets.compare_digest(token.encode(), expected.get_secret_value().encode())


def valid_name(name: str | None) -> str | None:
    return name if name is not None and NAME_PATTERN.match(name) else None


@dataclass(frozen=True, slots=True)
class JudgeSession:
    """An authenticated judge: their name and the store their grades go to."""

    name: str
    store: JudgementStore


def session_of(request: Request, state: ServiceState) -> JudgeSession | None:
    """The judge making ``request``, or None when it carries no valid judge token."""
    if state.settings.judge_token is None or state.judgements is None:
        return None
    bearer = optional_token(request)
    if token_ok(state, bearer):
        name = valid_name(request.headers.get(NAME_HEADER)) or DEFAULT_NAME
    elif token_ok(state, request.cookies.get(TOKEN_COOKIE)):
        name = valid_name(request.cookies.get(NAME_COOKIE)) or DEFAULT_NAME
    else:
        return None
    return JudgeSession(name, state.judgements)


def require_judge(request: Request, state: StateDep) -> JudgeSession:
    """The judge token check of the judging API (JSON error answers)."""
    if state.settings.judge_token is None:
        raise ApiError(403, "judging_disabled", "the judging page is disabled (set TWOSTAGE_JUDGE_TOKEN)")
    session = session_of(request, state)
    if session is None:
        raise ApiError(401, "unauthorized", "missing or wrong judge token", {"WWW-Authenticate": "Bearer"})
    return session


JudgeDep = Annotated[JudgeSession, Depends(require_judge)]
