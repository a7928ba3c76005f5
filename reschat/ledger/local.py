"""The embedded default ledger: one SQLite file that the profiles of one OS user can share.

SQLite in WAL mode lets many processes read while one writes, and a busy timeout makes concurrent
writers wait instead of failing, so two people in two terminals can chat with no server at all.

Values are stored as BLOBs (of ASCII text) in a table with rowids, because that is the one layout in
which SQLite knows a value's size without reading it: ``length()`` of a BLOB comes from the record
header, while ``length()`` of TEXT counts characters and so loads the whole value, and a lookup in a
WITHOUT ROWID table loads the whole record. A value over MAX_VALUE_BYTES, or of a type ResChat never
stores (someone wrote into the file directly), is therefore withheld before it is in memory and read
as OVERSIZED_VALUE. The file and its -wal and -shm companions are private to their owner (0600).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from reschat.errors import LedgerUnavailableError
from reschat.ledger.base import MAX_VALUE_BYTES, OVERSIZED_VALUE, Ledger, check_key, check_value
from reschat.storage import make_private_dirs

log = logging.getLogger(__name__)

#: ``PRAGMA user_version`` of the current layout; 0 is a new file or the first layout (TEXT values in
#: a WITHOUT ROWID table), which is converted once when a newer ResChat opens it.
SCHEMA_VERSION = 2
_SCHEMA = "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
#: SQLite limits a statement to 32766 host parameters on recent builds, 999 on old ones.
_MAX_PARAMS = 900
#: The size and type are asked first; the value itself only when it is a BLOB within the limit
#: (SQLite evaluates CASE lazily, so a withheld value is never loaded).
_SELECT = (
    "SELECT key, typeof(value), CASE WHEN typeof(value) = 'blob' THEN length(value) END,"
    " CASE WHEN typeof(value) = 'blob' AND length(value) <= ? THEN value END FROM kv WHERE key IN ({marks})"
)


class LocalLedger(Ledger):
    """A key-value table in a SQLite file, safe for many processes at once."""

    name = "local"

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        try:
            make_private_dirs(self.path.parent)
            _make_private_file(self.path)
            self._upgrade(self._connect())
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
            # SQLite makes the -wal and -shm files with the database file's mode; ones left by an older
            # version may be wider.
            for suffix in ("-wal", "-shm"):
                _tighten(Path(f"{self.path}{suffix}"))
        return conn

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Create the table, or convert the first layout once (under the write lock: one process does it)."""
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                tables = {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "kv" in tables:
                    conn.execute("ALTER TABLE kv RENAME TO kv_v1")
                conn.execute(_SCHEMA)
                if "kv" in tables:
                    # This reads every old value once; values no ResChat could have written are dropped.
                    conn.execute(
                        "INSERT INTO kv (key, value) SELECT key, CAST(value AS BLOB) FROM kv_v1"
                        " WHERE length(CAST(value AS BLOB)) BETWEEN 1 AND ?",
                        (MAX_VALUE_BYTES,),
                    )
                    conn.execute("DROP TABLE kv_v1")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def get(self, key: str) -> str | None:
        return self.get_many([key])[key]

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
                rows = conn.execute(_SELECT.format(marks=marks), (MAX_VALUE_BYTES, *chunk))
                found.update(self._values(rows))
        except sqlite3.Error as exc:
            raise LedgerUnavailableError(f"cannot read the local ledger {self.path}: {exc}") from exc
        return {key: found.get(key) or None for key in unique}

    def _values(self, rows: Iterable[tuple[object, ...]]) -> Iterable[tuple[str, str]]:
        for key, kind, size, value in rows:
            if isinstance(value, bytes):
                # Bytes someone else put in the file are handed on as the CLI ledger hands them on:
                # the page parser refuses what is not a page.
                yield str(key), value.decode("utf-8", "replace")
            else:
                what = f"{size} bytes" if kind == "blob" else f"a {kind} value, which ResChat never stores"
                log.warning("ledger key %s holds %s, over the limit or unknown in size: not read", key, what)
                yield str(key), OVERSIZED_VALUE

    def set(self, key: str, value: str) -> None:
        check_key(key)
        check_value(value)
        try:
            self._connect().execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value.encode("ascii")),
            )
        except sqlite3.Error as exc:
            raise LedgerUnavailableError(f"cannot write the local ledger {self.path}: {exc}") from exc

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _make_private_file(path: Path) -> None:
    """Create ``path`` owner-only (0600), or make an existing file of ours owner-only."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    _tighten(path)


def _tighten(path: Path) -> None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return
    if status.st_uid == os.getuid() and status.st_mode & 0o077:
        os.chmod(path, status.st_mode & 0o700)
        log.info("made %s private to its owner", path)
