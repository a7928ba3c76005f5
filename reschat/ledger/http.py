"""ResilientDB through its optional HTTP gateway (default port 18000), with the standard library only.

The gateway stores a whole JSON object under the object's ``"id"``, so a value goes in as
``{"id": key, "value": value}`` and comes back the same way. Like the CLI, a write is acknowledged
before it is committed (201 without waiting) and a missing key reads as an empty body.

Whatever answers at the URL is not trusted: at most MAX_BODY_BYTES + 1 bytes of a body are read (a
larger value reads as OVERSIZED_VALUE), the whole answer must arrive within the timeout, and a
redirect is refused rather than followed to another path or host. A body that is not ResChat's
envelope (another client wrote the key) is returned as it is stored, as the CLI ledger returns it:
the reader reports it as damaged instead of failing the whole read.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO

from reschat.errors import LedgerConfigError, LedgerError, LedgerTimeoutError, LedgerUnavailableError
from reschat.ledger.base import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    OVERSIZED_VALUE,
    RESILIENTDB_STALE_WINDOW_S,
    Ledger,
    check_key,
    check_value,
)

log = logging.getLogger(__name__)

#: The longest body ResChat's own envelope can make: JSON escapes at most double a printable ASCII
#: key or value (``"`` and ``\\``), plus the braces, names and quotes.
MAX_BODY_BYTES = 2 * (MAX_KEY_BYTES + MAX_VALUE_BYTES) + 64
#: An error answer is only quoted in a message: a few hundred bytes of it are plenty.
_ERROR_BODY_BYTES = 4096
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    #: The body was longer than the bytes read: what was read is only its beginning.
    oversized: bool = False


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Return a redirect as the HTTPError it is, instead of following it somewhere else."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class ResilientDBHttpLedger(Ledger):
    """ResilientDB's KV service through the HTTP gateway's ``/v1/transactions`` API."""

    name = "resilientdb-http"
    stale_read_window_s = RESILIENTDB_STALE_WINDOW_S

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LedgerConfigError(
                f"ResilientDB gateway URL {base_url!r} is not an http(s) URL: use e.g. http://127.0.0.1:18000"
            )
        if timeout_s <= 0:
            raise LedgerConfigError(f"ledger timeout must be positive, not {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # The gateway usually sits on loopback or a LAN: a stray http_proxy in the environment must not
        # route ledger traffic through some other machine, and neither may a redirect.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _RefuseRedirects())

    def _request(self, method: str, path: str, body: bytes | None = None) -> _Answer:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - scheme checked in __init__
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return self._read(int(response.status), response, MAX_BODY_BYTES, deadline, method)
        except urllib.error.HTTPError as exc:
            with exc:
                if 300 <= exc.code < 400:
                    where = str(exc.headers.get("Location", "elsewhere"))[:200]
                    raise LedgerConfigError(
                        f"the ResilientDB gateway at {self.base_url} redirected the {method} (HTTP {exc.code}) to"
                        f" {where!r}; ResChat does not follow redirects: set ledger.http.url to the gateway itself"
                    ) from None
                return self._read(exc.code, exc, _ERROR_BODY_BYTES, deadline, method)
        except TimeoutError:
            raise self._timeout(method) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise self._timeout(method) from None
            raise LedgerUnavailableError(
                f"cannot reach the ResilientDB gateway at {self.base_url} ({exc.reason}): is it running?"
            ) from exc
        except (http.client.HTTPException, OSError) as exc:
            raise LedgerUnavailableError(
                f"the ResilientDB gateway at {self.base_url} broke the connection ({exc}): is it healthy?"
            ) from exc

    def _read(self, status: int, response: IO[bytes], limit: int, deadline: float, method: str) -> _Answer:
        """At most ``limit`` bytes of the body, and whether there was more; the rest is never read."""
        headers = getattr(response, "headers", None)
        declared = str(headers.get("Content-Length", "")).strip() if headers is not None else ""
        if declared.isdigit() and int(declared) > limit:
            return _Answer(status, b"", oversized=True)
        body = bytearray()
        while len(body) <= limit:
            if time.monotonic() > deadline:
                raise self._timeout(method)  # an answer trickling in forever is no answer
            chunk = response.read(min(_CHUNK, limit + 1 - len(body)))
            if not chunk:
                return _Answer(status, bytes(body))
            body += chunk
        return _Answer(status, bytes(body[:limit]), oversized=True)

    def _timeout(self, method: str) -> LedgerTimeoutError:
        return LedgerTimeoutError(
            f"the ResilientDB gateway at {self.base_url} did not answer a {method} within"
            f" {self.timeout_s:g} s; the request was abandoned: check the gateway and the cluster"
        )

    def _unexpected(self, status: int, body: bytes) -> LedgerError:
        text = body.decode("utf-8", "replace").strip()[:80]
        if status == 500:
            return LedgerUnavailableError(
                f"the ResilientDB gateway at {self.base_url} cannot reach the cluster (HTTP 500 {text!r}):"
                " check that the replicas are running"
            )
        if status == 404:
            return LedgerConfigError(
                f"no ResilientDB transactions API at {self.base_url} (HTTP 404): check the gateway URL"
            )
        return LedgerError(f"the ResilientDB gateway at {self.base_url} answered HTTP {status} {text!r}")

    def set(self, key: str, value: str) -> None:
        check_key(key)
        check_value(value)
        body = json.dumps({"id": key, "value": value}, separators=(",", ":")).encode("ascii")
        answer = self._request("POST", "/v1/transactions/commit", body)
        status = answer.status
        log.debug("gateway POST %s: HTTP %d", key, status)
        text = answer.body.decode("utf-8", "replace").strip()
        if status == 201:
            if text != f"id: {key}":
                raise LedgerError(f"the ResilientDB gateway acknowledged the write of {key} as {text[:80]!r}")
            return
        if status == 400:
            raise LedgerError(
                f"the ResilientDB gateway rejected the write of {key} ({text[:80]!r}): is it the KV gateway?"
            )
        raise self._unexpected(status, answer.body)

    def get(self, key: str) -> str | None:
        check_key(key)
        answer = self._request("GET", "/v1/transactions/" + urllib.parse.quote(key, safe=""))
        log.debug("gateway GET %s: HTTP %d, %d bytes", key, answer.status, len(answer.body))
        if answer.status != 200:
            raise self._unexpected(answer.status, answer.body)
        if answer.oversized:
            log.warning("ledger key %s holds a body over %d bytes: not read", key, MAX_BODY_BYTES)
            return OVERSIZED_VALUE
        if not answer.body.strip():
            return None
        try:
            stored = json.loads(answer.body)
        except (ValueError, RecursionError):
            stored = None
        if isinstance(stored, dict) and stored.get("id") == key and isinstance(stored.get("value"), str):
            value: str = stored["value"]
        else:
            # Someone else's body under this key: handed on as stored, like the CLI ledger does.
            value = answer.body.decode("utf-8", "replace")
        if len(value) > MAX_VALUE_BYTES:
            log.warning("ledger key %s holds a value over %d bytes: not used", key, MAX_VALUE_BYTES)
            return OVERSIZED_VALUE
        return value or None
