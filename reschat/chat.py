"""The service layer: the seed's send_message and get_update, composed from the protocol-2 rooms.

- ``schedule``: private addresses and the key schedule (pure);
- ``page`` and ``lane``: the sealed page format, and opening and verifying a lane (pure);
- ``keystore``: the sealed per-conversation key and history store;
- ``outbox``: our own lane's current and unconfirmed pages.

How a conversation lives on the ledger
--------------------------------------
Each friend writes only their own *lane*, so every ledger key has one writer (ResilientDB's ``set``
is a blind overwrite). Page n of epoch e of a lane lives at an address only the two friends can
compute. Each page is keyed by a fresh hybrid KEM exchange to the newest receive key the friend
announced (or to their card's static keys before they announced one), announces the writer's own
next receive key, and gives each message its own key from a chain inside the page. A send appends to
our local copy of the current page and writes it: one ledger write, no read. An update reads, in one
concurrent round, the friend's newest pages, the probes for newer ones, a restart of their lane, a
few older pages in rotation (to notice a rewrite) and our own unconfirmed pages.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from Crypto.PublicKey import RSA

from reschat import crypto, files, kem, retention, schedule
from reschat.errors import KeyFormatError, LedgerError, MessageError, PageFormatError, ProfileError
from reschat.friends import Friend, FriendStore
from reschat.keystore import ConversationState, ConversationStore, PageCopies, ReceiveKeyEntry
from reschat.lane import (
    HINT_EVERY,
    Checkpoint,
    OpenPage,
    PageKeys,
    Problem,
    add_record,
    check_lane,
    find_page_secret,
    gap_problem,
    new_page,
    open_header,
    open_hint,
    open_page,
    seal_hint,
    writer_tag,
    written_by_another_copy,
)
from reschat.ledger.base import Ledger
from reschat.outbox import OwnLane, page_id
from reschat.page import (
    GENESIS_HASH,
    MAX_PAGE_BYTES,
    MESSAGE_TYPES,
    PAGE_CAPACITY,
    Record,
    SealedPage,
    format_timestamp,
    parse_timestamp,
    record_content_size,
    sealed_record_size,
    to_micros,
    valid_type_ext,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

MAX_TEXT_BYTES = 16 * 1024
#: Any payload (a file manifest included) must fit the largest padding bucket.
MAX_PAYLOAD_BYTES = 32 * 1024
ME = "me"
#: How far past the newest known page the first round of the search looks: 1, 2, 4 ... 2**20.
_EXPONENTIAL: tuple[int, ...] = tuple(1 << k for k in range(21))
#: How many parts each further round of the search for a lane's newest page splits what is left into.
_SPLIT = 64
#: Older pages re-read by each update in rotation, to notice a rewrite at any depth. Two keys more
#: in the update's one round of reads.
ROTATION_PAGES = 2
#: Pages one update fetches at most to connect a lane back to its checkpoint; the rest follow.
MAX_CATCH_UP_PAGES = 64
#: A verified record dated further ahead of our clock than this is marked "clock ahead".
CLOCK_AHEAD = timedelta(minutes=10)
#: How many restarted epochs of a lane a reader with no checkpoint looks for.
_MAX_EPOCH_PROBE = 8
#: The work one update may do against a lane, whatever the friend wrote: rounds of probes for newer
#: pages, restarts followed, and pages held in the window. What is left waits for the next update.
MAX_PROBE_ROUNDS = 4
MAX_RESTARTS_PER_UPDATE = 2
#: Fruitless decapsulations one update may try on pages no key of ours opens (each costs ~0.3 ms).
MAX_DECAPSULATIONS = 64
#: Receive keys kept per conversation, and how many of the friend's pages one of ours serves before a
#: reader who only reads announces a fresh one (post-compromise security for the silent side).
MAX_RECEIVE_KEYS = 8
ROTATE_AFTER_PAGES = 4
#: Pages one update writes back to a ledger that lost or altered them (newest first); the rest follow.
MAX_REPAIRS_PER_UPDATE = 4
MAX_WINDOW_PAGES = 1000
#: Values that failed to open or verify, remembered (by hash) so that they cost nothing again.
MAX_REFUSED = 256
#: A message no read has returned after this many times ``resend_after`` is "not delivered yet".
UNDELIVERED_AFTER_RESENDS = 6
#: Every this many updates, one kept file chunk of ours is compared with the ledger (a chunk is large:
#: the check is spread out), besides the chunks not confirmed yet and those found lost once.
CHUNK_CHECK_EVERY = 4
#: Parsed pages kept in memory (``ChatService._sealed``): a few updates' worth.
_PARSED_KEPT = 64

IntegrityProblem = Problem
#: The type extension of a group invitation, a ``setting`` record of a pair's lane (see group.py).
GROUP_INVITATION = "ginvite"
#: The type extension of a member's request to an admin for a fresh start in a group whose local state it
#: lost or holds only in an older copy (a ``setting`` record of a pair's lane, see group.py).
GROUP_REJOIN = "grejoin"
#: The type extension of a group's membership line (made by the group engine from verified records).
GROUP_NOTICE = "group"
#: A friend pinned before cards were kept has no signed card line that a group's roster could pass on: the
#: group engine asks for it in the pair's lane (a ``setting`` record), and the friend's client answers with it.
CARD_REQUEST = "gcardask"
CARD_REPLY = "gcard"
#: How far ahead of our clock a request for our card may be dated and still be answered.
CARD_REQUEST_AHEAD = timedelta(minutes=10)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


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
    #: For our own messages: "delivered" once a ledger read returned them, else "pending", and
    #: "undelivered" once still pending after UNDELIVERED_AFTER_RESENDS times ``resend_after``.
    status: str | None = None
    epoch: int = 1
    #: A verified message dated more than ten minutes ahead of our clock.
    clock_ahead: bool = False

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def outgoing(self) -> bool:
        return self.sender == ME


@dataclass
class ConversationView:
    """The loaded window of one conversation."""

    friend: str
    messages: list[ChatMessage]
    problems: list[Problem]
    #: Messages from the friend that this session had not returned before.
    new_messages: list[ChatMessage] = field(default_factory=list)
    #: True when older pages exist beyond the loaded window in either lane.
    has_older: bool = False


@dataclass(frozen=True)
class SendResult:
    message: ChatMessage
    #: Set when the ledger write failed: the message stays in the outbox and is re-sent on update.
    error: LedgerError | None = None


# --- per-session memory ---------------------------------------------------------------------------


@dataclass
class _LaneView:
    epoch: int = 0
    low: int = 0  # lowest page of the window (0: not opened yet)
    top: int = 0
    pages: dict[tuple[int, int], str | None] = field(default_factory=dict)  # (epoch, page) -> value read


@dataclass
class _Session:
    theirs: _LaneView = field(default_factory=_LaneView)
    mine: _LaneView = field(default_factory=_LaneView)
    returned: set[tuple[int, int]] = field(default_factory=set)  # friend messages already returned
    fresh: set[tuple[int, int]] = field(default_factory=set)  # friend pages read during this update
    suspected: set[tuple[str, str, str]] = field(default_factory=set)  # gaps and rollbacks seen once
    repair_suspects: set[tuple[bool, int, int]] = field(default_factory=set)  # pages found lost once
    chunk_suspects: set[str] = field(default_factory=set)  # our kept file chunks found lost or altered once
    chunks: dict[str, str | None] = field(default_factory=dict)  # file chunks of ours read in this update
    updates: int = 0


@dataclass
class _Pair:
    """One friend, with what the protocol derives from the two cards."""

    friend: Friend
    fingerprint: bytes
    statics: kem.ReceivePublic
    address_key: bytes
    conversation: bytes
    store: ConversationStore
    copies: PageCopies

    @functools.cached_property
    def key(self) -> RSA.RsaKey:
        """The friend's RSA key, parsed at its first use: an update that checks no new signature
        needs none. (A friend with another RSA key has another fingerprint, so another _Pair.)"""
        return self.friend.key


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
        rotation_pages: int = ROTATION_PAGES,
    ) -> None:
        self.identity = identity
        self.friends = friends
        self.ledger = ledger
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.randfunc = randfunc
        self.resend_after = resend_after
        self.rotation_pages = rotation_pages
        self.my_fingerprint = crypto.fingerprint_bytes(identity.public_key)
        self._tag_key = schedule.writer_tag_key(identity.statics.x25519_seed)
        self._decaps = 0
        self._sessions: dict[bytes, _Session] = {}
        self._pairs: dict[str, _Pair] = {}
        self._verified: set[bytes] = set()
        #: (lane owner fingerprint, epoch, page, value) -> the page opened, or why it was refused.
        self._opened: dict[tuple[bytes, int, int, str], OpenPage | Problem] = {}
        self._lane_checked: set[bytes] = set()  # conversations whose own lane this session checked
        self._notes: list[Problem] = []
        self._refusals: dict[str, str] = {}  # value hash -> problem kind, refused in this update
        #: Group invitations read in pairwise lanes (friend, message): lines of no pair's chat; the group
        #: engine (group.py) takes them from here.
        self.group_invitations: list[tuple[str, ChatMessage]] = []
        self._card_asked: set[str] = set()  # friends whose request for our card waits for its answer
        self._card_answered: set[tuple[str, int | None, int | None]] = set()  # requests answered this session
        #: Pages written before this moment were written by an earlier session: one that no read has
        #: returned is re-sent at this session's first update, without waiting for ``resend_after``.
        self._session_start = clock()
        self._parsed: dict[str, SealedPage] = {}  # ledger value -> the page it parses to (see _sealed)

    # -- pairs ---------------------------------------------------------------------------------

    def _pair(self, nickname: str) -> _Pair:
        friend = self.friends.get_friend(nickname)
        cached = self._pairs.get(friend.fingerprint)
        if cached is not None and cached.friend.statics == friend.statics:
            cached.friend = friend
            return cached
        statics = friend.receive_public
        shared = kem.x25519_shared(self.identity.statics, statics, b"reschat2 pair secret")
        fingerprint = bytes.fromhex(friend.fingerprint)
        address_key, conversation = schedule.pair_keys(shared, self.my_fingerprint, fingerprint)
        pair = _Pair(
            friend=friend, fingerprint=fingerprint, statics=statics, address_key=address_key,
            conversation=conversation,
            store=ConversationStore(self.state_dir, conversation, self.identity.store_key),
            copies=PageCopies(self.state_dir, conversation, self.identity.store_key),
        )
        self._pairs[friend.fingerprint] = pair
        return pair

    def own_lane(self, nickname: str) -> OwnLane:
        """A copy of what we keep of our own lane with ``nickname`` (the outbox), for inspection."""
        return OwnLane.from_dict(self._pair(nickname).store.load().mine)

    def conversation_state(self, nickname: str) -> ConversationState:
        """A copy of the key and history store of the conversation with ``nickname``, for inspection."""
        return self._pair(nickname).store.load()

    def lane_address(self, nickname: str, *, mine: bool, number: int, epoch: int = 1) -> str:
        """The ledger key of page ``number`` of ``epoch`` of our lane (``mine``) or the friend's."""
        return self._address(self._pair(nickname), mine, epoch, number)

    def _address(self, pair: _Pair, mine: bool, epoch: int, number: int) -> str:
        writer = self.my_fingerprint if mine else pair.fingerprint
        return schedule.page_address(pair.address_key, writer, epoch, number)

    def _sign(self, data: bytes) -> bytes:
        return crypto.sign(self.identity.private_key, data, self.randfunc)

    def _sealed(self, value: str) -> SealedPage:
        """``SealedPage.from_string(value)``, parsed once per value: one update looks at the same page
        in several places (its writer tag, its length, opening it). Callers only read what it returns."""
        parsed = self._parsed.get(value)
        if parsed is None:
            parsed = SealedPage.from_string(value)  # PageFormatError is not kept: junk is parsed again
            if len(self._parsed) >= _PARSED_KEPT:
                self._parsed.clear()
            self._parsed[value] = parsed
        return parsed

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
        pair = self._pair(nickname)
        error: LedgerError | None = None
        with pair.store.lock():
            state = pair.store.load()
            own = OwnLane.from_dict(state.mine)
            unchecked: LedgerError | None = None
            if own.epoch and pair.conversation not in self._lane_checked:
                try:
                    self._check_own_lane(pair, own)
                except LedgerError as exc:
                    # The message is kept (pending) and goes out after an update has made the check.
                    unchecked = exc
            if own.epoch == 0 or own.restart_needed:
                self._start_lane(pair, own)
            now = self.clock()
            if own.last_time:
                # A lane's timestamps never go backwards, even if the clock does.
                now = max(now, parse_timestamp(own.last_time) + timedelta(microseconds=1))
            theirs = state.theirs
            record = Record(
                type=msg_type, seq=own.seq + 1, prev=bytes.fromhex(own.head), timestamp=now,
                causal=(theirs.epoch, theirs.seq), type_ext=type_ext, body=body,
            )
            page_before = own.page
            number, value = self._append(pair, state, own, record)
            own.last_time = format_timestamp(now)
            state.mine = own.to_dict()
            # The outbox is saved before the write: if we die in between, the next update carries
            # the message to the ledger; it is never lost and never given a second sequence number.
            pair.store.save(state)
            try:
                if unchecked is not None:
                    raise unchecked
                self.ledger.set(self._address(pair, True, own.epoch, number), value)
            except LedgerError as exc:
                log.warning("send deferred: %s", exc)
                error = exc
                # Not written at all: the next update that can reach the ledger sends it at once.
                own.written_at.pop(str(number), None)
                state.mine = own.to_dict()
                pair.store.save(state)
            else:
                if number != page_before:
                    self._write_hint(pair, own.epoch, number)
        sent = ChatMessage(
            sender=ME, receiver=pair.friend.nickname, time=now, type=msg_type, type_ext=type_ext,
            body=body, seq=record.seq, status="pending", epoch=own.epoch,
        )
        return SendResult(message=sent, error=error)

    def _start_lane(self, pair: _Pair, own: OwnLane) -> None:
        """Begin our lane, or restart it in a new epoch when this profile lost or left its state.

        The one read a send may make: the first send of a conversation with no local state looks for
        epochs this identity already wrote (from another profile or an older copy of this one), and
        starts the next one, so no (epoch, sequence number) is ever written twice.
        """
        began = time.monotonic()
        highest = self._highest_own_epoch(pair)
        window = self.ledger.stale_read_window_s
        if window > 0:
            # A read within the ledger's stale window of a write may miss it: page 1 of an epoch that
            # this identity started a moment ago, before this profile lost its state. A second look once
            # the window has passed sees every write made before the first look (the ledger's contract:
            # a re-read a second later was right). It costs that second only here, when a lane starts.
            time.sleep(max(0.0, window - (time.monotonic() - began)))
            highest = max(highest, self._highest_own_epoch(pair))
        own.restart(max(highest, own.epoch) + 1)
        self._lane_checked.add(pair.conversation)

    def _highest_own_epoch(self, pair: _Pair) -> int:
        """The newest epoch of our lane that the ledger shows (0 when none): one round of reads, more
        only when the first eight epochs are all taken."""
        highest, start = 0, 1
        for _round in range(4):  # epochs are few; junk at these addresses never counts (no tag of ours)
            keys = {e: self._address(pair, True, e, 1) for e in range(start, start + _MAX_EPOCH_PROBE)}
            values = self.ledger.get_many(list(keys.values()))
            # An epoch is taken when its first page is ours (our tag) or at least parses as a page:
            # a writer who altered our tag must not make us write an epoch twice; plain junk (a
            # friend's, say) does not push our restart further.
            mine = [e for e, key in keys.items() if _parses(values.get(key))]
            highest = max([highest, *mine])
            if not mine or max(mine) < start + _MAX_EPOCH_PROBE - 1:
                break
            start += _MAX_EPOCH_PROBE
        return highest

    def _is_mine(self, pair: _Pair, epoch: int, number: int, value: str | None) -> bool:
        """True when ``value`` is a page this identity wrote at that place (its writer tag matches)."""
        if value is None:
            return False
        try:
            sealed = self._sealed(value)
        except PageFormatError:
            return False
        return hmac.compare_digest(sealed.tag, writer_tag(self._tag_key, pair.conversation, epoch, number, sealed))

    def _own_places(self, own: OwnLane) -> list[tuple[int, int]]:
        """Where another copy of this identity would show: our current page, the next, the next epoch."""
        return [(own.epoch, own.page), (own.epoch, own.page + 1), (own.epoch + 1, 1)]

    def _behind(self, pair: _Pair, own: OwnLane, values: dict[tuple[int, int], str | None]) -> bool:
        """True when our own lane on the ledger went past this profile's state (a backup restored, or
        the same identity on another machine): our tag on a page we do not have, or on a longer or
        different copy of our current page. Junk, a friend's writes and stale reads never count."""
        if own.epoch == 0:
            return False
        current, following, restart = self._own_places(own)
        if self._is_mine(pair, *following, values.get(following)) or self._is_mine(pair, *restart,
                                                                                    values.get(restart)):
            return True
        remote, local = values.get(current), own.pages.get(str(own.page))
        if not own.page or local is None or not self._is_mine(pair, *current, remote):
            return False
        assert remote is not None
        stored = own.secrets.get(page_id(own.epoch, own.page))
        keys = PageKeys.from_text(stored) if stored and stored != _EXPIRED else None
        return written_by_another_copy(
            self._sealed(local), self._sealed(remote), remote, keys, conversation=pair.conversation,
            writer=self.my_fingerprint, writer_key=self.identity.public_key, epoch=own.epoch, number=own.page,
            verified=self._verified)

    def _check_own_lane(self, pair: _Pair, own: OwnLane) -> None:
        """Once per session before the first send: make sure no other copy of us wrote ahead."""
        places = self._own_places(own)
        keys = {self._address(pair, True, e, n): (e, n) for e, n in places}
        found = self.ledger.get_many(list(keys))
        self._lane_checked.add(pair.conversation)
        if self._behind(pair, own, {place: found.get(key) for key, place in keys.items()}):
            own.restart_needed = "another copy of this profile wrote here"

    def _readers(self, state: ConversationState, pair: _Pair) -> list[kem.ReceivePublic]:
        """Whom a new page is keyed to: the friend's newest announced receive key, else their card's."""
        if state.theirs.receive_key:
            try:
                return [kem.ReceivePublic.from_bytes(bytes.fromhex(state.theirs.receive_key))]
            except (ValueError, kem.KemError):
                log.warning("the friend's announced receive key is unusable; using their card's")
        return [pair.statics]

    def _new_receive_key(self, state: ConversationState) -> kem.ReceiveKey:
        key = kem.ReceiveKey.generate()
        state.key_counter = max([state.key_counter, *(entry.index for entry in state.receive_keys)]) + 1
        state.receive_keys.append(ReceiveKeyEntry(index=state.key_counter, key=key.to_dict()))
        # Bounded: a friend who never moves to our newer keys cannot make us keep keys without end.
        state.receive_keys = sorted(state.receive_keys, key=lambda e: e.index)[-MAX_RECEIVE_KEYS:]
        return key

    def _start_page(self, pair: _Pair, state: ConversationState, own: OwnLane) -> tuple[SealedPage, bytes]:
        number = own.page + 1
        finished = own.pages.get(str(own.page)) if own.page else None
        if finished is not None and page_id(own.epoch, own.page) in own.secrets:
            # The page is final now: its exact value is kept, to put it back if the ledger loses it.
            pair.copies.put("m", own.epoch, own.page, finished)
        sealed, header, secret = new_page(
            conversation=pair.conversation, writer=self.my_fingerprint, epoch=own.epoch, number=number,
            first_seq=own.seq + 1, link=bytes.fromhex(own.head), readers=self._readers(state, pair),
            next_receive_key=self._new_receive_key(state).public, created=to_micros(self.clock()), signer=self._sign,
        )
        sealed.tag = writer_tag(self._tag_key, pair.conversation, own.epoch, number, sealed)
        own.page = number
        own.secrets[page_id(own.epoch, number)] = PageKeys.from_secret(secret).to_text()
        own.pages[str(number)] = sealed.to_string()
        own.last_seq[str(number)] = own.seq
        own.unseen = sorted({*own.unseen, str(number)}, key=int)
        self._verified.add(header.digest)
        return sealed, secret

    def _append(self, pair: _Pair, state: ConversationState, own: OwnLane, record: Record) -> tuple[int, str]:
        """Add ``record`` to our current page (or a new one); returns (page number, page value)."""
        needed = sealed_record_size(record_content_size(record.type_ext, len(record.body)))
        current = own.pages.get(str(own.page)) if own.page else None
        stored_keys = own.secrets.get(page_id(own.epoch, own.page)) if own.page else None
        sealed: SealedPage | None = SealedPage.from_string(current) if current and stored_keys else None
        secret: bytes | PageKeys
        timer = _timer(state)
        # A page is wholly disappearing or not at all, so that expiring its records can delete keys.
        mixed = bool(timer) and sealed is not None and bool(sealed.records) \
            and page_id(own.epoch, own.page) not in own.record_times
        if mixed or sealed is None or len(sealed.records) >= PAGE_CAPACITY \
                or sealed.size_with(needed) > MAX_PAGE_BYTES:
            sealed, secret = self._start_page(pair, state, own)
        else:
            assert stored_keys is not None
            secret = PageKeys.from_text(stored_keys)
        header = open_header(sealed, secret)
        sealed, _signed, digest = add_record(sealed, header, secret, record, self._sign)
        value = sealed.to_string()
        own.seq, own.head = record.seq, digest.hex()
        own.pages[str(own.page)] = value
        own.written_at[str(own.page)] = format_timestamp(self.clock())
        own.last_seq[str(own.page)] = record.seq
        if timer:
            own.record_times.setdefault(page_id(own.epoch, own.page), []).append(to_micros(record.timestamp))
        own.prune()
        self._verified.add(digest)
        return own.page, value

    def _publish_receive_key(self, pair: _Pair, state: ConversationState) -> None:
        """Move on: a key-only page in our lane announces a fresh receive key (one small write)."""
        own = OwnLane.from_dict(state.mine)
        if own.epoch == 0 or own.restart_needed:
            self._start_lane(pair, own)
        self._start_page(pair, state, own)
        own.written_at[str(own.page)] = format_timestamp(self.clock())
        own.prune()
        state.mine = own.to_dict()
        pair.store.save(state)
        try:
            self.ledger.set(self._address(pair, True, own.epoch, own.page), own.pages[str(own.page)])
        except LedgerError as exc:
            log.warning("publishing a new receive key deferred: %s", exc)
        else:
            self._write_hint(pair, own.epoch, own.page)

    def _write_hint(self, pair: _Pair, epoch: int, number: int) -> None:
        """After page ``number`` of ours is written: rewrite our page hint when the number is a multiple
        of HINT_EVERY (one small write every HINT_EVERY pages; a plain send stays one write). Written
        after the page, so that it never names a page not yet written; a failed write only leaves the
        hint staler, which costs a reader probes, never a page."""
        if number % HINT_EVERY:
            return
        try:
            self.ledger.set(schedule.hint_address(pair.address_key, self.my_fingerprint),
                            seal_hint(pair.address_key, self.my_fingerprint, epoch, number))
        except LedgerError as exc:
            log.warning("writing the page hint failed: %s", exc)

    # -- reading -------------------------------------------------------------------------------

    def get_update(self, nickname: str) -> ConversationView:
        """Read what is new in the conversation with ``nickname`` and return the loaded window."""
        view = self._load(nickname, older=False, everything=False)
        if nickname in self._card_asked:
            self._card_asked.discard(nickname)
            result = self.send_message(self.identity.card, nickname, msg_type="setting", type_ext=CARD_REPLY)
            if result.error is not None:
                log.warning("our card for %s waits in the outbox: %s", nickname, result.error)
        return view

    def ask_for_card(self, nickname: str) -> SendResult:
        """Ask a friend pinned without a signed card line for it (see CARD_REQUEST)."""
        return self.send_message(b"card", nickname, msg_type="setting", type_ext=CARD_REQUEST)

    def load_older(self, nickname: str) -> ConversationView:
        """Widen the window by one older page in each lane."""
        return self._load(nickname, older=True, everything=False)

    def load_all(self, nickname: str) -> ConversationView:
        """The whole conversation, from page 1 of both lanes."""
        return self._load(nickname, older=False, everything=True)

    def _candidates(self, state: ConversationState) -> list[tuple[int, kem.ReceiveKey]]:
        keys: list[tuple[int, kem.ReceiveKey]] = []
        for entry in sorted(state.receive_keys, key=lambda e: -e.index):
            try:
                keys.append((entry.index, kem.ReceiveKey.from_dict(entry.key)))
            except kem.KemError:
                continue
        keys.append((0, self.identity.statics))
        return keys

    def _open(
        self, pair: _Pair, state: ConversationState, mine: bool, epoch: int, number: int, value: str,
        used_keys: dict[tuple[int, int], int],
    ) -> OpenPage | Problem:
        """Open one page of either lane, or say why not (remembered: a refused page costs once)."""
        owner = ME if mine else pair.friend.nickname
        writer = self.my_fingerprint if mine else pair.fingerprint
        cache_key = (writer, epoch, number, value)
        cached = self._opened.get(cache_key)
        if cached is not None:
            return cached
        # Refused *at this place*: the same value may be genuine at its own address.
        place = f"{writer.hex()}|{epoch}|{number}|".encode("ascii")
        fingerprint = hashlib.sha256(place + value.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]
        refused_kind = state.refused.get(fingerprint)
        if refused_kind is not None:
            # Refused in an earlier update: no slot is tried and no signature checked again.
            refused = Problem(owner, refused_kind, f"page {number}: refused before (still the same value)")
            self._opened[cache_key] = refused
            return refused
        result: OpenPage | Problem
        try:
            sealed = self._sealed(value)
            pid = page_id(epoch, number)
            stored = (OwnLane.from_dict(state.mine).secrets if mine else state.theirs.secrets).get(pid)
            secret: bytes | PageKeys
            if stored == _EXPIRED:
                raise _Expired
            if stored:
                secret, key_index = PageKeys.from_text(stored), -1
            elif mine:
                raise _Unopenable("its key is not in this profile (written before this profile's last restart)")
            else:
                if len(sealed.slots) != 1:
                    # A pair's page has one reader: more slots only make the reader try more keys.
                    raise PageFormatError("it has more than the one key slot of a pair's page")
                candidates = self._candidates(state)
                if self._decaps + len(candidates) > MAX_DECAPSULATIONS:
                    raise _Budget
                found = find_page_secret(sealed, candidates)
                if found is None:
                    # Only fruitless tries count: a genuine history costs what it costs, once.
                    self._decaps += len(candidates)
                if found is None:
                    raise _Unopenable("no key of ours opens it")
                secret, key_index = found
            result = open_page(
                value, sealed, secret, conversation=pair.conversation, writer=writer,
                writer_key=self.identity.public_key if mine else lambda: pair.key, epoch=epoch, number=number,
                verified=self._verified, kept=_kept_digests(state, mine, epoch),
            )
            used_keys[(epoch, number)] = key_index
        except _Budget:
            # Not refused, only not tried in this update: no result is kept.
            return Problem(owner, "skipped", f"page {number} waits for the next update (keys tried: budget spent)")
        except _Expired:
            result = Problem(owner, "expired", f"page {number}: its messages disappeared")
        except _Unopenable as exc:
            result = Problem(owner, "undecryptable", f"page {number} cannot be opened: {exc}")
        except PageFormatError as exc:
            kind = "old-format" if "old format" in str(exc) else "damaged"
            if "signature" in str(exc) or "signed as" in str(exc) or "another conversation" in str(exc) \
                    or "does not follow" in str(exc) or "does not open" in str(exc) or "replaced" in str(exc) \
                    or "key slot" in str(exc):
                kind = "forged"
            result = Problem(owner, kind, f"page {number}: {exc}")
        if len(self._opened) > 512:
            self._opened.clear()
        self._opened[cache_key] = result
        if isinstance(result, Problem) and result.kind in ("forged", "damaged", "undecryptable", "old-format"):
            self._refusals[fingerprint] = result.kind
        return result

    def _load(self, nickname: str, *, older: bool, everything: bool) -> ConversationView:
        pair = self._pair(nickname)
        friend = pair.friend
        session = self._sessions.setdefault(pair.conversation, _Session())
        state = pair.store.load()
        if _timer(state):
            self._expire(pair)
            state = pair.store.load()
        own = OwnLane.from_dict(state.mine)
        theirs_view = session.theirs
        opening = theirs_view.low == 0
        problems: list[Problem] = []
        self._notes = problems  # deep helpers report what they skipped here
        self._decaps = 0
        used_keys: dict[tuple[int, int], int] = {}

        # Round 1: everything an ordinary update needs, in one concurrent batch.
        session.fresh = set()
        f_epoch = theirs_view.epoch or state.theirs.epoch or 1
        if theirs_view.epoch == f_epoch and theirs_view.top:
            f_base = theirs_view.top
        else:
            f_base = state.theirs.top if state.theirs.epoch == f_epoch else 0
        wanted: dict[str, tuple[bool, int, int]] = {}

        def want(mine: bool, epoch: int, numbers: Iterable[int]) -> None:
            for number in numbers:
                if number >= 1:
                    wanted[self._address(pair, mine, epoch, number)] = (mine, epoch, number)

        if f_base:
            want(False, f_epoch, [f_base - 1, f_base, f_base + 1, f_base + 2])
        else:
            want(False, f_epoch, [1, 2, 3])
        if opening and f_base:
            want(False, f_epoch, [f_base + step for step in _EXPONENTIAL])
        # No page number of our own to start from (no checkpoint): the writer's page hint instead of a
        # gallop from page 1, so that opening a long lane costs the same reads as a short one.
        hint_key = schedule.hint_address(pair.address_key, pair.fingerprint) if not f_base else None
        want(False, f_epoch + 1, [1])
        if not state.theirs.epoch:
            for epoch in range(2, _MAX_EPOCH_PROBE + 1):
                want(False, epoch, [1])
        rotation_places = self._rotation_places(state, f_base, f_epoch)
        for epoch, number in rotation_places:
            want(False, epoch, [number])
        rotation = [n for e, n in rotation_places if e == f_epoch]
        if own.epoch:
            own_checks = self._own_rotation(pair, state, own)
            want(True, own.epoch, [*own.unconfirmed(), own.page, own.page + 1, *own_checks])
            want(True, own.epoch + 1, [1])
            if opening:
                want(True, own.epoch, [own.page - 1, own.page])
        hint_value = self._fetch(
            wanted, session, self._chunk_reads(pair, own, session), [hint_key] if hint_key else []
        ).get(hint_key or "")

        # The friend's lane: a restart first, then the newest page that verifies.
        restarted = self._follow_restarts(pair, state, session, f_epoch, problems, used_keys)
        if restarted != f_epoch:
            f_base, theirs_view.low = 0, 0
        f_epoch = theirs_view.epoch = restarted
        steps: Sequence[int] = _EXPONENTIAL
        if hint_value is not None and not f_base:
            hinted = self._from_hint(pair, session, f_epoch, hint_value, problems)
            if hinted:
                f_base, steps = hinted, range(1, HINT_EVERY + 1)
        top = self._discover_top(pair, state, session, False, f_epoch, f_base, used_keys, steps)
        theirs_view.top = top
        # A value above the newest verified page (in what this update read) does not verify: it is
        # junk, a copy or a forgery, and is said, never silently ignored.
        for epoch, number in sorted(session.fresh):
            if epoch == f_epoch and number > top:
                self._page_or_problem(pair, state, session, False, f_epoch, number, problems, used_keys)
        checkpoint_page = state.theirs.top if state.theirs.epoch == f_epoch else 0
        if everything:
            theirs_view.low = 1
        elif theirs_view.low == 0:
            theirs_view.low = max(top - 1, 1)
        elif older:
            theirs_view.low = max(theirs_view.low - 1, 1)
        if top - theirs_view.low >= MAX_WINDOW_PAGES:
            problems.append(Problem(friend.nickname, "skipped", f"pages before {top - MAX_WINDOW_PAGES + 1} "
                                    "are not loaded (more than one load reads)"))
            theirs_view.low = top - MAX_WINDOW_PAGES + 1
        if checkpoint_page and top - checkpoint_page > 1:
            # Connect the new pages to the checkpoint: the pages in between are read too (bounded).
            theirs_view.low = min(theirs_view.low, max(checkpoint_page, top - MAX_CATCH_UP_PAGES))
            if top - checkpoint_page > MAX_CATCH_UP_PAGES:
                problems.append(Problem(friend.nickname, "skipped",
                                        f"pages {checkpoint_page}-{top - MAX_CATCH_UP_PAGES - 1} are read later"))
        low = theirs_view.low if top else 0
        self._refetch_window(pair, session, False, f_epoch, low, top)

        friend_pages: dict[int, OpenPage | None] = {}
        for number in range(low, top + 1) if top else ():
            friend_pages[number] = self._page_or_problem(pair, state, session, False, f_epoch, number,
                                                         problems, used_keys)
        for number in rotation:
            if number not in friend_pages:
                opened = self._page_or_problem(pair, state, session, False, f_epoch, number, problems, used_keys)
                if opened is not None:
                    friend_pages[number] = opened
        kept = _kept_for(state, f_epoch, friend_pages.values())
        checkpoint = Checkpoint(
            seq=state.theirs.seq if state.theirs.epoch == f_epoch else 0,
            digest=bytes.fromhex(state.theirs.digest) if state.theirs.digest else b"", kept=kept,
        )
        window = {n: p for n, p in friend_pages.items() if low <= n <= top}
        result = check_lane(friend.nickname, window, checkpoint, complete_to=top)
        extra: dict[int, OpenPage | None] = {
            n: p for n, p in friend_pages.items() if not low <= n <= top and p is not None
        }
        rotated = check_lane(friend.nickname, extra, checkpoint) if extra else None
        problems += result.problems
        if rotated is not None:
            problems += [p for p in rotated.problems if p.kind == "rewritten"]
        # The rotation reaches epochs before a restart too: a rewrite there is found all the same.
        for epoch in sorted({e for e, _n in rotation_places if e != f_epoch}):
            old_pages: dict[int, OpenPage | None] = {}
            for e, number in rotation_places:
                if e == epoch:
                    old_pages[number] = self._page_or_problem(pair, state, session, False, e, number, problems,
                                                              used_keys)
            kept_old = _kept_for(state, epoch, old_pages.values())
            present_old = {n: p for n, p in old_pages.items() if p is not None}
            problems += [p for p in check_lane(friend.nickname, present_old, Checkpoint(kept=kept_old)).problems
                         if p.kind == "rewritten"]

        # Our own lane.
        my_messages, my_has_older = self._read_own(pair, state, own, session, older, everything, problems)

        # Save what was verified, publish a new receive key if we consumed an old one.
        self._remember(pair, friend_pages, result, f_epoch, top, len(rotation_places), used_keys, problems, low)

        messages: list[ChatMessage] = []
        new_messages: list[ChatMessage] = []
        now = self.clock()
        mine_at = {(m.epoch, m.seq): m.time for m in my_messages}
        previous: datetime | None = None
        for record, _digest in result.records:
            # Order a friend cannot game: a record never sorts above one its writer wrote before it, nor
            # above our message it claims to have seen. Either claim of an earlier date is flagged.
            shown_at = record.timestamp
            if previous is not None and shown_at < previous:
                problems.append(Problem(friend.nickname, "backdated", f"message #{record.seq} is dated before "
                                        "the message written before it; it is shown in the order written",
                                        previous))
                shown_at = previous
            seen = mine_at.get(record.causal)
            if seen is not None and shown_at < seen:
                problems.append(Problem(friend.nickname, "backdated", f"message #{record.seq} was written after "
                                        f"your message #{record.causal[1]} but is dated before it; it is shown "
                                        "after it", seen))
                shown_at = seen + timedelta(microseconds=1)
            previous = shown_at
            message = ChatMessage(
                sender=friend.nickname, receiver=ME, time=shown_at, type=record.type,
                type_ext=record.type_ext, body=record.body, seq=record.seq, epoch=f_epoch,
                clock_ahead=record.timestamp - now > CLOCK_AHEAD,
            )
            messages.append(message)
            if (f_epoch, record.seq) not in session.returned:
                session.returned.add((f_epoch, record.seq))
                new_messages.append(message)
        messages += my_messages
        if everything:
            messages += self._read_old_epochs(pair, state, session, False, f_epoch, problems)
            messages += self._read_old_epochs(pair, state, session, True, own.epoch, problems)
        if (older or everything) and top:
            self._name_gaps(pair, session, f_epoch, low, top, friend_pages, problems)
        problems = self._second_look(session, problems)
        messages = self._retain(pair, friend_pages, f_epoch, messages, new_messages)
        shown = {id(m) for m in messages}  # _retain keeps the same objects: no field-by-field compare
        new_messages = [m for m in new_messages if id(m) in shown]
        messages, new_messages = self._take_group_records(friend.nickname, messages, new_messages)
        messages.sort(key=lambda m: (m.time, m.outgoing, m.seq))
        self._count_unread(friend, result, f_epoch)
        return ConversationView(
            friend=friend.nickname, messages=messages, problems=_unique(problems), new_messages=new_messages,
            has_older=(theirs_view.low > 1 and top > 0) or my_has_older,
        )

    def _take_group_records(
        self, nickname: str, messages: list[ChatMessage], new_messages: list[ChatMessage]
    ) -> tuple[list[ChatMessage], list[ChatMessage]]:
        """Hand the friend's group invitations and requests for a fresh start to the group engine, answer a
        request for our card and pin the card a friend sent: none of them is a line of this chat."""
        taken = (GROUP_INVITATION, GROUP_REJOIN, CARD_REQUEST, CARD_REPLY)
        records = [m for m in messages if m.type == "setting" and m.type_ext in taken]
        if not records:
            return messages, new_messages
        self.group_invitations += [(nickname, m) for m in records
                                   if not m.outgoing and m.type_ext in (GROUP_INVITATION, GROUP_REJOIN)]
        # A request is answered once: not when our reply is newer, nor twice in a session, nor when it is dated
        # ahead of our clock (a request dated a year ahead would otherwise stay newer than every reply).
        answered = max((m.time for m in records if m.outgoing and m.type_ext == CARD_REPLY), default=None)
        latest = self.clock() + CARD_REQUEST_AHEAD
        for request in (m for m in records if not m.outgoing and m.type_ext == CARD_REQUEST):
            place = (nickname, request.epoch, request.seq)
            if (answered is None or request.time > answered) and request.time <= latest \
                    and place not in self._card_answered:
                self._card_answered.add(place)
                self._card_asked.add(nickname)
        for reply in (m for m in records if not m.outgoing and m.type_ext == CARD_REPLY):
            self._take_card(nickname, reply.body)
        return [m for m in messages if m not in records], [m for m in new_messages if m not in records]

    def _take_card(self, nickname: str, body: bytes) -> None:
        """Keep the signed card line a friend sent, if it is the card we pinned for them (same RSA key and
        static keys); a card under any other key is ignored: pinning a new key is the user's choice only."""
        friend = self.friends.get_friend(nickname)
        if friend.card:
            return
        try:
            card = body.decode("utf-8")
            contact = crypto.parse_contact(card)
        except (UnicodeDecodeError, KeyFormatError):
            log.warning("%s sent a card that does not parse: ignored", nickname)
            return
        if crypto.fingerprint_bytes(contact.public_key).hex() != friend.fingerprint \
                or contact.statics.to_bytes().hex() != friend.statics:
            log.warning("%s sent a card of another key: ignored", nickname)
            return
        self.friends.update(nickname, card=card)

    # -- disappearing messages (the rules are in retention.py) --------------------------------------

    def set_disappearing(self, nickname: str, seconds: int) -> SendResult:
        """Turn disappearing messages on (5 minutes to 4 weeks) or off (0): a signed line both sides see."""
        if seconds and not retention.MIN_SECONDS <= seconds <= retention.MAX_SECONDS:
            raise MessageError("disappearing messages take a timer from 5 minutes to 4 weeks")
        pair = self._pair(nickname)
        with pair.store.lock():
            state = pair.store.load()
            state.settings = {"disappear": seconds, "at": to_micros(self.clock())}
            pair.store.save(state)
        result = self.send_message(retention.setting_body(seconds), nickname, msg_type="setting")
        with pair.store.lock():
            # The timer applies from its own record on: that record's time is the line both sides draw.
            state = pair.store.load()
            state.settings["at"] = to_micros(result.message.time)
            pair.store.save(state)
        return result

    def disappearing(self, nickname: str) -> int:
        """The conversation's timer in seconds (0: off)."""
        return _timer(self._pair(nickname).store.load())

    def _retain(
        self, pair: _Pair, pages: dict[int, OpenPage | None], epoch: int, messages: list[ChatMessage],
        new_messages: list[ChatMessage],
    ) -> list[ChatMessage]:
        """Adopt a newer timer the friend set, note first display, and hide what has expired."""
        now = to_micros(self.clock())
        with pair.store.lock():
            state = pair.store.load()
            changed = False
            settings_at = int(state.settings.get("at", 0))
            for message in messages:
                when = to_micros(message.time)
                if message.type == "setting" and when > settings_at:
                    seconds = retention.parse_setting(message.body)
                    if seconds is not None:
                        state.settings, settings_at, changed = {"disappear": seconds, "at": when}, when, True
            timer = _timer(state)
            theirs = state.theirs
            if timer:
                for number, page in pages.items():
                    if page is None:
                        continue
                    pid = page_id(epoch, number)
                    entries = theirs.record_times.setdefault(pid, [])
                    base = page.header.first_seq
                    for record in page.records:
                        index = record.seq - base
                        while len(entries) <= index:
                            entries.append([0, 0, 0])
                        if not entries[index][0]:
                            entries[index] = [to_micros(record.timestamp), 0, record.seq]
                            changed = True
                shown_now = {(m.epoch, m.seq) for m in new_messages}
                for number, page in pages.items():
                    if page is None:
                        continue
                    entries = theirs.record_times.get(page_id(epoch, number), [])
                    for record in page.records:
                        index = record.seq - page.header.first_seq
                        if (epoch, record.seq) in shown_now and index < len(entries) and not entries[index][1]:
                            entries[index][1] = now
                            changed = True
            if changed:
                pair.store.save(state)
        if not timer:
            return messages

        def expired(message: ChatMessage) -> bool:
            sent = to_micros(message.time)
            if sent < settings_at and message.type != "setting":
                return False  # sent before the timer was set: not a disappearing message
            if message.outgoing:
                return retention.own_expiry(sent, timer) <= now
            return retention.received_expiry(sent, _shown_at(state, message), timer) <= now

        return [m for m in messages if not expired(m)]

    def _expire(self, pair: _Pair) -> None:
        """Delete the keys of every expired message: chain keys move past them, receive keys go."""
        now = to_micros(self.clock())
        publish = False
        with pair.store.lock():
            state = pair.store.load()
            timer = _timer(state)
            own = OwnLane.from_dict(state.mine)
            current = page_id(own.epoch, own.page)
            for pid, times in list(own.record_times.items()):
                count = retention.expired_prefix([retention.own_expiry(t, timer) for t in times], now)
                _advance(own.secrets, pid, count)
                if times and count == len(times) and pid != current:
                    own.secrets[pid] = _EXPIRED
                    del own.record_times[pid]
                    pair.copies.drop("m", *_parse_pid(pid))  # an expired page is never put back
                    epoch, number = pid.split(":")
                    if int(epoch) == own.epoch:
                        own.pages.pop(number, None)  # an expired page is never put back on the ledger
            state.mine = own.to_dict()
            theirs = state.theirs
            gone: set[str] = set()
            for pid, entries in list(theirs.record_times.items()):
                expiries = [retention.received_expiry(e[0], e[1], timer) if e[0] else None for e in entries]
                count = retention.expired_prefix(expiries, now)
                _advance(theirs.secrets, pid, count)
                # An expired message's digest would let whoever opens the store confirm a guess at
                # its text; nothing needs it once its key is gone (its record can no longer be opened).
                for times in entries[:count]:  # [sent, shown, seq]
                    if len(times) > 2 and times[2]:
                        theirs.digests.pop(f"{pid.split(':')[0]}:{times[2]}", None)
                if entries and count == len(entries):
                    gone.add(pid)
                    pair.copies.drop("t", *_parse_pid(pid))
            newest = max((entry.index for entry in state.receive_keys), default=0)
            keep = []
            for entry in state.receive_keys:
                used_by = [pid for pid, index in theirs.page_keys.items() if index == entry.index]
                if used_by and all(pid in gone for pid in used_by):
                    # Nothing keyed to this receive key is readable any more: the key goes, and with it
                    # every way to open those pages again (their chain keys are already past the end).
                    publish = publish or entry.index == newest
                    for pid in used_by:
                        del theirs.page_keys[pid]
                        if pid != page_id(theirs.epoch, theirs.top):
                            theirs.secrets[pid] = _EXPIRED
                            theirs.record_times.pop(pid, None)
                    continue
                keep.append(entry)
            state.receive_keys = keep
            pair.store.save(state)
            if publish:
                self._publish_receive_key(pair, state)
        self._opened.clear()  # nothing opened before expiry may be shown from memory

    def _read_old_epochs(
        self, pair: _Pair, state: ConversationState, session: _Session, mine: bool, current: int,
        problems: list[Problem],
    ) -> list[ChatMessage]:
        """Every message of a lane's epochs before ``current`` (for reading a whole conversation)."""
        messages: list[ChatMessage] = []
        owner = ME if mine else pair.friend.nickname
        used: dict[tuple[int, int], int] = {}
        unopenable = 0
        for epoch in range(1, current):
            session.fresh = set()
            self._fetch({self._address(pair, mine, epoch, 1): (mine, epoch, 1)}, session)
            top = self._discover_top(pair, state, session, mine, epoch, 0, used)
            if not top and (session.mine if mine else session.theirs).pages.get((epoch, 1)) is not None:
                unopenable += 1
                continue
            self._refetch_window(pair, session, mine, epoch, 1, top)
            pages = {n: self._page_or_problem(pair, state, session, mine, epoch, n, [], used)
                     for n in range(1, top + 1)}
            kept = {} if mine else _kept_for(state, epoch, pages.values())
            result = check_lane(owner, pages, Checkpoint(kept=kept), complete_to=top)
            problems += result.problems
            for record, _digest in result.records:
                messages.append(ChatMessage(
                    sender=owner, receiver=ME if not mine else pair.friend.nickname, time=record.timestamp,
                    type=record.type, type_ext=record.type_ext, body=record.body, seq=record.seq, epoch=epoch,
                    status="delivered" if mine else None,
                ))
            first = pages.get(1)
            if not mine and first is not None and epoch + 1 <= current:
                problems.append(Problem(owner, "restart", f"{owner} restarted their side of the conversation"))
        if unopenable:
            problems.append(Problem(owner, "undecryptable", f"{unopenable} earlier epoch(s) of this lane cannot be "
                                    "opened here: their keys were not kept by this profile"))
        return messages

    def _name_gaps(
        self, pair: _Pair, session: _Session, epoch: int, low: int, top: int,
        pages: dict[int, OpenPage | None], problems: list[Problem],
    ) -> None:
        """Loading older messages: a page of the window the ledger does not have is read once more at
        once; still missing, it is named now (which page, which message numbers), not after a second
        update that loading older messages may never get, and never left to look like the lane's start."""
        view = session.theirs
        absent = [n for n in range(max(low, 1), top + 1) if pages.get(n) is None and view.pages.get((epoch, n)) is None]
        if not absent:
            return
        self._fetch({self._address(pair, False, epoch, n): (False, epoch, n) for n in absent}, session)
        named = {p.detail for p in problems if p.kind == "gap" and p.lane == pair.friend.nickname}
        for number in absent:
            if view.pages.get((epoch, number)) is not None:
                continue  # a read that lagged behind: the next update shows the page
            problem = gap_problem(pair.friend.nickname, pages, number)
            if problem.detail not in named:
                problems.append(problem)
            session.suspected.add((problem.lane, problem.kind, problem.detail))  # seen twice: said now

    @staticmethod
    def _second_look(session: _Session, problems: list[Problem]) -> list[Problem]:
        """A missing or older page is said only when a second update still finds it so.

        A read right after a write can return the value before it (the real cluster does so for about
        a second): one such read is no evidence of a rollback or a gap, two in a row are.
        """
        doubtful = {(p.lane, p.kind, p.detail) for p in problems if p.kind in ("rollback", "gap")}
        confirmed = doubtful & session.suspected
        session.suspected = doubtful
        return [p for p in problems if p.kind not in ("rollback", "gap") or (p.lane, p.kind, p.detail) in confirmed]

    def _rotation_places(self, state: ConversationState, base: int, epoch: int) -> list[tuple[int, int]]:
        """The next ``rotation_pages`` older pages of the friend's lane to re-read, in rotation: every
        page of the epochs before a restart, then the current epoch's below the usual window."""
        places = [(int(e), n) for e, top in sorted(state.theirs.epoch_tops.items(), key=lambda kv: int(kv[0]))
                  if int(e) < epoch for n in range(1, top + 1)]
        places += [(epoch, n) for n in range(1, base - 1)]  # below the window of the two newest pages
        if not places or self.rotation_pages < 1:
            return []
        start = state.theirs.rotation % len(places)
        count = min(self.rotation_pages, len(places))
        return sorted({places[(start + i) % len(places)] for i in range(count)})

    def _fetch(
        self, wanted: dict[str, tuple[bool, int, int]], session: _Session, chunks: Iterable[str] = (),
        extra: Sequence[str] = (),
    ) -> dict[str, str | None]:
        """Read, in one round, ``wanted`` pages into the session, ``chunks`` (file chunks of ours) into
        ``session.chunks``, and ``extra`` keys, whose values are returned."""
        chunk_keys = list(chunks)
        if chunk_keys:
            session.chunks = {}
        if not wanted and not chunk_keys and not extra:
            return {}
        values = self.ledger.get_many([*wanted, *chunk_keys, *extra])
        for key in chunk_keys:
            session.chunks[key] = values.get(key)
        for key, (mine, epoch, number) in wanted.items():
            view = session.mine if mine else session.theirs
            view.pages[(epoch, number)] = values.get(key)
            if not mine:
                session.fresh.add((epoch, number))
        return {key: values.get(key) for key in extra}

    def _refetch_window(self, pair: _Pair, session: _Session, mine: bool, epoch: int, low: int, top: int) -> None:
        view = session.mine if mine else session.theirs
        wanted: dict[str, tuple[bool, int, int]] = {}
        for number in range(max(low, 1), top + 1):
            # A miss from an earlier update is asked again: the page may have been written since.
            stale_miss = not mine and view.pages.get((epoch, number)) is None and (epoch, number) not in session.fresh
            if (epoch, number) not in view.pages or stale_miss:
                wanted[self._address(pair, mine, epoch, number)] = (mine, epoch, number)
        self._fetch(wanted, session)

    def _page_or_problem(
        self, pair: _Pair, state: ConversationState, session: _Session, mine: bool, epoch: int, number: int,
        problems: list[Problem], used_keys: dict[tuple[int, int], int],
    ) -> OpenPage | None:
        view = session.mine if mine else session.theirs
        value = view.pages.get((epoch, number))
        if value is None:
            return None
        opened = self._open(pair, state, mine, epoch, number, value, used_keys)
        if isinstance(opened, Problem):
            problems.append(opened)
            return None
        return opened

    def _present(
        self, pair: _Pair, state: ConversationState, session: _Session, mine: bool, epoch: int, number: int,
        used_keys: dict[tuple[int, int], int],
    ) -> bool:
        """True when page ``number`` of ``epoch`` is on the ledger and verifies (junk does not count)."""
        view = session.mine if mine else session.theirs
        value = view.pages.get((epoch, number))
        if value is None:
            return False
        return isinstance(self._open(pair, state, mine, epoch, number, value, used_keys), OpenPage)

    def _exists(self, session: _Session, mine: bool, epoch: int, number: int) -> bool:
        """True when page ``number`` of ``epoch`` holds something shaped like a pair's page.

        Finding a lane's end needs no key: a writer cannot put anything at an address no page has been
        written to (it cannot compute one), so whatever is there was written by the lane's writer, or
        over a page of theirs. Whether it opens and verifies is then said page by page: a reader that
        lost its keys still finds the newest page (and says it cannot open it) instead of stopping at
        the last page it can open; and junk over a page never hides the pages after it.
        """
        value = (session.mine if mine else session.theirs).pages.get((epoch, number))
        if value is None:
            return False
        try:
            return len(self._sealed(value).slots) == 1
        except PageFormatError:
            return False

    def _from_hint(
        self, pair: _Pair, session: _Session, epoch: int, value: str, problems: list[Problem]
    ) -> int:
        """Where a reader with no checkpoint starts its search in the friend's lane, from their page hint
        (``lane.seal_hint``): page h of ``epoch`` if it is there, else 0 (the search from page 1).

        One round reads page h and the HINT_EVERY pages after it; a fresh hint has the newest page
        among them. Nothing is believed from the hint alone: junk there is reported, and a hint naming
        a page that is not there (a lost write, a stale read) or another epoch is only not used.
        """
        try:
            hint_epoch, number = open_hint(pair.address_key, pair.fingerprint, value)
        except PageFormatError as exc:
            problems.append(Problem(pair.friend.nickname, "damaged", f"the lane's page hint is not one "
                                    f"({exc}): its newest page was searched for from page 1"))
            return 0
        if hint_epoch != epoch:
            return 0
        self._fetch({
            self._address(pair, False, epoch, n): (False, epoch, n)
            for n in range(number, number + HINT_EVERY + 1) if (epoch, n) not in session.fresh
        }, session)
        return number if self._exists(session, False, epoch, number) else 0

    def _discover_top(
        self, pair: _Pair, state: ConversationState, session: _Session, mine: bool, epoch: int, base: int,
        used_keys: dict[tuple[int, int], int], steps: Sequence[int] = _EXPONENTIAL,
    ) -> int:
        """The newest page of a lane's epoch that verifies; the stored hint is only a starting point.

        ``steps``: the first round's probes past the start (a page hint's start probes the pages up to
        the writer's next hint; if all are there, the search goes on as from any other start).
        """
        view = session.mine if mine else session.theirs
        top = base if base and self._exists(session, mine, epoch, base) else 0
        if not top:
            # The hint's page is gone or junk: the newest verified page below it, from what was read.
            candidates = [n for (e, n) in view.pages if e == epoch and n < max(base, 1) + 3]
            for number in sorted(candidates, reverse=True):
                if self._exists(session, mine, epoch, number):
                    top = number
                    break
        # Pages are written in order, so "page n verifies" is true up to the lane's top and false past
        # it. One round probes top + 1, 2, 4 ... 2**20; each further round splits the range that is left
        # into 64: a lane of a million pages is found in four rounds, a thousand in three.
        low, high = top, 0  # low verifies (or is 0); high, once known, does not
        # A page hint's steps were read in the hint's own round (chat._from_hint): that iteration makes no
        # read, so the rounds of reads stay MAX_PROBE_ROUNDS past the first.
        rounds = MAX_PROBE_ROUNDS + (0 if steps is _EXPONENTIAL else 1)
        for _round in range(rounds):
            if high == 0:
                if (epoch, top + 1) in session.fresh and view.pages.get((epoch, top + 1)) is None:
                    # The next page is absent: the lane has not grown. (Junk there does not stop the
                    # search: a writer must not hide what comes after it.)
                    return top
                probes = [low + step for step in steps]
                steps = _EXPONENTIAL
            else:
                span = high - low
                probes = sorted({low + max(1, span * i // _SPLIT) for i in range(1, _SPLIT)} - {high})
                probes = [n for n in probes if low < n < high]
                if not probes:
                    return low
            # A page found missing in an earlier update may exist now: never trust an old miss.
            self._fetch({
                self._address(pair, mine, epoch, n): (mine, epoch, n)
                for n in probes if (epoch, n) not in session.fresh
            }, session)
            present = [n for n in probes if self._exists(session, mine, epoch, n)]
            if not present:
                if high == 0:
                    return low
                high = min(n for n in probes if n > low)
                continue
            low = max(present)
            above = [n for n in probes if n > low]
            high = min(above) if above else (0 if high == 0 else high)
            if high == low + 1:
                return low
        owner = ME if mine else pair.friend.nickname
        self._notes.append(Problem(owner, "skipped", f"the lane goes on past page {low}: the rest is read next time"))
        return low

    def _follow_restarts(
        self, pair: _Pair, state: ConversationState, session: _Session, epoch: int, problems: list[Problem],
        used_keys: dict[tuple[int, int], int],
    ) -> int:
        """The friend's current epoch: a verified page 1 of the next epoch is an honest restart."""
        view = session.theirs
        if not state.theirs.epoch:
            # No checkpoint: the newest epoch whose first page verifies.
            found = [e for e in range(1, _MAX_EPOCH_PROBE + 1)
                     if self._exists(session, False, e, 1)]
            epoch = max(found, default=1)
        for _restart in range(MAX_RESTARTS_PER_UPDATE):
            key = self._address(pair, False, epoch + 1, 1)
            if (epoch + 1, 1) not in view.pages:
                self._fetch({key: (False, epoch + 1, 1)}, session)
            if not self._exists(session, False, epoch + 1, 1):
                if view.pages.get((epoch + 1, 1)) is None:
                    break
                # Something that is not a verified page sits where a restart would begin: say so, and
                # look past it, since a writer may have overwritten a genuine restart.
                value = view.pages[(epoch + 1, 1)]
                assert value is not None
                opened = self._open(pair, state, False, epoch + 1, 1, value, used_keys)
                detail = opened.detail if isinstance(opened, Problem) else ""
                problems.append(Problem(pair.friend.nickname, "forged" if "signed" in detail else "damaged",
                                        f"a restart of this lane may be hidden: epoch {epoch + 1}, {detail}"))
                later = {self._address(pair, False, epoch + 1, n): (False, epoch + 1, n) for n in (2, 3)}
                self._fetch(later, session)
                if not any(self._exists(session, False, epoch + 1, n) for n in (2, 3)):
                    break
            epoch += 1
            if state.theirs.epoch and epoch > state.theirs.epoch:
                problems.append(Problem(pair.friend.nickname, "restart",
                                        f"{pair.friend.nickname} restarted their side of the conversation"))
        else:
            problems.append(Problem(pair.friend.nickname, "skipped",
                                    "more restarts than one update follows: the rest is read next time"))
        return epoch

    def _own_rotation(self, pair: _Pair, state: ConversationState, own: OwnLane) -> list[int]:
        """The next few of our own kept pages to compare with the ledger, in rotation."""
        kept = pair.copies.numbers("m", own.epoch)
        if not kept or self.rotation_pages < 1:
            return []
        start = state.theirs.rotation % len(kept)
        return sorted({kept[(start + i) % len(kept)] for i in range(min(self.rotation_pages, len(kept)))})

    def _repair(
        self, pair: _Pair, own: OwnLane, session: _Session, friend_epoch: int, friend_top: int,
        problems: list[Problem],
    ) -> set[int]:
        """Put back, from our kept copies, pages the ledger lost, damaged, rolled back or altered.

        Our own lane: any page but one not yet confirmed (the outbox re-sends those). The friend's:
        only pages a later page of theirs already follows: their writer never changes them again, so a
        re-write can never roll back the friend's current page. Newest first, a few per update.
        Returns the numbers of our own pages being restored (their messages are not shown as ✓).
        """
        repairs: list[tuple[bool, int, int, str]] = []
        unconfirmed = set(own.unconfirmed())
        now = self.clock()
        settle = timedelta(seconds=self.ledger.stale_read_window_s)
        for (epoch, number), remote in session.mine.pages.items():
            if epoch != own.epoch or number > own.page or number in unconfirmed:
                continue
            written = own.written_at.get(str(number))
            if written is not None and now - parse_timestamp(written) < settle:
                continue  # read within the ledger's stale window of our write: it may not show it yet
            local = own.pages.get(str(number)) if number == own.page else pair.copies.get("m", epoch, number)
            if local is None or remote == local:
                continue
            if remote is not None and self._is_mine(pair, epoch, number, remote) and len(remote) > len(local):
                continue  # another copy of us wrote more: that is a restart's business, not a repair's
            repairs.append((True, epoch, number, local))
        for (epoch, number), remote in session.theirs.pages.items():
            if (epoch, number) not in session.fresh or (epoch == friend_epoch and number >= friend_top):
                continue
            kept = pair.copies.get("t", epoch, number)
            if kept is not None and remote != kept:
                repairs.append((False, epoch, number, kept))
        # A read right after a write may return the value before it: a page is put back only when two
        # updates in a row find it lost or different (a lasting loss), never on one stale read.
        seen_now = {(mine, epoch, number) for mine, epoch, number, _value in repairs}
        repairs = [r for r in repairs if (r[0], r[1], r[2]) in session.repair_suspects]
        session.repair_suspects = seen_now
        doubtful = {number for mine, _epoch, number in seen_now if mine}  # never shown as ✓ meanwhile
        if not repairs:
            return doubtful
        repairs.sort(key=lambda r: (r[1], r[2]), reverse=True)
        problems.append(Problem(ME, "restoring", f"restoring {len(repairs)} page(s) to the ledger"))
        for mine, epoch, number, value in repairs[:MAX_REPAIRS_PER_UPDATE]:
            try:
                self.ledger.set(self._address(pair, mine, epoch, number), value)
            except LedgerError as exc:
                log.warning("restoring a page failed: %s", exc)
                continue
            view = session.mine if mine else session.theirs
            view.pages.pop((epoch, number), None)  # read it again next time, never trust our own write
        return doubtful

    def _chunk_reads(self, pair: _Pair, own: OwnLane, session: _Session) -> list[str]:
        """Our file chunks this update reads: those not confirmed yet, those found lost once, and
        every ``CHUNK_CHECK_EVERY`` updates one more of the kept ones, in rotation."""
        session.chunks = {}
        session.updates += 1
        keys = {*own.chunks, *session.chunk_suspects}
        if (session.updates - 1) % CHUNK_CHECK_EVERY == 0:
            kept = pair.copies.chunk_keys()
            if kept:
                keys.add(kept[(session.updates // CHUNK_CHECK_EVERY) % len(kept)])
        return sorted(keys)

    def _deliver_chunks(self, pair: _Pair, session: _Session, problems: list[Problem]) -> set[str]:
        """Confirm our file chunks a read returned, re-send overdue ones, and put back (from the kept
        copies) kept chunks that two updates in a row found lost or altered. Returns the chunks still
        not confirmed."""
        now = self.clock()
        with pair.store.lock():
            state = pair.store.load()
            own = OwnLane.from_dict(state.mine)
            if not session.chunks:
                return set(own.chunks)
            changed = False
            lost: set[str] = set()
            for key, remote in session.chunks.items():
                kept = pair.copies.get_chunk(key)
                if kept is None or remote == kept:
                    changed = changed or own.chunks.pop(key, None) is not None  # nothing (more) to send
                    continue
                if key not in own.chunks:
                    lost.add(key)
                elif self._overdue(own.chunks[key], now):
                    try:
                        self.ledger.set(key, kept)
                        own.chunks[key] = format_timestamp(now)
                    except LedgerError as exc:
                        log.warning("re-sending a file chunk failed: %s", exc)
                    changed = True
            # As for pages: a chunk is put back only when a second update in a row finds it lost.
            repairs = sorted(lost & session.chunk_suspects)[:MAX_REPAIRS_PER_UPDATE]
            session.chunk_suspects = lost
            if lost:
                problems.append(Problem(ME, "restoring", f"restoring {len(lost)} file chunk(s) to the ledger"))
            for key in repairs:
                kept = pair.copies.get_chunk(key)
                try:
                    if kept is not None:
                        self.ledger.set(key, kept)
                except LedgerError as exc:
                    log.warning("restoring a file chunk failed: %s", exc)
            if changed:
                state.mine = own.to_dict()
                pair.store.save(state)
            return set(own.chunks)

    def _read_own(
        self, pair: _Pair, state: ConversationState, own: OwnLane, session: _Session, older: bool,
        everything: bool, problems: list[Problem],
    ) -> tuple[list[ChatMessage], bool]:
        """Our own messages in the window, with their delivery status; re-send what is overdue."""
        view = session.mine
        if own.epoch == 0:
            return [], False
        # Another copy of this identity wrote past our state (a backup restored, a second machine):
        # never write over it; the next send restarts the lane in a new epoch.
        self._lane_checked.add(pair.conversation)
        if self._behind(pair, own, view.pages) and not own.restart_needed:
            with pair.store.lock():
                fresh = pair.store.load()
                fresh_own = OwnLane.from_dict(fresh.mine)
                # Unless this profile's other process wrote it since this update began.
                if (fresh_own.epoch, fresh_own.page) == (own.epoch, own.page):
                    fresh_own.restart_needed = own.restart_needed = "another copy of this profile wrote here"
                    fresh.mine = fresh_own.to_dict()
                    pair.store.save(fresh)
                    problems.append(Problem(
                        ME, "restart", "this profile is behind its own lane (restored from a backup, or used "
                        "on another machine): your next message starts a new epoch",
                    ))
        if everything:
            view.low = 1
        elif view.low == 0 or view.epoch != own.epoch:
            view.low = max(own.page - 1, 1)
        elif older:
            view.low = max(view.low - 1, 1)
        view.epoch, view.top = own.epoch, own.page
        missing = [n for n in range(view.low, own.page + 1) if str(n) not in own.pages]
        self._refetch_window(pair, session, True, own.epoch, min(missing, default=1), max(missing, default=0))
        confirmed = self._confirm(pair, own, session)
        chunks_pending = self._deliver_chunks(pair, session, problems)
        now = self.clock()
        messages: list[ChatMessage] = []
        pages_of: dict[int, int] = {}  # our sequence number -> its page
        used: dict[tuple[int, int], int] = {}
        for number in range(view.low, own.page + 1):
            value = own.pages.get(str(number)) or view.pages.get((own.epoch, number))
            if value is None:
                problems.append(Problem(ME, "gap", f"your page {number} is missing from the ledger"))
                continue
            opened = self._open(pair, state, True, own.epoch, number, value, used)
            if isinstance(opened, Problem):
                problems.append(opened)
                continue
            for record in opened.records:
                pages_of[record.seq] = number
                status = "delivered" if record.seq <= confirmed else \
                    "undelivered" if self._undelivered(record.timestamp, now) else "pending"
                messages.append(ChatMessage(
                    sender=ME, receiver=pair.friend.nickname, time=record.timestamp, type=record.type,
                    type_ext=record.type_ext, body=record.body, seq=record.seq, status=status, epoch=own.epoch,
                ))
        friend_top = max(session.theirs.top, state.theirs.top if state.theirs.epoch == session.theirs.epoch else 0)
        restoring = self._repair(pair, own, session, session.theirs.epoch, friend_top, problems)
        if restoring:
            # Being put back on the ledger: not delivered until a read returns them again (no false ✓).
            messages = [replace(m, status="pending") if pages_of.get(m.seq) in restoring else m for m in messages]
        if chunks_pending:
            # A file is delivered when its message and every one of its chunks are.
            messages = [replace(m, status="undelivered" if self._undelivered(m.time, now) else "pending")
                        if m.status == "delivered" and _chunk_keys(m) & chunks_pending else m for m in messages]
        return messages, view.low > 1

    def _confirm(self, pair: _Pair, own: OwnLane, session: _Session) -> int:
        """Mark own messages delivered when a ledger read returned them; re-send overdue pages."""
        seen: set[int] = set()
        overdue: list[str] = []
        exact: set[str] = set()  # pages a read returned exactly as we wrote them
        now = self.clock()
        for page_number in own.unconfirmed():
            local_value = own.pages[str(page_number)]
            local = self._sealed(local_value)
            first = own.last_seq[str(page_number)] - len(local.records) + 1
            remote_value = session.mine.pages.get((own.epoch, page_number))
            remote: list[bytes] = []
            if remote_value is not None:
                try:
                    remote = self._sealed(remote_value).records
                except PageFormatError:
                    remote = []
            matching = [first + i for i, rec in enumerate(local.records) if i < len(remote) and remote[i] == rec]
            seen.update(matching)
            if remote_value == local_value:
                exact.add(str(page_number))
            elif (len(matching) != len(local.records) or str(page_number) in own.unseen) \
                    and self._overdue(own.written_at.get(str(page_number)), now):
                overdue.append(str(page_number))
        newly = own.confirmed
        while newly + 1 in seen:
            newly += 1
        if newly == own.confirmed and not overdue and not exact & set(own.unseen):
            return own.confirmed
        with pair.store.lock():
            state = pair.store.load()
            fresh = OwnLane.from_dict(state.mine)
            if fresh.epoch != own.epoch:
                return own.confirmed
            fresh.confirmed = max(fresh.confirmed, newly)
            fresh.unseen = [n for n in fresh.unseen if n not in exact]
            for number in overdue if not fresh.restart_needed else []:  # never over another copy's pages
                value = fresh.pages.get(number)
                if value is None:
                    continue
                try:
                    self.ledger.set(self._address(pair, True, fresh.epoch, int(number)), value)
                    fresh.written_at[number] = format_timestamp(self.clock())
                except LedgerError as exc:
                    log.warning("re-send failed: %s", exc)
                # Re-read re-sent pages next time instead of trusting this session's old copy.
                session.mine.pages.pop((fresh.epoch, int(number)), None)
            fresh.prune()
            state.mine = fresh.to_dict()
            pair.store.save(state)
            own.confirmed = fresh.confirmed
            return fresh.confirmed

    def _overdue(self, written: str | None, now: datetime) -> bool:
        """True when something we wrote at ``written`` (None or "": never) and no read returned yet is
        to be written again: never written, written by an earlier session, or ``resend_after`` ago."""
        if not written:
            return True
        when = parse_timestamp(written)
        return when < self._session_start or now - when >= self.resend_after

    def _undelivered(self, sent: datetime, now: datetime) -> bool:
        """A message sent at ``sent`` and still not returned by a read is "not delivered yet"."""
        limit = self.resend_after * UNDELIVERED_AFTER_RESENDS
        return bool(limit) and now - sent >= limit

    def _remember(
        self, pair: _Pair, pages: dict[int, OpenPage | None], result: object, epoch: int, top: int,
        rotation_count: int, used_keys: dict[tuple[int, int], int], problems: list[Problem], window_low: int,
    ) -> None:
        """Keep what this update verified: checkpoint, digests, page secrets, the friend's newest key."""
        from reschat.lane import LaneResult

        assert isinstance(result, LaneResult)
        opened = {n: p for n, p in pages.items() if p is not None}
        publish = False
        with pair.store.lock():
            state = pair.store.load()
            theirs = state.theirs
            changed = False
            if self._refusals:
                state.refused.update(self._refusals)
                while len(state.refused) > MAX_REFUSED:
                    del state.refused[next(iter(state.refused))]
                self._refusals = {}
                changed = True
            if theirs.epoch != epoch and epoch >= theirs.epoch:
                if theirs.epoch:
                    theirs.restarts_seen += 1
                    theirs.epoch_tops[str(theirs.epoch)] = theirs.top
                theirs.epoch, theirs.top, theirs.seq, theirs.digest = epoch, 0, 0, ""
                changed = True
            for number, page in opened.items():
                pid = page_id(epoch, number)
                following = opened.get(number + 1)
                if following is not None and following.header.link == page.last_digest \
                        and following.header.first_seq == page.last_seq + 1 \
                        and not pair.copies.has("t", epoch, number):
                    # Final, and whole: the next page links to its last record (a stale, shorter read
                    # of it would not match). Kept, to heal a ledger that loses it.
                    pair.copies.put("t", epoch, number, page.value)
                if pid not in theirs.secrets:
                    theirs.secrets[pid] = page.keys.to_text()
                    if used_keys.get((epoch, number), 0) > 0:
                        theirs.page_keys[pid] = used_keys[(epoch, number)]
                    changed = True
            rewritten = {p.detail for p in problems if p.kind == "rewritten"}
            for record, digest in result.records:
                key = f"{epoch}:{record.seq}"
                if key not in theirs.digests:
                    theirs.digests[key] = digest.hex()
                    changed = True
            if result.newest and result.newest[0] > theirs.seq and not rewritten:
                theirs.seq, theirs.digest = result.newest[0], result.newest[1].hex()
                changed = True
            verified_top = max((n for n in opened if n <= top), default=0)
            if verified_top > theirs.top:
                theirs.top = verified_top
                changed = True
            newest_page = opened.get(top) if top else None
            announced_at = _parse_pid(theirs.receive_key_at)
            if newest_page is not None and (epoch, top) > announced_at \
                    and theirs.receive_key != newest_page.header.next_receive_key.hex():
                theirs.receive_key = newest_page.header.next_receive_key.hex()
                theirs.receive_key_at = page_id(epoch, top)
                changed = True
            if rotation_count:
                theirs.rotation += rotation_count
                changed = True
            # Receive keys the friend has moved past are deleted: their pages now use a newer one.
            used = [used_keys[(epoch, n)] for n in sorted(opened) if (epoch, n) in used_keys]
            # Only when every page of the window opened: a page missing or damaged in this update (a
            # writer, a stale read) may come back keyed to an older key, which must still be there.
            complete = bool(top) and all(pages.get(n) is not None for n in range(max(window_low, 1), top + 1))
            newest_used = max((i for i in used if i > 0), default=0) if complete else 0
            if newest_used:
                before = len(state.receive_keys)
                state.receive_keys = [e for e in state.receive_keys if e.index >= newest_used]
                changed = changed or len(state.receive_keys) != before
                held = {e.index for e in state.receive_keys}
                # Which key opened a page matters only while that key exists (disappearing messages).
                theirs.page_keys = {pid: i for pid, i in theirs.page_keys.items() if i in held}
            # A reader who only reads still moves on. A page keyed to our card's static keys, when we
            # have announced no receive key yet, gets one announced in our lane; and once the friend has
            # keyed ROTATE_AFTER_PAGES pages to our newest key, a fresh one follows (post-compromise
            # security for the side that only reads). A key announced but not used yet is still
            # pending: announcing another would only grow both lanes and stores (one write at most).
            newest_own = max((e.index for e in state.receive_keys), default=0)
            uses_of_newest = sum(1 for i in theirs.page_keys.values() if i == newest_own) if newest_own else 0
            for number in sorted(opened):
                index = used_keys.get((epoch, number))
                pid = page_id(epoch, number)
                if index is None or index < 0 or pid in state.moved_on:
                    continue
                stale_static = index == 0 and newest_own == 0
                worn = newest_own > 0 and index == newest_own and uses_of_newest >= ROTATE_AFTER_PAGES
                if stale_static or worn:
                    state.moved_on = [*state.moved_on[-63:], pid]
                    publish = True
                    changed = True
                    break
            if publish:
                self._publish_receive_key(pair, state)
            elif changed:
                pair.store.save(state)

    def _count_unread(self, friend: Friend, result: object, epoch: int) -> None:
        from reschat.lane import LaneResult

        assert isinstance(result, LaneResult)
        read_epoch, read_seq = (int(x) for x in friend.read.split(":"))
        unread = sum(1 for r, _d in result.records if (epoch, r.seq) > (read_epoch, read_seq))
        newest = f"{epoch}:{result.newest[0]}" if result.newest else friend.seen
        if unread != friend.unread or newest != friend.seen:
            self.friends.update(friend.nickname, unread=unread, seen=newest,
                                updated=format_timestamp(self.clock()))

    def mark_read(self, nickname: str) -> None:
        """Everything received from ``nickname`` so far has been shown."""
        friend = self.friends.get_friend(nickname)
        self.friends.update(nickname, read=friend.seen, unread=0)

    def unread_counts(self) -> dict[str, int]:
        """Unread messages per friend, from one verified update of each friend's lane."""
        counts: dict[str, int] = {}
        for friend in self.friends.all_friends():
            try:
                self.get_update(friend.nickname)
            except (KeyFormatError, ProfileError, LedgerError) as exc:
                log.warning("cannot update %s: %s", friend.nickname, exc)
            counts[friend.nickname] = self.friends.get_friend(friend.nickname).unread
        return counts

    # -- delivery across friends -----------------------------------------------------------------

    def pending_counts(self) -> dict[str, int]:
        """Per friend, our messages that no ledger read has returned yet (from the outbox: no read)."""
        counts: dict[str, int] = {}
        for friend in self.friends.all_friends():
            try:
                own = self.own_lane(friend.nickname)
            except (KeyFormatError, ProfileError) as exc:
                log.warning("cannot look at the outbox of %s: %s", friend.nickname, exc)
                continue
            if own.unconfirmed_messages():
                counts[friend.nickname] = own.unconfirmed_messages()
        return counts

    def deliver_pending(self, *, besides: str | None = None) -> dict[str, int]:
        """Send what waits in the outbox of every friend (but ``besides``, just updated by the caller),
        whether or not their chat is open: one update of each conversation whose outbox holds
        unconfirmed pages or file chunks (a page written by an earlier session and not returned by a
        read is re-sent at once). Returns what is still unconfirmed, per friend."""
        for friend in self.friends.all_friends():
            if friend.nickname == besides:
                continue
            try:
                own = self.own_lane(friend.nickname)
                if own.unconfirmed() or own.chunks:
                    self.get_update(friend.nickname)
            except (KeyFormatError, ProfileError) as exc:  # a ledger that fails is the caller's to report
                log.warning("cannot deliver to %s yet: %s", friend.nickname, exc)
        return self.pending_counts()

    # -- files (the format is described in files.py) ------------------------------------------------

    def send_file(self, nickname: str, path: Path) -> SendResult:
        """Send the file at ``path`` (at most 5 MiB) to ``nickname``: encrypted chunks, then a signed manifest."""
        self.friends.get_friend(nickname)  # an unknown friend fails before anything is written
        prepared = files.prepare_file(path, self.randfunc)
        pair = self._pair(nickname)
        # The chunks go through the outbox as pages do: kept (sealed) before they are written, re-sent
        # until a read returns them, and put back from the kept copy if the ledger loses them later.
        for key, value in prepared.chunks:
            pair.copies.put_chunk(key, value)
        self._mark_chunks(pair, {key: "" for key, _value in prepared.chunks})
        error: LedgerError | None = None
        try:
            files.store_chunks(self.ledger, prepared.chunks)
        except LedgerError as exc:
            log.warning("file chunks deferred: %s", exc)
            error = exc
        else:
            written = format_timestamp(self.clock())
            self._mark_chunks(pair, {key: written for key, _value in prepared.chunks})
        result = self.send_message(prepared.manifest, nickname, msg_type=files.FILE_TYPE, type_ext=prepared.type_ext)
        return SendResult(message=result.message, error=result.error or error)

    def _mark_chunks(self, pair: _Pair, written: dict[str, str]) -> None:
        with pair.store.lock():
            state = pair.store.load()
            own = OwnLane.from_dict(state.mine)
            own.chunks.update(written)
            state.mine = own.to_dict()
            pair.store.save(state)

    def save_file(self, message: ChatMessage, downloads_dir: Path) -> Path:
        """Verify the file of a ``file`` message and save it as a new file in ``downloads_dir``."""
        return files.save_file(self.ledger, message, downloads_dir)


class _Unopenable(Exception):
    pass


class _Expired(Exception):
    pass


class _Budget(Exception):
    pass


#: What the store keeps of a page whose every message disappeared: no key, only the fact.
_EXPIRED = "expired"


def _timer(state: ConversationState) -> int:
    value = state.settings.get("disappear", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _kept_for(state: ConversationState, epoch: int, pages: Iterable[OpenPage | None]) -> dict[int, bytes]:
    """The kept digests of the friend's records in ``pages`` (sequence number -> digest): all that
    ``check_lane`` compares. Looked up one by one, not by decoding every digest ever kept, which grows
    with the history and would make every update, an idle one too, cost more as the lane grows."""
    kept: dict[int, bytes] = {}
    for page in pages:
        for record in page.records if page is not None else ():
            text = state.theirs.digests.get(f"{epoch}:{record.seq}")
            if text is not None:
                kept[record.seq] = bytes.fromhex(text)
    return kept


def _kept_digests(state: ConversationState, mine: bool, epoch: int) -> Callable[[int], bytes | None]:
    """The digests this profile kept of a lane's records, by sequence number (``lane.open_page``).

    The friend's lane: every record verified and kept by an earlier update (``FriendLane.digests``,
    written only from verified pages). Our own lane: our newest record, which this profile signed.
    Both come from the sealed key store, which nobody without the store key can alter.
    """
    if mine:
        own = state.mine
        head, newest = own.get("head"), own.get("seq")
        if own.get("epoch") != epoch or not isinstance(head, str) or not isinstance(newest, int):
            return lambda _seq: None

        def own_digest(seq: int) -> bytes | None:
            return bytes.fromhex(head) if seq == newest else None

        return own_digest
    digests = state.theirs.digests

    def kept(seq: int) -> bytes | None:
        text = digests.get(f"{epoch}:{seq}")
        try:
            return bytes.fromhex(text) if text else None
        except ValueError:
            return None

    return kept


def _parses(value: str | None) -> bool:
    if value is None:
        return False
    try:
        SealedPage.from_string(value)
    except PageFormatError:
        return False
    return True


def _parse_pid(text: str) -> tuple[int, int]:
    try:
        epoch, number = text.split(":")
        return int(epoch), int(number)
    except ValueError:
        return (0, 0)


def _shown_at(state: ConversationState, message: ChatMessage) -> int:
    """When a friend's message was first displayed (0: never), from the key store."""
    prefix = f"{message.epoch}:"
    for pid, entries in state.theirs.record_times.items():
        if pid.startswith(prefix):
            for entry in entries:
                if len(entry) == 3 and entry[2] == message.seq:
                    return entry[1]
    return 0


def _advance(secrets: dict[str, str], pid: str, count: int) -> None:
    """Keep only the keys of records from ``count`` on for page ``pid``."""
    stored = secrets.get(pid)
    if stored is None or stored == _EXPIRED or count == 0:
        return
    keys = PageKeys.from_text(stored)
    if count > keys.start:
        secrets[pid] = keys.advanced(count).to_text()


def _chunk_keys(message: ChatMessage) -> set[str]:
    """The ledger keys of the chunks of a ``file`` message (none for any other message)."""
    if message.type != files.FILE_TYPE:
        return set()
    try:
        return set(files.describe(message).chunk_keys)
    except PageFormatError:
        return set()


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str, str]] = set()
    result = []
    for problem in problems:
        if problem.kind == "expired":
            continue  # disappeared by the user's choice: nothing to report
        key = (problem.lane, problem.kind, problem.detail)
        if key not in seen:
            seen.add(key)
            result.append(problem)
    return result


def peek_unread_counts(friends: FriendStore) -> dict[str, int]:
    """Unread counts without the password: those of each friend's last verified update."""
    return {friend.nickname: friend.unread for friend in friends.all_friends()}


__all__ = [
    "GENESIS_HASH",
    "MAX_TEXT_BYTES",
    "ChatMessage",
    "ChatService",
    "ConversationView",
    "IntegrityProblem",
    "SendResult",
    "peek_unread_counts",
    "utc_now",
]
