"""The service under overload, abuse and change: admission control, caps, the admin allowlist, the
index swapped under load, and ``/v1/rerank`` spoken by the unmodified ``cohere`` SDK.

Counts and statuses only, never milliseconds: requests are held by a retriever that blocks on an event
the test releases, so "full" and "free" are exact states, not races.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import need

need("fastapi", "service")

import yaml
from fastapi.testclient import TestClient

from twostage_search.engine.types import Query, RankedList
from twostage_search.service.app import create_app
from twostage_search.service.settings import Settings

pytestmark = pytest.mark.slow
TOKEN = "guard-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def experiment(path: Path, arms: list[dict], name: str = "guard") -> Path:
    path.write_text(yaml.safe_dump({"name": name, "arms": arms}))
    return path


def arm(name: str, weight: float, reranker: str = "identity", **extra) -> dict:
    return {"name": name, "weight": weight, "reranker": {"name": reranker}, "depth": 10, **extra}


class Gate:
    """A first stage that holds queries containing "block" until ``release``."""

    def __init__(self, inner) -> None:
        self.inner, self.open, self.entered = inner, threading.Event(), threading.Semaphore(0)

    def retrieve(self, query: Query, k: int) -> RankedList:
        if "block" in query.text:
            self.entered.release()
            assert self.open.wait(60)
        return self.inner.retrieve(query, k)


def app_with(tmp_path: Path, retriever, arms: list[dict], **settings) -> TestClient:
    exp = experiment(tmp_path / "exp.yaml", arms)
    s = Settings(index=tmp_path / "unused", experiment=exp, admin_token=TOKEN, warmup=False, **settings)
    return TestClient(create_app(s, retriever=retriever), raise_server_exceptions=False)


# ------------------------------------------------------------------------------------- admission
def test_overload_answers_429_at_once_and_health_stays_free(tmp_path, lucene_retriever):
    gate = Gate(lucene_retriever)
    arms = [arm("a", 1.0), arm("b", 0.0)]
    with app_with(tmp_path, gate, arms, workers=1, queue=1, allow_overrides=True) as c, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(c.post, "/search", json={"query": "block tides", "arm": "a"}) for _ in range(2)]
        assert gate.entered.acquire(timeout=60)  # one runs (blocked), one waits in the arm's queue
        state = c.app.state.service
        for _ in range(600):
            if state.admission.gate("a").admitted == 2:
                break
            time.sleep(0.05)
        assert state.admission.gate("a").admitted == 2
        refused = [c.post("/search", json={"query": "tides", "arm": "a"}) for _ in range(3)]
        assert [r.status_code for r in refused] == [429] * 3
        # Retry-After: the running request's predicted time left (the 1 s prior), at least 1 s
        assert all(r.headers["Retry-After"] == "1" and r.json()["error"] == "overloaded" for r in refused)
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.post("/search", json={"query": "tides", "arm": "b"}).status_code == 200  # another arm is free
        gate.open.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert state.admission.gate("a").admitted == 0
        assert 'twostage_rejected_total{arm="a",reason="overloaded"} 3.0' in c.get("/metrics").text


# ------------------------------------------------------------------------------------------- caps
def test_caps_the_client_cannot_exceed(tmp_path, lucene_retriever):
    arms = [arm("a", 1.0, max_rerank_depth=3, max_budget_ms=1000)]
    with app_with(tmp_path, lucene_retriever, arms, max_doc_chars=50, max_rerank_chars=80, max_filter_ids=2) as c:
        q = {"query": "tides"}
        assert c.post("/search", json={**q, "rerank_depth": 3}).status_code == 200
        r = c.post("/search", json={**q, "rerank_depth": 4})
        assert r.status_code == 422 and "at most 3" in r.json()["message"]
        r = c.post("/search", json={**q, "budget_ms": 3_000_000})
        assert r.status_code == 422 and "budget_ms" in r.json()["message"]
        r = c.post("/search", json={**q, "filters": {"exclude_doc_ids": ["d1", "d2", "d3"]}})
        assert r.status_code == 422 and "exclude_doc_ids" in r.json()["message"]
        docs = [{"doc_id": "x", "text": "y" * 51}]
        assert c.post("/rerank", json={**q, "documents": docs}).status_code == 422
        docs = [{"doc_id": str(i), "text": "y" * 30} for i in range(3)]  # 90 characters in all
        r = c.post("/rerank", json={**q, "documents": docs})
        assert r.status_code == 422 and "in all" in r.json()["message"]
        big = b'{"query": "' + b"x" * 1_100_000 + b'"}'
        r = c.post("/search", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        # arm and reranker overrides: only with the admin token (allow_overrides is off)
        r = c.post("/search", json={**q, "arm": "a"})
        assert r.status_code == 403 and r.json()["error"] == "override_forbidden"
        assert c.post("/search", json={**q, "arm": "a"}, headers=AUTH).status_code == 200
        assert c.post("/search", json={**q, "reranker": "identity"}).status_code == 403


# -------------------------------------------------------------------------------------- allowlist
@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"model": "/etc/passwd"}, "not in allowed_models"),
        ({"model": "../../somewhere/model"}, "not in allowed_models"),
        ({"backend": "vllm"}, "LLM backend 'vllm'"),
        ({"backend_options": {"base_url": "http://attacker.example/v1"}}, "base URL"),
        ({"backend_options": {"api_key": "x"}}, "cannot be set over HTTP"),
        ({"backend_options": {"engine_options": {"trust_remote_code": True}}}, "cannot be set over HTTP"),
        ({"second": "lore", "second_params": {"backend": "openai"}}, "LLM backend 'openai'"),
    ],
)
def test_admin_experiment_allowlist(tmp_path, lucene_retriever, params, words):
    with app_with(tmp_path, lucene_retriever, [arm("a", 1.0)]) as c:
        name = "cascade" if "second" in params else ("lore" if "backend" in str(params) else "onnx-cross-encoder")
        bad = {"name": "bad", "arms": [{"name": "x", "weight": 1.0, "reranker": {"name": name, "params": params}}]}
        r = c.put("/admin/experiment", json=bad, headers=AUTH)
        assert r.status_code == 422 and words in r.json()["message"], r.text
        assert c.get("/admin/experiment", headers=AUTH).json()["config"]["name"] == "guard"  # old one serves


def test_admin_allowlist_accepts_allowed_and_confines_cost_models(tmp_path, lucene_retriever):
    with app_with(tmp_path, lucene_retriever, [arm("a", 1.0)], allowed_rerankers=["identity"]) as c:
        escape = {"name": "e", "arms": [{**arm("x", 1.0), "policy": "budget", "cost_model": "../../../etc/cost.json"}]}
        r = c.put("/admin/experiment", json=escape, headers=AUTH)
        assert r.status_code == 422 and "cost_model" in r.json()["message"]
        ce = {"name": "ce", "arms": [arm("x", 1.0, "onnx-cross-encoder")]}
        r = c.put("/admin/experiment", json=ce, headers=AUTH)
        assert r.status_code == 422 and "not allowed over HTTP" in r.json()["message"]
        ok = {"name": "ok", "arms": [arm("x", 0.5), arm("y", 0.5)]}
        assert c.put("/admin/experiment", json=ok, headers=AUTH).status_code == 200


# ------------------------------------------------------------------------------- relevance floor
def test_relevance_floor_per_arm(tmp_path, lucene_retriever):
    arms = [arm("floor", 1.0, "onnx-cross-encoder", rerank_depth=5, min_score=0.0)]
    with app_with(tmp_path, lucene_retriever, arms) as c:
        body = c.post("/search", json={"query": "what causes ocean tides", "k": 10}).json()
        reranked = [h for h in body["hits"] if h["stage"] == "rerank"]
        assert body["dropped"] == 5 - len(reranked) and body["dropped"] > 0
        assert all(h["score"] >= 0.0 for h in reranked)
        assert all(h["first_stage_score"] is not None for h in body["hits"])


# --------------------------------------------------------------------------------- /v1/rerank
class Uvicorn:
    """The app served by a real uvicorn server on a loopback port, in a thread of this process."""

    def __init__(self, app) -> None:
        import socket

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(1200):
            if self.server.started:
                return f"http://127.0.0.1:{self.port}"
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def test_v1_rerank_with_the_cohere_sdk(tmp_path, lucene_retriever):
    cohere = need("cohere", "test")
    import httpx

    exp = experiment(tmp_path / "exp.yaml", [arm("control", 0.0), arm("ce", 1.0, "onnx-cross-encoder")])
    settings = Settings(index=tmp_path / "unused", experiment=exp, admin_token=TOKEN, warmup=False)
    docs = [
        "Volcanoes erupt lava and ash.",
        {"text": "Ocean tides are caused by the gravitational pull of the moon and the sun.", "title": "Tides"},
        "Python is a programming language.",
    ]
    with Uvicorn(create_app(settings, retriever=lucene_retriever)) as base:
        co = cohere.Client(api_key=TOKEN, base_url=base, timeout=120)  # the SDK as published, pointed at us
        out = co.rerank(model="ce", query="what causes ocean tides", documents=docs, top_n=2, return_documents=True)
        assert len(out.results) == 2 and out.results[0].index == 1
        assert out.results[0].relevance_score > out.results[1].relevance_score
        assert out.results[0].document is not None and "moon" in out.results[0].document.text
        plain = httpx.post(f"{base}/v1/rerank", json={"query": "tides", "documents": ["a", "b"]}, timeout=120)
        assert plain.status_code == 200 and sorted(r["index"] for r in plain.json()["results"]) == [0, 1]
        named = httpx.post(f"{base}/v1/rerank", json={"model": "ce", "query": "q", "documents": ["a"]}, timeout=120)
        assert named.status_code == 403  # naming the arm needs the admin token


# ---------------------------------------------------------------------------- index swap under load
def test_index_swap_under_load_loses_and_mixes_nothing(tmp_path, tiny_docs, encoder):
    from dataclasses import replace

    from twostage_search.indexes.lucene_impact import LuceneImpactIndex

    def titled(v: str) -> list:
        return [replace(d, title=f"{v} {d.title}") for d in tiny_docs]

    live = tmp_path / "idx"
    LuceneImpactIndex.build(titled("v1"), live, encoder=encoder, progress=False)  # idx -> idx.versions/<v1>
    assert live.is_symlink()
    exp = experiment(tmp_path / "exp.yaml", [arm("a", 1.0)])
    settings = Settings(index=live, experiment=exp, admin_token=TOKEN, warmup=False, workers=2, queue=64)
    seen: list[tuple[int, set[str]]] = []
    stop = threading.Event()
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:

        def load() -> None:
            while not stop.is_set():
                r = c.post("/search", json={"query": "what causes ocean tides", "k": 5})
                titles = {h["title"].split()[0] for h in r.json().get("hits", [])} if r.status_code == 200 else set()
                seen.append((r.status_code, titles))

        with ThreadPoolExecutor(3) as pool:
            workers = [pool.submit(load) for _ in range(3)]
            while len(seen) < 6:
                time.sleep(0.05)
            # rebuild under load: a new version, then one os.replace of the symlink; the server still
            # serves v1 (opened at the resolved version) until reload-index swaps it in
            LuceneImpactIndex.build(titled("v2"), live, encoder=encoder, progress=False)
            swapped = c.post("/admin/reload-index", headers=AUTH)
            assert swapped.status_code == 200, swapped.text
            after = len(seen)
            while len(seen) < after + 6:
                time.sleep(0.05)
            stop.set()
            for w in workers:
                w.result()
    assert all(status == 200 for status, _ in seen), [s for s, _ in seen if s != 200]
    assert all(titles in ({"v1"}, {"v2"}) for _, titles in seen)  # never a mix of the two indexes
    assert seen[0][1] == {"v1"} and seen[-1][1] == {"v2"}
