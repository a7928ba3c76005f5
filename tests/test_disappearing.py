"""Disappearing messages: a signed setting both sides see, expiry on both sides, and keys that are gone."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reschat import kem, retention
from reschat.errors import MessageError
from reschat.keystore import ConversationStore
from reschat.lane import PageKeys, find_page_secret, open_header, open_page
from reschat.ledger import MemoryLedger
from reschat.page import PAGE_CAPACITY, SealedPage
from tests.conftest import Person, befriend, make_person

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def pair(tmp_path: Path, clock: Clock, ledger: MemoryLedger) -> tuple[Person, Person]:
    alice = make_person("alice", 0, tmp_path / "alice", ledger, clock=clock)
    bob = make_person("bob", 1, tmp_path / "bob", ledger, clock=clock)
    befriend(alice, bob)
    return alice, bob


def texts(person: Person, friend: str) -> list[str]:
    return [m.text for m in person.chat.get_update(friend).messages if m.type == "text"]


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("1h", 3600), ("2d", 172800), ("4w", 2419200),
                                                ("off", 0)])
def test_durations(text: str, seconds: int) -> None:
    assert retention.parse_duration(text) == seconds
    assert retention.describe(seconds) in ("off", "5 minutes", "1 hour", "2 days", "4 weeks")


@pytest.mark.parametrize("text", ["4m", "5w", "soon", "-1h", ""])
def test_durations_outside_the_range_are_refused(text: str) -> None:
    with pytest.raises(MessageError):
        retention.parse_duration(text)


def test_the_setting_is_a_signed_line_both_sides_see_and_adopt(tmp_path: Path) -> None:
    clock, ledger = Clock(), MemoryLedger()
    alice, bob = pair(tmp_path, clock, ledger)
    alice.chat.set_disappearing("bob", 3600)
    assert alice.chat.disappearing("bob") == 3600
    view = bob.chat.get_update("alice")
    settings = [m for m in view.messages if m.type == "setting"]
    assert len(settings) == 1 and retention.parse_setting(settings[0].body) == 3600
    assert bob.chat.disappearing("alice") == 3600
    clock.advance(timedelta(seconds=1))
    bob.chat.set_disappearing("alice", 0)
    alice.chat.get_update("bob")
    assert alice.chat.disappearing("bob") == 0
    with pytest.raises(MessageError):
        alice.chat.set_disappearing("bob", 60)


def test_messages_expire_on_both_sides_from_sending_and_from_display(tmp_path: Path) -> None:
    clock, ledger = Clock(), MemoryLedger()
    alice, bob = pair(tmp_path, clock, ledger)
    alice.chat.send_message("before the timer", "bob")
    bob.chat.get_update("alice")
    alice.chat.set_disappearing("bob", 3600)
    alice.chat.send_message("gone in an hour", "bob")
    clock.advance(timedelta(minutes=50))
    assert "gone in an hour" in texts(bob, "alice")  # first displayed now: bob's hour starts here
    clock.advance(timedelta(minutes=20))
    assert "gone in an hour" not in texts(alice, "bob")  # 70 minutes after sending
    assert "gone in an hour" in texts(bob, "alice")  # 20 minutes after bob first saw it
    clock.advance(timedelta(minutes=45))
    assert "gone in an hour" not in texts(bob, "alice")
    assert "before the timer" in [m.text for m in bob.chat.load_all("alice").messages]
    assert "before the timer" in [m.text for m in alice.chat.load_all("bob").messages]


def test_a_message_not_fetched_within_twice_the_timer_is_dropped_unread(tmp_path: Path) -> None:
    clock, ledger = Clock(), MemoryLedger()
    alice, bob = pair(tmp_path, clock, ledger)
    alice.chat.send_message("hello", "bob")
    bob.chat.get_update("alice")
    alice.chat.set_disappearing("bob", 3600)
    bob.chat.get_update("alice")
    alice.chat.send_message("you were away", "bob")
    clock.advance(timedelta(hours=2, minutes=1))
    assert "you were away" not in texts(bob, "alice")


def test_after_expiry_both_profiles_and_passwords_open_none_of_those_pages(tmp_path: Path) -> None:
    clock, ledger = Clock(), MemoryLedger()
    alice, bob = pair(tmp_path, clock, ledger)
    alice.chat.send_message("hi, before", "bob")
    bob.chat.get_update("alice")
    bob.chat.send_message("hello, before", "alice")
    alice.chat.get_update("bob")
    alice.chat.set_disappearing("bob", 3600)
    bob.chat.get_update("alice")
    secret_texts = []
    for i in range(PAGE_CAPACITY + 3):  # more than a page each way
        for sender, friend in ((alice, "bob"), (bob, "alice")):
            text = f"ephemeral {sender.name} {i}"
            sender.chat.send_message(text, friend)
            secret_texts.append(text)
        bob.chat.get_update("alice")
        alice.chat.get_update("bob")
    clock.advance(timedelta(hours=3))
    alice.chat.get_update("bob")  # the first run after expiry deletes the keys
    bob.chat.get_update("alice")
    # The attacker: both whole profiles and both passwords (so every key store opens), and the ledger.
    stolen = tmp_path / "stolen"
    shutil.copytree(tmp_path / "alice", stolen / "alice")
    shutil.copytree(tmp_path / "bob", stolen / "bob")
    keys: list[tuple[int, kem.ReceiveKey]] = []
    page_keys: list[PageKeys] = []
    for person in (alice, bob):
        keys.append((0, person.identity.statics))
        for path in (stolen / person.name / "lanes").glob("*.state"):
            store = ConversationStore(path.parent, b"", person.identity.store_key)
            store.name = path.stem
            state = store.load()
            keys += [(e.index, kem.ReceiveKey.from_dict(e.key)) for e in state.receive_keys]
            page_keys += [PageKeys.from_text(t) for t in [*state.theirs.secrets.values(),
                                                          *state.mine.get("secrets", {}).values()]
                          if t != "expired"]
    recovered: list[bytes] = []
    for value in ledger._data.values():
        if not value.startswith("reschat2:"):
            continue
        try:
            sealed = SealedPage.from_string(value)
        except ValueError:
            continue
        candidates = list(page_keys)
        found = find_page_secret(sealed, keys)
        if found is not None:
            candidates.append(PageKeys.from_secret(found[0]))
        for page_key in candidates:
            try:
                header = open_header(sealed, page_key)
            except ValueError:
                continue
            writer = alice if header.writer == alice.chat.my_fingerprint else bob
            opened = open_page(value, sealed, page_key, conversation=header.conversation, writer=header.writer,
                               writer_key=writer.identity.public_key, epoch=header.epoch, number=header.number,
                               verified=set())
            recovered += [r.body for r in opened.records]
    assert b"hi, before" in recovered  # the attacker is real: what never disappeared still opens
    assert not [t for t in secret_texts if t.encode() in recovered]


def test_expired_keys_leave_the_store(tmp_path: Path) -> None:
    clock, ledger = Clock(), MemoryLedger()
    alice, bob = pair(tmp_path, clock, ledger)
    alice.chat.send_message("hi", "bob")
    bob.chat.get_update("alice")
    alice.chat.set_disappearing("bob", 300)
    for i in range(3 * PAGE_CAPACITY):
        alice.chat.send_message(f"m{i}", "bob")
        if i % 10 == 0:
            bob.chat.get_update("alice")
    bob.chat.get_update("alice")
    keys_before = len(bob.chat.conversation_state("alice").receive_keys)
    clock.advance(timedelta(minutes=11))
    bob.chat.get_update("alice")
    alice.chat.get_update("bob")
    after = bob.chat.conversation_state("alice")
    # Every key bob still holds for alice's pages opens none of their (expired) records.
    for pid, text in after.theirs.secrets.items():
        if text == "expired" or pid == "1:1":  # page 1 holds "hi", sent before the timer
            continue
        epoch, number = (int(x) for x in pid.split(":"))
        value = ledger.get(bob.chat.lane_address("alice", mine=False, number=number, epoch=epoch))
        assert value is not None
        opened = open_page(value, SealedPage.from_string(value), PageKeys.from_text(text),
                           conversation=bob.chat._pair("alice").conversation,
                           writer=bob.chat._pair("alice").fingerprint, writer_key=alice.identity.public_key,
                           epoch=epoch, number=number, verified=set())
        assert opened.records == [], pid
    assert len(after.receive_keys) <= keys_before
    # Nor does bob keep the digest of any expired message: it would confirm a guess at its text.
    assert not [key for key in after.theirs.digests if int(key.split(":")[1]) > 2]  # m0, m1, ...: expired
    mine = {pid: t for pid, t in alice.chat.own_lane("bob").secrets.items() if t != "expired" and pid != "1:1"}
    for pid, text in mine.items():  # alice's own copies: past every expired record
        number = int(pid.split(":")[1])
        value = ledger.get(alice.chat.lane_address("bob", mine=True, number=number))
        assert value is not None
        assert PageKeys.from_text(text).start >= len(SealedPage.from_string(value).records), pid


def test_expired_pages_are_dropped_from_the_kept_copies(tmp_path: Path) -> None:
    clock, ledger = Clock(), MemoryLedger()
    alice, bob = pair(tmp_path, clock, ledger)
    alice.chat.send_message("hi", "bob")
    bob.chat.get_update("alice")
    alice.chat.set_disappearing("bob", 300)
    bob.chat.get_update("alice")
    for i in range(3 * PAGE_CAPACITY):
        alice.chat.send_message(f"m{i}", "bob")
        if i % 10 == 0:
            bob.chat.get_update("alice")
    for _ in range(2):
        bob.chat.get_update("alice")
    copies = {person.name: person.chat._pair(friend).copies for person, friend in ((alice, "bob"), (bob, "alice"))}
    assert copies["alice"].numbers("m", 1) and copies["bob"].numbers("t", 1)
    clock.advance(timedelta(minutes=11))
    alice.chat.get_update("bob")
    bob.chat.get_update("alice")
    assert copies["alice"].numbers("m", 1) == [1]  # only page 1 ("hi", sent before the timer) is kept
    assert copies["bob"].numbers("t", 1) in ([], [1])
