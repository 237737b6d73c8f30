"""What the service tests share: an experiment writer, a small app over any retriever, error checks."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from twostage_search.engine.types import Query, RankedList
from twostage_search.service.app import create_app
from twostage_search.service.settings import Settings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def identity_arms(*names: str, weights: tuple[float, ...] | None = None, depth: int = 10) -> list[dict]:
    weights = weights or tuple(1 / len(names) for _ in names)
    return [
        {"name": n, "weight": w, "reranker": {"name": "identity"}, "depth": depth}
        for n, w in zip(names, weights, strict=True)
    ]


def write_experiment(path: Path, name: str, arms: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "arms": arms}))
    return path


class FailingRetriever:
    """A first stage whose backend is down (or broken, or slow): the service's test double."""

    def __init__(self, exc: BaseException | None = None, sleep_s: float = 0.0, inner=None) -> None:
        self.exc, self.sleep_s, self.inner = exc, sleep_s, inner

    def retrieve(self, query: Query, k: int) -> RankedList:
        time.sleep(self.sleep_s)
        if self.exc is not None:
            raise self.exc
        return self.inner.retrieve(query, k)


def small_app(tmp_path: Path, retriever, *, arms: list[dict] | None = None, **settings) -> TestClient:
    exp = write_experiment(tmp_path / "exp.yaml", "small", arms or identity_arms("a1", "a2"))
    settings.setdefault("allow_overrides", True)
    s = Settings(index=tmp_path / "unused", experiment=exp, admin_token=TOKEN, **settings)
    return TestClient(create_app(s, retriever=retriever), raise_server_exceptions=False)


def search(c: TestClient, **body):
    body.setdefault("query", "what causes ocean tides")
    return c.post("/search", json=body)


def assert_error(resp, status: int, kind: str, words: str = "") -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == kind
    assert words in body["message"]
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return body
