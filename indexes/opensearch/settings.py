"""Connection and query settings of the OpenSearch backend (pydantic-settings; the ``opensearch`` extra).

Every field can come from the environment with the prefix ``TWOSTAGE_OPENSEARCH_`` (e.g.
``TWOSTAGE_OPENSEARCH_PASSWORD``); the hosts also from ``OPENSEARCH_URL``. Keyword arguments win over
the environment. A host URL may carry ``user:password@``: it is split off into ``user``/``password``
so that no URL we log or write to ``meta.json`` holds a credential.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

QueryMode = Literal["rank_feature", "neural_sparse"]
ImpactCheck = Literal["error", "warn"]

DEFAULT_HOST = "http://localhost:9200"


def _split_hosts(value: object) -> object:
    if isinstance(value, str):
        return [h.strip() for h in value.split(",") if h.strip()]
    return value


def strip_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``https://u:p@host:9200`` → (``https://host:9200``, ``u``, ``p``), percent-decoded; ``host:port`` gets ``http://``."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url.rstrip("/"), None, None
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return clean, user, password


class OpenSearchSettings(BaseSettings):
    """Where the cluster is and how to talk to it. ``repr`` and logs never show the password."""

    model_config = SettingsConfigDict(env_prefix="TWOSTAGE_OPENSEARCH_", populate_by_name=True, extra="forbid")

    hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_HOST],
        validation_alias=AliasChoices("TWOSTAGE_OPENSEARCH_HOSTS", "OPENSEARCH_URL"),
        description="cluster URLs, comma-separated in the environment",
    )
    user: str | None = None
    password: SecretStr | None = None
    verify_certs: bool = True
    ca_certs: Path | None = None
    timeout: float = Field(30.0, gt=0, description="seconds per request")
    max_retries: int = Field(8, ge=0, description="bulk retries on 429/5xx/connection errors, with back-off")
    retry_backoff: float = Field(0.5, ge=0, description="first back-off in seconds; doubles per retry")
    max_backoff: float = Field(30.0, ge=0, description="longest back-off in seconds")
    shards: int = Field(1, ge=1, description="primary shards of a new index")
    replicas: int = Field(0, ge=0, description="replicas of a new index (use 1+ on a multi-node cluster)")
    refresh_interval: str = Field("1s", description="index refresh interval after a build")
    query_mode: QueryMode = "rank_feature"
    query_top_n: int | None = Field(None, ge=1, description="keep the N heaviest query terms (None: all)")
    impact_check: ImpactCheck = Field(
        "error", description="a document impact above 511 (stored inexactly by rank_features): error or warn"
    )

    @field_validator("hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        return _split_hosts(value)

    @model_validator(mode="after")
    def _move_credentials_out_of_urls(self) -> OpenSearchSettings:
        if not self.hosts:
            raise ValueError("hosts must name at least one URL")
        clean = []
        for host in self.hosts:
            url, user, password = strip_credentials(host)
            clean.append(url)
            if user and self.user is None:
                self.user = user
            if password and self.password is None:
                self.password = SecretStr(password)
        if clean != self.hosts:  # (assigning marks the field as set, which open() reads as an override)
            self.hosts = clean
        return self

    def http_auth(self) -> tuple[str, str] | None:
        if self.user is None:
            return None
        return (self.user, self.password.get_secret_value() if self.password else "")
