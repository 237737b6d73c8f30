"""Every request limit of the service: stated in the OpenAPI document, accepted just at it, and answered
422 with the JSON error shape just over it — on every endpoint, in every accepted form of a document.

The limits are written out here (the Settings defaults docs/service.md lists, and the schema's fixed
bounds), not imported from the code under test.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import need

need("fastapi", "service")
need("prometheus_client", "service")


from tests.service_helpers import AUTH, assert_error, identity_arms, small_app
from twostage_search.engine.types import Candidate, Query, RankedList

pytestmark = pytest.mark.slow

# Configurable (Settings defaults)
QUERY_CHARS = 1000
K_MAX = 100
RERANK_DOCS = 200
DOC_CHARS = 20_000  # title + text of one document
RERANK_CHARS = 400_000  # all documents of one call
FILTER_IDS = 1000
BUDGET_MS_DEFAULT = 27_000  # an arm without max_budget_ms: 0.9 x request_timeout_s (30 s)
# Fixed
ID_CHARS = 256  # user_id, arm, reranker, model, doc_id, filter ids
TITLE_CHARS = 10_000
DEPTH = 10_000  # rerank_depth, k of /rerank, top_n, an arm's depth
BUDGET_MS = 3_600_000
BUDGET_USD = 1000
NAME_CHARS = 64  # experiment and arm names
# Ceilings of the configurable ones (the schema's bounds before the configured value replaces them)
CEIL_QUERY_CHARS = 10_000
CEIL_DOCS = 10_000
CEIL_DOC_CHARS = 100_000
CEIL_FILTER_IDS = 10_000

DEEP = {"name": "deep", "weight": 0.0, "reranker": {"name": "identity"}, "depth": DEPTH, "max_budget_ms": BUDGET_MS}


class ThreeDocs:
    """A first stage that returns the same three documents for every query."""

    def retrieve(self, query: Query, k: int) -> RankedList:
        docs = [Candidate(f"d{i}", float(3 - i), f"text {i}") for i in range(3)]
        return RankedList.from_candidates(query.query_id, docs, k)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """Default caps; arm ``a`` (depth 10) serves everyone, ``deep`` (depth 10,000) only when named."""
    arms = [*identity_arms("a"), DEEP]
    with small_app(tmp_path_factory.mktemp("limits"), ThreeDocs(), arms=arms, warmup=False) as c:
        yield c


def x(n: int) -> str:
    return "x" * n


def docs(*texts: str, **fields: Any) -> list[dict[str, Any]]:
    return [{"doc_id": f"d{i}", "text": t, **fields} for i, t in enumerate(texts)]


def ids(n: int, chars: int = 4) -> list[str]:
    return [f"{i:0{chars}d}" for i in range(n)]


def case(case_id: str, path: str, base: dict, field: str, at: Any, over: Any, words: str = "", kind_at=None) -> Any:
    """``field`` just at its limit (200, or ``kind_at``: past the limit, stopped for what the value means)
    and just over it (422 invalid_request naming ``words``)."""
    at_body, over_body = {**base, field: at}, {**base, field: over}
    return pytest.param(path, at_body, over_body, kind_at, words or field, id=case_id)


S, R, V = "/search", "/rerank", "/v1/rerank"
Q = {"query": "tides"}
DEEP_Q = {**Q, "arm": "deep"}
RQ = {**Q, "documents": docs("a doc")}
VQ = {**Q, "documents": ["a doc"]}
FULL = [x(DOC_CHARS)] * (RERANK_CHARS // DOC_CHARS)  # exactly RERANK_CHARS characters in all
FORMS = [("str", str), ("obj", lambda t: {"text": t})]  # the two forms of a /v1/rerank document
AT_ID, OVER_ID = x(ID_CHARS), x(ID_CHARS + 1)
TOO_LONG = (x(DOC_CHARS + 1), x(CEIL_DOC_CHARS + 1), "word " * 40000)

CASES = [
    # ------------------------------------------------------------------ /search
    case("search-query", S, {}, "query", x(QUERY_CHARS), x(QUERY_CHARS + 1)),
    case("search-query-ceil", S, {}, "query", x(QUERY_CHARS), x(CEIL_QUERY_CHARS + 1)),
    case("search-k", S, Q, "k", K_MAX, K_MAX + 1),
    case("search-k-ceil", S, Q, "k", K_MAX, DEPTH + 1),
    case("search-user", S, Q, "user_id", AT_ID, OVER_ID),
    *[case(f"search-{f}", S, Q, f, AT_ID, OVER_ID, kind_at="unknown_arm") for f in ("arm", "reranker")],
    case("search-depth-arm", S, Q, "rerank_depth", 10, 11),  # arm a: max_rerank_depth = its depth
    case("search-depth", S, DEEP_Q, "rerank_depth", DEPTH, DEPTH + 1),
    case("search-budget-ms-arm", S, Q, "budget_ms", BUDGET_MS_DEFAULT, BUDGET_MS_DEFAULT + 0.5),
    case("search-budget-ms", S, DEEP_Q, "budget_ms", BUDGET_MS, BUDGET_MS + 0.5),
    case("search-usd", S, Q, "budget_usd", BUDGET_USD, BUDGET_USD + 0.5),
    *[
        case(f"search-{f}-{t}", S, Q, "filters", {f: at}, {f: over}, f)
        for f in ("include_doc_ids", "exclude_doc_ids")
        for t, at, over in (
            ("count", ids(FILTER_IDS), ids(FILTER_IDS + 1)),
            ("ceil", ids(FILTER_IDS), ids(CEIL_FILTER_IDS + 1)),
            ("chars", [AT_ID], [OVER_ID]),
        )
    ],
    # ------------------------------------------------------------------ /rerank (object documents)
    case("rerank-query", R, RQ, "query", x(QUERY_CHARS), x(QUERY_CHARS + 1)),
    *[
        case(f"rerank-count-{n}", R, Q, "documents", docs(*["t"] * RERANK_DOCS), docs(*["t"] * n))
        for n in (RERANK_DOCS + 1, CEIL_DOCS + 1)
    ],
    *[case(f"rerank-text-{len(t)}", R, Q, "documents", docs(x(DOC_CHARS)), docs(t)) for t in TOO_LONG],
    case(
        "rerank-title-and-text",
        R,
        Q,
        "documents",
        docs(x(DOC_CHARS - TITLE_CHARS), title=x(TITLE_CHARS)),
        docs(x(DOC_CHARS - TITLE_CHARS + 1), title=x(TITLE_CHARS)),
    ),
    case(
        "rerank-title", R, Q, "documents", docs("t", title=x(TITLE_CHARS)), docs("t", title=x(TITLE_CHARS + 1)), "title"
    ),
    case(
        "rerank-doc-id",
        R,
        Q,
        "documents",
        [{"doc_id": AT_ID, "text": "t"}],
        [{"doc_id": OVER_ID, "text": "t"}],
        "doc_id",
    ),
    case("rerank-total", R, Q, "documents", docs(*FULL), docs(*FULL, "x"), "in all"),
    case("rerank-k", R, RQ, "k", DEPTH, DEPTH + 1),
    case("rerank-user", R, RQ, "user_id", AT_ID, OVER_ID),
    *[case(f"rerank-{f}", R, RQ, f, AT_ID, OVER_ID, kind_at="unknown_arm") for f in ("arm", "reranker")],
    # ------------------------------------------------------------------ /v1/rerank (string and object documents)
    case("v1-query", V, VQ, "query", x(QUERY_CHARS), x(QUERY_CHARS + 1)),
    *[
        case(f"v1-count-{form}-{n}", V, Q, "documents", [make("t")] * RERANK_DOCS, [make("t")] * n)
        for form, make in FORMS
        for n in (RERANK_DOCS + 1, CEIL_DOCS + 1)
    ],
    *[
        case(f"v1-text-{form}-{len(t)}", V, Q, "documents", [make(x(DOC_CHARS))], [make(t)])
        for form, make in FORMS
        for t in TOO_LONG
    ],
    *[
        case(f"v1-total-{form}", V, Q, "documents", [make(t) for t in FULL], [make(t) for t in [*FULL, "x"]], "in all")
        for form, make in FORMS
    ],
    case(
        "v1-title-and-text",
        V,
        Q,
        "documents",
        [{"text": x(DOC_CHARS - TITLE_CHARS), "title": x(TITLE_CHARS)}],
        [{"text": x(DOC_CHARS - TITLE_CHARS + 1), "title": x(TITLE_CHARS)}],
    ),
    case(
        "v1-title",
        V,
        Q,
        "documents",
        [{"text": "t", "title": x(TITLE_CHARS)}],
        [{"text": "t", "title": x(TITLE_CHARS + 1)}],
        "title",
    ),
    case("v1-top-n", V, VQ, "top_n", DEPTH, DEPTH + 1),
    case("v1-model", V, VQ, "model", AT_ID, OVER_ID, kind_at="unknown_arm"),
]


@pytest.mark.parametrize(("path", "at", "over", "kind_at", "words"), CASES)
def test_limit(client, path, at, over, kind_at, words):
    resp = client.post(path, json=at)
    if kind_at is None:
        assert resp.status_code == 200, resp.text[:500]
    else:  # past the limit, stopped later for what the value means
        assert_error(resp, 422, kind_at)
    body = assert_error(client.post(path, json=over), 422, "invalid_request", words)
    assert set(body) == {"error", "message", "request_id"} and body["request_id"]


def test_the_reported_request_gets_422(client):
    """A 200,000-character string document once crashed /v1/rerank with a plain-text 500."""
    resp = client.post("/v1/rerank", json={"query": "q", "documents": ["word " * 40000]})
    assert resp.headers["content-type"] == "application/json"
    assert_error(resp, 422, "invalid_request", "documents.0")


def test_admin_experiment_limits(tmp_path):
    """PUT /admin/experiment: names of at most 64 characters, depth at most 10,000 (422 invalid_experiment)."""

    def experiment(name: str = "e", arm: str = "a", depth: int = 10) -> dict[str, Any]:
        return {"name": name, "arms": [{"name": arm, "weight": 1.0, "reranker": {"name": "identity"}, "depth": depth}]}

    with small_app(tmp_path, ThreeDocs(), warmup=False) as c:
        for field, at, over in (
            ("name", experiment(name=x(NAME_CHARS)), experiment(name=x(NAME_CHARS + 1))),
            ("arms.0.name", experiment(arm=x(NAME_CHARS)), experiment(arm=x(NAME_CHARS + 1))),
            ("arms.0.depth", experiment(depth=DEPTH), experiment(depth=DEPTH + 1)),
        ):
            assert c.put("/admin/experiment", json=at, headers=AUTH).status_code == 200
            assert_error(c.put("/admin/experiment", json=over, headers=AUTH), 422, "invalid_experiment", field)


# ---------------------------------------------------------------------------------------- OpenAPI
def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else node


def stated(schema: dict[str, Any], node: dict[str, Any], path: str, keyword: str) -> set[Any]:
    """Every value of ``keyword`` at ``path`` (dot-separated properties; ``[]`` for list items), following
    ``$ref`` and every ``anyOf``/``oneOf`` branch."""
    node = resolve(schema, node)
    branches = [*node.get("anyOf", ()), *node.get("oneOf", ())]
    if branches:
        return set().union(*(stated(schema, b, path, keyword) for b in branches))
    if not path:
        return {node[keyword]} if keyword in node else set()
    head, _, rest = path.partition(".")
    if head == "[]":
        return stated(schema, node["items"], rest, keyword) if "items" in node else set()
    if head not in node.get("properties", {}):
        return set()
    return stated(schema, node["properties"][head], rest, keyword)


def body_schema(schema: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation = schema["paths"][path][method]
    body: dict[str, Any] = operation["requestBody"]["content"]["application/json"]["schema"]
    return body


STATED = [
    ("post", "/search", "query", "maxLength", {QUERY_CHARS}),
    ("post", "/search", "k", "maximum", {K_MAX}),
    ("post", "/search", "user_id", "maxLength", {ID_CHARS}),
    ("post", "/search", "arm", "maxLength", {ID_CHARS}),
    ("post", "/search", "reranker", "maxLength", {ID_CHARS}),
    ("post", "/search", "rerank_depth", "maximum", {DEPTH}),
    ("post", "/search", "budget_ms", "maximum", {BUDGET_MS}),
    ("post", "/search", "budget_usd", "maximum", {BUDGET_USD}),
    ("post", "/search", "filters.include_doc_ids", "maxItems", {FILTER_IDS}),
    ("post", "/search", "filters.exclude_doc_ids", "maxItems", {FILTER_IDS}),
    ("post", "/search", "filters.include_doc_ids.[]", "maxLength", {ID_CHARS}),
    ("post", "/search", "filters.exclude_doc_ids.[]", "maxLength", {ID_CHARS}),
    ("post", "/rerank", "query", "maxLength", {QUERY_CHARS}),
    ("post", "/rerank", "documents", "maxItems", {RERANK_DOCS}),
    ("post", "/rerank", "documents.[].text", "maxLength", {DOC_CHARS}),
    ("post", "/rerank", "documents.[].title", "maxLength", {TITLE_CHARS}),
    ("post", "/rerank", "documents.[].doc_id", "maxLength", {ID_CHARS}),
    ("post", "/rerank", "k", "maximum", {DEPTH}),
    ("post", "/rerank", "user_id", "maxLength", {ID_CHARS}),
    ("post", "/rerank", "arm", "maxLength", {ID_CHARS}),
    ("post", "/rerank", "reranker", "maxLength", {ID_CHARS}),
    ("post", "/v1/rerank", "query", "maxLength", {QUERY_CHARS}),
    ("post", "/v1/rerank", "documents", "maxItems", {RERANK_DOCS}),
    ("post", "/v1/rerank", "documents.[]", "maxLength", {DOC_CHARS}),  # the string form
    ("post", "/v1/rerank", "documents.[].text", "maxLength", {DOC_CHARS}),  # the object form
    ("post", "/v1/rerank", "documents.[].title", "maxLength", {TITLE_CHARS}),
    ("post", "/v1/rerank", "top_n", "maximum", {DEPTH}),
    ("post", "/v1/rerank", "model", "maxLength", {ID_CHARS}),
    ("put", "/admin/experiment", "name", "maxLength", {NAME_CHARS}),
    ("put", "/admin/experiment", "arms.[].name", "maxLength", {NAME_CHARS}),
    ("put", "/admin/experiment", "arms.[].depth", "maximum", {DEPTH}),
    ("put", "/admin/experiment", "arms.[].weight", "maximum", {1}),
]


def test_openapi_states_every_limit(client):
    schema = client.get("/openapi.json").json()
    for method, path, field, keyword, expected in STATED:
        assert stated(schema, body_schema(schema, method, path), field, keyword) == expected, (path, field, keyword)


def test_openapi_states_the_configured_limits(tmp_path):
    """Configured caps replace the defaults in the schema and are enforced with the same answer."""
    caps = {"max_query_chars": 30, "k_max": 7, "max_rerank_docs": 3, "max_doc_chars": 50, "max_filter_ids": 2}
    with small_app(tmp_path, ThreeDocs(), warmup=False, **caps) as c:
        schema = c.get("/openapi.json").json()
        assert stated(schema, body_schema(schema, "post", "/search"), "query", "maxLength") == {30}
        assert stated(schema, body_schema(schema, "post", "/search"), "k", "maximum") == {7}
        assert stated(schema, body_schema(schema, "post", "/search"), "filters.exclude_doc_ids", "maxItems") == {2}
        assert stated(schema, body_schema(schema, "post", "/rerank"), "documents", "maxItems") == {3}
        assert stated(schema, body_schema(schema, "post", "/rerank"), "documents.[].text", "maxLength") == {50}
        assert stated(schema, body_schema(schema, "post", "/v1/rerank"), "documents.[]", "maxLength") == {50}
        assert stated(schema, body_schema(schema, "post", "/v1/rerank"), "documents.[].text", "maxLength") == {50}
        assert c.post("/v1/rerank", json={**Q, "documents": [x(50)] * 3}).status_code == 200
        assert_error(c.post("/v1/rerank", json={**Q, "documents": [x(51)]}), 422, "invalid_request", "50 characters")
        assert_error(c.post("/v1/rerank", json={**Q, "documents": ["t"] * 4}), 422, "invalid_request", "more than 3")
        assert_error(c.post("/search", json={**Q, "k": 8}), 422, "invalid_request", "at most 7")


def test_configured_limits_stay_within_the_schema():
    from pydantic import ValidationError

    from twostage_search.service.settings import Settings

    Settings(max_doc_chars=CEIL_DOC_CHARS, max_rerank_docs=CEIL_DOCS, max_query_chars=CEIL_QUERY_CHARS)
    for field, over in (
        ("max_doc_chars", CEIL_DOC_CHARS + 1),
        ("max_rerank_docs", CEIL_DOCS + 1),
        ("max_query_chars", CEIL_QUERY_CHARS + 1),
        ("max_filter_ids", CEIL_FILTER_IDS + 1),
        ("k_max", DEPTH + 1),
    ):
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: over})


# ---------------------------------------------------------------------------------------- safety nets
def test_errors_inside_a_handler_keep_the_json_shape(tmp_path):
    """A pydantic ValidationError raised inside an endpoint is a 422, any other crash a JSON 500."""
    from twostage_search.service.schemas import SearchRequest

    c = small_app(tmp_path, ThreeDocs(), warmup=False)

    def invalid() -> None:
        SearchRequest.model_validate({"query": x(CEIL_QUERY_CHARS + 1)})

    def crash() -> None:
        raise RuntimeError("secret detail")

    c.app.add_api_route("/invalid", invalid, methods=["POST"])
    c.app.add_api_route("/crash", crash, methods=["POST"])
    with c:
        assert_error(c.post("/invalid"), 422, "invalid_request", "query: String should have at most 10000 characters")
        resp = c.post("/crash")
        assert resp.headers["content-type"] == "application/json"
        assert_error(resp, 500, "internal", "internal error")
        assert "secret" not in resp.text
