"""Load test of the HTTP service on loopback: throughput and latency percentiles at a few concurrencies.

    python -m twostage_search.benchmarks.load --index var/scifact --concurrency 1 4 16 --requests 300

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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.beir import find_file, read_queries
from twostage_search.engine.logs import setup_logging


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_server(proc: subprocess.Popen[Any]) -> None:
    """Stop a server process the benchmark started: SIGTERM, then SIGKILL after 30 s; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


class ServeProcess:
    """``twostage serve`` in a subprocess on a free local port, ready when constructed; ``close()`` stops it.

    ``env`` adds to this process's environment (``HF_HUB_OFFLINE=1`` and the data directory are set);
    ``headers`` go with every request of :attr:`client` (an ``httpx.Client``). Its output is in
    ``data_dir/server.log``, quoted when it exits early or is not ready within ``timeout_s``.
    """

    def __init__(
        self,
        index: Path,
        experiment: Path,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        import httpx

        from twostage_search.engine.errors import TwoStageError

        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "TWOSTAGE_DATA_DIR": str(data_dir),
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "twostage_search.cli", "serve", "--index", str(index)]
        cmd += ["--experiment", str(experiment), "--host", "127.0.0.1", "--port", str(port)]
        self.log_path = data_dir / "server.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=full_env
            )
        self.client = httpx.Client(timeout=180, headers=headers or {})
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                self.close()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise TwoStageError(f"twostage serve exited with status {self.proc.returncode}:\n{tail}")
            try:
                if self.client.get(f"{self.base}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise TwoStageError(f"twostage serve not ready after {timeout_s:.0f}s (see {self.log_path})")
            time.sleep(0.25)

    def close(self) -> None:
        self.client.close()
        stop_server(self.proc)


def _experiment(reranker: str, rerank_depth: int, depth: int, name: str = "load") -> dict[str, Any]:
    arm: dict[str, Any] = {"name": reranker, "weight": 1.0, "reranker": {"name": reranker}, "depth": depth}
    if reranker != "identity":
        arm["rerank_depth"] = rerank_depth
    return {"name": name, "arms": [arm]}


async def _wait_ready(client: Any, base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            if (await client.get(f"{base}/readyz")).status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.25)
    raise RuntimeError("server not ready in time")


async def closed_loop_requests(
    client: Any,
    base: str,
    queries: list[str],
    clients: int,
    n: int,
    max_seconds: float,
    k: int,
    *,
    user_prefix: str,
    pause_after_429_s: float = 0.0,
) -> tuple[list[tuple[str, float]], float]:
    """``clients`` closed loops POSTing ``/search`` until ``n`` requests or ``max_seconds``.

    Returns each request's outcome (the HTTP status, or the exception's class name) with its latency in
    ms, and the wall seconds of the whole run. ``pause_after_429_s`` makes a refused client wait a little.
    """
    outcomes: list[tuple[str, float]] = []
    sent = 0
    stop_at = time.perf_counter() + max_seconds

    async def loop() -> None:
        nonlocal sent
        while sent < n and time.perf_counter() < stop_at:
            i = sent
            sent += 1
            body = {"query": queries[i % len(queries)], "k": k, "user_id": f"{user_prefix}{i}"}
            started = time.perf_counter()
            try:
                resp = await client.post(f"{base}/search", json=body)
                status = str(resp.status_code)
            except Exception as exc:
                status = type(exc).__name__
            outcomes.append((status, (time.perf_counter() - started) * 1000))
            if status == "429" and pause_after_429_s:
                await asyncio.sleep(pause_after_429_s)

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return outcomes, time.perf_counter() - started


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
        await _wait_ready(client, base, proc, args.start_timeout)
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
    p = argparse.ArgumentParser(prog="python -m twostage_search.benchmarks.load", description=__doc__.split("\n")[0])
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
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "load.json"
        exp.write_text(json.dumps(_experiment(args.reranker, args.rerank_depth, args.depth)))
        env = {**os.environ, "TWOSTAGE_ADMIN_TOKEN": token, "HF_HUB_OFFLINE": "1", "TWOSTAGE_WORKERS": "4"}
        cmd = [
            sys.executable,
            "-m",
            "twostage_search.cli",
            "serve",
            "--index",
            str(args.index),
            "--experiment",
            str(exp),
        ]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as server_log:
            proc = subprocess.Popen(cmd, stdout=server_log, stderr=subprocess.STDOUT, env=env)
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
