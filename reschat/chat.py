"""The service layer: send_message and get_update over the crypto, Page, friend store and ledger.

How a conversation lives on the ledger
--------------------------------------
The seed's page name is the conversation id (both public keys, sorted, hashed). Each friend writes
only to their own *lane*: the keys ``reschat1-<conversation>-<sender>-<page>``. ResilientDB's ``set``
is a blind overwrite without acknowledgement, so a page that two people appended to by
read-modify-write would lose messages; with a lane each, a page has one writer and readers merge both
lanes by time. A sender keeps its own current page locally (ciphertext only) and appends to that copy,
never to a possibly stale read, so a send is one ledger write and no read.

Each record in a lane carries its sequence number and the hash of the previous record and is signed
(RSA-PSS) by its sender over everything that identifies it, so a lane is a signed hash chain: the
reader can tell forged, replayed, reordered, missing and rolled-back records from genuine ones.

Keys: the seed encrypted each message once for the sender and once for the receiver. Here the two
copies are sealed with AES-256-GCM under two symmetric keys the sender derives from its private key
for this conversation: the *self key* (only the sender can ever compute it) and the *lane key*, which
each page also carries wrapped with RSA-OAEP for the receiver. A reader therefore does one RSA
private-key operation per wrapped lane key instead of one per message, and keeps the unwrapped key
beside its outbox sealed under a key derived from its private key, so that a new session opens a
chat without any (see the README's security model for what this changes).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from Crypto.PublicKey import RSA

from reschat import crypto, files
from reschat.errors import LedgerError, MessageError, PageFormatError
from reschat.friends import Friend, FriendStore
from reschat.ledger.base import Ledger
from reschat.page import (
    GENESIS_HASH,
    MESSAGE_TYPES,
    Page,
    Record,
    format_timestamp,
    parse_timestamp,
    valid_type_ext,
)
from reschat.storage import atomic_write_json, file_lock, read_json

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

MAX_TEXT_BYTES = 16 * 1024
#: Any payload (a file manifest included): two sealed copies of it must fit in an empty page.
MAX_PAYLOAD_BYTES = 32 * 1024
ME = "me"
_KEY_PREFIX = "reschat1"
#: How far past the newest known page a read looks in one concurrent round.
_GALLOP = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def page_key(conversation: str, sender_fingerprint: str, number: int) -> str:
    """The ledger key of page ``number`` of ``sender``'s lane in ``conversation``."""
    return f"{_KEY_PREFIX}-{conversation}-{sender_fingerprint[:32]}-{number}"


# --- what the service returns ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage:
    """One verified, decrypted message, ready to show."""

    sender: str  # "me" or the friend's nickname
    receiver: str  # the friend's nickname or "me"
    time: datetime
    type: str
    type_ext: str
    body: bytes  # the decrypted payload (UTF-8 text for "text")
    seq: int
    #: For our own messages: "delivered" once a ledger read returned them, else "pending".
    status: str | None = None
    verified: bool = True

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def outgoing(self) -> bool:
        return self.sender == ME


@dataclass(frozen=True)
class IntegrityProblem:
    """Something in a lane that is not a genuine message: shown to the user, never as a message."""

    lane: str  # "me" or the friend's nickname: whose lane it was found in
    kind: str  # forged | replay | gap | rollback | fork | damaged | undecryptable
    detail: str
    time: datetime | None = None  # where it belongs in the conversation, when known


@dataclass
class ConversationView:
    """The loaded window of one conversation."""

    friend: str
    messages: list[ChatMessage]
    problems: list[IntegrityProblem]
    #: Messages from the friend that this session had not returned before.
    new_messages: list[ChatMessage] = field(default_factory=list)
    #: True when older pages exist beyond the loaded window in either lane.
    has_older: bool = False


@dataclass(frozen=True)
class SendResult:
    message: ChatMessage
    #: Set when the ledger write failed: the message stays in the outbox and is re-sent on update.
    error: LedgerError | None = None


# --- the sender's own lane state (ciphertext only) ------------------------------------------------


