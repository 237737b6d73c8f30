"""The HTTP service (service/): every endpoint and error answer, A/B assignment, admin hot swap under load,
a real uvicorn process, and schemathesis against the OpenAPI schema — on the tiny fixture index."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import need

need("fastapi", "service")
need("prometheus_client", "service")

from fastapi.testclient import TestClient

from tests.service_helpers import (
    TOKEN,
    FailingRetriever,
    assert_error,
    search,
    small_app,
    write_experiment,
)
from twostage_search.engine.costmodel import CostModel, LinearCost, Observation
from twostage_search.indexes.opensearch import OpenSearchUnavailableError
from twostage_search.service.app import create_app
from twostage_search.service.settings import Settings

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def main_experiment(tmp_path_factory) -> Path:
    """Identity vs the bundled cross-encoder on the top 3, a weight-0 arm with a result cache, and a
    budget-policy arm whose cost model says 5 s per reranked document."""
    tmp = tmp_path_factory.mktemp("exp")
    # Fitted on 1,000 observations of exactly 5 s per document: a few fast identity reranks (warm-up)
    # move the slope by well under 1 s, so the budget decisions below are exact on a loaded machine too.
    observed = [Observation(k, 5000.0 * k) for k in range(1, 11)] * 100
    CostModel({"rerank": LinearCost.fit(observed, forget=1.0)}).save(tmp / "cost.json")
    arms = [
        {"name": "control", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 10},
        {
            "name": "ce",
            "weight": 0.5,
            "reranker": {"name": "onnx-cross-encoder", "params": {"batch_size": 1}},
            "depth": 10,
            "rerank_depth": 3,
        },
        {"name": "cached", "weight": 0.0, "depth": 10, "cache": {"maxsize": 100, "ttl_s": 60}},
        {
            "name": "budget",
            "weight": 0.0,
            "depth": 10,
            "policy": "budget",
            "cost_model": "cost.json",
            "ks": [0, 1, 2, 3],
        },
    ]
    return write_experiment(tmp / "main.yaml", "main", arms)


@pytest.fixture(scope="module")
def client(lucene_index, main_experiment):
    """The app as `twostage serve` builds it: index opened from its directory in the lifespan."""
    settings = Settings(
        index=lucene_index.path,
        experiment=main_experiment,
        admin_token=TOKEN,
        max_query_chars=200,
        k_max=20,
        allow_overrides=True,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


# --------------------------------------------------------------------------------- ops endpoints
def test_healthz_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["experiment"] == "main"
    assert ready["arms"] == {"control": 0.5, "ce": 0.5, "cached": 0.0, "budget": 0.0}


def test_openapi_has_examples(client):
    schema = client.get("/openapi.json").json()
    assert {"/search", "/rerank", "/healthz", "/readyz", "/metrics", "/admin/experiment"} <= set(schema["paths"])
    assert schema["components"]["schemas"]["SearchRequest"]["examples"]
    assert schema["components"]["schemas"]["SearchRequest"]["properties"]["k"]["maximum"] == 20  # Settings.k_max
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------- /search
def test_search_identity_arm(client):
    resp = search(client, k=3, arm="control")
    assert resp.status_code == 200
    body = resp.json()
    assert body["arm"] == "control" and body["experiment"] == "main" and body["k"] == 3
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
    assert body["hits"][0]["doc_id"] == "d10"  # the Moon document
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert {c["stage"] for c in body["costs"]} >= {"encode", "retrieve"}
    assert body["explain"] is None
    assert resp.headers["X-Request-ID"] == body["request_id"]


def test_search_cross_encoder_arm_explain(client):
    body = search(client, k=5, arm="ce", explain=True).json()
    assert body["arm"] == "ce" and body["rerank_depth"] == 3 and not body["degraded"]
    rerank = [c for c in body["costs"] if c["stage"] == "rerank"]
    assert rerank and rerank[0]["docs"] == 3 and rerank[0]["tokens_in"] > 0
    assert body["explain"]["policy"] == "fixed" and body["explain"]["rerank_depth"] == 3
    assert body["explain"]["arm_config"]["reranker"]["name"] == "onnx-cross-encoder"
    assert len(body["hits"]) == 5


def test_search_reranker_selects_arm_and_request_depth(client):
    body = search(client, reranker="onnx-cross-encoder", rerank_depth=1, explain=True).json()
    assert body["arm"] == "ce" and body["rerank_depth"] == 1
    assert body["explain"]["policy"] == "request"


def test_search_budget_policy_and_deadline(client):
    body = search(client, arm="budget", budget_ms=12_000, explain=True).json()
    assert body["explain"]["policy"] == "budget" and "largest k within" in body["explain"]["reason"]
    # ks 0..3 at 5 s each: 2 documents (10 s) fit the ~12 s left after retrieval, 3 (15 s) do not
    assert body["explain"]["budget_ms"] == 12_000 and body["rerank_depth"] == 2
    # a deadline that has passed before reranking starts: served in first-stage order, flagged
    late = search(client, arm="ce", budget_ms=0.001).json()
    first_stage = search(client, arm="control").json()
    assert late["degraded"] and late["rerank_depth"] == 0
    assert [h["doc_id"] for h in late["hits"]] == [h["doc_id"] for h in first_stage["hits"]]
    # nothing reranked: the first stage's scores are served unchanged (no -1, -2, ...), stage "first"
    assert [h["score"] for h in late["hits"]] == [h["score"] for h in first_stage["hits"]]
    assert all(h["stage"] == "first" and h["first_stage_score"] == h["score"] for h in late["hits"])


def test_search_sticky_assignment(client):
    arms = {search(client, user_id="alice").json()["arm"] for _ in range(4)}
    assert len(arms) == 1
    seen = {search(client, user_id=f"user-{i}").json()["arm"] for i in range(12)}
    assert seen == {"control", "ce"}  # weight-0 arms are never assigned


def test_search_cache_hits(client):
    first = search(client, arm="cached", query="young kitten pet").json()
    second = search(client, arm="cached", query="young kitten pet").json()
    assert not first["cached"] and second["cached"]
    assert [h["doc_id"] for h in first["hits"]] == [h["doc_id"] for h in second["hits"]]
    assert 'twostage_cache_hits_total{arm="cached"}' in client.get("/metrics").text


def test_search_filters(client):
    full = [h["doc_id"] for h in search(client, arm="control").json()["hits"]]
    excluded = [
        h["doc_id"] for h in search(client, arm="control", filters={"exclude_doc_ids": full[:2]}).json()["hits"]
    ]
    assert excluded[: len(full) - 2] == full[2:] and not set(full[:2]) & set(excluded)
    only = search(client, arm="control", filters={"include_doc_ids": [full[2], full[1], "nope"]}).json()["hits"]
    assert [h["doc_id"] for h in only] == full[1:3]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x" * 201}, "longer than 200"),
        ({"k": 0}, "k"),
        ({"k": 21}, "at most 20"),
        ({"k": "ten"}, "k"),
        ({"budget_ms": -5}, "budget_ms"),
        ({"rerank_depth": -1}, "rerank_depth"),
        ({"colour": "red"}, "colour"),
        ({"filters": {"include": ["d01"]}}, "filters"),
    ],
)
def test_search_bad_input_is_422(client, body, words):
    assert_error(search(client, **body), 422, "invalid_request", words)


def test_search_unknown_arm_or_reranker_is_422(client):
    assert_error(search(client, arm="nope"), 422, "unknown_arm", "unknown arm 'nope'")
    assert_error(search(client, reranker="llm-listwise"), 422, "unknown_arm", "no arm serves")


def test_malformed_json_and_unknown_route(client):
    resp = client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(resp, 422, "invalid_request")
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/search"), 405, "method_not_allowed")


# ------------------------------------------------------------------------------------- /rerank
DOCS = [
    {"doc_id": "a", "title": "Football", "text": "Football is a team sport played with a ball.", "score": 3.0},
    {"doc_id": "b", "title": "Moon", "text": "The Moon's gravity causes the ocean tides on Earth.", "score": 1.0},
    {"doc_id": "c", "text": "Coffee is a brewed drink.", "score": 2.0},
]


def test_rerank_identity_and_cross_encoder(client):
    body = client.post("/rerank", json={"query": "what causes ocean tides", "documents": DOCS, "arm": "control"}).json()
    assert [h["doc_id"] for h in body["hits"]] == ["a", "c", "b"] and body["reranker"] == "identity"
    body = client.post("/rerank", json={"query": "what causes ocean tides", "documents": DOCS, "arm": "ce", "k": 2})
    body = body.json()
    assert body["reranker"] == "onnx-cross-encoder" and body["hits"][0]["doc_id"] == "b" and len(body["hits"]) == 2
    assert body["costs"][0]["docs"] == 3


def test_rerank_errors(client):
    dup = [DOCS[0], DOCS[0]]
    assert_error(client.post("/rerank", json={"query": "q", "documents": dup}), 422, "invalid_request", "unique")
    assert_error(client.post("/rerank", json={"query": "q", "documents": []}), 422, "invalid_request", "documents")
    many = [{"doc_id": str(i), "text": "t"} for i in range(201)]
    assert_error(client.post("/rerank", json={"query": "q", "documents": many}), 422, "invalid_request", "200")
    resp = client.post("/rerank", json={"query": "q", "documents": DOCS, "arm": "zzz"})
    assert_error(resp, 422, "unknown_arm")


# ------------------------------------------------------------------------------------ /metrics
def test_metrics(client):
    search(client, arm="ce", k=2)
    search(client, arm="nope")
    text = client.get("/metrics").text
    assert 'twostage_stage_duration_seconds_bucket{arm="ce",le="0.005",stage="rerank"}' in text
    assert 'twostage_request_duration_seconds_count{arm="ce",endpoint="/search"}' in text
    assert 'twostage_docs_reranked_total{arm="ce"}' in text
    assert 'twostage_errors_total{endpoint="/search",kind="unknown_arm"}' in text
    assert 'twostage_arm_weight{arm="control"} 0.5' in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


# ---------------------------------------------------------------------------- backend failures
def test_backend_down_is_503_with_retry_after(tmp_path):
    down = FailingRetriever(OpenSearchUnavailableError("cannot reach OpenSearch at https://10.0.0.1:9200"))
    with small_app(tmp_path, down, retry_after_s=7) as c:
        resp = search(c)
        body = assert_error(resp, 503, "backend_unavailable", "unavailable")
        assert resp.headers["Retry-After"] == "7"
        assert "10.0.0.1" not in resp.text and body["request_id"]
        assert c.get("/healthz").status_code == 200


def test_internal_error_is_500_without_trace(tmp_path):
    with small_app(tmp_path, FailingRetriever(RuntimeError("secret detail /etc/passwd"))) as c:
        resp = search(c)
        assert_error(resp, 500, "internal", "internal error")
        assert "secret" not in resp.text


def test_timeout_is_504(tmp_path, lucene_retriever):
    slow = FailingRetriever(sleep_s=1.0, inner=lucene_retriever)
    with small_app(tmp_path, slow, request_timeout_s=0.2, warmup=False) as c:
        started = time.perf_counter()
        assert_error(search(c), 504, "timeout", "0.2 s")
        assert time.perf_counter() - started < 0.9
        assert 'kind="timeout"' in c.get("/metrics").text
