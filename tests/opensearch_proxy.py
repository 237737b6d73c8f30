"""A real HTTP proxy on 127.0.0.1 in front of an OpenSearch cluster that injects faults: it answers chosen
bulk requests with 429/503, or drops every connection for a while (a server that is down)."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of the cluster that fails requests on purpose.

    ``reject_bulk(n, status)`` answers the next ``n`` bulk requests with ``status`` instead of forwarding
    them; ``go_down_at_bulk(k)`` drops every request (connection closed, no answer) from the ``k``-th
    bulk request on, until :meth:`up`.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.bulk_seen = 0
        self.injected: list[int | str] = []
        self._rejects: list[int] = []
        self._down_at: int | None = None
        self._drops_left: int | None = None
        self._down = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                proxy.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reject_bulk(self, n: int, status: int) -> None:
        with self.lock:
            self._rejects.extend([status] * n)

    def go_down_at_bulk(self, k: int, *, drops: int | None = None) -> None:
        """Go down at the ``k``-th bulk request from now; with ``drops``, come back after that many."""
        with self.lock:
            self._down_at = self.bulk_seen + k
            self._drops_left = drops

    def up(self) -> None:
        with self.lock:
            self._down, self._down_at = False, None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        is_bulk = "/_bulk" in h.path
        with self.lock:
            if is_bulk:
                self.bulk_seen += 1
                if self._down_at is not None and self.bulk_seen >= self._down_at:
                    self._down = True
            fault: int | str | None = "drop" if self._down else None
            if fault is None and is_bulk and self._rejects:
                fault = self._rejects.pop(0)
            if fault is not None:
                self.injected.append(fault)
            if fault == "drop" and self._drops_left is not None:
                self._drops_left -= 1
                if self._drops_left <= 0:  # back up for the next request
                    self._down, self._down_at, self._drops_left = False, None, None
        if fault == "drop":
            h.close_connection = True  # no answer at all: the client sees the connection die
            return
        if fault is not None:
            kind = "es_rejected_execution_exception" if fault == 429 else "unavailable_shards_exception"
            payload = json.dumps({"error": {"type": kind, "reason": "injected by the test"}, "status": fault})
            self._reply(h, int(fault), {"content-type": "application/json"}, payload.encode())
            return
        self._forward(h, body)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        u = self.upstream
        if u.scheme == "https":  # a real test cluster with its demo certificate
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                u.hostname or "", u.port, timeout=30, context=ssl._create_unverified_context()
            )
        else:
            conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection", "content-length")}
        if u.username:  # credentials in $OPENSEARCH_URL
            token = base64.b64encode(f"{u.username}:{u.password or ''}".encode()).decode()
            headers.setdefault("Authorization", f"Basic {token}")
        try:
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            keep = {k: v for k, v in resp.getheaders() if k.lower() not in ("transfer-encoding", "connection")}
            keep.pop("content-length", None)
            keep.pop("Content-Length", None)
            self._reply(h, resp.status, keep, data)
        finally:
            conn.close()

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], data: bytes) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