@dataclass
class LaneState:
    """What a sender keeps of its own lane: the current page and pages not yet confirmed."""

    page: int = 0
    seq: int = 0
    head: str = GENESIS_HASH.hex()
    last_time: str = ""
    confirmed_seq: int = 0
    pages: dict[str, str] = field(default_factory=dict)  # page number -> the page's ledger value
    written_at: dict[str, str] = field(default_factory=dict)  # page number -> time of last write
    last_seq: dict[str, int] = field(default_factory=dict)  # page number -> its newest sequence number

    def page_last_seq(self, number: str) -> int:
        """The newest sequence number on a kept page, without parsing it when it is known."""
        if number not in self.last_seq:
            try:
                records = Page.from_string(self.pages[number]).all_messages()
            except PageFormatError:
                return 0
            self.last_seq[number] = max((r.seq for r in records), default=0)
        return self.last_seq[number]

    @classmethod
    def from_json(cls, data: Any) -> LaneState:
        if not isinstance(data, dict):
            raise PageFormatError("the outbox state file is damaged")
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as exc:
            raise PageFormatError("the outbox state file is damaged") from exc


# --- per-session memory ---------------------------------------------------------------------------


@dataclass
class _LaneView:
    low: int = 0  # lowest page of the window (0: not opened yet)
    top: int = 0
    pages: dict[int, str | None] = field(default_factory=dict)  # ledger values read this session


@dataclass
class _Session:
    friend_lane: _LaneView = field(default_factory=_LaneView)
    my_lane: _LaneView = field(default_factory=_LaneView)
    returned: set[bytes] = field(default_factory=set)  # digests of friend messages already returned


@dataclass
class _Lane:
    """One side of a conversation, as needed to read it."""

    owner: str  # "me" or nickname
    owner_fingerprint: str
    owner_key: RSA.RsaKey
    receiver_fingerprint: str


@dataclass
class _Verified:
    record: Record
    digest: bytes
    page: Page


