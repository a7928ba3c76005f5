"""Stale reads are the normal case (issue 11, item 10): the real cluster answers a get within about 1 s
of a set of the same key with the previous value, now and then. Nothing a client does on such a read
may lose, duplicate or rewrite a message, or report a problem that is not there.

Each test isolates the stale read it is about, on every backend RESCHAT_TEST_LEDGER chooses: every
other read is fresh (the ``fresh_reads`` fixture), and the test makes its stale read happen, with
``behave(stale=True)`` (every read returns what its key held before its latest write: a read within
the window, drawn stale) or the rig's ``stale_window`` (the real cluster's kind of stale reads, with
chosen numbers). Then reads are fresh again, and what the people read is checked in full. The other
engine suites run with the stand-ins' ordinary stale reads throughout (see conftest).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from reschat import crypto
from reschat.ledger import Ledger
from reschat.page import PAGE_CAPACITY, SealedPage
from tests.conftest import LedgerRig, Person, befriend, make_person, settle, texts_of, update_until
from tests.standin import STALE_WINDOW_S
from tests.test_delivery import ManualClock


class RecordingLedger(Ledger):
    """Passes everything on to ``inner``, and keeps every value written, by key, in order."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        self.name = inner.name
        self.written: dict[str, list[str]] = {}

    @property
    def stale_read_window_s(self) -> float:  # type: ignore[override]
        return self.inner.stale_read_window_s

    def get(self, key: str) -> str | None:
        return self.inner.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, str | None]:
        return self.inner.get_many(keys)

    def set(self, key: str, value: str) -> None:
        self.inner.set(key, value)
        self.written.setdefault(key, []).append(value)


def kinds(problems: Sequence[object]) -> set[str]:
    return {p.kind for p in problems}  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def fresh_reads(rig: LedgerRig) -> None:
    """No stale read but the one a test makes happen."""
    rig.stale_window(0.0, 0.0)


@pytest.fixture
def pair(tmp_path: Path, rig: LedgerRig) -> tuple[Person, Person]:
    alice = make_person("alice", 0, tmp_path / "alice", rig.ledger)
    bob = make_person("bob", 1, tmp_path / "bob", rig.ledger)
    befriend(alice, bob)
    return alice, bob


# --- a writer that lost its outbox ------------------------------------------------------------------


def rewrites(written: dict[str, list[str]], places: dict[str, tuple[int, int]]) -> list[str]:
    """Every page (epoch, number) whose records were written once and then written differently.

    A page is only ever extended: each write of it keeps its header and every record written before
    (a record's sequence number is its page's first number plus its index), so a write that does not
    is a sequence number written twice with different content.
    """
    found = []
    for key, values in written.items():
        pages = [SealedPage.from_string(value) for value in values]
        for before, after in itertools.pairwise(pages):
            if after.header != before.header or after.records[: len(before.records)] != before.records:
                epoch, number = places.get(key, (0, 0))
                found.append(f"epoch {epoch} page {number}")
    return found


def test_a_lost_outbox_rebuilt_after_stale_reads_never_reuses_a_sequence_number(
    tmp_path: Path, rig: LedgerRig
) -> None:
    """alice loses her outbox right after a send, twice; every read within the real cluster's 1 s
    window of a write is stale meanwhile. Her restarts must never write an (epoch, sequence number)
    that exists, and bob must read every message once."""
    recording = RecordingLedger(rig.ledger)
    alice = make_person("alice", 0, tmp_path / "alice", recording)
    bob = make_person("bob", 1, tmp_path / "bob", rig.ledger)
    befriend(alice, bob)
    places = {alice.chat.lane_address("bob", mine=True, number=n, epoch=e): (e, n)
              for e in range(1, 9) for n in range(1, 3)}
    rig.stale_window(STALE_WINDOW_S, 1.0)  # the worst the real cluster does within its window
    sent = ["before the loss"]
    assert alice.chat.send_message(sent[0], "bob").error is None
    for loss in range(2):
        shutil.rmtree(alice.home / "lanes")  # the profile restored without its outbox
        alice = make_person("alice", 0, alice.home, recording)
        sent.append(f"after loss {loss + 1}")
        assert alice.chat.send_message(sent[-1], "bob").error is None
    rig.stale_window(0.0, 0.0)  # fresh reads again

    assert rewrites(recording.written, places) == []
    view = settle(lambda: bob.chat.load_all("alice"), lambda v: texts_of(v) == sent)
    assert texts_of(view) == sent  # each once, in order
    assert kinds(view.problems) <= {"restart"}


