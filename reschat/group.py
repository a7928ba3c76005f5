"""Group conversations on protocol 2: the same pages, lanes, signatures and key schedule as pairs.

How a group lives on the ledger
-------------------------------
A group has a random id and, for each *membership epoch*, a random 32-byte group secret that only
the members of that epoch hold. Each member writes only its own lane of the group; page n of
member W's lane in epoch e lives at ``schedule.page_address(address key of e, W, e, n)``, where the
address key comes from the epoch's secret (``schedule.group_keys``). New members, removals and
departures start a new epoch, so the addresses change with each membership and link to no earlier
one. A page is a protocol-2 page (``lane.new_page``) of kind ``GROUP_KIND``: its header names the
epoch it was written in, and it has one KEM slot per other member of that epoch, in the order of
their fingerprints, each to the receive key that member last announced in its own lane of the group
(or to its card's static keys before any announcement). Records are signed by their writer
(RSA-PSS), so every line is attributed to one member, members who are not friends included.

Membership
----------
Every change is a ``setting`` record of an admin's lane (``CHANGE_EXT``) that names the epoch it
starts and the whole membership of that epoch. The admin writes it twice:

1. in its lane of the current epoch, readable by every current member (so a removed member learns
   of the removal), followed by a page keyed to the *remaining* members only that carries the new
   epoch's secret (``KEY_EXT``): a removed member gets no slot in it;
2. as the first record of its lane of the new epoch, followed by the cards of all members
   (``ROSTER_EXT``), so that a member who is not your friend comes with a card that the admin's
   signature vouches for.

A member added to the group receives the new epoch's secret through an invitation (``INVITE_EXT``)
in the admin's pairwise lane with them (an admin adds only friends), and so can read nothing of any
earlier epoch. Since it cannot read the change the others took either, each member of the epoch before
vouches to it for that membership (``WITNESS_EXT``, ``_write_witness``): in its own lane of the new epoch
and on the epoch's *board*, where a member the new one was not told of can be found. A witness's writer,
who holds the epoch's secret and names the new member, is counted in even when the inviting admin left
it out, provided every member the new one was given that vouched names it too (``_recount``); so counted,
it is provisional until the admin's next change names it (``_checking``).

A member leaves with a signed ``LEAVE_EXT`` record in its own lane; the first remaining admin (or, when
no admin remains, the longest-standing member, who thereby becomes admin) starts the epoch without them
(taking out only members whose leave record was read). Changes by non-admins, changes naming an epoch
other than the next one, a second different change of one admin for the same epoch, and anything that
does not verify are reported and ignored. When two admins start the same epoch, the one with the lower
fingerprint wins; the other admin's change is applied again on top of it as the following epoch. A member
that had moved to the losing epoch loses it together with every epoch it adopted on top of it: it keeps
reading, MAX_RACE_EPOCHS back at most, the lane of each other admin of an older epoch whom it has not seen
writing in a later one (``_unsettled``), so that an admin that made several changes before it read the
winner's loses them all and applies them again in order. Each member writes its messages of the lost epochs
again in the winner's, with their first time, keyed only to the members both of the epoch each was first
written in and of the winner's (``_send_again``), followed by the writer's signed word naming those
records and their readers (``PASSED_EXT``), on which a member left out passes over them instead of waiting
for them as a gap (``_passed_over``). A member added
in the losing epoch, who cannot read the epoch before it, loses that epoch when the losing admin adds it
again (``_newcomer_lost``). A message is new to a reader once per writer, date and content, so a copy sent
again is not new to whoever was shown the first. What a member taken out writes in its old lane after we
adopted the change is neither shown nor taken.

Order
-----
A group record's causal pair (``Record.causal``, the pair's field, same bytes) names ONE record its writer
had read: the newest, by its date in its lane, of the messages of the other members it read (its own lane
excluded, and a date more than ``CLOCK_AHEAD`` past the writer's clock when read left out), kept as
``GroupState.newest_seen``. The first number packs that record's lane, its index + 1 in its epoch's
membership sorted by fingerprint (1-32; 0 names nobody), the first byte of its writer's fingerprint, and how
many epochs before the record's own it was written (``encode_mark``); the second is its sequence number;
a second number of 0 names nothing (so every group record written before the mark, (epoch, 0), is read and
not checked). The rule each reader applies (``GroupService._order``): a record's *lane time* is its date,
raised to the lane time of the record before it in its lane (a record dated before it is reported
``backdated`` and shown in the order written); when the record named was read here and its lane time is
after the new record's, the new one is reported ``backdated`` and shown just after it. A mark that names
nobody in the membership we hold, its writer's own lane, an epoch we cannot read, or a record we did not
read (or whose time is no longer among the MAX_LANE_TIMES kept per lane, for the lanes of the current epoch
and the MAX_MARK_EPOCHS before it) is not checked, and nothing else moves for it: the mark is its writer's
word, checked only against what we read ourselves.

Fresh starts
------------
A member whose state is behind its own lane on the ledger (a group file restored from an older copy, the
profile used on another machine: our writer tag on a page past our state) writes nothing more in that
epoch's lane (``GroupState.behind``): it would give pages others read a second version, and it cannot read
its own lost pages to go on after them. It asks each admin who is its friend, with a signed ``REJOIN_EXT``
record in their pairwise lane, for a fresh start; an admin starts the next epoch with the same membership
(action ``rejoin``, checked by every member as any change) and invites it again, as ``add`` does for a
member already in the group (one whose group file is gone). Everyone's lanes begin again in that epoch,
so no (epoch, writer, page) is written twice, and the member's pages are keyed to its card until it
announces a receive key there.

Limits: see the README ("Groups").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes

from reschat import crypto, files, kem, retention, schedule
from reschat.chat import (
    CLOCK_AHEAD,
    MAX_PAYLOAD_BYTES,
    MAX_TEXT_BYTES,
    ME,
    ChatMessage,
    ChatService,
    ConversationView,
    SendResult,
)
from reschat.errors import (
    DuplicateFriendError,
    KeyFormatError,
    LedgerError,
    MessageError,
    PageFormatError,
    ProfileError,
    UnknownFriendError,
)
from reschat.friends import Friend, validate_nickname
from reschat.groupstate import (
    ACTIONS,
    CHANGE_EXT,
    GROUP_KIND,
    INVITE_EXT,
    KEY_EXT,
    LEAVE_EXT,
    MAX_MEMBERS,
    NOTICE_EXT,
    PASSED_EXT,
    REJOIN_EXT,
    ROSTER_EXT,
    WITNESS_EXT,
    GroupState,
    GroupStore,
    Member,
    Membership,
    check_change,
    decode_mark,
    encode_mark,
    joined_by_invitation,
    last_fresh_start,
    parse_members,
    rekeyer,
    same_change,
)
from reschat.keystore import PageCopies
from reschat.lane import Checkpoint as LaneCheckpoint
from reschat.lane import (
    OpenPage,
    PageKeys,
    Problem,
    add_record,
    check_lane,
    find_page_secret,
    new_page,
    open_header,
    open_page,
    writer_tag,
    written_by_another_copy,
)
from reschat.outbox import OwnLane, page_id
from reschat.page import (
    GENESIS_HASH,
    MAX_EPOCH,
    MAX_PAGE_BYTES,
    MESSAGE_TYPES,
    PAGE_CAPACITY,
    Record,
    SealedPage,
    format_timestamp,
    open_record,
    parse_timestamp,
    record_content_size,
    sealed_record_size,
    to_micros,
    valid_type_ext,
)

log = logging.getLogger(__name__)

#: Cards per roster record: about 2.8 KB each, so that one record stays within the largest bucket.
CARDS_PER_RECORD = 10
#: Epoch changes one update follows; what is left waits for the next update.
MAX_EPOCHS_PER_UPDATE = 4
#: Further rounds of reads one update makes to follow a lane that grew by more than two pages.
MAX_PROBE_ROUNDS = 4
#: Decapsulations one update may spend on pages whose slot is not where the membership puts it.
MAX_DECAPSULATIONS = 512
#: The board's own budget per update (its outcomes are kept by value, so junk costs it once): junk on the
#: board never takes what the lanes' key pages need.
MAX_BOARD_DECAPSULATIONS = 128
#: How many of our updates re-read our witness on the board (and put it back) while an added member has
#: not written a page we could open.
MAX_WITNESS_CHECKS = 64
MAX_RECEIVE_KEYS = 8
#: Pages whose outcome (opened or refused) stays cached between updates, and the bytes of opened values kept.
MAX_OPENED = 1024
MAX_OPENED_BYTES = 16 * 2**20
#: How far behind a lane's newest page a missing record is waited for; beyond it, the gap stays reported.
MAX_HELD_PAGES = 8
#: Pages one update writes back to a ledger that lost or altered them; the rest follow.
MAX_REPAIRS_PER_UPDATE = 4
#: Pages of others keyed to our newest receive key before we announce a fresh one (as pairs do).
ROTATE_AFTER_PAGES = 4
MAX_NOTICES = 200
#: Older pages each update re-reads in rotation, to notice a rewrite at any depth (in the update's one round).
ROTATION_PAGES = 2
#: What a card's name may not show of a label's frame (see ``GroupService._label``).
_LABEL_NEUTRAL = str.maketrans({"(": "[", ")": "]", ",": ";"})
#: Where a membership line names its target (a NUL: never part of a validated name).
WHO = "\x00who\x00"
#: Times kept of each lane's newest records, to check the causal marks that name them in later updates, for the
#: lanes of the current epoch and of the MAX_MARK_EPOCHS before it (a mark naming an older one is not checked).
MAX_LANE_TIMES = 64
MAX_MARK_EPOCHS = 4
#: How many epochs back a change competing with one we adopted is still looked for (``_unsettled``).
MAX_RACE_EPOCHS = 4




@dataclass(frozen=True)
class GroupInfo:
    name: str
    members: int
    unread: int
    status: str  # "" | "removed" | "left"
    epoch: int
    admin: bool


@dataclass(frozen=True)
class MemberInfo:
    label: str  # how the member is shown: "me", a friend's nickname, or the card's name
    fingerprint: str
    admin: bool
    friend: bool
    vouched_by: str  # the label of the admin whose roster carried the card ("" for friends and me)
    card: str


@dataclass
class _Session:
    #: (writer, date, digest of the content) of every message of others returned as new: not its place, since
    #: a message sent again after a lost race has a new place, and keeps its date and content.
    returned: set[tuple[str, int, str]] = field(default_factory=set)
    suspected: set[tuple[str, str, str]] = field(default_factory=set)  # gaps and rollbacks seen once
    repair_suspects: set[tuple[int, str, int]] = field(default_factory=set)  # kept pages found lost once


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _problem_kind(exc: Exception) -> str:
    text = str(exc)
    if "old format" in text:
        return "old-format"
    if any(word in text for word in ("signature", "signed as", "another conversation", "does not follow",
                                      "does not open", "replaced", "kind", "slot")):
        return "forged"
    return "damaged"


class GroupService:
    """Groups of one unlocked identity, beside its ChatService (whose pairwise lanes carry invitations)."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.identity = chat.identity
        self.friends = chat.friends
        self.ledger = chat.ledger
        self.me = chat.my_fingerprint.hex()
        self.store = GroupStore(chat.state_dir, chat.identity.store_key)
        self._verified: set[bytes] = set()
        #: Pages opened or refused, by (writer, epoch, number, SHA-256 of the value): a value read again costs
        #: nothing. Keyed by digest, and the values of opened pages counted, so that a ledger writer who puts
        #: large junk where we read cannot make a long-running client keep it (see ``_remember``).
        self._opened: dict[tuple[str, int, int, str], OpenPage | Problem] = {}
        self._opened_bytes = 0
        self._contacts: dict[str, crypto.Contact] = {}
        self._asked_cards: set[str] = set()  # friends asked for their card this session (CARD_REQUEST)
        self._sessions: dict[str, _Session] = {}
        self._decaps = 0
        self._board_decaps = 0
        #: Board values already judged (digest -> witness, None when not ours, "" when not valid): junk is
        #: opened once, not at every update.
        self._board_seen: dict[str, tuple[dict[str, Any], str, str, bytes] | str | None] = {}
        #: Our own pages as this update's reads returned them (epoch -> page -> value), to confirm delivery.
        self._remote_own: dict[int, dict[int, str | None]] = {}
        self._session = _Session()  # the group being updated
        self._used_keys: dict[tuple[int, str, int], int] = {}  # receive key that opened a page, this update
        #: (group id, epoch) whose own lane this session compared with the ledger (``_check_own_lane``).
        self._checked: set[tuple[str, int]] = set()

    # -- names -----------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [g.name for g in self.store.all()]

    def is_group(self, name: str) -> bool:
        return self._find(name) is not None

    def waits_for_fresh_start(self, name: str) -> bool:
        """Whether our copy of the group ``name`` fell behind the ledger (an admin's invitation is awaited)."""
        found = self._find(name)
        return found is not None and not found.status and found.behind >= found.epoch

    def _find(self, name: str) -> GroupState | None:
        wanted = name.strip().casefold()
        return next((g for g in self.store.all() if g.name.casefold() == wanted), None)

    def _state(self, name: str) -> GroupState:
        found = self._find(name)
        if found is None:
            raise UnknownFriendError(f"no group is called {name!r}")
        return found

    def _check_free(self, name: str, group_id: str = "") -> str:
        """``name`` as a valid, unused name: names are unique across friends and groups."""
        name = validate_nickname(name)
        try:
            self.friends.get_friend(name)
        except UnknownFriendError:
            pass
        else:
            raise DuplicateFriendError(f"the name {name!r} is already a friend's")
        other = self._find(name)
        if other is not None and other.id != group_id:
            raise DuplicateFriendError(f"the name {name!r} is already a group's")
        return name

    def groups(self) -> list[GroupInfo]:
        infos = []
        for state in self.store.all():
            membership = state.membership(state.epoch)
            member = membership.get(self.me) if membership else None
            infos.append(GroupInfo(
                name=state.name, members=len(membership.members) if membership else 0, unread=state.unread,
                status=state.status, epoch=state.epoch, admin=bool(member and member.admin),
            ))
        return infos

    # -- who is who ------------------------------------------------------------------------------

    def _friend_by_fingerprint(self, fingerprint: str) -> Friend | None:
        return next((f for f in self.friends.all_friends() if f.fingerprint == fingerprint), None)

    def _contact(self, state: GroupState, fingerprint: str) -> crypto.Contact | None:
        """The verified card of a member: our friend's pinned one, or the one an admin's roster carried."""
        if fingerprint == self.me:
            return crypto.Contact(self.identity.public_key, self.identity.name, self.identity.statics.public)
        friend = self._friend_by_fingerprint(fingerprint)
        if friend is not None:
            try:
                return crypto.Contact(friend.key, friend.name or friend.nickname, friend.receive_public)
            except KeyFormatError:
                pass
        cached = self._contacts.get(fingerprint)
        if cached is not None:
            return cached
        card = state.cards.get(fingerprint)
        if card is None:
            return None
        try:
            contact = crypto.parse_contact(card)
        except KeyFormatError:
            return None
        if crypto.fingerprint_bytes(contact.public_key).hex() != fingerprint:
            return None
        self._contacts[fingerprint] = contact
        return contact

    def _label(self, state: GroupState, fingerprint: str) -> str:
        if fingerprint == self.me:
            return ME
        friend = self._friend_by_fingerprint(fingerprint)
        if friend is not None:
            return friend.nickname
        contact = self._contact(state, fingerprint)
        # A card's name is the card owner's choice: the brackets and comma that frame the label's
        # "(vouched by ..., fingerprint)" are neutralized in it, so that no name can spell another member's label.
        name = contact.name.translate(_LABEL_NEUTRAL) if contact else "unknown member"
        voucher = state.vouched.get(fingerprint, "")
        if voucher == fingerprint:  # a member the inviting admin left out, who vouched for itself (_read_board)
            return f"{name} (vouched by no admin, {fingerprint[:16]})"
        by = self._label(state, voucher) if voucher else "an admin"
        return f"{name} (vouched by {by}, {fingerprint[:16]})"

    def members(self, name: str) -> list[MemberInfo]:
        state = self._state(name)
        membership = state.current()
        infos = []
        for member in sorted(membership.members, key=lambda m: (m.since, m.fingerprint)):
            friend = self._friend_by_fingerprint(member.fingerprint)
            voucher = state.vouched.get(member.fingerprint, "") if friend is None and member.fingerprint != self.me \
                else ""
            card = self.identity.card if member.fingerprint == self.me else state.cards.get(member.fingerprint, "")
            infos.append(MemberInfo(
                label=self._label(state, member.fingerprint), fingerprint=member.fingerprint, admin=member.admin,
                friend=friend is not None, vouched_by=self._label(state, voucher) if voucher else "", card=card,
            ))
        return infos

    def _member_named(self, state: GroupState, who: str) -> str:
        """The fingerprint of the member ``who`` names: a friend's nickname, a card name or a fingerprint prefix."""
        wanted = who.strip()
        if not wanted:
            raise UnknownFriendError("name a member")
        membership = state.current()
        matches = []
        for member in membership.members:
            friend = self._friend_by_fingerprint(member.fingerprint)
            contact = self._contact(state, member.fingerprint)
            names = {member.fingerprint}
            if friend is not None:
                names.add(friend.nickname.casefold())
            if contact is not None:
                names.add(contact.name.casefold())
            if wanted.casefold() in names or (len(wanted) >= 8 and member.fingerprint.startswith(wanted.lower())):
                matches.append(member.fingerprint)
        if len(matches) != 1:
            raise UnknownFriendError(f"{who!r} names no member of {state.name}" if not matches
                                     else f"{who!r} names more than one member: give a fingerprint")
        return matches[0]

    # -- addresses and keys ---------------------------------------------------------------------------

    def _keys(self, state: GroupState, epoch: int) -> tuple[bytes, bytes]:
        membership = state.membership(epoch)
        if membership is None or not membership.secret:
            raise ProfileError(f"the secret of epoch {epoch} is not known")
        return schedule.group_keys(bytes.fromhex(membership.secret), bytes.fromhex(state.id))

    def _address(self, state: GroupState, epoch: int, writer: str, number: int) -> str:
        address_key, _conversation = self._keys(state, epoch)
        return schedule.page_address(address_key, bytes.fromhex(writer), epoch, number)

    def lane_address(self, name: str, writer: str, epoch: int, number: int) -> str:
        """The ledger key of page ``number`` of ``writer``'s lane in ``epoch`` (``writer``: a fingerprint, or ME)."""
        state = self._state(name)
        return self._address(state, epoch, self.me if writer == ME else writer, number)

    def _readers(self, state: GroupState, epoch: int, writer: str) -> list[str]:
        """Whom a page of ``writer`` in ``epoch`` is keyed to, in slot order: every other member."""
        membership = state.membership(epoch)
        return sorted(f for f in (membership.fingerprints() if membership else []) if f != writer)

    def _narrowed(self, state: GroupState) -> list[str] | None:
        """Whom our new pages are keyed to while a valid change for the next epoch that takes members out
        waits for its key page: only the members it keeps (None: no such change, every member)."""
        proposals = state.proposals.get(str(state.epoch + 1), {})
        gone: set[str] = set()
        current = set(state.current().fingerprints())
        for by, proposal in proposals.items():
            if self._departure_problem(state, state.epoch + 1, by, proposal["change"]):
                continue  # a departure nobody's leave record backs (yet) narrows nothing: it may be made up
            named = {str(m[0]) for m in proposal["change"].get("m", [])}
            gone |= current - named
        if not gone:
            return None
        return sorted(current - gone - {self.me})

    def _receive_public(self, state: GroupState, fingerprint: str) -> kem.ReceivePublic:
        announced = state.announced.get(fingerprint)
        # A member given a fresh start lost the receive keys it announced before: until it announces one in
        # the new epoch, its card's static keys (which it keeps with its identity) are the ones it can open.
        if announced and state.announced_at.get(fingerprint, [0, 0])[0] < last_fresh_start(state, fingerprint):
            announced = ""
        if announced:
            try:
                return kem.ReceivePublic.from_bytes(bytes.fromhex(announced))
            except (ValueError, kem.KemError):
                log.warning("a member's announced receive key is unusable; using their card's")
        contact = self._contact(state, fingerprint)
        if contact is None:
            raise MessageError("the group's member list is still arriving: update the group first")
        return contact.statics

    def _new_receive_key(self, state: GroupState) -> kem.ReceiveKey:
        key = kem.ReceiveKey.generate()
        state.key_counter += 1
        state.receive_keys.append({"index": state.key_counter, "key": key.to_dict()})
        # Bounded: a member who never moves to our newer keys cannot make us keep keys without end.
        state.receive_keys = sorted(state.receive_keys, key=lambda e: int(e["index"]))[-MAX_RECEIVE_KEYS:]
        state.key_uses = 0
        return key

    def _candidates(self, state: GroupState) -> list[tuple[int, kem.ReceiveKey]]:
        keys: list[tuple[int, kem.ReceiveKey]] = []
        for entry in sorted(state.receive_keys, key=lambda e: -int(e["index"])):
            try:
                keys.append((int(entry["index"]), kem.ReceiveKey.from_dict(entry["key"])))
            except kem.KemError:
                continue
        keys.append((0, self.identity.statics))
        return keys

    # -- writing ---------------------------------------------------------------------------------

    def _copies(self, state: GroupState) -> PageCopies:
        """The exact values of final pages we hold (ours and other members'), to heal a ledger that lost them."""
        return PageCopies(self.store.directory, bytes.fromhex(state.id), self.identity.store_key)

    def _start_page(self, state: GroupState, own: OwnLane, readers: list[str]) -> tuple[SealedPage, bytes]:
        epoch = own.epoch
        finished = own.pages.get(str(own.page)) if own.page else None
        if finished is not None:
            self._copies(state).put(self.me[:16], epoch, own.page, finished)  # final now: kept
        _address_key, conversation = self._keys(state, epoch)
        publics = [self._receive_public(state, f) for f in readers] or [self.identity.statics.public]
        number = own.page + 1
        sealed, header, secret = new_page(
            conversation=conversation, writer=bytes.fromhex(self.me), epoch=epoch, number=number,
            first_seq=own.seq + 1, link=bytes.fromhex(own.head), readers=publics,
            next_receive_key=self._new_receive_key(state).public, created=to_micros(self.chat.clock()),
            signer=self.chat._sign, kind=GROUP_KIND,
        )
        sealed.tag = writer_tag(self.chat._tag_key, conversation, epoch, number, sealed)
        own.page = number
        own.secrets[page_id(epoch, number)] = PageKeys.from_secret(secret).to_text()
        own.pages[str(number)] = sealed.to_string()
        own.last_seq[str(number)] = own.seq
        own.unseen = sorted({*own.unseen, str(number)}, key=int)
        self._verified.add(header.digest)
        return sealed, secret

    def _write(
        self, state: GroupState, msg_type: str, type_ext: str, body: bytes, *,
        readers: list[str] | None = None, fresh_page: bool = False, at: datetime | None = None,
    ) -> tuple[str, str, ChatMessage]:
        """Append one record to our lane of the current epoch (saved by the caller): (address, value, message).

        ``readers`` keys a new page to fewer members than the epoch has (the new epoch's secret goes only
        to the members who stay); such a page is always a fresh one and takes no other record after it.
        """
        epoch = state.epoch
        own = state.own(epoch)
        if own.epoch != epoch:
            own.restart(epoch)
        now = self.chat.clock() if at is None else at  # ``at``: a message sent again keeps its first time
        if own.last_time:
            now = max(now, parse_timestamp(own.last_time) + timedelta(microseconds=1))
        record = Record(
            type=msg_type, seq=own.seq + 1, prev=bytes.fromhex(own.head), timestamp=now,
            # A message sent again after a lost race names nothing: what we read since it was first written
            # is newer than its first time, and naming it would have it reported backdated.
            causal=self._causal_mark(state, epoch) if at is None else (epoch, 0),
            type_ext=type_ext, body=body,
        )
        needed = sealed_record_size(record_content_size(type_ext, len(body)))
        pid = page_id(epoch, own.page)
        current = own.pages.get(str(own.page)) if own.page else None
        sealed: SealedPage | None = SealedPage.from_string(current) if current and pid in own.secrets else None
        restricted = pid in state.restricted
        timer = _timer(state)
        # A page is wholly disappearing or not at all, so that expiring its records can delete its keys.
        mixed = bool(timer) and sealed is not None and bool(sealed.records) and pid not in state.own_times
        secret: bytes | PageKeys
        if fresh_page or readers is not None or restricted or mixed or sealed is None \
                or len(sealed.records) >= PAGE_CAPACITY or sealed.size_with(needed) > MAX_PAGE_BYTES:
            sealed, secret = self._start_page(state, own, self._readers(state, epoch, self.me)
                                              if readers is None else readers)
            if readers is not None:
                state.restricted = [*state.restricted[-15:], page_id(epoch, own.page)]
        else:
            secret = PageKeys.from_text(own.secrets[pid])
        header = open_header(sealed, secret)
        sealed, _signed, digest = add_record(sealed, header, secret, record, self.chat._sign)
        value = sealed.to_string()
        own.seq, own.head = record.seq, digest.hex()
        own.pages[str(own.page)] = value
        own.written_at[str(own.page)] = format_timestamp(self.chat.clock())
        own.last_seq[str(own.page)] = record.seq
        own.last_time = format_timestamp(now)
        if timer:
            state.own_times.setdefault(page_id(epoch, own.page), []).append(to_micros(now))
        own.prune()
        self._verified.add(digest)
        state.mine[str(epoch)] = own.to_dict()
        message = ChatMessage(sender=ME, receiver=state.name, time=now, type=msg_type, type_ext=type_ext, body=body,
                              seq=record.seq, status="pending", epoch=epoch)
        return self._address(state, epoch, self.me, own.page), value, message

    def _causal_mark(self, state: GroupState, epoch: int) -> tuple[int, int]:
        """The causal pair of our next record of ``epoch``: the newest message of another member we read
        (``GroupState.newest_seen``), or (epoch, 0) when there is none we can name."""
        try:
            _micros, seen_epoch, writer, seq, by = state.newest_seen
            membership = state.membership(int(seen_epoch))
            readers = sorted(membership.fingerprints()) if membership is not None else []
            # An epoch another admin started at the same time and won is another epoch of the same number.
            if writer == self.me or writer not in readers or membership is None or membership.by != by:
                return epoch, 0
            return encode_mark(epoch - int(seen_epoch), readers.index(writer), writer, int(seq))
        except (ValueError, TypeError):
            return epoch, 0  # none read yet (or a lost race moved us below its epoch): the mark names nobody

    def _set_all(self, writes: list[tuple[str, str]]) -> LedgerError | None:
        error: LedgerError | None = None
        for address, value in writes:
            try:
                self.ledger.set(address, value)
            except LedgerError as exc:
                log.warning("group write deferred: %s", exc)
                error = exc
        return error

    def _writable(self, state: GroupState) -> None:
        """Raise unless we may write in our lane of the current epoch (the caller holds the group's lock).

        The first write of a session to an epoch reads our own lane there once (an update does it too), so
        that a state restored from an older copy never writes over pages that another copy of us wrote."""
        if state.status == "removed":
            raise MessageError(f"you were removed from {state.name}")
        if state.status == "left":
            raise MessageError(f"you left {state.name}")
        if not state.current().members:
            raise MessageError(f"the member list of {state.name} is still arriving: update the group first")
        if state.behind < state.epoch and (state.id, state.epoch) not in self._checked:
            self._check_own_lane(state)
            if state.behind >= state.epoch:
                self._ask_for_fresh_start(state)
                self.store.save(state)
        if state.behind >= state.epoch:
            raise MessageError(f"your copy of {state.name} is older than the ledger: nothing more can be written "
                               "in it until an admin adds you again (group add)")

    def _check_own_lane(self, state: GroupState) -> None:
        """Compare our lane of the current epoch with the ledger (our current page and the next): one read."""
        epoch = state.epoch
        own = state.own(epoch)
        keys = {self._address(state, epoch, self.me, n): n for n in (own.page, own.page + 1) if n >= 1}
        try:
            found = self.ledger.get_many(list(keys))
        except LedgerError as exc:
            # Not checked: the write fails too, and the next update compares before it re-sends anything.
            log.warning("our lane of the group could not be checked: %s", exc)
            return
        self._checked.add((state.id, epoch))
        if self._lane_ahead(state, epoch, {n: found.get(a) for a, n in keys.items()}):
            state.behind = max(state.behind, epoch)

    def _lane_ahead(self, state: GroupState, epoch: int, values: dict[int, str | None]) -> bool:
        """True when our lane of ``epoch`` on the ledger went past this state: our writer tag on the page after
        our current one, or on a longer or different copy of our current page (as pairs' ``_behind``). Only
        we can make that tag: junk, other members' writes and stale (older) reads never count."""
        own = state.own(epoch)
        _address_key, conversation = self._keys(state, epoch)

        def ours(number: int) -> SealedPage | None:
            value = values.get(number)
            if value is None:
                return None
            try:
                sealed = SealedPage.from_string(value)
            except PageFormatError:
                return None
            tag = writer_tag(self.chat._tag_key, conversation, epoch, number, sealed)
            return sealed if hmac.compare_digest(sealed.tag, tag) else None

        if ours(own.page + 1) is not None:
            return True
        local = own.pages.get(str(own.page)) if own.page else None
        remote = ours(own.page) if local is not None else None
        if local is None or remote is None:
            return False
        stored = own.secrets.get(page_id(epoch, own.page))
        keys = PageKeys.from_text(stored) if stored and stored != EXPIRED else None
        return written_by_another_copy(
            SealedPage.from_string(local), remote, str(values.get(own.page)), keys, conversation=conversation,
            writer=bytes.fromhex(self.me), writer_key=self.identity.public_key, epoch=epoch, number=own.page,
            verified=self._verified)

    def _ask_for_fresh_start(self, state: GroupState) -> None:
        """We fell behind the ledger in our lane of the current epoch: ask each admin who is our friend, in our
        pairwise lane with them (which restarts on its own), for a fresh start, once, with one line."""
        if state.asked >= state.behind:
            return
        state.asked = state.behind
        admins = [m.fingerprint for m in state.current().members if m.admin and m.fingerprint != self.me]
        asked = []
        for fingerprint in admins:
            friend = self._friend_by_fingerprint(fingerprint)
            if friend is None:
                continue
            request = _json({"g": state.id, "e": state.behind, "by": self.me})
            try:
                result = self.chat.send_message(request, friend.nickname, msg_type="setting", type_ext=REJOIN_EXT)
            except (MessageError, KeyFormatError, ProfileError, UnknownFriendError) as exc:
                log.warning("a request for a fresh start could not be sent to %s: %s", friend.nickname, exc)
                continue
            if result.error is not None:
                log.warning("a request for a fresh start waits in the outbox: %s", result.error)
            asked.append(friend.nickname)
        older = "your copy of this group is older than the ledger"
        if asked:
            text = f"{older}: asked {', '.join(asked)} (admin) to add you again; what was sent to the keys it " \
                "lost stays unreadable"
        elif admins:
            text = f"{older}, and no admin of it is your friend: ask an admin to add you again (group add)"
        else:
            text = f"{older}, and you are its only admin: nobody can give you a fresh start; create the group again"
        self._notice(state, self.me, text, state.epoch)

    def send_message(
        self, message: str | bytes, name: str, *, msg_type: str = "text", type_ext: str = ""
    ) -> SendResult:
        """Seal, sign and append ``message`` to our lane of the group: one ledger write, no read."""
        body = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        if msg_type not in MESSAGE_TYPES or msg_type == "setting":
            raise MessageError(f"unknown message type {msg_type!r}")
        if not valid_type_ext(type_ext):
            raise MessageError(f"invalid type extension {type_ext!r}")
        if not body or (msg_type == "text" and not body.decode("utf-8", errors="replace").strip()):
            raise MessageError("the message is empty")
        if len(body) > (MAX_TEXT_BYTES if msg_type == "text" else MAX_PAYLOAD_BYTES):
            raise MessageError(f"the message is {len(body)} bytes: over the limit")
        found = self._state(name)
        if self._board_places(found):
            # A new member whose membership no other member has vouched for yet reads the epoch's board first,
            # so that its message is keyed to everyone the others count in (see _read_board).
            try:
                self._load(name, everything=False)
            except LedgerError as exc:
                log.warning("the group's board could not be read before sending: %s", exc)
        with self.store.lock(found.id):
            state = self.store.load(found.id)
            self._writable(state)
            address, value, sent = self._write(state, msg_type, type_ext, body, readers=self._narrowed(state))
            self.store.save(state)
            error = self._set_all([(address, value)])
        return SendResult(message=sent, error=error)

    def send_file(self, name: str, path: Path) -> SendResult:
        """Send a file to the group: encrypted chunks under their own secret addresses, then the manifest."""
        self._state(name)
        prepared = files.prepare_file(path, self.chat.randfunc)
        files.store_chunks(self.ledger, prepared.chunks)
        return self.send_message(prepared.manifest, name, msg_type=files.FILE_TYPE, type_ext=prepared.type_ext)

    def save_file(self, message: ChatMessage, downloads_dir: Path) -> Path:
        return files.save_file(self.ledger, message, downloads_dir)

    # -- membership changes ------------------------------------------------------------------------------

    def create(self, name: str, nicknames: list[str]) -> GroupInfo:
        """A new group of us (its first admin) and ``nicknames`` (friends), who are invited at once."""
        name = self._check_free(name)
        friends: list[Friend] = []
        for nickname in nicknames:
            friend = self.friends.get_friend(nickname)
            friend.receive_public  # noqa: B018 - an old card fails here, before anything is written
            if friend.fingerprint not in [f.fingerprint for f in friends]:
                friends.append(friend)
        if len(friends) + 1 > MAX_MEMBERS:
            raise MessageError(f"a group has at most {MAX_MEMBERS} members")
        group_id = get_random_bytes(32).hex()
        state = GroupState(id=group_id, name=name)
        members = [Member(self.me, 1, True)] + [Member(f.fingerprint, 1, False) for f in friends]
        with self.store.lock(group_id):
            self._start_epoch(state, "create", members, "", name, [f.fingerprint for f in members[1:]])
        return next(g for g in self.groups() if g.name == name)

    def add(self, name: str, nickname: str) -> bool:
        """Add the friend ``nickname``; True when they were a member already and were invited again instead,
        with a fresh start (``rejoin``): the way back for a member whose copy of the group was lost."""
        friend = self.friends.get_friend(nickname)
        friend.receive_public  # noqa: B018 - an old card fails here, before anything is written
        if self._state(name).current().get(friend.fingerprint) is not None:
            self._rejoin(name, friend.fingerprint)
            return True

        def change(state: GroupState, old: Membership) -> tuple[list[Member], str, list[str]]:
            if old.get(friend.fingerprint) is not None:
                raise MessageError(f"{friend.nickname} is already in {state.name}")
            if len(old.members) >= MAX_MEMBERS:
                raise MessageError(f"a group has at most {MAX_MEMBERS} members")
            return [*old.members, Member(friend.fingerprint, old.epoch + 1, False)], friend.fingerprint, \
                [friend.fingerprint]

        self._admin_change(name, "add", change)
        return False

    def _rejoin(self, name: str, target: str) -> None:
        """Start the next epoch with the same membership and invite ``target`` to it: every member's lanes
        begin again, and the target, which lost its state or holds an older copy, writes nothing twice."""
        friend = self._friend_by_fingerprint(target)
        if friend is None:
            raise MessageError("only a friend can be invited again (the invitation goes through your chat)")

        def change(state: GroupState, old: Membership) -> tuple[list[Member], str, list[str]]:
            if old.get(target) is None:
                raise MessageError(f"{friend.nickname} is not in {state.name}: add them")
            return list(old.members), target, [target]

        self._admin_change(name, "rejoin", change)

    def remove(self, name: str, who: str) -> None:
        def change(state: GroupState, old: Membership) -> tuple[list[Member], str, list[str]]:
            target = self._member_named(state, who)
            if target == self.me:
                raise MessageError("to leave the group, use leave")
            return [m for m in old.members if m.fingerprint != target], target, []

        self._admin_change(name, "remove", change)

    def make_admin(self, name: str, who: str) -> None:
        def change(state: GroupState, old: Membership) -> tuple[list[Member], str, list[str]]:
            target = self._member_named(state, who)
            member = old.get(target)
            if member is None or member.admin:
                raise MessageError("that member is already an admin")
            return [Member(m.fingerprint, m.since, m.admin or m.fingerprint == target) for m in old.members], \
                target, []

        self._admin_change(name, "admin", change)

    def rename(self, name: str, new_name: str) -> None:
        state = self._state(name)
        new_name = self._check_free(new_name, state.id)

        def change(_state: GroupState, old: Membership) -> tuple[list[Member], str, list[str]]:
            return list(old.members), "", []

        self._admin_change(name, "rename", change, new_name)

    def _admin_change(self, name: str, action: str, change: Any, new_name: str | None = None) -> None:
        found = self._state(name)
        with self.store.lock(found.id):
            state = self.store.load(found.id)
            self._writable(state)
            old = state.current()
            member = old.get(self.me)
            if member is None or not member.admin:
                raise MessageError(f"only an admin of {state.name} can do that")
            members, target, invite = change(state, old)
            self._start_epoch(state, action, members, target, new_name or old.name, invite)

    def _start_epoch(
        self, state: GroupState, action: str, members: list[Member], target: str, name: str, invite: list[str],
    ) -> None:
        """Start the next membership epoch (the caller holds the group's lock): see the module's text."""
        old_epoch = state.epoch
        epoch = old_epoch + 1
        secret = get_random_bytes(32).hex()
        change = {"g": state.id, "e": epoch, "a": action, "t": target, "n": name,
                  "m": [m.to_list() for m in members], "by": self.me}
        problem = check_change(state.membership(old_epoch), change, self.me)
        if problem:
            raise MessageError(f"that change is not valid: {problem}")
        for fingerprint in (m.fingerprint for m in members):
            if self._contact(state, fingerprint) is None:
                raise MessageError("a member's card is not known yet: update the group first")
        # Before anything is written or kept: a card that is missing stops the change with nothing half done.
        cards = [self._card_of(state, m.fingerprint) for m in members]
        writes: list[tuple[str, str]] = []
        body = _json(change)
        if old_epoch:
            writes.append(self._write(state, "setting", CHANGE_EXT, body)[:2])
            staying = sorted(m.fingerprint for m in members if m.fingerprint != self.me
                             and state.current().get(m.fingerprint) is not None)
            key_body = _json({"g": state.id, "e": epoch, "s": secret, "by": self.me})
            writes.append(self._write(state, "setting", KEY_EXT, key_body, readers=staying)[:2])
            # The key page takes no other record and no later page of ours in that epoch makes it final:
            # kept from the start, so that a ledger that loses or junks it has it put back (``_repair``).
            self._copies(state).put(self.me[:16], old_epoch, state.own(old_epoch).page, writes[-1][1])
        state.epochs[str(epoch)] = Membership(epoch, secret, self.me, list(members), name, action, target).to_dict()
        if old_epoch:
            self._close_lanes(state, old_epoch, [m.fingerprint for m in members])
        state.epoch = epoch
        state.name = name
        state.leaving = [f for f in state.leaving if any(m.fingerprint == f for m in members)]
        writes.append(self._write(state, "setting", CHANGE_EXT, body)[:2])
        for start in range(0, len(cards), CARDS_PER_RECORD):
            roster = _json({"g": state.id, "e": epoch, "c": cards[start : start + CARDS_PER_RECORD]})
            writes.append(self._write(state, "setting", ROSTER_EXT, roster)[:2])
        self._notice_change(state, self.me, change, epoch)
        self.store.save(state)
        self._set_all(writes)
        for fingerprint in invite:
            friend = self._friend_by_fingerprint(fingerprint)
            if friend is None:
                continue
            invitation = _json({"g": state.id, "e": epoch, "s": secret, "n": name, "by": self.me})
            result = self.chat.send_message(invitation, friend.nickname, msg_type="setting", type_ext=INVITE_EXT)
            if result.error is not None:
                log.warning("an invitation waits in the outbox: %s", result.error)

    def _card_of(self, state: GroupState, fingerprint: str) -> str:
        """A member's card as the roster carries it: theirs as we pinned or received it."""
        if fingerprint == self.me:
            return self.identity.card
        if state.cards.get(fingerprint):
            return state.cards[fingerprint]
        friend = self._friend_by_fingerprint(fingerprint)
        if friend is None:
            raise MessageError("a member's card is not known yet: update the group first")
        if not friend.card:
            # Pinned before cards were kept: their client sends it when it reads this request.
            if friend.fingerprint not in self._asked_cards:
                self._asked_cards.add(friend.fingerprint)
                self.chat.ask_for_card(friend.nickname)
            raise MessageError(f"{friend.nickname}'s card was added before groups existed: their client was "
                               "asked for it; try again once they have been online")
        return friend.card

    def leave(self, name: str) -> None:
        """Leave the group (no approval): a signed record in our lane; the remaining admin starts an epoch
        without us. We stop reading and writing at once."""
        found = self._state(name)
        with self.store.lock(found.id):
            state = self.store.load(found.id)
            self._writable(state)
            writes = [self._write(state, "setting", LEAVE_EXT, _json({"g": state.id, "e": state.epoch}))[:2]]
            state.status = "left"
            self._notice(state, self.me, "left the group", state.epoch)
            self.store.save(state)
            self._set_all(writes)

    def _notice(self, state: GroupState, by: str, text: str, epoch: int, target: str = "") -> None:
        """A membership line; ``WHO`` in ``text`` is the target, named when shown (its card may come later)."""
        line = [to_micros(self.chat.clock()), by, text, epoch, target]
        state.notices = [*state.notices, line][-MAX_NOTICES:]

    def _notice_change(self, state: GroupState, by: str, change: dict[str, Any], epoch: int) -> None:
        action, target = str(change.get("a")), str(change.get("t", ""))
        text = {
            "create": f"created the group {change.get('n', '')}",
            "add": f"added {WHO}",
            "remove": f"removed {WHO}",
            "leave": "started a new epoch without the members who left",
            "rename": f"renamed the group to {change.get('n', '')}",
            "admin": f"made {WHO} an admin",
            "rejoin": f"gave {WHO} a fresh start after they lost their copy of the group",
        }.get(action, "changed the group")
        self._notice(state, by, text, epoch, target)

    # -- invitations -----------------------------------------------------------------------------------

    def accept_invitations(self, refresh: bool = True) -> list[str]:
        """Join the groups friends invited us to (invitations travel in pairwise lanes): their names."""
        if refresh:
            for friend in self.friends.all_friends():
                try:
                    self.chat.get_update(friend.nickname)
                except (KeyFormatError, ProfileError, LedgerError) as exc:
                    log.warning("cannot update %s: %s", friend.nickname, exc)
        joined = []
        invitations, self.chat.group_invitations = self.chat.group_invitations, []
        # A friend's invitation to a group is superseded by its newer one (the pairwise chat shows them all):
        # a member whose group file is gone takes the fresh start, not the epoch it was first invited to.
        newest: dict[tuple[str, str], int] = {}
        for nickname, message in invitations:
            data = _parse(message.body) if message.type_ext == INVITE_EXT else None
            if data is not None and isinstance(data.get("e"), int):
                key = (nickname, str(data.get("g")))
                newest[key] = max(newest.get(key, 0), data["e"])
        for nickname, message in invitations:
            data = _parse(message.body) if message.type_ext == INVITE_EXT else None
            if data is not None and isinstance(data.get("e"), int) \
                    and data["e"] < newest.get((nickname, str(data.get("g"))), 0):
                continue
            try:
                if message.type_ext == REJOIN_EXT:
                    self._fresh_start_asked(nickname, message)
                    continue
                name = self._accept(nickname, message)
            except (ValueError, OverflowError, ProfileError, KeyFormatError, MessageError) as exc:
                # One friend's bad invitation is logged and dropped: it never stops the others.
                log.warning("an invitation from %s was refused: %s", nickname, exc)
                continue
            if name:
                joined.append(name)
        for name in joined:
            # The membership and the members' cards come from the inviting admin's lane: read it now.
            try:
                self.get_update(name)
            except (LedgerError, MessageError) as exc:
                log.warning("cannot read %s yet: %s", name, exc)
        return joined

    def _accept(self, nickname: str, message: ChatMessage) -> str:
        data = _parse(message.body)
        try:
            friend = self.friends.get_friend(nickname)
        except UnknownFriendError:
            return ""
        if data is None or data.get("by") != friend.fingerprint:
            return ""
        try:
            group_id, epoch, secret = str(data["g"]), int(data["e"]), str(data["s"])
            # A page header carries the epoch in 32 bits: a larger one could never be read or written, and
            # an address of it would not even be computed (a friend's invitation must not crash the client).
            if len(bytes.fromhex(group_id)) != 32 or len(bytes.fromhex(secret)) != 32 \
                    or not 1 <= epoch < MAX_EPOCH - 1:
                return ""
        except (KeyError, ValueError, TypeError):
            return ""
        existing = next((g for g in self.store.all() if g.id == group_id), None)
        if existing is not None and existing.epoch >= epoch:
            return ""  # never an epoch at or below one we hold (the invitation we joined with, shown again)
        if existing is not None and existing.status:
            # Removed, or left: back only for a later epoch and from an admin of a membership we know; a member
            # who is no admin cannot make up an epoch of this group and pull us into it.
            admins = {m.fingerprint for e in existing.epochs for m in (existing.membership(int(e)) or
                                                                       Membership(0, "", "", [], "")).members
                      if m.admin}
            if friend.fingerprint not in admins:
                log.warning("an invitation from %s to a group we were in was refused: not an admin of it", nickname)
                return ""
        if existing is not None and not existing.status:
            # A group we are in changes membership only through an admin's change in the lanes, which every
            # member checks alike. An invitation to it is taken only as such a change would be: for the next
            # epoch, from an admin of ours (whose first record of that epoch must then pass check_change).
            current = existing.membership(existing.epoch)
            inviter = current.get(friend.fingerprint) if current is not None else None
            # A member whose state fell behind the ledger (``behind``) cannot follow the epochs it missed: it
            # takes a fresh start for a later one too, still only from an admin of the membership it knows.
            stale = existing.behind >= existing.epoch
            if (epoch != existing.epoch + 1 and not stale) or inviter is None or not inviter.admin:
                with self.store.lock(group_id):
                    state = self.store.load(group_id)
                    self._notice(state, friend.fingerprint, f"sent an invitation to epoch {epoch} of this group, "
                                 "which no admin of the group can send: refused", state.epoch)
                    self.store.save(state)
                log.warning("an invitation from %s to a group already held was refused", nickname)
                return ""
        state = existing or GroupState(id=group_id, name=self._free_name(str(data.get("n", "group"))))
        fresh_start = existing is not None and existing.behind >= existing.epoch
        if fresh_start:
            # A fresh start after epochs this copy missed (a rename among them): the name the admin gives now.
            state.name = self._adopt_name(state, str(data.get("n", state.name)))
        with self.store.lock(group_id):
            state.epochs[str(epoch)] = Membership(epoch, secret, friend.fingerprint, [], state.name).to_dict()
            state.epoch, state.status = epoch, ""
            self._notice(state, friend.fingerprint, "gave you a fresh start" if fresh_start else "added you", epoch)
            self.store.save(state)
        return state.name

    def _fresh_start_asked(self, nickname: str, message: ChatMessage) -> None:
        """A friend's request for a fresh start in a group (``REJOIN_EXT``): taken from a member of the group
        we are an admin of, for an epoch it was a member in, when no fresh start of it came after that epoch
        (the pairwise view shows a request at every update: it is acted on once)."""
        data = _parse(message.body)
        try:
            friend = self.friends.get_friend(nickname)
        except UnknownFriendError:
            return
        if data is None or data.get("by") != friend.fingerprint:
            return
        known = data.get("e")
        if not isinstance(known, int) or isinstance(known, bool):
            return
        found = next((g for g in self.store.all() if g.id == data.get("g")), None)
        if found is None or found.status:
            return
        with self.store.lock(found.id):
            state = self.store.load(found.id)
            current = state.current()
            mine, theirs = current.get(self.me), current.get(friend.fingerprint)
            if mine is None or not mine.admin or theirs is None:
                log.warning("a request for a fresh start from %s that this profile cannot act on", nickname)
                return
            if not theirs.since <= known <= state.epoch or last_fresh_start(state, friend.fingerprint) > known:
                return  # replayed, made up, or already answered
        self._rejoin(state.name, friend.fingerprint)

    def _free_name(self, wanted: str) -> str:
        try:
            base = validate_nickname(wanted)
        except KeyFormatError:
            base = "group"
        for suffix in range(1, 100):
            candidate = base if suffix == 1 else f"{base[:28]} {suffix}"
            try:
                return self._check_free(candidate)
            except (DuplicateFriendError, KeyFormatError):
                continue
        return self._check_free(f"group {get_random_bytes(3).hex()}")

    # -- reading ---------------------------------------------------------------------------------------

    def get_update(self, name: str) -> ConversationView:
        """Read what is new in the group ``name``: one round of reads when nothing changed."""
        return self._load(name, everything=False)

    def load_all(self, name: str) -> ConversationView:
        """The whole group conversation this profile can read, from page 1 of every lane of every epoch."""
        return self._load(name, everything=True)

    def load_older(self, name: str) -> ConversationView:
        return self._load(name, everything=True)

    def mark_read(self, name: str) -> None:
        found = self._state(name)
        with self.store.lock(found.id):
            state = self.store.load(found.id)
            state.unread = 0
            self.store.save(state)

    def unread_counts(self) -> dict[str, int]:
        counts = {}
        for state in self.store.all():
            if not state.status:
                try:
                    self.get_update(state.name)
                except (KeyFormatError, ProfileError, LedgerError, MessageError) as exc:
                    log.warning("cannot update %s: %s", state.name, exc)
            counts[state.name] = self._state(state.name).unread
        return counts

    def _readable_epochs(self, state: GroupState, everything: bool) -> list[int]:
        known = sorted(int(e) for e, m in state.epochs.items() if m.get("secret"))
        if everything:
            return known
        return [e for e in known if e >= state.epoch - 1]

    def _load(self, name: str, *, everything: bool) -> ConversationView:
        found = self._state(name)
        session = self._sessions.setdefault(found.id, _Session())
        problems: list[Problem] = []
        shown: dict[tuple[int, str], list[OpenPage]] = {}
        self._decaps = self._board_decaps = 0
        rebase: list[dict[str, Any]] = []
        with self.store.lock(found.id):
            state = self.store.load(found.id)
            self._session = session
            self._used_keys = {}
            if _timer(state) or state.own_times or state.their_times:
                self._expire(state)
            try:
                for _round in range(MAX_EPOCHS_PER_UPDATE):
                    # The epoch's secret too: after losing a race we are at the same epoch number, the winner's,
                    # whose lanes must be read before anything is keyed to what the others announced there.
                    before = (state.epoch, state.epochs.get(str(state.epoch), {}).get("secret"))
                    self._read_epochs(state, everything, problems, shown)
                    if (state.epoch, state.epochs.get(str(state.epoch), {}).get("secret")) == before:
                        break
            except (OverflowError, ValueError, ProfileError, PageFormatError) as exc:
                # What others wrote must never raise out of an update: this group's trouble is one line of
                # it, and every other group (and the rest of this one's update) goes on.
                problems.append(Problem(ME, "damaged", f"the group could not be read in full: {exc}"))
            shown_at = self._order(state, shown, problems)
            self._confirm(state, shown)
            self._after_update(state, problems)
            rebase, state.rebase = state.rebase, []
            self.store.save(state)
        for change in rebase:
            # By the name the group has now: a change applied again before this one may have renamed it.
            self._reapply(self.store.load(found.id).name, change, problems)
        state = self.store.load(found.id)
        return self._view(state, session, shown, problems, shown_at)

    def _read_epochs(
        self, state: GroupState, everything: bool, problems: list[Problem],
        shown: dict[tuple[int, str], list[OpenPage]],
    ) -> None:
        """One round of reads over every lane of the readable epochs, then as many as the lanes grew."""
        epochs = self._readable_epochs(state, everything)
        lanes: list[tuple[int, str]] = []
        for epoch in epochs:
            membership = state.membership(epoch)
            assert membership is not None
            writers = membership.fingerprints() or [membership.by]  # a new member reads the admin first
            lanes += [(epoch, w) for w in writers]
        if not everything:
            lanes += [place for place in self._unsettled(state) if place not in lanes]
        values: dict[tuple[int, str, int], str | None] = {}
        wanted: dict[str, tuple[int, str, int]] = {}
        for epoch, writer in lanes:
            if writer == self.me:
                own = state.own(epoch)
                numbers = list(range(1, own.page + 2)) if everything else \
                    [own.page - 1, own.page, own.page + 1, *own.unconfirmed()]
            else:
                lane = state.lane(epoch, writer)
                top = lane.top
                numbers = list(range(1, top + 3)) if everything else [top - 1, top, top + 1, top + 2]
                if lane.held and not everything:
                    numbers = list(range(lane.held, top + 3))  # the pages from a missing record on, again
            for number in numbers:
                if number >= 1:
                    wanted[self._address(state, epoch, writer, number)] = (epoch, writer, number)
        rotation = {} if everything else self._rotation_places(state)
        rotation_wanted = {self._address(state, e, w, n): (e, w, n) for e, w, n in rotation}
        board = self._board_places(state)
        witness = self._kept_witness(state)
        found = self.ledger.get_many([*wanted, *(a for a in rotation_wanted if a not in wanted), *board,
                                      *([witness] if witness else [])])
        if board:
            self._read_board(state, {slot: found.get(address) for address, slot in board.items()}, problems)
        if witness and found.get(witness) != state.witness_kept["value"]:
            # Erased or overwritten (the admin who left us out computes every slot): put back at once; the
            # same bytes again are harmless, even after a stale read.
            problems.append(Problem(ME, "restoring", "putting our witness back on the group's board"))
            self._set_all([(witness, str(state.witness_kept["value"]))])
        for address, value in found.items():
            if address in wanted:
                values[wanted[address]] = value
        rotated = {place: found.get(a) for a, place in rotation_wanted.items()}
        # Before anything of ours is re-sent or put back: whether another copy of us wrote ahead of this state.
        # Only up to our current epoch: a later one we know is one we started and gave up for a concurrent
        # change that won (``_resolve``), whose lane of ours is no longer in our state but is ours all the same.
        for epoch in [e for e, w in lanes if w == self.me and e <= state.epoch]:
            if self._lane_ahead(state, epoch, {n: v for (e, w, n), v in values.items() if (e, w) == (epoch, self.me)}):
                state.behind = max(state.behind, epoch)
            self._checked.add((state.id, epoch))
        self._check_rotation(state, rotated, problems)
        self._repair(state, {**values, **rotated}, problems)
        # Lanes that grew by more than two pages are followed, a few rounds at most.
        for _round in range(MAX_PROBE_ROUNDS):
            more: dict[str, tuple[int, str, int]] = {}
            for epoch, writer in lanes:
                if writer == self.me:
                    continue
                highest = max((n for (e, w, n), v in values.items() if (e, w) == (epoch, writer) and v), default=0)
                fetched = max((n for (e, w, n) in values if (e, w) == (epoch, writer)), default=0)
                if highest and highest == fetched:
                    for number in range(fetched + 1, fetched + 4):
                        more[self._address(state, epoch, writer, number)] = (epoch, writer, number)
            if not more:
                break
            for address, value in self.ledger.get_many(list(more)).items():
                values[more[address]] = value
        # Before the lanes are taken in: a newcomer loses the epoch it was added in while reading the next one.
        secrets = {e: m.get("secret") for e, m in state.epochs.items()}
        for epoch, writer in lanes:
            if state.membership(epoch) is None:
                continue
            lane_values = {n: v for (e, w, n), v in values.items() if (e, w) == (epoch, writer)}
            if writer == self.me:
                self._read_own(state, epoch, lane_values, problems, shown)
            else:
                self._read_lane(state, epoch, writer, lane_values, problems, shown)
        self._resolve(state, problems)
        for lost in [e for e, secret in secrets.items() if state.epochs.get(e, {}).get("secret") != secret]:
            for key in [k for k in shown if k[0] == int(lost)]:
                del shown[key]  # pages of an epoch that lost a race: what they held is sent again (``_lose_epoch``)

    def _unsettled(self, state: GroupState) -> list[tuple[int, str]]:
        """Lanes of epochs before the one before ours that may still hold a change competing with one we adopted.

        An admin of epoch e who stays in the e + 1 we adopted, and has been seen writing in none of the epochs
        since (ours), may have started its own e + 1 and not read ours yet: if its fingerprint is the lower,
        the e + 1 we took loses, with every epoch built on it (``_resolve``), however many we adopted since
        (an admin may make two changes in a row before it reads the other's). Its lane of e is read until it
        is seen writing in a later epoch, MAX_RACE_EPOCHS back at most.
        """
        if state.status:
            return []
        seen = self._lanes_with_pages(state)
        places = []
        for epoch in range(max(1, state.epoch - MAX_RACE_EPOCHS), state.epoch - 1):
            membership, following = state.membership(epoch), state.membership(epoch + 1)
            if membership is None or not membership.secret or following is None:
                continue
            current = state.current()
            for admin in (m.fingerprint for m in membership.members if m.admin):
                # Only an admin still a member now: one a later change took out may write a "competing" change
                # in its old lane at any time, and must never take the group back.
                if admin == self.me or admin == following.by or following.get(admin) is None \
                        or current.get(admin) is None or state.lane(epoch, admin).closed_at is not None:
                    continue  # it started (or could not compete with) the e + 1 we adopted
                if not any((later, admin) in seen for later in range(epoch + 1, state.epoch + 1)):
                    places.append((epoch, admin))
        return places

    def _rotation_places(self, state: GroupState) -> list[tuple[int, str, int]]:
        """Older pages this update re-reads, ROTATION_PAGES of them in turn over every lane we read, so that a
        member who rewrites a message at any depth is reported within pages / ROTATION_PAGES updates."""
        places = []
        for key in sorted(state.lanes):
            epoch_text, writer = key.split(":")
            epoch = int(epoch_text)
            membership = state.membership(epoch)
            if membership is None or not membership.secret:
                continue
            lane = state.lane(epoch, writer)
            places += [(epoch, writer, int(n)) for n in sorted(lane.secrets, key=int) if int(n) < lane.top - 1]
        for epoch_text in sorted(state.mine, key=int):
            own, mine = state.own(int(epoch_text)), state.membership(int(epoch_text))
            if mine is not None and mine.secret:
                places += [(own.epoch, self.me, n) for n in range(1, own.page - 1)]
        if not places:
            return []
        start = state.rotation % len(places)
        state.rotation += ROTATION_PAGES
        return [places[(start + i) % len(places)] for i in range(min(ROTATION_PAGES, len(places)))]

    def _repair(self, state: GroupState, values: dict[tuple[int, str, int], str | None],
                problems: list[Problem]) -> None:
        """Put back, from our kept copies, final pages that two updates in a row found missing or altered."""
        copies = self._copies(state)
        session = self._session
        suspects: set[tuple[int, str, int]] = set()
        repairs: list[tuple[str, str]] = []
        for (epoch, writer, number), value in sorted(values.items(), key=lambda item: -item[0][2]):
            if writer == self.me and epoch <= state.behind:
                continue  # another copy of us wrote there after this state: what we hold is older
            # Our own page still being written (confirmed, so never re-sent) is ours to put back as well.
            copy = state.own(epoch).pages.get(str(number)) if writer == self.me else None
            if copy is None and not copies.has(writer[:16], epoch, number):
                continue
            copy = copy or copies.get(writer[:16], epoch, number)
            if copy is None or value == copy:
                continue
            if (epoch, writer, number) in session.repair_suspects and len(repairs) < MAX_REPAIRS_PER_UPDATE:
                repairs.append((self._address(state, epoch, writer, number), copy))
            else:
                suspects.add((epoch, writer, number))
        session.repair_suspects = suspects
        if repairs:
            problems.append(Problem(ME, "restoring", f"restoring {len(repairs)} page(s) of the group to the ledger"))
            self._set_all(repairs)

    def _check_rotation(
        self, state: GroupState, values: dict[tuple[int, str, int], str | None], problems: list[Problem]
    ) -> None:
        """Compare re-read older pages with the digests kept when they were first read."""
        for (epoch, writer, number), value in values.items():
            if value is None:
                continue  # missing: not a rewrite (the window reports what it misses)
            opened = self._open(state, epoch, writer, number, value)
            label = self._label(state, writer)
            if isinstance(opened, Problem):
                if opened.kind != "skipped":
                    problems.append(opened)
                continue
            kept = state.lane(epoch, writer).digests
            for record, digest in zip(opened.records, opened.digests, strict=True):
                if kept.get(str(record.seq), digest.hex()) != digest.hex():
                    problems.append(Problem(label, "rewritten", f"message #{record.seq} of epoch {epoch} differs "
                                            "from the one read before; the new version is hidden", record.timestamp))

    def _open(self, state: GroupState, epoch: int, writer: str, number: int, value: str) -> OpenPage | Problem:
        label = self._label(state, writer)
        cache_key = (writer, epoch, number, hashlib.sha256(value.encode("utf-8", "replace")).hexdigest())
        cached = self._opened.get(cache_key)
        if cached is not None:
            return cached
        result: OpenPage | Problem
        try:
            sealed = SealedPage.from_string(value)
            stored = (state.own(epoch).secrets.get(page_id(epoch, number)) if writer == self.me
                      else state.lane(epoch, writer).secrets.get(str(number)))
            key_index = -1
            secret: bytes | PageKeys
            if stored == EXPIRED:
                return Problem(label, "expired", f"page {number}: its messages disappeared")
            if stored:
                secret = PageKeys.from_text(stored)
            elif writer == self.me:
                raise _Unopenable("its key is not in this profile")
            else:
                found = self._find_secret(state, epoch, writer, sealed)
                if found is None:
                    raise _Unopenable("no key of ours opens it")
                secret, key_index = found
            contact = self._contact(state, writer)
            if contact is None:
                raise _Waiting
            _address_key, conversation = self._keys(state, epoch)
            writer_key: RSA.RsaKey = contact.public_key
            opened = open_page(
                value, sealed, secret, conversation=conversation, writer=bytes.fromhex(writer),
                writer_key=writer_key, epoch=epoch, number=number, verified=self._verified,
            )
            if opened.header.kind != GROUP_KIND:
                raise PageFormatError("it is not a group's page (wrong kind)")
            newest = max((int(e["index"]) for e in state.receive_keys), default=0)
            if key_index == 0:
                # Keyed to our card's static keys: we announce a receive key (``_after_update``).
                state.used_static = True
            elif key_index > 0 and key_index == newest:
                state.key_uses += 1
            if key_index >= 0:
                self._used_keys[(epoch, writer, number)] = key_index
            result = opened
        except _Waiting:
            return Problem(label, "skipped", f"page {number} waits for the member's card")
        except _Budget:
            return Problem(label, "skipped", f"page {number} waits for the next update (budget spent)")
        except _Unopenable as exc:
            result = Problem(label, "undecryptable", f"page {number} of epoch {epoch} cannot be opened: {exc}")
        except PageFormatError as exc:
            result = Problem(label, _problem_kind(exc), f"page {number} of epoch {epoch}: {exc}")
        self._remember(cache_key, result)
        return result

    def _remember(self, cache_key: tuple[str, int, int, str], result: OpenPage | Problem) -> None:
        """Cache one page's outcome within MAX_OPENED entries and MAX_OPENED_BYTES of opened values."""
        size = len(result.value) if isinstance(result, OpenPage) else 0
        if len(self._opened) >= MAX_OPENED or self._opened_bytes + size > MAX_OPENED_BYTES:
            self._opened.clear()
            self._opened_bytes = 0
        if size <= MAX_OPENED_BYTES:
            self._opened[cache_key] = result
            self._opened_bytes += size

    def _find_secret(
        self, state: GroupState, epoch: int, writer: str, sealed: SealedPage
    ) -> tuple[bytes, int] | None:
        """The page secret from our slot: where the membership puts it, else (a page keyed to fewer
        readers: a new epoch's secret) any slot, within the update's budget."""
        readers = self._readers(state, epoch, writer)
        candidates = self._candidates(state)
        if self.me in readers and len(sealed.slots) == len(readers):
            mine = SealedPage(slots=[sealed.slots[readers.index(self.me)]], header=sealed.header, records=[])
            self._decaps += len(candidates)
            return find_page_secret(mine, candidates)
        # More slots than readers: the writer counts in a member we do not (a new member's board can, when
        # an admin showed two memberships); the page is still ours to read, within the budget.
        if len(sealed.slots) > MAX_MEMBERS - 1:
            raise PageFormatError(f"it has {len(sealed.slots)} key slots; a group has at most {MAX_MEMBERS} members")
        cost = len(candidates) * len(sealed.slots)
        if self._decaps + cost > MAX_DECAPSULATIONS:
            raise _Budget
        self._decaps += cost
        return find_page_secret(sealed, candidates)

    def _read_lane(
        self, state: GroupState, epoch: int, writer: str, values: dict[int, str | None], problems: list[Problem],
        shown: dict[tuple[int, str], list[OpenPage]],
    ) -> None:
        label = self._label(state, writer)
        lane = state.lane(epoch, writer)
        pages: dict[int, OpenPage] = {}
        unopened: dict[int, Problem] = {}
        for number in sorted(values):
            value = values[number]
            if value is None:
                continue
            opened = self._open(state, epoch, writer, number, value)
            if isinstance(opened, Problem):
                # Pages keyed to receive keys a copy of ours made after this state are said once, by the line
                # of ``_ask_for_fresh_start``: those keys are gone (forward secrecy), not the page.
                if opened.kind != "skipped" and not (opened.kind == "undecryptable" and epoch <= state.behind):
                    unopened[number] = opened
                continue
            pages[number] = opened
        # Pages the writer says (signed, on the page after them) are not for us are neither waited for nor reported.
        passed_over, not_ours = self._passed_over(state, epoch, writer, pages, set(values))
        problems += [problem for number, problem in unopened.items() if number not in not_ours]
        top = max(pages, default=0)
        if not top:
            return
        low = min(pages)
        window: dict[int, OpenPage | None] = {n: pages.get(n) for n in range(low, top + 1) if n not in not_ours}
        kept = {int(k): bytes.fromhex(v) for k, v in lane.digests.items()}
        checkpoint = LaneCheckpoint(seq=lane.seq, digest=bytes.fromhex(lane.digest) if lane.digest else b"", kept=kept)
        result = check_lane(label, window, checkpoint, complete_to=top)
        problems += result.problems
        before = lane.seq
        fresh = [(r, d) for r, d in result.records if r.seq > before]
        if lane.closed_at is not None:
            late = [r for r, _d in result.records if r.seq > lane.closed_at]
            if late:
                problems.append(Problem(label, "forged", f"{len(late)} record(s) written in epoch {epoch} after the "
                                        "change that took this member out: not shown"))
            fresh = [(r, d) for r, d in fresh if r.seq <= lane.closed_at]
        for record, digest in result.records:
            lane.digests.setdefault(str(record.seq), digest.hex())
        if result.newest and result.newest[0] > lane.seq and not any(p.kind == "rewritten" for p in result.problems):
            # The lane's position moves only over records read without a break: a record missing below newer
            # ones (a page rolled back or junked by the ledger) is waited for and read again from its page,
            # so that a change it holds is still taken when the page is put back.
            reach, reach_digest = lane.seq, lane.digest
            for record, digest in sorted(result.records, key=lambda item: item[0].seq):
                if record.seq <= reach:
                    continue
                if record.seq != reach + 1:
                    if passed_over.get(record.seq) != reach:
                        break
                    problems.append(Problem(label, "restart", f"{record.seq - 1 - reach} message(s) of epoch {epoch} "
                                            "were keyed only to other members (sent again after a lost race, to "
                                            "the members of the epoch they were first written in): not for you"))
                reach, reach_digest = record.seq, digest.hex()
            below = [n for n, p in pages.items() if p.header.first_seq <= reach + 1]
            held = max(below) if below else max(1, low - 1)
            if reach < result.newest[0] and top - held <= MAX_HELD_PAGES:
                fresh = [(r, d) for r, d in fresh if r.seq <= reach]
                lane.seq, lane.digest, lane.held = reach, reach_digest, held
            else:
                lane.seq, lane.digest, lane.held = result.newest[0], result.newest[1].hex(), 0
        lane.top = max(lane.top, top)
        copies = self._copies(state)
        timer, now = _timer(state), to_micros(self.chat.clock())
        for number, page in pages.items():
            lane.secrets.setdefault(str(number), page.keys.to_text())
            place = f"{epoch}:{writer}:{number}"
            if (epoch, writer, number) in self._used_keys:
                state.page_keys[place] = self._used_keys[(epoch, writer, number)]
            if timer and page.records and to_micros(page.records[0].timestamp) >= int(state.settings.get("at", 0)):
                entries = state.their_times.setdefault(place, [])
                for index, record in enumerate(page.records, start=page.skipped):
                    while len(entries) <= index:
                        entries.append([0, 0, 0])
                    if not entries[index][0]:
                        entries[index] = [to_micros(record.timestamp), 0, record.seq]
                    if not entries[index][1] and not state.status:
                        entries[index][1] = now  # first display: this update returns it
            following = pages.get(number + 1)
            if following is not None and following.header.link == page.last_digest \
                    and following.header.first_seq == page.last_seq + 1 and not copies.has(writer[:16], epoch, number):
                # Final and whole (the next page links to its last record): kept, to heal a ledger that loses it.
                copies.put(writer[:16], epoch, number, page.value)
        newest_page = pages[top]
        at = state.announced_at.get(writer, [0, 0])
        if (epoch, top) > (at[0], at[1]):
            state.announced[writer] = newest_page.header.next_receive_key.hex()
            state.announced_at[writer] = [epoch, top]
        state.put_lane(epoch, writer, lane)
        shown.setdefault((epoch, writer), []).extend(pages[n] for n in sorted(pages))
        for record, _digest in fresh:
            if record.type == "setting" and record.type_ext == "":
                self._timer_record(state, record)
            elif record.type == "setting":
                self._membership_record(state, epoch, writer, record, problems)
            elif not state.status:
                state.unread += 1

    def _passed_over(
        self, state: GroupState, epoch: int, writer: str, pages: dict[int, OpenPage], read: set[int],
    ) -> tuple[dict[int, int], set[int]]:
        """Runs of records the writer keyed only to members it names, and we are not one of them.

        Returns, for each page read that starts with the writer's signed ``PASSED_EXT`` record naming the
        records just before it, its first sequence number -> the one the lane must have reached for the run
        to be passed over; and the numbers of the pages read just below it that we could not open (the run's,
        by its writer's word). Only the writer's signed word counts: a page that merely has fewer slots (a
        ledger's junk, or a removal's key page) is still waited for as a gap. What the run held is neither
        shown nor verified here; its writer could as well not have written it."""
        passed: dict[int, int] = {}
        not_ours: set[int] = set()
        for number, page in pages.items():
            first = page.records[0] if page.records else None
            if first is None or first.type != "setting" or first.type_ext != PASSED_EXT \
                    or first.seq != page.header.first_seq:
                continue
            data = _parse(first.body) or {}
            run, readers = data.get("s"), data.get("r")
            if data.get("g") != state.id or data.get("e") != epoch or not isinstance(readers, list) \
                    or self.me in readers or not isinstance(run, list) or len(run) != 2 \
                    or not all(isinstance(n, int) and not isinstance(n, bool) for n in run) \
                    or not 1 <= run[0] <= run[1] == first.seq - 1:
                continue
            passed[first.seq] = run[0] - 1
            # A message sent again to fewer members takes a page of its own (``_send_again``): the run has at
            # most one page per record, and no page further down is the writer's word to pass over.
            below, left = number - 1, run[1] - run[0] + 1
            while left and below in read and below not in pages:
                not_ours.add(below)
                below, left = below - 1, left - 1
        return passed, not_ours

    def _read_own(
        self, state: GroupState, epoch: int, values: dict[int, str | None], problems: list[Problem],
        shown: dict[tuple[int, str], list[OpenPage]],
    ) -> None:
        own = state.own(epoch)
        pages = []
        for number in sorted(values):
            value = own.pages.get(str(number)) or values[number]
            if value is None or number > own.page:
                continue
            opened = self._open(state, epoch, self.me, number, value)
            if isinstance(opened, Problem):
                if opened.kind not in ("skipped", "undecryptable"):
                    problems.append(opened)
                continue
            pages.append(opened)
        shown.setdefault((epoch, self.me), []).extend(pages)
        self._remote_own[epoch] = values

    def _confirm(self, state: GroupState, shown: dict[tuple[int, str], list[OpenPage]]) -> None:
        """Mark our messages delivered once a read returned their page exactly as written; re-send the rest."""
        remote_all = self._remote_own
        now = self.chat.clock()
        writes = []
        for epoch_text in list(state.mine):
            epoch = int(epoch_text)
            own = state.own(epoch)
            remote = remote_all.get(epoch, {})
            for number in own.unconfirmed():
                local = own.pages.get(str(number))
                if local is None:
                    continue
                if remote.get(number) == local:
                    own.unseen = [n for n in own.unseen if n != str(number)]
                    if all(int(n) >= number or own.last_seq.get(n, 0) <= own.confirmed for n in own.pages):
                        own.confirmed = max(own.confirmed, own.last_seq.get(str(number), 0))
                elif number in remote and epoch > state.behind:  # never over another copy's pages
                    written = own.written_at.get(str(number))
                    if written is None or now - parse_timestamp(written) >= self.chat.resend_after:
                        own.written_at[str(number)] = format_timestamp(now)
                        writes.append((self._address(state, epoch, self.me, number), local))
            own.prune()
            state.mine[epoch_text] = own.to_dict()
        self._remote_own = {}
        self._set_all(writes)

    # -- order ---------------------------------------------------------------------------------------

    def _order(
        self, state: GroupState, shown: dict[tuple[int, str], list[OpenPage]], problems: list[Problem],
    ) -> dict[tuple[int, str, int], datetime]:
        """When each record read is shown: never above one its writer wrote before it, nor above the record
        of another member its causal mark names (each contradiction reported ``backdated``, as for pairs).

        A record's *lane time* is its date, raised to the lane time of the record before it in its lane (a
        lane's dates come from one writer: that writer's earlier record is never below it). A causal mark is
        checked against the lane time of the record it names, never against where that record is shown, so
        that a member who names a record written after its own cannot get that record's honest writer
        reported. A mark naming what we have not read (or nobody in the membership we hold) is not checked.
        Lane times are kept (``LaneState.times``) for marks read in later updates; the newest message of
        others read becomes ``newest_seen``, what our next record names.
        """
        now = self.chat.clock()
        lanes: dict[tuple[int, str], list[Record]] = {}
        times: dict[tuple[int, str], dict[int, int]] = {}
        for (epoch, writer), pages in shown.items():
            lane = state.lane(epoch, writer)
            closed = lane.closed_at if writer != self.me else None
            read: dict[int, Record] = {}
            for page in pages:
                for record in page.records:
                    if closed is None or record.seq <= closed:  # what _view shows of a member taken out
                        read.setdefault(record.seq, record)
            kept = {int(seq): int(micros) for seq, micros in lane.times}
            label = self._label(state, writer)
            previous = 0
            for seq in sorted({*kept, *read}):
                if seq not in read:
                    previous = max(previous, kept[seq])
                    continue
                micros = to_micros(read[seq].timestamp)
                if micros < previous and writer != self.me:
                    problems.append(Problem(label, "backdated", f"message #{seq} is dated before the message "
                                            "written before it; it is shown in the order written",
                                            _from_micros(previous)))
                kept[seq] = previous = max(micros, previous)
            lane.times = [[seq, kept[seq]] for seq in sorted(kept)[-MAX_LANE_TIMES:]]
            state.put_lane(epoch, writer, lane)
            lanes[(epoch, writer)] = [read[seq] for seq in sorted(read)]
            times[(epoch, writer)] = kept
        for key, kept_lane in state.lanes.items():
            if kept_lane.get("times") and int(key.split(":")[0]) < state.epoch - MAX_MARK_EPOCHS:
                kept_lane["times"] = []  # bounded over the group's life, not only per lane
        shown_at: dict[tuple[int, str, int], datetime] = {}
        for (epoch, writer), in_order in lanes.items():
            label = self._label(state, writer)
            at: datetime | None = None
            for record in in_order:
                lane_time = _from_micros(times[(epoch, writer)][record.seq])
                at = lane_time if at is None else max(at, lane_time)
                # A hidden membership record (a change, a key, a witness) is no message: its place is not shown.
                hidden = record.type == "setting" and bool(record.type_ext)
                named = self._named(state, epoch, writer, record.causal, times) \
                    if writer != self.me and not hidden else None
                if named is not None and lane_time < named[3]:
                    whose = "your" if named[0] == self.me else f"{self._label(state, named[0])}'s"
                    problems.append(Problem(label, "backdated", f"message #{record.seq} was written after {whose} "
                                            f"message #{named[1]} but is dated before it; it is shown after it",
                                            named[3]))
                    at = max(at, named[3] + timedelta(microseconds=1))
                shown_at[(epoch, writer, record.seq)] = at
                if writer != self.me and not (record.type == "setting" and record.type_ext) \
                        and lane_time <= now + CLOCK_AHEAD:
                    # A message dated further ahead of our clock is not named: one member's clock far ahead
                    # (or its lie) would otherwise get every later message of everyone reported and moved.
                    micros = to_micros(lane_time)
                    if not state.newest_seen or micros > int(state.newest_seen[0]):
                        membership = state.membership(epoch)
                        state.newest_seen = [micros, epoch, writer, record.seq, membership.by if membership else ""]
        return shown_at

    def _named(
        self, state: GroupState, epoch: int, writer: str, causal: tuple[int, int],
        times: dict[tuple[int, str], dict[int, int]],
    ) -> tuple[str, int, int, datetime] | None:
        """(writer, seq, epoch, lane time) of the record ``writer``'s record of ``epoch`` names, when we read
        it; None for a mark that names nobody, its own lane, or anything we have not read."""
        mark = decode_mark(epoch, causal)
        if mark is None:
            return None
        seen_epoch, index, check, seq = mark
        membership = state.membership(seen_epoch)
        members = sorted(membership.fingerprints()) if membership is not None else []
        if index >= len(members) or members[index] == writer or int(members[index][:2], 16) != check:
            return None
        named = members[index]
        if (seen_epoch, named) not in times:
            times[(seen_epoch, named)] = {int(s): int(m) for s, m in state.lane(seen_epoch, named).times}
        micros = times[(seen_epoch, named)].get(seq)
        return None if micros is None else (named, seq, seen_epoch, _from_micros(micros))

    # -- membership as read --------------------------------------------------------------------------

    def _membership_record(
        self, state: GroupState, epoch: int, writer: str, record: Record, problems: list[Problem]
    ) -> None:
        """Take in one verified ``setting`` record of ``writer``'s lane of ``epoch``."""
        label = self._label(state, writer)
        data = _parse(record.body)
        if data is None or data.get("g") != state.id:
            problems.append(Problem(label, "forged", "a group record that does not belong here was ignored",
                                    record.timestamp))
            return
        pending = state.proposals
        if record.type_ext == CHANGE_EXT:
            named = data.get("e")
            if named == epoch + 1:
                reason = check_change(self._checking(state, epoch, data), data, writer)
                if reason:
                    problems.append(Problem(label, "forged", f"{reason}: ignored", record.timestamp))
                    return
                # An admin starts an epoch once: a second, different change for it (what we adopted, or what
                # we hold as its proposal) would show members different memberships of one epoch. The first
                # one read stays; the second is reported, and so is the key page that follows it.
                adopted = state.membership(epoch + 1)
                earlier = pending.get(str(epoch + 1), {}).get(writer)
                if (adopted is not None and adopted.by == writer and not same_change(adopted, data)) \
                        or (earlier is not None and earlier["change"] != data):
                    problems.append(Problem(label, "forged", f"a second, different change for epoch {epoch + 1} "
                                            "by the same admin (two memberships of one epoch): ignored",
                                            record.timestamp))
                    return
                if adopted is not None and adopted.by == writer:
                    return  # the change we adopted, read again
                pending.setdefault(str(epoch + 1), {})[writer] = {"change": data, "secret": ""}
            elif named == epoch and record.seq == 1:
                # The first record of the lane of the epoch that the change started, by the admin who started it.
                membership = state.membership(epoch)
                if membership is not None and membership.by == writer and not membership.members:
                    # A new member: the change the inviting admin wrote first in its lane of the new epoch.
                    members = parse_members(data)
                    inviter = next((m for m in members or [] if m.fingerprint == writer), None)
                    before = state.membership(epoch - 1)
                    if self._newcomer_lost(state, epoch, members, data, problems):
                        before = None  # lost, with what we wrote there (sent again in this epoch)
                    # When we know the epoch before (we were a member), the change must pass the same rule
                    # as a change read in the lanes: an invitation is no way around it.
                    reason = check_change(before, data, writer) if before is not None and before.members else ""
                    if members is None or inviter is None or not inviter.admin or data.get("by") != writer \
                            or all(m.fingerprint != self.me for m in members) or data.get("a") not in ACTIONS \
                            or reason:
                        problems.append(Problem(label, "forged", "an invitation's membership is not valid",
                                                record.timestamp))
                        return
                    membership = Membership(epoch, membership.secret, writer, members, state.name,
                                            str(data.get("a")), str(data.get("t", "")))
                    state.epochs[str(epoch)] = membership.to_dict()
                    if data.get("a") != "create":
                        # The members of the epoch before took theirs from the change they read there; ours
                        # has one source, the inviting admin, until they vouch for it on the board.
                        state.newcomer = epoch
                        state.given, state.board, state.provisional = [m.to_list() for m in members], {}, []
                elif membership is None or membership.by != writer:
                    problems.append(Problem(label, "forged", "a membership change for a started epoch "
                                            "(replayed, or not by the admin who started it): ignored",
                                            record.timestamp))
                elif not same_change(membership, {**data, "n": membership.name}):
                    # What a new member takes as the epoch's membership is this record; what we took is the
                    # change in the epoch before. An admin who names two memberships is told to everyone here.
                    problems.append(Problem(label, "forged", f"the membership of epoch {epoch} that new members "
                                            "are given differs from the one the change before named (the "
                                            "admin showed two memberships)", record.timestamp))
            else:
                problems.append(Problem(label, "forged", f"a membership change naming epoch {named} in epoch "
                                        f"{epoch} (replayed or misplaced): ignored", record.timestamp))
        elif record.type_ext == KEY_EXT:
            proposal = pending.get(str(epoch + 1), {}).get(writer)
            if data.get("e") != epoch + 1 or proposal is None:
                problems.append(Problem(label, "forged", "a group key with no change before it: ignored",
                                        record.timestamp))
                return
            try:
                if len(bytes.fromhex(str(data.get("s")))) != 32:
                    raise ValueError
            except ValueError:
                problems.append(Problem(label, "forged", "a damaged group key: ignored", record.timestamp))
                return
            if proposal["secret"] and proposal["secret"] != str(data["s"]):
                problems.append(Problem(label, "forged", f"a second, different key for epoch {epoch + 1} by the "
                                        "same admin: ignored", record.timestamp))
                return
            proposal["secret"] = str(data["s"])
        elif record.type_ext == ROSTER_EXT:
            membership = state.membership(epoch)
            if membership is None or membership.by != writer or data.get("e") != epoch:
                problems.append(Problem(label, "forged", "member cards from someone who did not start this "
                                        "epoch: ignored", record.timestamp))
                return
            for card in data.get("c", []) if isinstance(data.get("c"), list) else []:
                try:
                    contact = crypto.parse_contact(str(card))
                except KeyFormatError:
                    continue
                fingerprint = crypto.fingerprint_bytes(contact.public_key).hex()
                if membership.get(fingerprint) is not None and fingerprint != self.me \
                        and fingerprint not in state.cards:
                    state.cards[fingerprint] = str(card)
                    state.vouched[fingerprint] = writer
        elif record.type_ext == WITNESS_EXT:
            self._lane_witness(state, epoch, writer, data, record, problems)
        elif record.type_ext == LEAVE_EXT:
            membership = state.membership(epoch)
            if data.get("e") != epoch or membership is None or membership.get(writer) is None:
                problems.append(Problem(label, "forged", "a departure for another epoch: ignored", record.timestamp))
                return
            gone = state.departed.setdefault(str(epoch), [])
            if writer not in gone:
                gone.append(writer)
            # Kept for the few epochs a change may still be read for (the concurrent-change rule included).
            for old_text in [e for e in state.departed if int(e) < state.epoch - MAX_EPOCHS_PER_UPDATE]:
                del state.departed[old_text]
            if epoch == state.epoch and writer not in state.leaving:
                state.leaving.append(writer)
                self._notice(state, writer, "left the group", epoch)

    def _newcomer_lost(self, state: GroupState, epoch: int, members: list[Member] | None, data: dict[str, Any],
                       problems: list[Problem]) -> bool:
        """Whether the epoch before ``epoch``, which we joined by invitation, lost a race: an admin's change for
        ``epoch`` adds us again, joining now (honestly, only the losing admin re-applying its addition does).

        Having joined it, we could read no epoch before it, so we never read the change that won: we lose
        the epoch here instead (``_lose_epoch``: what we wrote there is sent again in ``epoch``, keyed only to
        members of both) and forget its membership, which no member of ``epoch`` shares with us."""
        before = state.membership(epoch - 1)
        was = before.get(self.me) if before is not None else None
        now = next((m for m in members or [] if m.fingerprint == self.me), None)
        if before is None or was is None or now is None or was.since != epoch - 1 or now.since != epoch \
                or data.get("a") != "add" or data.get("t") != self.me:
            return False
        self._lose_epoch(state, epoch - 1, problems)
        state.epochs.pop(str(epoch - 1), None)
        state.proposals.pop(str(epoch), None)
        problems.append(Problem(ME, "restart", f"the epoch you were first added in ({epoch - 1}) lost to another "
                                "admin's change made at the same time; you were added again after it"))
        return True

    def _resolve(self, state: GroupState, problems: list[Problem]) -> None:
        """Move to the next epoch when a valid change for it was read: the lower admin fingerprint wins."""
        pending = state.proposals
        for epoch_text in sorted(pending, key=int):
            epoch = int(epoch_text)
            proposals = pending.get(epoch_text, {})  # a lost race drops the proposals read in lost epochs
            if epoch > state.epoch + 1 or not proposals:
                continue
            # A departure is taken only once the leave record of everyone it takes out was read (from their
            # own lanes, which the same round reads): until then it cannot win, and a made-up one never does.
            eligible = {}
            for by, proposal in proposals.items():
                reason = self._departure_problem(state, epoch, by, proposal["change"])
                if reason:
                    problems.append(Problem(self._label(state, by), "forged", f"{reason}: ignored"))
                else:
                    eligible[by] = proposal
            if not eligible:
                continue
            proposals = eligible
            winner = min(proposals)
            chosen = proposals[winner]
            change = chosen["change"]
            fprs = [str(m[0]) for m in change["m"]]
            current = state.membership(epoch)
            if epoch <= state.epoch:
                if current is None or current.by == winner or winner > current.by:
                    continue
                # We had moved to an epoch another admin started at the same time; the lower fingerprint wins,
                # and every epoch we adopted on top of the losing one goes with it: our changes are applied
                # again in order, our messages of all of them are sent again (in order: ``resend`` is a list).
                for lost in range(epoch, state.epoch + 1):
                    gone = state.membership(lost)
                    if gone is not None and gone.by == self.me:
                        state.rebase.append({"a": gone.action, "t": gone.target, "n": gone.name})
                    self._lose_epoch(state, lost, problems)
                    # Gone until the winner's is taken (its key page may come later): read again, the losing
                    # membership would lose again, and our change would be applied again twice.
                    state.epochs.pop(str(lost), None)
                if state.witness_due >= epoch:
                    state.witness_due = 0  # we vouch for no membership of a lost epoch
                for later in [e for e in pending if int(e) > epoch]:
                    pending.pop(later, None)  # read in the lanes of epochs that lost
                state.epoch = epoch - 1
            if self.me not in fprs:
                if state.status != "removed":
                    state.status = "removed"
                    self._notice_change(state, winner, change, epoch)
                pending.pop(epoch_text, None)
                return
            if not chosen["secret"]:
                continue  # the key page comes after the change: it may not have been read yet
            state.epochs[epoch_text] = Membership(
                epoch, chosen["secret"], winner, [Member(str(f), int(s), bool(a)) for f, s, a in change["m"]],
                str(change["n"]), str(change["a"]), str(change.get("t", "")),
            ).to_dict()
            before = state.membership(epoch - 1)
            if before is not None and (any(before.get(f) is None for f in fprs) or change["a"] == "rejoin"):
                state.witness_due = epoch  # members joined (anew): we vouch to them for what we took
            self._close_lanes(state, epoch - 1, fprs)
            state.epoch = epoch
            state.name = self._adopt_name(state, str(change["n"]))
            state.leaving = [f for f in state.leaving if f in fprs]
            self._notice_change(state, winner, change, epoch)
            pending.pop(epoch_text, None)
        for epoch_text in [e for e in pending if int(e) <= state.epoch - 1]:
            pending.pop(epoch_text, None)

    def _lose_epoch(self, state: GroupState, epoch: int, problems: list[Problem]) -> None:
        """Leave ``epoch`` as the admin who lost the race for it started it: our messages written in it are
        kept to be written again in the winner's epoch (``_send_again``), since no member who moved straight
        to the winner's epoch can read the loser's, and its secret is about to be replaced by the winner's.
        Everything kept of the lost epoch's lanes goes, kept page copies included: the winner's pages have
        the same (writer, epoch, number) and must never be "repaired" with the loser's."""
        own = state.own(epoch)
        records = self._own_records(state, epoch, own)
        again = [r for r in records if not (r.type == "setting" and r.type_ext != "")]
        membership = state.membership(epoch)
        members = set(membership.fingerprints() if membership is not None else [])
        # Who may read a message is fixed where it was first written: the winner's epoch may have members the
        # losing one did not (a removal the loser's stale change undid, an addition): they are never keyed to it.
        state.resend += [{"type": r.type, "ext": r.type_ext, "body": r.body.hex(), "at": format_timestamp(r.timestamp),
                          "to": sorted(members.intersection(state.resent_to.get(f"{epoch}:{r.seq}", members)))}
                         for r in again]
        if len(records) < own.seq:
            problems.append(Problem(ME, "damaged", f"{own.seq - len(records)} of your records written in epoch {epoch} "
                                    "(which lost to another admin's change) could not be found to send again"))
        copies = self._copies(state)
        for fingerprint in membership.fingerprints() if membership is not None else []:
            for number in copies.numbers(fingerprint[:16], epoch):
                copies.drop(fingerprint[:16], epoch, number)
        prefix = f"{epoch}:"
        for kept in (state.lanes, state.page_keys, state.their_times, state.own_times, state.resent_to):
            for key in [k for k in kept if k.startswith(prefix)]:
                del kept[key]
        state.restricted = [p for p in state.restricted if not p.startswith(prefix)]
        state.mine.pop(str(epoch), None)

    def _own_records(self, state: GroupState, epoch: int, own: OwnLane) -> list[Record]:
        """Every record of our lane of ``epoch`` still to be found: in the outbox, the kept copies, the ledger."""
        copies = self._copies(state)
        values: dict[int, str | None] = {
            n: own.pages.get(str(n)) or copies.get(self.me[:16], epoch, n) for n in range(1, own.page + 1)}
        missing = {self._address(state, epoch, self.me, n): n for n, v in values.items() if v is None}
        if missing:
            for address, value in self.ledger.get_many(list(missing)).items():
                values[missing[address]] = value
        records: dict[int, Record] = {}
        for number, value in sorted(values.items()):
            opened = self._open(state, epoch, self.me, number, value) if value is not None else None
            if isinstance(opened, OpenPage):
                for record in opened.records:
                    if not self._expired(state, epoch, self.me, number, record):
                        records.setdefault(record.seq, record)
        return [records[seq] for seq in sorted(records)]

    def _send_again(self, state: GroupState, problems: list[Problem]) -> None:
        """Write again, in the winner's epoch and with their first time, our messages of a lost epoch."""
        writes: dict[str, str] = {}
        sent = 0
        narrowed = self._narrowed(state)
        everyone = self._readers(state, state.epoch, self.me)
        run: list[int] = []  # sequence numbers written keyed to ``run_readers`` (fewer than ``everyone``)
        run_readers: list[str] = []
        try:
            for index, entry in enumerate(state.resend):
                # Keyed only to members both of the epoch it was first written in and of this one (an entry
                # kept before "to" existed is keyed as it always was).
                to = entry.get("to")
                readers = narrowed if narrowed is not None else everyone
                if isinstance(to, list):
                    readers = [f for f in readers if f in to]
                at = parse_timestamp(str(entry["at"]))
                address, value, message = self._write(
                    state, str(entry["type"]), str(entry["ext"]), bytes.fromhex(str(entry["body"])),
                    readers=None if readers == everyone else readers, at=at)
                writes[address] = value
                sent += 1
                if readers != everyone:
                    state.resent_to[f"{state.epoch}:{message.seq}"] = [*readers, self.me]
                    run, run_readers = [*run, message.seq], readers
                following = state.resend[index + 1] if index + 1 < len(state.resend) else None
                if run and (following is None or [f for f in (narrowed if narrowed is not None else everyone)
                                                  if f in following.get("to", everyone)] != run_readers):
                    # Members left out of the run pass over it on our word (``_passed_over``): signed, first on
                    # the page after it, dated just after its last record.
                    passed = _json({"g": state.id, "e": state.epoch, "s": [run[0], run[-1]],
                                    "r": sorted([*run_readers, self.me])})
                    address, value, _message = self._write(state, "setting", PASSED_EXT, passed, readers=narrowed,
                                                           fresh_page=True, at=at)
                    writes[address] = value
                    run = []
        except MessageError as exc:
            problems.append(Problem(ME, "skipped", f"sending again what the lost epoch held waits: {exc}"))
        state.resend = state.resend[sent:]
        oldest = state.epoch - MAX_EPOCHS_PER_UPDATE  # kept for the few epochs a race may still be lost in
        for key in [k for k in state.resent_to if int(k.split(":")[0]) < oldest]:
            del state.resent_to[key]
        if sent:
            self._notice(state, self.me, f"sent again {sent} message(s) written in the epoch that lost to another "
                         "admin's change made at the same time", state.epoch)
            self._set_all(list(writes.items()))

    # -- the board: members of the epoch before vouch for an epoch's membership to those it added ---------

    def _write_witness(self, state: GroupState) -> None:
        """Vouch, on the board of the epoch we moved to, for the membership we took from the change in the
        epoch before: one page at the slot of our place in it, keyed to the members it added only."""
        membership, before = state.current(), state.membership(state.epoch - 1)
        added = joined_by_invitation(membership, before)
        if membership.get(self.me) is None or not added or before is None:
            state.witness_due = 0
            return
        if any(self._contact(state, f) is None for f in added):
            return  # the added members' cards come with the admin's roster: the next update writes it
        epoch = state.epoch
        address_key, conversation = self._keys(state, epoch)
        slot = 1 + sorted(membership.fingerprints()).index(self.me)
        newest = max(state.receive_keys, key=lambda e: int(e["index"]), default=None)
        announce = kem.ReceiveKey.from_dict(newest["key"]) if newest else self._new_receive_key(state)
        sealed, header, secret = new_page(
            conversation=conversation, writer=bytes.fromhex(self.me), epoch=epoch, number=slot, first_seq=1,
            link=GENESIS_HASH, readers=[self._receive_public(state, f) for f in added],
            next_receive_key=announce.public, created=to_micros(self.chat.clock()), signer=self.chat._sign,
            kind=GROUP_KIND,
        )
        body = _json({"g": state.id, "e": epoch, "m": [m.to_list() for m in membership.members],
                      "c": self.identity.card})
        record = Record(type="setting", seq=1, prev=GENESIS_HASH, timestamp=self.chat.clock(), causal=(epoch, 0),
                        type_ext=WITNESS_EXT, body=body)
        sealed, _signed, _digest = add_record(sealed, header, secret, record, self.chat._sign)
        value = sealed.to_string()
        state.witness_kept = {"epoch": epoch, "slot": slot, "value": value, "checks": 0}
        # The same witness in our own lane too: there nobody can erase or replace it unnoticed (a member
        # could overwrite our board slot), so the new members we were given to count on always read it.
        writes = [(schedule.board_address(address_key, epoch, slot), value)]
        try:
            writes.append(self._write(state, "setting", WITNESS_EXT, body)[:2])
        except MessageError as exc:  # a member's card not read yet: the board copy serves alone
            log.warning("the witness goes on the board only: %s", exc)
        if self._set_all(writes) is None:
            state.witness_due = 0

    def _lane_witness(self, state: GroupState, epoch: int, writer: str, data: dict[str, Any], record: Record,
                      problems: list[Problem]) -> None:
        """A witness in a member's own lane (the copy of its board witness that no one else can erase or
        replace unnoticed): a new member counts it as that member's vouching; any other member compares it
        with the membership it took."""
        label = self._label(state, writer)
        members = parse_members(data)
        membership = state.membership(epoch)
        if members is None or data.get("e") != epoch or membership is None or writer not in membership.fingerprints():
            problems.append(Problem(label, "forged", "a witness that does not fit its lane: ignored", record.timestamp))
            return
        names = sorted(m.fingerprint for m in members)
        if epoch == state.newcomer == state.epoch and writer != membership.by:
            if self._take_witness(state, writer, members, problems, record.timestamp):
                self._recount(state, problems)
        elif epoch != state.newcomer and names != sorted(membership.fingerprints()):
            problems.append(Problem(label, "forged", f"the membership of epoch {epoch} this member vouches for "
                                    "differs from ours (an admin showed two memberships of one epoch)",
                                    record.timestamp))

    def _kept_witness(self, state: GroupState) -> str:
        """The board address of our witness while we still re-read it ('' when not): until every member it
        vouches to wrote a page we opened (then they count us in), at most MAX_WITNESS_CHECKS updates."""
        kept = state.witness_kept
        if not kept or kept.get("epoch") != state.epoch or int(kept.get("checks", 0)) >= MAX_WITNESS_CHECKS:
            return ""
        membership, before = state.current(), state.membership(state.epoch - 1)
        added = joined_by_invitation(membership, before) if before is not None else []
        if all(state.lane(state.epoch, f).top for f in added):
            return ""
        kept["checks"] = int(kept.get("checks", 0)) + 1
        address_key, _conversation = self._keys(state, state.epoch)
        return schedule.board_address(address_key, state.epoch, int(kept["slot"]))

    def _board_places(self, state: GroupState) -> dict[str, int]:
        """The board's slots a new member reads (address -> slot) until a member other than the inviting
        admin vouched for its membership and every member it knows of did; none once it moved on."""
        membership = state.membership(state.epoch)
        if state.newcomer != state.epoch or state.status or membership is None or not membership.members:
            return {}
        # A member the others name and we were not given is waited for too: its own witness counts it in.
        named = {*membership.fingerprints(), *state.named}
        waiting = [f for f in named if f not in (self.me, membership.by, *state.witnesses)]
        if state.witnesses and not waiting:
            return {}
        address_key, _conversation = self._keys(state, state.epoch)
        return {schedule.board_address(address_key, state.epoch, slot): slot for slot in range(1, MAX_MEMBERS + 1)}

    def _read_board(self, state: GroupState, values: dict[int, str | None], problems: list[Problem]) -> None:
        """Take in the witnesses on our epoch's board, then count its members again (``_recount``)."""
        epoch = state.epoch
        membership = state.current()
        candidates = self._candidates(state)
        for slot, value in sorted(values.items()):
            if value is None:
                continue
            digest = hashlib.sha256(f"{epoch}:{slot}:{value}".encode("utf-8", "replace")).hexdigest()
            seen: tuple[dict[str, Any], str, str, bytes] | str | None
            if digest in self._board_seen:
                seen = self._board_seen[digest]
            else:
                try:
                    seen = self._open_witness(state, epoch, slot, value, candidates)
                except _Budget:
                    problems.append(Problem(ME, "skipped", "the rest of the group's board waits for the next update"))
                    break
                except (PageFormatError, ValueError, KeyError, TypeError, KeyFormatError):
                    seen = ""
                if len(self._board_seen) >= MAX_OPENED:
                    self._board_seen.clear()
                self._board_seen[digest] = seen
            if seen == "":
                problems.append(Problem(ME, "forged", f"slot {slot} of the board of epoch {epoch} holds no valid "
                                        "witness of a member: ignored"))
                continue
            if seen is None or isinstance(seen, str):
                continue  # keyed to someone else: not ours to read
            found = seen
            data, writer, card, announced = found
            members = parse_members(data)
            fprs = sorted(m.fingerprint for m in members or [])
            if members is None or data.get("g") != state.id or data.get("e") != epoch or self.me not in fprs \
                    or writer not in fprs or fprs.index(writer) + 1 != slot:
                problems.append(Problem(ME, "forged", f"slot {slot} of the board of epoch {epoch} holds a witness "
                                        "that does not fit it: ignored"))
                continue
            if writer in (self.me, membership.by):
                continue  # the inviting admin's word is what needs a second source
            if not self._take_witness(state, writer, members, problems):
                continue
            state.cards.setdefault(writer, card)
            at = state.announced_at.get(writer, [0, 0])
            if (epoch, 0) > (at[0], at[1]) or writer not in state.announced:
                state.announced[writer] = announced.hex()
                state.announced_at[writer] = [epoch, 0]
        self._recount(state, problems)

    def _take_witness(self, state: GroupState, writer: str, members: list[Member], problems: list[Problem],
                      timestamp: datetime | None = None) -> bool:
        """Keep a member's witness of the epoch we joined, read on the board or in its lane alike: True when
        it is new. The first one read stays; one naming another membership than ours is reported."""
        label = self._label(state, writer)
        names = sorted(m.fingerprint for m in members)
        if state.board.get(writer, names) != names:
            problems.append(Problem(label, "forged", "a second, different witness: the first one read stays",
                                    timestamp))
            return False
        if writer in state.board:
            return False
        state.board[writer] = names
        if sorted(m.to_list() for m in members) != sorted(state.given):
            problems.append(Problem(label, "forged", f"the membership of epoch {state.epoch} this member vouches "
                                    "for differs from the one the admin who added you gave you (two memberships "
                                    "of one epoch)", timestamp))
        return True

    def _recount(self, state: GroupState, problems: list[Problem]) -> None:
        """Our membership of the epoch we joined: what the inviting admin gave us, plus every member who
        vouched on the board and whom every member we were given who vouched names too. A witness's writer
        holds the epoch's secret, but a member could hand that to a key of its own making: the members we
        were given are the check. Counted in this way, a member is provisional (not an admin, joined now):
        the admin's next change names it as it is, or not at all (``_checking``)."""
        epoch = state.epoch
        membership = state.current()
        given = [Member(str(f), int(s), bool(a)) for f, s, a in state.given]
        given_fprs = {m.fingerprint for m in given}
        vouchers = [names for writer, names in state.board.items() if writer in given_fprs]
        counted = sorted(w for w in state.board if w not in given_fprs and w != membership.by
                         and all(w in names for names in vouchers))[: MAX_MEMBERS - len(given)]
        if counted == sorted(state.provisional):
            return
        for writer in sorted(set(counted) - set(state.provisional)):
            state.vouched[writer] = writer
            self._notice(state, writer, f"holds this epoch's key but was left out of the membership {WHO} gave "
                         "you: counted as a member", epoch, membership.by)
            problems.append(Problem(self._label(state, writer), "forged", "the admin who added you left out of your "
                                    "membership a member who holds the group's key (two memberships of one "
                                    "epoch): counted in now"))
        for writer in sorted(set(state.provisional) - set(counted)):
            self._notice(state, writer, "is no longer counted as a member: a member the admin gave you does not "
                         "name them", epoch)
        state.provisional = counted
        members = [*given, *(Member(w, epoch, False) for w in counted)]
        state.epochs[str(epoch)] = Membership(epoch, membership.secret, membership.by, members, membership.name,
                                              membership.action, membership.target).to_dict()
        own = state.own(epoch)
        if own.page:  # its key slots were for another membership: nothing more is appended to it
            state.restricted = [*state.restricted[-15:], page_id(epoch, own.page)]

    def _checking(self, state: GroupState, epoch: int, change: dict[str, Any]) -> Membership | None:
        """The membership of ``epoch`` that a change for the next one is checked against. In the epoch we
        joined, members counted in from the board are the admin's to name: as the change names them, or gone
        (they had no second source of their own, and must never make us refuse the admin's next change)."""
        membership = state.membership(epoch)
        if membership is None or epoch != state.newcomer or not state.provisional:
            return membership
        named = {m.fingerprint: m for m in parse_members(change) or []}
        members = [m for m in membership.members if m.fingerprint not in state.provisional]
        members += [named[f] for f in state.provisional if f in named]
        return Membership(epoch, membership.secret, membership.by, members, membership.name, membership.action,
                          membership.target)

    def _open_witness(
        self, state: GroupState, epoch: int, slot: int, value: str, candidates: list[tuple[int, kem.ReceiveKey]],
    ) -> tuple[dict[str, Any], str, str, bytes] | None:
        """(witness, its writer, the writer's card, the receive key it announces) of one board page, or None
        when no key of ours opens it; PageFormatError (or ValueError) when it is not a valid one."""
        sealed = SealedPage.from_string(value)
        cost = len(candidates) * len(sealed.slots)
        if self._board_decaps + cost > MAX_BOARD_DECAPSULATIONS:
            raise _Budget
        self._board_decaps += cost
        opened_secret = find_page_secret(sealed, candidates)
        if opened_secret is None:
            return None
        keys = PageKeys.from_secret(opened_secret[0])
        header = open_header(sealed, keys)
        if not sealed.records:
            raise PageFormatError("an empty witness")
        # The writer's card is inside the witness: read unverified only to find the key that then verifies it
        # (and the card must be the writer's own: its fingerprint is the header's writer).
        first = _parse(open_record(sealed.records[0], keys.message_key(0), header.digest, 0).body)
        card = str((first or {})["c"])
        contact = crypto.parse_contact(card)
        if crypto.fingerprint_bytes(contact.public_key) != header.writer:
            raise PageFormatError("a witness whose card is not its writer's")
        _address_key, conversation = self._keys(state, epoch)
        opened = open_page(value, sealed, keys, conversation=conversation, writer=header.writer,
                           writer_key=contact.public_key, epoch=epoch, number=slot, verified=self._verified)
        record = opened.records[0] if opened.records else None
        data = _parse(record.body) if record is not None else None
        if opened.header.kind != GROUP_KIND or record is None or record.type != "setting" \
                or record.type_ext != WITNESS_EXT or data is None:
            raise PageFormatError("not a witness")
        return data, header.writer.hex(), card, opened.header.next_receive_key

    def _departure_problem(self, state: GroupState, epoch: int, by: str, change: dict[str, Any]) -> str:
        """Why a departure proposed for ``epoch`` cannot be taken yet ('' when it can, or is no departure)."""
        if change.get("a") != "leave":
            return ""
        return check_change(self._checking(state, epoch - 1, change), change, by,
                            state.departed.get(str(epoch - 1), []))

    def _close_lanes(self, state: GroupState, epoch: int, staying: list[str]) -> None:
        """Close, at what was read so far, the lanes of ``epoch`` of the members the next epoch takes out.

        A removed member still holds the old epoch's secret and may go on writing in its old lane, which
        members keep reading for the records of those who have not moved yet: nothing it writes after we
        adopted its removal is shown or taken (a late 'concurrent' change of a removed admin included).
        The same round read every lane before the change was adopted, so what it wrote before is kept.
        """
        before = state.membership(epoch)
        for fingerprint in before.fingerprints() if before is not None else []:
            lane = state.lane(epoch, fingerprint)
            if fingerprint in staying:
                lane.closed_at = None  # closed by an adoption the concurrent-change rule undid
            elif lane.closed_at is None:
                lane.closed_at = lane.seq
            state.put_lane(epoch, fingerprint, lane)

    def _adopt_name(self, state: GroupState, wanted: str) -> str:
        """The group's new name, unless it clashes with a friend or another group here (then kept as it was)."""
        try:
            return self._check_free(wanted, state.id)
        except (DuplicateFriendError, KeyFormatError):
            return state.name

    def _after_update(self, state: GroupState, problems: list[Problem]) -> None:
        """Writes an update may make: the epoch without leavers (its designated member only), and a fresh
        receive key when a page used our card's keys or our newest key has served enough pages."""
        membership = state.current()
        if state.status or not membership.members:
            return  # nothing to write for a group we left, or whose member list has not arrived
        if state.behind < state.epoch and (state.id, state.epoch) not in self._checked:
            # Our lane was not read in this update (the member list came in it): compared before any write, as
            # a profile that lost its group file and joined the epoch again may have pages there already.
            self._check_own_lane(state)
        if state.behind >= state.epoch:
            self._ask_for_fresh_start(state)
            return  # our lane of this epoch is another copy's now: nothing is written in it
        if (state.id, state.epoch) not in self._checked:
            return  # the ledger could not be read: what we would write waits for the next update
        leavers = [f for f in state.leaving if membership.get(f) is not None]
        if leavers:
            remaining = [m for m in membership.members if m.fingerprint not in leavers]
            if remaining and rekeyer(remaining) == self.me:
                if not any(m.admin for m in remaining):
                    remaining = [Member(m.fingerprint, m.since, m.admin or m.fingerprint == self.me) for m in remaining]
                try:
                    self._start_epoch(state, "leave", remaining, leavers[0], membership.name, [])
                except MessageError as exc:
                    problems.append(Problem(ME, "skipped", f"the epoch without those who left waits: {exc}"))
                return
        if state.witness_due == state.epoch:
            self._write_witness(state)
        if state.resend and membership.get(self.me) is not None:
            self._send_again(state, problems)
        used_static = state.used_static
        own = state.own(state.epoch)
        state.used_static = False
        # A page of ours in this epoch has announced a receive key already; with none, one is announced,
        # as a pair's silent reader does (one small write), and again once the newest key served enough pages.
        if (used_static and own.page == 0) or state.key_uses >= ROTATE_AFTER_PAGES:
            try:
                if own.epoch != state.epoch:
                    own.restart(state.epoch)
                    state.mine[str(state.epoch)] = own.to_dict()
                narrowed = self._narrowed(state)
                self._start_page(state, own, self._readers(state, state.epoch, self.me) if narrowed is None
                                 else narrowed)
                if narrowed is not None:
                    state.restricted = [*state.restricted[-15:], page_id(state.epoch, own.page)]
                own.written_at[str(own.page)] = format_timestamp(self.chat.clock())
                state.mine[str(state.epoch)] = own.to_dict()
                self._set_all([(self._address(state, state.epoch, self.me, own.page), own.pages[str(own.page)])])
            except MessageError as exc:
                log.warning("announcing a receive key waits: %s", exc)

    def _reapply(self, name: str, change: dict[str, Any], problems: list[Problem]) -> None:
        """Apply again, on top of the winner, a change of ours that lost a race for its epoch."""
        action, target = str(change.get("a")), str(change.get("t", ""))
        try:
            if action == "add":
                friend = self._friend_by_fingerprint(target)
                if friend is not None:
                    self.add(name, friend.nickname)
            elif action == "remove":
                self.remove(name, target)
            elif action == "admin":
                self.make_admin(name, target)
            elif action == "rename":
                self.rename(name, str(change.get("n")))
            elif action == "rejoin":
                self._rejoin(name, target)
            problems.append(Problem(ME, "restart", f"your change ({action}) was made at the same time as "
                                    "another admin's, and was applied again after it"))
        except (MessageError, UnknownFriendError, DuplicateFriendError, KeyFormatError) as exc:
            problems.append(Problem(ME, "restart", f"your change ({action}) was made at the same time as another "
                                    f"admin's and no longer applies: {exc}"))

    # -- disappearing messages (the rules are retention.py's, as for pairs) ---------------------------------

    def set_disappearing(self, name: str, seconds: int) -> SendResult:
        """Turn disappearing messages on (5 minutes to 4 weeks) or off (0) for the whole group: a signed
        line every member sees; the newest setting from any member wins."""
        if seconds and not retention.MIN_SECONDS <= seconds <= retention.MAX_SECONDS:
            raise MessageError("disappearing messages take a timer from 5 minutes to 4 weeks")
        found = self._state(name)
        with self.store.lock(found.id):
            state = self.store.load(found.id)
            self._writable(state)
            state.settings = {"disappear": seconds, "at": to_micros(self.chat.clock())}
            address, value, sent = self._write(state, "setting", "", retention.setting_body(seconds),
                                               readers=self._narrowed(state))
            state.settings["at"] = to_micros(sent.time)
            self.store.save(state)
            error = self._set_all([(address, value)])
        return SendResult(message=sent, error=error)

    def disappearing(self, name: str) -> int:
        return _timer(self._state(name))

    def _timer_record(self, state: GroupState, record: Record) -> None:
        seconds = retention.parse_setting(record.body)
        when = to_micros(record.timestamp)
        if seconds is not None and when > int(state.settings.get("at", 0)):
            state.settings = {"disappear": seconds, "at": when}

    def _expired(self, state: GroupState, epoch: int, writer: str, number: int, record: Record) -> bool:
        """Whether ``record`` has expired (it is not shown, even from what this update opened)."""
        timer, now = _timer(state), to_micros(self.chat.clock())
        if not timer:
            return False
        if writer == self.me:
            if page_id(epoch, number) not in state.own_times:
                return False
            return retention.own_expiry(to_micros(record.timestamp), timer) <= now
        entries = state.their_times.get(f"{epoch}:{writer}:{number}", [])
        entry = next((e for e in entries if e[2] == record.seq), None)
        return entry is not None and retention.received_expiry(entry[0], entry[1], timer) <= now

    def _expire(self, state: GroupState) -> None:
        """Delete the keys of every expired message: chain keys move past them, receive keys go."""
        timer, now = _timer(state), to_micros(self.chat.clock())
        copies = self._copies(state)
        for pid, times in list(state.own_times.items()):
            epoch_text, number_text = pid.split(":")
            own = state.own(int(epoch_text))
            count = retention.expired_prefix([retention.own_expiry(t, timer) for t in times], now) if timer else 0
            _advance(own.secrets, pid, count)
            if times and count == len(times) and int(number_text) != own.page:
                own.secrets[pid] = EXPIRED
                del state.own_times[pid]
                copies.drop(self.me[:16], int(epoch_text), int(number_text))  # an expired page is never put back
                own.pages.pop(number_text, None)
            state.mine[epoch_text] = own.to_dict()
        gone: set[str] = set()
        for place, entries in list(state.their_times.items()):
            epoch_text, writer, number_text = place.split(":")
            lane = state.lane(int(epoch_text), writer)
            expiries = [retention.received_expiry(e[0], e[1], timer) if e[0] and timer else None for e in entries]
            count = retention.expired_prefix(expiries, now)
            _advance(lane.secrets, number_text, count)
            if entries and count == len(entries):
                gone.add(place)
                copies.drop(writer[:16], int(epoch_text), int(number_text))
                if int(number_text) < lane.top:
                    lane.secrets[number_text] = EXPIRED
                    del state.their_times[place]
            state.put_lane(int(epoch_text), writer, lane)
        keep = []
        newest = max((int(e["index"]) for e in state.receive_keys), default=0)
        for entry in state.receive_keys:
            used_by = [place for place, index in state.page_keys.items() if index == int(entry["index"])]
            if used_by and all(place in gone or _expired_place(state, place) for place in used_by):
                # Nothing keyed to this receive key is readable any more: the key goes, and with it every way
                # to open those pages again (their chain keys are already past the end).
                for place in used_by:
                    del state.page_keys[place]
                if int(entry["index"]) == newest:
                    state.key_uses = ROTATE_AFTER_PAGES  # announce a fresh one at the end of this update
                continue
            keep.append(entry)
        state.receive_keys = keep
        self._opened.clear()  # nothing opened before expiry may be shown from memory
        self._opened_bytes = 0

    # -- the view ---------------------------------------------------------------------------------------

    def _view(
        self, state: GroupState, session: _Session, shown: dict[tuple[int, str], list[OpenPage]],
        problems: list[Problem], shown_at: dict[tuple[int, str, int], datetime],
    ) -> ConversationView:
        messages: list[ChatMessage] = []
        new_messages: list[ChatMessage] = []
        seen_records: set[tuple[int, str, int]] = set()
        for (epoch, writer), pages in shown.items():
            label = self._label(state, writer)
            own = state.own(epoch) if writer == self.me else None
            closed = state.lane(epoch, writer).closed_at if own is None else None
            for page in pages:
                for record in page.records:
                    key = (epoch, writer, record.seq)
                    if key in seen_records or (record.type == "setting" and record.type_ext != ""):
                        continue
                    if closed is not None and record.seq > closed:
                        continue  # written after its writer was taken out (reported by _read_lane)
                    if self._expired(state, epoch, writer, page.number, record):
                        continue
                    seen_records.add(key)
                    status = None
                    if own is not None:
                        status = "delivered" if record.seq <= own.confirmed else "pending"
                    message = ChatMessage(
                        sender=label, receiver=ME if own is None else state.name,
                        time=shown_at.get(key, record.timestamp),
                        type=record.type, type_ext=record.type_ext, body=record.body, seq=record.seq,
                        status=status, epoch=epoch,
                    )
                    messages.append(message)
                    content = hashlib.sha256(_json({"t": record.type, "x": record.type_ext,
                                                    "b": record.body.hex()})).hexdigest()
                    once = (writer, to_micros(record.timestamp), content)
                    if own is None and once not in session.returned:
                        session.returned.add(once)
                        new_messages.append(message)
        for micros, by, template, epoch, *rest in state.notices:
            moment = _from_micros(int(micros))
            target = str(rest[0]) if rest else ""
            text = str(template).replace(WHO, "you" if target == self.me else self._label(state, target))
            # Numbered by their time (negative: never a record's), so that each line is a message of its own.
            messages.append(ChatMessage(
                sender=self._label(state, str(by)), receiver=state.name, time=moment, type="setting",
                type_ext=NOTICE_EXT, body=str(text).encode("utf-8"), seq=-int(micros), epoch=int(epoch),
            ))
        problems = [p for p in problems if p.kind != "expired"]  # disappeared by the members' choice
        if state.status == "removed":
            problems = [p for p in problems if p.kind != "undecryptable"]
        # A gap or a rollback is said when two updates in a row find it: a single stale read of the
        # ledger (an older copy of a page that was just written) is the normal case, not an attack.
        suspected = {(p.lane, p.kind, p.detail) for p in problems if p.kind in ("gap", "rollback")}
        problems = [p for p in problems if p.kind not in ("gap", "rollback")
                    or (p.lane, p.kind, p.detail) in session.suspected]
        session.suspected = suspected
        messages.sort(key=lambda m: (m.time, m.outgoing, m.seq))
        unique: list[Problem] = []
        for problem in problems:
            if problem not in unique:
                unique.append(problem)
        # Older pages exist beyond the window when a lane shown starts after its page 1, or an earlier epoch
        # we can read was not read ("Load older messages" and ``read --all`` read everything).
        has_older = any(min(p.number for p in pages) > 1 for pages in shown.values() if pages) \
            or bool(self._lanes_with_pages(state) - set(shown))
        return ConversationView(friend=state.name, messages=messages, problems=unique, new_messages=new_messages,
                                has_older=has_older)

    def _lanes_with_pages(self, state: GroupState) -> set[tuple[int, str]]:
        """(epoch, writer) of every lane of which we have read a page (ours included)."""
        lanes = {(int(k.split(":")[0]), k.split(":")[1]) for k, v in state.lanes.items() if v.get("top")}
        lanes |= {(int(e), self.me) for e, own in state.mine.items() if own.get("page")}
        return lanes


#: What the store keeps of a page whose every message disappeared: no key, only the fact.
EXPIRED = "expired"


def _timer(state: GroupState) -> int:
    value = state.settings.get("disappear", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _expired_place(state: GroupState, place: str) -> bool:
    epoch, writer, number = place.split(":")
    return state.lane(int(epoch), writer).secrets.get(number) == EXPIRED


def _advance(secrets: dict[str, str], pid: str, count: int) -> None:
    """Keep only the keys of records from ``count`` on for page ``pid``."""
    stored = secrets.get(pid)
    if stored is None or stored == EXPIRED or count == 0:
        return
    keys = PageKeys.from_text(stored)
    if count > keys.start:
        secrets[pid] = keys.advanced(count).to_text()


def _from_micros(micros: int) -> datetime:
    from reschat.page import from_micros

    return from_micros(micros)


class _Unopenable(Exception):
    pass


class _Waiting(Exception):
    pass


class _Budget(Exception):
    pass


__all__ = [
    "GROUP_KIND",
    "MAX_MEMBERS",
    "GroupInfo",
    "GroupService",
    "GroupState",
    "Member",
    "MemberInfo",
    "Membership",
    "check_change",
    "rekeyer",
]
