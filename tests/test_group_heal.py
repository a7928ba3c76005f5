"""Self-healing for a group member whose local group state was lost or is older than the ledger.

A member whose copy of a group fell behind its own lane on the ledger (a group file restored from an older
copy, the profile used on another machine) writes nothing more in that lane, asks the admins who are its
friends for a fresh start, and an admin gives it one: the next epoch with the same membership, to which it
is invited again. A member whose group file is gone is invited again by an admin's ``group add``.
Everything runs in-process with the engine's real keys and pages: on a shared memory ledger, and, for the
two command-line tests, through ``reschat`` itself on its SQLite ledger.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from Crypto.Random import get_random_bytes

from reschat import crypto
from reschat.chat import ConversationView
from reschat.errors import MessageError
from reschat.group import GroupService, _json
from reschat.groupstate import INVITE_EXT, REJOIN_EXT, Membership, check_change
from reschat.groupstate import Member as GroupMember
from reschat.ledger import MemoryLedger
from reschat.page import PAGE_CAPACITY
from tests.conftest import befriend, settle
from tests.test_groups import Member, lane_values, member, team, texts, two_admins, until
from tests.test_groups_cli import PASSWORD, card, run
from tests.test_protocol2 import stored

#: Problems that would mean a page someone already read was written again, or a record was made up.
REWRITES = {"rewritten", "forged", "rollback"}
FRESH_START = "a fresh start after they lost their copy of the group"


def restarted(who: Member) -> Member:
    """The same profile opened again (the app restarted, or the profile copied to another machine)."""
    return Member(who.person, GroupService(who.person.chat))


def group_file(who: Member, group: str) -> Path:
    return who.groups.store._path(who.state(group).id)


def rewrites(views: list[ConversationView]) -> list[str]:
    return [f"{p.lane}: {p.kind}: {p.detail}" for v in views for p in v.problems if p.kind in REWRITES]


def lines(view: ConversationView, text: str) -> list[str]:
    return [f"{m.sender} {m.text}" for m in view.messages if m.type_ext == "group" and text in m.text]


def fall_behind(tmp_path: Path, ledger: MemoryLedger) -> tuple[Member, Member, Member, bytes, list[ConversationView]]:
    """alice (admin), bob and carol; bob's group file is copied, then bob writes more than a page (new pages,
    with receive keys the copy does not hold), which alice and carol read; alice writes again after it.

    The copy is made while bob's newest page is not confirmed yet, and pages are re-sent as soon as a read
    returns them different (``resend_after`` 0): the copy would re-send its older page at once if it could."""
    alice, bob, carol = team(tmp_path, ledger, resend_after=timedelta(0))
    bob.groups.send_message("before the copy", "team")
    views = [until(w, "team", lambda v: "before the copy" in texts(v)) for w in (alice, carol)]
    assert bob.state("team").own(1).unconfirmed()
    backup = group_file(bob, "team").read_bytes()
    last = f"after the copy {PAGE_CAPACITY + 2}"
    for number in range(1, PAGE_CAPACITY + 3):
        bob.groups.send_message(f"after the copy {number}", "team")
    views += [until(w, "team", lambda v: last in texts(v)) for w in (alice, carol)]
    alice.groups.send_message("for the newest bob", "team")
    views.append(until(bob, "team", lambda v: "for the newest bob" in texts(v)))
    return alice, bob, carol, backup, views


def test_a_member_restored_from_an_older_copy_rewrites_nothing_and_gets_back_in(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol, backup, views = fall_behind(tmp_path, ledger)
    written = lane_values(ledger, bob, "team", 1)
    group_file(bob, "team").write_bytes(backup)
    old = restarted(bob)
    # The old copy's first write of the session compares its lane with the ledger and stops.
    with pytest.raises(MessageError, match="older than the ledger"):
        old.groups.send_message("from the old copy", "team")
    view = old.groups.get_update("team")
    assert len(lines(view, "older than the ledger")) == 1 and "asked alice" in lines(view, "older")[0]
    assert view.problems == []
    for _ in range(3):  # its updates re-send and put back nothing of its lane either
        old.groups.get_update("team")
    assert lane_values(ledger, bob, "team", 1) == written
    with pytest.raises(MessageError, match="older than the ledger"):
        old.groups.send_message("still the old copy", "team")
    views += [w.groups.get_update("team") for w in (alice, carol)]
    # alice reads bob's request (in their pairwise chat) and gives him a fresh start: epoch 2, same members.
    settle(lambda: (alice.groups.accept_invitations(), alice.state("team").epoch)[1], lambda e: e == 2)
    assert alice.state("team").current().action == "rejoin"
    assert sorted(alice.state("team").current().fingerprints()) == sorted(w.fingerprint for w in (alice, bob, carol))
    assert settle(lambda: old.groups.accept_invitations(), bool) == ["team"]
    until(old, "team", lambda v: bool(old.state("team").current().members))
    assert old.state("team").epoch == 2
    # Both directions flow again, with carol (who is not bob's friend) too.
    old.groups.send_message("back again", "team")
    alice.groups.send_message("welcome back", "team")
    carol.groups.send_message("hello again bob", "team")
    views += [until(w, "team", lambda v: "back again" in texts(v)) for w in (alice, carol)]
    mine = until(old, "team", lambda v: {"welcome back", "hello again bob"} <= set(texts(v)))
    assert {"welcome back", "hello again bob"} <= set(texts(mine))
    seen = until(carol, "team", lambda v: bool(lines(v, FRESH_START)))
    assert len(lines(seen, FRESH_START)) == 1 and lines(seen, FRESH_START)[0].startswith("alice gave bob")
    assert rewrites(views) == []
    # Epoch 1 of bob's lane is as the other copy left it: nothing there was ever written twice.
    assert lane_values(ledger, bob, "team", 1) == written


def test_a_member_restored_from_a_copy_older_than_the_last_change_gets_back_in(tmp_path: Path) -> None:
    """The copy knows epoch 1 only; the group moved to epoch 2 (a rename) after it was made, and bob cannot
    open the key of epoch 2 (keyed to a receive key only the lost state held): the fresh start is epoch 3."""
    ledger = MemoryLedger()
    alice, bob, carol, backup, views = fall_behind(tmp_path, ledger)
    alice.groups.rename("team", "crew")
    until(bob, "team", lambda v: v.friend == "crew")
    until(carol, "team", lambda v: v.friend == "crew")
    assert bob.state("crew").epoch == 2
    group_file(bob, "crew").write_bytes(backup)
    old = restarted(bob)
    old.groups.get_update("team")
    assert old.state("team").behind == 1 and old.state("team").epoch == 1
    settle(lambda: (alice.groups.accept_invitations(), alice.state("crew").epoch)[1], lambda e: e == 3)
    assert settle(lambda: old.groups.accept_invitations(), bool) == ["crew"]
    until(old, "crew", lambda v: bool(old.state("crew").current().members))
    assert old.state("crew").epoch == 3
    old.groups.send_message("back from epoch 1", "crew")
    views.append(until(carol, "crew", lambda v: "back from epoch 1" in texts(v)))
    carol.groups.send_message("carol in epoch 3", "crew")
    assert "carol in epoch 3" in texts(until(old, "crew", lambda v: "carol in epoch 3" in texts(v)))
    assert rewrites(views) == []


def test_a_member_whose_group_file_is_gone_is_added_again_by_an_admin(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    bob.groups.send_message("before the loss", "team")
    until(carol, "team", lambda v: "before the loss" in texts(v))
    group_file(bob, "team").unlink()
    fresh = restarted(bob)
    assert not fresh.groups.is_group("team")
    alice.groups.get_update("team")
    assert alice.groups.add("team", "bob") is True  # a member already: invited again, not refused
    assert settle(lambda: fresh.groups.accept_invitations(), bool) == ["team"]
    until(fresh, "team", lambda v: bool(fresh.state("team").current().members))
    assert fresh.state("team").epoch == 2
    fresh.groups.send_message("bob is back", "team")
    views = [until(w, "team", lambda v: "bob is back" in texts(v)) for w in (alice, carol)]
    carol.groups.send_message("hi new bob", "team")
    alice.groups.send_message("alice to new bob", "team")
    back = until(fresh, "team", lambda v: {"hi new bob", "alice to new bob"} <= set(texts(v)))
    assert {"hi new bob", "alice to new bob"} <= set(texts(back))
    seen = until(carol, "team", lambda v: bool(lines(v, FRESH_START)))
    assert len(lines(seen, FRESH_START)) == 1
    assert rewrites([*views, back, seen]) == []
    # The others vouch for the membership bob took from alice alone: he stops reading the board.
    until(fresh, "team", lambda v: carol.fingerprint in fresh.state("team").witnesses)
    assert fresh.groups._board_places(fresh.state("team")) == {}


def test_a_member_whose_group_file_is_gone_and_takes_its_old_invitation_again_asks_for_a_fresh_start(
    tmp_path: Path,
) -> None:
    """Its pairwise chat still shows the invitation to epoch 1: it joins epoch 1 again, with no state of its
    lane there. Its first send finds its own pages on the ledger, writes nothing, and asks alice."""
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    bob.groups.send_message("before the loss", "team")
    until(carol, "team", lambda v: "before the loss" in texts(v))
    written = lane_values(ledger, bob, "team", 1)
    group_file(bob, "team").unlink()
    fresh = restarted(bob)
    assert settle(lambda: fresh.groups.accept_invitations(), bool) == ["team"]
    assert fresh.state("team").epoch == 1
    with pytest.raises(MessageError, match="older than the ledger"):
        fresh.groups.send_message("over my own page", "team")
    assert lane_values(ledger, bob, "team", 1) == written
    settle(lambda: (alice.groups.accept_invitations(), alice.state("team").epoch)[1], lambda e: e == 2)
    assert settle(lambda: fresh.groups.accept_invitations(), bool) == ["team"]
    until(fresh, "team", lambda v: bool(fresh.state("team").current().members))
    fresh.groups.send_message("asked and back", "team")
    view = until(carol, "team", lambda v: "asked and back" in texts(v))
    assert rewrites([view]) == [] and lane_values(ledger, bob, "team", 1) == written


def test_requests_for_a_fresh_start_that_are_not_the_members_own_are_not_acted_on(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    dave = member("dave", 3, tmp_path, ledger)
    befriend(alice.person, dave.person)
    befriend(bob.person, carol.person)
    group_id = alice.state("team").id

    def ask(sender: Member, to: str, by: str, epoch: int = 1) -> None:
        body = _json({"g": group_id, "e": epoch, "by": by})
        sender.person.chat.send_message(body, to, msg_type="setting", type_ext=REJOIN_EXT)

    # carol (a member, not an admin) asks in bob's name; dave (no member) asks for himself; bob asks carol,
    # who is no admin; a request naming an epoch that does not exist yet.
    ask(carol, "alice", bob.fingerprint)
    ask(dave, "alice", dave.fingerprint)
    ask(bob, "carol", bob.fingerprint)
    ask(bob, "alice", bob.fingerprint, epoch=7)
    # The ledger writer copies bob's signed request to carol over the next page of bob's lane with alice:
    # it names bob, but was signed for another conversation.
    sent_to_carol = stored(ledger)[bob.person.chat.lane_address("carol", mine=True, number=1)]
    lane = [bob.person.chat.lane_address("alice", mine=True, number=n) for n in range(1, 9)]
    ledger.set(next(key for key in lane if key not in stored(ledger)), sent_to_carol)
    refused = alice.person.chat.get_update("bob").problems
    assert {p.kind for p in refused} & {"undecryptable", "forged"}, refused
    for who in (alice, carol):
        for _ in range(3):
            who.groups.accept_invitations()
    assert alice.state("team").epoch == 1 and carol.state("team").epoch == 1
    # bob's own request is acted on once, however often the pairwise chat shows it again (or a ledger
    # writer replays its page): one fresh start, then none.
    ask(bob, "alice", bob.fingerprint)
    settle(lambda: (alice.groups.accept_invitations(), alice.state("team").epoch)[1], lambda e: e == 2)
    for _ in range(3):
        alice.groups.accept_invitations()
    assert alice.state("team").epoch == 2


def test_a_member_that_fell_behind_takes_a_fresh_start_only_from_an_admin_it_knows(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol, backup, _views = fall_behind(tmp_path, ledger)
    befriend(bob.person, carol.person)
    group_file(bob, "team").write_bytes(backup)
    old = restarted(bob)
    old.groups.get_update("team")
    assert old.state("team").behind == 1
    # carol is a member but no admin: her invitation to a later epoch is refused, however far it reaches.
    invitation = _json({"g": old.state("team").id, "e": 5, "s": get_random_bytes(32).hex(), "n": "team",
                        "by": carol.fingerprint})
    carol.person.chat.send_message(invitation, "bob", msg_type="setting", type_ext=INVITE_EXT)
    assert settle(lambda: old.groups.accept_invitations(), lambda joined: False, reads=3) == []
    assert old.state("team").epoch == 1
    settle(lambda: (alice.groups.accept_invitations(), alice.state("team").epoch)[1], lambda e: e == 2)
    assert settle(lambda: old.groups.accept_invitations(), bool) == ["team"]
    until(old, "team", lambda v: bool(old.state("team").current().members))
    assert old.state("team").epoch == 2 and old.state("team").current().by == alice.fingerprint


def test_a_fresh_start_keeps_the_membership_as_it_is_or_is_refused() -> None:
    """The rule every member applies to a ``rejoin`` change read in an admin's lane."""
    a, b, c, d = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    old = Membership(1, "00" * 32, a, [GroupMember(a, 1, True), GroupMember(b, 1, False), GroupMember(c, 1, False)],
                     "team")
    rejoin_b = {"g": "x", "e": 2, "a": "rejoin", "t": b, "n": "team", "by": a, "m": [[a, 1, 1], [b, 1, 0], [c, 1, 0]]}
    assert check_change(old, rejoin_b, a) == ""
    assert "not an admin" in check_change(old, {**rejoin_b, "by": c}, c)
    for bad in (
        {**rejoin_b, "m": [[a, 1, 1], [b, 1, 0], [c, 1, 0], [d, 2, 0]]},  # someone added
        {**rejoin_b, "m": [[a, 1, 1], [b, 1, 0]]},  # someone taken out
        {**rejoin_b, "t": d},  # a target who is no member
        {**rejoin_b, "t": a},  # the admin itself
    ):
        assert "fresh start that is not valid" in check_change(old, bad, a), bad
    assert "admins" in check_change(old, {**rejoin_b, "m": [[a, 1, 1], [b, 1, 1], [c, 1, 0]]}, a)
    assert "who joined when" in check_change(old, {**rejoin_b, "m": [[a, 1, 1], [b, 2, 0], [c, 1, 0]]}, a)


