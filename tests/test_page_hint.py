"""The page hint: a reader with no checkpoint finds the newest page of a long lane with the reads of a
short one, and nothing at the hint's address (junk, a stale hint, a false one) hides a page.

A writer rewrites its hint (``lane.seal_hint``, at a pair-derived address) after starting every
HINT_EVERY-th page. A reader with no page number of its own reads it in its first round, and starts
the search for the newest page there, only if the page it names is there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from reschat import kem, schedule
from reschat.chat import MAX_PROBE_ROUNDS
from reschat.lane import HINT_EVERY, add_record, new_page, open_hint, seal_hint
from reschat.ledger import MemoryLedger
from reschat.page import PAGE_CAPACITY, PREFIX, Record, to_micros
from tests.conftest import Person, befriend, make_person


def pair(root: Path) -> tuple[MemoryLedger, Person, Person]:
    ledger = MemoryLedger()
    alice = make_person("alice", 0, root / "alice", ledger)
    bob = make_person("bob", 1, root / "bob", ledger)
    befriend(alice, bob)
    return ledger, alice, bob


def hint_of(writer: Person, reader: Person) -> str:
    p = writer.chat._pair(reader.name)
    return schedule.hint_address(p.address_key, writer.chat.my_fingerprint)


def grow(writer: Person, reader: Person, pages: int, *, hints: bool = True) -> None:
    """``pages`` pages of one message each in ``writer``'s lane, signed by the writer and keyed to the
    reader's card keys, written as the engine writes them (its hint after every HINT_EVERY-th page)."""
    p = writer.chat._pair(reader.name)
    link, moment = bytes(32), datetime.now(timezone.utc)
    for number in range(1, pages + 1):
        moment += timedelta(milliseconds=1)
        sealed, header, secret = new_page(
            conversation=p.conversation, writer=writer.chat.my_fingerprint, epoch=1, number=number,
            first_seq=number, link=link, readers=[reader.identity.statics.public],
            next_receive_key=kem.ReceiveKey.generate().public, created=to_micros(moment), signer=writer.chat._sign,
        )
        record = Record(type="text", seq=number, prev=link, timestamp=moment, causal=(0, 0), type_ext="",
                        body=f"page {number}".encode())
        sealed, _signed, link = add_record(sealed, header, secret, record, writer.chat._sign)
        writer.chat.ledger.set(writer.chat.lane_address(reader.name, mine=True, number=number), sealed.to_string())
        if hints:
            writer.chat._write_hint(p, 1, number)


def open_counting(reader: Person, ledger: MemoryLedger) -> tuple[list[str], list[str], list[str]]:
    """(texts shown, problem kinds, keys read) of one update of ``reader``."""
    ledger.operations.clear()
    view = reader.chat.get_update("alice")
    reads = [key for op, key in ledger.operations if op == "get"]
    return [m.text for m in view.messages], [p.kind for p in view.problems], reads


def test_the_writer_rewrites_its_hint_after_every_eighth_page_and_a_plain_send_stays_one_write(
    tmp_path: Path,
) -> None:
    ledger, alice, bob = pair(tmp_path)
    where = hint_of(alice, bob)
    writes_per_send = []
    for i in range(PAGE_CAPACITY * HINT_EVERY + 1):
        ledger.operations.clear()
        assert alice.chat.send_message(f"m{i}", "bob").error is None
        writes_per_send.append([key for op, key in ledger.operations if op == "set"])
        if i < PAGE_CAPACITY * (HINT_EVERY - 1):
            assert ledger.get(where) is None
    # The send that started page 8 wrote the page, then the hint; every other send wrote its page only.
    started_eighth = PAGE_CAPACITY * (HINT_EVERY - 1)
    assert writes_per_send[started_eighth][1:] == [where]
    assert all(len(sets) == 1 for i, sets in enumerate(writes_per_send) if i != started_eighth)
    assert not any(op == "get" for op, _key in ledger.operations)
    p = bob.chat._pair("alice")
    assert open_hint(p.address_key, p.fingerprint, ledger.get(where) or "") == (1, HINT_EVERY)


