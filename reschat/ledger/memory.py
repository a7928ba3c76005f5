"""An in-process ledger for unit tests: a dict behind a lock, with the real size and format rules."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from reschat.ledger.base import MAX_VALUE_BYTES, OVERSIZED_VALUE, Ledger, check_key, check_value


class MemoryLedger(Ledger):
    """A dict with the contract of the real ledger (missing == None, values validated)."""

    name = "memory"

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Every operation, in order, as ("get" | "set", key): lets tests count ledger round trips.
        self.operations: list[tuple[str, str]] = []

    def get(self, key: str) -> str | None:
        check_key(key)
        with self._lock:
            self.operations.append(("get", key))
            value = self._data.get(key)
        # A test may put anything into ``_data``: it reads as the other backends would read it.
        return OVERSIZED_VALUE if value is not None and len(value) > MAX_VALUE_BYTES else value

    def set(self, key: str, value: str) -> None:
        check_key(key)
        check_value(value)
        with self._lock:
            self.operations.append(("set", key))
            self._data[key] = value

    def get_many(self, keys: Sequence[str]) -> dict[str, str | None]:
        return {key: self.get(key) for key in dict.fromkeys(keys)}

    def keys(self) -> list[str]:
        """Every key written so far (the real service lets anyone list them too)."""
        with self._lock:
            return sorted(self._data)
