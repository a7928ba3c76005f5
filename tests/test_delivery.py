"""Delivery confirmation on the stand-in ResilientDB tool.

A sent message is "pending" until a ledger read returns it, then "delivered"; one still unconfirmed
after ``resend_after`` is written again (same page, same sequence number, never shown twice); pending
messages wait in the outbox, as ciphertext only, across a quit and restart. Every row of the contract's
failure table is driven through the chat service."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from reschat import crypto
from reschat.chat import ChatMessage, page_key
from reschat.ledger import MemoryLedger
from reschat.page import PAGE_CAPACITY
from tests.conftest import Person, befriend, make_person


class ManualClock:
    """A UTC clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


RESEND_AFTER = timedelta(seconds=10)


def lane_key(sender: Person, receiver: Person, number: int) -> str:
    conversation = crypto.conversation_id(sender.identity.public_key, receiver.identity.public_key)
    return page_key(conversation, crypto.fingerprint_bytes(sender.identity.public_key).hex(), number)


def mine(person: Person, friend: str) -> list[tuple[str, str | None]]:
    return [(m.text, m.status) for m in person.chat.get_update(friend).messages if m.outgoing]


def received(person: Person, friend: str) -> list[ChatMessage]:
    view = person.chat.load_all(friend)
    assert view.problems == []
    return [m for m in view.messages if not m.outgoing]


# --- the engine's confirmation rule, where it needs many messages -----------------------------------


class DroppingLedger(MemoryLedger):
    """A memory ledger that, like the stand-in's ``drop_sets``, acknowledges writes it then loses.

    The engine's regression test below needs twenty-one sends; this keeps it fast.
    """

    def __init__(self) -> None:
        super().__init__()
        self.drop_sets = False

    def set(self, key: str, value: str) -> None:
        if not self.drop_sets:
            super().set(key, value)


def test_a_lost_write_of_a_full_page_is_not_confirmed_by_the_next_page(tmp_path: Path) -> None:
    """The last message of page 1 is lost, the first of page 2 arrives: page 1 must stay pending."""
    clock = ManualClock()
    ledger = DroppingLedger()
    alice = make_person("alice", 0, tmp_path / "alice", ledger, clock=clock, resend_after=RESEND_AFTER)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    for i in range(PAGE_CAPACITY - 1):
        alice.chat.send_message(f"m{i}", "bob")
    ledger.drop_sets = True
    alice.chat.send_message(f"m{PAGE_CAPACITY - 1}", "bob")
    ledger.drop_sets = False
    alice.chat.send_message("next page", "bob")
    assert ledger.get(lane_key(alice, bob, 2)) is not None

    statuses = dict(mine(alice, "bob"))
    assert statuses[f"m{PAGE_CAPACITY - 1}"] == "pending", "reported delivered though no read returned it"
    assert statuses["m0"] == "delivered"
    clock.advance(RESEND_AFTER.total_seconds())
    alice.chat.get_update("bob")  # re-sends page 1 from the outbox
    texts = [m.text for m in received(bob, "alice")]
    assert texts == [f"m{i}" for i in range(PAGE_CAPACITY)] + ["next page"]
    assert set(dict(mine(alice, "bob")).values()) == {"delivered"}
