"""Turning messages, problems and names into safe terminal text (pure functions, no I/O).

Everything a friend or the ledger supplied is untrusted: message text, nicknames, names on contact
cards. A terminal interprets control characters and escape sequences (moving the cursor, rewriting
earlier lines, changing the window title, and on some terminals worse), and bidirectional overrides
or zero-width characters can make one text look like another. So every such character is shown as
a visible escape (``\\x1b``, ``\\u202e``) and never reaches the terminal as itself.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo

from reschat import retention
from reschat.chat import GROUP_NOTICE, ME, ChatMessage, IntegrityProblem
from reschat.files import FILE_TYPE, message_label

#: Longest line of untrusted text shown before it is cut (a 16 KiB message still fits ~4 screens).
MAX_LINE_CHARS = 1000
#: Most lines of one message shown before the rest is cut.
MAX_MESSAGE_LINES = 40
#: Runs of this many blanks or more in others' text are collapsed (padding is how lines are faked).
BLANK_RUN = 8
#: Consecutive empty lines of others' text shown before the rest of the run is collapsed.
MAX_EMPTY_LINES = 2
#: The terminal width assumed when none is known.
DEFAULT_WIDTH = 80
#: Narrower terminals are treated as this wide (a row must hold the gutter and some text).
MIN_WIDTH = 20
#: Continuation rows start with blanks and this bar; no message, problem or notice line does.
GUTTER_MARK = "│"
#: Blanks before the bar on terminals at least ``WIDE_ENOUGH`` wide: it then sits under the status mark.
GUTTER_INDENT = 17
WIDE_ENOUGH = 60

PENDING_MARK = "…"
DELIVERED_MARK = "✓"
PROBLEM_MARK = "!!"
NOTICE_MARK = "--"
#: The message type of a signed setting (the disappearing-messages timer), shown as a plain line.
SETTING_TYPE = "setting"
#: Shown after the sender of a verified message dated more than ten minutes ahead of our clock: its
#: writer's clock is wrong (or lies), so it sorts after messages written later.
CLOCK_AHEAD_NOTE = " (dated ahead of your clock)"
#: After an own message's sender while no ledger read has returned it for long (``chat.resend_after`` x 6).
UNDELIVERED_NOTE = " (not delivered yet)"

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


# --- display width and safe wrapping ---------------------------------------------------------------
#
# A terminal wraps a row wider than itself on its own, and the wrapped part starts at column 0 looking
# like any other line: a friend who pads a message with printable blanks can make it end in a row such
# as "✓ me: yes, I agree to wire you 5000 EUR today". So every row is wrapped here, to the terminal
# width, and every row after the first of a message starts with the continuation gutter, which no
# message line, problem line or notice starts with.


def char_width(ch: str) -> int:
    """Terminal columns ``ch`` may take, erring wide: a row measured too wide wraps early, which is
    harmless, while one measured too narrow would be wrapped by the terminal, which is the danger.
    East Asian wide, full-width and ambiguous characters, unassigned and private-use code points
    count 2 (terminals and fonts disagree about them); everything else counts 1, combining marks too."""
    if unicodedata.east_asian_width(ch) in ("W", "F", "A") or unicodedata.category(ch) in ("Cn", "Co"):
        return 2
    return 1


def display_width(text: str) -> int:
    """Columns ``text`` takes at most (see ``char_width``)."""
    return sum(char_width(ch) for ch in text)


def gutter(width: int = DEFAULT_WIDTH) -> str:
    """The start of every continuation row: blanks, then a bar (under the status mark when there is room)."""
    return " " * (GUTTER_INDENT if width >= WIDE_ENOUGH else 2) + GUTTER_MARK + " "


_TOKENS = re.compile(r"\S+|\s+")


def _fill(text: str, rows: list[str], start: str, limit: int, cont: str) -> None:
    """Append ``text`` to ``rows`` as rows of at most ``limit`` columns: the first row begins with
    ``start``, later ones with ``cont``. Words move to the next row when they fit there, longer words
    are split; a run of blanks that does not fit ends the row and loses one blank (the break), the
    rest of it starts the next row. Nothing else is dropped."""
    row, free = start, limit - display_width(start)
    fresh = True
    for token in _TOKENS.findall(text):
        size = display_width(token)
        if size <= free:
            row, free, fresh = row + token, free - size, False
            continue
        if not token.isspace() and not fresh and size <= limit - display_width(cont):
            rows.append(row)
            row, free = cont + token, limit - display_width(cont) - size
            continue
        broken = False
        for ch in token:
            size = char_width(ch)
            if size > free:
                rows.append(row)
                row, free = cont, limit - display_width(cont)
                if ch.isspace() and not broken:
                    broken = True  # the row breaks at this blank, as a wrapped paragraph does
                    continue
            row, free, fresh = row + ch, free - size, False
    rows.append(row)


def wrap_rows(lines: Sequence[str], width: int = DEFAULT_WIDTH) -> list[str]:
    """Safe lines as terminal rows: each row at most ``width - 1`` columns (writing into the last column
    makes some terminals wrap), the first row of ``lines`` as is, every other row behind the gutter.

    ``lines`` must already be neutralized; ``lines[0]`` starts with the header that identifies the entry.
    """
    width = max(width, MIN_WIDTH)
    limit, cont = width - 1, gutter(width)
    rows: list[str] = []
    for index, line in enumerate(lines or [""]):
        _fill(line, rows, "" if index == 0 else cont, limit, cont)
    return rows


def wrap_line(line: str, width: int = DEFAULT_WIDTH) -> list[str]:
    """One safe line (a notice, an error) as terminal rows, continuations behind the gutter."""
    return wrap_rows([line], width)


# --- message text ------------------------------------------------------------------------------------

_BLANK_RUN = re.compile(rf"[^\S\n]{{{BLANK_RUN},}}")


def _collapse_blanks(line: str) -> str:
    """Long runs of blanks (spaces and other printable spaces) shrunk to a marked few."""
    return _BLANK_RUN.sub(lambda run: f"{run.group()[:3]}[… {len(run.group())} blanks] ", line)


def _collapse_empty(lines: Sequence[str]) -> list[str]:
    """Runs of more than ``MAX_EMPTY_LINES`` empty (or blank) lines shrunk, with a marker line."""
    out: list[str] = []
    run = 0
    for line in [*lines, None]:
        if line is not None and not line.strip():
            run += 1
            if run <= MAX_EMPTY_LINES:
                out.append(line)
            continue
        if run > MAX_EMPTY_LINES:
            out.append(f"[… {run - MAX_EMPTY_LINES} more empty lines]")
        run = 0
        if line is not None:
            out.append(line)
    return out


def _others_lines(text: str, *, full: bool, more: str) -> list[str]:
    """A friend's (or the ledger's) text as safe lines: blanks collapsed; unless ``full``, long lines and
    many lines are cut with a marker that says how much was left out and ``more``, how to read it all."""
    hint = f"; {more}" if more else ""
    raw = _collapse_empty(text.replace("\r\n", "\n").split("\n"))
    lines: list[str] = []
    for count, line in enumerate(raw):
        if not full and count == MAX_MESSAGE_LINES:
            lines.append(f"[… {len(raw) - count} more lines{hint}]")
            break
        shown = _collapse_blanks(neutralize(line, max_chars=sys.maxsize))
        if not full and len(shown) > MAX_LINE_CHARS:
            shown = shown[:MAX_LINE_CHARS] + f" [… {len(shown) - MAX_LINE_CHARS} more characters{hint}]"
        lines.append(shown)
    return lines


def _own_lines(text: str) -> list[str]:
    """The user's own text as safe lines: never cut, never collapsed (only control characters escaped)."""
    return [neutralize(line, max_chars=sys.maxsize) for line in text.replace("\r\n", "\n").split("\n")]


