"""Errors, the opensearch-py client, and one-line translations of its exceptions."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from twostage_search.engine.errors import BackendUnavailableError, IndexLoadError, InputError, TwoStageError
from twostage_search.engine.optional import require

if TYPE_CHECKING:
    from twostage_search.indexes.opensearch.settings import OpenSearchSettings

log = logging.getLogger(__name__)


class OpenSearchError(TwoStageError):
    """The cluster refused an operation (bad credentials, a rejected document, a failed count check)."""


class OpenSearchUnavailableError(OpenSearchError, BackendUnavailableError):
    """The cluster cannot be reached (connection refused, timeout, TLS failure) or kept failing."""


class OpenSearchIndexMissingError(OpenSearchError, IndexLoadError):
    """``meta.json`` names an alias that the cluster does not have (deleted, or a reset test cluster)."""


# --------------------------------------------------------------------------------- settings, client
def resolve_settings(settings: OpenSearchSettings | None = None, **overrides: Any) -> OpenSearchSettings:
    """``settings`` (or the environment) with ``overrides`` applied; bad values are an :class:`InputError`."""
    require("pydantic_settings", "opensearch")
    from pydantic import ValidationError

    from twostage_search.indexes.opensearch.settings import OpenSearchSettings

    try:
        if settings is None:
            return OpenSearchSettings(**overrides)
        if not overrides:
            return settings
        return OpenSearchSettings(**{**settings.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid OpenSearch settings: {problems}") from None


def make_client(settings: OpenSearchSettings) -> Any:
    opensearchpy = require("opensearchpy", "opensearch")
    return opensearchpy.OpenSearch(
        hosts=list(settings.hosts),
        http_auth=settings.http_auth(),
        verify_certs=settings.verify_certs,
        ssl_show_warn=settings.verify_certs,
        ca_certs=str(settings.ca_certs) if settings.ca_certs else None,
        timeout=settings.timeout,
        max_retries=2,  # fail over between hosts; longer outages are the bulk back-off's job
        retry_on_timeout=True,
        pool_maxsize=8,  # bulk threads and concurrent searches share the client (urllib3's default is 1)
    )


def short_error(exc: BaseException) -> str:
    """One line describing a transport error (no URLs with credentials can occur: auth is separate)."""
    info = getattr(exc, "info", None)
    if isinstance(info, Mapping):
        err = info.get("error")
        if isinstance(err, Mapping):
            return f"{err.get('type')}: {err.get('reason')}"
        if err:
            return str(err)
    text = str(info if isinstance(info, BaseException) else getattr(exc, "error", None) or exc)
    match = re.search(r"\[Errno -?\d+\][^'\")]*|Remote end closed[^'\")]*|timed out|Connection refused", text)
    line = match.group(0) if match else text
    return " ".join(line.split())[:200]


@contextlib.contextmanager
def translate_errors(settings: OpenSearchSettings, doing: str, *, missing: str | None = None) -> Iterator[None]:
    """Turn opensearch-py's exceptions into one-line :class:`TwoStageError` subclasses."""
    exc_mod = require("opensearchpy", "opensearch").exceptions
    where = ", ".join(settings.hosts)
    try:
        yield
    except exc_mod.SSLError as exc:
        raise OpenSearchUnavailableError(
            f"TLS error talking to OpenSearch at {where} while {doing} ({short_error(exc)}); "
            "check TWOSTAGE_OPENSEARCH_CA_CERTS / TWOSTAGE_OPENSEARCH_VERIFY_CERTS"
        ) from None
    except exc_mod.ConnectionTimeout:
        raise OpenSearchUnavailableError(
            f"OpenSearch at {where} did not answer within {settings.timeout:g}s while {doing}"
        ) from None
    except exc_mod.ConnectionError as exc:
        raise OpenSearchUnavailableError(
            f"cannot reach OpenSearch at {where} while {doing} ({short_error(exc)}); "
            "set TWOSTAGE_OPENSEARCH_HOSTS or OPENSEARCH_URL"
        ) from None
    except (exc_mod.AuthenticationException, exc_mod.AuthorizationException) as exc:
        raise OpenSearchError(
            f"OpenSearch at {where} refused the credentials while {doing} (HTTP {exc.status_code}); "
            "set TWOSTAGE_OPENSEARCH_USER / TWOSTAGE_OPENSEARCH_PASSWORD"
        ) from None
    except exc_mod.NotFoundError as exc:
        if missing is not None:
            raise OpenSearchIndexMissingError(missing) from None
        raise OpenSearchError(f"OpenSearch at {where}: not found while {doing} ({short_error(exc)})") from None
    except exc_mod.TransportError as exc:
        raise OpenSearchError(
            f"OpenSearch at {where} failed while {doing}: HTTP {exc.status_code} {short_error(exc)}"
        ) from None


def connect(settings: OpenSearchSettings) -> tuple[Any, dict[str, Any]]:
    """A client and the server's version info; :class:`OpenSearchUnavailableError` when unreachable."""
    client = make_client(settings)
    with translate_errors(settings, "connecting"):
        info = client.info()
    version = info.get("version", {})
    server = {"distribution": version.get("distribution", "elasticsearch"), "version": version.get("number")}
    log.info("connected to %s at %s", server, ", ".join(settings.hosts))
    return client, server
