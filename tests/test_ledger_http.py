"""ResilientDBHttpLedger against the gateway stand-in on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from reschat.errors import LedgerConfigError, LedgerError, LedgerTimeoutError, LedgerUnavailableError
from reschat.ledger.base import MAX_VALUE_BYTES
from reschat.ledger.http import ResilientDBHttpLedger
from tests.standin.http_gateway import GatewayStandIn

PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))


@pytest.fixture
def gateway() -> Iterator[GatewayStandIn]:
    with GatewayStandIn() as server:
        yield server


@pytest.fixture
def ledger(gateway: GatewayStandIn) -> ResilientDBHttpLedger:
    return ResilientDBHttpLedger(gateway.url, timeout_s=10)


def raw_request(
    gateway: GatewayStandIn, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """Talk to the gateway directly, as another client (or a vandal) would."""
    host, port = gateway.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_round_trip(gateway: GatewayStandIn, ledger: ResilientDBHttpLedger) -> None:
    assert ledger.get("room") is None
    ledger.set("room", "first")
    assert ledger.get("room") == "first"
    ledger.set("room", "second")
    assert ledger.get("room") == "second"
    # The gateway keeps the whole body, so what is stored is ResChat's JSON envelope.
    assert json.loads(gateway.store["room"]) == {"id": "room", "value": "second"}
    assert ("POST", "/v1/transactions/commit") in gateway.requests


@pytest.mark.parametrize(
    "value",
    [PRINTABLE, " leading space", "a value = b", '"quoted" \\ {"id": "x"}', "x" * MAX_VALUE_BYTES],
    ids=["printable", "leading-space", "equals", "json-like", "largest"],
)
def test_values_round_trip_exactly(ledger: ResilientDBHttpLedger, value: str) -> None:
    ledger.set("k", value)
    assert ledger.get("k") == value


def test_keys_are_quoted_into_the_url(gateway: GatewayStandIn, ledger: ResilientDBHttpLedger) -> None:
    key = "a/b?c#d%e&f=g+h"
    ledger.set(key, "v")
    assert ledger.get(key) == "v"
    assert ledger.get("a") is None
    assert ("GET", "/v1/transactions/a%2Fb%3Fc%23d%25e%26f%3Dg%2Bh") in gateway.requests


def test_get_many(ledger: ResilientDBHttpLedger) -> None:
    ledger.set("one", "1")
    ledger.set("two", "2")
    assert ledger.get_many(["one", "two", "three", "one"]) == {"one": "1", "two": "2", "three": None}


def test_gateway_that_cannot_reach_the_cluster(
    gateway: GatewayStandIn, ledger: ResilientDBHttpLedger
) -> None:
    ledger.set("k", "v")
    gateway.failing = True
    with pytest.raises(LedgerUnavailableError, match="cannot reach the cluster"):
        ledger.set("k", "w")
    with pytest.raises(LedgerUnavailableError, match="get value fail"):
        ledger.get("k")
    gateway.failing = False
    assert ledger.get("k") == "v"


def test_gateway_not_running() -> None:
    with GatewayStandIn() as gone:
        url = gone.url
    ledger = ResilientDBHttpLedger(url, timeout_s=5)
    with pytest.raises(LedgerUnavailableError, match="is it running"):
        ledger.get("k")
    with pytest.raises(LedgerUnavailableError, match="is it running"):
        ledger.set("k", "v")


def test_gateway_that_does_not_answer_in_time(gateway: GatewayStandIn) -> None:
    gateway.delay_s = 60  # released when the fixture closes the gateway
    ledger = ResilientDBHttpLedger(gateway.url, timeout_s=0.5)
    with pytest.raises(LedgerTimeoutError, match="abandoned"):
        ledger.get("k")
    with pytest.raises(LedgerTimeoutError, match="abandoned"):
        ledger.set("k", "v")


def test_gateway_that_drops_the_connection() -> None:
    # A listener that accepts and closes without a word: not an HTTP gateway at all.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        ledger = ResilientDBHttpLedger(f"http://127.0.0.1:{port}", timeout_s=5)
        listener.settimeout(10)

        def accept_and_close() -> None:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.close()

        closer = threading.Thread(target=accept_and_close)
        closer.start()
        with pytest.raises(LedgerUnavailableError):
            ledger.get("k")
        closer.join()


def test_gateway_contract_for_invalid_transactions(gateway: GatewayStandIn) -> None:
    for body in (b'{"value": "no id"}', b'{"id": 5}', b"not json", b'["id"]'):
        assert raw_request(gateway, "POST", "/v1/transactions/commit", body) == (
            400,
            b"Invalid transaction format",
        )
    assert gateway.store == {}
    assert raw_request(gateway, "POST", "/v1/transactions/commit", b'{"id": "k"}') == (201, b"id: k")
    assert raw_request(gateway, "GET", "/v1/transactions/missing") == (200, b"")


def test_rejected_write_is_a_ledger_error(gateway: GatewayStandIn, ledger: ResilientDBHttpLedger) -> None:
    gateway.forced_answer = (400, b"Invalid transaction format")
    with pytest.raises(LedgerError, match="rejected the write of k") as caught:
        ledger.set("k", "v")
    assert type(caught.value) is LedgerError


def test_unexpected_acknowledgement_is_a_ledger_error(
    gateway: GatewayStandIn, ledger: ResilientDBHttpLedger
) -> None:
    gateway.forced_answer = (201, b"id: someone-else")
    with pytest.raises(LedgerError, match="acknowledged the write of k"):
        ledger.set("k", "v")
    gateway.forced_answer = (418, b"teapot")
    with pytest.raises(LedgerError, match="HTTP 418"):
        ledger.get("k")


@pytest.mark.parametrize(
    "stored",
    [
        b'{"id": "k"}',
        b'{"id": "k", "value": 5}',
        b'{"id": "k", "other": "v"}',
        b'{"id": "other", "value": "v"}',
    ],
)
def test_a_value_someone_else_wrote_is_refused(
    gateway: GatewayStandIn, ledger: ResilientDBHttpLedger, stored: bytes
) -> None:
    gateway.store["k"] = stored  # as another client of the same gateway could leave it
    with pytest.raises(LedgerError, match="not ResChat's"):
        ledger.get("k")


def test_a_non_json_value_is_refused(gateway: GatewayStandIn, ledger: ResilientDBHttpLedger) -> None:
    # What a kv_service_tools client writing under the same key leaves behind.
    gateway.forced_answer = (200, b"plain ciphertext")
    with pytest.raises(LedgerError, match="not ResChat's"):
        ledger.get("k")


def test_wrong_path_on_the_gateway_is_a_config_error(gateway: GatewayStandIn) -> None:
    ledger = ResilientDBHttpLedger(gateway.url + "/api")
    with pytest.raises(LedgerConfigError, match="check the gateway URL"):
        ledger.get("k")
    with pytest.raises(LedgerConfigError, match="404"):
        ledger.set("k", "v")


@pytest.mark.parametrize("url", ["127.0.0.1:18000", "ftp://127.0.0.1:18000", "file:///etc/passwd", "http://"])
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(LedgerConfigError, match="not an http"):
        ResilientDBHttpLedger(url)


def test_environment_proxy_settings_are_ignored(
    gateway: GatewayStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that is not there: had the ledger used it, the request would fail.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    ledger = ResilientDBHttpLedger(gateway.url)
    ledger.set("k", "v")
    assert ledger.get("k") == "v"