def _body_text(message: ChatMessage) -> str:
    if message.type == "text":
        return message.text
    if message.type == FILE_TYPE:
        return message_label(message)
    if message.type == SETTING_TYPE:
        return setting_text(message)
    ext = f": {message.type_ext}" if message.type_ext else ""
    return f"[{message.type}{ext}, {len(message.body)} bytes]"


def message_summary(message: ChatMessage, max_chars: int = 40) -> str:
    """A short, safe, one-line reference to a message (its first line, or a file's label), marked when cut."""
    first = _body_text(message).replace("\r\n", "\n").split("\n")
    text = _collapse_blanks(neutralize(first[0], max_chars=sys.maxsize))
    if len(text) > max_chars or len(first) > 1:
        text = text[:max_chars] + "…"
    return text


def format_message(
    message: ChatMessage, tz: tzinfo | None = None, *, width: int = DEFAULT_WIDTH, full: bool = False,
    more: str = "",
) -> list[str]:
    """One message as terminal rows: local time, a status mark, the sender and the text.

    Every message the engine returns is verified (it hides what is not). Own messages carry ``…``
    while pending (and "not delivered yet" when that lasts) and ``✓`` once delivered, and their text
    is never cut; a message dated well ahead of our clock says so. Others' text has long runs of
    blanks collapsed and, unless ``full``, is cut after ``MAX_LINE_CHARS`` per line and
    ``MAX_MESSAGE_LINES`` lines with a marker ending in ``more``.
    Rows fit ``width`` (see ``wrap_rows``): continuation rows, of long lines as of further lines,
    start with the gutter, so that no text can pose as another message. A ``setting`` message (the
    disappearing-messages timer) is one plain line that says who set what (see ``format_setting``).
    """
    if message.type == SETTING_TYPE:
        return wrap_line(format_setting(message, tz), width)
    if message.outgoing:
        mark = DELIVERED_MARK if message.status == "delivered" else PENDING_MARK
        sender = ME + (UNDELIVERED_NOTE if message.status == "undelivered" else "")
        lines = _own_lines(_body_text(message))
    else:
        mark = " "
        sender = neutralize(message.sender, max_chars=64)
        lines = _others_lines(_body_text(message), full=full, more=more)
    if message.clock_ahead:
        sender += CLOCK_AHEAD_NOTE
    head = f"{local_time(message.time, tz)} {mark} {sender}: "
    return wrap_rows([head + lines[0], *lines[1:]], width)


