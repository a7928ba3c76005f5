"""Disappearing messages: the timer's values and when a message expires (pure functions).

A conversation's timer (5 minutes to 4 weeks, or off) is set by a signed ``setting`` record that both
sides see as a line in the chat; the newest setting in either lane wins. The timer runs from sending
for the sender and from first display for the receiver; a message the receiver has not fetched within
twice the timer expires unread. At the first run after a message expires, its key is deleted: the
store keeps only the chain key past it (``lane.PageKeys``), and a receive key goes once every page
keyed to it has expired, so neither profile can open the message again, password or not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from reschat.errors import MessageError

MIN_SECONDS = 5 * 60
MAX_SECONDS = 28 * 24 * 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MICROS = 1_000_000


def parse_duration(text: str) -> int:
    """``5m``, ``1h``, ``2d``, ``4w`` (or ``off``/``0``) as seconds; MessageError outside 5 min - 4 weeks."""
    cleaned = text.strip().lower()
    if cleaned in ("off", "0", "none"):
        return 0
    match = re.fullmatch(r"(\d{1,7})\s*([smhdw])", cleaned)
    if not match:
        raise MessageError(f"not a duration: {text[:20]!r} (say 5m, 1h, 2d, 4w or off)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise MessageError("disappearing messages take a timer from 5 minutes to 4 weeks")
    return seconds


def describe(seconds: int) -> str:
    """``off``, ``5 minutes``, ``1 hour``, ``2 days``, ``4 weeks``."""
    if seconds <= 0:
        return "off"
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def setting_body(seconds: int) -> bytes:
    return json.dumps({"disappear": seconds}, separators=(",", ":")).encode("ascii")


def parse_setting(body: bytes) -> int | None:
    """The timer a ``setting`` record sets, or None when it is not one ResChat understands."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = data.get("disappear") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value == 0 or MIN_SECONDS <= value <= MAX_SECONDS else None


def own_expiry(sent: int, seconds: int) -> int:
    """When our own message sent at ``sent`` (microseconds) expires."""
    return sent + seconds * MICROS


def received_expiry(sent: int, shown: int, seconds: int) -> int:
    """A friend's message: the timer from first display, and at most twice the timer from sending."""
    unread_limit = sent + 2 * seconds * MICROS
    return min(shown + seconds * MICROS, unread_limit) if shown else unread_limit


def expired_prefix(expiries: Sequence[int | None], now: int) -> int:
    """How many leading records have expired (None: a record that never expires stops the count)."""
    count = 0
    for expiry in expiries:
        if expiry is None or expiry > now:
            break
        count += 1
    return count
