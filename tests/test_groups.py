"""Group conversations on protocol 2: lanes as before, only members read, membership authenticated and
ordered (issue 13's guarantees, each one a test)."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reschat import crypto, kem
from reschat.chat import ConversationView
from reschat.errors import MessageError
from reschat.group import ROTATION_PAGES, GroupService
from reschat.groupstate import CHANGE_EXT, GroupState, GroupStore, check_change, rekeyer
from reschat.lane import PageKeys, add_record, find_page_secret, open_header, open_page
from reschat.ledger import Ledger, MemoryLedger
from reschat.page import PAGE_CAPACITY, SealedPage
from reschat.render import setting_text
from tests.conftest import Person, befriend, make_person, settle, statics_key
from tests.test_protocol2 import card_derived, encodings, stored


@dataclass
class Member:
    person: Person
    groups: GroupService

    @property
    def name(self) -> str:
        return self.person.name

    @property
    def fingerprint(self) -> str:
        return crypto.fingerprint_bytes(self.person.identity.public_key).hex()

    def state(self, group: str) -> GroupState:
        found = self.groups._find(group)
        assert found is not None
        return found


def member(name: str, index: int, root: Path, ledger: Ledger, **chat_options: object) -> Member:
    person = make_person(name, index, root / name, ledger, **chat_options)
    return Member(person, GroupService(person.chat))


def texts(view: ConversationView) -> list[str]:
    return [m.text for m in view.messages if m.type == "text"]


def until(who: Member, group: str, done: Callable[[ConversationView], bool]) -> ConversationView:
    return settle(lambda: who.groups.get_update(group), done)


def join(who: Member) -> None:
    joined = settle(lambda: who.groups.accept_invitations(), bool)
    assert joined, f"{who.name} received no invitation"
    # The membership and the cards come from the admin's lane of the new epoch.
    until(who, joined[0], lambda v: bool(who.state(joined[0]).current().members))


def team(tmp_path: Path, ledger: Ledger, count: int = 3, **chat_options: object) -> list[Member]:
    """alice (admin) with ``count - 1`` friends of hers, who are not friends of each other, in 'team'."""
    names = ["alice", "bob", "carol", "dave", "erin"][:count]
    people = [member(name, i, tmp_path, ledger, **chat_options) for i, name in enumerate(names)]
    for other in people[1:]:
        befriend(people[0].person, other.person)
    people[0].groups.create("team", [p.name for p in people[1:]])
    for other in people[1:]:
        join(other)
    for who in people:
        who.groups.get_update("team")
    return people


def keys_of(who: Member, group: str) -> list[tuple[int, kem.ReceiveKey]]:
    """Every private key ``who`` holds for the group: its card's static keys and its receive keys."""
    state = who.state(group)
    keys = [(0, who.person.identity.statics)]
    keys += [(int(e["index"]), kem.ReceiveKey.from_dict(e["key"])) for e in state.receive_keys]
    return keys


def lane_values(ledger: MemoryLedger, writer: Member, group: str, epoch: int) -> list[str]:
    values = []
    for number in itertools.count(1):
        value = stored(ledger).get(writer.groups.lane_address(group, "me", epoch, number))
        if value is None:
            return values
        values.append(value)
    return values


def opens_any(values: list[str], keys: list[tuple[int, kem.ReceiveKey]]) -> bool:
    return any(find_page_secret(SealedPage.from_string(v), keys) is not None for v in values)


# --- lanes as before ----------------------------------------------------------------------------------


