"""What the UBI query and event log costs: the event ingest rate the service sustains with its SQLite
store, and the latency the log adds to ``/search``, logging on and off side by side.

    python -m twostage_search.benchmarks.studies.ubi_log --index var/scifact --requests 2000

Starts two ``twostage serve`` processes on the same index with one identity arm: one with the log on
(SQLite in a temporary directory, ``--synchronous`` FULL or NORMAL) and one with
``TWOSTAGE_LOG_ENABLED=false``.

1. **Search latency.** One client sends ``--requests`` searches to each server, alternating between them
   request by request so that both see the same machine load, one request at a time. Reported:
   p50/p95/p99 per server and the difference on − off with a bootstrap 95% interval.
2. **Ingest.** ``--producers`` concurrent clients each ``POST /events`` a batch of ``--batch-sizes``
   events and send the next when the answer (200: committed) arrives, for ``--ingest-seconds``, against
   the logging server. Reported: acknowledged events/s and how many of them are in the SQLite file
   afterwards (all of them, or the run fails).

Writes ``ubi_log.json`` to ``--out``. Timings depend on the machine and its load: the report records
the CPU count and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import machine
from twostage_search.benchmarks.serve import ServeProcess
from twostage_search.engine.beir import find_file, read_queries

BOOTSTRAP = 2000
LOG_FILE = "ubi.sqlite3"  # the service's SQLite log in its data directory


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def added_latency(on: np.ndarray, off: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """p50/p95/p99 of both sides and on − off, each difference with a bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {"log_on": _percentiles(on), "log_off": _percentiles(off), "added_ms": {}}
    for q in (50, 95, 99):
        diffs = [
            np.percentile(rng.choice(on, on.size), q) - np.percentile(rng.choice(off, off.size), q)
            for _ in range(BOOTSTRAP)
        ]
        point = float(np.percentile(on, q) - np.percentile(off, q))
        low, high = np.percentile(diffs, [2.5, 97.5])
        result["added_ms"][f"p{q}"] = [round(point, 3), round(float(low), 3), round(float(high), 3)]
    return result


def search_latency(args: argparse.Namespace, servers: dict[str, str], client: Any) -> dict[str, Any]:
    """Alternate searches between the two servers, one at a time; latency percentiles and differences."""
    queries = [q.text for q in read_queries(find_file(args.dataset, "queries"))]
    times: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(args.warmup + args.requests):
        for side in ("on", "off") if i % 2 == 0 else ("off", "on"):
            body = {"query": queries[i % len(queries)], "k": args.k, "user_id": f"u{i}"}
            started = time.perf_counter()
            client.post(f"{servers[side]}/search", json=body).raise_for_status()
            if i >= args.warmup:
                times[side].append((time.perf_counter() - started) * 1000)
    summary = added_latency(np.array(times["on"]), np.array(times["off"]))
    return {"requests": args.requests, "k": args.k, "depth": args.depth, **summary}


def event_batch(n: int, size: int) -> list[dict[str, Any]]:
    return [
        {
            "action_name": "impression",
            "query_id": f"bench-{n}",
            "client_id": "bench",
            "timestamp": "2026-12-06T11:00:00Z",
            "event_attributes": {"object": {"object_id": f"d{i}"}, "position": {"ordinal": i + 1}},
        }
        for i in range(size)
    ]


async def ingest(base: str, size: int, producers: int, seconds: float) -> dict[str, Any]:
    """``producers`` closed loops posting batches of ``size`` events; acknowledged events per second."""
    import httpx

    acked, refused = [0], [0]
    stop = time.monotonic() + seconds

    async def produce(client: httpx.AsyncClient, slot: int) -> None:
        n = 0
        while time.monotonic() < stop:
            r = await client.post(f"{base}/events", json=event_batch(slot * 10_000_000 + n, size))
            n += 1
            if r.status_code == 200:
                acked[0] += size
            elif r.status_code == 429:
                refused[0] += size
            else:
                r.raise_for_status()

    limits = httpx.Limits(max_connections=producers)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(produce(client, i) for i in range(producers)))
        elapsed = time.perf_counter() - started
    return {
        "batch": size,
        "producers": producers,
        "events_acked": acked[0],
        "events_refused_429": refused[0],
        "events_per_s": round(acked[0] / elapsed, 1),
    }


def stored_events(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / LOG_FILE) as conn:
        return int(conn.execute("SELECT count(*) FROM ubi_events").fetchone()[0])


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import httpx

    exp = tmp / "exp.json"
    arm = {"name": "first", "weight": 1.0, "reranker": {"name": "identity"}, "depth": args.depth}
    exp.write_text(json.dumps({"name": "ubi-bench", "arms": [arm]}))
    started: dict[str, ServeProcess] = {}
    report: dict[str, Any] = {"synchronous": args.synchronous}
    try:
        for side in ("on", "off"):
            env = {"TWOSTAGE_LOG_ENABLED": str(side == "on").lower(), "TWOSTAGE_LOG_SYNCHRONOUS": args.synchronous}
            started[side] = ServeProcess(args.index, exp, tmp / side, env=env, timeout_s=args.start_timeout)
        servers = {side: server.base for side, server in started.items()}
        with httpx.Client(timeout=60) as client:
            report["search"] = search_latency(args, servers, client)
        report["ingest"] = []
        for size in args.batch_sizes:
            before = stored_events(tmp / "on")
            row = asyncio.run(ingest(servers["on"], size, args.producers, args.ingest_seconds))
            row["events_stored"] = stored_events(tmp / "on") - before
            report["ingest"].append(row)
    finally:
        for server in started.values():
            server.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.ubi_log", description=__doc__.split("\n")[0]
    )
    p.add_argument("--index", type=Path, default=Path("var/scifact"))
    p.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"), help="BEIR dir (its queries)")
    p.add_argument("--requests", type=int, default=2000, help="timed searches per server")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL", help="SQLite mode of the log")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--producers", type=int, default=16, help="concurrent event posters")
    p.add_argument("--ingest-seconds", type=float, default=10.0, help="per batch size")
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--out", type=Path, default=Path("runs"))
    args = p.parse_args(argv)
    if not (args.index / "meta.json").exists():
        print(f"ubi_log: no index at {args.index} (run `make demo` first)", file=sys.stderr)
        return 2
    measured_on = machine()
    with tempfile.TemporaryDirectory() as tmp:
        report = {"machine": measured_on, **run(args, Path(tmp))}
    search = report["search"]
    for side in ("log_on", "log_off"):
        print(f"/search {side:7}: " + "  ".join(f"{q} {v:.2f} ms" for q, v in search[side].items()))
    added = search["added_ms"]
    print("added (on − off): " + "  ".join(f"{q} {v[0]:+.2f} ms [{v[1]:+.2f}, {v[2]:+.2f}]" for q, v in added.items()))
    for row in report["ingest"]:
        print(
            f"ingest ({args.synchronous}) batch {row['batch']:>4}: {row['events_per_s']:>9,.0f} events/s acknowledged, "
            f"{row['events_stored']:,} of {row['events_acked']:,} in the file, "
            f"{row['events_refused_429']:,} refused (429)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ubi_log.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'ubi_log.json'}")
    lost = any(row["events_stored"] < row["events_acked"] for row in report["ingest"])
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
