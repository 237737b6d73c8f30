"""Load, overload, hot-swap and soak of the HTTP service on loopback, the server in its own process.

    python -m twostage_search.benchmarks.overload --index var/scifact-1k --scenario capacity overload swap
    python -m twostage_search.benchmarks.overload --index var/scifact-1k --scenario soak --soak-seconds 600

Starts ``twostage serve`` (a real uvicorn process) with ``--workers`` threads and a queue of ``--queue``
per arm, so its admission capacity C is ``workers + queue`` requests per arm. Closed-loop asyncio
clients (this process) send ``POST /search`` (SciFact queries, round robin) to the model-backed arm:

- ``capacity``: C clients (1× capacity) — throughput, p50/p99 and errors (expected: none);
- ``overload``: 2C clients — statuses (expected: no 5xx, the excess answered 429 at once) while a
  prober reads ``/healthz`` every 50 ms (its p99 is reported);
- ``swap``: C clients while the experiment is swapped every ``--swap-every`` s between two arms on two
  different models (the ONNX cross-encoder and the bundled torch cross-encoder), all traffic to one,
  then the other — failed requests expected: none;
- ``soak``: C clients for ``--soak-seconds``; the server's resident memory (``/proc/PID/status``
  VmRSS) is sampled every 10 s and the first and last minute compared.

Bounded in count and time (``--requests``, ``--seconds`` per scenario). Writes ``overload.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.load import _free_port, _wait_ready, closed_loop_requests
from twostage_search.engine.beir import find_file, read_queries
from twostage_search.engine.logs import setup_logging


def experiment(name: str, onnx_weight: float, depth: int) -> dict[str, Any]:
    """Two model-backed arms; ``onnx_weight`` of the traffic to the ONNX one, the rest to torch."""
    return {
        "name": name,
        "arms": [
            {
                "name": "onnx",
                "weight": onnx_weight,
                "reranker": {"name": "onnx-cross-encoder"},
                "depth": 100,
                "rerank_depth": depth,
            },
            {
                "name": "torch",
                "weight": 1.0 - onnx_weight,
                "reranker": {"name": "cross-encoder", "params": {"model": "bundled:ce-minilm-l6-scifact"}},
                "depth": 100,
                "rerank_depth": depth,
            },
        ],
    }


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values), q)), 1) if values else float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def closed_loop(
    client: Any, base: str, queries: list[str], clients: int, n: int, seconds: float, k: int
) -> dict[str, Any]:
    """``clients`` concurrent loops until ``n`` requests or ``seconds``; statuses and latencies.

    A refused client waits 50 ms before its next request (a polite back-off, not the full Retry-After).
    """
    outcomes, took = await closed_loop_requests(
        client, base, queries, clients, n, seconds, k, user_prefix="u", pause_after_429_s=0.05
    )
    statuses: Counter[str] = Counter(status for status, _ in outcomes)
    ok_ms = [ms for status, ms in outcomes if status == "200"]
    refused_ms = [ms for status, ms in outcomes if status != "200"]
    return {
        "clients": clients,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "seconds": round(took, 1),
        "ok_per_s": round(statuses["200"] / took, 2),
        "p50_ms": pct(ok_ms, 50),
        "p99_ms": pct(ok_ms, 99),
        "refused_p99_ms": pct(refused_ms, 99),
        "5xx": sum(v for s, v in statuses.items() if s.startswith("5")),
        "failed": sum(v for s, v in statuses.items() if s != "200" and s != "429"),
    }


async def prober(client: Any, base: str, out: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        resp = await client.get(f"{base}/healthz")
        out.append((time.perf_counter() - started) * 1000 if resp.status_code == 200 else float("inf"))
        await asyncio.sleep(0.05)


async def sample(pid: int, memory: list[tuple[float, float]]) -> None:
    """The server's resident memory every 10 s: ``(seconds since start, MB)``."""
    t0 = time.monotonic()
    while True:
        memory.append((round(time.monotonic() - t0, 1), round(rss_mb(pid), 1)))
        await asyncio.sleep(10)


