"""A record verified once is not RSA-verified again in a later session (lane.open_page's ``kept``), and
every record that is not exactly the one kept still is.

The shortcut: a page whose newest record has the digest that the reader's sealed key store kept for
that sequence number (kept only after its signature verified) needs no new verification, since the
digest is SHA-256 over every byte the signature covers. These tests count the real verifications
and attack the shortcut with a record at a kept place that differs from the one kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from reschat import crypto
from reschat.lane import PageKeys, add_record, open_header
from reschat.ledger import MemoryLedger
from reschat.page import Record, SealedPage, open_record
from tests.conftest import Person, make_person, memory_pair


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the RSA-PSS verifications made (the real ones, through reschat.crypto)."""
    count = [0]
    original = crypto.verify

    def counting(*args: object, **kwargs: object) -> bool:
        count[0] += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(crypto, "verify", counting)
    yield count


def new_session(person: Person, ledger: MemoryLedger) -> Person:
    """The same profile opened again: nothing of the last session in memory."""
    return make_person(person.name, 1 if person.name == "bob" else 0, person.home, ledger)


def texts(view: object) -> list[str]:
    return [m.text for m in view.messages]  # type: ignore[attr-defined]


def test_a_page_read_before_costs_no_verification_in_a_new_session(
    tmp_path: Path, verifications: list[int]
) -> None:
    ledger, alice, bob = memory_pair(tmp_path)
    for text in ("one", "two", "three"):
        alice.chat.send_message(text, "bob")
    bob.chat.send_message("hello", "alice")
    assert texts(bob.chat.get_update("alice")) == ["one", "two", "three", "hello"]
    verifications[0] = 0
    view = new_session(bob, ledger).chat.get_update("alice")
    assert texts(view) == ["one", "two", "three", "hello"] and not view.problems
    # alice's page: its newest record is the one kept; bob's own: his newest record, which he signed.
    assert verifications[0] == 0


def test_a_record_not_kept_yet_is_verified(tmp_path: Path, verifications: list[int]) -> None:
    ledger, alice, bob = memory_pair(tmp_path)
    alice.chat.send_message("one", "bob")
    bob.chat.get_update("alice")
    bob.chat.send_message("hello", "alice")
    alice.chat.send_message("two", "bob")  # the same page grows past what bob kept
    verifications[0] = 0
    view = new_session(bob, ledger).chat.get_update("alice")
    assert texts(view) == ["one", "hello", "two"] and not view.problems
    assert verifications[0] == 1  # alice's new newest record; bob's own newest is the one he signed


def test_a_different_record_at_a_kept_place_is_verified_and_reported_forged(
    tmp_path: Path, verifications: list[int]
) -> None:
    """Someone who holds the page's keys (not alice's signing key) replaces alice's newest record, at the
    sequence number bob kept, with his own words. Its digest is not the one kept, so its signature is
    checked and fails: ``forged``. Skipping the check whenever a digest is kept for that sequence number
    (not comparing it) would leave only the ``rewritten`` of check_lane: this test fails then."""
    ledger, alice, bob = memory_pair(tmp_path)
    for text in ("one", "two"):
        alice.chat.send_message(text, "bob")
    bob.chat.get_update("alice")
    where = alice.chat.lane_address("bob", mine=True, number=1)
    genuine = SealedPage.from_string(ledger.get(where))
    keys = PageKeys.from_text(bob.chat.conversation_state("alice").theirs.secrets["1:1"])
    header = open_header(genuine, keys)
    opened = new_session(bob, ledger).chat.get_update("alice")  # the genuine record #2, to copy its fields
    last = next(m for m in opened.messages if m.text == "two")
    first_only = SealedPage(slots=genuine.slots, header=genuine.header, records=genuine.records[:1], tag=genuine.tag)
    prev = bytes.fromhex(bob.chat.conversation_state("alice").theirs.digests["1:1"])
    forged_record = Record(type="text", seq=2, prev=prev, timestamp=last.time, causal=(0, 0), type_ext="",
                           body=b"I owe bob 5000 EUR")
    mallory = make_person("mallory", 2, tmp_path / "mallory", ledger)
    forged, _signed, _digest = add_record(first_only, header, keys, forged_record, mallory.chat._sign)
    ledger.set(where, forged.to_string())
    verifications[0] = 0
    view = new_session(bob, ledger).chat.get_update("alice")
    assert "5000 EUR" not in repr(view.messages)
    assert "forged" in [p.kind for p in view.problems]
    assert verifications[0] >= 1


def test_the_same_record_with_another_signature_is_still_the_verified_record(tmp_path: Path) -> None:
    """The kept digest covers every signed byte, not the signature itself: a copy of alice's record
    whose signature slot was replaced is the record bob verified, byte for byte in all that it says,
    and shows as it did (as it already did within one session, whose memory of verified digests works
    the same way). Nothing it shows was not signed by alice."""
    ledger, alice, bob = memory_pair(tmp_path)
    alice.chat.send_message("one", "bob")
    bob.chat.get_update("alice")
    where = alice.chat.lane_address("bob", mine=True, number=1)
    genuine = SealedPage.from_string(ledger.get(where))
    keys = PageKeys.from_text(bob.chat.conversation_state("alice").theirs.secrets["1:1"])
    header = open_header(genuine, keys)
    record = open_record(genuine.records[0], keys.message_key(0), header.digest, 0)
    empty = SealedPage(slots=genuine.slots, header=genuine.header, records=[], tag=genuine.tag)
    mallory = make_person("mallory", 2, tmp_path / "mallory", ledger)
    resigned, _signed, _digest = add_record(empty, header, keys, replace(record, signature=b""), mallory.chat._sign)
    ledger.set(where, resigned.to_string())
    view = new_session(bob, ledger).chat.get_update("alice")
    assert texts(view) == ["one"] and not view.problems

