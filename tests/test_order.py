"""Order a friend cannot game (issue 11, item 5): dates that contradict the lane or the causal mark."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from reschat.ledger import MemoryLedger
from tests.conftest import Person, befriend, make_person
from tests.test_attacks import craft


def people(tmp_path: Path) -> tuple[MemoryLedger, Person, Person]:
    ledger = MemoryLedger()
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    return ledger, alice, bob


def shown(person: Person, friend: str) -> tuple[list[str], list[str]]:
    view = person.chat.get_update(friend)
    return [m.text for m in view.messages], [p.kind for p in view.problems]


def test_a_record_dated_before_its_predecessor_is_flagged_and_kept_in_written_order(tmp_path: Path) -> None:
    ledger, alice, bob = people(tmp_path)
    now = datetime.now(timezone.utc)
    where, value, _ = craft(alice, bob, 1, records=[("first", now, (0, 0)), ("second", now - timedelta(hours=1),
                                                                                (0, 0))])
    ledger.set(where, value)
    texts, kinds = shown(bob, "alice")
    assert texts == ["first", "second"]
    assert kinds == ["backdated"]


def test_a_reply_dated_before_the_message_it_saw_is_flagged_and_shown_after_it(tmp_path: Path) -> None:
    ledger, alice, bob = people(tmp_path)
    for text in ("q0", "q1", "q2"):
        bob.chat.send_message(text, "alice")
    asked = [m for m in bob.chat.get_update("alice").messages if m.outgoing]
    where, value, _ = craft(alice, bob, 1, records=[("yes, agreed", asked[0].time - timedelta(minutes=5), (1, 3))])
    ledger.set(where, value)
    texts, kinds = shown(bob, "alice")
    assert texts == ["q0", "q1", "q2", "yes, agreed"]
    assert kinds == ["backdated"]


def test_a_message_that_was_only_queued_is_not_flagged(tmp_path: Path) -> None:
    """alice wrote before she saw bob's message (her causal mark is older), and it reached the ledger
    late: it sorts by its own date, above bob's, and nothing is flagged."""
    ledger, alice, bob = people(tmp_path)
    bob.chat.send_message("q0", "alice")
    earlier = next(m for m in bob.chat.get_update("alice").messages if m.outgoing).time - timedelta(minutes=1)
    where, value, _ = craft(alice, bob, 1, records=[("written before q0", earlier, (0, 0))])
    ledger.set(where, value)
    texts, kinds = shown(bob, "alice")
    assert texts == ["written before q0", "q0"]
    assert kinds == []


def test_honest_replies_are_never_flagged(tmp_path: Path) -> None:
    _ledger, alice, bob = people(tmp_path)
    for i in range(5):
        bob.chat.send_message(f"b{i}", "alice")
        alice.chat.get_update("bob")
        alice.chat.send_message(f"a{i}", "bob")
        view = bob.chat.get_update("alice")
        assert [p.kind for p in view.problems] == []
    assert [m.text for m in view.messages] == [t for i in range(5) for t in (f"b{i}", f"a{i}")]
