"""Run the HTTP service for a benchmark: ``twostage serve`` in its own process on a free local port, and
closed-loop ``/search`` traffic against it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twostage_search.engine.errors import InputError


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


def spawn_serve(
    index: Path, log_path: Path, *, experiment: Path | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``twostage serve`` over ``index`` on a free local port, its output to ``log_path``; not waited for.

    ``env`` adds to this process's environment (``HF_HUB_OFFLINE=1`` unless set). Returns the process and the
    base URL; stop it with :func:`stop_server`."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(env or {})}
    cmd = [sys.executable, "-m", "twostage_search.cli", "serve", "--index", str(index)]
    if experiment is not None:
        cmd += ["--experiment", str(experiment)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    return proc, f"http://127.0.0.1:{port}"


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

        self.log_path = data_dir / "server.log"
        self.proc, self.base = spawn_serve(
            index, self.log_path, experiment=experiment, env={"TWOSTAGE_DATA_DIR": str(data_dir), **(env or {})}
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


async def wait_ready(client: Any, base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
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


def read_experiment(path: Path) -> dict[str, Any]:
    """An experiment file (YAML) as a mapping; a file that cannot be read or is not a mapping is an InputError."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read the experiment: {exc}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path}: not an experiment file")
    return config
