"""A stand-in for ResilientDB's HTTP gateway, on 127.0.0.1 and a free port, in a thread of the test.

It answers as the project's KV contract says the real gateway does: a commit stores the whole JSON
body under its "id" and answers 201 ``id: <id>`` at once; a body without a string id gets 400
``Invalid transaction format``; a missing key reads as 200 with an empty body; when the gateway cannot
reach the cluster (``failing``) it answers 500 (``get value fail`` for reads).

Test knobs beyond the contract: stale reads like the real cluster's (on with RESCHAT_STANDIN_STALE_READS,
as for the tool stand-in), a huge generated value for every read, and a redirect for every request.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from tests.standin import STALE_PROBABILITY, STALE_WINDOW_S, stale_reads_requested

COMMIT_PATH = "/v1/transactions/commit"
READ_PREFIX = "/v1/transactions/"


class GatewayStandIn(ThreadingHTTPServer):
    """The gateway; use as a context manager, point a ledger at ``url``."""

    daemon_threads = True
    #: The listen backlog. socketserver's default of 5 makes the kernel reset connections when a client
    #: opens more at once (files.store_chunks writes 16 chunks concurrently); a real server listens
    #: with a backlog of hundreds.
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        #: What the cluster holds: the raw bodies, by id.
        self.store: dict[str, bytes] = {}
        #: True: the gateway cannot reach the cluster.
        self.failing = False
        #: True: commits are acknowledged (201) and lost, as a write that never reached consensus.
        self.drop_commits = False
        #: The id of every commit that was acknowledged, lost ones included, in order.
        self.commits: list[str] = []
        #: Seconds to sit on every request before answering (released early by ``close``).
        self.delay_s = 0.0
        #: Seconds for a commit (POST) instead, when set: on the real cluster a read goes through
        #: consensus (about 190 ms) and a write is answered once sent (about 12 ms).
        self.commit_delay_s: float | None = None
        #: When set, every request gets this (status, body) instead: a gateway that misbehaves.
        self.forced_answer: tuple[int, bytes] | None = None
        #: Every request as (method, raw path), in arrival order.
        self.requests: list[tuple[str, str]] = []
        #: A read this soon after a write of the same key returns the previous body...
        self.stale_window_s = STALE_WINDOW_S if stale_reads_requested() else 0.0
        #: ... with this probability.
        self.stale_probability = STALE_PROBABILITY
        self.random = random.Random()
        #: The body each key held before its latest write, and when that write came.
        self.previous: dict[str, bytes] = {}
        self.written_at: dict[str, float] = {}
        #: When set, every read answers a ResChat envelope whose value is this many bytes, generated
        #: as it is sent (never stored), with no Content-Length unless ``huge_values_declared``.
        self.huge_values_bytes = 0
        self.huge_values_declared = False
        #: ... for every key, or only for keys that hold a value (a reader then sees a normal lane whose
        #: every page is huge).
        self.huge_values_stored_only = False
        #: The keys a huge value was sent for, in order.
        self.huge_values_served: list[str] = []
        #: When set, every request is answered with a 302 to this location.
        self.redirect_to: str | None = None
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
        delay = self.server.delay_s
        if method == "POST" and self.server.commit_delay_s is not None:
            delay = self.server.commit_delay_s
        if delay and self.server.closing.wait(delay):
            return False
        if self.server.forced_answer is not None:
            self._answer(*self.server.forced_answer)
            return False
        if self.server.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        return True

    def _stream_huge_value(self, key: str) -> None:
        with self.server.lock:
            self.server.huge_values_served.append(key)
        size = self.server.huge_values_bytes
        head = json.dumps({"id": key, "value": ""})[:-2].encode()  # up to the value's opening quote
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.server.huge_values_declared:
            self.send_header("Content-Length", str(len(head) + size + 2))
        self.end_headers()
        chunk = b"x" * (1 << 20)
        try:
            self.wfile.write(head)
            for start in range(0, size, len(chunk)):
                self.wfile.write(chunk[: min(len(chunk), size - start)])
            self.wfile.write(b'"}')
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what it is meant to do
        self.close_connection = True

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
            self.server.commits.append(loaded["id"])
            if not self.server.drop_commits:
                self.server.previous[loaded["id"]] = self.server.store.get(loaded["id"], b"")
                self.server.written_at[loaded["id"]] = time.monotonic()
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
        server = self.server
        if server.huge_values_bytes and (key in server.store or not server.huge_values_stored_only):
            self._stream_huge_value(key)
            return
        with server.lock:
            recent = time.monotonic() - server.written_at.get(key, float("-inf")) < server.stale_window_s
            stale = recent and server.random.random() < server.stale_probability
            body = server.previous.get(key, b"") if stale else server.store.get(key, b"")
        self._answer(200, body)
