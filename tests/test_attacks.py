"""Protocol 2 attacked from outside: the observer, the ledger writer, the malicious friend, the thief of
a profile and the holder of long-term keys.

One test per attack. An attack the code resists is a plain test that asserts the resistance (its
docstring names the line whose removal makes it fail). An attack that works is written as the secure
behaviour and marked ``xfail(strict=True, reason="ATTACK WORKS: ...")``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reschat import crypto, kem, lane
from reschat.errors import PageFormatError
from reschat.keystore import read_sealed, write_sealed
from reschat.lane import add_record, find_page_secret, new_page, open_header
from reschat.ledger import MemoryLedger
from reschat.page import GENESIS_HASH, PAGE_CAPACITY, PREFIX, Record, SealedPage, to_micros
from tests.conftest import Person, befriend, make_person

# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def pair(tmp_path: Path, ledger: MemoryLedger) -> tuple[Person, Person]:
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    return alice, bob


def address(writer: Person, reader: Person, number: int, epoch: int = 1) -> str:
    """The private address of page ``number`` of ``writer``'s lane to ``reader`` (both can compute it)."""
    return writer.chat.lane_address(reader.name, mine=True, number=number, epoch=epoch)


def kinds(problems: Sequence[object]) -> list[str]:
    return [p.kind for p in problems]  # type: ignore[attr-defined]


def texts(view: object) -> list[str]:
    return [m.text for m in view.messages]  # type: ignore[attr-defined]


def craft(
    writer: Person, reader: Person, number: int, *, epoch: int = 1, first_seq: int = 1,
    link: bytes = GENESIS_HASH, readers: Sequence[kem.ReceivePublic] | None = None,
    records: Sequence[tuple[str, datetime, tuple[int, int]]] = (), next_key: kem.ReceivePublic | None = None,
) -> tuple[str, str, bytes]:
    """A page of ``writer``'s lane to ``reader``, built and signed with the writer's own keys.

    Returns (address, value, page secret). ``readers`` defaults to the reader's card keys.
    """
    pair = writer.chat._pair(reader.name)
    sealed, header, secret = new_page(
        conversation=pair.conversation, writer=writer.chat.my_fingerprint, epoch=epoch, number=number,
        first_seq=first_seq, link=link, readers=list(readers or [reader.identity.statics.public]),
        next_receive_key=next_key or kem.ReceiveKey.generate().public,
        created=to_micros(datetime.now(timezone.utc)), signer=writer.chat._sign,
    )
    previous = link
    for index, (text, when, causal) in enumerate(records):
        record = Record(type="text", seq=first_seq + index, prev=previous, timestamp=when, causal=causal,
                        type_ext="", body=text.encode())
        sealed, _signed, previous = add_record(sealed, header, secret, record, writer.chat._sign)
    return address(writer, reader, number, epoch), sealed.to_string(), secret


@pytest.fixture
def decapsulations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the hybrid decapsulations a reader makes."""
    count = [0]
    original = kem.decapsulate

    def counting(*args: object, **kwargs: object) -> bytes:
        count[0] += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lane.kem, "decapsulate", counting)
    yield count


def rounds(ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count ``get_many`` calls: one call is one round of concurrent reads."""
    count = [0]
    original = ledger.get_many

    def counting(keys: Sequence[str]) -> dict[str, str | None]:
        count[0] += 1
        return original(keys)

    monkeypatch.setattr(ledger, "get_many", counting)
    return count


def fill(person: Person, friend: str, count: int, prefix: str = "m") -> list[str]:
    sent = [f"{prefix}{i}" for i in range(count)]
    for text in sent:
        assert person.chat.send_message(text, friend).error is None
    return sent


def receive_key_of_page(value: str, holder: kem.ReceiveKey) -> bool:
    """True when ``holder`` alone opens the page ``value``."""
    return find_page_secret(SealedPage.from_string(value), [(0, holder)]) is not None


# --- key and nonce reuse ---------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="ATTACK WORKS: a profile restored from a backup taken inside the current "
                   "page re-seals record 2 under the same message key and nonce, and overwrites the original")
