"""The board (a new member's second source for its membership) and the lost-race re-send, attacked.

Conventions as in ``tests/test_group_attacks.py``: one test per attack, against the real engine and a shared
memory ledger; an attacker's modified client is the engine's own code driven with a state it is free to
edit. An attack the code resists is a plain test asserting the resistance (its docstring names the line
whose removal makes it fail); an attack that works is written as the secure behaviour and marked
``xfail(strict=True, reason="ATTACK WORKS: ...")``.

The board: members of the epoch before an addition each write a signed witness (``_write_witness``) at a
slot of the new epoch's board; the new member reads the 32 slots (``_read_board``) and counts in any
witness writer it was not given. The lost-race re-send: a member that moved to the epoch of the admin
whose change then loses (the higher fingerprint) writes its messages of that epoch again in the winner's
(``_lose_epoch``, ``_send_again``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from Crypto.Random import get_random_bytes

from reschat import kem
from reschat.group import MAX_DECAPSULATIONS, _json
from reschat.groupstate import GROUP_KIND, WITNESS_EXT, GroupState
from reschat.lane import add_record, new_page
from reschat.ledger import MemoryLedger
from reschat.page import GENESIS_HASH, Record, SealedPage, to_micros
from tests.conftest import befriend, settle
from tests.test_group_attacks import JUNK, accept, board_slot, edit, two_memberships
from tests.test_groups import Member as Person
from tests.test_groups import member, team, texts, two_admins, until


def added(tmp_path: Path, ledger: MemoryLedger) -> tuple[Person, Person, Person, Person]:
    """An honest addition: alice adds dave to alice, bob and carol; nobody has vouched yet."""
    alice, bob, carol = team(tmp_path, ledger)
    dave = member("dave", 3, tmp_path, ledger)
    befriend(alice.person, dave.person)
    alice.groups.add("team", "dave")
    return alice, bob, carol, dave


def joined(dave: Person) -> None:
    accept(dave)
    until(dave, "team", lambda v: bool(dave.state("team").current().members))


def current(who: Person) -> GroupState:
    """The state of ``who``'s only group (whatever it is called by now)."""
    return who.groups.store.all()[0]


def sybil_witness(sponsor: Person, sybil: Person, group: str, name_also: list[str] | None = None) -> None:
    """A member's modified client hands the epoch's state (the secret and the cards it holds) to a key pair
    of its own making, ``sybil``, which writes a witness with the engine's own code: the membership it names
    has the sybil in it (in the epoch before too, so that only the real newcomers are "added")."""
    state = copy.deepcopy(sponsor.groups.store.load(sponsor.state(group).id))
    entry = [sybil.fingerprint, 1, 0]
    for epoch in (str(state.epoch - 1), str(state.epoch)):
        state.epochs[epoch]["members"] = [*state.epochs[epoch]["members"], entry]
    for other in name_also or []:
        state.epochs[str(state.epoch)]["members"].append([other, state.epoch, 0])
    sybil.groups._write_witness(state)


def raw_witness(writer: Person, group: str, slot: int, body: bytes, to: list[Person],
                record_type: str = "setting", ext: str = WITNESS_EXT) -> None:
    """``writer`` (a member holding the epoch's secret) puts a page of its own making on the board: signed by
    it, keyed to ``to``'s static keys, at ``slot``, with one record of ``body``."""
    g = writer.groups
    state = writer.state(group)
    epoch = state.epoch
    _address_key, conversation = g._keys(state, epoch)
    clock = writer.person.chat.clock()
    sealed, header, secret = new_page(
        conversation=conversation, writer=bytes.fromhex(writer.fingerprint), epoch=epoch, number=slot,
        first_seq=1, link=GENESIS_HASH, readers=[w.person.identity.statics.public for w in to],
        next_receive_key=kem.ReceiveKey.generate().public, created=to_micros(clock),
        signer=writer.person.chat._sign, kind=GROUP_KIND)
    record = Record(type=record_type, seq=1, prev=GENESIS_HASH, timestamp=clock, causal=(epoch, 0),
                    type_ext=ext, body=body)
    sealed, _signed, _digest = add_record(sealed, header, secret, record, writer.person.chat._sign)
    g.ledger.set(board_slot(writer, group, slot), sealed.to_string())


