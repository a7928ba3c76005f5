"""Page: the 20 x 6 container, its one-line format, and a parser that only ever raises PageFormatError."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reschat.errors import PageFormatError
from reschat.page import MAX_PAGE_BYTES, MSG_FIELDS, PAGE_CAPACITY, Page, Record

CONV, SENDER, RECEIVER = "a" * 64, "b" * 64, "c" * 64
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def record(seq: int, size: int = 10, when: datetime | None = None) -> Record:
    return Record(
        receiver=RECEIVER, type="text", timestamp=when or T0 + timedelta(seconds=seq), type_ext="",
        for_sender=b"s" * size, for_receiver=b"r" * size, seq=seq, prev=bytes(32), signature=b"\x01" * 384,
    )


def full_page(count: int = 3) -> Page:
    page = Page(CONV, SENDER, 7, b"w" * 384)
    for seq in range(1, count + 1):
        page.add_message(record(seq))
    return page


def test_msg_is_the_seeds_20_by_6_array() -> None:
    page = full_page()
    assert isinstance(page.msg, np.ndarray) and page.msg.shape == (PAGE_CAPACITY, len(MSG_FIELDS)) == (20, 6)
    assert page.message_count == 3
    assert page.msg[0][0] == RECEIVER and page.msg[0][1] == "text"


def test_round_trip_is_one_printable_ascii_line() -> None:
    page = full_page(PAGE_CAPACITY)
    text = page.to_string()
    assert text.isascii() and text.isprintable() and "\n" not in text and not text.startswith("-")
    assert text.startswith("reschat-page/1:")
    again = Page.from_string(text)
    assert again.all_messages() == page.all_messages()
    assert (again.conversation, again.sender, again.number, again.wrapped_key) == (CONV, SENDER, 7, b"w" * 384)
    assert again.is_full()
    assert all(r.timestamp.tzinfo is not None for r in again.all_messages())


def test_empty_page_round_trips() -> None:
    page = Page(CONV, SENDER, 1, b"w")
    assert Page.from_string(page.to_string()).all_messages() == []


def test_page_is_full_before_it_would_pass_the_size_limit() -> None:
    page = Page(CONV, SENDER, 1, b"w" * 384)
    big = 30_000
    seq = 1
    while not page.is_full(record(seq, big)):
        page.add_message(record(seq, big))
        seq += 1
    assert page.message_count < PAGE_CAPACITY
    assert len(page.to_string()) <= MAX_PAGE_BYTES
    with pytest.raises(ValueError):
        page.add_message(record(seq, big))


def test_sort_by_time_orders_by_timestamp_then_seq() -> None:
    page = Page(CONV, SENDER, 1, b"w")
    for seq, minute in [(1, 5), (2, 1), (3, 3)]:
        page.add_message(record(seq, when=T0 + timedelta(minutes=minute)))
    page.sort_by_time()
    assert [r.seq for r in page.all_messages()] == [2, 3, 1]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fail",
        "get value fail",
        "reschat-page/2:{}",
        "reschat-page/1:",
        "reschat-page/1:{",
        "reschat-page/1:[]",
        "reschat-page/1:{\"conversation\":1}",
        "reschat-page/1:" + "[" * 100_000,
    ],
)
def test_garbage_raises_page_format_error(text: str) -> None:
    with pytest.raises(PageFormatError):
        Page.from_string(text)


def test_every_field_is_validated() -> None:
    good = json.loads(full_page(1).to_string().split(":", 1)[1])
    mutations = [
        ("page", 0), ("page", True), ("page", "1"), ("conversation", "A" * 64), ("sender", "x"),
        ("wrapped_key", "!!"), ("records", {}), ("records", [[1, 2]]), ("extra", 1),
    ]
    for field, value in mutations:
        body = dict(good)
        body[field] = value
        with pytest.raises(PageFormatError):
            Page.from_string("reschat-page/1:" + json.dumps(body))
    row = good["records"][0]
    for index, value in [(0, "z" * 64), (1, "exe"), (2, "2026-11-25 12:00:00"), (2, "2026-13-45T99:00:00.000000Z"),
                         (3, "a/b"), (4, "@@"), (6, 0), (6, 1.5), (7, "0"), (8, None)]:
        bad_row = list(row)
        bad_row[index] = value
        body = dict(good, records=[bad_row])
        with pytest.raises(PageFormatError):
            Page.from_string("reschat-page/1:" + json.dumps(body))
    body = dict(good, records=[row] * (PAGE_CAPACITY + 1))
    with pytest.raises(PageFormatError):
        Page.from_string("reschat-page/1:" + json.dumps(body))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_page_format_error(text: str) -> None:
    for candidate in (text, "reschat-page/1:" + text):
        try:
            page = Page.from_string(candidate)
        except PageFormatError:
            continue
        assert page.message_count <= PAGE_CAPACITY


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=15), inner, max_size=6),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_parses_or_raises_page_format_error(value: object) -> None:
    try:
        page = Page.from_string("reschat-page/1:" + json.dumps(value))
    except PageFormatError:
        return
    assert page.message_count <= PAGE_CAPACITY


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_real_pages_parse_or_raise_page_format_error(data: st.DataObject) -> None:
    text = full_page(2).to_string()
    start = data.draw(st.integers(0, len(text) - 1))
    length = data.draw(st.integers(0, 20))
    insert = data.draw(st.text(max_size=20))
    mutated = text[:start] + insert + text[start + length :]
    try:
        page = Page.from_string(mutated)
    except PageFormatError:
        return
    assert page.message_count <= 2 + 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["text", "file"]), st.from_regex(r"[A-Za-z0-9._+-]{0,32}", fullmatch=True),
                  st.binary(max_size=200), st.datetimes(timezones=st.just(timezone.utc))),
        max_size=PAGE_CAPACITY,
    )
)
def test_round_trip_of_arbitrary_records(rows: list[tuple[str, str, bytes, datetime]]) -> None:
    page = Page(CONV, SENDER, 3, b"w" * 10)
    for seq, (mtype, ext, blob, when) in enumerate(rows, start=1):
        page.add_message(Record(RECEIVER, mtype, when, ext, blob, blob[::-1], seq, bytes(range(32)), blob))
    assert Page.from_string(page.to_string()).all_messages() == page.all_messages()
