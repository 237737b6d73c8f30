"""The service's one settings object (pydantic-settings; environment variables ``TWOSTAGE_*``).

Injected into endpoints with ``Depends(get_settings)``; tests build their own ``Settings(...)`` and pass
it to :func:`service.app.create_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from twostage_search.service.schemas import MAX_DOC_CHARS, MAX_DOCS, MAX_FILTER_IDS, MAX_K, MAX_QUERY_CHARS
from twostage_search.service.ubi.records import DEFAULT_DATA_DIR
from twostage_search.service.ubi.schemas import MAX_EVENTS
from twostage_search.service.ubi.stores import INDEX_PREFIX_PATTERN

DEFAULT_EXPERIMENT = Path(__file__).parent / "experiments" / "default.yaml"
UBI_ACTIONS = ["impression", "click", "add_to_cart", "purchase", "view", "watch"]  # the UBI spec's defaults


class Settings(BaseSettings):
    """Service configuration. Every field can be set as ``TWOSTAGE_<NAME>`` (e.g. ``TWOSTAGE_INDEX``).

    The request caps may be set up to the absolute ceilings of :mod:`twostage_search.service.schemas`;
    the served OpenAPI document states the configured values.

    The admin token is root-equivalent within these limits: whoever holds it chooses which of the
    allowed models and backends run, and reloads the index.
    """

    model_config = SettingsConfigDict(env_prefix="TWOSTAGE_", extra="ignore", frozen=True)

    index: Path = Field(default=Path("var/scifact"), description="index directory (any backend; see indexes.load)")
    retriever_options: dict[str, str | int | float] = Field(
        default_factory=dict,
        description='search options of the index\'s backend, as JSON: {"query_side": "lookup"} (impact-csc), '
        '{"ef_search": 256} (dense)',
    )
    experiment: Path = Field(default=DEFAULT_EXPERIMENT, description="experiment file (YAML or JSON) with the arms")
    admin_token: SecretStr | None = Field(default=None, description="bearer token of /admin/*; unset disables them")
    judge_token: SecretStr | None = Field(
        default=None, description="token of the judging page /judge (not the admin token); unset disables it"
    )
    judge_queries: Path | None = Field(
        default=None, description="BEIR queries.jsonl the judging queue can serve (besides the query log)"
    )
    judge_depth: int = Field(default=10, ge=1, le=MAX_K, description="ranks per query the judging queue serves")
    judge_max_per_pair: int = Field(default=3, ge=1, description="most people who grade one (query, document)")
    max_query_chars: int = Field(
        default=1000, ge=1, le=MAX_QUERY_CHARS, description="longest accepted query, in characters"
    )
    k_max: int = Field(default=100, ge=1, le=MAX_K, description="largest k a /search request may ask for")
    max_rerank_docs: int = Field(
        default=200, ge=1, le=MAX_DOCS, description="most documents one rerank request may send"
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="hard cap on one request's time, counted from its arrival"
    )
    workers: int = Field(default=2, ge=1, description="requests of one arm running at once (its worker threads)")
    queue: int = Field(
        default=64,
        ge=0,
        description="hard bound on requests of one arm waiting for a worker; beyond: 429 (within it, an arm "
        "admits a request when its predicted wait and service time fit the request's deadline)",
    )
    queue_max_chars: int = Field(
        default=10_000_000, ge=1, description="characters of request text (queries, documents) one arm may hold"
    )
    admission_prior_ms: float = Field(
        default=1000.0,
        gt=0,
        description="predicted service time on an arm without a cost model until it has served a request",
    )
    retry_after_s: int = Field(
        default=5, ge=1, description="Retry-After seconds where no prediction gives one (503s, events' 429)"
    )
    warmup: bool = Field(default=True, description="run one query per arm at start-up before reporting ready")
    # ------------------------------------------------------------------ caps the client cannot exceed
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="largest request body; beyond: 413")
    max_doc_chars: int = Field(
        default=20_000, ge=1, le=MAX_DOC_CHARS, description="longest document (title + text) a rerank call may send"
    )
    max_rerank_chars: int = Field(default=400_000, ge=1, description="total characters of one rerank call")
    max_filter_ids: int = Field(
        default=1_000, ge=0, le=MAX_FILTER_IDS, description="longest include/exclude list of a search"
    )
    allow_overrides: bool = Field(
        default=False, description="let any client pick its arm/reranker (debug); else only with the admin token"
    )
    # ------------------------------------------------------------------ what admin may configure over HTTP
    allowed_rerankers: list[str] = Field(
        default=["identity", "cross-encoder", "onnx-cross-encoder", "cascade", "lore", "listwise-llm"],
        description="reranker names an experiment sent over HTTP may use",
    )
    allowed_models: list[str] = Field(
        default=["bundled:*", "default"], description="model specs (fnmatch patterns) allowed over HTTP"
    )
    model_dirs: list[Path] = Field(default=[], description="directories whose models may be named by path over HTTP")
    allowed_llm_backends: list[str] = Field(
        default=["llama-cpp", "transformers"], description="LLM backends allowed over HTTP"
    )
    allowed_base_urls: list[str] = Field(default=[], description="base URLs an OpenAI backend may be pointed at")
    # ------------------------------------------------------------------ query and event log (UBI)
    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR, description="service data directory: the query and event log (ubi.sqlite3)"
    )
    log_enabled: bool = Field(default=True, description="log every search and accept POST /events")
    log_store: Literal["sqlite", "opensearch"] = Field(
        default="sqlite",
        description="where the log goes: ubi.sqlite3 in data_dir, or the OpenSearch indices ubi_queries / "
        "ubi_events (cluster: TWOSTAGE_OPENSEARCH_HOSTS or OPENSEARCH_URL, as for the opensearch index)",
    )
    log_index_prefix: str = Field(
        default="", pattern=INDEX_PREFIX_PATTERN, description="opensearch store: prefix of the two index names"
    )
    log_refresh: Literal["false", "wait_for"] = Field(
        default="false",
        description="opensearch store: acknowledge events once durable (false) or once also searchable (wait_for)",
    )
    log_queue: int = Field(
        default=10_000,
        ge=1,
        description="query records and event batches waiting for the log writer; beyond: the query record is "
        "dropped (counted in twostage_log_dropped), the event batch answered 429",
    )
    log_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="sqlite store: fsync at every commit (FULL) or only at checkpoints (NORMAL)"
    )
    log_max_age_days: float = Field(
        default=90.0, ge=0, description="records older than this many days are purged (hourly); 0: kept for ever"
    )
    event_batch_max: int = Field(default=500, ge=1, le=MAX_EVENTS, description="most events in one POST /events")
    event_actions: list[str] = Field(
        default=UBI_ACTIONS, min_length=1, description="action_name values POST /events accepts"
    )

    @model_validator(mode="after")
    def _distinct_tokens(self) -> Settings:
        judge, admin = self.judge_token, self.admin_token
        if judge is not None and admin is not None and judge.get_secret_value() == admin.get_secret_value():
            raise ValueError("judge_token must differ from admin_token")
        return self
