"""The embedded default ledger: one SQLite file that every profile on the machine can share.

SQLite in WAL mode lets many processes read while one writes, and a busy timeout makes concurrent
writers wait instead of failing, so two people in two terminals can chat with no server at all.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from reschat.errors import LedgerUnavailableError
from reschat.ledger.base import Ledger, check_key, check_value

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"
#: SQLite limits a statement to 32766 host parameters on recent builds, 999 on old ones.
_MAX_PARAMS = 900


class LocalLedger(Ledger):
    """A key-value table in a SQLite file, safe for many processes at once."""

    name = "local"

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerUnavailableError(f"cannot open the local ledger {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against a crashed process (not a power cut), and much
            # faster than FULL; a message lost to a power cut is re-sent from the outbox.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> str | None:
        check_key(key)
        try:
            row = self._connect().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise LedgerUnavailableError(f"cannot read the local ledger {self.path}: {exc}") from exc
        return None if row is None else str(row[0])

    def get_many(self, keys: Sequence[str]) -> dict[str, str | None]:
        unique = list(dict.fromkeys(keys))
        for key in unique:
            check_key(key)
        found: dict[str, str] = {}
        try:
            conn = self._connect()
            for start in range(0, len(unique), _MAX_PARAMS):
                chunk = unique[start : start + _MAX_PARAMS]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", chunk)  # noqa: S608
                found.update((str(k), str(v)) for k, v in rows)
        except sqlite3.Error as exc:
            raise LedgerUnavailableError(f"cannot read the local ledger {self.path}: {exc}") from exc
        return {key: found.get(key) for key in unique}

    def set(self, key: str, value: str) -> None:
        check_key(key)
        check_value(value)
        try:
            self._connect().execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        except sqlite3.Error as exc:
            raise LedgerUnavailableError(f"cannot write the local ledger {self.path}: {exc}") from exc

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
