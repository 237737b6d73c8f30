"""The service's one settings object (pydantic-settings; environment variables ``TWOSTAGE_*``).

Injected into endpoints with ``Depends(get_settings)``; tests build their own ``Settings(...)`` and pass
it to :func:`service.app.create_app`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EXPERIMENT = Path(__file__).parent / "experiments" / "default.yaml"


class Settings(BaseSettings):
    """Service configuration. Every field can be set as ``TWOSTAGE_<NAME>`` (e.g. ``TWOSTAGE_INDEX``)."""

    model_config = SettingsConfigDict(env_prefix="TWOSTAGE_", extra="ignore", frozen=True)

    index: Path = Field(default=Path("var/scifact"), description="index directory (any backend; see indexes.load)")
    experiment: Path = Field(default=DEFAULT_EXPERIMENT, description="experiment file (YAML or JSON) with the arms")
    admin_token: SecretStr | None = Field(default=None, description="bearer token of /admin/*; unset disables them")
    max_query_chars: int = Field(default=1000, ge=1, description="longest accepted query, in characters")
    k_max: int = Field(default=100, ge=1, description="largest k a request may ask for")
    max_rerank_docs: int = Field(default=200, ge=1, description="most documents one /rerank request may send")
    request_timeout_s: float = Field(default=30.0, gt=0, description="hard cap on one request's search/rerank time")
    workers: int = Field(default=4, ge=1, description="threads running searches (requests beyond them queue)")
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After seconds on 503 answers")
    warmup: bool = Field(default=True, description="run one query per arm at start-up before reporting ready")