def test_a_restored_backup_never_reseals_a_record_index_of_its_current_page(
    tmp_path: Path, pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """Issue 10 guarantee 5: a restored profile restarts its lane, and reuses no sequence number.

    alice backs up her profile after "zero", sends "original" (same page), then restores the backup and
    reads before she sends again. The ahead check (chat._read_own) only looks at page+1 and epoch+1,
    so the longer copy of her *current* page goes unnoticed: record 2 is sealed a second time under
    the same message key and the fixed nonce (page._NONCE), and the ledger copy of "original" is gone.
    """
    alice, bob = pair
    alice.chat.send_message("zero", "bob")
    alice.chat.get_update("bob")
    shutil.copytree(alice.home / "lanes", tmp_path / "restored" / "lanes")
    alice.chat.send_message("original", "bob")
    before = SealedPage.from_string(ledger.get(address(alice, bob, 1)) or "")
    assert texts(bob.chat.get_update("alice")) == ["zero", "original"]

    restored = make_person("alice", 0, tmp_path / "restored", ledger)
    restored.friends.add_friend("bob", crypto.parse_contact(bob.card))
    restored.chat.get_update("bob")  # a read first: the profile could see that it is behind
    restored.chat.send_message("after restore", "bob")

    after = SealedPage.from_string(ledger.get(address(alice, bob, 1)) or "")
    assert after.records[: len(before.records)] == before.records, "a record index was sealed twice"
    assert restored.chat.own_lane("bob").epoch == 2


# --- the ledger writer against the KEM ratchet -------------------------------------------------------


def _bob_moves_past_his_first_key(alice: Person, bob: Person) -> None:
    """alice and bob talk until alice keys a page to bob's second receive key and bob deleted his first."""
    fill(alice, "bob", PAGE_CAPACITY)  # alice's page 1, keyed to bob's card keys
    bob.chat.get_update("alice")  # bob consumed a static-keyed page: his page 1 announces K1
    alice.chat.get_update("bob")  # alice learns K1 (and publishes her own key page 2)
    fill(alice, "bob", PAGE_CAPACITY, "n")  # fills alice's page 2 and opens page 3 keyed to K1
    bob.chat.get_update("alice")
    fill(bob, "alice", PAGE_CAPACITY + 1, "b")  # bob's page 2 (or later) announces K2
    alice.chat.get_update("bob")
    fill(alice, "bob", PAGE_CAPACITY, "o")  # alice's next page is keyed to K2
    bob.chat.get_update("alice")  # bob opened a K2 page: K1 is deleted


@pytest.mark.xfail(strict=True, reason="ATTACK WORKS: junk over bob's newest page makes alice key her next pages "
                   "to an older receive key that bob already deleted; bob can never open them")
def test_a_writer_cannot_roll_back_the_receive_key_a_sender_keys_to(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """The writer sees every key, so it can overwrite bob's newest page with junk. alice's top falls to
    bob's page below, and chat._remember takes that page's ``next_receive_key`` with no check that it
    is older than ``receive_key_at``. Her next page is keyed to a key bob deleted (keystore rule
    "receive keys the friend has moved past are deleted"). A thief holding bob's state from before K2
    could read it too: post-compromise security is undone by one write.
    """
    alice, bob = pair
    _bob_moves_past_his_first_key(alice, bob)
    state = alice.chat.conversation_state("bob").theirs
    bob_top = int(state.receive_key_at.split(":")[1])
    announced = state.receive_key
    ledger.set(address(bob, alice, bob_top), PREFIX + "AAAA")  # the writer: one junk value over a seen key

    alice.chat.get_update("bob")
    assert alice.chat.conversation_state("bob").theirs.receive_key == announced
    sent = fill(alice, "bob", PAGE_CAPACITY + 1, "after")
    view = bob.chat.get_update("alice")
    assert "undecryptable" not in kinds(view.problems)
    assert texts(view)[-1] == sent[-1]


@pytest.mark.xfail(strict=True, reason="ATTACK WORKS: after a writer overwrites bob's key-only page, alice keys every "
                   "later page to bob's card keys: the holder of bob's long-term keys reads them all")
def test_a_writer_cannot_keep_a_conversation_on_the_card_keys(pair: tuple[Person, Person], ledger: MemoryLedger) -> None:
    """Forward secrecy rests on bob's key-only page (chat._publish_receive_key). It is written once: its
    ``last_seq`` is bob's old seq, so ``OwnLane.unconfirmed`` never lists it and it is never re-sent,
    and bob reads his current page from his local copy, so he never notices it is gone. The writer
    overwrites it (it sees every new key) and alice goes on with bob's static keys (chat._readers).
    """
    alice, bob = pair
    fill(alice, "bob", PAGE_CAPACITY)
    bob.chat.get_update("alice")  # bob publishes K1 on his page 1
    key_page = address(bob, alice, 1)
    assert ledger.get(key_page) is not None
    ledger.set(key_page, PREFIX + "AAAA")  # the writer
    for _ in range(3):  # bob keeps reading (and would re-send anything unconfirmed)
        bob.chat.get_update("alice")
    bob.chat.resend_after = timedelta(0)
    bob.chat.get_update("alice")
    alice.chat.get_update("bob")
    fill(alice, "bob", PAGE_CAPACITY, "later")  # alice's page 2
    newest = max(n for n in range(1, 6) if ledger.get(address(alice, bob, n)) is not None)
    value = ledger.get(address(alice, bob, newest))
    assert value is not None
    assert not receive_key_of_page(value, bob.identity.statics), "bob's card keys alone open alice's new page"


# --- the malicious friend ------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="ATTACK WORKS: any value, even junk, at bob's own next page address makes bob "
                   "restart his lane; the friend can force a new epoch after every send")
def test_a_friend_cannot_force_endless_restarts_of_my_lane(pair: tuple[Person, Person], ledger: MemoryLedger) -> None:
    """The friend knows the pair's address key, so it can compute bob's own page addresses. chat._read_own
    treats any non-None value at (epoch, page + 1) or (epoch + 1, 1) as "another copy of this profile
    wrote here", without opening it, and sets ``restart_needed``.
    """
    alice, bob = pair
    bob.chat.send_message("b0", "alice")
    for i in range(3):
        own = bob.chat.own_lane("alice")
        ledger.set(alice.chat.lane_address("bob", mine=False, number=own.page + 1, epoch=own.epoch), PREFIX + "AAAA")
        view = bob.chat.get_update("alice")
        bob.chat.send_message(f"b{i + 1}", "alice")
        assert "restart" not in kinds(view.problems)
    assert bob.chat.own_lane("alice").epoch == 1


@pytest.mark.xfail(strict=True, reason="ATTACK WORKS: junk at bob's own epoch probes makes a restart skip epochs, "
                   "one sequential round per eight")
def test_junk_at_my_epoch_probes_does_not_inflate_my_restart(
    pair: tuple[Person, Person], ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chat._start_lane counts any value at page 1 of an epoch as "written by this identity"."""
    alice, bob = pair
    bob.chat.send_message("b0", "alice")
    for epoch in range(2, 41):
        ledger.set(alice.chat.lane_address("bob", mine=False, number=1, epoch=epoch), PREFIX + "AAAA")
    shutil.rmtree(bob.home / "lanes")  # bob lost his state: an honest restart
    again = make_person("bob", 1, bob.home, ledger)
    count = rounds(ledger, monkeypatch)
    again.chat.send_message("after", "alice")
    assert again.chat.own_lane("alice").epoch == 2
    assert count[0] <= 2


@pytest.mark.xfail(strict=True, reason="ATTACK WORKS: every friend page keyed to an old key makes the reader "
                   "publish one more receive key; none is ever deleted while the friend does not read")
def test_a_friend_who_never_reads_does_not_grow_my_key_store(pair: tuple[Person, Person]) -> None:
    """chat._remember publishes a fresh key for every new friend page keyed to the card keys or to an older
    key, and deletes keys only below the newest one a friend page used. An honest friend who sends and
    never reads (or a hostile one that writes empty pages) grows the reader's ``receive_keys`` and
    lane without bound, and every such page then costs one decapsulation per kept key.
    """
    alice, bob = pair
    for page in range(6):
        fill(alice, "bob", PAGE_CAPACITY, f"p{page}-")  # alice never calls get_update
        bob.chat.get_update("alice")
    state = bob.chat.conversation_state("alice")
    assert len(state.receive_keys) <= 2, f"{len(state.receive_keys)} receive keys kept"
    assert bob.chat.own_lane("alice").page <= 2, f"bob wrote {bob.chat.own_lane('alice').page} key-only pages"
