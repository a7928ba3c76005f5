"""The embedded default ledger: one SQLite file that the profiles of one OS user can share.

SQLite in WAL mode lets many processes read while one writes, and a busy timeout makes concurrent
writers wait instead of failing, so two people in two terminals can chat with no server at all.

Values are stored as BLOBs (of ASCII text) in a table with rowids, because that is the one layout in
which SQLite knows a value's size without reading it: ``length()`` of a BLOB comes from the record
header, while ``length()`` of TEXT counts characters and so loads the whole value, and a lookup in a
WITHOUT ROWID table loads the whole record. A value over MAX_VALUE_BYTES, or of a type ResChat never
stores (someone wrote into the file directly), is therefore withheld before it is in memory and read
as OVERSIZED_VALUE. The file and its -wal and -shm companions are private to their owner (0600).

The file is watched: SQLite goes on writing to a file deleted under it, into nothing, so every read and
write first checks that the path still names the file that was opened, and raises LedgerMissingError
when it was deleted or replaced. Only ``reopen`` (the user said so) makes a new one or uses the new one;
a file that does not exist is made only when asked (``create``), and its folder only for the default
ledger (``make_folders``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from reschat.errors import LedgerMissingError, LedgerUnavailableError
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

    def __init__(
        self, path: Path, *, create: bool = True, make_folders: bool = True, busy_timeout_s: float = 30.0
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._make_folders = make_folders
        self._local = threading.local()
        #: Every thread's connection (closed at ``reopen``: they hold the old file's -wal and -shm).
        self._connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._generation = 0
        self._opened: tuple[int, int] = (0, 0)  # (device, inode) of the file opened
        self._open(create=create)

    def _open(self, *, create: bool) -> None:
        if not self.path.exists():
            if not create:
                raise LedgerMissingError(
                    f"the local ledger {self.path} does not exist: to make a new, empty one there, add --create"
                    " (or choose another file with --ledger or 'reschat ledger local PATH')"
                )
            if not self._make_folders and not self.path.parent.is_dir():
                raise LedgerMissingError(
                    f"the folder {self.path.parent} does not exist: ResChat makes no folder for a ledger file you"
                    " named; create the folder first, or choose another file"
                )
        try:
            if self._make_folders:
                make_private_dirs(self.path.parent)
            _make_private_file(self.path)
            self._upgrade(self._connect())
            status = os.stat(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerUnavailableError(f"cannot open the local ledger {self.path}: {exc}") from exc
        self._opened = (status.st_dev, status.st_ino)

    def _watch(self) -> None:
        """Raise LedgerMissingError when the path no longer names the file that was opened."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            raise LedgerMissingError(
                f"the local ledger {self.path} was deleted while ResChat was running: nothing is read or written"
                " until it is made again (answer y when the menus ask, or restart with --create); your"
                " conversations are then put back from the copies your profiles keep"
            ) from None
        except OSError:
            return  # SQLite says what is wrong when it reads
        if (status.st_dev, status.st_ino) != self._opened:
            raise LedgerMissingError(
                f"the local ledger {self.path} was replaced by another file while ResChat was running: nothing is"
                " read or written until you choose to use the new file (answer y when the menus ask, or restart)"
            )

    def reopen(self) -> None:
        """Use the file at ``path`` again after it was deleted (a new, empty ledger) or replaced (the file
        there now). Only when the user said so: what the profiles keep is then put back by their updates."""
        with self._connections_lock:
            connections, self._connections = [conn for _thread, conn in self._connections], []
            self._generation += 1
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if not self.path.exists():
            # The companions of the deleted file (another process may still write to them) must not be
            # taken for the new file's.
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._open(create=True)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "generation", None) != self._generation:
            conn = None  # closed by reopen
        if conn is None:
            # Not bound to its thread, so that reopen can close every thread's connection.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against a crashed process (not a power cut), and much
            # faster than FULL; a message lost to a power cut is re-sent from the outbox.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.generation = conn, self._generation
            with self._connections_lock:
                # Those of threads that ended (a pool's) are closed here, as they would have been.
                for thread, old in self._connections:
                    if not _alive(thread):
                        with contextlib.suppress(sqlite3.Error):
                            old.close()
                self._connections = [(t, c) for t, c in self._connections if _alive(t)]
                self._connections.append((weakref.ref(threading.current_thread()), conn))
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
        self._watch()
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
        self._watch()
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
            with self._connections_lock:
                self._connections = [(t, c) for t, c in self._connections if c is not conn]


def _alive(thread: weakref.ref[threading.Thread]) -> bool:
    found = thread()
    return found is not None and found.is_alive()


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
