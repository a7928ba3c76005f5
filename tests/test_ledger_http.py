"""ResilientDBHttpLedger against the gateway stand-in on 127.0.0.1."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reschat.errors import LedgerConfigError, LedgerError, LedgerTimeoutError, LedgerUnavailableError
from reschat.ledger.base import MAX_VALUE_BYTES, OVERSIZED_VALUE
from reschat.ledger.http import MAX_BODY_BYTES, ResilientDBHttpLedger
from tests.conftest import befriend, make_person
from tests.standin import STALE_READS_ENV
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
        b'[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]',
    ],
)
def test_a_value_someone_else_wrote_is_returned_as_stored(
    gateway: GatewayStandIn, ledger: ResilientDBHttpLedger, stored: bytes
) -> None:
    # As the CLI ledger returns a stranger's value: the reader reports it as damaged, and reads on.
    gateway.store["k"] = stored  # as another client of the same gateway could leave it
    ledger.set("mine", "v")
    assert ledger.get_many(["k", "mine"]) == {"k": stored.decode(), "mine": "v"}


def test_a_non_json_value_is_returned_as_stored(gateway: GatewayStandIn, ledger: ResilientDBHttpLedger) -> None:
    # What a kv_service_tools client writing under the same key leaves behind.
    gateway.forced_answer = (200, b"plain ciphertext \xff")
    assert ledger.get("k") == "plain ciphertext \ufffd"


def test_a_strangers_value_under_a_page_key_is_reported_not_fatal(tmp_path: Path, ledger: ResilientDBHttpLedger,
                                                                   gateway: GatewayStandIn) -> None:
    """Issue 11, item 9: one foreign body used to make get_update raise LedgerError for the whole chat."""
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    alice.chat.send_message("still readable", "bob")
    key = bob.chat.lane_address("alice", mine=False, number=2)
    stranger = json.dumps({"id": key, "note": "hi"}).encode()
    assert raw_request(gateway, "POST", "/v1/transactions/commit", stranger)[0] == 201
    view = bob.chat.get_update("alice")
    assert [m.text for m in view.messages] == ["still readable"]
    assert [p.kind for p in view.problems] == ["damaged"]


def envelope(key: str, value: str) -> bytes:
    return json.dumps({"id": key, "value": value}).encode()


@pytest.mark.parametrize(
    "size", [MAX_VALUE_BYTES + 1, MAX_BODY_BYTES + 1], ids=["value-over-the-limit", "body-over-the-limit"]
)
def test_an_oversized_value_reads_as_the_marker_and_the_other_keys_still_read(
    gateway: GatewayStandIn, ledger: ResilientDBHttpLedger, size: int
) -> None:
    gateway.store["big"] = envelope("big", "x" * size)
    ledger.set("small", "fine")
    assert ledger.get_many(["big", "small", "none"]) == {"big": OVERSIZED_VALUE, "small": "fine", "none": None}


@pytest.mark.parametrize("declared", [False, True], ids=["streamed-to-the-end", "content-length"])
def test_a_huge_streamed_value_reads_as_the_marker(
    gateway: GatewayStandIn, ledger: ResilientDBHttpLedger, declared: bool
) -> None:
    gateway.huge_values_bytes = 50_000_000
    gateway.huge_values_declared = declared
    assert ledger.get("k") == OVERSIZED_VALUE


class CountingBody(io.RawIOBase):
    """An endless body that counts what was read of it."""

    def __init__(self) -> None:
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        buffer[:] = b"x" * len(buffer)
        self.consumed += len(buffer)
        return len(buffer)


def test_at_most_the_limit_plus_one_byte_of_a_body_is_read(ledger: ResilientDBHttpLedger) -> None:
    body = CountingBody()
    answer = ledger._read(200, body, MAX_BODY_BYTES, time.monotonic() + 60, "GET")
    assert answer.oversized
    assert body.consumed == MAX_BODY_BYTES + 1


def test_a_redirect_is_refused_not_followed(gateway: GatewayStandIn) -> None:
    with GatewayStandIn() as elsewhere:
        elsewhere.store["k"] = envelope("k", "from elsewhere")
        gateway.redirect_to = elsewhere.url + "/v1/transactions/k"
        ledger = ResilientDBHttpLedger(gateway.url)
        with pytest.raises(LedgerConfigError, match=r"redirected the GET .*does not follow redirects"):
            ledger.get("k")
        with pytest.raises(LedgerConfigError, match="redirected the POST"):
            ledger.set("k", "v")
        assert elsewhere.requests == []


def test_the_stand_in_serves_stale_reads_when_the_environment_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in itself: with RESCHAT_STANDIN_STALE_READS, a read right after a write is sometimes
    the previous value (never anything else); without it, never."""
    counts = {}
    for setting in ("1", None):
        if setting is None:
            monkeypatch.delenv(STALE_READS_ENV, raising=False)
        else:
            monkeypatch.setenv(STALE_READS_ENV, setting)
        with GatewayStandIn() as server:
            ledger = ResilientDBHttpLedger(server.url)
            seen = []
            for i in range(200):
                ledger.set(f"k{i}", "old")
                ledger.set(f"k{i}", "new")
                seen.append(ledger.get(f"k{i}"))
        assert set(seen) <= {"old", "new"}
        counts[setting] = seen.count("old")
    # p = 0.3 of 200: the chance of none or all is below 1e-30
    assert 0 < counts["1"] < 200
    assert counts[None] == 0


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
