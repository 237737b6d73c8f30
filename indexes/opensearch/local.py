"""A real OpenSearch on this machine: one node or a three-node cluster on 127.0.0.1, for tests and benchmarks.

The distribution (and any plugins) come from Maven Central, once per machine (:mod:`.distribution`).
Each node gets its own config, data and log directories under a work directory (under the cache when the
given one is private), free HTTP and transport ports, a small heap, and disk-watermark checks off (a nearly
full disk must not leave replicas unassigned).

OpenSearch refuses to run as root: when this process is root, nodes run as the unprivileged user
``twostage-os`` (created with ``useradd`` if missing). Java: ``OPENSEARCH_JAVA_HOME``, else ``JAVA_HOME``
when it is a full JDK 21+, else the newest such JDK under ``/usr/lib/jvm``.

    with LocalCluster.start(nodes=3, workdir=tmp) as cluster:
        cluster.url            # http://127.0.0.1:PORT of node 0
        cluster.kill(1)        # SIGKILL one node
        cluster.restart(1)     # same ports and data; waits until it rejoined
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from twostage_search.indexes.opensearch.distribution import (
    ARTIFACT,
    KNN_PLUGIN,
    VERSION,
    LocalOpenSearchError,
    cache_dir,
    distribution,
    fetch_zip,
    java_env,
    java_home,
    maven_errors,
)

__all__ = [
    "ARTIFACT",
    "KNN_PLUGIN",
    "VERSION",
    "LocalCluster",
    "LocalOpenSearchError",
    "distribution",
    "fetch_zip",
    "java_home",
    "maven_errors",
]

log = logging.getLogger(__name__)

RUN_AS = "twostage-os"
HEAP = "512m"


# ------------------------------------------------------------------------------------------- nodes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user nodes run as when this process is root (created if missing); else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS]
        subprocess.run(cmd, check=True, capture_output=True)
        return pwd.getpwnam(RUN_AS)


def _traversable(path: Path) -> bool:
    """Whether every directory above ``path`` lets other users through (the ``o+x`` bit)."""
    return all(p.stat().st_mode & 0o001 for p in path.absolute().parents if p.exists())


def _linked_copy(home: Path, target: Path) -> Path:
    """``home`` re-created at ``target`` with its files hard-linked (a plain copy across file systems).

    For a distribution cached below a directory the nodes' unprivileged user cannot pass through (a private
    temporary directory): the user reaches the files through ``target``; nothing is copied or re-fetched.
    """

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(home, target, symlinks=True, copy_function=link)
    return target


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned node if we are killed


@dataclass
class Node:
    """One OpenSearch process: its directories, ports and (while running) its process."""

    name: str
    root: Path
    http_port: int
    transport_port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_file(self) -> Path:
        return self.root / "stdout.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _write_config(home: Path, node: Node, cluster_name: str, seeds: list[str], managers: list[str]) -> None:
    conf = node.root / "config"
    shutil.copytree(home / "config", conf, dirs_exist_ok=True)
    for sub in ("data", "logs", "tmp"):
        (node.root / sub).mkdir(exist_ok=True)
    settings = {
        "cluster.name": cluster_name,
        "node.name": node.name,
        "network.host": "127.0.0.1",
        "http.port": node.http_port,
        "transport.port": node.transport_port,
        "path.data": str(node.root / "data"),
        "path.logs": str(node.root / "logs"),
        "cluster.routing.allocation.disk.threshold_enabled": False,
        "action.destructive_requires_name": False,
    }
    if len(seeds) == 1:
        settings["discovery.type"] = "single-node"
    else:
        settings["discovery.seed_hosts"] = seeds
        settings["cluster.initial_cluster_manager_nodes"] = managers
    (conf / "opensearch.yml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    # The stock jvm.options writes logs/ and data relative to the distribution (read-only for the node).
    logs = node.root / "logs"
    options = (home / "config" / "jvm.options").read_text()
    options = re.sub(r"^-Xm([sx])\S+$", rf"-Xm\g<1>{HEAP}", options, flags=re.M)
    options = options.replace("file=logs/", f"file={logs}/").replace("-Xloggc:logs/", f"-Xloggc:{logs}/")
    options = options.replace("ErrorFile=logs/", f"ErrorFile={logs}/")
    options = options.replace("HeapDumpPath=data", f"HeapDumpPath={logs}")
    (conf / "jvm.options").write_text(options)


class LocalCluster:
    """``nodes`` OpenSearch processes on 127.0.0.1 forming one cluster (a single node when ``nodes=1``)."""

    def __init__(self, nodes: list[Node], home: Path, workdir: Path, owned_workdir: bool) -> None:
        self.nodes = nodes
        self.home = home
        self.workdir = workdir
        self._owned = owned_workdir
        self._linked: Path | None = None  # a hard-linked copy of the distribution the nodes' user can reach
        self.startup_seconds = 0.0

    @classmethod
    def start(
        cls,
        nodes: int = 1,
        *,
        workdir: str | Path | None = None,
        version: str = VERSION,
        plugins: Sequence[str] = (),
        timeout: float = 300,
    ) -> LocalCluster:
        """Fetch (once), configure and start ``nodes`` nodes with ``plugins``; return when the cluster is green."""
        started = time.monotonic()
        home = distribution(version, plugins=plugins)
        user = _run_as()
        owned = workdir is None or (user is not None and not _traversable(Path(workdir)))
        if owned:  # the nodes' user must reach their directories: a private pytest tmp dir will not do
            base = cache_dir()
            if user is not None and not _traversable(base / "run"):  # e.g. a cache inside a private directory
                base = Path(tempfile.gettempdir())
            root = Path(tempfile.mkdtemp(prefix="twostage-opensearch-run-", dir=base))
        else:
            root = Path(str(workdir))
            root.mkdir(parents=True, exist_ok=True)
        cluster_name = f"twostage-{uuid.uuid4().hex[:6]}"
        members = [Node(f"node-{i}", root / f"node-{i}", free_port(), free_port()) for i in range(nodes)]
        seeds = [f"127.0.0.1:{n.transport_port}" for n in members]
        for node in members:
            node.root.mkdir(parents=True, exist_ok=True)
            _write_config(home, node, cluster_name, seeds, [n.name for n in members])
        cluster = cls(members, home, root, owned)
        try:
            if user is not None:
                root.chmod(0o755)
                for path in [root, *root.rglob("*")]:
                    os.chown(path, user.pw_uid, user.pw_gid)
                if not _traversable(home / "bin"):
                    cluster.home = cluster._linked = _linked_copy(home, root / "distribution")
            for i in range(nodes):
                cluster._spawn(i)
            cluster.wait_green(nodes=nodes, timeout=timeout)
        except OSError as exc:
            cluster.stop()
            raise LocalOpenSearchError(f"cannot start OpenSearch from {cluster.home}: {exc}") from exc
        except BaseException:
            cluster.stop()
            raise
        cluster.startup_seconds = time.monotonic() - started
        log.info("OpenSearch %s: %d node(s) green in %.1fs at %s", version, nodes, cluster.startup_seconds, cluster.url)
        return cluster

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        home = java_home()
        env = java_env(
            home,
            OPENSEARCH_JAVA_HOME=str(home),
            OPENSEARCH_PATH_CONF=str(node.root / "config"),
            OPENSEARCH_TMPDIR=str(node.root / "tmp"),
        )
        user = _run_as()
        out = node.log_file.open("ab")
        try:
            node.proc = subprocess.Popen(
                [str(self.home / "bin" / "opensearch")],
                cwd=node.root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None, preexec_fn=_die_with_parent,
            )  # fmt: skip
        finally:
            out.close()

    def request(self, path: str, *, node: int | None = None, method: str = "GET", timeout: float = 30) -> Any:
        """JSON from ``path`` on a live node (the first live one unless ``node`` is given)."""
        targets = [self.nodes[node]] if node is not None else [n for n in self.nodes if n.alive()]
        last: Exception | None = None
        for target in targets:
            try:
                req = urllib.request.Request(target.url + path, method=method)
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return json.loads(resp.read() or b"null")
            except (OSError, ValueError) as exc:
                last = exc
        raise LocalOpenSearchError(f"no node answered {path}: {last}")

    def wait_green(self, *, nodes: int | None = None, timeout: float = 300, index: str | None = None) -> None:
        """Block until cluster health is green (with ``nodes`` nodes), or raise after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        want = f"&wait_for_nodes={nodes}" if nodes else ""
        target = f"/{index}" if index else ""
        while True:
            dead = [n.name for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
            if dead and nodes and len(self.nodes) - len(dead) < nodes:
                raise LocalOpenSearchError(f"OpenSearch node(s) {dead} exited; log tail:\n{self.log_tail(dead[0])}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise LocalOpenSearchError(f"OpenSearch not green after {timeout:.0f}s; log tail:\n{self.log_tail()}")
            wait = max(1, min(int(left), 30))
            path = f"/_cluster/health{target}?wait_for_status=green{want}&timeout={wait}s"
            with contextlib.suppress(LocalOpenSearchError, urllib.error.HTTPError):
                health = self.request(path, timeout=wait + 10)
                if health.get("status") == "green" and not health.get("timed_out"):
                    return
            time.sleep(0.5)

    def log_tail(self, name: str | None = None, lines: int = 30) -> str:
        node = next((n for n in self.nodes if n.name == name), self.nodes[0])
        with contextlib.suppress(OSError):
            return "\n".join(node.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash: no clean shutdown)."""
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)

    def restart(self, i: int, *, timeout: float = 300) -> None:
        """Start node ``i`` again on its ports and data, and wait until the cluster is green again."""
        self.kill(i)
        self._spawn(i)
        self.wait_green(nodes=len(self.nodes), timeout=timeout)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 30 s) and remove a work directory we created."""
        for node in self.nodes:
            if node.alive() and node.proc is not None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout=30)
        if self._owned:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self._linked is not None:
            shutil.rmtree(self._linked, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - `python -m twostage_search.indexes.opensearch.local [N]`
    """Start N nodes (default 1), print their URLs and start-up time, stop on Ctrl-C."""
    import sys

    from twostage_search.engine.logs import setup_logging

    setup_logging(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with LocalCluster.start(n) as cluster:
        print(json.dumps({"urls": cluster.urls, "startup_seconds": round(cluster.startup_seconds, 1)}), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(node.alive() for node in cluster.nodes):
                time.sleep(1)


if __name__ == "__main__":  # pragma: no cover
    main()
