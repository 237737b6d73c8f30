"""Load, overload, hot-swap and soak of the HTTP service on loopback, the server in its own process.

    python -m twostage_search.benchmarks.studies.overload --index var/scifact-1k --scenario capacity overload swap
    python -m twostage_search.benchmarks.studies.overload --index var/scifact-1k --scenario soak --soak-seconds 600
    python -m twostage_search.benchmarks.studies.overload --index var/scifact-1k --scenario arms --queue 64

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
  VmRSS) is sampled every 10 s and the first and last minute compared;
- ``arms``: the default experiment (``control``: first stage only; ``ce20``: the ONNX cross-encoder on
  the top 20, 5 s budget) swapped in; the cross-encoder arm's capacity (served requests per second with
  ``--workers`` closed-loop clients naming it) is measured, then open-loop Poisson arrivals (seeded)
  send that arm twice its capacity and the control arm as much again (the experiment's 50/50 split,
  users picked by the experiment's own hash). Per arm: share served, p50/p99 latency, 429s, 5xx,
  degraded answers; ``/healthz`` p99; and whether the goal held (control ≥ 95 % served with p99 ≤
  200 ms, the cross-encoder arm shedding with 429s, no 5xx, ``/healthz`` p99 < 50 ms). Run it with a
  queue that does not bind (``--queue 64``), so admission by predicted cost decides.

Bounded in count and time (``--requests``, ``--seconds`` per scenario). Writes ``overload.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

from twostage_search.benchmarks.serve import closed_loop_requests, spawn_serve, stop_server, wait_ready
from twostage_search.engine.assignment import assign
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


async def arm_capacity(
    client: Any, base: str, queries: list[str], token: str, arm: str, workers: int, n: int, k: int
) -> float:
    """Requests per second ``arm`` serves with ``workers`` closed-loop clients naming it."""
    headers = {"Authorization": f"Bearer {token}"}
    served = 0
    sent = 0

    async def loop() -> None:
        nonlocal served, sent
        while sent < n:
            body = {"query": queries[sent % len(queries)], "k": k, "arm": arm}
            sent += 1
            resp = await client.post(f"{base}/search", json=body, headers=headers)
            served += resp.status_code == 200

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(workers)))
    return served / (time.perf_counter() - started)


async def open_loop(
    client: Any,
    base: str,
    queries: list[str],
    config: dict[str, Any],
    rates: dict[str, float],
    seconds: float,
    k: int,
    seed: int,
) -> list[tuple[str, str, float, bool]]:
    """Poisson arrivals at ``rates[arm]`` per second for ``seconds``; (arm, status, ms, degraded) each.

    A request's arm is set by its ``user_id``, chosen so that the experiment's own hash assigns that arm.
    """
    users: dict[str, list[str]] = {arm: [] for arm in rates}
    weights = [(a["name"], float(a["weight"])) for a in config["arms"]]
    for i in itertools.count():
        arm = assign(config["name"], weights, f"u{i}")
        if arm in users:
            users[arm].append(f"u{i}")
        if all(len(u) >= 1000 for u in users.values()):
            break
    rng = np.random.default_rng(seed)
    schedule = sorted(
        (t, arm)
        for arm, rate in rates.items()
        for t in np.cumsum(rng.exponential(1 / rate, size=int(rate * seconds * 2) + 10))
        if t < seconds
    )
    outcomes: list[tuple[str, str, float, bool]] = []

    async def one(i: int, arm: str) -> None:
        body = {"query": queries[i % len(queries)], "k": k, "user_id": users[arm][i % len(users[arm])]}
        started = time.perf_counter()
        try:
            resp = await client.post(f"{base}/search", json=body)
            status, degraded = str(resp.status_code), resp.status_code == 200 and bool(resp.json()["degraded"])
        except Exception as exc:
            status, degraded = type(exc).__name__, False
        outcomes.append((arm, status, (time.perf_counter() - started) * 1000, degraded))

    t0 = time.perf_counter()
    tasks = []
    for i, (at, arm) in enumerate(schedule):
        await asyncio.sleep(max(at - (time.perf_counter() - t0), 0.0))
        tasks.append(asyncio.create_task(one(i, arm)))
    await asyncio.gather(*tasks)
    return outcomes


def per_arm(outcomes: list[tuple[str, str, float, bool]], arm: str) -> dict[str, Any]:
    mine = [(status, ms, degraded) for a, status, ms, degraded in outcomes if a == arm]
    statuses = Counter(status for status, _, _ in mine)
    ok_ms = [ms for status, ms, _ in mine if status == "200"]
    return {
        "sent": len(mine),
        "statuses": dict(statuses),
        "served_share": round(statuses["200"] / len(mine), 4) if mine else float("nan"),
        "p50_ms": pct(ok_ms, 50),
        "p99_ms": pct(ok_ms, 99),
        "429": statuses["429"],
        "refused_p99_ms": pct([ms for status, ms, _ in mine if status == "429"], 99),
        "5xx": sum(v for s, v in statuses.items() if s.startswith("5")),
        "failed": sum(v for s, v in statuses.items() if s not in ("200", "429")),
        "degraded": sum(1 for status, _, degraded in mine if status == "200" and degraded),
    }


async def arms_scenario(
    client: Any, base: str, queries: list[str], token: str, config: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The default experiment at twice the cross-encoder arm's capacity (see the module docstring)."""
    headers = {"Authorization": f"Bearer {token}"}
    resp = await client.put(f"{base}/admin/experiment", json=config, headers=headers)  # the served default
    resp.raise_for_status()
    ce_arm = next(a for a in config["arms"] if a["reranker"]["name"] != "identity")
    control_arm = next(a for a in config["arms"] if a["reranker"]["name"] == "identity")
    ce_name, control_name = ce_arm["name"], control_arm["name"]
    probes: list[float] = []
    stop = asyncio.Event()
    probe: asyncio.Task[None] | None = None
    try:
        capacity = await arm_capacity(
            client, base, queries, token, ce_arm["name"], args.workers, args.calibrate, args.k
        )
        if not capacity > 0:
            raise RuntimeError(f"arm {ce_name!r} served no request")
        # twice the capacity to the cross-encoder arm, the control arm in the experiment's proportion
        rates = {
            ce_arm["name"]: 2 * capacity,
            control_name: 2 * capacity * control_arm["weight"] / ce_arm["weight"],
        }
        probe = asyncio.create_task(prober(client, base, probes, stop))
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        outcomes = await open_loop(client, base, queries, config, rates, args.seconds, args.k, args.seed)
        took = time.perf_counter() - started
    finally:
        stop.set()
        if probe is not None:
            await probe
        swap_back = experiment("swap", 1.0, args.depth)
        await client.put(f"{base}/admin/experiment", json=swap_back, headers=headers)
    arms = {arm: per_arm(outcomes, arm) for arm in rates}
    healthz = {"probes": len(probes), "p50_ms": pct(probes, 50), "p99_ms": pct(probes, 99)}
    control, ce = arms[control_name], arms[ce_name]
    goal = {
        "control_served_95pct": control["served_share"] >= 0.95,
        "control_p99_le_200ms": control["p99_ms"] <= 200,
        "ce_sheds_with_429": ce["429"] > 0,
        "no_5xx": control["5xx"] + ce["5xx"] == 0,
        "healthz_p99_lt_50ms": healthz["p99_ms"] < 50,
    }
    return {
        "ce_capacity_per_s": round(capacity, 3),
        "rates_per_s": {a: round(r, 3) for a, r in rates.items()},
        "seconds": round(took, 1),
        "arms": arms,
        "healthz": healthz,
        "5xx": control["5xx"] + ce["5xx"],
        "failed": control["failed"] + ce["failed"],
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "goal": goal,
        "goal_met": all(goal.values()),
    }


