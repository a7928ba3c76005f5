"""ResilientDB through its optional HTTP gateway (default port 18000), with the standard library only.

The gateway stores a whole JSON object under the object's ``"id"``, so a value goes in as
``{"id": key, "value": value}`` and comes back the same way. Like the CLI, a write is acknowledged
before it is committed (201 without waiting) and a missing key reads as an empty body.
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request

from reschat.errors import LedgerConfigError, LedgerError, LedgerTimeoutError, LedgerUnavailableError
from reschat.ledger.base import Ledger, check_key, check_value

log = logging.getLogger(__name__)


class ResilientDBHttpLedger(Ledger):
    """ResilientDB's KV service through the HTTP gateway's ``/v1/transactions`` API."""

    name = "resilientdb-http"

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
        # route ledger traffic through some other machine.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - scheme checked in __init__
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
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
        status, answer = self._request("POST", "/v1/transactions/commit", body)
        log.debug("gateway POST %s: HTTP %d", key, status)
        text = answer.decode("utf-8", "replace").strip()
        if status == 201:
            if text != f"id: {key}":
                raise LedgerError(f"the ResilientDB gateway acknowledged the write of {key} as {text[:80]!r}")
            return
        if status == 400:
            raise LedgerError(
                f"the ResilientDB gateway rejected the write of {key} ({text[:80]!r}): is it the KV gateway?"
            )
        raise self._unexpected(status, answer)

    def get(self, key: str) -> str | None:
        check_key(key)
        status, answer = self._request("GET", "/v1/transactions/" + urllib.parse.quote(key, safe=""))
        log.debug("gateway GET %s: HTTP %d, %d bytes", key, status, len(answer))
        if status != 200:
            raise self._unexpected(status, answer)
        if not answer.strip():
            return None
        try:
            stored = json.loads(answer)
        except ValueError:
            stored = None
        ours = isinstance(stored, dict) and stored.get("id") == key and isinstance(stored.get("value"), str)
        if not ours:
            raise LedgerError(
                f"the value stored under {key} is not ResChat's (not a JSON object with this id and a string"
                " value): someone else wrote it"
            )
        assert isinstance(stored, dict)  # for mypy: ``ours`` checked it
        value: str = stored["value"]
        return value or None
