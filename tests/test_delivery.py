"""Delivery confirmation, on every backend RESCHAT_TEST_LEDGER chooses (see conftest), with the stale
reads the stand-ins serve (a read right after a write may still return the key's previous value).

A sent message is "pending" until a ledger read returns it, then "delivered"; one still unconfirmed
after ``resend_after`` is written again (same page, same sequence number, never shown twice); pending
messages wait in the outbox, as ciphertext only, across a quit and restart. Every row of the contract's
failure table of kv_service_tools is driven through the chat service (on that backend only)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reschat import files
from reschat.chat import CHUNK_CHECK_EVERY, ChatMessage, ConversationView
from reschat.errors import IntegrityError, LedgerConfigError, LedgerTimeoutError, LedgerUnavailableError
from reschat.ledger import ResilientDBLedger
from reschat.page import PAGE_CAPACITY
from tests.conftest import (
    LedgerRig,
    Person,
    arrivals,
    befriend,
    make_person,
    needs_backend,
    settle,
    standin_stale_knobs,
    texts_of,
    update_until,
)
from tests.standin import StandInCluster
from tests.test_doctor import no_process_mentions


class ManualClock:
    """A UTC clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


RESEND_AFTER = timedelta(seconds=10)


def setup(rig: LedgerRig, tmp_path: Path, **alice_options: object) -> tuple[Person, Person]:
    alice = make_person("alice", 0, tmp_path / "alice", rig.ledger, **alice_options)
    bob = make_person("bob", 1, tmp_path / "bob", rig.ledger)
    befriend(alice, bob)
    return alice, bob


def setup_cluster(
    tmp_path: Path, *, timeout_s: float = 30, **alice_options: object
) -> tuple[StandInCluster, ResilientDBLedger, Person, Person]:
    """alice and bob on a stand-in cluster of their own, for the tool's failure table (with the real
    cluster's stale reads, as in the rig)."""
    cluster = StandInCluster.create(tmp_path / "cluster", **standin_stale_knobs())
    ledger = ResilientDBLedger(cluster.tool, cluster.config, timeout_s=timeout_s)
    alice = make_person("alice", 0, tmp_path / "alice", ledger, **alice_options)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    return cluster, ledger, alice, bob


def first_message(alice: Person) -> None:
    """One delivered message, so that alice's lane state is local and later sends need no read.

    (The very first send to a friend reads the ledger to find out whether this key already has a
    lane there, so with the ledger down it raises instead of queueing.)
    """
    assert alice.chat.send_message("before", "bob").error is None
    assert mine_once(alice, "bob", [("before", "delivered")]) == [("before", "delivered")]


def lane_key(sender: Person, receiver: Person, number: int) -> str:
    """The private address of page ``number`` of epoch 1 of ``sender``'s lane to ``receiver``."""
    return sender.chat.lane_address(receiver.name, mine=True, number=number, epoch=1)


Statuses = list[tuple[str, str | None]]


def own_statuses(view: ConversationView) -> Statuses:
    return [(m.text, m.status) for m in view.messages if m.outgoing]


def mine(person: Person, friend: str) -> Statuses:
    """One update's own messages and their status."""
    return own_statuses(person.chat.get_update(friend))


def mine_once(person: Person, friend: str, expected: Sequence[tuple[str, str | None]]) -> Statuses:
    """Updates until one shows ``expected`` (a write is read back, so a message is confirmed): the last."""
    return own_statuses(update_until(person, friend, lambda view: own_statuses(view) == list(expected)))


def received(person: Person, friend: str, count: int) -> list[ChatMessage]:
    """The friend's messages in the whole conversation, once ``count`` of them read back; no problem."""
    view = settle(lambda: person.chat.load_all(friend),
                  lambda v: len(texts_of(v, outgoing=False)) >= count and not v.problems)
    assert view.problems == []
    return [m for m in view.messages if not m.outgoing]


# --- pending until a read returns it -------------------------------------------------------------