def test_three_members_who_are_not_all_friends_chat_with_attribution(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    bob.groups.send_message("hello from bob", "team")
    view = until(carol, "team", lambda v: "hello from bob" in texts(v))
    (line,) = [m for m in view.messages if m.text == "hello from bob"]
    # bob is not carol's friend: shown by his card's name, vouched for by the admin, with his fingerprint.
    assert line.sender.startswith("bob (vouched by alice") and bob.fingerprint[:16] in line.sender
    assert view.problems == []
    listed = {m.fingerprint: m for m in carol.groups.members("team")}
    assert listed[bob.fingerprint].vouched_by == "alice" and not listed[bob.fingerprint].friend
    assert listed[alice.fingerprint].admin and listed[alice.fingerprint].friend
    # The card the roster carried verifies, and makes bob a friend of carol's from there.
    carol.person.friends.add_friend("bob", crypto.parse_contact(listed[bob.fingerprint].card))
    carol.groups.send_message("hi bob", "team")
    view = until(bob, "team", lambda v: "hi bob" in texts(v))
    assert [m.sender for m in view.messages if m.text == "hi bob"] == ["carol (vouched by alice, "
                                                                       f"{carol.fingerprint[:16]})"]
    view = until(alice, "team", lambda v: {"hi bob", "hello from bob"} <= set(texts(v)))
    assert {m.sender for m in view.messages if m.type == "text"} == {"bob", "carol"}
    # Names are unique across friends and groups.
    with pytest.raises(Exception, match="already"):
        alice.groups.create("bob", [])


def test_a_send_is_one_write_and_an_idle_update_one_round_of_reads(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, _carol = team(tmp_path, ledger)
    for who in (alice, bob):
        who.groups.get_update("team")
    before = len(ledger.operations)
    bob.groups.send_message("one write", "team")
    assert [op for op, _key in ledger.operations[before:]] == ["set"]
    alice.groups.get_update("team")
    before = len(ledger.operations)
    alice.groups.get_update("team")
    assert {op for op, _key in ledger.operations[before:]} == {"get"}


def test_five_members_sending_at_once_lose_and_duplicate_nothing(tmp_path: Path, ledger: Ledger) -> None:
    people = team(tmp_path, ledger, count=5)
    count = 6
    start = threading.Barrier(len(people))
    errors: list[BaseException] = []

    def send(who: Member) -> None:
        try:
            start.wait(60)
            for i in range(count):
                result = who.groups.send_message(f"{who.name} {i}", "team")
                assert result.error is None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(who,)) for who in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    wanted = {f"{who.name} {i}" for who in people for i in range(count)}
    for reader in people:
        view = settle(lambda r=reader: r.groups.load_all("team"), lambda v: wanted <= set(texts(v)) and not v.problems)
        seen = Counter(texts(view))
        lost = sorted(wanted - set(seen))
        duplicated = sorted(text for text, n in seen.items() if n > 1)
        assert (lost, duplicated) == ([], [])
        assert view.problems == []
        mine = [m.text for m in view.messages if m.outgoing and m.type == "text"]
        assert mine == [f"{reader.name} {i}" for i in range(count)]


def test_the_observer_cannot_link_a_group_to_any_member(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    group_keys_1 = set(stored(ledger))
    for who in (alice, bob, carol):
        who.groups.send_message(f"{who.name} in the group", "team")
    for who in (alice, bob, carol):
        until(who, "team", lambda v: len(texts(v)) == 3)
    group_all = set(stored(ledger))
    before = set(stored(ledger))
    alice.person.chat.send_message("alice to bob, pairwise", "bob")
    bob.person.chat.get_update("alice")
    pair = set(stored(ledger)) - before
    everything = stored(ledger)
    blobs = [key.encode() for key in everything] + [value.encode() for value in everything.values()]
    blobs += [base64.b64decode(value.split(":", 1)[1]) for value in everything.values()]
    for who in (alice, bob, carol):
        for needle in itertools.chain.from_iterable(encodings(raw) for raw in card_derived(who.person)):
            assert not any(needle in blob for blob in blobs), f"{who.name}'s card bytes are on the ledger"
        state = who.state("team")
        assert not any(state.id.encode() in blob or bytes.fromhex(state.id) in blob for blob in blobs)
    for secret in (b"in the group", b"team", b"alice"):
        assert not any(secret in blob for blob in blobs)
    # One key shape for groups and pairs; no shared run of value bytes between a group and a pair.
    assert len({len(key) for key in everything}) == 1

    def windows(keys: set[str]) -> set[bytes]:
        found: set[bytes] = set()
        for key in keys:
            raw = base64.b64decode(everything[key].split(":", 1)[1])
            found |= {raw[i : i + 16] for i in range(0, len(raw) - 16, 8)}
        return found

    group_values = group_all - pair
    assert not windows(pair) & windows(group_values)
    # A new epoch's addresses share nothing with the old one's.
    alice.groups.rename("team", "crew")
    for who in (bob, carol):
        assert until(who, "team", lambda v: v.friend == "crew").friend == "crew"
    for who in (alice, bob, carol):
        who.groups.send_message(f"{who.name} later", "crew")
    epoch_2 = {alice.groups.lane_address("crew", "me", 2, 1), bob.groups.lane_address("crew", "me", 2, 1)}
    assert epoch_2 <= set(stored(ledger)) and not epoch_2 & group_keys_1


def test_pages_after_the_first_exchange_are_keyed_to_announced_keys_not_to_cards(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob = team(tmp_path, ledger, count=2)  # bob read alice's first page and announced a receive key
    for i in range(PAGE_CAPACITY + 1):
        alice.groups.send_message(f"later {i}", "team")
    assert "later 20" in texts(until(bob, "team", lambda v: "later 20" in texts(v)))
    # The holder of every long-term key (both cards' static keys) and the ledger, with no key store.
    long_term = [(0, statics_key(0)), (0, statics_key(1))]
    opened = [find_page_secret(SealedPage.from_string(v), long_term) is not None
              for v in lane_values(ledger, alice, "team", 1)]
    assert opened == [True, False]  # only the page written before bob announced a key


def test_a_file_sent_to_the_group_is_saved_by_a_member_who_is_not_the_senders_friend(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    _alice, bob, carol = team(tmp_path, ledger)
    (tmp_path / "plan.txt").write_bytes(b"the plan, in a file")
    bob.groups.send_file("team", tmp_path / "plan.txt")
    view = until(carol, "team", lambda v: any(m.type == "file" for m in v.messages))
    (message,) = [m for m in view.messages if m.type == "file"]
    assert message.sender.startswith("bob (vouched by alice")
    saved = carol.groups.save_file(message, tmp_path / "downloads")
    assert saved.read_bytes() == b"the plan, in a file"


class Clock:
    """A clock the test moves on (UTC)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now


def test_disappearing_messages_in_a_group_leave_no_key_in_any_members_profile(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    clock = Clock()
    alice, bob = team(tmp_path, ledger, count=2, clock=clock)
    alice.groups.send_message("kept", "team")
    bob.groups.set_disappearing("team", 300)
    view = until(alice, "team", lambda v: alice.groups.disappearing("team") == 300)
    assert "set disappearing messages to 5 minutes" in [setting_text(m) for m in view.messages if m.type == "setting"]
    alice.groups.send_message("gone soon", "team")
    page = alice.state("team").own(1).page
    assert "gone soon" in texts(until(bob, "team", lambda v: "gone soon" in texts(v)))
    clock.now += timedelta(minutes=11)  # past twice the timer: expired for both, read or not
    for who in (alice, bob):
        view = who.groups.get_update("team")
        assert "gone soon" not in texts(view) and "kept" in texts(view)
        assert not [p for p in view.problems if p.kind != "restart"]
    # Both profiles, store keys included (what their passwords unlock), and the whole ledger.
    value = stored(ledger)[alice.groups.lane_address("team", "me", 1, page)]
    sealed = SealedPage.from_string(value)
    assert alice.state("team").own(1).secrets.get(f"1:{page}") in (None, "expired") or \
        PageKeys.from_text(alice.state("team").own(1).secrets[f"1:{page}"]).start >= len(sealed.records)
    bob_lane = bob.state("team").lane(1, alice.fingerprint)
    stored_keys = bob_lane.secrets.get(str(page))
    assert stored_keys == "expired" or PageKeys.from_text(stored_keys).start >= len(sealed.records)
    receive_keys = [k for k in keys_of(bob, "team") if k[0] > 0]
    assert find_page_secret(sealed, receive_keys) is None
    # The message's page is not kept to be put back either.
    assert not alice.groups._copies(alice.state("team")).has(alice.fingerprint[:16], 1, page)


def test_a_stolen_group_state_opens_no_page_once_both_moved_on(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob = team(tmp_path, ledger, count=2)
    alice.groups.send_message("before the theft", "team")
    until(bob, "team", lambda v: "before the theft" in texts(v))
    stolen = GroupStore(tmp_path / "stolen", bob.person.identity.store_key)
    shutil.copytree(bob.person.home / "lanes" / "groups", tmp_path / "stolen" / "groups")
    # After the theft bob starts a new page (announcing a fresh receive key), alice reads it and then starts
    # a new page of hers, keyed to that key.
    for i in range(PAGE_CAPACITY + 1):
        bob.groups.send_message(f"bob after {i}", "team")
    until(alice, "team", lambda v: f"bob after {PAGE_CAPACITY}" in texts(v))
    before = alice.state("team").own(1).page
    for i in range(PAGE_CAPACITY + 1):
        alice.groups.send_message(f"alice after {i}", "team")
    after = alice.state("team").own(1).page
    assert after > before
    assert f"alice after {PAGE_CAPACITY}" in texts(until(bob, "team", lambda v: f"alice after {PAGE_CAPACITY}"
                                                         in texts(v)))
    (state,) = stolen.all()
    thief_keys = [(0, bob.person.identity.statics)]
    thief_keys += [(int(e["index"]), kem.ReceiveKey.from_dict(e["key"])) for e in state.receive_keys]
    new_page = SealedPage.from_string(stored(ledger)[alice.groups.lane_address("team", "me", 1, after)])
    assert find_page_secret(new_page, thief_keys) is None
    assert find_page_secret(new_page, keys_of(bob, "team")) is not None  # bob's own keys do open it
    assert not any(state.lane(1, alice.fingerprint).secrets.get(str(n)) for n in range(before + 1, after + 1))


# --- only members read --------------------------------------------------------------------------------


def test_a_member_who_rewrites_an_old_message_is_reported_within_pages_over_k_updates(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob = team(tmp_path, ledger, count=2)
    for i in range(2 * PAGE_CAPACITY + 5):
        bob.groups.send_message(f"bob {i}", "team")
    view = settle(lambda: alice.groups.load_all("team"), lambda v: f"bob {2 * PAGE_CAPACITY + 4}" in texts(v))
    assert "bob 0" in texts(view)
    window = alice.groups.get_update("team")  # the two newest pages of each lane; the rest on demand
    assert window.has_older and "bob 0" not in texts(window)
    # bob, a member with every key of his own lane, signs another first message into his page 1.
    address = bob.groups.lane_address("team", "me", 1, 1)
    sealed = SealedPage.from_string(stored(ledger)[address])
    state = bob.state("team")
    keys = PageKeys.from_text(state.own(1).secrets["1:1"])
    header = open_header(sealed, keys)
    original = open_page(stored(ledger)[address], sealed, keys, conversation=header.conversation,
                         writer=header.writer, writer_key=bob.person.identity.public_key, epoch=1, number=1,
                         verified=set()).records
    emptied = SealedPage(slots=sealed.slots, header=sealed.header, records=[], tag=sealed.tag)
    forged, _r, digest = add_record(emptied, header, keys, replace(original[0], body=b"bob never said that",
                                                                    signature=b""), bob.person.chat._sign)
    for record in original[1:]:  # the rest of the page chained again after it: a clean rewrite
        forged, _r, digest = add_record(forged, header, keys, replace(record, prev=digest, signature=b""),
                                        bob.person.chat._sign)
    ledger.set(address, forged.to_string())
    pages = 3
    found = []
    for _ in range(-(-pages // ROTATION_PAGES) + 1):
        found += [p for p in alice.groups.get_update("team").problems if p.kind == "rewritten"]
    assert found and "message #1 " in found[0].detail


def test_pages_the_ledger_lost_are_put_back_from_the_members_kept_copies(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    for i in range(2 * PAGE_CAPACITY + 5):
        bob.groups.send_message(f"bob {i}", "team")
    for i in range(2 * PAGE_CAPACITY + 5):
        alice.groups.send_message(f"alice {i}", "team")
    settle(lambda: alice.groups.load_all("team"), lambda v: f"bob {2 * PAGE_CAPACITY + 4}" in texts(v))
    lost = [bob.groups.lane_address("team", "me", 1, 1), alice.groups.lane_address("team", "me", 1, 1)]
    kept = {key: stored(ledger)[key] for key in lost}
    for key in lost:
        del ledger._data[key]
    restoring = []
    for _ in range(6):  # a lost page is put back once two updates in a row found it lost
        restoring += [p for p in alice.groups.get_update("team").problems if p.kind == "restoring"]
    assert restoring
    assert {key: stored(ledger).get(key) for key in lost} == kept
    view = settle(lambda: carol.groups.load_all("team"), lambda v: {"bob 0", "alice 0"} <= set(texts(v)))
    assert {"bob 0", "alice 0"} <= set(texts(view))


def test_a_removed_member_reads_nothing_a_writer_wrote_after_seeing_the_removal(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    alice.groups.remove("team", "carol")
    view = until(carol, "team", lambda v: carol.state("team").status == "removed")
    assert carol.state("team").status == "removed"
    assert any(m.type == "setting" and "removed you" in m.text for m in view.messages)
    with pytest.raises(MessageError, match="removed"):
        carol.groups.send_message("still here?", "team")
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    assert carol.fingerprint not in bob.state("team").current().fingerprints()
    bob.groups.send_message("after the removal", "team")
    alice.groups.send_message("alice after the removal", "team")
    until(alice, "team", lambda v: "after the removal" in texts(v))
    view = carol.groups.get_update("team")
    assert "after the removal" not in texts(view) and "alice after the removal" not in texts(view)
    # Even with the whole ledger and every key she holds, no page of the new epoch opens for carol.
    new_pages = lane_values(ledger, bob, "team", 2) + lane_values(ledger, alice, "team", 2)
    assert len(new_pages) >= 2
    assert not opens_any(new_pages, keys_of(carol, "team"))
    assert opens_any(new_pages, keys_of(bob, "team"))  # the check can tell: a member's keys open them
    # Nor does the page that carried the new epoch's secret (alice's last page of epoch 1): no slot of hers.
    key_page = lane_values(ledger, alice, "team", 1)[-1:]
    assert not opens_any(key_page, keys_of(carol, "team")) and opens_any(key_page, keys_of(bob, "team"))


def test_the_removal_window_closes_at_the_writers_next_update(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    alice.groups.remove("team", "carol")
    # bob has not updated since: his page is still keyed to carol. That is the window (a README limit).
    bob.groups.send_message("inside the window", "team")
    view = until(carol, "team", lambda v: "inside the window" in texts(v))
    assert "inside the window" in texts(view)
    bob.groups.get_update("team")  # the window closes here
    assert bob.state("team").epoch == 2
    bob.groups.send_message("after the window", "team")
    until(alice, "team", lambda v: "after the window" in texts(v))
    assert "after the window" not in texts(carol.groups.get_update("team"))
    assert not opens_any(lane_values(ledger, bob, "team", 2), keys_of(carol, "team"))


def test_a_member_added_later_reads_no_page_from_before_they_joined(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob = team(tmp_path, ledger, count=2)
    alice.groups.send_message("before dave", "team")
    bob.groups.send_message("bob before dave", "team")
    until(bob, "team", lambda v: "before dave" in texts(v))
    until(alice, "team", lambda v: "bob before dave" in texts(v))
    dave = member("dave", 3, tmp_path, ledger)
    befriend(alice.person, dave.person)
    alice.groups.add("team", "dave")
    join(dave)
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    bob.groups.send_message("welcome dave", "team")
    view = settle(lambda: dave.groups.load_all("team"), lambda v: "welcome dave" in texts(v))
    assert "welcome dave" in texts(view)
    assert "before dave" not in texts(view) and "bob before dave" not in texts(view)
    assert any(m.type == "setting" and "added you" in m.text for m in view.messages)
    old_pages = lane_values(ledger, alice, "team", 1) + lane_values(ledger, bob, "team", 1)
    assert old_pages and not opens_any(old_pages, keys_of(dave, "team"))


def test_leaving_needs_no_approval_and_the_longest_standing_member_becomes_admin(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    alice.groups.leave("team")
    with pytest.raises(MessageError, match="left"):
        alice.groups.send_message("gone", "team")
    # bob and carol joined together: the lower fingerprint is the longest-standing and starts the epoch.
    successor = min((bob, carol), key=lambda m: m.fingerprint)
    other = carol if successor is bob else bob
    until(successor, "team", lambda v: successor.state("team").epoch == 2)
    view = until(other, "team", lambda v: other.state("team").epoch == 2)
    membership = other.state("team").current()
    assert membership.fingerprints() and alice.fingerprint not in membership.fingerprints()
    assert [m.fingerprint for m in membership.members if m.admin] == [successor.fingerprint]
    assert any(m.type == "setting" and "left the group" in m.text for m in view.messages)
    successor.groups.remove("team", other.fingerprint)  # the new admin acts as one
    until(other, "team", lambda v: other.state("team").status == "removed")


# --- membership authenticated and ordered -----------------------------------------------------------


def test_a_change_by_a_member_who_is_not_an_admin_is_reported_and_ignored(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol = team(tmp_path, ledger)
    # bob, a member but no admin, writes a change that would remove carol (a genuine, signed record of his).
    state = bob.state("team")
    forged = {"g": state.id, "e": 2, "a": "remove", "t": carol.fingerprint, "n": "team", "by": bob.fingerprint,
              "m": [m.to_list() for m in state.current().members if m.fingerprint != carol.fingerprint]}
    with bob.groups.store.lock(state.id):
        state = bob.groups.store.load(state.id)
        address, value, _m = bob.groups._write(state, "setting", CHANGE_EXT, json.dumps(forged).encode())
        bob.groups.store.save(state)
    ledger.set(address, value)
    for who in (alice, carol):
        view = until(who, "team", lambda v: any("not an admin" in p.detail for p in v.problems))
        assert any(p.kind == "forged" and "not an admin" in p.detail for p in view.problems)
        assert who.state("team").epoch == 1 and carol.fingerprint in who.state("team").current().fingerprints()
    assert carol.state("team").status == ""


def test_a_replayed_change_is_reported_and_ignored(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, _carol = team(tmp_path, ledger)
    alice.groups.rename("team", "crew")
    assert until(bob, "team", lambda v: v.friend == "crew").friend == "crew"
    # The change that started epoch 2, written again in epoch 2 by the same admin: a replay.
    state = alice.state("crew")
    replayed = {"g": state.id, "e": 2, "a": "rename", "t": "", "n": "crew", "by": alice.fingerprint,
                "m": [m.to_list() for m in state.membership(1).members]}  # type: ignore[union-attr]
    with alice.groups.store.lock(state.id):
        state = alice.groups.store.load(state.id)
        address, value, _m = alice.groups._write(state, "setting", CHANGE_EXT, json.dumps(replayed).encode())
        alice.groups.store.save(state)
    ledger.set(address, value)
    view = until(bob, "crew", lambda v: any(p.kind == "forged" for p in v.problems))
    assert any(p.kind == "forged" and "replayed" in p.detail for p in view.problems)
    assert bob.state("crew").epoch == 2


def test_a_ledger_writer_cannot_plant_or_move_a_page_and_hides_nothing(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, _carol = team(tmp_path, ledger)
    bob.groups.send_message("genuine 1", "team")
    until(alice, "team", lambda v: "genuine 1" in texts(v))
    bob_page_1 = bob.groups.lane_address("team", "me", 1, 1)
    # A copy of alice's genuine page at bob's next address, and junk above it.
    ledger.set(bob.groups.lane_address("team", "me", 1, 2), stored(ledger)[alice.groups.lane_address("team", "me",
                                                                                                        1, 1)])
    ledger.set(bob.groups.lane_address("team", "me", 1, 3), "reschat2:" + base64.b64encode(b"junk" * 50).decode())
    view = alice.groups.get_update("team")
    assert {p.kind for p in view.problems} & {"forged", "damaged"}
    assert "genuine 1" in texts(view)
    assert stored(ledger)[bob_page_1]
    # Bob's own next page goes where the copy was; his messages still show.
    bob.groups.send_message("genuine 2", "team")
    view = until(alice, "team", lambda v: "genuine 2" in texts(v))
    assert "genuine 2" in texts(view)


def two_admins(tmp_path: Path, ledger: Ledger) -> tuple[Member, Member, Member, Member, Member]:
    """alice makes bob an admin (epoch 2, read by all): alice, bob, carol, and of the two admins the one whose
    change wins a race for the same epoch (the lower fingerprint) and the one whose change loses."""
    alice, bob, carol = team(tmp_path, ledger)
    alice.groups.make_admin("team", "bob")
    until(bob, "team", lambda v: bob.state("team").epoch == 2)
    until(carol, "team", lambda v: carol.state("team").epoch == 2)
    winner, loser = sorted((alice, bob), key=lambda m: m.fingerprint)
    return alice, bob, carol, winner, loser


def test_two_admins_changing_at_once_end_in_one_membership_per_epoch(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice, bob, carol, _winner, loser = two_admins(tmp_path, ledger)
    # Both admins start epoch 3 without having seen each other's change.
    alice.groups.rename("team", "alpha")
    bob.groups.rename("team", "beta")
    final = "alpha" if loser is alice else "beta"

    def agreed() -> bool:
        for who in (alice, bob, carol):
            for group in who.groups.names():
                who.groups.get_update(group)
        states = [who.groups.store.all()[0] for who in (alice, bob, carol)]
        return all(s.epoch == 4 and s.name == final for s in states)

    settle(agreed, bool)
    states = [who.groups.store.all()[0] for who in (alice, bob, carol)]
    for epoch in ("2", "3", "4"):
        starts = {(s.epochs[epoch]["by"], s.epochs[epoch]["secret"], str(s.epochs[epoch]["members"])) for s in states}
        assert len(starts) == 1, f"members disagree about epoch {epoch}"
    winner = min(alice.fingerprint, bob.fingerprint)
    assert states[0].epochs["3"]["by"] == winner and states[0].epochs["4"]["by"] == loser.fingerprint
    assert {s.name for s in states} == {final}


def test_messages_written_in_the_epoch_that_lost_a_race_are_sent_again_in_the_winners(tmp_path: Path) -> None:
    """carol moves to the epoch of the admin whose change then loses the race, and writes there; so does that
    admin. Nobody who went straight to the winner's epoch could read those pages: each writer sends them again
    in the winner's epoch, with their first time, and every member ends with each message exactly once."""
    ledger = MemoryLedger()
    alice, bob, carol, winner, loser = two_admins(tmp_path, ledger)
    loser.groups.rename("team", "second")
    settle(lambda: carol.groups.get_update(carol.groups.names()[0]),
           lambda v: carol.groups.store.all()[0].epoch == 3)
    lost_by_carol = carol.groups.send_message("carol, in the epoch that loses", "second").message
    # Two pages of the loser's (the first one final, so carol keeps a copy of it to heal the ledger with).
    lines = ["carol, in the epoch that loses", *(f"the losing admin, #{i}" for i in range(PAGE_CAPACITY + 1))]
    for line in lines[1:]:
        loser.groups.send_message(line, "second")
    settle(lambda: carol.groups.get_update("second"), lambda v: lines[-1] in texts(v))
    winner.groups.rename("team", "first")  # winner has not read the loser's change: a race for epoch 3

    reported = []

    def everyone_reads_both() -> bool:
        views = [who.groups.get_update(who.groups.names()[0]) for who in (alice, bob, carol)]
        reported.extend(p for view in views for p in view.problems)
        return all(all(line in texts(view) for line in lines) for view in views)

    settle(everyone_reads_both, bool)
    for _ in range(3):  # the winner's pages at the places the loser's had are never "repaired" with them
        reported.extend(p for who in (alice, bob, carol) for p in who.groups.get_update(who.groups.names()[0]).problems)
    # Nor is a message sent again reported backdated: it keeps its first time and names nothing read since.
    assert not [p for p in reported if p.kind in ("restoring", "forged", "rewritten", "undecryptable", "backdated")]
    for who in (alice, bob, carol):
        view = who.groups.load_all(who.groups.names()[0])
        counts = Counter(texts(view))
        assert [counts[line] for line in lines] == [1] * len(lines), f"{who.name} sees {counts}"
        assert who.groups.store.all()[0].epochs["3"]["by"] == winner.fingerprint
        again = next(m for m in view.messages if m.text == lines[0])
        assert again.time == lost_by_carol.time  # sent again with the time it was first written
    notices = [m.text for m in carol.groups.load_all(carol.groups.names()[0]).messages if m.type == "setting"]
    assert any("sent again 1 message" in n for n in notices)


def test_an_admin_that_lost_a_race_with_two_changes_applies_both_again_and_sends_again_what_both_held(
        tmp_path: Path) -> None:
    """The losing admin renames twice (its epochs 3 and 4) and writes in each before it reads the winner's
    change for epoch 3. It loses both epochs: its two changes are applied again in order (epochs 4 and 5) and
    its messages of both are sent again, once each, in the order written; every member ends in the same epochs.
    Fails when ``_resolve`` loses only the first epoch of the chain (``range(epoch, state.epoch + 1)``)."""
    ledger = MemoryLedger()
    alice, bob, carol, winner, loser = two_admins(tmp_path, ledger)
    loser.groups.rename("team", "second")
    loser.groups.send_message("in the loser's 3", "second")
    loser.groups.rename("second", "third")
    loser.groups.send_message("in the loser's 4", "third")
    winner.groups.rename("team", "first")
    for _ in range(8):
        for who in (winner, loser, carol):
            who.groups.get_update(who.groups.names()[0])
    states = [who.groups.store.all()[0] for who in (alice, bob, carol)]
    for epoch in ("3", "4", "5"):
        starts = {(s.epochs[epoch]["by"], s.epochs[epoch]["secret"]) for s in states}
        assert len(starts) == 1, f"members disagree about epoch {epoch}"
    assert states[0].epochs["3"]["by"] == winner.fingerprint and states[0].epochs["5"]["by"] == loser.fingerprint
    assert {s.name for s in states} == {"third"}
    for who in (alice, bob, carol):
        lines = [line for line in texts(who.groups.load_all("third")) if line.startswith("in the loser's")]
        assert lines == ["in the loser's 3", "in the loser's 4"], who.name


def test_a_member_the_winner_added_is_keyed_to_nothing_sent_again_and_follows_the_group(tmp_path: Path) -> None:
    """The winner adds erin while the losing admin renames and writes in its epoch 3. What the loser sends again
    in the winner's epoch is keyed only to members of both epochs: never to erin, who was in neither when it was
    written. She passes over that page on the loser's signed word that follows it (``PASSED_EXT``, naming the
    records and their readers) instead of waiting for it as a gap, so she still takes the loser's change that
    follows and moves with everyone to epoch 4. Fails when ``_passed_over`` passes over nothing (erin stays in
    epoch 3)."""
    ledger = MemoryLedger()
    alice, bob, carol, winner, loser = two_admins(tmp_path, ledger)
    erin = member("erin", 4, tmp_path, ledger)
    befriend(winner.person, erin.person)
    loser.groups.rename("team", "second")
    loser.groups.send_message("the loser, before erin", "second")
    winner.groups.add("team", "erin")
    join(erin)
    for _ in range(8):
        for who in (winner, loser, carol, erin):
            who.groups.get_update(who.groups.names()[0])
    states = [who.groups.store.all()[0] for who in (alice, bob, carol, erin)]
    assert {(s.epoch, s.epochs["4"]["secret"]) for s in states} == {(4, states[0].epochs["4"]["secret"])}
    for who in (alice, bob, carol):
        assert texts(who.groups.load_all("second")).count("the loser, before erin") == 1, who.name
    view = erin.groups.load_all("second")
    assert "the loser, before erin" not in texts(view)
    assert not [p for p in view.problems if p.kind in ("gap", "undecryptable")]


def test_the_membership_rule_is_deterministic_and_strict() -> None:
    from reschat.groupstate import Member as Entry
    from reschat.groupstate import Membership

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    old = Membership(1, "00" * 32, a, [Entry(a, 1, True), Entry(b, 1, False), Entry(c, 1, False)], "team")
    remove_c = {"g": "x", "e": 2, "a": "remove", "t": c, "n": "team", "by": a,
                "m": [[a, 1, 1], [b, 1, 0]]}
    assert check_change(old, remove_c, a) == ""
    assert "not an admin" in check_change(old, {**remove_c, "by": b}, b)
    assert "replayed" in check_change(old, {**remove_c, "e": 1}, a)
    assert check_change(old, {**remove_c, "by": b}, a) != ""  # a record must name its own writer
    sneaky = {**remove_c, "a": "rename", "m": [[a, 1, 1], [b, 1, 1], [c, 1, 0]]}
    assert "admins" in check_change(old, sneaky, a)
    assert rekeyer([Entry(c, 1, False), Entry(b, 1, False)]) == b
    assert rekeyer([Entry(c, 1, True), Entry(b, 2, False)]) == c


@pytest.mark.parametrize("members", [
    "not a list", [["a" * 64, 1]], [[1, 2, 3]], [["A" * 64, 1, 1]], [["a" * 64, 1, 0]], [["a" * 64, 9, 1]], [],
    [["a" * 64, 1, 1]] * 2, [[f"{i:064x}", 1, 1] for i in range(33)],
])
def test_a_malformed_membership_is_refused_without_an_exception(members: object) -> None:
    change = {"g": "x", "e": 1, "a": "create", "t": "", "n": "team", "by": "a" * 64, "m": members}
    assert check_change(None, change, "a" * 64) != ""
    assert check_change(None, {**change, "m": [["a" * 64, 1, 1]]}, "a" * 64) == ""


def test_a_friend_pinned_before_cards_were_kept_is_asked_for_it_and_can_then_be_added(tmp_path: Path) -> None:
    """alice pinned dave before friend stores kept the signed card line a roster passes on. Adding him asks
    his client for it in their pair's lane; his client answers at its next read; alice keeps it only because
    it is the card she pinned (same keys), and the add then goes through. None of it is a line of the chat."""
    ledger = MemoryLedger()
    alice, _bob, _carol = team(tmp_path, ledger)
    dave = member("dave", 3, tmp_path, ledger)
    befriend(alice.person, dave.person)
    alice.person.friends.update("dave", card="")
    with pytest.raises(MessageError, match="asked for it"):
        alice.groups.add("team", "dave")
    dave_view = settle(lambda: dave.person.chat.get_update("alice"), lambda v: True)
    assert not [m for m in dave_view.messages if m.type == "setting"]
    settle(lambda: alice.person.chat.get_update("dave"), lambda v: bool(alice.person.friends.get_friend("dave").card))
    assert alice.person.friends.get_friend("dave").card == dave.person.card
    alice.groups.add("team", "dave")
    assert dave.fingerprint in alice.state("team").current().fingerprints()


def test_a_card_sent_in_answer_under_another_key_is_not_kept(tmp_path: Path) -> None:
    """A friend's client answers with the card of another key (its own new one, or someone else's): pinning a
    new key is the user's choice only, so nothing is kept and the add still waits."""
    ledger = MemoryLedger()
    alice, bob, _carol = team(tmp_path, ledger)
    dave = member("dave", 3, tmp_path, ledger)
    befriend(alice.person, dave.person)
    alice.person.friends.update("dave", card="")
    from reschat.chat import CARD_REPLY
    dave.person.chat.send_message(bob.person.card, "alice", msg_type="setting", type_ext=CARD_REPLY)
    for _ in range(3):
        alice.person.chat.get_update("dave")
    assert alice.person.friends.get_friend("dave").card == ""
    with pytest.raises(MessageError, match="before groups existed"):
        alice.groups.add("team", "dave")
