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


def name_case(path: str, body: dict[str, Any], field: str, case_id: str) -> Any:
    """A name at the limit gets past the limit (and names nothing: 422 unknown_arm); one over it does not."""
    at, over = {**body, field: x(ID_CHARS)}, {**body, field: x(ID_CHARS + 1)}
    return pytest.param(path, at, over, "unknown_arm", field, id=case_id)


Q = {"query": "tides"}
S = "/search"
R = "/rerank"
V = "/v1/rerank"
ONE = docs("a doc")
ONE_V1 = ["a doc"]

# (path, body just at the limit, body just over it, kind at the limit (None: 200), words of the 422 message)
CASES = [
    # ------------------------------------------------------------------ /search
    pytest.param(S, {"query": x(QUERY_CHARS)}, {"query": x(QUERY_CHARS + 1)}, None, "query", id="search-query"),
    pytest.param(
        S, {"query": x(QUERY_CHARS)}, {"query": x(CEIL_QUERY_CHARS + 1)}, None, "query", id="search-query-ceil"
    ),
    pytest.param(S, {**Q, "k": K_MAX}, {**Q, "k": K_MAX + 1}, None, "k", id="search-k"),
    pytest.param(S, {**Q, "k": K_MAX}, {**Q, "k": DEPTH + 1}, None, "k", id="search-k-ceil"),
    pytest.param(
        S, {**Q, "user_id": x(ID_CHARS)}, {**Q, "user_id": x(ID_CHARS + 1)}, None, "user_id", id="search-user"
    ),
    *[name_case(S, Q, f, f"search-{f}") for f in ("arm", "reranker")],
    pytest.param(S, {**Q, "rerank_depth": 10}, {**Q, "rerank_depth": 11}, None, "rerank_depth", id="search-depth-arm"),
    pytest.param(
        S,
        {**Q, "arm": "deep", "rerank_depth": DEPTH},
        {**Q, "arm": "deep", "rerank_depth": DEPTH + 1},
        None,
        "rerank_depth",
        id="search-depth",
    ),
    pytest.param(
        S,
        {**Q, "budget_ms": BUDGET_MS_DEFAULT},
        {**Q, "budget_ms": BUDGET_MS_DEFAULT + 0.5},
        None,
        "budget_ms",
        id="search-budget-ms-arm",
    ),
    pytest.param(
        S,
        {**Q, "arm": "deep", "budget_ms": BUDGET_MS},
        {**Q, "arm": "deep", "budget_ms": BUDGET_MS + 0.5},
        None,
        "budget_ms",
        id="search-budget-ms",
    ),
    pytest.param(
        S, {**Q, "budget_usd": BUDGET_USD}, {**Q, "budget_usd": BUDGET_USD + 0.5}, None, "budget_usd", id="search-usd"
    ),
    *[
        pytest.param(S, {**Q, "filters": {f: ids(at)}}, {**Q, "filters": {f: ids(over)}}, None, f, id=f"search-{f}-{t}")
        for f in ("include_doc_ids", "exclude_doc_ids")
        for t, at, over in (("n", FILTER_IDS, FILTER_IDS + 1), ("ceil", FILTER_IDS, CEIL_FILTER_IDS + 1))
    ],
    *[
        pytest.param(
            S,
            {**Q, "filters": {f: [x(ID_CHARS)]}},
            {**Q, "filters": {f: [x(ID_CHARS + 1)]}},
            None,
            f,
            id=f"search-{f}-chars",
        )
        for f in ("include_doc_ids", "exclude_doc_ids")
    ],
    # ------------------------------------------------------------------ /rerank (object documents)
    pytest.param(
        R,
        {"query": x(QUERY_CHARS), "documents": ONE},
        {"query": x(QUERY_CHARS + 1), "documents": ONE},
        None,
        "query",
        id="rerank-query",
    ),
    pytest.param(
        R,
        {**Q, "documents": docs(*["t"] * RERANK_DOCS)},
        {**Q, "documents": docs(*["t"] * (RERANK_DOCS + 1))},
        None,
        "documents",
        id="rerank-count",
    ),
    pytest.param(
        R,
        {**Q, "documents": docs(*["t"] * RERANK_DOCS)},
        {**Q, "documents": docs(*["t"] * (CEIL_DOCS + 1))},
        None,
        "documents",
        id="rerank-count-ceil",
    ),
    pytest.param(
        R,
        {**Q, "documents": docs(x(DOC_CHARS))},
        {**Q, "documents": docs(x(DOC_CHARS + 1))},
        None,
        "documents",
        id="rerank-text",
    ),
    pytest.param(
        R,
        {**Q, "documents": docs(x(DOC_CHARS))},
        {**Q, "documents": docs(x(CEIL_DOC_CHARS + 1))},
        None,
        "documents",
        id="rerank-text-ceil",
    ),
    pytest.param(
        R,
        {**Q, "documents": docs(x(DOC_CHARS))},
        {**Q, "documents": docs("word " * 40000)},
        None,
        "documents",
        id="rerank-text-200k",
    ),
    pytest.param(
        R,
        {**Q, "documents": docs(x(DOC_CHARS - TITLE_CHARS), title=x(TITLE_CHARS))},
        {**Q, "documents": docs(x(DOC_CHARS - TITLE_CHARS + 1), title=x(TITLE_CHARS))},
        None,
        "documents",
        id="rerank-title-and-text",
    ),
    pytest.param(
        R,
        {**Q, "documents": docs("t", title=x(TITLE_CHARS))},
        {**Q, "documents": docs("t", title=x(TITLE_CHARS + 1))},
        None,
        "title",
        id="rerank-title",
    ),
    pytest.param(
        R,
        {**Q, "documents": [{"doc_id": x(ID_CHARS), "text": "t"}]},
        {**Q, "documents": [{"doc_id": x(ID_CHARS + 1), "text": "t"}]},
        None,
        "doc_id",
        id="rerank-doc-id",
    ),
    pytest.param(
        R,
        {**Q, "documents": docs(*[x(DOC_CHARS)] * (RERANK_CHARS // DOC_CHARS))},
        {**Q, "documents": docs(*[x(DOC_CHARS)] * (RERANK_CHARS // DOC_CHARS), "x")},
        None,
        "in all",
        id="rerank-total",
    ),
    pytest.param(
        R, {**Q, "documents": ONE, "k": DEPTH}, {**Q, "documents": ONE, "k": DEPTH + 1}, None, "k", id="rerank-k"
    ),
    pytest.param(
        R,
        {**Q, "documents": ONE, "user_id": x(ID_CHARS)},
        {**Q, "documents": ONE, "user_id": x(ID_CHARS + 1)},
        None,
        "user_id",
        id="rerank-user",
    ),
    *[name_case(R, {**Q, "documents": ONE}, f, f"rerank-{f}") for f in ("arm", "reranker")],
    # ------------------------------------------------------------------ /v1/rerank (string and object documents)
    pytest.param(
        V,
        {"query": x(QUERY_CHARS), "documents": ONE_V1},
        {"query": x(QUERY_CHARS + 1), "documents": ONE_V1},
        None,
        "query",
        id="v1-query",
    ),
    *[
        pytest.param(
            V,
            {**Q, "documents": [make("t")] * RERANK_DOCS},
            {**Q, "documents": [make("t")] * over},
            None,
            "documents",
            id=f"v1-count-{form}-{over}",
        )
        for form, make in (("str", str), ("obj", lambda t: {"text": t}))
        for over in (RERANK_DOCS + 1, CEIL_DOCS + 1)
    ],
    *[
        pytest.param(
            V,
            {**Q, "documents": [make(x(DOC_CHARS))]},
            {**Q, "documents": [make(over)]},
            None,
            "documents",
            id=f"v1-text-{form}-{len(over)}",
        )
        for form, make in (("str", str), ("obj", lambda t: {"text": t}))
        for over in (x(DOC_CHARS + 1), x(CEIL_DOC_CHARS + 1), "word " * 40000)
    ],
    pytest.param(
        V,
        {**Q, "documents": [{"text": x(DOC_CHARS - TITLE_CHARS), "title": x(TITLE_CHARS)}]},
        {**Q, "documents": [{"text": x(DOC_CHARS - TITLE_CHARS + 1), "title": x(TITLE_CHARS)}]},
        None,
        "documents",
        id="v1-title-and-text",
    ),
    pytest.param(
        V,
        {**Q, "documents": [{"text": "t", "title": x(TITLE_CHARS)}]},
        {**Q, "documents": [{"text": "t", "title": x(TITLE_CHARS + 1)}]},
        None,
        "title",
        id="v1-title",
    ),
    *[
        pytest.param(
            V,
            {**Q, "documents": [make(x(DOC_CHARS))] * (RERANK_CHARS // DOC_CHARS)},
            {**Q, "documents": [make(x(DOC_CHARS))] * (RERANK_CHARS // DOC_CHARS) + [make("x")]},
            None,
            "in all",
            id=f"v1-total-{form}",
        )
        for form, make in (("str", str), ("obj", lambda t: {"text": t}))
    ],
    pytest.param(
        V,
        {**Q, "documents": ONE_V1, "top_n": DEPTH},
        {**Q, "documents": ONE_V1, "top_n": DEPTH + 1},
        None,
        "top_n",
        id="v1-top-n",
    ),
    name_case(V, {**Q, "documents": ONE_V1}, "model", "v1-model"),
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
