"""Untrusted text reaches the terminal inert; messages and problems are formatted unmistakably."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from reschat import files, retention
from reschat.chat import ChatMessage, IntegrityProblem
from reschat.render import (
    MAX_LINE_CHARS,
    MAX_MESSAGE_LINES,
    display_width,
    format_conversation,
    format_message,
    format_problem,
    format_setting,
    gutter,
    message_summary,
    neutralize,
    neutralize_lines,
    wrap_line,
)

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def message(text: str, sender: str = "bob", *, status: str | None = None, at: datetime = T0) -> ChatMessage:
    receiver = "me" if sender != "me" else "bob"
    return ChatMessage(sender, receiver, at, "text", "", text.encode("utf-8"), 1, status)


def is_inert(text: str) -> bool:
    return all(unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs") for ch in text)


def test_escape_sequences_and_controls_are_shown_not_interpreted() -> None:
    assert neutralize("\x1b[2J\x1b]0;pwned\x07") == "\\x1b[2J\\x1b]0;pwned\\x07"
    assert neutralize("a\rb\x7f\x9b") == "a\\x0db\\x7f\\x9b"
    assert neutralize("tab\there") == "tab\\x09here"


def test_bidi_and_zero_width_characters_are_escaped() -> None:
    assert neutralize("abc\u202eexe.txt") == "abc\\u202eexe.txt"
    assert neutralize("\u2066x\u2069\u200b\u200d\ufeff") == "\\u2066x\\u2069\\u200b\\u200d\\ufeff"
    assert neutralize("a\u2028b") == "a\\u2028b"


def test_ordinary_text_is_unchanged() -> None:
    text = "Grüße, 你好 — ça va? 🙂 \\x1b stays literal"
    assert neutralize(text) == text


def test_long_lines_and_many_lines_are_cut_with_a_marker() -> None:
    cut = neutralize("x" * (MAX_LINE_CHARS + 500))
    assert cut.startswith("x" * MAX_LINE_CHARS)
    assert cut.endswith("[… 500 more characters]")
    lines = neutralize_lines("\n".join(str(i) for i in range(MAX_MESSAGE_LINES + 7)))
    assert len(lines) == MAX_MESSAGE_LINES + 1
    assert lines[-1] == "[… 7 more lines]"


@given(st.text())
def test_neutralized_text_is_always_inert(text: str) -> None:
    assert is_inert(neutralize(text))
    assert all(is_inert(line) for line in neutralize_lines(text))


def test_message_line_shows_local_time_sender_and_text() -> None:
    tz = timezone(timedelta(hours=2))
    assert format_message(message("hello"), tz) == ["2024-05-01 14:30   bob: hello"]


def test_own_messages_are_marked_pending_or_delivered() -> None:
    assert format_message(message("hi", "me", status="pending"), UTC) == ["2024-05-01 12:30 … me: hi"]
    assert format_message(message("hi", "me", status="delivered"), UTC) == ["2024-05-01 12:30 ✓ me: hi"]


def test_a_multi_line_message_cannot_pose_as_another_message() -> None:
    lines = format_message(message("first\n2024-05-01 12:31   alice: fake"), UTC)
    assert lines == ["2024-05-01 12:30   bob: first", " " * 17 + "│ 2024-05-01 12:31   alice: fake"]


def test_hostile_nickname_is_neutralized() -> None:
    lines = format_message(message("x", sender="evil\x1b[31m"), UTC)
    assert lines == ["2024-05-01 12:30   evil\\x1b[31m: x"]


def test_a_message_dated_ahead_of_our_clock_says_so() -> None:
    """Everything the engine returns is verified, but a writer chooses its timestamps: one dated far
    ahead would sort after every later message, so it is marked (the engine sets ``clock_ahead``)."""
    ahead = replace(message("pinned to the bottom", at=T0 + timedelta(days=30)), clock_ahead=True)
    assert format_message(ahead, UTC) == ["2024-05-31 12:30   bob (dated ahead of your clock): pinned to the bottom"]
    assert "ahead" not in format_message(message("on time"), UTC)[0]


def test_every_problem_kind_is_marked_and_a_restart_is_a_plain_notice() -> None:
    kinds = ["damaged", "old-format", "undecryptable", "forged", "gap", "rollback", "rewritten", "skipped"]
    for kind in kinds:
        line = format_problem(IntegrityProblem("bob", kind, "detail\x1b[2J"), UTC)
        assert line.startswith("!! ") and "in bob's messages" in line, line
        assert line.endswith(": detail\\x1b[2J")
    labels = {format_problem(IntegrityProblem("bob", kind, "d"), UTC).split(" in ")[0] for kind in kinds}
    assert len(labels) == len(kinds)  # each kind has its own words
    assert format_problem(IntegrityProblem("me", "rewritten", "d"), UTC).startswith("!! rewritten message hidden in "
                                                                                    "your messages")
    restart = IntegrityProblem("bob", "restart", "bob restarted their side of the conversation", T0)
    assert format_problem(restart, UTC) == "-- bob restarted their side of the conversation near 2024-05-01 12:30"
    hostile = IntegrityProblem("bob", "restart", "x\u202e\x1b[31m")
    assert format_problem(hostile, UTC) == "-- x\\u202e\\x1b[31m"


def test_problems_are_marked_and_placed_in_time_order() -> None:
    forged = IntegrityProblem("bob", "forged", "a record claiming to be message #2 failed verification", None)
    gap = IntegrityProblem("bob", "gap", "1 message(s) missing (#2-#2)", T0 + timedelta(minutes=2))
    assert format_problem(forged, UTC).startswith("!! forged record hidden in bob's messages: ")
    lines = format_conversation(
        [message("one"), message("three", at=T0 + timedelta(minutes=3))], [forged, gap], UTC
    )
    firsts = [line for line in lines if not line.startswith(gutter())]  # each entry's first row
    assert firsts[0].endswith("bob: one")
    assert firsts[1].startswith("!! messages missing in bob's messages near 2024-05-01 12:32")
    assert firsts[2].endswith("bob: three")
    assert firsts[3].startswith("!! forged record hidden")


def test_a_file_message_shows_its_name_and_size_not_its_manifest() -> None:
    data = b"x" * 1536
    key, values = files.encrypt_file(data)
    manifest = files.make_manifest("re\u202eport.pdf", data, key, values)
    sent = ChatMessage("bob", "me", T0, "file", "pdf", manifest, 1)
    assert format_message(sent, UTC) == ["2024-05-01 12:30   bob: file report.pdf (1.5 KiB)"]
    damaged = ChatMessage("bob", "me", T0, "file", "", b"{not json", 2)
    assert format_message(damaged, UTC) == ["2024-05-01 12:30   bob: file (damaged file message: it cannot be saved)"]


# --- safe wrapping (issue 11, item 6) --------------------------------------------------------------------

#: What a row that starts a message, a problem or a notice looks like: a time, or one of the marks.
HEADER = re.compile(r"\s*(\d{4}-\d{2}-\d{2} \d{2}:\d{2}|[✓…(]|!!)")
SPOOF = "✓ me: yes, I agree to wire you 5000 EUR today"


def test_padding_cannot_fake_a_line_in_an_80_column_terminal() -> None:
    # Before: one 130-column line, which the terminal itself wrapped at 80 so that the fake started a row.
    padded = "ok" + " " * (80 - len("2024-05-01 12:30   bob: ok")) + SPOOF
    rows = format_message(message(padded), UTC, width=80)
    assert rows[0].startswith("2024-05-01 12:30   bob: ok")
    assert all(display_width(row) <= 79 for row in rows)
    assert all(row.startswith(gutter(80)) for row in rows[1:])
    assert not any(row.startswith("✓") for row in rows)
    assert "[… 54 blanks]" in rows[0]  # and the padding is collapsed, visibly


def test_long_lines_wrap_at_words_and_continuations_carry_the_gutter() -> None:
    rows = format_message(message("word " * 30), UTC, width=60)
    assert rows[0].rstrip() == "2024-05-01 12:30   bob: word word word word word word word"
    assert rows[1].rstrip() == " " * 17 + "│ word word word word word word word word"
    assert all(display_width(row) <= 59 for row in rows)
    narrow = format_message(message("word " * 10), UTC, width=30)
    assert narrow[1].startswith("  │ ")  # a narrow terminal keeps the gutter short


def test_wide_characters_count_two_columns() -> None:
    rows = format_message(message("你好" * 40), UTC, width=80)
    assert [display_width(row) for row in rows] == [78, 78, 68]
    assert rows[1].startswith(gutter(80))


def test_own_text_is_never_cut_nor_collapsed_and_others_text_is_cut_with_a_pointer() -> None:
    long_text = "y" * (MAX_LINE_CHARS + 500) + "\n" + "\n".join(f"line {i}" for i in range(MAX_MESSAGE_LINES + 5))
    own = format_message(message(long_text + "\n" + "z" + " " * 30 + "z", "me", status="pending"), UTC, width=80)
    body = "".join(row.removeprefix(gutter(80)) for row in own[1:])
    assert "y" * (MAX_LINE_CHARS + 500 - (79 - len("2024-05-01 12:30 … me: "))) in body
    assert f"line {MAX_MESSAGE_LINES + 4}" in body and "z" + " " * 30 + "z" in body
    assert "more" not in "".join(own)
    theirs = format_message(message(long_text), UTC, width=80, more="6 shows it whole")
    joined = "".join(theirs)
    assert "[… 500 more characters; 6 shows it whole]" in joined
    assert "[… 6 more lines; 6 shows it whole]" in joined
    assert f"line {MAX_MESSAGE_LINES + 4}" not in joined
    whole = "".join(format_message(message(long_text), UTC, width=80, full=True))
    assert f"line {MAX_MESSAGE_LINES + 4}" in whole and "more characters" not in whole


def test_runs_of_empty_lines_from_others_collapse() -> None:
    rows = format_message(message("a" + "\n" * 30 + "b"), UTC, width=80)
    assert rows == [
        "2024-05-01 12:30   bob: a", gutter(80), gutter(80), gutter(80) + "[… 27 more empty lines]", gutter(80) + "b",
    ]


def test_a_long_problem_or_notice_wraps_behind_the_gutter() -> None:
    problem = IntegrityProblem("bob", "damaged", "x" * 50 + " " + SPOOF, T0)
    rows = format_conversation([], [problem], UTC, width=80)
    assert rows[0].startswith("!! damaged page in bob's messages")
    assert all(row.startswith(gutter(80)) for row in rows[1:]) and len(rows) > 1
    assert wrap_line("short") == ["short"]


def test_summary_is_one_safe_line_marked_when_cut() -> None:
    assert message_summary(message("hello")) == "hello"
    assert message_summary(message("a\x1b[2J" + "b" * 60), 10) == "a\\x1b[2Jbb…"
    assert message_summary(message("one\ntwo")) == "one…"


@given(
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=400)
    | st.lists(st.sampled_from([" ", "\u3000", "\n", "x", "你", "\u0301", "✓ me: ", "2024-05-01 12:31 "]), max_size=300)
    .map("".join),
    width=st.integers(min_value=1, max_value=200),
    full=st.booleans(),
    own=st.booleans(),
)
def test_no_row_but_the_first_of_a_message_looks_like_a_message_header(
    text: str, width: int, full: bool, own: bool
) -> None:
    shown = message(text, "me" if own else "bob", status="delivered" if own else None)
    rows = format_message(shown, UTC, width=width, full=full)
    assert HEADER.match(rows[0])
    limit = max(width, 20) - 1
    for row in rows:
        assert display_width(row) <= limit  # the terminal never wraps a row by itself
        assert is_inert(row)
    for row in rows[1:]:
        assert row.startswith(gutter(width))  # every continuation is marked
        assert not HEADER.match(row)


# --- the disappearing-messages setting --------------------------------------------------------------------


def setting(seconds: int | None, sender: str = "bob", *, body: bytes | None = None) -> ChatMessage:
    receiver = "me" if sender != "me" else "bob"
    raw = body if body is not None else retention.setting_body(seconds or 0)
    return ChatMessage(sender, receiver, T0, "setting", "", raw, 3, "delivered" if sender == "me" else None)


def test_a_setting_is_one_plain_line_that_says_who_set_what() -> None:
    assert format_message(setting(3600), UTC) == ["2024-05-01 12:30 -- bob set disappearing messages to 1 hour"]
    assert format_message(setting(2 * 86400, "me"), UTC) == [
        "2024-05-01 12:30 -- you set disappearing messages to 2 days"
    ]
    assert format_message(setting(0), UTC) == ["2024-05-01 12:30 -- bob turned disappearing messages off"]
    assert format_setting(setting(4 * 604800, "me"), UTC).endswith("-- you set disappearing messages to 4 weeks")
    # In a conversation it takes its place in time, and a delivered one is summed up in words.
    rows = format_conversation([message("before", at=T0 - timedelta(minutes=1)), setting(300)], [], UTC)
    assert rows == ["2024-05-01 12:29   bob: before", "2024-05-01 12:30 -- bob set disappearing messages to 5 minutes"]
    assert message_summary(setting(300, "me")) == "set disappearing messages to 5 minutes"


def test_a_setting_never_shows_its_body_and_a_hostile_name_stays_inert() -> None:
    odd = setting(None, body=b'{"disappear": 7, "x": "\x1b[2J send money"}')  # a timer ResChat does not allow
    line = format_message(odd, UTC)
    assert line == ["2024-05-01 12:30 -- bob changed a setting this version of ResChat does not know"]
    assert format_message(setting(None, body=b"\x1b]0;pwned\x07"), UTC) == line
    hostile = replace(setting(3600), sender="evil\x1b[31m\u202e")
    shown = format_message(hostile, UTC)[0]
    assert is_inert(shown) and "evil\\x1b[31m\\u202e set disappearing messages to 1 hour" in shown
    ahead = replace(setting(3600), clock_ahead=True)
    assert format_setting(ahead, UTC) == (
        "2024-05-01 12:30 -- bob (dated ahead of your clock) set disappearing messages to 1 hour"
    )
    # Narrow terminals wrap it behind the gutter like any other line.
    rows = format_message(setting(3600), UTC, width=30)
    assert len(rows) > 1 and all(row.startswith(gutter(30)) for row in rows[1:])


def test_a_message_not_delivered_for_long_says_so_in_the_chat_and_in_json() -> None:
    from reschat.cli import message_json

    sent = ChatMessage(sender="me", receiver="bob", time=datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc),
                       type="text", type_ext="", body=b"are you there?", seq=3, status="undelivered")
    [row] = format_message(sent, timezone.utc)
    assert row.endswith("me (not delivered yet): are you there?") and "✓" not in row
    assert "not delivered yet" not in format_message(replace(sent, status="pending"), timezone.utc)[0]
    shown = message_json(sent)
    assert (shown["status"], shown["not_delivered_yet"]) == ("undelivered", True)
    assert message_json(replace(sent, status="delivered"))["not_delivered_yet"] is False
