"""The local key and history store: what a profile keeps per conversation, sealed, never in plaintext.

Each conversation has one file ``lanes/<id>.state``: JSON sealed with AES-256-GCM under the store key
from the vault (``crypto``), which the password protects through scrypt. It holds:

- ``mine``: our own lane, the outbox (``outbox.OwnLane``): the current page, pages not yet confirmed,
  and the page secrets of our own pages (to read our own history back from the ledger);
- ``theirs``: the friend's lane as verified (``FriendLane``): its epoch, the newest verified page,
  the checkpoint (newest verified record), the digests of every record read (to notice a rewrite),
  the page secrets of its pages (history), and the friend's newest announced receive key;
- ``receive_keys``: our own hybrid receive keys that a future page of the friend may still use.

Changes go through ``ConversationStore.update`` under an inter-process lock, so two ``reschat``
processes of one profile never lose each other's changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from Crypto.Random import get_random_bytes

from reschat.errors import ProfileError
from reschat.page import seal, unseal
from reschat.storage import atomic_write, file_lock

_AAD = b"reschat-store/1|"


def _subkey(store_key: bytes, path_name: str) -> bytes:
    # One key per file, so that one file's sealed content cannot be swapped for another's.
    return hashlib.sha256(b"reschat-store-file|" + store_key + path_name.encode("utf-8")).digest()


def _seal_value(path: Path, store_key: bytes, value: Any) -> tuple[bytes, bytes]:
    """(the file's bytes, the plaintext they seal) for ``value`` stored at ``path``."""
    # seal() uses a fixed nonce, which is safe only for a key used once: each write draws a random
    # 32-byte salt, stored in front, and seals under a key derived from it.
    plain = json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")
    nonce_key = get_random_bytes(32)
    key = hashlib.sha256(_subkey(store_key, path.name) + nonce_key).digest()
    return nonce_key + seal(key, plain, _AAD + path.name.encode("utf-8")), plain


def write_sealed(path: Path, store_key: bytes, value: Any) -> None:
    atomic_write(path, _seal_value(path, store_key, value)[0])


def _read_raw(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from exc


def _unseal_file(path: Path, store_key: bytes, data: bytes) -> bytes:
    if len(data) < 32:
        raise ProfileError(f"{path} is damaged")
    key = hashlib.sha256(_subkey(store_key, path.name) + data[:32]).digest()
    try:
        return unseal(key, data[32:], _AAD + path.name.encode("utf-8"))
    except ValueError as exc:
        raise ProfileError(f"{path} is damaged or belongs to another identity") from exc


def _parse(path: Path, plain: bytes) -> Any:
    try:
        return json.loads(plain)
    except ValueError as exc:
        raise ProfileError(f"{path} is damaged or belongs to another identity") from exc


def read_sealed(path: Path, store_key: bytes) -> Any:
    """The JSON value sealed in ``path``, or None when the file does not exist."""
    data = _read_raw(path)
    return None if data is None else _parse(path, _unseal_file(path, store_key, data))


DIGEST_BYTES = 32
_NO_DIGEST = bytes(DIGEST_BYTES)


class DigestLog(MutableMapping[str, str]):
    """The digests of the friend's records we read, keyed ``"epoch:seq"`` (hex values), as a mapping.

    A reader keeps one per message, so this grows with the history and is parsed at every load of the
    key store. A dict of tens of thousands of small strings is slow to parse (json) at every update;
    here each epoch's run of consecutive sequence numbers is one byte string, stored as one hex string,
    which parses about five times faster. A record far from its epoch's run (a restart, a friend's odd
    numbering) goes to a plain dict, so no sequence number can make the byte string grow without bound.
    """

    #: How far past the end of an epoch's run a sequence number may extend it (filling the gap).
    MAX_GAP = 64

    def __init__(self, entries: Mapping[str, str] | None = None) -> None:
        self._runs: dict[int, tuple[int, bytearray]] = {}  # epoch -> (first seq, digests end to end)
        self._extra: dict[str, str] = {}
        for key, value in (entries or {}).items():
            self[key] = value

    @staticmethod
    def _split(key: str) -> tuple[int, int]:
        epoch, _, seq = key.partition(":")
        return int(epoch), int(seq)

    def _place(self, key: str) -> tuple[bytearray, int] | None:
        """The run holding ``key``'s slot and the slot's offset, or None when it is not in a run."""
        try:
            epoch, seq = self._split(key)
        except ValueError:
            return None
        run = self._runs.get(epoch)
        if run is None:
            return None
        first, data = run
        offset = (seq - first) * DIGEST_BYTES
        return (data, offset) if 0 <= offset < len(data) else None

    def __getitem__(self, key: str) -> str:
        place = self._place(key)
        if place is not None:
            data, offset = place
            digest = bytes(data[offset : offset + DIGEST_BYTES])
            if digest != _NO_DIGEST:
                return digest.hex()
        # Not in a run, or in a slot a later run grew over while this one was kept apart.
        return self._extra[key]

    def __setitem__(self, key: str, value: str) -> None:
        raw = bytes.fromhex(value)
        place = self._place(key)
        if place is not None:
            data, offset = place
            if len(raw) == DIGEST_BYTES:
                data[offset : offset + DIGEST_BYTES] = raw
                self._extra.pop(key, None)
                return
            data[offset : offset + DIGEST_BYTES] = _NO_DIGEST  # not a digest's size: kept apart
            self._extra[key] = value
            return
        try:
            epoch, seq = self._split(key)
        except ValueError:
            self._extra[key] = value
            return
        run = self._runs.get(epoch)
        if len(raw) == DIGEST_BYTES and seq >= 1:
            if run is None and not any(k.startswith(f"{epoch}:") for k in self._extra):
                self._runs[epoch] = (seq, bytearray(raw))
                return
            if run is not None:
                first, data = run
                missing = seq - first - len(data) // DIGEST_BYTES
                if 0 <= missing <= self.MAX_GAP:
                    data += _NO_DIGEST * missing + raw
                    self._extra.pop(key, None)  # one place per key
                    return
        self._extra[key] = value

    def __delitem__(self, key: str) -> None:
        found = self._extra.pop(key, None) is not None
        place = self._place(key)
        if place is not None:
            data, offset = place
            found = found or bytes(data[offset : offset + DIGEST_BYTES]) != _NO_DIGEST
            data[offset : offset + DIGEST_BYTES] = _NO_DIGEST
        if not found:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        for epoch, (first, data) in self._runs.items():
            for index in range(len(data) // DIGEST_BYTES):
                if data[index * DIGEST_BYTES : (index + 1) * DIGEST_BYTES] != _NO_DIGEST:
                    yield f"{epoch}:{first + index}"
        yield from self._extra

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def to_json(self) -> dict[str, Any]:
        """``{"runs": {epoch: [first seq, hex]}, "extra": {"epoch:seq": hex}}``. Deleted digests at either
        end of a run are left out (expiry deletes the oldest first), so a run shrinks as messages expire."""
        runs: dict[str, list[Any]] = {}
        for epoch, (first, data) in self._runs.items():
            # Whole empty slots only: a digest's own leading or trailing zero bytes stay.
            head = (len(data) - len(data.lstrip(b"\0"))) // DIGEST_BYTES
            tail = (len(data) - len(data.rstrip(b"\0"))) // DIGEST_BYTES
            if head * DIGEST_BYTES < len(data):
                runs[str(epoch)] = [first + head, data[head * DIGEST_BYTES : len(data) - tail * DIGEST_BYTES].hex()]
        return {"runs": runs, "extra": dict(self._extra)}

    @classmethod
    def from_json(cls, data: Any) -> DigestLog:
        """From ``to_json``'s form, or from a plain ``{"epoch:seq": hex}`` (stores written before runs)."""
        if isinstance(data, DigestLog):
            return data
        if not isinstance(data, dict):
            raise ProfileError("a conversation's key store is damaged")
        if set(data) != {"runs", "extra"}:
            try:
                return cls({str(k): str(v) for k, v in data.items()})
            except ValueError as exc:
                raise ProfileError("a conversation's key store is damaged") from exc
        log = cls()
        try:
            for epoch, (first, text) in data["runs"].items():
                raw = bytearray.fromhex(text)
                if len(raw) % DIGEST_BYTES:
                    raise ValueError("a run of digests is cut short")
                log._runs[int(epoch)] = (int(first), raw)
            log._extra = {str(k): str(v) for k, v in data["extra"].items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ProfileError("a conversation's key store is damaged") from exc
        return log


@dataclass
class FriendLane:
    """The friend's lane, as far as we verified it."""

    epoch: int = 0  # 0: nothing verified yet
    top: int = 0  # the newest verified page of that epoch (a hint, only ever from verified data)
    seq: int = 0  # the checkpoint: newest verified record...
    digest: str = ""  # ...and its digest
    digests: DigestLog = field(default_factory=DigestLog)  # "epoch:seq" -> digest of every record read
    secrets: dict[str, str] = field(default_factory=dict)  # "epoch:page" -> page secret (history keys)
    receive_key: str = ""  # the friend's newest announced hybrid public key (hex)
    receive_key_at: str = ""  # "epoch:page" where it was announced
    rotation: int = 0  # the next older page the rotating re-read checks
    epoch_tops: dict[str, int] = field(default_factory=dict)  # epoch before a restart -> its last page
    #: Disappearing messages: "epoch:page" -> [sending time, first display (0: not yet)] per record.
    record_times: dict[str, list[list[int]]] = field(default_factory=dict)
    page_keys: dict[str, int] = field(default_factory=dict)  # "epoch:page" -> our receive key that opened it
    restarts_seen: int = 0

    def __post_init__(self) -> None:
        given: Any = self.digests  # a dict when parsed from the store or given by a caller
        if not isinstance(given, DigestLog):
            self.digests = DigestLog.from_json(given)


@dataclass
class ReceiveKeyEntry:
    index: int
    key: dict[str, str]  # kem.ReceiveKey.to_dict()


@dataclass
class ConversationState:
    mine: dict[str, Any] = field(default_factory=dict)  # outbox.OwnLane as a dict
    theirs: FriendLane = field(default_factory=FriendLane)
    receive_keys: list[ReceiveKeyEntry] = field(default_factory=list)
    moved_on: list[str] = field(default_factory=list)  # friend pages we already published a new key for
    settings: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # hash of a refused ledger value -> why
    key_counter: int = 0  # the index of the newest receive key ever made (indices are never reused)

    def to_json(self) -> dict[str, Any]:
        """The state as JSON data, for sealing at once. The same as ``dataclasses.asdict`` gives, without
        its deep copy of every digest and key (which grows with the history): the result shares this
        state's dicts and lists, so it is for serializing, not for keeping."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["theirs"] = {name: getattr(self.theirs, name) for name in self.theirs.__dataclass_fields__}
        fields["theirs"]["digests"] = self.theirs.digests.to_json()
        fields["receive_keys"] = [{"index": entry.index, "key": entry.key} for entry in self.receive_keys]
        return fields

    @classmethod
    def from_json(cls, data: Any) -> ConversationState:
        if not isinstance(data, dict):
            return cls()
        try:
            theirs = FriendLane(**data.get("theirs", {}))
            keys = [ReceiveKeyEntry(**entry) for entry in data.get("receive_keys", [])]
            return cls(
                mine=dict(data.get("mine", {})), theirs=theirs, receive_keys=keys,
                moved_on=list(data.get("moved_on", [])), settings=dict(data.get("settings", {})),
                refused=dict(data.get("refused", {})), key_counter=int(data.get("key_counter", 0)),
            )
        except TypeError as exc:
            raise ProfileError("a conversation's key store is damaged") from exc


class ConversationStore:
    """One conversation's sealed state file, with a lock for read-modify-write."""

    def __init__(self, directory: Path, conversation: bytes, store_key: bytes) -> None:
        self.directory = Path(directory)
        self.name = conversation.hex()[:32]
        self.store_key = store_key
        #: The file's bytes as last read or written here, and the plaintext they seal. An update loads
        #: the store several times (under the lock before each change); the file is read every time,
        #: and only when its bytes are exactly those is the decryption skipped: the same ciphertext
        #: under the same key is the same plaintext, authenticated when it was first opened.
        self._last: tuple[bytes, bytes] | None = None

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.state"

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.directory / f"{self.name}.lock")

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> ConversationState:
        path = self.path
        data = _read_raw(path)
        if data is None:
            return ConversationState.from_json(None)
        if self._last is not None and self._last[0] == data:
            plain = self._last[1]
        else:
            plain = _unseal_file(path, self.store_key, data)
            self._last = (data, plain)
        # Parsed anew each time: every caller gets its own objects to change.
        return ConversationState.from_json(_parse(path, plain))

    def save(self, state: ConversationState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        data, plain = _seal_value(self.path, self.store_key, state.to_json())
        atomic_write(self.path, data)
        self._last = (data, plain)

    @contextlib.contextmanager
    def update(self) -> Iterator[ConversationState]:
        """Load, let the caller change, and save, all under the lock."""
        with self.lock():
            state = self.load()
            yield state
            self.save(state)


class PageCopies:
    """The exact ledger values of pages we hold (our own lane's and the friend's verified ones), kept
    so that a ledger that lost them can be healed: one sealed file per page, written once."""

    def __init__(self, directory: Path, conversation: bytes, store_key: bytes) -> None:
        self.directory = Path(directory) / f"{conversation.hex()[:32]}.pages"
        self.store_key = store_key

    def _path(self, lane: str, epoch: int, number: int) -> Path:
        return self.directory / f"{lane}-{epoch}-{number}"

    def has(self, lane: str, epoch: int, number: int) -> bool:
        return self._path(lane, epoch, number).exists()

    def put(self, lane: str, epoch: int, number: int, value: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_sealed(self._path(lane, epoch, number), self.store_key, value)

    def get(self, lane: str, epoch: int, number: int) -> str | None:
        try:
            value = read_sealed(self._path(lane, epoch, number), self.store_key)
        except ProfileError:
            return None  # a damaged copy heals nothing, and hurts nothing
        return value if isinstance(value, str) else None

    def numbers(self, lane: str, epoch: int) -> list[int]:
        prefix = f"{lane}-{epoch}-"
        try:
            names = [p.name for p in self.directory.iterdir()]
        except FileNotFoundError:
            return []
        return sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())

    def drop(self, lane: str, epoch: int, number: int) -> None:
        self._path(lane, epoch, number).unlink(missing_ok=True)

    # File chunks we sent: kept by their ledger key (``reschat2-<hex>``, safe as a file name).

    def put_chunk(self, key: str, value: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_sealed(self.directory / f"c-{key}", self.store_key, value)

    def get_chunk(self, key: str) -> str | None:
        try:
            value = read_sealed(self.directory / f"c-{key}", self.store_key)
        except ProfileError:
            return None
        return value if isinstance(value, str) else None

    def chunk_keys(self) -> list[str]:
        try:
            return sorted(p.name[2:] for p in self.directory.iterdir() if p.name.startswith("c-"))
        except FileNotFoundError:
            return []


__all__ = [
    "ConversationState",
    "ConversationStore",
    "FriendLane",
    "PageCopies",
    "ReceiveKeyEntry",
    "read_sealed",
    "write_sealed",
]
