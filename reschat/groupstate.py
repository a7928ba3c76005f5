"""What a member keeps of a group, and the rules every member applies to it alike.

The group engine (``group.py``) reads and writes the ledger; this module holds what it decides with: the
membership of each epoch (``Member``, ``Membership``) and the rules a change must pass (``check_change``,
``parse_members``, who starts a departure's epoch), a group's local state (``GroupState``, ``LaneState``)
and its sealed file (``GroupStore``), the record types of the group protocol, and how a group record's
causal mark names another member's record (``encode_mark``, ``decode_mark``). Nothing here reads the
ledger or a clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reschat.chat import GROUP_INVITATION, GROUP_NOTICE, GROUP_REJOIN
from reschat.errors import ProfileError
from reschat.keystore import read_sealed, write_sealed
from reschat.outbox import OwnLane
from reschat.page import MAX_SEQ
from reschat.storage import file_lock

log = logging.getLogger(__name__)

#: ``Header.kind`` of a group's page (0 is a pair's lane).
GROUP_KIND = 1
#: Members of one group, its creator included: one KEM slot per reader fits ``page.MAX_SLOTS``.
MAX_MEMBERS = 32
#: ``setting`` records of the group protocol, told apart by their type extension.
CHANGE_EXT = "gchange"
KEY_EXT = "gkey"
ROSTER_EXT = "groster"
LEAVE_EXT = "gleave"
WITNESS_EXT = "gwitness"
#: The writer's word, after pages keyed to fewer members than its epoch, that they hold records only the
#: members it names may read (``_send_again``): a member not named passes over them (``_passed_over``).
PASSED_EXT = "gpassed"
INVITE_EXT = GROUP_INVITATION
#: A member's signed request, in its pairwise lane with an admin, for a fresh start (``_ask_for_fresh_start``).
REJOIN_EXT = GROUP_REJOIN
#: The type extension of the membership lines the engine makes for display (never on the ledger).
NOTICE_EXT = GROUP_NOTICE
ACTIONS = ("create", "add", "remove", "leave", "rename", "admin", "rejoin")
#: The causal mark's first field (``Record.causal[0]`` of a group record): the named lane's index + 1 in its
#: epoch's membership sorted by fingerprint (6 bits: 1-32, 0 names nobody), the first byte of that member's
#: fingerprint (8 bits: a membership told differently names nobody rather than someone else) and how many
#: epochs before the record's own the named record was written (17 bits). 31 bits: under ``MAX_EPOCH``.
_MARK_INDEX_BITS = 6
_MARK_CHECK_BITS = 8
_MARK_DELTA_SHIFT = _MARK_INDEX_BITS + _MARK_CHECK_BITS
MAX_MARK_DELTA = 2 ** (31 - _MARK_DELTA_SHIFT) - 1


# --- membership -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    fingerprint: str  # 64 hex digits
    since: int  # the membership epoch it joined in
    admin: bool

    def to_list(self) -> list[Any]:
        return [self.fingerprint, self.since, int(self.admin)]


@dataclass
class Membership:
    """Who is in the group for one epoch, and who started that epoch with which change."""

    epoch: int
    secret: str  # hex; "" when only the change is known (a removed member learns no secret)
    by: str
    members: list[Member]
    name: str
    action: str = "create"
    target: str = ""

    def fingerprints(self) -> list[str]:
        return [m.fingerprint for m in self.members]

    def get(self, fingerprint: str) -> Member | None:
        return next((m for m in self.members if m.fingerprint == fingerprint), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["members"] = [m.to_list() for m in self.members]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Membership:
        members = [Member(str(f), int(s), bool(a)) for f, s, a in data.get("members", [])]
        return cls(
            epoch=int(data["epoch"]), secret=str(data.get("secret", "")), by=str(data.get("by", "")),
            members=members, name=str(data.get("name", "")), action=str(data.get("action", "create")),
            target=str(data.get("target", "")),
        )


def longest_standing(members: Iterable[Member]) -> Member | None:
    """The member who joined first (the lower fingerprint between equals): the successor admin."""
    return min(members, key=lambda m: (m.since, m.fingerprint), default=None)


def rekeyer(members: list[Member]) -> str:
    """Who starts the epoch that takes leavers out: the first admin, else the longest-standing member."""
    admins = [m for m in members if m.admin]
    chosen = longest_standing(admins or members)
    return chosen.fingerprint if chosen else ""


def parse_members(change: dict[str, Any]) -> list[Member] | None:
    """The membership a change names, when it is well formed: 1 to 32 distinct fingerprints, an admin,
    nobody joining after the epoch it starts (None otherwise; a stranger's record never raises)."""
    members, epoch = change.get("m"), change.get("e")
    if not isinstance(members, list) or not isinstance(epoch, int) or isinstance(epoch, bool):
        return None
    try:
        parsed = [Member(str(f), int(s), bool(a)) for f, s, a in members]
    except (TypeError, ValueError):
        return None
    fprs = [m.fingerprint for m in parsed]
    if not 1 <= len(parsed) <= MAX_MEMBERS or len(set(fprs)) != len(fprs) \
            or any(len(f) != 64 or any(c not in "0123456789abcdef" for c in f) for f in fprs):
        return None
    if not any(m.admin for m in parsed) or any(not 1 <= m.since <= epoch for m in parsed):
        return None
    return parsed


def check_change(
    old: Membership | None, change: dict[str, Any], writer: str, departed: Iterable[str] | None = None,
) -> str:
    """Why ``change``, written by ``writer`` after epoch ``old``, is not valid ('' when it is).

    ``departed``: the members of ``old`` whose own signed leave record was read (None: not checked yet,
    as when a change is first read and the leavers' lanes may come later in the same round). A departure
    takes out only those: nobody else can be written out of the group as having left.
    """
    action = change.get("a")
    if action not in ACTIONS or change.get("by") != writer:
        return "a malformed membership change"
    name = change.get("n")
    if not isinstance(name, str) or not name.strip():
        return "a change without a group name"
    new = parse_members(change)
    if new is None:
        return "a membership that is not valid"
    epoch = change["e"]
    fprs = [m.fingerprint for m in new]
    if old is None:
        if action != "create" or epoch != 1 or writer not in fprs:
            return "a change that does not start the group"
        return ""
    if epoch != old.epoch + 1:
        return f"a change naming epoch {epoch} after epoch {old.epoch} (replayed or misplaced)"
    before = {m.fingerprint: m for m in old.members}
    after = {m.fingerprint: m for m in new}
    author = before.get(writer)
    if author is None:
        return "a change by someone who is not a member"
    added = set(after) - set(before)
    gone = set(before) - set(after)
    if any(after[f].since != epoch for f in added) or any(after[f].since != before[f].since for f in after
                                                            if f in before):
        return "a membership that rewrites who joined when"
    if action == "leave":
        remaining = [before[f] for f in after]
        successor = not any(m.admin for m in remaining) and longest_standing(remaining) == before.get(writer)
        if added or not gone or not (author.admin or successor):
            return "a departure that is not valid"
        if departed is not None and not gone <= set(departed):
            return "a departure of members who did not leave"
        return ""
    if not author.admin:
        return "a change by a member who is not an admin"
    target = change.get("t", "")
    if action == "add" and (gone or added != {target}):
        return "an addition that is not valid"
    if action == "remove" and (added or gone != {target} or target == writer):
        return "a removal that is not valid"
    # A fresh start keeps the membership as it is and names a member other than the admin: its lanes begin
    # again in the new epoch, so that a member whose local state fell behind the ledger never writes twice
    # at one address of its old lane.
    if action == "rejoin" and (added or gone or target not in after or target == writer):
        return "a fresh start that is not valid"
    if action in ("rename", "admin") and (added or gone):
        return "a change that is not valid"
    demoted = [f for f in after if f in before and before[f].admin and not after[f].admin]
    promoted = [f for f in after if f in before and after[f].admin and not before[f].admin]
    if demoted or (promoted and (action != "admin" or promoted != [target])):
        return "a change of admins that is not valid"
    return ""


# --- the local state of one group -----------------------------------------------------------------


@dataclass
class LaneState:
    """One member's lane in one epoch, as far as we verified it (as keystore.FriendLane for pairs)."""

    top: int = 0
    seq: int = 0
    digest: str = ""
    digests: dict[str, str] = field(default_factory=dict)  # seq -> digest of every record read
    secrets: dict[str, str] = field(default_factory=dict)  # page -> PageKeys text (history keys)
    #: The last record shown of a member the next epoch took out (None: open): what it writes later is not.
    closed_at: int | None = None
    #: The page from which a gap in the records (seq + 1 not read yet) is read again (0: none).
    held: int = 0
    #: [seq, micros] of the newest MAX_LANE_TIMES records read, dated in the order written (a record is never
    #: earlier than one before it in the lane): what a causal mark naming one of them is checked against.
    times: list[list[int]] = field(default_factory=list)


@dataclass
class GroupState:
    id: str
    name: str
    epoch: int = 0
    epochs: dict[str, dict[str, Any]] = field(default_factory=dict)  # epoch -> Membership dict
    cards: dict[str, str] = field(default_factory=dict)  # fingerprint -> card (verified against it)
    vouched: dict[str, str] = field(default_factory=dict)  # fingerprint -> the admin whose roster carried it
    lanes: dict[str, dict[str, Any]] = field(default_factory=dict)  # "epoch:fingerprint" -> LaneState
    mine: dict[str, dict[str, Any]] = field(default_factory=dict)  # epoch -> outbox.OwnLane
    receive_keys: list[dict[str, Any]] = field(default_factory=list)  # [{"index", "key"}]
    key_counter: int = 0
    key_uses: int = 0  # others' pages keyed to our newest receive key
    announced: dict[str, str] = field(default_factory=dict)  # fingerprint -> newest announced receive key
    announced_at: dict[str, list[int]] = field(default_factory=dict)  # fingerprint -> [epoch, page]
    status: str = ""  # "" | "removed" | "left"
    #: The newest epoch in which our own lane on the ledger went past this state (a copy restored from an older
    #: backup, or the profile used on another machine): nothing more is written in it, nor in any before it.
    behind: int = 0
    asked: int = 0  # the epoch ``behind`` for which the admins were asked for a fresh start
    leaving: list[str] = field(default_factory=list)  # members whose leave record awaits a new epoch
    #: epoch -> members whose own signed leave record of that epoch was read (what a 'leave' change may take out).
    departed: dict[str, list[str]] = field(default_factory=dict)
    notices: list[list[Any]] = field(default_factory=list)  # [micros, by, text, epoch] membership lines
    rebase: list[dict[str, Any]] = field(default_factory=list)  # our changes that lost a race, to re-apply
    #: Our messages written in an epoch that lost a race, to be written again in the winner's epoch:
    #: [{"type", "ext", "body" (hex), "at" (their original time), "to" (the members of the epoch it was
    #: first written in: nobody else is ever keyed to it)}].
    resend: list[dict[str, Any]] = field(default_factory=list)
    #: "epoch:seq" -> the members a message we sent again was keyed to, when fewer than its epoch's (so that
    #: losing that epoch too keys it to no one more).
    resent_to: dict[str, list[str]] = field(default_factory=dict)
    #: Valid changes read for a coming epoch: epoch -> admin -> {"change", "secret"} (``_resolve`` decides).
    proposals: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: Our pages keyed to fewer members than their epoch (a new epoch's secret): nothing is appended to them.
    restricted: list[str] = field(default_factory=list)
    used_static: bool = False  # a page keyed to our card's static keys was read: announce a receive key
    rotation: int = 0  # where the rotating re-read of older pages goes on
    #: Disappearing messages: the group's timer {"disappear": seconds, "at": micros of the setting}.
    settings: dict[str, int] = field(default_factory=dict)
    own_times: dict[str, list[int]] = field(default_factory=dict)  # "epoch:page" -> sending time of each record
    #: "epoch:writer:page" -> [sending time, first display (0: not yet), seq] of each record of others' pages.
    their_times: dict[str, list[list[int]]] = field(default_factory=dict)
    page_keys: dict[str, int] = field(default_factory=dict)  # "epoch:writer:page" -> our receive key that opened it
    #: The epoch we joined by invitation, whose membership came from the inviting admin alone (0: none), and
    #: the witnesses of it we read, on its board or in a member's lane (``_take_witness``).
    newcomer: int = 0
    given: list[list[Any]] = field(default_factory=list)  # the membership the inviting admin gave us
    board: dict[str, list[str]] = field(default_factory=dict)  # witness writer -> the members it names
    provisional: list[str] = field(default_factory=list)  # counted in from the board (``_recount``)
    witness_due: int = 0  # an epoch that added members, whose membership we still owe them on its board
    #: Our witness as written, to put back while the members it vouches to may still need it:
    #: {"epoch", "slot", "value", "checks"}.
    witness_kept: dict[str, Any] = field(default_factory=dict)
    unread: int = 0
    #: [micros, epoch, writer, seq, the admin who started that epoch] of the newest message of another member
    #: read (by its date in its lane, at most CLOCK_AHEAD past our clock when read): what our next mark names.
    newest_seen: list[Any] = field(default_factory=list)

    @property
    def witnesses(self) -> list[str]:
        """The members whose witness of the epoch we joined we read."""
        return sorted(self.board)

    @property
    def named(self) -> list[str]:
        """Members we were not given whom every member we were given that vouched names (one at least)."""
        given = {str(entry[0]) for entry in self.given}
        vouchers = [names for writer, names in self.board.items() if writer in given]
        return sorted({f for names in vouchers for f in names if f not in given
                       and all(f in other for other in vouchers)}) if vouchers else []

    def membership(self, epoch: int) -> Membership | None:
        data = self.epochs.get(str(epoch))
        return Membership.from_dict(data) if data else None

    def current(self) -> Membership:
        membership = self.membership(self.epoch)
        if membership is None:
            raise ProfileError("a group's state is damaged (no current membership)")
        return membership

    def lane(self, epoch: int, fingerprint: str) -> LaneState:
        data = self.lanes.get(f"{epoch}:{fingerprint}", {})
        return LaneState(**{k: v for k, v in data.items() if k in LaneState.__dataclass_fields__})

    def put_lane(self, epoch: int, fingerprint: str, lane: LaneState) -> None:
        self.lanes[f"{epoch}:{fingerprint}"] = asdict(lane)

    def own(self, epoch: int) -> OwnLane:
        return OwnLane.from_dict(self.mine.get(str(epoch)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> GroupState:
        if not isinstance(data, dict):
            raise ProfileError("a group's state is damaged")
        try:
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise ProfileError("a group's state is damaged") from exc


class GroupStore:
    """Each group's sealed state file (``groups/<id>.state``), with a lock for read-modify-write."""

    def __init__(self, directory: Path, store_key: bytes) -> None:
        self.directory = Path(directory) / "groups"
        self.store_key = store_key

    def _path(self, group_id: str) -> Path:
        return self.directory / f"{group_id[:32]}.state"

    def lock(self, group_id: str) -> Any:
        return file_lock(self.directory / f"{group_id[:32]}.lock")

    def load(self, group_id: str) -> GroupState:
        data = read_sealed(self._path(group_id), self.store_key)
        if data is None:
            raise ProfileError("no such group")
        return GroupState.from_json(data)

    def save(self, state: GroupState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_sealed(self._path(state.id), self.store_key, state.to_json())

    def all(self) -> list[GroupState]:
        try:
            paths = sorted(self.directory.glob("*.state"))
        except OSError:
            return []
        groups = []
        for path in paths:
            try:
                groups.append(GroupState.from_json(read_sealed(path, self.store_key)))
            except ProfileError as exc:
                log.warning("a group's state cannot be read: %s", exc)
        return groups


def joined_by_invitation(membership: Membership, before: Membership | None) -> list[str]:
    """Who joined ``membership``'s epoch by invitation, and so took it from the inviting admin alone: the
    members the epoch before lacked, and the target of a fresh start (``rejoin``)."""
    joined = [f for f in membership.fingerprints() if before is None or before.get(f) is None]
    if membership.action == "rejoin" and membership.target and membership.target not in joined \
            and membership.get(membership.target) is not None:
        joined.append(membership.target)
    return joined


def same_change(adopted: Membership, change: dict[str, Any]) -> bool:
    """Whether ``change`` names what ``adopted`` holds (the epoch one admin started): members, name, action."""
    return [m.to_list() for m in adopted.members] == change.get("m") and adopted.name == change.get("n") \
        and adopted.action == change.get("a") and adopted.target == str(change.get("t", ""))


def encode_mark(delta: int, index: int, fingerprint: str, seq: int) -> tuple[int, int]:
    """The causal pair of a group record naming record ``seq`` of the member ``fingerprint``, whose lane is
    ``index`` (0-based) in the membership, sorted by fingerprint, of the epoch ``delta`` before the record's."""
    if not 0 <= delta <= MAX_MARK_DELTA or not 0 <= index < MAX_MEMBERS or not 1 <= seq < MAX_SEQ:
        raise ValueError("a causal mark out of range")
    return (delta << _MARK_DELTA_SHIFT) | (int(fingerprint[:2], 16) << _MARK_INDEX_BITS) | (index + 1), seq


def decode_mark(epoch: int, causal: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """What the causal pair of a record of ``epoch`` names: (epoch, index 0-based, first fingerprint byte, seq),
    or None when it names nobody (seq 0, as in every group record written before the mark: (epoch, 0)).
    Any pair a page parses to decodes without error; what it names is for the reader to look up, never trusted."""
    first, seq = causal
    index = first & ((1 << _MARK_INDEX_BITS) - 1)
    check = (first >> _MARK_INDEX_BITS) & ((1 << _MARK_CHECK_BITS) - 1)
    delta = first >> _MARK_DELTA_SHIFT
    if seq <= 0 or index == 0 or delta >= epoch:
        return None
    return epoch - delta, index - 1, check, seq


def last_fresh_start(state: GroupState, fingerprint: str) -> int:
    """The newest epoch an admin started to give ``fingerprint`` a fresh start (0: none)."""
    return max((int(e) for e, m in state.epochs.items() if m.get("action") == "rejoin"
                and m.get("target") == fingerprint), default=0)