def test_group_add_gives_a_member_whose_group_file_is_gone_a_fresh_start_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The same, end to end through ``reschat`` (the SQLite ledger, each command a new session)."""
    state = cli_team(tmp_path)
    state.unlink()
    capsys.readouterr()
    assert run(tmp_path, "alice", "group", "add", "team", "bob") == 0
    assert "invited again, with a fresh start" in capsys.readouterr().out
    assert run(tmp_path, "bob", "send", "team", "bob is back") == 0
    assert run(tmp_path, "carol", "read", "team") == 0
    out = " ".join(capsys.readouterr().out.replace("│", "").split())  # long lines wrap
    assert "bob is back" in out and out.count(FRESH_START) == 1, out
    assert run(tmp_path, "carol", "send", "team", "welcome back") == 0
    assert run(tmp_path, "bob", "read", "team") == 0
    out = capsys.readouterr().out
    assert "welcome back" in out and "Traceback" not in out


def test_a_member_whose_copy_fell_behind_is_told_in_one_line_and_healed_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    state = cli_team(tmp_path)
    backup = state.read_bytes()
    for number in range(3):
        assert run(tmp_path, "bob", "send", "team", f"after the copy {number}") == 0
    state.write_bytes(backup)
    capsys.readouterr()
    assert run(tmp_path, "bob", "send", "team", "from the old copy") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "older than the ledger" in err and "Traceback" not in err, err
    assert run(tmp_path, "bob", "read", "team") == 0
    out = " ".join(capsys.readouterr().out.replace("│", "").split())
    assert out.count("your copy of this group is older than the ledger: asked alice (admin)") == 1, out
    assert run(tmp_path, "alice", "groups") == 0  # alice's client reads the request and acts on it
    assert run(tmp_path, "bob", "send", "team", "bob is back") == 0
    assert run(tmp_path, "carol", "read", "team") == 0
    out = " ".join(capsys.readouterr().out.replace("│", "").split())
    assert "bob is back" in out and "after the copy 2" in out and "from the old copy" not in out
    assert out.count(FRESH_START) == 1 and "rewritten" not in out and "forged" not in out, out


def cli_team(root: Path) -> Path:
    """alice (admin) with her friends bob and carol in 'team', through ``reschat``: bob's group file."""
    for name in ("alice", "bob", "carol"):
        crypto.create_keys(name, PASSWORD, root / name, scrypt_n=2**10)
    for who, other in (("alice", "bob"), ("alice", "carol"), ("bob", "alice"), ("carol", "alice")):
        assert run(root, who, "add", other, card(root, other)) == 0
    assert run(root, "alice", "group", "create", "team", "bob", "carol") == 0
    assert run(root, "bob", "send", "team", "before the copy") == 0
    assert run(root, "carol", "read", "team") == 0
    (state,) = (root / "bob").rglob("groups/*.state")
    return state


