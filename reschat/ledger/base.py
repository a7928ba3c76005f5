"""The one small interface every ledger backend implements: get and set of short ASCII keys.

It mirrors ResilientDB's KV service (see the project's docs on its contract): a missing key and an
empty value are the same thing, ``set`` is a blind overwrite with no acknowledgement, and there is no
delete. Keys and values are one line of printable ASCII so that they pass unchanged through a
command line, an HTTP body or a SQLite column.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from reschat.errors import LedgerError, ValueTooLargeError

#: Linux refuses a single argv string longer than 128 KiB including its NUL (MAX_ARG_STRLEN), so this
#: is the longest key or value ``kv_service_tools`` can be started with. Every backend enforces it so
#: that what works on the embedded ledger also works on ResilientDB.
MAX_VALUE_BYTES = 131_071
MAX_KEY_BYTES = 1024

#: What ``get`` and ``get_many`` return, on every backend, for a key whose value they did not read
#: into memory because it is over MAX_VALUE_BYTES (the local ledger also withholds a value of a type
#: it never stores, whose size it cannot learn without reading it). It is short and is not a page, so
#: a reader reports that key as damaged and goes on reading the others; the backend logs a warning.
#: Anyone can also write this text as a value: it then reads exactly the same way, which is harmless.
OVERSIZED_VALUE = "reschat-oversized-value"

#: ResilientDB's contract: a ``get`` right after a ``set`` can return the old value, and a re-read a
#: second later was right. Code that must not miss a recent write reads again after this long.
RESILIENTDB_STALE_WINDOW_S = 1.0

_PRINTABLE_ASCII_LINE = re.compile(r"[\x20-\x7e]+")


def check_key(key: str) -> None:
    """Raise LedgerError unless ``key`` is a short line of printable ASCII with no spaces."""
    if not key or not _PRINTABLE_ASCII_LINE.fullmatch(key) or " " in key or key.startswith("-"):
        raise LedgerError(f"invalid ledger key {key[:40]!r}: keys are printable ASCII without spaces")
    if len(key) > MAX_KEY_BYTES:
        raise ValueTooLargeError(f"ledger key of {len(key)} bytes is over the {MAX_KEY_BYTES}-byte limit")


def check_value(value: str) -> None:
    """Raise unless ``value`` is what every backend can store: non-empty printable ASCII, one line."""
    if len(value) > MAX_VALUE_BYTES:
        raise ValueTooLargeError(
            f"value of {len(value)} bytes is over the ledger's {MAX_VALUE_BYTES}-byte limit"
        )
    if not value or not _PRINTABLE_ASCII_LINE.fullmatch(value) or value.startswith("-"):
        raise LedgerError("invalid ledger value: values are non-empty printable ASCII not starting with '-'")


class Ledger(ABC):
    """A key-value ledger. ``get`` returns None for a missing (or empty) key.

    Whatever a key holds, reading it never takes more than about MAX_VALUE_BYTES of memory: a larger
    value is returned as OVERSIZED_VALUE, and one such key never makes ``get_many`` fail.
    """

    #: Human-readable name for messages and ``reschat doctor``.
    name: str = "ledger"

    #: How long after a write a read of the same key may still return the value from before it. Zero
    #: for a ledger whose reads always see the latest write (SQLite, memory); see RESILIENTDB_STALE_WINDOW_S.
    stale_read_window_s: float = 0.0

    @abstractmethod
    def get(self, key: str) -> str | None:
        """Return the value stored under ``key``, or None when there is none."""

    @abstractmethod
    def set(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (a blind overwrite; success means sent, not committed)."""

    def get_many(self, keys: Sequence[str]) -> dict[str, str | None]:
        """Read several keys; slow backends issue the reads concurrently so they cost about one."""
        unique = list(dict.fromkeys(keys))
        if len(unique) <= 1:
            return {key: self.get(key) for key in unique}
        with ThreadPoolExecutor(max_workers=min(len(unique), self.max_concurrency)) as pool:
            values = list(pool.map(self.get, unique))
        return dict(zip(unique, values, strict=True))

    #: How many reads ``get_many`` may run at once.
    max_concurrency: int = 16

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing open
        """Release whatever the backend holds open."""
