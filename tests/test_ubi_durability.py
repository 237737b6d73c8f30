"""An acknowledged event survives SIGKILL: `twostage serve` on a tiny BM25 index takes a stream of event
batches, is killed mid-stream, restarts on the same data directory, and every batch answered 2xx is there."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.helpers import TINY, need

need("fastapi", "service")
need("uvicorn", "service")
need("pyserini", "lucene")

from tests.service_helpers import Server, identity_arms, write_experiment
from twostage_search.cli import main
from twostage_search.service.ubi.sqlite import SQLiteLogStore

pytestmark = pytest.mark.slow

EVENTS_PER_BATCH = 20
ACKED_BEFORE_KILL = 30


def batch(n: int) -> list[dict]:
    return [
        {
            "action_name": "impression",
            "query_id": f"q{n}",
            "client_id": "stream",
            "timestamp": "2026-12-06T11:00:00Z",
            "event_attributes": {"object": {"object_id": f"b{n}-e{i}"}, "position": {"ordinal": i + 1}},
        }
        for i in range(EVENTS_PER_BATCH)
    ]


def test_acknowledged_events_survive_sigkill(tmp_path):
    index = tmp_path / "bm25"
    assert (
        main(["index", str(TINY / "corpus.jsonl"), "--index", str(index), "--backend", "lucene-bm25", "--no-progress"])
        == 0
    )
    exp = write_experiment(tmp_path / "exp.yaml", "durable", identity_arms("a"))
    data = tmp_path / "data"
    log_file = tmp_path / "server.log"
    server = Server(index, exp, data, log_file)
    acked: list[int] = []
    failures: list[str] = []
    enough = threading.Event()

    def stream() -> None:
        for n in range(100_000):
            try:
                status, body = server.post("/events", batch(n))
            except OSError as exc:  # the server is gone
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            if (status, body) != (200, {"stored": EVENTS_PER_BATCH}):
                failures.append(f"unexpected answer {status}: {body}")
                return
            acked.append(n)
            if len(acked) >= ACKED_BEFORE_KILL:
                enough.set()

    thread = threading.Thread(target=stream)
    try:
        thread.start()
        assert enough.wait(120), f"only {len(acked)} batches acknowledged"
        os.kill(server.proc.pid, signal.SIGKILL)  # mid-stream: the thread keeps sending until it fails
        server.proc.wait(30)
        thread.join(60)
    finally:
        server.stop()
    assert not thread.is_alive() and failures, "the stream should have been cut by the kill"
    assert not any(f.startswith("unexpected") for f in failures), failures
    assert server.proc.returncode == -signal.SIGKILL

    restarted = Server(index, exp, data, log_file)
    try:
        stored = {e.object_id for e in SQLiteLogStore(data).events()}
        missing = {f"b{n}-e{i}" for n in acked for i in range(EVENTS_PER_BATCH)} - stored
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
        assert len(stored) % EVENTS_PER_BATCH == 0  # whole batches only: each is one transaction
        status, body = restarted.post("/events", batch(-1))  # the log takes writes after recovery
        assert (status, body) == (200, {"stored": EVENTS_PER_BATCH})
    finally:
        restarted.stop()