# --- the board: a member (not an admin) counts in whom it likes -------------------------------------------


# Was an xfail ("ATTACK WORKS"); held since a member counted in from the board must be named by every member we
# were given who vouched (_recount).
def test_a_member_cannot_make_a_newcomer_count_in_a_key_pair_of_its_making(tmp_path: Path) -> None:
    """An honest addition of dave; bob, no admin, moves to the epoch and has a sybil (a fresh key pair whose
    card is named "alice") vouch on the board for a membership with the sybil in it. dave counts it in."""
    ledger = MemoryLedger()
    _alice, bob, _carol, dave = added(tmp_path, ledger)
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    sybil = member("alice", 7, tmp_path, ledger)
    sybil_witness(bob, sybil, "team")
    joined(dave)
    for _ in range(3):
        dave.groups.get_update("team")
    assert sybil.fingerprint not in dave.state("team").current().fingerprints()


# Was an xfail ("ATTACK WORKS"); held since the sybil is not counted in (_recount), and a page keyed to more
# readers than the epoch has is still read (_find_secret).
def test_a_members_sybil_witness_does_not_make_the_newcomer_unreadable_to_the_others(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    _alice, bob, carol, dave = added(tmp_path, ledger)
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    sybil_witness(bob, member("eve", 7, tmp_path, ledger), "team")
    joined(dave)
    until(carol, "team", lambda v: carol.state("team").epoch == 2)
    dave.groups.send_message("dave speaks", "team")
    view = until(carol, "team", lambda v: "dave speaks" in texts(v))
    assert "dave speaks" in texts(view)


# Was an xfail ("ATTACK WORKS"); held since members counted in from the board are the admin's to name in its
# next change (_checking).
def test_a_members_sybil_witness_does_not_cut_the_newcomer_off_the_next_epochs(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, _carol, dave = added(tmp_path, ledger)
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    sybil_witness(bob, member("eve", 7, tmp_path, ledger), "team")
    joined(dave)
    alice.groups.rename("team", "crew")
    for _ in range(5):
        dave.groups.get_update(current(dave).name)
    assert current(dave).epoch == 3


# Was an xfail ("ATTACK WORKS"); held since only members named by every member we were given who vouched are
# waited for (_recount).
def test_a_member_naming_a_phantom_does_not_keep_the_newcomer_reading_the_board(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    _alice, bob, carol, dave = added(tmp_path, ledger)
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    # bob's modified client: its own witness (same slot: the phantom sorts last) names one more member.
    state = copy.deepcopy(bob.groups.store.load(bob.state("team").id))
    for epoch in ("1", "2"):  # in the epoch before too: only dave is "added", whose card bob holds
        state.epochs[epoch]["members"].append(["f" * 64, 1, 0])
    bob.groups._write_witness(state)
    until(carol, "team", lambda v: carol.state("team").epoch == 2)
    joined(dave)
    for _ in range(4):
        dave.groups.get_update("team")
    assert sorted(dave.state("team").witnesses) == sorted([bob.fingerprint, carol.fingerprint])
    reads = len(ledger.operations)
    dave.groups.get_update("team")
    assert dave.groups._board_places(dave.state("team")) == {}, \
        f"an idle update of dave's still reads the board ({len(ledger.operations) - reads} ledger operations)"


# --- the board: the witness of a member the admin left out is erased ---------------------------------------


# Was an xfail ("ATTACK WORKS"); held since a witness writer re-reads its slot and puts its witness back
# (_kept_witness).
def test_the_admin_who_left_a_member_out_cannot_erase_her_witness_from_the_board(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, _bob, carol, dave = two_memberships(tmp_path, ledger)
    joined(dave)
    before = {slot: ledger.get(board_slot(alice, "team", slot)) for slot in range(1, 33)}
    until(carol, "team", lambda v: carol.state("team").epoch == 2)
    written = [slot for slot in range(1, 33) if ledger.get(board_slot(alice, "team", slot)) != before[slot]]
    assert written  # carol vouched
    for slot in written:  # alice holds the epoch's address key: she computes every slot
        ledger.set(board_slot(alice, "team", slot), JUNK)
    for _ in range(4):
        for who in (carol, dave):
            who.groups.get_update("team")
    assert carol.fingerprint in dave.state("team").current().fingerprints()


# --- the board: replays and malformed witnesses ------------------------------------------------------------


def test_a_witness_copied_from_another_groups_board_is_refused(tmp_path: Path) -> None:
    """bob vouches for dave's addition to 'side'; a member copies that witness to the same slot of the board of
    'team' (where dave was added too, and bob has not vouched yet). It names another group and is sealed
    under another epoch's conversation key: reported, and bob is not counted as having vouched for 'team'.
    Refused by the ``open_page(..., conversation=conversation, epoch=epoch, number=slot)`` of ``_open_witness``
    (reported as 'no valid witness'); the ``data.get("g") != state.id`` check of ``_read_board`` is the second
    line, so the test fails only when both go."""
    ledger = MemoryLedger()
    alice, bob, carol, dave = added(tmp_path, ledger)
    alice.groups.create("side", ["bob", "carol"])
    for who in (bob, carol):
        accept(who)
        until(who, "side", lambda v, w=who: bool(w.state("side").current().members))
    alice.groups.add("side", "dave")
    # bob vouches in 'side' only, before dave announced a receive key there: keyed to dave's card.
    until(bob, "side", lambda v: bob.state("side").epoch == 2)
    settle(lambda: dave.groups.accept_invitations() and dave.groups.names(), lambda names: len(names) == 2)
    for name in ("team", "side"):
        until(dave, name, lambda v, n=name: bool(dave.state(n).current().members))
    side = [s for s in range(1, 33) if ledger.get(board_slot(bob, "side", s)) is not None]
    assert side
    for slot in side:
        ledger.set(board_slot(alice, "team", slot), ledger.get(board_slot(bob, "side", slot)) or "")
    view = dave.groups.get_update("team")
    assert bob.fingerprint not in dave.state("team").witnesses
    assert any(p.kind == "forged" and "board" in p.detail for p in view.problems), view.problems
    assert sorted(dave.state("team").current().fingerprints()) == sorted(alice.state("team").current().fingerprints())


BAD_WITNESSES = {
    "not json": b"\xff\xfe{",
    "a list": b"[1, 2, 3]",
    "no card": None,  # filled in by the test (needs the membership)
    "a card that is a number": None,
    "a garbage card": None,
    "someone else's card": None,
    "a huge membership": None,
    "since 2**64": None,
    "epoch 2**64": None,
    "members not a list of triples": None,
    "deeply nested": b"[" * 5000 + b"]" * 5000,
}


def _bad_body(kind: str, state: GroupState, writer: Person, other: Person) -> bytes:
    members = state.epochs[str(state.epoch)]["members"]
    base = {"g": state.id, "e": state.epoch, "m": members, "c": writer.person.identity.card}
    if BAD_WITNESSES[kind] is not None:
        return BAD_WITNESSES[kind]  # type: ignore[return-value]
    changed: dict[str, object] = {
        "no card": {k: v for k, v in base.items() if k != "c"},
        "a card that is a number": {**base, "c": 2**64},
        "a garbage card": {**base, "c": "reschat-card:" + "A" * 5000},
        "someone else's card": {**base, "c": other.person.identity.card},
        "a huge membership": {**base, "m": [*members, *([f"{i:064x}", 1, 0] for i in range(40))]},
        "since 2**64": {**base, "m": [[f, 2**64 if f == writer.fingerprint else s, a] for f, s, a in members]},
        "epoch 2**64": {**base, "e": 2**64},
        "members not a list of triples": {**base, "m": [["a", "b"], "xyz", None, {"f": 1}]},
    }[kind]
    return _json(changed)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(BAD_WITNESSES))
def test_a_members_malformed_witness_neither_crashes_the_newcomer_nor_counts_anyone_in(
        tmp_path: Path, kind: str) -> None:
    """bob (a member, no admin) writes, at his slot, a witness signed by him and keyed to dave whose body is
    broken in one way; dave's update reports it and goes on, counts nobody in, and still takes carol's honest
    witness. Fails without the ``except (PageFormatError, ValueError, KeyError, TypeError, KeyFormatError)``
    of ``_read_board`` (and ``parse_members``' checks for the membership cases)."""
    ledger = MemoryLedger()
    alice, bob, carol, dave = added(tmp_path, ledger)
    # bob's modified client vouches only with the page below (no honest witness, on the board or in his lane).
    bob.groups._write_witness = lambda state: None  # type: ignore[method-assign]
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    state = bob.state("team")
    slot = 1 + sorted(state.current().fingerprints()).index(bob.fingerprint)
    edit(bob, "team", lambda s: setattr(s, "witness_due", 0))
    raw_witness(bob, "team", slot, _bad_body(kind, state, bob, carol), [dave])
    joined(dave)
    view = dave.groups.get_update("team")
    assert any(p.kind == "forged" and f"slot {slot} " in p.detail for p in view.problems), view.problems
    assert bob.fingerprint not in dave.state("team").witnesses
    until(carol, "team", lambda v: carol.state("team").epoch == 2)
    until(dave, "team", lambda v: carol.fingerprint in dave.state("team").witnesses)
    assert sorted(dave.state("team").current().fingerprints()) == sorted(alice.state("team").current().fingerprints())


def test_a_witness_of_another_record_type_or_a_message_is_not_taken(tmp_path: Path) -> None:
    """A board page whose one record is a text message (body a well-formed witness): not a witness, reported.
    Fails without the ``record.type != "setting" or record.type_ext != WITNESS_EXT`` check of
    ``_open_witness``."""
    ledger = MemoryLedger()
    _alice, bob, _carol, dave = added(tmp_path, ledger)
    # bob's modified client vouches only with the page below (no honest witness, on the board or in his lane).
    bob.groups._write_witness = lambda state: None  # type: ignore[method-assign]
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    state = bob.state("team")
    slot = 1 + sorted(state.current().fingerprints()).index(bob.fingerprint)
    edit(bob, "team", lambda s: setattr(s, "witness_due", 0))
    body = _json({"g": state.id, "e": 2, "m": state.epochs["2"]["members"], "c": bob.person.identity.card})
    raw_witness(bob, "team", slot, body, [dave], record_type="text", ext="")
    joined(dave)
    view = dave.groups.get_update("team")
    assert bob.fingerprint not in dave.state("team").witnesses
    assert any(p.kind == "forged" and f"slot {slot} " in p.detail for p in view.problems)


def test_a_board_page_with_many_random_slots_costs_the_newcomer_at_most_the_budget(tmp_path: Path) -> None:
    """A member fills the 28 free slots of the board with page-shaped values of 32 random key slots: one
    update of the newcomer spends at most MAX_DECAPSULATIONS and stays quick. Fails without the ``_Budget``
    check of ``_open_witness``."""
    import time

    ledger = MemoryLedger()
    alice, bob, _carol, dave = added(tmp_path, ledger)
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    template = SealedPage.from_string(ledger.get(alice.groups.lane_address("team", "me", 2, 1)) or "")
    for slot in range(5, 33):
        template.slots = [get_random_bytes(len(template.slots[0])) for _ in range(32)]
        ledger.set(board_slot(bob, "team", slot), template.to_string())
    joined(dave)
    started = time.monotonic()
    dave.groups.get_update("team")
    assert dave.groups._decaps <= MAX_DECAPSULATIONS
    assert time.monotonic() - started < 20


# Was an xfail ("ATTACK WORKS"); held since the board has its own decapsulation budget and judges each value
# once (_read_board).
def test_junk_on_the_board_does_not_stop_the_newcomer_from_following_a_removal(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, _carol, dave = added(tmp_path, ledger)
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    joined(dave)
    dave.groups.send_message("dave announces a receive key", "team")
    state = dave.state("team")
    assert len(dave.groups._candidates(state)) == 2  # his card's keys and one receive key: 2 per slot
    spent = sum(len(SealedPage.from_string(v).slots) * 2 for v in
                (ledger.get(board_slot(bob, "team", s)) for s in range(1, 5)) if v)  # alice's and bob's witnesses
    # bob's junk on the free slots fills what is left of dave's budget exactly: nothing remains for the lanes.
    template = SealedPage.from_string(ledger.get(alice.groups.lane_address("team", "me", 2, 1)) or "")
    left, slot = (MAX_DECAPSULATIONS - spent) // 2, 5
    while left:
        count = min(32, left)
        template.slots = [get_random_bytes(len(template.slots[0])) for _ in range(count)]
        ledger.set(board_slot(bob, "team", slot), template.to_string())
        left, slot = left - count, slot + 1
    alice.groups.remove("team", "carol")
    for _ in range(6):
        dave.groups.get_update("team")
    assert dave.state("team").epoch == 3


# --- the lost-race re-send -----------------------------------------------------------------------------------


def raced(tmp_path: Path, ledger: MemoryLedger) -> tuple[Person, Person, Person, Person]:
    """alice makes bob an admin (epoch 2); of the two admins, the higher fingerprint removes carol (epoch 3) and
    dave, moved to epoch 3, writes there; the lower one has not updated since epoch 2. Returns low, high,
    carol, dave."""
    alice, bob, carol, dave = team(tmp_path, ledger, count=4)
    alice.groups.make_admin("team", "bob")
    for who in (bob, carol, dave):
        until(who, "team", lambda v, w=who: w.state("team").epoch == 2)
    low, high = sorted((alice, bob), key=lambda m: m.fingerprint)
    high.groups.remove("team", carol.fingerprint)
    until(carol, "team", lambda v: carol.state("team").status == "removed")
    until(dave, "team", lambda v: dave.state("team").epoch == 3)
    return low, high, carol, dave


def test_a_late_change_of_a_stale_admin_does_not_resend_to_a_removed_member_what_was_written_after(
        tmp_path: Path) -> None:
    """A change for epoch e by a lower-fingerprint admin of e-1 who stays a member is taken however late it
    comes (while e-1's lanes are read): here an honest admin that had not updated renames the group
    'concurrently' with a removal everyone adopted long before, and the winner's epoch still has carol. dave's
    message written after her removal is written again keyed only to the members of both epochs, never to her.
    Fails without the ``to`` filter of ``_send_again`` (``readers = [f for f in readers if f in to]``)."""
    ledger = MemoryLedger()
    low, high, carol, dave = raced(tmp_path, ledger)
    dave.groups.send_message("after carol was removed", "team")
    until(high, "team", lambda v: "after carol was removed" in texts(v))
    assert low.state("team").epoch == 2  # low has not read the removal: its rename names carol
    low.groups.rename("team", "late")
    for _ in range(4):
        for who in (dave, high, low, carol):
            who.groups.get_update(current(who).name)
    assert "after carol was removed" not in texts(carol.groups.load_all(current(carol).name))


def test_a_removed_admins_late_change_makes_nobody_resend_into_its_epoch(tmp_path: Path) -> None:
    """The lower-fingerprint admin is removed (epoch 3) and its modified client then removes the remover, for
    epoch 3: it would win the race for anyone who took it, and they would re-send their epoch-3 messages into
    its epoch. Its old lane was closed when the removal was adopted, so nobody takes the change: no re-send, and
    what dave wrote in epoch 3 stays unreadable to it. Fails without the ``closed_at`` filter of
    ``_read_lane`` (``fresh = [... if r.seq <= lane.closed_at]``)."""
    ledger = MemoryLedger()
    alice, bob, carol, dave = team(tmp_path, ledger, count=4)
    alice.groups.make_admin("team", "bob")
    for who in (bob, carol, dave):
        until(who, "team", lambda v, w=who: w.state("team").epoch == 2)
    low, high = sorted((alice, bob), key=lambda m: m.fingerprint)
    high.groups.remove("team", low.fingerprint)
    until(low, "team", lambda v: low.state("team").status == "removed")
    until(dave, "team", lambda v: dave.state("team").epoch == 3)
    dave.groups.send_message("dave in epoch 3", "team")
    until(high, "team", lambda v: "dave in epoch 3" in texts(v))
    edit(low, "team", lambda s: setattr(s, "status", ""))
    low.groups.remove("team", high.fingerprint)
    for _ in range(3):
        for who in (dave, high, carol):
            who.groups.get_update("team")
    state = dave.state("team")
    assert state.resend == [] and state.epochs["3"]["by"] == high.fingerprint
    assert not any("sent again" in str(n[2]) for n in state.notices)
    assert "dave in epoch 3" not in texts(low.groups.load_all("team"))


def test_the_resend_never_carries_a_record_that_is_not_ours(tmp_path: Path) -> None:
    """Before the race is lost, a member of the losing epoch (the losing admin) writes over carol's page of that
    epoch a page of its own, with a message, at the same address (it knows every lane's addresses). What carol
    sends again is what she wrote, never that page's message. ``_own_records`` takes her page from her outbox
    (the current page always stays there) or her kept copies before the ledger, and opens a ledger value only
    with her own page keys: the test fails if the outbox/copies were skipped and the ledger's value opened
    without them (it does not reach the ledger path, which only a profile that lost its copies takes)."""
    ledger = MemoryLedger()
    _alice, _bob, carol, winner, loser = two_admins(tmp_path, ledger)
    loser.groups.rename("team", "second")
    settle(lambda: carol.groups.get_update(current(carol).name), lambda v: current(carol).epoch == 3)
    carol.groups.send_message("carol's own line", "second")
    until(loser, "second", lambda v: "carol's own line" in texts(v))
    carol.groups.get_update("second")  # confirmed: carol's outbox no longer holds the page
    loser.groups.send_message("the loser's line", "second")
    address = carol.groups.lane_address("second", "me", 3, 1)
    ledger.set(address, ledger.get(loser.groups.lane_address("second", "me", 3, 1)) or "")
    winner.groups.rename("team", "first")
    for _ in range(4):
        for who in (winner, loser, carol):
            who.groups.get_update(current(who).name)
    mine = [m for m in carol.groups.load_all(current(carol).name).messages if m.outgoing and m.type == "text"]
    assert "the loser's line" not in [m.text for m in mine]


def test_a_member_who_read_the_losing_epoch_is_not_shown_its_messages_as_new_twice(tmp_path: Path) -> None:
    """A member that read the losing epoch's messages is not shown the writer's re-sent copies as new again,
    and a copy whose new place is a place read in the losing epoch is not taken for the one read there: new
    messages are told apart by (writer, date, content), which a copy sent again keeps. Fails with ``_view``'s
    ``once`` keyed by the record's place (epoch, writer, seq) again."""
    ledger = MemoryLedger()
    _alice, _bob, carol, winner, loser = two_admins(tmp_path, ledger)
    loser.groups.rename("team", "second")
    settle(lambda: carol.groups.get_update(current(carol).name), lambda v: current(carol).epoch == 3)
    for i in range(3):
        loser.groups.send_message(f"loser {i}", "second")
    view = settle(lambda: carol.groups.get_update("second"), lambda v: "loser 2" in texts(v))
    shown_as_new = [m.text for m in view.new_messages if m.type == "text"]
    winner.groups.rename("team", "first")
    for _ in range(4):
        for who in (winner, loser):
            who.groups.get_update(current(who).name)
        view = carol.groups.get_update(current(carol).name)
        shown_as_new += [m.text for m in view.new_messages if m.type == "text"]
    assert sorted(shown_as_new) == ["loser 0", "loser 1", "loser 2"]


def test_what_a_member_added_in_the_losing_epoch_wrote_there_is_not_lost(tmp_path: Path) -> None:
    """A member added by the admin whose change loses the race cannot read the epoch before, so it never reads
    the winner's change; the members that had read what it wrote drop it with the lost epoch. When the losing
    admin adds it again (joining the next epoch), it loses the epoch it was first added in and sends again what
    it wrote there. Fails when ``_newcomer_lost`` never loses the epoch (returns False)."""
    ledger = MemoryLedger()
    _alice, _bob, carol, winner, loser = two_admins(tmp_path, ledger)
    dave = member("dave", 3, tmp_path, ledger)
    befriend(loser.person, dave.person)
    loser.groups.add("team", "dave")
    joined(dave)
    until(carol, "team", lambda v: current(carol).epoch == 3)
    dave.groups.send_message("dave, first words", "team")
    settle(lambda: carol.groups.get_update("team"), lambda v: "dave, first words" in texts(v))
    winner.groups.rename("team", "first")  # a race for epoch 3; the loser adds dave again as epoch 4
    for round_ in range(6):
        for who in (winner, loser, carol):
            who.groups.get_update(current(who).name)
        if round_ == 2:
            accept(dave)
        dave.groups.get_update(current(dave).name)
    assert current(dave).epoch == 4  # dave followed the loser's re-applied addition
    for who in (winner, loser, carol):
        assert "dave, first words" in texts(who.groups.load_all(current(who).name)), who.name


# Was an xfail ("ATTACK WORKS"); held since a member counted in from the board is provisional; the admin's next
# change names it as it is (_checking).
def test_a_member_left_out_cannot_cut_the_newcomer_off_by_lying_about_when_it_joined(tmp_path: Path) -> None:
    """carol, left out of dave's membership by the admin, vouches with her modified client claiming she joined
    in epoch 2 (she joined in 1). dave counts her in with that; alice's next (honest) change names her as of
    epoch 1."""
    alice, _bob, carol, dave = two_memberships(tmp_path)
    joined(dave)
    until(carol, "team", lambda v: carol.state("team").epoch == 2)
    state = carol.groups.store.load(carol.state("team").id)
    state.epochs["2"]["members"] = [[f, 2 if f == carol.fingerprint else s, a]
                                    for f, s, a in state.epochs["2"]["members"]]
    carol.groups._write_witness(state)  # over her honest witness, at the same slot
    until(dave, "team", lambda v: carol.fingerprint in dave.state("team").current().fingerprints())
    alice.groups.rename("team", "crew")
    for _ in range(5):
        dave.groups.get_update(current(dave).name)
    assert current(dave).epoch == 3


def test_a_member_the_winner_removed_sends_nothing_again(tmp_path: Path) -> None:
    """The losing admin renames (epoch 3) and carol moves there and writes; the winner removes carol for epoch 3
    at the same time. carol loses the race and is removed: what she wrote in the losing epoch is written again
    nowhere (her lane of the winner's epoch stays empty) and nobody shows it. Two lines hold it: the status guard
    at the top of ``_after_update`` (``if state.status or not membership.members: return``) keeps
    ``_send_again`` from running for a removed member (without it she writes them again in epoch 2, where she
    is back after losing), and the ``closed_at`` filters of ``_read_lane`` and ``_view`` hide what she writes in
    her closed lane of epoch 2; the test fails with both removed (checked), not with one."""
    ledger = MemoryLedger()
    _alice, _bob, carol, winner, loser = two_admins(tmp_path, ledger)
    loser.groups.rename("team", "second")
    settle(lambda: carol.groups.get_update(current(carol).name), lambda v: current(carol).epoch == 3)
    carol.groups.send_message("carol, in the losing epoch", "second")
    winner.groups.remove("team", carol.fingerprint)
    for _ in range(4):
        for who in (winner, loser, carol):
            who.groups.get_update(current(who).name)
    assert current(carol).status == "removed"
    assert current(winner).epochs["3"]["by"] == winner.fingerprint
    assert ledger.get(winner.groups.lane_address(current(winner).name, carol.fingerprint, 3, 1)) is None
    for who in (winner, loser):
        assert "carol, in the losing epoch" not in texts(who.groups.load_all(current(who).name))


def test_a_witness_can_neither_take_a_member_out_nor_make_anyone_an_admin(tmp_path: Path) -> None:
    """carol (no admin) vouches, with her modified client, for a membership without bob in which dave and she
    are admins. dave keeps the membership he was given (only a witness's own writer is ever counted in, and as
    no admin), and reports the difference. Fails if ``_read_board`` took the witness's membership (or its
    admin flags) instead of appending ``Member(writer, entry.since, False)`` for a writer it was not given."""
    ledger = MemoryLedger()
    alice, bob, carol, dave = added(tmp_path, ledger)
    joined(dave)
    honest = {slot: ledger.get(board_slot(alice, "team", slot)) for slot in range(1, 33)}
    until(carol, "team", lambda v: carol.state("team").epoch == 2)
    for slot in range(1, 33):  # her modified client writes no honest witness (bob gone: her slot may move)
        if ledger.get(board_slot(alice, "team", slot)) != honest[slot]:
            ledger.set(board_slot(alice, "team", slot), honest[slot] or JUNK)
    state = carol.groups.store.load(carol.state("team").id)
    state.epochs["2"]["members"] = [[f, s, 1 if f in (carol.fingerprint, dave.fingerprint) else a]
                                    for f, s, a in state.epochs["2"]["members"] if f != bob.fingerprint]
    carol.groups._write_witness(state)
    views = [dave.groups.get_update("team") for _ in range(2)]
    assert carol.fingerprint in dave.state("team").witnesses
    given = dave.state("team").current()
    assert sorted(given.fingerprints()) == sorted(alice.state("team").current().fingerprints())
    assert not given.get(dave.fingerprint).admin and not given.get(carol.fingerprint).admin  # type: ignore[union-attr]
    assert any(p.kind == "forged" and "differs" in p.detail for v in views for p in v.problems)


def test_an_admin_that_makes_two_changes_in_a_row_during_a_race_does_not_split_the_group(tmp_path: Path) -> None:
    """The admin whose change loses makes a second change before it reads the winner's, so it no longer reads
    the epoch where the winner's change is as the epoch before its own. It keeps reading the other admin's lane
    of that epoch (``_unsettled``) until it sees it write in a later one, takes the winner's change there, and
    loses the whole chain it built (both its changes applied again in order): the members converge. Fails
    without the ``_unsettled`` lanes in ``_read_epochs`` (the chain's loss: ``tests/test_groups.py``)."""
    ledger = MemoryLedger()
    _alice, _bob, carol, winner, loser = two_admins(tmp_path, ledger)
    loser.groups.rename("team", "second")
    loser.groups.rename("second", "third")  # two changes in a row, before its next update
    winner.groups.rename("team", "first")  # the race for epoch 3, which the winner wins
    for _ in range(6):
        for who in (winner, loser, carol):
            who.groups.get_update(current(who).name)
    loser.groups.send_message("from the loser", current(loser).name)
    for _ in range(4):
        for who in (winner, loser, carol):
            who.groups.get_update(current(who).name)
    starts = {(current(who).epochs["3"]["by"], current(who).epochs["3"]["secret"]) for who in (winner, loser, carol)}
    assert len(starts) == 1, "members disagree about epoch 3"
    assert "from the loser" in texts(winner.groups.load_all(current(winner).name))


def test_a_member_who_erases_the_others_board_witnesses_still_cannot_count_in_a_key_of_its_making(
        tmp_path: Path) -> None:
    """bob (no admin) vouches for nothing himself, junks carol's witness on the board (he computes every slot)
    and has a sybil vouch there. carol's witness is also in her own lane, which nobody can erase unnoticed:
    dave reads it there, and since carol does not name the sybil, the sybil is not counted in. Fails without
    the lane copy of the witness (``_write_witness``): with no member dave was given left on the board, the
    sybil would be counted in."""
    ledger = MemoryLedger()
    _alice, bob, carol, dave = added(tmp_path, ledger)
    bob.groups._write_witness = lambda state: None  # type: ignore[method-assign]
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    before = {slot: ledger.get(board_slot(bob, "team", slot)) for slot in range(1, 33)}
    until(carol, "team", lambda v: carol.state("team").epoch == 2)
    for slot in range(1, 33):
        if ledger.get(board_slot(bob, "team", slot)) != before[slot]:
            ledger.set(board_slot(bob, "team", slot), JUNK)
    sybil = member("eve", 7, tmp_path, ledger)
    sybil_witness(bob, sybil, "team")
    joined(dave)
    for _ in range(3):
        dave.groups.get_update("team")
    assert carol.fingerprint in dave.state("team").witnesses
    assert sybil.fingerprint not in dave.state("team").current().fingerprints()