async def drive(args: argparse.Namespace, base: str, proc: subprocess.Popen[bytes], token: str) -> dict[str, Any]:
    import httpx

    queries = [q.text for q in read_queries(find_file(args.dataset, "queries"))]
    capacity = args.workers + args.queue
    out: dict[str, Any] = {"capacity": capacity}
    limits = httpx.Limits(max_connections=max(4 * capacity + 8, 512))  # open loop: never queue in the client
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        await wait_ready(client, base, proc, args.start_timeout)
        resp = await client.get(f"{base}/admin/experiment", headers={"Authorization": f"Bearer {token}"})
        resp.raise_for_status()
        default_experiment: dict[str, Any] = resp.json()["config"]  # the service's default (no --experiment)
        if any(s != "arms" for s in args.scenario):  # the other scenarios run on two model-backed arms
            swap = experiment("swap", 1.0, args.depth)
            headers = {"Authorization": f"Bearer {token}"}
            (await client.put(f"{base}/admin/experiment", json=swap, headers=headers)).raise_for_status()
        await closed_loop(client, base, queries[::-1], 2, args.warmup, args.seconds, args.k)
        for scenario in args.scenario:
            if scenario == "arms":
                out[scenario] = await arms_scenario(client, base, queries, token, default_experiment, args)
                print(scenario, json.dumps(out[scenario]), flush=True)
                continue
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
        prog="python -m twostage_search.benchmarks.studies.overload", description=__doc__.split("\n")[0]
    )
    p.add_argument("--index", type=Path, default=Path("var/scifact"))
    p.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"))
    p.add_argument(
        "--scenario",
        nargs="+",
        default=["capacity", "overload", "swap"],
        choices=["capacity", "overload", "swap", "soak", "arms"],
    )
    p.add_argument("--workers", type=int, default=2, help="worker threads per arm")
    p.add_argument("--queue", type=int, default=2, help="queued requests per arm")
    p.add_argument("--depth", type=int, default=10, help="rerank depth of the model-backed arms")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--requests", type=int, default=200, help="requests per scenario (soak: unbounded)")
    p.add_argument("--seconds", type=float, default=60.0, help="time cap per scenario")
    p.add_argument("--soak-seconds", type=float, default=600.0)
    p.add_argument("--swap-every", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--calibrate", type=int, default=20, help="arms: requests measuring the cross-encoder arm")
    p.add_argument("--seed", type=int, default=0, help="arms: seed of the Poisson arrivals")
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=Path("runs"))
    args = p.parse_args(argv)
    setup_logging(0)
    if not (args.index / "meta.json").exists():
        print(f"overload: no index at {args.index}", file=sys.stderr)
        return 2
    token = os.urandom(12).hex()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TWOSTAGE_ADMIN_TOKEN": token, "TWOSTAGE_WORKERS": str(args.workers), "TWOSTAGE_QUEUE": str(args.queue)}
        # the default experiment: `arms` reads it
        proc, base = spawn_serve(args.index, Path(tmp) / "server.log", env=env)
        try:
            result = asyncio.run(drive(args, base, proc, token))
        finally:
            stop_server(proc)
    report = {"workers": args.workers, "queue": args.queue, "rerank_depth": args.depth, "cpus": os.cpu_count()}
    report.update(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overload.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'overload.json'}")
    bad = any(r.get("failed") or r.get("5xx") for r in result.values() if isinstance(r, dict))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