# --- a reader while a page fills up -------------------------------------------------------------------


def test_a_stale_read_of_a_page_just_filled_is_not_reported_as_a_rewrite(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    alice, bob = pair
    texts = [f"m{i}" for i in range(PAGE_CAPACITY + 2)]
    for text in texts:
        alice.chat.send_message(text, "bob")
    rig.behave(stale=True)  # page 1 reads back without its last record, page 2 without its newest
    for session in (bob, make_person("bob", 1, bob.home, rig.ledger)):
        view = session.chat.get_update("alice")
        shown = texts_of(view)
        assert shown == [text for text in texts if text in shown]  # only genuine messages, in order
        assert "rewritten" not in kinds(view.problems), [p.detail for p in view.problems]


def test_a_reader_never_puts_back_a_stale_copy_of_the_friends_page(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    alice, bob = pair
    texts = [f"m{i}" for i in range(PAGE_CAPACITY + 2)]
    for text in texts:
        alice.chat.send_message(text, "bob")
    page1 = alice.chat.lane_address("bob", mine=True, number=1)
    whole = rig.stored(page1)
    assert whole is not None and len(SealedPage.from_string(whole).records) == PAGE_CAPACITY
    rig.behave(stale=True)  # bob's first read: page 1 without its last record, page 2 as it began
    bob.chat.get_update("alice")
    rig.stale_window(0.0, 0.0)  # fresh reads again
    view = update_until(bob, "alice", lambda v: texts_of(v) == texts and v.problems == [])
    assert rig.stored(page1) == whole  # alice's page, untouched by her reader
    assert texts_of(view) == texts
    assert view.problems == []
    # and a reader who never read the lane before (bob on another device) reads it all
    other = make_person("bob", 1, bob.home.parent / "bob-elsewhere", rig.ledger)
    other.friends.add_friend("alice", crypto.parse_contact(alice.card))
    everything = settle(lambda: other.chat.load_all("alice"), lambda v: texts_of(v) == texts)
    assert texts_of(everything) == texts
    assert everything.problems == []


# --- the receive keys a writer keys its pages to ---------------------------------------------------


def test_a_stale_read_of_the_friends_lane_never_keys_a_page_to_a_deleted_receive_key(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    """A read that misses the friend's newest page must not take the key an older page announced: the
    friend may have deleted it already, and a page keyed to it could never be opened."""
    alice, bob = pair
    sent = ["a0"]
    alice.chat.send_message("a0", "bob")
    assert texts_of(update_until(bob, "alice", lambda v: texts_of(v) == ["a0"])) == ["a0"]
    update_until(alice, "bob", lambda v: v.problems == [])  # alice learns bob's first receive key
    # bob fills a page and starts another, which announces his next receive key ...
    bob_texts = [f"b{i}" for i in range(PAGE_CAPACITY + 1)]
    for text in bob_texts:
        bob.chat.send_message(text, "alice")
    update_until(alice, "bob", lambda v: texts_of(v, outgoing=False) == bob_texts)
    # ... which alice's next page is keyed to; bob opens it with that key and deletes the older one.
    sent += [f"a{i}" for i in range(1, PAGE_CAPACITY + 1)]
    for text in sent[1:]:
        alice.chat.send_message(text, "bob")
    update_until(bob, "alice", lambda v: texts_of(v, outgoing=False) == sent)

    rig.behave(stale=True)  # alice's next read of bob's lane does not return his newest page yet
    alice.chat.get_update("bob")
    rig.stale_window(0.0, 0.0)  # fresh reads again
    more = [f"a{i}" for i in range(len(sent), 2 * PAGE_CAPACITY + 2)]  # fills a page, starts the next
    for text in more:
        alice.chat.send_message(text, "bob")
    sent += more
    view = settle(lambda: bob.chat.load_all("alice"), lambda v: texts_of(v, outgoing=False) == sent)
    assert texts_of(view, outgoing=False) == sent
    assert "undecryptable" not in kinds(view.problems)


# --- our own pages ------------------------------------------------------------------------------------


def test_a_stale_read_of_our_page_right_after_our_write_is_not_a_rollback(tmp_path: Path, rig: LedgerRig) -> None:
    """Self-healing puts a page of ours back when the ledger lost or rolled it back; one stale read,
    right after our write, is neither."""
    clock = ManualClock()  # alice's clock stands still: each of her reads comes right after her last write
    alice = make_person("alice", 0, tmp_path / "alice", rig.ledger, clock=clock)
    bob = make_person("bob", 1, tmp_path / "bob", rig.ledger)
    befriend(alice, bob)
    for text in ("one", "two"):
        alice.chat.send_message(text, "bob")
    delivered = [("one", "delivered"), ("two", "delivered")]
    update_until(alice, "bob", lambda v: [(m.text, m.status) for m in v.messages] == delivered)
    key = alice.chat.lane_address("bob", mine=True, number=1)
    writes = rig.sets_of(key)
    rig.behave(stale=True)  # this read returns page 1 as it was before "two" was written
    view = alice.chat.get_update("bob")
    rig.stale_window(0.0, 0.0)  # fresh reads again
    # Not put back on one read (her messages may show without their ✓ while in doubt) ...
    assert "restoring" not in kinds(view.problems)
    assert texts_of(view) == ["one", "two"]
    assert rig.sets_of(key) == writes
    # ... and the next read, fresh, finds the page whole: nothing to put back, nothing to report.
    view = alice.chat.get_update("bob")
    assert [(m.text, m.status) for m in view.messages] == delivered
    assert view.problems == []
    assert rig.sets_of(key) == writes


def test_two_stale_reads_of_our_page_right_after_our_write_are_not_a_rollback(
    tmp_path: Path, rig: LedgerRig
) -> None:
    clock = ManualClock()  # alice's clock stands still: each of her reads comes right after her last write
    alice = make_person("alice", 0, tmp_path / "alice", rig.ledger, clock=clock)
    bob = make_person("bob", 1, tmp_path / "bob", rig.ledger)
    befriend(alice, bob)
    for text in ("one", "two"):
        alice.chat.send_message(text, "bob")
    delivered = [("one", "delivered"), ("two", "delivered")]
    update_until(alice, "bob", lambda v: [(m.text, m.status) for m in v.messages] == delivered)
    key = alice.chat.lane_address("bob", mine=True, number=1)
    writes = rig.sets_of(key)
    rig.behave(stale=True)  # both reads return page 1 as it was before "two" was written
    views = [alice.chat.get_update("bob") for _ in range(2)]
    rig.stale_window(0.0, 0.0)  # fresh reads again
    assert [kinds(v.problems) for v in views] == [set(), set()]
    assert rig.sets_of(key) == writes
    view = alice.chat.get_update("bob")
    assert [(m.text, m.status) for m in view.messages] == delivered
    assert view.problems == []


def test_a_stale_read_of_our_own_pages_is_not_a_lasting_loss(pair: tuple[Person, Person], rig: LedgerRig) -> None:
    """bob's new session opens the chat while the ledger still returns his page 1 without its last
    message: once reads are fresh again, that session shows all his messages, delivered, and his pages
    on the ledger are whole."""
    _alice, bob = pair
    sent = [f"b{i}" for i in range(PAGE_CAPACITY + 1)]  # his page 1 full, page 2 begun
    for text in sent:
        bob.chat.send_message(text, "alice")
    update_until(bob, "alice", lambda v: [m.status for m in v.messages] == ["delivered"] * len(sent))
    pages = {n: rig.stored(bob.chat.lane_address("alice", mine=True, number=n)) for n in (1, 2)}

    rig.behave(stale=True)
    later = make_person("bob", 1, bob.home, rig.ledger)
    later.chat.get_update("alice")
    rig.stale_window(0.0, 0.0)  # fresh reads again
    delivered = [(text, "delivered") for text in sent]
    view = update_until(later, "alice", lambda v: [(m.text, m.status) for m in v.messages] == delivered
                        and v.problems == [])
    assert [(m.text, m.status) for m in view.messages] == delivered
    assert view.problems == []
    assert {n: rig.stored(bob.chat.lane_address("alice", mine=True, number=n)) for n in (1, 2)} == pages