def test_a_message_is_pending_while_reads_are_stale_and_delivered_once_a_read_returns_it(
    rig: LedgerRig, tmp_path: Path
) -> None:
    # Until the fault is turned off, every read of a written key returns what it held before.
    alice, bob = setup(rig, tmp_path, resend_after=timedelta(hours=1))
    rig.behave(stale=True)
    sent = alice.chat.send_message("hello", "bob")
    assert sent.error is None and sent.message.status == "pending"
    key = lane_key(alice, bob, 1)
    assert rig.stored(key) is not None  # the write did land: only the reads lag behind
    for _ in range(2):
        assert mine(alice, "bob") == [("hello", "pending")]
    rig.behave(stale=False)  # as the ledger normally is: the stand-ins' reads are stale now and then
    assert mine_once(alice, "bob", [("hello", "delivered")]) == [("hello", "delivered")]

    # A stale read of a page returns it as it was before the last write: it confirms only what it holds.
    rig.behave(stale=True)
    alice.chat.send_message("two", "bob")
    assert mine(alice, "bob") == [("hello", "delivered"), ("two", "pending")]
    rig.behave(stale=False)
    both = [("hello", "delivered"), ("two", "delivered")]
    assert mine_once(alice, "bob", both) == both
    assert rig.sets_of(key) == 2  # confirmed by reads, never re-sent
    arrived, view = arrivals(bob, "alice", 2, until=lambda v: not v.problems)
    assert view.problems == [] and texts_of(view) == ["hello", "two"]
    assert [m.text for m in arrived] == ["hello", "two"]


# --- a write the cluster dropped is written again --------------------------------------------------


def test_a_dropped_write_is_re_sent_after_resend_after_and_arrives_once(rig: LedgerRig, tmp_path: Path) -> None:
    clock = ManualClock()
    alice, bob = setup(rig, tmp_path, clock=clock, resend_after=RESEND_AFTER)
    alice.chat.send_message("first", "bob")
    rig.behave(drop_sets=True)
    sent = alice.chat.send_message("lost", "bob")
    assert sent.error is None  # ret = 0: the tool cannot tell a dropped write from a committed one
    key = lane_key(alice, bob, 1)
    expected = [("first", "delivered"), ("lost", "pending")]
    assert mine_once(alice, "bob", expected) == expected
    assert texts_of(update_until(bob, "alice", lambda v: texts_of(v) == ["first"])) == ["first"]

    rig.behave(drop_sets=False)
    clock.advance(RESEND_AFTER.total_seconds() - 1)
    assert mine(alice, "bob") == [("first", "delivered"), ("lost", "pending")]
    assert rig.sets_of(key) == 2  # not yet overdue: nothing re-sent

    clock.advance(1)
    assert mine(alice, "bob") == [("first", "delivered"), ("lost", "pending")]  # re-sent in this round
    assert rig.sets_of(key) == 3
    arrived, view = arrivals(bob, "alice", 1, until=lambda v: not v.problems)
    assert view.problems == []
    assert [(m.text, m.seq) for m in view.messages] == [("first", 1), ("lost", 2)]
    assert [m.text for m in arrived] == ["lost"]
    # Not overdue again (the manual clock stands still), so nothing is re-sent while reads catch up.
    both = [("first", "delivered"), ("lost", "delivered")]
    assert mine_once(alice, "bob", both) == both
    assert rig.sets_of(key) == 3

    clock.advance(3600)
    alice.chat.get_update("bob")
    assert rig.sets_of(key) == 3  # delivered messages are never written again
    arrived, view = arrivals(bob, "alice", until=lambda v: len(v.messages) == 2)
    assert [(m.text, m.seq) for m in view.messages] == [("first", 1), ("lost", 2)] and arrived == []


# --- quit and restart, with the outbox holding ciphertext only -----------------------------------


def encodings(secret: bytes) -> list[bytes]:
    """The secret as raw bytes, hex, and base64 at every alignment (edges trimmed)."""
    found = [secret, secret.hex().encode()]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            found.append(encode(b"\0" * pad + secret)[4:-4])
    return found


def files_holding(secret: bytes, *roots: Path) -> list[str]:
    return [
        path.name
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and any(form in path.read_bytes() for form in encodings(secret))
    ]


