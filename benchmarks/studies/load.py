"""Load test of the HTTP service on loopback: throughput and latency percentiles at a few concurrencies.

    python -m twostage_search.benchmarks.studies.load --index var/scifact --concurrency 1 4 16 --requests 300

Starts ``twostage serve`` (a real uvicorn process) on 127.0.0.1 with a free port and an experiment with
one arm (``--reranker identity`` by default; the cross-encoder costs ~50 ms per document on a 2-core CPU),
waits until it is ready, then for each concurrency sends ``--requests`` ``POST /search`` requests (SciFact
test queries, round robin, a distinct ``user_id`` each) from that many concurrent httpx clients, after
``--warmup`` requests. Bounded in count and in time (``--max-seconds`` per level). Reports requests/s,
p50/p95/p99 latency and errors per level, and writes a JSON report to ``--out``. ``--swap-every S`` also
swaps the experiment through the admin endpoint every S seconds during the run (hot swap under load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.serve import closed_loop_requests, spawn_serve, stop_server, wait_ready
from twostage_search.engine.beir import find_file, read_queries
from twostage_search.engine.logs import setup_logging


def _experiment(reranker: str, rerank_depth: int, depth: int, name: str = "load") -> dict[str, Any]:
    arm: dict[str, Any] = {"name": reranker, "weight": 1.0, "reranker": {"name": reranker}, "depth": depth}
    if reranker != "identity":
        arm["rerank_depth"] = rerank_depth
    return {"name": name, "arms": [arm]}


async def _level(
    client: Any, base: str, queries: list[str], concurrency: int, n: int, max_seconds: float, k: int
) -> dict[str, Any]:
    outcomes, seconds = await closed_loop_requests(
        client, base, queries, concurrency, n, max_seconds, k, user_prefix=f"load-{concurrency}-"
    )
    latencies = [ms for _, ms in outcomes]
    errors: dict[str, int] = {}
    for kind, _ in outcomes:
        if kind != "200":
            errors[kind] = errors.get(kind, 0) + 1
    arr = np.array(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(seconds, 2),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p95_ms": round(float(np.percentile(arr, 95)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
    }


async def _swapper(client: Any, base: str, token: str, every_s: float, config: dict[str, Any], out: list[int]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    i = 0
    while True:
        await asyncio.sleep(every_s)
        i += 1
        resp = await client.put(f"{base}/admin/experiment", json={**config, "name": f"load-{i}"}, headers=headers)
        out.append(resp.status_code)


async def _drive(args: argparse.Namespace, base: str, proc: subprocess.Popen[bytes], token: str) -> dict[str, Any]:
    import httpx

    queries = [q.text for q in read_queries(find_file(args.dataset, "queries"))]
    limits = httpx.Limits(max_connections=max(args.concurrency) + 2)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        await wait_ready(client, base, proc, args.start_timeout)
        await _level(client, base, queries[::-1], 2, args.warmup, args.max_seconds, args.k)
        swaps: list[int] = []
        task = None
        if args.swap_every:
            config = _experiment(args.reranker, args.rerank_depth, args.depth)
            task = asyncio.create_task(_swapper(client, base, token, args.swap_every, config, swaps))
        levels = []
        for c in args.concurrency:
            level = await _level(client, base, queries, c, args.requests, args.max_seconds, args.k)
            levels.append(level)
            print(
                f"concurrency {c:>3}: {level['requests']} requests in {level['seconds']} s, {level['rps']} req/s, "
                f"p50 {level['p50_ms']} ms, p95 {level['p95_ms']} ms, p99 {level['p99_ms']} ms, "
                f"errors {level['errors']}",
                flush=True,
            )
        if task is not None:
            task.cancel()
        return {"levels": levels, "swaps": {"ok": swaps.count(200), "failed": len(swaps) - swaps.count(200)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.load", description=__doc__.split("\n")[0]
    )
    p.add_argument("--index", type=Path, default=Path("var/scifact"))
    p.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"))
    p.add_argument("--reranker", default="identity", help="the one arm's reranker (default identity)")
    p.add_argument("--rerank-depth", type=int, default=10)
    p.add_argument("--depth", type=int, default=100, help="first-stage candidates (default 100)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=60.0, help="time cap per level")
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--swap-every", type=float, default=0.0, help="hot-swap the experiment every S seconds")
    p.add_argument("--out", type=Path, default=Path("runs"))
    args = p.parse_args(argv)
    setup_logging(0)
    if not (args.index / "meta.json").exists():
        print(f"load: no index at {args.index} (run `make demo` first)", file=sys.stderr)
        return 2

    token = os.urandom(12).hex()
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "load.json"
        exp.write_text(json.dumps(_experiment(args.reranker, args.rerank_depth, args.depth)))
        env = {"TWOSTAGE_ADMIN_TOKEN": token, "TWOSTAGE_WORKERS": "4"}
        log_path = Path(tmp) / "server.log"
        proc, base = spawn_serve(args.index, log_path, experiment=exp, env=env)
        try:
            result = asyncio.run(_drive(args, base, proc, token))
        finally:
            stop_server(proc)
        lines = log_path.read_text(errors="replace").count('"endpoint":"/search"')
    report = {
        "reranker": args.reranker,
        "depth": args.depth,
        "k": args.k,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "access_log_lines": lines,
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'load.json'}")
    return 1 if any(level["errors"] for level in result["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
