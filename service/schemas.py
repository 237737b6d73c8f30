"""Request and response bodies of the HTTP API (pydantic), with the examples shown in the OpenAPI docs.

Every field a client sends is bounded here (length, count, range), in every accepted form of it. The
constants below are absolute ceilings; limits that :class:`service.settings.Settings` configures (query
length, k, documents and their length, filter ids) may only be lower, are checked by the endpoints with
the same 422 shape as schema violations, and replace these bounds in the served OpenAPI document
(:mod:`twostage_search.service.openapi`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from twostage_search.service.ubi.records import QUERY_ID_PATTERN

# Absolute ceilings; the configured limits (Settings) are at most these, and usually lower.
MAX_QUERY_CHARS = 10_000
MAX_K = 10_000
MAX_ID_CHARS = 256
MAX_DOCS = 10_000
MAX_DOC_CHARS = 100_000
MAX_TITLE_CHARS = 10_000
MAX_FILTER_IDS = 10_000

DocId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
DocText = Annotated[
    str, Field(max_length=MAX_DOC_CHARS, description="document text (title + text: at most max_doc_chars)")
]


class Filters(BaseModel):
    """Restrictions on the first-stage candidates (applied before reranking).

    ``include_doc_ids``: only these documents may be returned (those among the first stage's top ``depth``
    for the query); ``exclude_doc_ids``: never return these (the first stage fetches extra candidates to
    make up for them).
    """

    model_config = ConfigDict(extra="forbid")

    include_doc_ids: list[DocId] | None = Field(default=None, max_length=MAX_FILTER_IDS)
    exclude_doc_ids: list[DocId] | None = Field(default=None, max_length=MAX_FILTER_IDS)


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": "vitamin D deficiency and multiple sclerosis", "k": 5, "user_id": "user-42"},
                {"query": "antibiotic resistance gene transfer", "k": 10, "arm": "control", "explain": True},
                {"query": "statins and cancer risk", "k": 10, "arm": "ce20", "budget_ms": 500},
            ]
        },
    )

    query: str = Field(
        min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S", description="query text (not only spaces)"
    )
    k: int = Field(default=10, ge=1, le=MAX_K, description="results to return")
    user_id: str | None = Field(
        default=None, min_length=1, max_length=MAX_ID_CHARS, description="user or session id: sticky arm assignment"
    )
    arm: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="serve this arm (testing override)")
    reranker: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="serve the first arm using it")
    rerank_depth: int | None = Field(
        default=None, ge=0, le=MAX_K, description="override the arm's rerank depth (at most its max_rerank_depth)"
    )
    budget_ms: float | None = Field(
        default=None, gt=0, le=3_600_000, description="latency budget (ms; at most the arm's max_budget_ms)"
    )
    budget_usd: float | None = Field(default=None, gt=0, le=1_000, description="money budget (USD)")
    filters: Filters | None = None
    explain: bool = Field(default=False, description="include how the rerank depth was chosen and the arm config")
    query_id: str | None = Field(
        default=None,
        pattern=QUERY_ID_PATTERN,
        description="id of this search in the query log (default: a new UUID); events name it",
    )


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    doc_id: DocId
    text: DocText
    title: str = Field(default="", max_length=MAX_TITLE_CHARS)
    score: float = Field(
        default=0.0, allow_inf_nan=False, description="incoming score (the identity reranker keeps it)"
    )


class RerankRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "query": "vitamin D and multiple sclerosis",
                    "documents": [
                        {"doc_id": "d1", "title": "Vitamin D", "text": "Low vitamin D raises MS risk."},
                        {"doc_id": "d2", "text": "Tides are caused by the moon."},
                    ],
                    "arm": "ce20",
                }
            ]
        },
    )

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S")
    documents: list[RerankDocument] = Field(min_length=1, max_length=MAX_DOCS)
    k: int | None = Field(default=None, ge=1, le=MAX_K, description="return the top k (default: all)")
    user_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    arm: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    reranker: str | None = Field(default=None, max_length=MAX_ID_CHARS)


class Hit(BaseModel):
    rank: int
    doc_id: str
    score: float = Field(
        description="the ordering score: the reranker's where stage is 'rerank'; where stage is 'first' it "
        "equals first_stage_score when nothing was reranked, else it only places the hit below the reranked ones"
    )
    first_stage_score: float | None = Field(default=None, description="the first stage's score of this document")
    stage: str = Field(default="rerank", description="which stage ordered this hit: 'rerank' or 'first'")
    title: str = ""
    text: str = ""


class Cost(BaseModel):
    stage: str = Field(description="encode, retrieve, rerank, cache, …")
    wall_ms: float
    docs: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0


class Explanation(BaseModel):
    policy: str = Field(description="fixed, budget, request (rerank_depth given), …")
    reason: str
    rerank_depth: int = Field(description="depth the policy chose (before any deadline cut)")
    predicted_ms: float = 0.0
    hard: bool = False
    budget_ms: float | None = Field(default=None, description="deadline applied to reranking")
    budget_usd: float | None = None
    arm_config: dict[str, Any] = Field(description="the served arm's configuration")


class SearchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f0c9a1e",
                    "query_id": "6f1c2a52-8f0e-4bd4-9d6c-0c1d2e3f4a5b",
                    "experiment": "ce-vs-identity",
                    "config_version": 1,
                    "arm": "ce20",
                    "k": 2,
                    "rerank_depth": 20,
                    "degraded": False,
                    "cached": False,
                    "took_ms": 1012.5,
                    "hits": [{"rank": 1, "doc_id": "4983", "score": 7.1, "title": "…", "text": "…"}],
                    "costs": [{"stage": "encode", "wall_ms": 8.1}, {"stage": "retrieve", "wall_ms": 6.0, "docs": 100}],
                    "usd": 0.0,
                    "explain": None,
                }
            ]
        }
    )

    request_id: str
    query_id: str = Field(description="this search's id in the query log: send it with the events (POST /events)")
    experiment: str
    config_version: int
    arm: str = Field(description="the arm that served this request (log it to join outcomes)")
    k: int
    rerank_depth: int = Field(description="documents actually reranked")
    degraded: bool = Field(description="the deadline cut reranking short; the rest kept first-stage order")
    dropped: int = Field(default=0, description="reranked hits removed by the arm's relevance floor")
    cached: bool
    took_ms: float
    hits: list[Hit]
    costs: list[Cost]
    usd: float
    explain: Explanation | None = None


class RerankResponse(BaseModel):
    request_id: str
    experiment: str
    config_version: int
    arm: str
    reranker: str
    took_ms: float
    degraded: bool = Field(default=False, description="the deadline cut reranking short")
    hits: list[Hit]
    costs: list[Cost]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    experiment: str | None = None
    config_version: int | None = None
    arms: dict[str, float] = Field(default_factory=dict, description="arm → weight")


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable kind", examples=["invalid_request"])
    message: str = Field(examples=["k: must be at most 100"])
    request_id: str | None = None


class ExperimentInfo(BaseModel):
    version: int
    source: str
    loaded_at: float
    config: dict[str, Any]


# ------------------------------------------------------------------------------ /v1/rerank (Cohere/Jina)
class V1Document(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: DocText
    title: str = Field(default="", max_length=MAX_TITLE_CHARS)


def _document_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict | V1Document) else None


V1Input = Annotated[
    Annotated[DocText, Tag("string")] | Annotated[V1Document, Tag("object")],
    Discriminator(
        _document_form,
        custom_error_type="invalid_document",
        custom_error_message="a document is a string or an object with text",
    ),
]
"""A document of /v1/rerank, either form with the same bounds; errors name the form (``documents.0.string``)."""


class V1RerankRequest(BaseModel):
    """The rerank request of Cohere, Jina, vLLM, TEI and Infinity: ``documents`` as strings or objects."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "ce20",
                    "query": "vitamin D and multiple sclerosis",
                    "documents": ["Low vitamin D raises MS risk.", "Tides are caused by the moon."],
                    "top_n": 1,
                    "return_documents": True,
                }
            ]
        },
    )

    model: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="an arm or reranker name")
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S")
    documents: list[V1Input] = Field(min_length=1, max_length=MAX_DOCS)
    top_n: int | None = Field(default=None, ge=1, le=MAX_K)
    return_documents: bool = False
    max_chunks_per_doc: int | None = Field(default=None, description="accepted and ignored (no chunking)")


class V1Result(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float
    document: dict[str, Any] | None = None


class V1Usage(BaseModel):
    search_units: int = 1
    total_tokens: int = 0


class V1Meta(BaseModel):
    api_version: dict[str, Any] = Field(default_factory=lambda: {"version": "2"})
    billed_units: dict[str, int] = Field(default_factory=lambda: {"search_units": 1})


class V1RerankResponse(BaseModel):
    id: str
    model: str = Field(description="the arm that served the request")
    results: list[V1Result]
    usage: V1Usage
    meta: V1Meta = Field(default_factory=V1Meta)
    degraded: bool = Field(default=False, description="the deadline cut reranking short")
