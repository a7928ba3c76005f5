"""LocalLedger, the embedded SQLite ledger: sizes checked before a value is read, the first layout
converted, and the file private to its owner."""

from __future__ import annotations

import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest

from reschat.ledger import OVERSIZED_VALUE, LocalLedger
from reschat.ledger.base import MAX_VALUE_BYTES
from reschat.ledger.local import SCHEMA_VERSION


def plant(path: Path, key: str, sql_value: str, *params: object) -> None:
    """Write straight into the file, as someone with access to it could: ``sql_value`` is an SQL expression."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"INSERT OR REPLACE INTO kv (key, value) VALUES (?, {sql_value})", (key, *params))  # noqa: S608


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_and_values_are_stored_as_blobs(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(path)
    assert ledger.get("k") is None
    ledger.set("k", "first")
    ledger.set("k", "second")
    ledger.set("largest", "x" * MAX_VALUE_BYTES)
    assert ledger.get("k") == "second"
    assert ledger.get_many(["k", "largest", "nothing"]) == {"k": "second", "largest": "x" * MAX_VALUE_BYTES,
                                                            "nothing": None}
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT typeof(value) FROM kv WHERE key = 'k'").fetchone() == ("blob",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    ledger.close()


@pytest.mark.parametrize(
    ("sql_value", "param"),
    [("zeroblob(?)", MAX_VALUE_BYTES + 1), ("zeroblob(?)", 50_000_000), ("?", "text nobody stores"), ("?", 42)],
    ids=["one-byte-over", "50-MB", "text", "integer"],
)
def test_an_oversized_or_foreign_value_is_withheld_and_the_other_keys_still_read(
    tmp_path: Path, sql_value: str, param: object
) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(path)
    ledger.set("before", "fine")
    ledger.set("after", "also fine")
    plant(path, "big", sql_value, param)
    assert ledger.get("big") == OVERSIZED_VALUE
    assert ledger.get_many(["before", "big", "after", "missing"]) == {
        "before": "fine", "big": OVERSIZED_VALUE, "after": "also fine", "missing": None,
    }


def test_bytes_someone_else_stored_are_read_like_the_cli_ledger_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = LocalLedger(path)
    plant(path, "odd", "?", b"line one\nline \xff two")
    plant(path, "empty", "?", b"")
    assert ledger.get_many(["odd", "empty"]) == {"odd": "line one\nline \ufffd two", "empty": None}


def test_the_first_layout_is_converted_once_and_oversized_values_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        db.executemany("INSERT INTO kv VALUES (?, ?)", [
            ("page", "reschat-page/1:{}"), ("largest", "y" * MAX_VALUE_BYTES), ("huge", "z" * (MAX_VALUE_BYTES + 1)),
        ])
    ledger = LocalLedger(path)
    assert ledger.get_many(["page", "largest", "huge"]) == {
        "page": "reschat-page/1:{}", "largest": "y" * MAX_VALUE_BYTES, "huge": None,
    }
    ledger.set("new", "v")
    again = LocalLedger(path)  # a second open finds the new layout and changes nothing
    assert again.get_many(["page", "new"]) == {"page": "reschat-page/1:{}", "new": "v"}
    with closing(sqlite3.connect(path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"kv"}
        assert "WITHOUT ROWID" not in db.execute("SELECT sql FROM sqlite_master WHERE name = 'kv'").fetchone()[0]


def test_the_file_its_companions_and_new_folders_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "ledger.sqlite"
    ledger = LocalLedger(path)
    ledger.set("k", "v")
    assert ledger.get("k") == "v"
    assert mode(path) == 0o600
    companions = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    assert all(p.exists() for p in companions)  # WAL mode: both exist while a connection is open
    assert [mode(p) for p in companions] == [0o600, 0o600]
    assert mode(tmp_path / "new") == 0o700
    assert mode(tmp_path / "new" / "deeper") == 0o700


def test_an_existing_file_open_to_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    companions = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    first = LocalLedger(path)  # kept open, so that the -wal and -shm files stay
    first.set("k", "v")
    for p in (path, *companions):
        p.chmod(0o644)  # as an older version or a wide umask may have left them
    ledger = LocalLedger(path)
    assert ledger.get("k") == "v"
    assert [mode(p) for p in (path, *companions)] == [0o600, 0o600, 0o600]
    first.close()
