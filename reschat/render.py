"""Turning messages, problems and names into safe terminal text (pure functions, no I/O).

Everything a friend or the ledger supplied is untrusted: message text, nicknames, names on contact
cards. A terminal interprets control characters and escape sequences (moving the cursor, rewriting
earlier lines, changing the window title, and on some terminals worse), and bidirectional overrides
or zero-width characters can make one text look like another. So every such character is shown as
a visible escape (``\\x1b``, ``\\u202e``) and never reaches the terminal as itself.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo

from reschat.chat import ME, ChatMessage, IntegrityProblem
from reschat.files import FILE_TYPE, message_label

#: Longest line of untrusted text shown before it is cut (a 16 KiB message still fits ~4 screens).
MAX_LINE_CHARS = 1000
#: Most lines of one message shown before the rest is cut.
MAX_MESSAGE_LINES = 40

PENDING_MARK = "…"
DELIVERED_MARK = "✓"
PROBLEM_MARK = "!!"
NOTICE_MARK = "--"
#: Shown after the sender of a verified message dated more than ten minutes ahead of our clock: its
#: writer's clock is wrong (or lies), so it sorts after messages written later.
CLOCK_AHEAD_NOTE = " (dated ahead of your clock)"

# Categories shown as escapes: controls (C0, C1, DEL), format characters (bidi overrides and
# isolates, zero-width characters, soft hyphen, BOM...), line/paragraph separators and surrogates.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _is_unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _ESCAPED_CATEGORIES


def neutralize(text: str, *, max_chars: int = MAX_LINE_CHARS) -> str:
    """``text`` as one inert line: every control or formatting character escaped, long text cut."""
    out: list[str] = []
    length = 0
    for index, ch in enumerate(text):
        piece = _escape_char(ch) if _is_unsafe(ch) else ch
        if length + len(piece) > max_chars:
            out.append(f" [… {len(text) - index} more characters]")
            break
        out.append(piece)
        length += len(piece)
    return "".join(out)


def neutralize_lines(text: str, *, max_lines: int = MAX_MESSAGE_LINES) -> list[str]:
    """Multi-line untrusted text as inert lines (newlines split it; nothing else does)."""
    lines = text.replace("\r\n", "\n").split("\n")
    shown = [neutralize(line) for line in lines[:max_lines]]
    if len(lines) > max_lines:
        shown.append(f"[… {len(lines) - max_lines} more lines]")
    return shown


def local_time(moment: datetime, tz: tzinfo | None = None) -> str:
    """A message time in the viewer's time zone (the system's when ``tz`` is None)."""
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _body_text(message: ChatMessage) -> str:
    if message.type == "text":
        return message.text
    if message.type == FILE_TYPE:
        return message_label(message)
    ext = f": {message.type_ext}" if message.type_ext else ""
    return f"[{message.type}{ext}, {len(message.body)} bytes]"


def format_message(message: ChatMessage, tz: tzinfo | None = None) -> list[str]:
    """One message as display lines: local time, a status mark, the sender and the text.

    Every message the engine returns is verified (it hides what is not). Own messages carry ``…``
    while pending and ``✓`` once delivered; a message dated well ahead of our clock says so.
    Continuation lines of a multi-line message are indented behind a bar so that text can never pose
    as another message.
    """
    if message.outgoing:
        mark = DELIVERED_MARK if message.status == "delivered" else PENDING_MARK
        sender = ME
    else:
        mark = " "
        sender = neutralize(message.sender, max_chars=64)
    if message.clock_ahead:
        sender += CLOCK_AHEAD_NOTE
    head = f"{local_time(message.time, tz)} {mark} {sender}: "
    lines = neutralize_lines(_body_text(message))
    pad = " " * (len(head) - 2) + "| "
    return [head + lines[0]] + [pad + line for line in lines[1:]]


#: One label per kind of ``lane.Problem``.
_PROBLEM_LABELS = {
    "forged": "forged record hidden",
    "rewritten": "rewritten message hidden",
    "rollback": "ledger rolled back",
    "gap": "messages missing",
    "damaged": "damaged page",
    "old-format": "old-format page ignored",
    "undecryptable": "undecryptable page",
    "skipped": "older pages not read yet",
}
#: Kinds that are news, not an alarm: an honest restart of a lane is one plain line.
_NOTICE_KINDS = frozenset({"restart"})


def format_problem(problem: IntegrityProblem, tz: tzinfo | None = None) -> str:
    """A problem as one clearly marked line, never mistakable for a message.

    Integrity problems start with ``!!``; a restarted lane (``restart``) is a notice starting with
    ``--`` that says who restarted, since an honest restart is nothing to be alarmed about.
    """
    when = f" near {local_time(problem.time, tz)}" if problem.time is not None else ""
    if problem.kind in _NOTICE_KINDS:
        return f"{NOTICE_MARK} {neutralize(problem.detail)}{when}"
    label = _PROBLEM_LABELS.get(problem.kind, neutralize(problem.kind, max_chars=32))
    lane = "your messages" if problem.lane == ME else f"{neutralize(problem.lane, max_chars=64)}'s messages"
    return f"{PROBLEM_MARK} {label} in {lane}{when}: {neutralize(problem.detail)}"


def format_conversation(
    messages: Sequence[ChatMessage], problems: Iterable[IntegrityProblem], tz: tzinfo | None = None
) -> list[str]:
    """Messages in time order with each problem at its place (problems without a time at the end)."""
    entries: list[tuple[datetime, int, list[str]]] = [(m.time, 0, format_message(m, tz)) for m in messages]
    undated: list[str] = []
    for problem in problems:
        if problem.time is None:
            undated.append(format_problem(problem, tz))
        else:
            entries.append((problem.time, 1, [format_problem(problem, tz)]))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return [line for _time, _order, lines in entries for line in lines] + undated