async def swapper(client: Any, base: str, token: str, every: float, depth: int, out: list[int]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    i = 0
    while True:
        await asyncio.sleep(every)
        i += 1
        config = experiment("swap", 1.0 if i % 2 else 0.0, depth)  # same name: users keep their bucket
        resp = await client.put(f"{base}/admin/experiment", json=config, headers=headers)
        out.append(resp.status_code)


async def drive(args: argparse.Namespace, base: str, proc: subprocess.Popen[bytes], token: str) -> dict[str, Any]:
    import httpx

    queries = [q.text for q in read_queries(find_file(args.dataset, "queries"))]
    capacity = args.workers + args.queue
    out: dict[str, Any] = {"capacity": capacity}
    limits = httpx.Limits(max_connections=4 * capacity + 8)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        await _wait_ready(client, base, proc, args.start_timeout)
        await closed_loop(client, base, queries[::-1], 2, args.warmup, args.seconds, args.k)
        for scenario in args.scenario:
            stop = asyncio.Event()
            probes: list[float] = []
            swaps: list[int] = []
            memory: list[tuple[float, float]] = []
            extra: list[asyncio.Task[None]] = [asyncio.create_task(prober(client, base, probes, stop))]
            clients, n, seconds = capacity, args.requests, args.seconds
            if scenario == "overload":
                clients = 2 * capacity
            if scenario == "swap":
                extra.append(asyncio.create_task(swapper(client, base, token, args.swap_every, args.depth, swaps)))
            if scenario == "soak":
                n, seconds = 10**9, args.soak_seconds

                extra.append(asyncio.create_task(sample(proc.pid, memory)))
            uptime_before = os.getloadavg()
            result = await closed_loop(client, base, queries, clients, n, seconds, args.k)
            stop.set()
            for task in extra:
                task.cancel()
            result["load_avg_1m"] = [round(uptime_before[0], 2), round(os.getloadavg()[0], 2)]
            result["healthz"] = {"probes": len(probes), "p50_ms": pct(probes, 50), "p99_ms": pct(probes, 99)}
            if swaps:
                result["swaps"] = {"ok": swaps.count(200), "failed": len(swaps) - swaps.count(200)}
            if memory:
                first = [m for t, m in memory if t <= 60]
                last = [m for t, m in memory if t >= memory[-1][0] - 60]
                result["rss_mb"] = {"first_minute": max(first), "last_minute": max(last), "samples": memory}
            out[scenario] = result
            print(scenario, json.dumps({k: v for k, v in result.items() if k != "rss_mb"}), flush=True)
            if "rss_mb" in result:
                print("rss_mb", result["rss_mb"]["first_minute"], "->", result["rss_mb"]["last_minute"], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.overload", description=__doc__.split("\n")[0]
    )
    p.add_argument("--index", type=Path, default=Path("var/scifact"))
    p.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"))
    p.add_argument("--scenario", nargs="+", default=["capacity", "overload", "swap"])
    p.add_argument("--workers", type=int, default=2, help="worker threads per arm")
    p.add_argument("--queue", type=int, default=2, help="queued requests per arm")
    p.add_argument("--depth", type=int, default=10, help="rerank depth of the model-backed arms")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--requests", type=int, default=200, help="requests per scenario (soak: unbounded)")
    p.add_argument("--seconds", type=float, default=60.0, help="time cap per scenario")
    p.add_argument("--soak-seconds", type=float, default=600.0)
    p.add_argument("--swap-every", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=Path("runs"))
    args = p.parse_args(argv)
    setup_logging(0)
    if not (args.index / "meta.json").exists():
        print(f"overload: no index at {args.index}", file=sys.stderr)
        return 2
    token = os.urandom(12).hex()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "exp.json"
        exp.write_text(json.dumps(experiment("swap", 1.0, args.depth)))
        env = {
            **os.environ,
            "TWOSTAGE_ADMIN_TOKEN": token,
            "HF_HUB_OFFLINE": "1",
            "TWOSTAGE_WORKERS": str(args.workers),
            "TWOSTAGE_QUEUE": str(args.queue),
        }
        cmd = [sys.executable, "-m", "twostage_search.cli", "serve", "--index", str(args.index)]
        cmd += ["--experiment", str(exp), "--host", "127.0.0.1", "--port", str(port)]
        with (Path(tmp) / "server.log").open("wb") as server_log:
            proc = subprocess.Popen(cmd, stdout=server_log, stderr=subprocess.STDOUT, env=env)
            try:
                result = asyncio.run(drive(args, f"http://127.0.0.1:{port}", proc, token))
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    report = {"workers": args.workers, "queue": args.queue, "rerank_depth": args.depth, "cpus": os.cpu_count()}
    report.update(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overload.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'overload.json'}")
    bad = any(r.get("failed") or r.get("5xx") for r in result.values() if isinstance(r, dict))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
