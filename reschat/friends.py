"""The friend store: nickname -> pinned card (RSA key, static keys), and the counts of the last update.

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

from reschat.crypto import Contact, fingerprint_bytes, public_key_to_string, string_to_public_key
from reschat.errors import DuplicateFriendError, KeyFormatError, ProfileError, UnknownFriendError
from reschat.kem import KemError, ReceivePublic
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
    statics: str = ""  # hex of their card's signed static hybrid public key (kem.ReceivePublic)
    location: str = ""  # the ledger location their card named, if any
    issued: int = 0  # when their card was issued
    unread: int = 0  # unread messages as of the last verified update
    seen: str = "0:0"  # "epoch:seq" of the newest of their messages verified so far
    read: str = "0:0"  # "epoch:seq" of the newest of their messages the user has seen
    updated: str = ""  # when ``unread`` was last computed from verified data
    added: str = ""
    verified: bool = False  # the user compared the safety number with this friend (see safety.py)
    card: str = ""  # the signed card line they gave (a group's roster passes it on to other members)

    @property
    def key(self) -> RSA.RsaKey:
        return string_to_public_key(self.public_key)

    @property
    def receive_public(self) -> ReceivePublic:
        """Their card's static keys; KeyFormatError for a friend added from an old card."""
        try:
            return ReceivePublic.from_bytes(bytes.fromhex(self.statics))
        except (ValueError, KemError) as exc:
            raise KeyFormatError(f"{self.nickname}'s card has no static keys: ask for a new card") from exc


def _pinned(nickname: str, contact: Contact, name: str | None, added: str) -> Friend:
    """A friend pinned to ``contact``'s card, with fresh counts (the name on the card unless given)."""
    return Friend(
        nickname=nickname,
        public_key=public_key_to_string(contact.public_key),
        fingerprint=fingerprint_bytes(contact.public_key).hex(),
        name=name if name is not None else contact.name,
        statics=contact.statics.to_bytes().hex(),
        location=contact.location,
        issued=contact.issued,
        added=added,
        card=contact.card,
    )


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

    def add_friend(self, nickname: str, contact: Contact, name: str | None = None) -> Friend:
        """Pin ``contact``'s card under ``nickname``; reject duplicates, our own key and malformed keys."""
        nickname = validate_nickname(nickname)
        key = contact.public_key
        fpr = fingerprint_bytes(key).hex()
        if self.own_fingerprint is not None and fpr == self.own_fingerprint:
            raise DuplicateFriendError("that is your own key: add your friend's key instead")
        with self._locked():
            for friend in self._all():
                if self._same(friend.nickname, nickname):
                    raise DuplicateFriendError(f"the nickname {nickname!r} is already in use")
                if friend.fingerprint == fpr:
                    raise DuplicateFriendError(f"that key is already your friend {friend.nickname!r}")
            friend = _pinned(nickname, contact, name, datetime.now(timezone.utc).isoformat(timespec="seconds"))
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

    def replace_key(self, nickname: str, contact: Contact, name: str | None = None) -> Friend:
        """Pin a new card for ``nickname``, which the user chose after a warning: never call it silently.

        Protocol 2 derives the conversation (its addresses and keys) from both cards, so a new key is a
        new conversation: the old one's local state here (unread count, what was seen and read, when it
        was counted) starts afresh, and the old conversation's key store is simply no longer used. The
        friend is no longer verified. ``name`` replaces the card's name when given.
        """
        key = contact.public_key
        fpr = fingerprint_bytes(key).hex()
        if self.own_fingerprint is not None and fpr == self.own_fingerprint:
            raise DuplicateFriendError("that is your own key: add your friend's key instead")
        with self._locked():
            current = self.get_friend(nickname)
            for friend in self._all():
                if friend.fingerprint == fpr and friend.nickname != current.nickname:
                    raise DuplicateFriendError(f"that key is already your friend {friend.nickname!r}")
            fresh = _pinned(current.nickname, contact, name, current.added)
            self._table.update(asdict(fresh), Query().fingerprint == current.fingerprint)
        return fresh

    def close(self) -> None:
        self._db.close()

