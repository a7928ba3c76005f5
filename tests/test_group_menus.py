"""The menus' group screens, in process: create a group, open it from the friend list, and add, remove
and leave from its item 7 ("Group members and settings")."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from reschat import crypto
from reschat.app import open_friend_store
from reschat.config import Settings
from reschat.group import GroupService
from reschat.ledger import MemoryLedger
from tests import test_menus
from tests.conftest import Person, make_person, settle

CTRL_D, login = test_menus.CTRL_D, test_menus.login
# The menus' fixtures, shared with test_menus.py (pytest finds fixtures by their names in this module).
alice_template, alice_identity, ledger = test_menus.alice_template, test_menus.alice_identity, test_menus.ledger
settings, bob, befriended = test_menus.settings, test_menus.bob, test_menus.befriended
terminal, run = test_menus.terminal, test_menus.run


def carol_of(tmp_path: Path, ledger: MemoryLedger, settings: Settings, alice: crypto.Identity) -> Person:
    """carol, a friend of alice's (and not of bob's)."""
    carol = make_person("carol", 2, tmp_path / "carol", ledger)
    carol.friends.add_friend("alice", crypto.parse_contact(alice.card))
    open_friend_store(settings).add_friend("carol", crypto.parse_contact(carol.card))
    return carol


def joined_rows(output: str) -> str:
    """``output`` with each wrapped row joined to the one before it by a space."""
    return re.sub(r"\n *\u2502 ", " ", output)


def joined(person: Person) -> GroupService:
    groups = GroupService(person.chat)
    assert settle(lambda: groups.accept_invitations(), bool) == ["team"]
    return groups


def test_create_a_group_from_the_main_menu(
    run: Callable[[str], str], tmp_path: Path, ledger: MemoryLedger, settings: Settings, befriended: Person,
    alice_identity: crypto.Identity,
) -> None:
    carol = carol_of(tmp_path, ledger, settings, alice_identity)
    output = run(login("5\r" + "team\r" + "1, carol\r" + CTRL_D))
    assert "  5. Create a group" in output
    assert "Created team with 3 members" in output
    bob_groups = joined(befriended)
    carol_groups = joined(carol)
    bob_groups.send_message("hello from bob", "team")
    view = settle(lambda: carol_groups.get_update("team"), lambda v: any(m.text == "hello from bob"
                                                                          for m in v.messages))
    assert [m.sender.split(" (")[0] for m in view.messages if m.text == "hello from bob"] == ["bob"]


def test_a_group_is_in_the_friend_list_with_its_unread_count_and_each_line_says_who_wrote_it(
    run: Callable[[str], str], tmp_path: Path, ledger: MemoryLedger, settings: Settings, befriended: Person,
    alice_identity: crypto.Identity,
) -> None:
    # bob's group, with alice and a friend of bob's whom alice does not know.
    dave = make_person("dave", 3, tmp_path / "dave", ledger)
    befriended.friends.add_friend("dave", crypto.parse_contact(dave.card))
    dave.friends.add_friend("bob", crypto.parse_contact(befriended.card))
    bob_groups = GroupService(befriended.chat)
    bob_groups.create("team", ["alice", "dave"])
    dave_groups = joined(dave)
    bob_groups.send_message("hello from bob", "team")
    dave_groups.send_message("hello from dave", "team")
    output = run(login("1\r" + "team\r" + CTRL_D))
    assert "team [group, 3 members] (2 unread)" in output
    assert "Group team (3 members, you are member)" in output
    assert "bob: hello from bob" in output
    dave_fpr = crypto.fingerprint_bytes(dave.identity.public_key).hex()[:16]
    assert f"dave (vouched by bob, {dave_fpr}): hello from dave" in output.replace("\n", " ").replace("  ", " ") \
        or f"dave (vouched by bob, {dave_fpr})" in output
    assert "bob added you" in output
    assert "7. Group members and settings" in output


def test_add_remove_and_leave_from_the_group_screen(
    run: Callable[[str], str], tmp_path: Path, ledger: MemoryLedger, settings: Settings, befriended: Person,
    alice_identity: crypto.Identity,
) -> None:
    carol = carol_of(tmp_path, ledger, settings, alice_identity)
    # alice creates the group with bob, then adds carol from item 7.
    output = run(login("5\r" + "team\r" + "bob\r" + "1\r" + "team\r" + "7\r" + "2\r" + "carol\r" + CTRL_D))
    assert "Added carol: they are invited" in output
    bob_groups, carol_groups = joined(befriended), joined(carol)
    view = settle(lambda: bob_groups.get_update("team"), lambda v: any("added carol" in m.text for m in v.messages))
    assert any(m.type == "setting" and "added carol" in m.text for m in view.messages)
    # She removes bob.
    output = run(login("1\r" + "team\r" + "7\r" + "3\r" + "bob\r" + CTRL_D))
    assert "Removed bob" in output
    settle(lambda: bob_groups.get_update("team"), lambda v: bob_groups._state("team").status == "removed")
    assert bob_groups._state("team").status == "removed"
    # She leaves; carol, the one left, starts the epoch without her and becomes admin.
    output = run(login("1\r" + "team\r" + "7\r" + "6\r" + "y\r" + CTRL_D))
    assert "You left team." in output
    settle(lambda: carol_groups.get_update("team"),
           lambda v: any("left the group" in m.text for m in v.messages) and carol_groups.groups()[0].admin)
    assert carol_groups.groups()[0].admin
    carol_fpr = crypto.fingerprint_bytes(carol.identity.public_key).hex()
    assert [m.fingerprint for m in carol_groups.members("team")] == [carol_fpr]


def test_a_friend_cannot_take_a_groups_name(
    run: Callable[[str], str], tmp_path: Path, ledger: MemoryLedger, settings: Settings, befriended: Person,
) -> None:
    output = run(login("5\r" + "team\r" + "bob\r" + "2\r" + "team\r" + "\r" + CTRL_D))
    assert "error: 'team' is the name of one of your groups: choose another" in output


def test_a_vouched_member_can_be_added_as_a_friend_from_the_members_screen(
    run: Callable[[str], str], tmp_path: Path, ledger: MemoryLedger, settings: Settings, befriended: Person,
    alice_identity: crypto.Identity,
) -> None:
    """bob's group holds alice and dave, a friend of bob's whom alice does not know: from the members
    screen alice adds dave from the card bob's roster carried, after his safety number."""
    dave = make_person("dave", 3, tmp_path / "dave", ledger)
    befriended.friends.add_friend("dave", crypto.parse_contact(dave.card))
    dave.friends.add_friend("bob", crypto.parse_contact(befriended.card))
    GroupService(befriended.chat).create("team", ["alice", "dave"])
    joined(dave)
    # A nickname alice already uses is refused, and nothing is added.
    output = joined_rows(run(login("1\r" + "team\r" + "7\r" + "1\r" + "1\r" + "bob\r" + CTRL_D)))
    assert "Members who are not your friends (vouched for by an admin):" in output
    assert "you already have a friend called 'bob': choose another nickname; nothing added" in output
    assert sorted(f.nickname for f in open_friend_store(settings).all_friends()) == ["bob"]
    output = joined_rows(run(login("1\r" + "team\r" + "7\r" + "1\r" + "1\r" + "dave\r" + "y\r" + CTRL_D)))
    assert "vouched for by bob, an admin of the group: that is their word, not a verification." in output
    assert "Safety number with dave" in output
    assert "Added dave." in output
    added = open_friend_store(settings).get_friend("dave")
    assert crypto.fingerprint(added.key) == crypto.fingerprint(dave.identity.public_key)
    assert not added.verified