def test_a_reader_with_no_checkpoint_reads_as_much_of_a_long_lane_as_of_a_short_one(tmp_path: Path) -> None:
    reads = {}
    for pages in (2 * HINT_EVERY + 1, 12 * HINT_EVERY + 3):
        ledger, alice, bob = pair(tmp_path / str(pages))
        grow(alice, bob, pages)
        shown, problems, keys = open_counting(bob, ledger)
        assert shown[-1] == f"page {pages}" and not problems
        assert hint_of(alice, bob) in keys
        reads[pages] = len(keys)
        # Once it has a page number of its own, the reader never reads the hint again.
        _shown, _problems, again = open_counting(bob, ledger)
        assert hint_of(alice, bob) not in again
    low, high = reads.values()
    assert abs(high - low) <= 1, reads


def test_junk_at_the_hint_is_reported_and_the_newest_page_is_found_without_it(tmp_path: Path) -> None:
    ledger, alice, bob = pair(tmp_path)
    grow(alice, bob, 3 * HINT_EVERY + 2)
    ledger.set(hint_of(alice, bob), PREFIX + "AAAA")
    shown, problems, _keys = open_counting(bob, ledger)
    assert shown[-1] == f"page {3 * HINT_EVERY + 2}"
    assert "damaged" in problems


def test_a_hint_copied_from_the_other_lane_does_not_open(tmp_path: Path) -> None:
    """The hint's key and its AEAD bind the writer: bob's own hint copied over alice's is junk."""
    ledger, alice, bob = pair(tmp_path)
    grow(alice, bob, HINT_EVERY + 1)
    bobs = seal_hint(bob.chat._pair("alice").address_key, bob.chat.my_fingerprint, 1, 5)
    ledger.set(hint_of(alice, bob), bobs)
    shown, problems, _keys = open_counting(bob, ledger)
    assert shown[-1] == f"page {HINT_EVERY + 1}" and "damaged" in problems


def test_a_stale_hint_hides_no_newer_page(tmp_path: Path) -> None:
    """The ledger serves an old hint (a rollback, a lost write): the search goes on past the pages it
    names, as from any other start."""
    ledger, alice, bob = pair(tmp_path)
    grow(alice, bob, HINT_EVERY)
    old = ledger.get(hint_of(alice, bob))
    assert old is not None
    ledger.set(hint_of(alice, bob), old)
    grow(alice, bob, 6 * HINT_EVERY + 5, hints=False)  # pages 1-53: the hint still names page 8
    rounds = [0]
    get_many = ledger.get_many

    def counting(keys: Sequence[str]) -> dict[str, str | None]:
        rounds[0] += 1
        return get_many(keys)

    ledger.get_many = counting  # type: ignore[method-assign]
    shown, problems, _keys = open_counting(bob, ledger)
    assert shown[-1] == f"page {6 * HINT_EVERY + 5}" and not problems
    # The first round, the hint's, then at most MAX_PROBE_ROUNDS of the search (and the window's).
    assert rounds[0] <= 3 + MAX_PROBE_ROUNDS, rounds


def test_a_hint_naming_a_page_that_is_not_there_hides_nothing(tmp_path: Path) -> None:
    """A hint sealed with the pair's key (the friend, or the reader's own copy of the key) naming a page
    far above the lane, or another epoch: not used; the search starts at page 1 as with no hint."""
    for epoch, number in ((1, 10**6), (5, 2), (1, HINT_EVERY * 40)):
        ledger, alice, bob = pair(tmp_path / f"{epoch}-{number}")
        grow(alice, bob, 2 * HINT_EVERY + 3)
        p = alice.chat._pair("bob")
        ledger.set(hint_of(alice, bob), seal_hint(p.address_key, alice.chat.my_fingerprint, epoch, number))
        shown, problems, _keys = open_counting(bob, ledger)
        assert shown[-1] == f"page {2 * HINT_EVERY + 3}" and not problems, (epoch, number, problems)