def test_pending_messages_survive_a_quit_as_ciphertext_and_are_re_sent_on_the_next_start(
    rig: LedgerRig, tmp_path: Path
) -> None:
    alice, bob = setup(rig, tmp_path, resend_after=RESEND_AFTER)
    ledger = rig.ledger
    secret = b"meet at the north gate at dawn, PLAINTEXT-MARKER-7f3a"
    rig.behave(drop_sets=True)
    for text in ("one", secret.decode()):
        assert alice.chat.send_message(text, "bob").error is None
    assert rig.stored(lane_key(alice, bob, 1)) is None
    home = alice.home
    del alice  # quit before any confirmation

    # The outbox holds both messages, sealed in the key store, and nothing in the profile holds the text.
    assert len(list((home / "lanes").glob("*.state"))) == 1
    outbox = make_person("alice", 0, home, ledger).chat.own_lane("bob")  # reads the store only
    assert (outbox.epoch, outbox.seq, outbox.confirmed, sorted(outbox.pages)) == (1, 2, 0, ["1"])
    assert files_holding(secret, home) == []

    rig.behave(drop_sets=False)
    again = make_person("alice", 0, home, ledger, resend_after=timedelta(0))
    assert mine(again, "bob") == [("one", "pending"), (secret.decode(), "pending")]  # re-sent in this round
    arrived, view = arrivals(bob, "alice", 2, until=lambda v: not v.problems)
    assert view.problems == []
    assert [(m.body, m.seq) for m in view.messages] == [(b"one", 1), (secret, 2)]
    assert [m.body for m in arrived] == [b"one", secret]
    both = [("one", "delivered"), (secret.decode(), "delivered")]
    assert mine_once(again, "bob", both) == both
    assert again.chat.send_message("three", "bob").message.seq == 3
    arrived, _view = arrivals(bob, "alice", 1)
    assert [m.text for m in arrived] == ["three"]
    assert files_holding(secret, home, bob.home, *([rig.root] if rig.root else [])) == []
    assert not [key for key, value in rig.values().items()
                if any(form in value.encode("utf-8", "surrogateescape") for form in encodings(secret))]


def test_a_ledger_that_cannot_be_reached_keeps_the_message_pending_until_it_can(
    rig: LedgerRig, tmp_path: Path
) -> None:
    alice, bob = setup(rig, tmp_path, resend_after=timedelta(0))
    first_message(alice)
    rig.behave(down=True)
    sent = alice.chat.send_message("while down", "bob")
    assert isinstance(sent.error, LedgerUnavailableError) and sent.message.status == "pending"
    with pytest.raises(LedgerUnavailableError):
        alice.chat.get_update("bob")
    rig.behave(down=False)
    assert mine(alice, "bob") == [("before", "delivered"), ("while down", "pending")]  # re-sent in this round
    both = [("before", "delivered"), ("while down", "delivered")]
    assert mine_once(alice, "bob", both) == both
    assert [m.text for m in received(bob, "alice", 2)] == ["before", "while down"]


# --- the failure table, through the chat service ---------------------------------------------------


