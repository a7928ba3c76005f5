"""Page (protocol 2): the sealed one-line format, its padding, and parsers that only raise PageFormatError."""

from __future__ import annotations

import base64
import contextlib
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reschat import crypto, kem, schedule
from reschat.errors import PageFormatError
from reschat.lane import add_record, find_page_secret, new_page, open_header, open_page
from reschat.page import (
    MAX_PAGE_BYTES,
    MSG_FIELDS,
    PAGE_CAPACITY,
    Page,
    Record,
    SealedPage,
    from_micros,
    parse_timestamp,
    to_micros,
)
from tests.conftest import make_identity

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
READER = kem.ReceiveKey.generate()


def _signer(data: bytes) -> bytes:
    return b"\x01" * 384  # placement and padding tests do not check signatures


def sealed_page(texts: list[bytes]) -> tuple[SealedPage, bytes]:
    sealed, header, secret = new_page(
        conversation=b"c" * 32, writer=b"w" * 32, epoch=1, number=7, first_seq=1, link=bytes(32),
        readers=[READER.public], next_receive_key=READER.public, created=to_micros(T0), signer=_signer,
    )
    previous = bytes(32)
    for seq, text in enumerate(texts, start=1):
        record = Record("text", seq, previous, T0, (0, 0), "", text)
        sealed, _signed, previous = add_record(sealed, header, secret, record, _signer)
    return sealed, secret


def test_a_page_is_one_printable_ascii_line_under_the_ledger_limit() -> None:
    sealed, _secret = sealed_page([b"hello"] * PAGE_CAPACITY)
    text = sealed.to_string()
    assert text.startswith("reschat2:") and text.isascii() and text.isprintable() and "\n" not in text
    assert len(text) <= MAX_PAGE_BYTES
    again = SealedPage.from_string(text)
    assert again.to_string() == text


def test_only_the_reader_key_opens_the_page_and_msg_keeps_the_seeds_six_columns() -> None:
    sealed, secret = sealed_page([b"one", b"two"])
    assert find_page_secret(sealed, [(1, kem.ReceiveKey.generate())]) is None
    assert find_page_secret(sealed, [(1, kem.ReceiveKey.generate()), (2, READER)]) == (secret, 2)
    page = Page(header=open_header(sealed, secret), sealed=sealed)
    assert page.msg.shape == (PAGE_CAPACITY, len(MSG_FIELDS)) and page.msg.dtype == np.dtype(object)


def test_a_signed_page_opens_only_at_its_own_place() -> None:
    identity = make_identity("w", 0)

    def signer(data: bytes) -> bytes:
        return crypto.sign(identity.private_key, data)

    sealed, header, secret = new_page(
        conversation=b"c" * 32, writer=b"w" * 32, epoch=1, number=7, first_seq=1, link=bytes(32),
        readers=[READER.public], next_receive_key=READER.public, created=to_micros(T0), signer=signer,
    )
    sealed, _signed, _digest = add_record(sealed, header, secret, Record("text", 1, bytes(32), T0, (0, 0), "", b"hi"),
                                          signer)
    where = {"conversation": b"c" * 32, "writer": b"w" * 32, "writer_key": identity.public_key, "epoch": 1}
    opened = open_page(sealed.to_string(), sealed, secret, number=7, verified=set(), **where)  # type: ignore[arg-type]
    assert [r.body for r in opened.records] == [b"hi"]
    with pytest.raises(PageFormatError, match="signed as page 7"):
        open_page(sealed.to_string(), sealed, secret, number=8, verified=set(), **where)  # type: ignore[arg-type]
    other = make_identity("x", 1)
    with pytest.raises(PageFormatError, match="signature"):
        open_page(sealed.to_string(), sealed, secret, number=7, verified=set(),
                  **{**where, "writer_key": other.public_key})  # type: ignore[arg-type]


def test_yes_and_no_are_records_of_the_same_size() -> None:
    yes, _ = sealed_page([b"yes"])
    no, _ = sealed_page([b"no"])
    short, _ = sealed_page([b"x" * 40])
    assert len(yes.to_string()) == len(no.to_string()) == len(short.to_string())
    longer, _ = sealed_page([b"x" * 200])
    assert len(longer.to_string()) > len(yes.to_string())  # the next bucket


@pytest.mark.parametrize("size", [0, 1, 100, 123, 124, 500, 8000, schedule.max_payload()])
def test_padding_round_trips_into_a_bucket(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    padded = schedule.pad(payload)
    assert len(padded) in schedule.PAD_BUCKETS
    assert schedule.unpad(padded) == payload


def test_padding_refuses_what_it_cannot_have_made() -> None:
    with pytest.raises(ValueError):
        schedule.pad(bytes(schedule.max_payload() + 1))
    bad = bytearray(schedule.pad(b"abc"))
    bad[-1] = 1
    with pytest.raises(ValueError):
        schedule.unpad(bytes(bad))


@pytest.mark.parametrize(
    "text",
    ["", "fail", "get value fail", "reschat2:", "reschat2:!!!", "reschat2:AAAA", "reschat-page/1:{}",
     "reschat2:" + base64.b64encode(b"\x02\x01" + bytes(50)).decode()],
)
def test_garbage_raises_page_format_error(text: str) -> None:
    with pytest.raises(PageFormatError):
        SealedPage.from_string(text)


def test_a_protocol_1_page_is_named_old_format() -> None:
    with pytest.raises(PageFormatError, match="old format"):
        SealedPage.from_string('reschat-page/1:{"conversation":"aa"}')


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_parse_or_raise_page_format_error(raw: bytes) -> None:
    with contextlib.suppress(PageFormatError):
        SealedPage.from_string("reschat2:" + base64.b64encode(raw).decode())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_timestamps_parse_only_ascii_digits_in_range(text: str) -> None:
    try:
        moment = parse_timestamp(text)
    except PageFormatError:
        return
    assert datetime(2000, 1, 1, tzinfo=timezone.utc) <= moment < datetime(2100, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", ["9999-12-31T00:00:00.000000Z", "0001-01-01T00:00:00.000000Z",
                                  "２０２６-11-25T12:00:00.000000Z", "1999-12-31T23:59:59.999999Z"])
def test_far_or_non_ascii_timestamps_are_refused(text: str) -> None:
    with pytest.raises(PageFormatError):
        parse_timestamp(text)


def test_record_times_outside_2000_to_2100_are_refused() -> None:
    assert from_micros(to_micros(T0)) == T0
    for moment in (datetime(1999, 12, 31, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)):
        with pytest.raises(PageFormatError):
            from_micros(to_micros(moment))
