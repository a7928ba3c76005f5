"""A stand-in for ResilientDB's HTTP gateway, on 127.0.0.1 and a free port, in a thread of the test.

It answers as the project's KV contract says the real gateway does: a commit stores the whole JSON
body under its "id" and answers 201 ``id: <id>`` at once; a body without a string id gets 400
``Invalid transaction format``; a missing key reads as 200 with an empty body; when the gateway cannot
reach the cluster (``failing``) it answers 500 (``get value fail`` for reads).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

COMMIT_PATH = "/v1/transactions/commit"
READ_PREFIX = "/v1/transactions/"


class GatewayStandIn(ThreadingHTTPServer):
    """The gateway; use as a context manager, point a ledger at ``url``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        #: What the cluster holds: the raw bodies, by id.
        self.store: dict[str, bytes] = {}
        #: True: the gateway cannot reach the cluster.
        self.failing = False
        #: Seconds to sit on every request before answering (released early by ``close``).
        self.delay_s = 0.0
        #: When set, every request gets this (status, body) instead: a gateway that misbehaves.
        self.forced_answer: tuple[int, bytes] | None = None
        #: Every request as (method, raw path), in arrival order.
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> GatewayStandIn:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
        self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    server: GatewayStandIn

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is not the place for an access log."""

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _begin(self, method: str) -> bool:
        """Log the request and wait out the delay; False when it is already answered or abandoned."""
        with self.server.lock:
            self.server.requests.append((method, self.path))
        if self.server.delay_s and self.server.closing.wait(self.server.delay_s):
            return False
        if self.server.forced_answer is not None:
            self._answer(*self.server.forced_answer)
            return False
        return True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._begin("POST"):
            return
        if self.path != COMMIT_PATH:
            self._answer(404, b"Not Found")
            return
        try:
            loaded = json.loads(body)
        except ValueError:
            loaded = None
        if not isinstance(loaded, dict) or not isinstance(loaded.get("id"), str):
            self._answer(400, b"Invalid transaction format")
            return
        if self.server.failing:
            self._answer(500, b"commit fail")
            return
        with self.server.lock:
            self.server.store[loaded["id"]] = body
        self._answer(201, f"id: {loaded['id']}".encode())

    def do_GET(self) -> None:
        if not self._begin("GET"):
            return
        if not self.path.startswith(READ_PREFIX) or self.path == COMMIT_PATH:
            self._answer(404, b"Not Found")
            return
        if self.server.failing:
            self._answer(500, b"get value fail")
            return
        key = urllib.parse.unquote(self.path[len(READ_PREFIX) :])
        with self.server.lock:
            self._answer(200, self.server.store.get(key, b""))
