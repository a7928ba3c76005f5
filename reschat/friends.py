"""The friend store: nickname -> pinned public key, lane page hints and integrity high-water marks.

Backed by TinyDB, as the seed's "local json database". The storage below replaces the file
atomically on every write and each change runs under an inter-process lock, so a crash or a second
``reschat`` on the same profile can never leave the store broken or lose an update.
"""

from __future__ import annotations

import contextlib
import json
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from Crypto.PublicKey import RSA
from tinydb import Query, TinyDB
from tinydb.storages import MemoryStorage, Storage
from tinydb.table import Table

from reschat.crypto import fingerprint_bytes, public_key_to_string, string_to_public_key
from reschat.errors import DuplicateFriendError, KeyFormatError, ProfileError, UnknownFriendError
from reschat.storage import atomic_write, file_lock

MAX_NICKNAME_CHARS = 32


class AtomicJSONStorage(Storage):
    """TinyDB storage that never leaves a half-written file (temp file + fsync + rename)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ProfileError(f"the friend store {self.path} is damaged (not JSON); restore it from a backup") from exc
        if not isinstance(data, dict):
            raise ProfileError(f"the friend store {self.path} is damaged")
        return data

    def write(self, data: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8"))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Friend:
    """One friend as the store knows them."""

    nickname: str
    public_key: str  # PEM, pinned when the friend was added
    fingerprint: str  # 64 lowercase hex digits: SHA-256 of the key's DER
    name: str | None = None  # the name their contact card carried
    lane_page: int = 1  # hint: the newest page of their lane seen so far
    hw_seq: int = 0  # high-water mark: the newest sequence number verified in their lane
    hw_hash: str = ""  # ...and that record's hash, to detect rollbacks and forks
    read_seq: int = 0  # the newest of their messages the user has seen
    own_confirmed_seq: int = 0  # the newest of our own messages a ledger read has returned
    added: str = ""
    verified: bool = False  # the user compared the safety number with this friend (see safety.py)

    @property
    def key(self) -> RSA.RsaKey:
        return string_to_public_key(self.public_key)

    @property
    def unread(self) -> int:
        return max(0, self.hw_seq - self.read_seq)


def validate_nickname(nickname: str) -> str:
    """1-32 printable characters; not all digits, since menus pick friends by number."""
    cleaned = unicodedata.normalize("NFC", nickname.strip())
    if not cleaned:
        raise KeyFormatError("the nickname must not be empty")
    if len(cleaned) > MAX_NICKNAME_CHARS:
        raise KeyFormatError(f"the nickname is longer than {MAX_NICKNAME_CHARS} characters")
    if any(not ch.isprintable() or unicodedata.category(ch) in ("Cf", "Zl", "Zp") for ch in cleaned):
        raise KeyFormatError("the nickname must not contain control or formatting characters")
    if cleaned.isdigit():
        raise KeyFormatError("the nickname must not be only digits (menus pick friends by number)")
    return cleaned


class FriendStore:
    """Friends in a TinyDB file (or in memory when ``path`` is None, for tests)."""

    def __init__(self, path: Path | None, *, own_fingerprint: str | None = None) -> None:
        self.path = path
        self.own_fingerprint = own_fingerprint
        self._thread_lock = threading.RLock()
        if path is None:
            self._db = TinyDB(storage=MemoryStorage)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = TinyDB(str(path), storage=AtomicJSONStorage)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self.path is None:
                yield
            else:
                with file_lock(self.path.with_name(self.path.name + ".lock")):
                    yield

    @property
    def _table(self) -> Table:
        # A fresh Table per use, without query cache: another process may have changed the file
        # since our last call, and a long-lived Table also caches the next document id.
        return Table(self._db.storage, "friends", cache_size=0)

    def _all(self) -> list[Friend]:
        fields = Friend.__dataclass_fields__
        return [Friend(**{k: v for k, v in doc.items() if k in fields}) for doc in self._table.all()]

    @staticmethod
    def _same(a: str, b: str) -> bool:
        return a.casefold() == b.casefold()

    def add_friend(self, nickname: str, public_key: str | RSA.RsaKey, name: str | None = None) -> Friend:
        """Pin ``public_key`` under ``nickname``; reject duplicates, our own key and malformed keys."""
        nickname = validate_nickname(nickname)
        key = string_to_public_key(public_key) if isinstance(public_key, str) else public_key
        fpr = fingerprint_bytes(key).hex()
        if self.own_fingerprint is not None and fpr == self.own_fingerprint:
            raise DuplicateFriendError("that is your own key: add your friend's key instead")
        with self._locked():
            for friend in self._all():
                if self._same(friend.nickname, nickname):
                    raise DuplicateFriendError(f"the nickname {nickname!r} is already in use")
                if friend.fingerprint == fpr:
                    raise DuplicateFriendError(f"that key is already your friend {friend.nickname!r}")
            friend = Friend(
                nickname=nickname,
                public_key=public_key_to_string(key),
                fingerprint=fpr,
                name=name,
                added=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            self._table.insert(asdict(friend))
        return friend

    def get_friend(self, nickname: str) -> Friend:
        """The friend called ``nickname`` (case-insensitive); UnknownFriendError otherwise."""
        wanted = unicodedata.normalize("NFC", nickname.strip())
        for friend in self._all():
            if self._same(friend.nickname, wanted):
                return friend
        raise UnknownFriendError(f"no friend is called {nickname!r}")

    def get_all_friend(self) -> list[str]:
        """Every nickname, in the order the friends were added."""
        return [friend.nickname for friend in self._all()]

    def all_friends(self) -> list[Friend]:
        return self._all()

    def update_page_num(self, nickname: str, page: int) -> Friend:
        """Raise the hint for the newest page of the friend's lane (never lowers it)."""
        return self.update(nickname, lane_page=lambda old: max(old, page))

    def update(self, nickname: str, **changes: Any) -> Friend:
        """Change fields of one friend under the lock; a callable value maps the old value to the new."""
        with self._locked():
            current = self.get_friend(nickname)
            values = {
                field: (change(getattr(current, field)) if callable(change) else change)
                for field, change in changes.items()
            }
            updated = replace(current, **values)
            self._table.update(asdict(updated), Query().fingerprint == current.fingerprint)
        return updated

    def replace_key(self, nickname: str, public_key: str | RSA.RsaKey, name: str | None = None) -> Friend:
        """Pin a new key for ``nickname``, which the user chose after a warning: never call it silently.

        The old key's conversation state (page hint, high-water marks, read position) belongs to a
        conversation that the new key does not share, so it starts afresh; the friend is no longer
        verified. ``name`` (the new card's) replaces the old one when given.
        """
        key = string_to_public_key(public_key) if isinstance(public_key, str) else public_key
        fpr = fingerprint_bytes(key).hex()
        if self.own_fingerprint is not None and fpr == self.own_fingerprint:
            raise DuplicateFriendError("that is your own key: add your friend's key instead")
        with self._locked():
            current = self.get_friend(nickname)
            for friend in self._all():
                if friend.fingerprint == fpr and friend.nickname != current.nickname:
                    raise DuplicateFriendError(f"that key is already your friend {friend.nickname!r}")
            fresh = Friend(
                nickname=current.nickname,
                public_key=public_key_to_string(key),
                fingerprint=fpr,
                name=current.name if name is None else name,
                added=current.added,
            )
            self._table.update(asdict(fresh), Query().fingerprint == current.fingerprint)
        return fresh

    def close(self) -> None:
        self._db.close()