class ChatService:
    """send_message / get_update for one unlocked identity."""

    def __init__(
        self,
        identity: crypto.Identity,
        friends: FriendStore,
        ledger: Ledger,
        state_dir: Path,
        *,
        clock: Clock = utc_now,
        randfunc: crypto.RandFunc | None = None,
        resend_after: timedelta = timedelta(seconds=10),
    ) -> None:
        self.identity = identity
        self.friends = friends
        self.ledger = ledger
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.randfunc = randfunc
        self.resend_after = resend_after
        self.my_fingerprint = crypto.fingerprint_bytes(identity.public_key).hex()
        self._sessions: dict[str, _Session] = {}
        self._derived: dict[tuple[str, str], bytes] = {}
        self._unwrapped: dict[bytes, bytes | None] = {}
        self._verified: set[bytes] = set()
        self._plaintext: dict[bytes, bytes] = {}
        self._friend_keys: dict[str, RSA.RsaKey] = {}  # fingerprint -> parsed key
        self._conversations: dict[str, str] = {}  # fingerprint -> conversation id
        self._parsed: dict[str, Page] = {}  # ledger value -> parsed page, only for reading

    # -- keys ----------------------------------------------------------------------------------

    def _friend_key(self, friend: Friend) -> RSA.RsaKey:
        # Keyed by fingerprint: parsing a PEM and hashing two keys cost more than an AES seal.
        key = self._friend_keys.get(friend.fingerprint)
        if key is None:
            key = self._friend_keys[friend.fingerprint] = friend.key
        return key

    def _conversation(self, friend: Friend) -> str:
        conversation = self._conversations.get(friend.fingerprint)
        if conversation is None:
            conversation = crypto.conversation_id(self.identity.public_key, self._friend_key(friend))
            self._conversations[friend.fingerprint] = conversation
        return conversation

    def _read_page(self, value: str) -> Page:
        """Parse a page for reading only (the result is shared: never add to it); PageFormatError if bad."""
        page = self._parsed.get(value)
        if page is None:
            page = Page.from_string(value)
            if len(self._parsed) >= 64:
                self._parsed.clear()  # pages change as lanes grow: keep only a recent few
            self._parsed[value] = page
        return page

    def _derived_key(self, purpose: str, conversation: str) -> bytes:
        cached = self._derived.get((purpose, conversation))
        if cached is None:
            cached = crypto.derive_key(self.identity.private_key, purpose, bytes.fromhex(conversation))
            self._derived[(purpose, conversation)] = cached
        return cached

    def _lane_key(self, conversation: str) -> bytes:
        return self._derived_key("reschat lane key v1", conversation)

    def _self_key(self, conversation: str) -> bytes:
        return self._derived_key("reschat self key v1", conversation)

    def _unwrap(self, conversation: str, wrapped: bytes) -> bytes | None:
        """The friend's lane key: from memory, else from our sealed copy on disk, else by RSA-OAEP."""
        if wrapped not in self._unwrapped:
            key = self._cached_lane_key(conversation, wrapped)
            if key is None:
                try:
                    key = crypto.unwrap_key(self.identity.private_key, wrapped)
                except (ValueError, TypeError):
                    key = None
                else:
                    self._cache_lane_key(conversation, wrapped, key)
            self._unwrapped[wrapped] = key
        return self._unwrapped[wrapped]

    # A friend's lane key is unwrapped with RSA once, then kept beside our outbox sealed (AES-256-GCM)
    # under a key derived from our private key, so that a new session opens a chat with no RSA
    # private-key operation. The copy is exactly as secret as the wrapped one on the ledger: both
    # need our private key. Damaged or foreign entries are ignored and the key is unwrapped again.

    def _lane_lock(self, conversation: str) -> contextlib.AbstractContextManager[None]:
        """Serializes every change of one conversation's files (outbox, key cache) across processes."""
        return file_lock(self.state_dir / f"{conversation}.lock")

    def _key_cache_key(self, conversation: str) -> bytes:
        return crypto.subkey(self._self_key(conversation), "reschat lane key cache v1")

    @staticmethod
    def _key_cache_entry(wrapped: bytes) -> str:
        return hashlib.sha256(wrapped).hexdigest()

    def _key_cache_path(self, conversation: str) -> Path:
        return self.state_dir / f"{conversation}.keys.json"

    def _key_cache_aad(self, conversation: str, wrapped: bytes) -> bytes:
        return f"reschat-lane-key-cache/1|{conversation}|{self._key_cache_entry(wrapped)}".encode("ascii")

    def _cached_lane_key(self, conversation: str, wrapped: bytes) -> bytes | None:
        try:
            entries = read_json(self._key_cache_path(conversation))
            sealed = entries.get(self._key_cache_entry(wrapped)) if isinstance(entries, dict) else None
            if not isinstance(sealed, str):
                return None
            key = crypto.decrypt_message(
                self._key_cache_key(conversation), bytes.fromhex(sealed), self._key_cache_aad(conversation, wrapped),
            )
        except (OSError, ValueError):
            return None
        return key if len(key) == crypto.KEY_BYTES else None

    def _cache_lane_key(self, conversation: str, wrapped: bytes, key: bytes) -> None:
        sealed = crypto.encrypt_message(
            self._key_cache_key(conversation), key, self._key_cache_aad(conversation, wrapped), self.randfunc,
        )
        path = self._key_cache_path(conversation)
        try:
            with self._lane_lock(conversation):
                entries = read_json(path)
                entries = entries if isinstance(entries, dict) else {}
                if len(entries) >= 64:
                    entries = {}  # a lane rarely changes its wrapped key: start over rather than grow
                entries[self._key_cache_entry(wrapped)] = sealed.hex()
                atomic_write_json(path, entries)
        except (OSError, ValueError) as exc:
            log.warning("could not keep the friend's lane key: %s", exc)

    @staticmethod
    def _aad(conversation: str, sender: str, seq: int, copy: str) -> bytes:
        return f"reschat-aad/1|{conversation}|{sender}|{seq}|{copy}".encode("ascii")

    # -- own lane state ------------------------------------------------------------------------

    def _state_path(self, conversation: str) -> Path:
        return self.state_dir / f"{conversation}.json"

    def _load_state(self, conversation: str) -> LaneState | None:
        data = read_json(self._state_path(conversation))
        return None if data is None else LaneState.from_json(data)

    def _save_state(self, conversation: str, state: LaneState) -> None:
        atomic_write_json(self._state_path(conversation), state.__dict__)

    # -- sending -------------------------------------------------------------------------------

    def send_message(
        self, message: str | bytes, nickname: str, *, msg_type: str = "text", type_ext: str = ""
    ) -> SendResult:
        """Seal, sign and append ``message`` to our lane with ``nickname``: one ledger write, no read."""
        body = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        # Checked before anything is sealed: a record the reader would refuse must never be written.
        if msg_type not in MESSAGE_TYPES:
            raise MessageError(f"unknown message type {msg_type!r}")
        if not valid_type_ext(type_ext):
            raise MessageError(f"invalid type extension {type_ext!r}")
        if not body:
            raise MessageError("the message is empty")
        if len(body) > MAX_PAYLOAD_BYTES:
            raise MessageError(f"the message is {len(body)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        if msg_type == "text":
            if not body.decode("utf-8", errors="replace").strip():
                raise MessageError("the message is empty")
            if len(body) > MAX_TEXT_BYTES:
                raise MessageError(
                    f"the message is {len(body)} bytes; the limit is {MAX_TEXT_BYTES} (16 KiB): send it as a file"
                )
        friend = self.friends.get_friend(nickname)
        conversation = self._conversation(friend)
        with self._lane_lock(conversation):
            state = self._load_state(conversation) or self._recover_state(friend, conversation)
            page = self._current_page(state, conversation, friend)
            now = self.clock()
            if state.last_time:
                # A lane's timestamps never go backwards, even if the clock does.
                now = max(now, parse_timestamp(state.last_time) + timedelta(microseconds=1))
            seq = state.seq + 1
            record = Record(
                receiver=friend.fingerprint,
                type=msg_type,
                timestamp=now,
                type_ext=type_ext,
                for_sender=crypto.encrypt_message(
                    self._self_key(conversation), body, self._aad(conversation, self.my_fingerprint, seq, "s"),
                    self.randfunc,
                ),
                for_receiver=crypto.encrypt_message(
                    self._lane_key(conversation), body, self._aad(conversation, self.my_fingerprint, seq, "r"),
                    self.randfunc,
                ),
                seq=seq,
                prev=bytes.fromhex(state.head),
            )
            # Measure with a signature-sized placeholder: the signature is made for the final page.
            placeholder = replace(record, signature=bytes(self.identity.private_key.size_in_bytes()))
            if page.is_full(placeholder):
                page = Page(conversation, self.my_fingerprint, page.number + 1, page.wrapped_key)
            signed = record.signed_bytes(conversation, self.my_fingerprint, page.wrap_digest)
            record = replace(record, signature=crypto.sign(self.identity.private_key, signed, self.randfunc))
            page.add_message(record)
            value = page.to_string()
            digest = hashlib.sha256(signed).digest()
            state.page, state.seq, state.head = page.number, seq, digest.hex()
            state.last_time = format_timestamp(now)
            state.pages[str(page.number)] = value
            state.written_at[str(page.number)] = format_timestamp(self.clock())
            state.last_seq[str(page.number)] = seq
            self._prune_state(state)
            # The outbox is saved before the write: if we die in between, the next send or update
            # carries the message to the ledger; it is never lost and never given a second seq.
            self._save_state(conversation, state)
            self._verified.add(digest)
            self._plaintext[digest] = body
            error: LedgerError | None = None
            try:
                self.ledger.set(page_key(conversation, self.my_fingerprint, page.number), value)
            except LedgerError as exc:
                log.warning("send deferred: %s", exc)
                error = exc
        sent = ChatMessage(
            sender=ME, receiver=friend.nickname, time=now, type=msg_type, type_ext=type_ext,
            body=body, seq=seq, status="pending",
        )
        return SendResult(message=sent, error=error)

    def _current_page(self, state: LaneState, conversation: str, friend: Friend) -> Page:
        value = state.pages.get(str(state.page))
        if value is not None:
            return Page.from_string(value)
        wrapped = crypto.wrap_key(self._friend_key(friend), self._lane_key(conversation), self.randfunc)
        if state.page == 0:
            return Page(conversation, self.my_fingerprint, 1, wrapped)
        # The current page is unknown (recovered from a damaged ledger copy): start a fresh one.
        return Page(conversation, self.my_fingerprint, state.page + 1, wrapped)

    def _prune_state(self, state: LaneState) -> None:
        """Keep the current page and pages holding records not yet confirmed by a ledger read."""
        for number in list(state.pages):
            if int(number) != state.page and state.page_last_seq(number) <= state.confirmed_seq:
                del state.pages[number]
                state.written_at.pop(number, None)
                state.last_seq.pop(number, None)

    def _recover_state(self, friend: Friend, conversation: str) -> LaneState:
        """No local state for our lane (new profile directory, same key): rebuild it from the ledger."""
        lane = self._my_lane(friend)
        view = _LaneView()
        top = self._discover_top(conversation, lane, 1, view)
        state = LaneState()
        if top == 0:
            return state
        verified, _problems = self._read_lane(conversation, lane, {top: view.pages.get(top)})
        if verified:
            last = max(verified, key=lambda v: v.record.seq)
            state.seq, state.head = last.record.seq, last.digest.hex()
            state.last_time = format_timestamp(last.record.timestamp)
            state.confirmed_seq = last.record.seq
        value = view.pages.get(top)
        if value is not None and verified:
            state.page = top
            state.pages[str(top)] = value
        else:
            state.page = top  # _current_page starts page top + 1
        return state

    # -- reading -------------------------------------------------------------------------------

    def _my_lane(self, friend: Friend) -> _Lane:
        return _Lane(ME, self.my_fingerprint, self.identity.public_key, friend.fingerprint)

    def _friend_lane(self, friend: Friend) -> _Lane:
        return _Lane(friend.nickname, friend.fingerprint, self._friend_key(friend), self.my_fingerprint)

    def _discover_top(
        self, conversation: str, lane: _Lane, hint: int, view: _LaneView, prefetched: bool = False
    ) -> int:
        """The newest page of ``lane``: the hint is trusted only as a starting point."""
        base = max(hint, 1)
        if not prefetched:
            numbers = sorted({max(base - 1, 1), base, base + 1, base + 2})
            self._fetch(conversation, lane, numbers, view)
        top = max((n for n, v in view.pages.items() if v is not None), default=0)
        if top <= base:
            # The lane has not grown past the hint (its next two pages are absent): one round was enough.
            return top
        while True:
            probes = [top + step for step in _GALLOP]
            for number in probes:
                # A page found missing in an earlier update may exist now: ask again, never trust a miss.
                if number in view.pages and view.pages[number] is None:
                    del view.pages[number]
            self._fetch(conversation, lane, probes, view)
            found = max((n for n in probes if view.pages.get(n) is not None), default=0)
            if found == 0:
                return top
            top = found

    def _fetch(self, conversation: str, lane: _Lane, numbers: Sequence[int], view: _LaneView) -> None:
        wanted = [n for n in numbers if n >= 1 and n not in view.pages]
        if not wanted:
            return
        keys = {n: page_key(conversation, lane.owner_fingerprint, n) for n in wanted}
        values = self.ledger.get_many(list(keys.values()))
        for number, key in keys.items():
            view.pages[number] = values.get(key)

    def _fetch_both(
        self, conversation: str, lanes: list[tuple[_Lane, _LaneView, Sequence[int]]]
    ) -> None:
        """One concurrent round of reads over both lanes (re-reading pages already in the session)."""
        keys: dict[str, tuple[_LaneView, int]] = {}
        for lane, view, numbers in lanes:
            for number in numbers:
                if number >= 1:
                    keys[page_key(conversation, lane.owner_fingerprint, number)] = (view, number)
        if not keys:
            return
        values = self.ledger.get_many(list(keys))
        for key, (view, number) in keys.items():
            view.pages[number] = values.get(key)

    def _read_lane(
        self, conversation: str, lane: _Lane, pages: dict[int, str | None]
    ) -> tuple[list[_Verified], list[IntegrityProblem]]:
        """Parse, authenticate and order the records of some pages of one lane."""
        problems: list[IntegrityProblem] = []
        candidates: list[_Verified] = []
        present = sorted(n for n, v in pages.items() if v is not None)
        for number in present:
            value = pages[number]
            assert value is not None
            try:
                page = self._read_page(value)
            except PageFormatError as exc:
                problems.append(IntegrityProblem(lane.owner, "damaged", f"page {number} is unreadable: {exc}"))
                continue
            if (page.conversation, page.sender, page.number) != (conversation, lane.owner_fingerprint, number):
                problems.append(
                    IntegrityProblem(lane.owner, "forged", f"page {number} belongs to another lane or place")
                )
                continue
            for record in page.all_messages():
                digest = record.digest(conversation, lane.owner_fingerprint, page.wrap_digest)
                candidates.append(_Verified(record, digest, page))
        if present:
            holes = [n for n in range(present[0], present[-1]) if n not in present]
            for number in holes:
                problems.append(IntegrityProblem(lane.owner, "gap", f"page {number} is missing from the ledger"))
        return self._authenticate(conversation, lane, candidates, problems)

    def _authenticate(
        self, conversation: str, lane: _Lane, candidates: list[_Verified], problems: list[IntegrityProblem]
    ) -> tuple[list[_Verified], list[IntegrityProblem]]:
        # Newest first: a record whose successor is authentic and names it as ``prev`` is
        # authenticated by the successor's signature through the hash chain, so a whole genuine lane
        # costs one signature check, and a forged record costs one failed check.
        by_seq: dict[int, list[_Verified]] = {}
        for cand in candidates:
            by_seq.setdefault(cand.record.seq, []).append(cand)
        authentic: dict[int, _Verified] = {}
        for seq in sorted(by_seq, reverse=True):
            successor = authentic.get(seq + 1)
            chosen: _Verified | None = None
            seen_digests: set[bytes] = set()
            for cand in by_seq[seq]:
                if cand.digest in seen_digests:
                    problems.append(IntegrityProblem(
                        lane.owner, "replay", f"a copy of message #{seq} was ignored", cand.record.timestamp,
                    ))
                    continue
                seen_digests.add(cand.digest)
                ok = (
                    cand.digest in self._verified
                    or (successor is not None and successor.record.prev == cand.digest)
                    or self._check_signature(conversation, lane, cand)
                )
                if ok and cand.record.receiver != lane.receiver_fingerprint:
                    ok = False
                if not ok:
                    problems.append(IntegrityProblem(
                        lane.owner, "forged", f"a record claiming to be message #{seq} failed verification "
                        "and is hidden", None,
                    ))
                elif chosen is None:
                    chosen = cand
                elif chosen.digest != cand.digest:
                    problems.append(IntegrityProblem(
                        lane.owner, "fork", f"two different signed versions of message #{seq} exist",
                        cand.record.timestamp,
                    ))
            if chosen is not None:
                self._verified.add(chosen.digest)
                authentic[seq] = chosen
        ordered = [authentic[s] for s in sorted(authentic)]
        for older, newer in itertools.pairwise(ordered):
            if newer.record.seq != older.record.seq + 1:
                missing = newer.record.seq - older.record.seq - 1
                problems.append(IntegrityProblem(
                    lane.owner, "gap",
                    f"{missing} message(s) missing (#{older.record.seq + 1}-#{newer.record.seq - 1})",
                    newer.record.timestamp,
                ))
            elif newer.record.prev != older.digest:
                problems.append(IntegrityProblem(
                    lane.owner, "fork", f"message #{newer.record.seq} does not follow #{older.record.seq}",
                    newer.record.timestamp,
                ))
        return ordered, problems

    def _check_signature(self, conversation: str, lane: _Lane, cand: _Verified) -> bool:
        signed = cand.record.signed_bytes(conversation, lane.owner_fingerprint, cand.page.wrap_digest)
        return crypto.verify(lane.owner_key, signed, cand.record.signature)

    def _decrypt(self, conversation: str, lane: _Lane, item: _Verified) -> bytes | None:
        cached = self._plaintext.get(item.digest)
        if cached is not None:
            return cached
        record = item.record
        try:
            if lane.owner == ME:
                body = crypto.decrypt_message(
                    self._self_key(conversation), record.for_sender,
                    self._aad(conversation, lane.owner_fingerprint, record.seq, "s"),
                )
            else:
                key = self._unwrap(conversation, item.page.wrapped_key)
                if key is None:
                    return None
                body = crypto.decrypt_message(
                    key, record.for_receiver, self._aad(conversation, lane.owner_fingerprint, record.seq, "r")
                )
        except ValueError:
            return None
        self._plaintext[item.digest] = body
        return body

    def get_update(self, nickname: str) -> ConversationView:
        """Read what is new in the conversation with ``nickname`` and return the loaded window."""
        return self._load(nickname, older=False, everything=False)

    def load_older(self, nickname: str) -> ConversationView:
        """Widen the window by one older page in each lane."""
        return self._load(nickname, older=True, everything=False)

    def load_all(self, nickname: str) -> ConversationView:
        """The whole conversation, from page 1 of both lanes."""
        return self._load(nickname, older=False, everything=True)

    def _load(self, nickname: str, *, older: bool, everything: bool) -> ConversationView:
        friend = self.friends.get_friend(nickname)
        conversation = self._conversation(friend)
        session = self._sessions.setdefault(conversation, _Session())
        friend_lane, my_lane = self._friend_lane(friend), self._my_lane(friend)
        state = self._load_state(conversation)
        fv, mv = session.friend_lane, session.my_lane
        opening = fv.low == 0

        # Round 1: everything an ordinary update needs, in one concurrent batch.
        hint = max(friend.lane_page, fv.top, 1)
        friend_numbers = [hint, hint + 1, hint + 2] + ([hint - 1] if opening else [])
        if opening:
            # The probes past the newest known page join the first batch, so that opening a chat whose
            # lane has not grown since the hint costs one round of reads, not two (later updates find
            # the probes in the session's memory).
            friend_numbers += [hint + step for step in _GALLOP]
        my_top = state.page if state and state.page else 0
        my_numbers: list[int] = []
        if state is None or my_top == 0:
            my_numbers = [1, 2, 3] + ([1 + step for step in _GALLOP] if opening else [])
        else:
            my_numbers = sorted(int(n) for n in state.pages if state.page_last_seq(n) > state.confirmed_seq)
            if opening and my_top > 1 and str(my_top - 1) not in state.pages:
                my_numbers.append(my_top - 1)
        self._fetch_both(conversation, [(friend_lane, fv, friend_numbers), (my_lane, mv, my_numbers)])
        ftop = self._discover_top(conversation, friend_lane, hint, fv, prefetched=True)
        if state is None or my_top == 0:
            my_top = self._discover_top(conversation, my_lane, 1, mv, prefetched=True)
        fv.top, mv.top = ftop, my_top
        for view, top in ((fv, ftop), (mv, my_top)):
            if everything:
                view.low = 1
            elif view.low == 0:
                view.low = max(top - 1, 1)
            elif older:
                view.low = max(view.low - 1, 1)
        for view, top in ((fv, ftop), (mv, my_top)):
            for number in range(view.low, top + 1):
                if number in view.pages and view.pages[number] is None:
                    del view.pages[number]  # missed by an earlier probe, inside the window now: ask again
        self._fetch(conversation, friend_lane, range(fv.low, ftop + 1), fv)
        missing_mine = [n for n in range(mv.low, my_top + 1) if state is None or str(n) not in state.pages]
        self._fetch(conversation, my_lane, missing_mine, mv)

        problems: list[IntegrityProblem] = []
        friend_pages = {n: fv.pages.get(n) for n in range(fv.low, ftop + 1)}
        theirs, lane_problems = self._read_lane(conversation, friend_lane, friend_pages)
        problems += lane_problems
        problems += self._check_high_water(friend, theirs, ftop)

        local_pages = state.pages if state else {}
        my_pages = {n: local_pages.get(str(n)) or mv.pages.get(n) for n in range(mv.low, my_top + 1)}
        mine, lane_problems = self._read_lane(conversation, my_lane, my_pages)
        problems += lane_problems
        confirmed = self._confirm(conversation, friend, state, mv) if state is not None else 0

        messages: list[ChatMessage] = []
        new_messages: list[ChatMessage] = []
        for lane, items in ((friend_lane, theirs), (my_lane, mine)):
            for item in items:
                body = self._decrypt(conversation, lane, item)
                if body is None:
                    problems.append(IntegrityProblem(
                        lane.owner, "undecryptable", f"message #{item.record.seq} could not be decrypted",
                        item.record.timestamp,
                    ))
                    continue
                outgoing = lane.owner == ME
                message = ChatMessage(
                    sender=ME if outgoing else friend.nickname,
                    receiver=friend.nickname if outgoing else ME,
                    time=item.record.timestamp,
                    type=item.record.type,
                    type_ext=item.record.type_ext,
                    body=body,
                    seq=item.record.seq,
                    status=("delivered" if item.record.seq <= confirmed else "pending") if outgoing else None,
                )
                messages.append(message)
                if not outgoing and item.digest not in session.returned:
                    session.returned.add(item.digest)
                    new_messages.append(message)
        messages.sort(key=lambda m: (m.time, m.outgoing, m.seq))
        return ConversationView(
            friend=friend.nickname,
            messages=messages,
            problems=_unique(problems),
            new_messages=new_messages,
            has_older=fv.low > 1 or mv.low > 1,
        )

    def _check_high_water(self, friend: Friend, theirs: list[_Verified], top: int) -> list[IntegrityProblem]:
        """Compare the friend's lane with the newest state we ever verified; then raise the marks."""
        problems: list[IntegrityProblem] = []
        newest = theirs[-1] if theirs else None
        if friend.hw_seq and (newest is None or newest.record.seq < friend.hw_seq):
            shown = newest.record.seq if newest else 0
            problems.append(IntegrityProblem(
                friend.nickname, "rollback",
                f"the ledger shows an older state of this lane (newest #{shown}, already seen #{friend.hw_seq})",
            ))
        for item in theirs:
            if item.record.seq == friend.hw_seq and friend.hw_hash and item.digest.hex() != friend.hw_hash:
                problems.append(IntegrityProblem(
                    friend.nickname, "fork", f"message #{item.record.seq} differs from the one seen before",
                ))
        if newest is not None and newest.record.seq > friend.hw_seq:
            self.friends.update(
                friend.nickname, hw_seq=newest.record.seq, hw_hash=newest.digest.hex(),
                lane_page=lambda old: max(old, top),
            )
        elif top > friend.lane_page:
            self.friends.update_page_num(friend.nickname, top)
        return problems

    def _confirm(self, conversation: str, friend: Friend, state: LaneState, view: _LaneView) -> int:
        """Mark own messages delivered when a ledger read returned them; re-send overdue ones."""
        seen: set[int] = set()  # our sequence numbers that this round's reads returned
        overdue: list[str] = []
        now = self.clock()
        for number, local_value in sorted(state.pages.items(), key=lambda kv: int(kv[0])):
            local = self._read_page(local_value).all_messages()
            if not local or local[-1].seq <= state.confirmed_seq:
                continue
            remote_value = view.pages.get(int(number))
            remote_seqs: set[tuple[int, bytes]] = set()
            if remote_value is not None:
                try:
                    remote_seqs = {(r.seq, r.signature) for r in self._read_page(remote_value).all_messages()}
                except PageFormatError:
                    remote_seqs = set()
            confirmed_here = [r.seq for r in local if (r.seq, r.signature) in remote_seqs]
            seen.update(confirmed_here)
            if len(confirmed_here) != len(local):
                written = state.written_at.get(number)
                if written is None or now - parse_timestamp(written) >= self.resend_after:
                    overdue.append(number)
        # Confirmed means every message up to here was returned by a read: a later page that arrived
        # says nothing about an earlier page whose write was lost, which must stay in the outbox.
        newly_confirmed = state.confirmed_seq
        while newly_confirmed + 1 in seen:
            newly_confirmed += 1
        if newly_confirmed == state.confirmed_seq and not overdue:
            return state.confirmed_seq
        with self._lane_lock(conversation):
            fresh = self._load_state(conversation) or state
            fresh.confirmed_seq = max(fresh.confirmed_seq, newly_confirmed)
            for number in overdue:
                value = fresh.pages.get(number)
                if value is None:
                    continue
                try:
                    self.ledger.set(page_key(conversation, self.my_fingerprint, int(number)), value)
                    fresh.written_at[number] = format_timestamp(self.clock())
                except LedgerError as exc:
                    log.warning("re-send failed: %s", exc)
            self._prune_state(fresh)
            self._save_state(conversation, fresh)
            for number in overdue:
                # Re-read re-sent pages next time instead of trusting this session's old copy.
                view.pages.pop(int(number), None)
            return fresh.confirmed_seq

    def mark_read(self, nickname: str) -> None:
        """Everything received from ``nickname`` so far has been shown."""
        newest = self.friends.get_friend(nickname).hw_seq
        self.friends.update(nickname, read_seq=lambda old: max(old, newest))

    def unread_counts(self) -> dict[str, int]:
        """Unread messages per friend, from one concurrent round of reads of each friend's lane head."""
        return peek_unread_counts(self.identity.public_key, self.friends, self.ledger)

    # -- files (the format is described in files.py) ------------------------------------------------

    def send_file(self, nickname: str, path: Path) -> SendResult:
        """Send the file at ``path`` (at most 5 MiB) to ``nickname``: encrypted chunks, then a signed manifest."""
        return files.send_file(self, nickname, path)

    def save_file(self, message: ChatMessage, downloads_dir: Path) -> Path:
        """Verify the file of a ``file`` message and save it as a new file in ``downloads_dir``."""
        return files.save_file(self, message, downloads_dir)


def _newest_seq(value: str | None, conversation: str, sender: str) -> int:
    """The highest sequence number a page claims, for unread counts (verified when the chat opens)."""
    if value is None:
        return 0
    try:
        page = Page.from_string(value)
    except PageFormatError:
        return 0
    if page.conversation != conversation or page.sender != sender:
        return 0
    return max((r.seq for r in page.all_messages()), default=0)


def _unique(problems: list[IntegrityProblem]) -> list[IntegrityProblem]:
    seen: set[tuple[str, str, str]] = set()
    result = []
    for problem in problems:
        key = (problem.lane, problem.kind, problem.detail)
        if key not in seen:
            seen.add(key)
            result.append(problem)
    return result


def peek_unread_counts(own_key: RSA.RsaKey, friends: FriendStore, ledger: Ledger) -> dict[str, int]:
    """Unread counts like ``ChatService.unread_counts``, with only the public key (no password).

    For listings that should not need the private key; the counts are what the friends' pages
    claim, verified only when the conversation is opened.
    """
    heads: list[tuple[Friend, str, list[str]]] = []
    for friend in friends.all_friends():
        conversation = crypto.conversation_id(own_key, friend.key)
        numbers = (friend.lane_page, friend.lane_page + 1)
        heads.append((friend, conversation, [page_key(conversation, friend.fingerprint, n) for n in numbers]))
    values = ledger.get_many([key for _f, _c, keys in heads for key in keys]) if heads else {}
    counts: dict[str, int] = {}
    for friend, conversation, keys in heads:
        newest = max([friend.hw_seq] + [_newest_seq(values.get(k), conversation, friend.fingerprint) for k in keys])
        counts[friend.nickname] = max(0, newest - friend.read_seq)
    return counts


__all__ = [
    "MAX_TEXT_BYTES",
    "ChatMessage",
    "ChatService",
    "ConversationView",
    "IntegrityProblem",
    "SendResult",
    "page_key",
    "utc_now",
]