def test_an_admin_whose_change_lost_a_race_is_not_taken_for_a_copy_that_fell_behind(tmp_path: Path) -> None:
    """Two admins start epoch 3 at once; the loser gives its epoch 3 up before it can open the winner's key
    (the ledger junked that page for a while). Its own pages in the epoch it gave up are its own writes, not
    another copy's: it adopts the winner's epoch, applies its change again after it, and writes on."""
    ledger = MemoryLedger()
    alice, bob, carol, winner, loser = two_admins(tmp_path, ledger)
    alice.groups.rename("team", "alpha")
    bob.groups.rename("team", "beta")
    won, lost = ("alpha", "beta") if winner is alice else ("beta", "alpha")
    key_page = winner.groups.lane_address(won, "me", 2, winner.state(won).own(2).page)
    kept = stored(ledger)[key_page]
    ledger.set(key_page, "reschat2:" + "A" * 400)
    loser.groups.get_update(lost)  # it gives its epoch 3 up, and cannot open the winner's yet
    assert loser.state(lost).behind == 0
    ledger.set(key_page, kept)

    def agreed() -> bool:
        for who in (alice, bob, carol):
            for group in who.groups.names():
                who.groups.get_update(group)
        return all(who.groups.store.all()[0].epoch == 4 for who in (alice, bob, carol))

    settle(agreed, bool)
    (state,) = loser.groups.store.all()
    assert state.epoch == 4 and state.behind == 0
    loser.groups.send_message("the loser writes on", state.name)
    assert "the loser writes on" in texts(until(carol, state.name, lambda v: "the loser writes on" in texts(v)))