def format_setting(message: ChatMessage, tz: tzinfo | None = None) -> str:
    """A ``setting`` message as one plain line: ``<time> -- alice set disappearing messages to 1 hour``,
    ``... -- you turned disappearing messages off``. Its body is the friend's, so only the parsed timer
    is shown (``retention.parse_setting``), never the body itself."""
    who = "you" if message.outgoing else neutralize(message.sender, max_chars=64)
    if message.clock_ahead:
        who += CLOCK_AHEAD_NOTE
    return f"{local_time(message.time, tz)} {NOTICE_MARK} {who} {setting_text(message)}"


def setting_text(message: ChatMessage) -> str:
    """What a ``setting`` message did, in words: ``set disappearing messages to 1 hour``."""
    if message.type_ext == GROUP_NOTICE:
        # A group's membership line: made by the group engine from a verified change, names neutralised.
        return neutralize(message.text)
    seconds = retention.parse_setting(message.body)
    if seconds is None:
        return "changed a setting this version of ResChat does not know"
    if seconds == 0:
        return "turned disappearing messages off"
    return f"set disappearing messages to {retention.describe(seconds)}"


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
    messages: Sequence[ChatMessage], problems: Iterable[IntegrityProblem], tz: tzinfo | None = None, *,
    width: int = DEFAULT_WIDTH, full: bool = False, more: str = "",
) -> list[str]:
    """Messages in time order with each problem at its place (problems without a time at the end),
    as terminal rows of at most ``width - 1`` columns (see ``format_message``)."""
    entries: list[tuple[datetime, int, list[str]]] = [
        (m.time, 0, format_message(m, tz, width=width, full=full, more=more)) for m in messages
    ]
    undated: list[str] = []
    for problem in problems:
        rows = wrap_line(format_problem(problem, tz), width)
        if problem.time is None:
            undated.extend(rows)
        else:
            entries.append((problem.time, 1, rows))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return [line for _time, _order, lines in entries for line in lines] + undated