@needs_backend("resilientdb")
def test_missing_client_config_is_refused_when_the_ledger_is_built(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    with pytest.raises(LedgerConfigError, match="does not exist"):
        ResilientDBLedger(cluster.tool, tmp_path / "missing.config")
    assert cluster.calls() == []


@needs_backend("resilientdb")
def test_every_row_of_the_failure_table_keeps_the_message_pending_until_the_ledger_recovers(tmp_path: Path) -> None:
    """One conversation through every failure in turn (a fresh conversation costs seconds of reads)."""
    cluster, ledger, alice, bob = setup_cluster(tmp_path, resend_after=timedelta(0))
    first_message(alice)
    key = lane_key(alice, bob, 1)
    sent_texts = ["before"]

    def recovers(person: Person, text: str) -> None:
        """The next update re-sends ``text`` (its write never landed), the one after confirms it."""
        sent_texts.append(text)
        assert mine(person, "bob")[-1] == (text, "pending")
        delivered: Statuses = [(t, "delivered") for t in sent_texts]
        assert mine_once(person, "bob", delivered) == delivered

    # Proxy not listening: set prints ret = -1, gets fail.
    on_ledger = cluster.stored(key)
    cluster.behave(down=True)
    sent = alice.chat.send_message("while down", "bob")
    assert isinstance(sent.error, LedgerUnavailableError) and sent.message.status == "pending"
    with pytest.raises(LedgerUnavailableError):
        alice.chat.get_update("bob")
    assert cluster.stored(key) == on_ledger
    cluster.behave(down=None)
    recovers(alice, "while down")

    # Config removed after start (the tool segfaults), then in the wrong format (it aborts).
    for breakage in ("removed", "wrong format"):
        if breakage == "removed":
            cluster.config.unlink()
        else:
            cluster.write_config("text")  # the v1.12 tool aborts on it
        sent = alice.chat.send_message(f"config {breakage}", "bob")
        assert isinstance(sent.error, LedgerConfigError) and sent.message.status == "pending"
        cluster.write_config("json")
        recovers(alice, f"config {breakage}")

    # Reads failing in transport: the write lands, but nothing is confirmed without a read.
    cluster.behave(fail_get=True)
    assert alice.chat.send_message("reads failing", "bob").error is None
    with pytest.raises(LedgerUnavailableError):
        alice.chat.get_update("bob")
    cluster.behave(fail_get=None)
    sent_texts.append("reads failing")
    delivered: Statuses = [(t, "delivered") for t in sent_texts]
    assert mine_once(alice, "bob", delivered) == delivered

    # A stuck cluster: the tool hangs; a session with a short timeout abandons it and kills it.
    impatient = make_person(
        "alice", 0, alice.home, ResilientDBLedger(cluster.tool, cluster.config, timeout_s=0.5),
        resend_after=timedelta(0),
    )
    cluster.behave(hang=True)
    sent = impatient.chat.send_message("into the void", "bob")
    assert isinstance(sent.error, LedgerTimeoutError) and sent.message.status == "pending"
    with pytest.raises(LedgerTimeoutError):
        impatient.chat.get_update("bob")
    assert no_process_mentions(str(cluster.config)), "a timed-out tool is still running"
    cluster.behave(hang=None)
    recovers(make_person("alice", 0, alice.home, ledger, resend_after=timedelta(0)), "into the void")

    view = settle(lambda: bob.chat.load_all("alice"), lambda v: len(v.messages) >= len(sent_texts) and not v.problems)
    assert view.problems == []
    assert texts_of(view) == sent_texts  # each exactly once, in order


# --- the engine's confirmation rule, where it needs many messages -----------------------------------


def test_a_lost_write_of_a_full_page_is_not_confirmed_by_the_next_page(rig: LedgerRig, tmp_path: Path) -> None:
    """The last message of page 1 is lost, the first of page 2 arrives: page 1 must stay pending."""
    clock = ManualClock()
    alice, bob = setup(rig, tmp_path, clock=clock, resend_after=RESEND_AFTER)
    for i in range(PAGE_CAPACITY - 1):
        alice.chat.send_message(f"m{i}", "bob")
    rig.behave(drop_sets=True)
    alice.chat.send_message(f"m{PAGE_CAPACITY - 1}", "bob")
    rig.behave(drop_sets=False)
    alice.chat.send_message("next page", "bob")
    assert rig.stored(lane_key(alice, bob, 2)) is not None

    statuses = dict(mine(alice, "bob"))
    assert statuses[f"m{PAGE_CAPACITY - 1}"] == "pending", "reported delivered though no read returned it"
    assert statuses["m0"] == "delivered"
    clock.advance(RESEND_AFTER.total_seconds())
    alice.chat.get_update("bob")  # re-sends page 1 from the outbox
    texts = [m.text for m in received(bob, "alice", PAGE_CAPACITY + 1)]
    assert texts == [f"m{i}" for i in range(PAGE_CAPACITY)] + ["next page"]
    delivered = [(text, "delivered") for text in texts]
    assert mine_once(alice, "bob", delivered) == delivered


# --- delivery you can trust (issue 12): every friend's outbox, long waits, file chunks ---------------


def test_quit_and_restart_with_unsent_messages_for_two_friends_delivers_both_without_opening_either_chat(
    rig: LedgerRig, tmp_path: Path
) -> None:
    alice, bob = setup(rig, tmp_path)
    carol = make_person("carol", 2, tmp_path / "carol", rig.ledger)
    befriend(alice, carol)
    first_message(alice)
    assert alice.chat.send_message("before", "carol").error is None
    assert mine_once(alice, "carol", [("before", "delivered")]) == [("before", "delivered")]
    rig.behave(down=True)
    assert alice.chat.send_message("to bob, unsent", "bob").error is not None  # never reached the ledger
    rig.behave(down=False, drop_sets=True)
    assert alice.chat.send_message("to carol, lost", "carol").error is None  # written, but the write was lost
    rig.behave(drop_sets=False)
    home = alice.home
    del alice  # quit

    # A new session that re-sends only after an hour: what waits goes out at once all the same.
    again = make_person("alice", 0, home, rig.ledger, resend_after=timedelta(hours=1))
    assert again.chat.pending_counts() == {"bob": 1, "carol": 1}
    again.chat.deliver_pending()  # what the menus and the commands do after login, in the background
    for friend, text in (("bob", "to bob, unsent"), ("carol", "to carol, lost")):
        person = bob if friend == "bob" else carol
        view = update_until(person, "alice", lambda v, t=text: t in texts_of(v) and not v.problems)
        assert texts_of(view) == ["before", text] and view.problems == []
    assert settle(again.chat.deliver_pending, lambda counts: counts == {}) == {}


def test_a_write_that_failed_goes_out_at_the_next_update_without_waiting_for_resend_after(
    rig: LedgerRig, tmp_path: Path
) -> None:
    alice, bob = setup(rig, tmp_path, resend_after=timedelta(hours=1))
    first_message(alice)
    rig.behave(down=True)
    assert alice.chat.send_message("while down", "bob").error is not None
    rig.behave(down=False)
    alice.chat.get_update("bob")  # the same session: nothing was written, so nothing to wait for
    assert [m.text for m in received(bob, "alice", 2)] == ["before", "while down"]


def test_a_message_unconfirmed_for_six_resend_intervals_is_not_delivered_yet_until_it_is(
    rig: LedgerRig, tmp_path: Path
) -> None:
    clock = ManualClock()
    alice, _bob = setup(rig, tmp_path, clock=clock, resend_after=RESEND_AFTER)
    first_message(alice)
    rig.behave(drop_sets=True)
    alice.chat.send_message("lost again and again", "bob")
    clock.advance(6 * RESEND_AFTER.total_seconds() - 1)
    assert mine(alice, "bob")[-1] == ("lost again and again", "pending")
    clock.advance(1.5)  # (it was sent a microsecond after "before")
    for _ in range(2):  # lasting: every update says so, not once
        assert mine(alice, "bob")[-1] == ("lost again and again", "undelivered")
    rig.behave(drop_sets=False)
    clock.advance(RESEND_AFTER.total_seconds())
    expected = [("before", "delivered"), ("lost again and again", "delivered")]
    assert mine_once(alice, "bob", expected) == expected


def chunk_keys_of(person: Person, friend: str) -> list[str]:
    [message] = [m for m in person.chat.get_update(friend).messages if m.type == files.FILE_TYPE]
    return files.describe(message).chunk_keys


def saved_file(person: Person, friend: str, downloads: Path) -> bytes:
    """The friend's file, once every chunk reads back whole (stale reads settle)."""

    def attempt() -> bytes | None:
        messages = [m for m in person.chat.get_update(friend).messages if m.type == files.FILE_TYPE]
        if not messages:
            return None
        try:
            return person.chat.save_file(messages[-1], downloads).read_bytes()
        except IntegrityError:
            return None

    data = settle(attempt, lambda found: found is not None)
    assert data is not None
    return data


def test_a_dropped_file_chunk_is_re_sent(rig: LedgerRig, tmp_path: Path) -> None:
    clock = ManualClock()
    alice, bob = setup(rig, tmp_path, clock=clock, resend_after=RESEND_AFTER)
    first_message(alice)
    content = bytes(range(256)) * 1000  # three chunks
    (tmp_path / "data.bin").write_bytes(content)
    assert alice.chat.send_file("bob", tmp_path / "data.bin").error is None
    keys = sorted(alice.chat.own_lane("bob").chunks)  # in the outbox until a read returns them
    assert len(keys) == 3
    rig.erase(keys[1])  # the write of one chunk was lost (before this update could read it back)
    statuses = settle(lambda: [status for _text, status in mine(alice, "bob")], lambda s: s[-1] == "pending")
    assert statuses == ["delivered", "pending"]  # the file message: no ✓ while a chunk is missing
    assert rig.stored(keys[1]) is None  # not overdue yet
    clock.advance(RESEND_AFTER.total_seconds())
    alice.chat.get_update("bob")  # re-sends the chunk from the outbox
    assert rig.stored(keys[1]) is not None
    assert saved_file(bob, "alice", tmp_path / "downloads") == content
    statuses = settle(lambda: [status for _text, status in mine(alice, "bob")], lambda s: s[-1] == "delivered")
    assert statuses == ["delivered", "delivered"]
    assert alice.chat.own_lane("bob").chunks == {}
    assert set(chunk_keys_of(alice, "bob")) == set(keys)


def test_a_file_chunk_overwritten_with_garbage_is_repaired_from_the_kept_copy(rig: LedgerRig, tmp_path: Path) -> None:
    alice, bob = setup(rig, tmp_path)
    first_message(alice)
    content = b"a file worth keeping\n" * 100
    (tmp_path / "note.txt").write_bytes(content)
    alice.chat.send_file("bob", tmp_path / "note.txt")
    [key] = chunk_keys_of(alice, "bob")
    settle(lambda: alice.chat.get_update("bob"), lambda _v: alice.chat.own_lane("bob").chunks == {})
    assert alice.chat.own_lane("bob").chunks == {}  # confirmed by a read
    genuine = rig.stored(key)
    rig.plant(key, "reschat2:AAAA")
    settle(lambda: alice.chat.get_update("bob"), lambda _v: rig.stored(key) == genuine, reads=4 * CHUNK_CHECK_EVERY)
    assert rig.stored(key) == genuine
    assert saved_file(bob, "alice", tmp_path / "downloads") == content
