"""What the service tests share: an experiment writer, a small app over any retriever, error checks, and
`twostage serve` in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from twostage_search.engine.types import Candidate, Query, RankedList
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


# ------------------------------------------------------------------------- the UBI log's fixtures
DOCS = {"d1": 5.0, "d2": 4.0, "d3": 3.0, "d4": 2.0, "d5": 1.0}


class FiveDocs:
    """A first stage that returns d1..d5 with scores 5..1 for any query (identity arms keep that order)."""

    def retrieve(self, query: Query, k: int) -> RankedList:
        return RankedList.from_candidates(query.query_id, [Candidate(d, s, f"text {d}") for d, s in DOCS.items()], k)


def event(action: str = "click", **fields) -> dict:
    """A valid UBI event (a click on d2 at rank 2 of query ``q-1``), with ``fields`` replaced or added."""
    e = {
        "action_name": action,
        "query_id": "q-1",
        "client_id": "u1",
        "session_id": "s1",
        "timestamp": "2026-12-06T13:00:00.250+02:00",
        "event_attributes": {"object": {"object_id": "d2"}, "position": {"ordinal": 2}},
    }
    e.update(fields)
    return e


# ------------------------------------------------------------------------- a real server process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`twostage serve` in a subprocess on a free port, with its data directory."""

    def __init__(
        self, index: Path, experiment: Path, data_dir: Path, log_file: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "twostage_search.cli", "serve", "--index", str(index)]
        cmd += ["--experiment", str(experiment), "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "TWOSTAGE_DATA_DIR": str(data_dir), "TWOSTAGE_WARMUP": "false", **(env or {})}
        self.out = log_file.open("ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{log_file.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def post(self, path: str, body: object) -> tuple[int, dict]:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.out.close()
