"""Untrusted text reaches the terminal inert; messages and problems are formatted unmistakably."""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from reschat import files
from reschat.chat import ChatMessage, IntegrityProblem
from reschat.render import (
    MAX_LINE_CHARS,
    MAX_MESSAGE_LINES,
    format_conversation,
    format_message,
    format_problem,
    neutralize,
    neutralize_lines,
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
    assert lines[0] == "2024-05-01 12:30   bob: first"
    assert lines[1].strip().startswith("| 2024-05-01 12:31")
    assert lines[1].startswith(" ")


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
    assert lines[0].endswith("bob: one")
    assert lines[1].startswith("!! messages missing in bob's messages near 2024-05-01 12:32")
    assert lines[2].endswith("bob: three")
    assert lines[3].startswith("!! forged record hidden")


def test_a_file_message_shows_its_name_and_size_not_its_manifest() -> None:
    data = b"x" * 1536
    key, values = files.encrypt_file(data)
    manifest = files.make_manifest("re\u202eport.pdf", data, key, values)
    sent = ChatMessage("bob", "me", T0, "file", "pdf", manifest, 1)
    assert format_message(sent, UTC) == ["2024-05-01 12:30   bob: file report.pdf (1.5 KiB)"]
    damaged = ChatMessage("bob", "me", T0, "file", "", b"{not json", 2)
    assert format_message(damaged, UTC) == ["2024-05-01 12:30   bob: file (damaged file message: it cannot be saved)"]
