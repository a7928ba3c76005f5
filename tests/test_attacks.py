"""Protocol 2 attacked from outside: the observer, the ledger writer, the malicious friend, the thief of
a profile and the holder of long-term keys.

One test per attack. An attack the code resists is a plain test that asserts the resistance (its
docstring names the line whose removal makes it fail). An attack that works is written as the secure
behaviour and marked ``xfail(strict=True, reason="ATTACK WORKS: ...")``.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reschat import crypto, kem, lane
from reschat.keystore import read_sealed, write_sealed
from reschat.lane import add_record, find_page_secret, new_page
from reschat.ledger import MemoryLedger
from reschat.page import GENESIS_HASH, PAGE_CAPACITY, PREFIX, Record, SealedPage, to_micros
from tests.conftest import Person, befriend, make_person, settle

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


def test_a_writer_cannot_keep_a_conversation_on_the_card_keys(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
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


def test_a_ledger_writer_changing_a_record_of_my_current_page_does_not_restart_my_lane(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """The writer tag covers a page's slots and header, not its records: a ledger writer flips one byte of
    the last record of bob's current page (an address it saw written). That is no other copy of bob
    writing (its records do not verify under his signature): no restart, and his next message is read.
    Fails when chat._behind takes any different record bytes under a valid tag for another copy's."""
    alice, bob = pair
    bob.chat.send_message("b0", "alice")
    alice.chat.get_update("bob")
    own = bob.chat.own_lane("alice")
    address = alice.chat.lane_address("bob", mine=False, number=own.page, epoch=own.epoch)
    sealed = SealedPage.from_string(ledger.get(address) or "")
    last = bytearray(sealed.records[-1])
    last[-1] ^= 1
    ledger.set(address, SealedPage(slots=sealed.slots, header=sealed.header,
                                   records=[*sealed.records[:-1], bytes(last)], tag=sealed.tag).to_string())
    bob.chat.get_update("alice")
    bob.chat.send_message("b1", "alice")
    assert bob.chat.own_lane("alice").epoch == own.epoch
    view = settle(lambda: alice.chat.get_update("bob"), lambda v: "b1" in [m.text for m in v.messages])
    assert "restart" not in kinds(view.problems)


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


def test_a_friend_cannot_make_one_update_decapsulate_without_bound(
    pair: tuple[Person, Person], ledger: MemoryLedger, decapsulations: list[int]
) -> None:
    """A pair page has one reader, yet page.SealedPage.from_bytes takes up to MAX_SLOTS = 32 slots and
    lane.find_page_secret tries every slot with every candidate key (chat._candidates: all receive keys
    plus the card keys). The friend writes such pages at every address a first open probes.
    """
    alice, bob = pair
    alice.chat.send_message("hello", "bob")
    strangers = [kem.ReceiveKey.generate().public for _ in range(32)]
    probed = {2, 3, *(1 + step for step in (1, 2, 4, 8, 16, 32, 64, 128, 256))}
    for number in sorted(probed):
        where, value, _secret = craft(alice, bob, number, readers=strangers)
        ledger.set(where, value)
    for epoch in range(2, 9):
        where, value, _secret = craft(alice, bob, 1, epoch=epoch, readers=strangers)
        ledger.set(where, value)
    view = bob.chat.get_update("alice")
    assert texts(view) == ["hello"]
    assert decapsulations[0] <= 64, f"{decapsulations[0]} hybrid decapsulations in one update"


def test_the_gallop_is_bounded_per_update(
    pair: tuple[Person, Person], ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chat._discover_top loops ``while True`` and moves ``top`` by at most 256 per round (issue 10: probing
    is bounded per open). Pages 2 and 3, then 30 signed empty pages 256 apart cost the reader 30 rounds
    of reads (the "next page absent" stop only looks at top + 1); so do 30 restarts for
    chat._follow_restarts."""
    alice, bob = pair
    alice.chat.send_message("hello", "bob")
    for number in [2, 3, *(3 + 256 * k for k in range(1, 31))]:
        where, value, _secret = craft(alice, bob, number, first_seq=2)
        ledger.set(where, value)
    count = rounds(ledger, monkeypatch)
    bob.chat.get_update("alice")
    assert count[0] <= 6, f"{count[0]} sequential rounds of reads in one update"


def test_a_friend_cannot_backdate_a_message_below_an_earlier_one(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """alice signs record 2 of her lane dated an hour before record 1. Nothing compares a record's
    timestamp with its predecessor's (lane.open_page, lane.check_lane), so the chat sorts it first."""
    alice, bob = pair
    now = datetime.now(timezone.utc)
    where, value, _secret = craft(alice, bob, 1, records=[
        ("I never said that", now, (0, 0)), ("said first, honest", now - timedelta(hours=1), (0, 0)),
    ])
    ledger.set(where, value)
    view = bob.chat.get_update("alice")
    assert texts(view) == ["I never said that"] or view.problems, texts(view)


def test_a_friend_cannot_slip_a_reply_above_the_message_it_answers(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """The causal field (epoch, seq of the reader's lane seen) is written but never checked by a reader."""
    alice, bob = pair
    fill(bob, "alice", 3, "question ")
    asked = [m for m in bob.chat.get_update("alice").messages if m.outgoing]
    where, value, _secret = craft(alice, bob, 1, records=[
        ("yes, agreed", asked[0].time - timedelta(minutes=5), (1, 3)),
    ])
    ledger.set(where, value)
    view = bob.chat.get_update("alice")
    order = texts(view)
    assert order.index("yes, agreed") > order.index("question 2") or view.problems, order


# --- attacks the code resists ----------------------------------------------------------------------


def test_honest_use_never_seals_two_plaintexts_under_one_key(
    tmp_path: Path, pair: tuple[Person, Person], ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """page.seal uses a fixed nonce. Over sends, re-sends, key-only pages and a lost-state restart, every
    value ever written at an address extends the one before: slots, header and every record already
    written are byte-identical. Fails if lane.add_record re-sealed the header or a record, or if
    outbox re-sends rebuilt a page instead of re-writing its stored bytes (chat._confirm)."""
    alice, bob = pair
    history: dict[str, list[str]] = {}
    original = ledger.set

    def recording(key: str, value: str) -> None:
        history.setdefault(key, []).append(value)
        original(key, value)

    monkeypatch.setattr(ledger, "set", recording)
    alice.chat.resend_after = timedelta(0)
    for i in range(PAGE_CAPACITY + 3):
        alice.chat.send_message(f"a{i}", "bob")
        if i % 4 == 0:
            bob.chat.get_update("alice")
            bob.chat.send_message(f"b{i}", "alice")
            alice.chat.get_update("bob")
    shutil.rmtree(bob.home / "lanes")
    again = make_person("bob", 1, bob.home, ledger)
    again.chat.send_message("after restart", "alice")
    alice.chat.get_update("bob")
    for key, values in history.items():
        if not values[0].startswith(PREFIX):
            continue
        pages = [SealedPage.from_string(v) for v in values]
        for older, newer in itertools.pairwise(pages):
            assert (newer.slots, newer.header) == (older.slots, older.header), f"{key}: header re-sealed"
            assert newer.records[: len(older.records)] == older.records, f"{key}: a record re-sealed"


def test_a_page_with_more_slots_than_allowed_costs_no_decapsulation(
    pair: tuple[Person, Person], ledger: MemoryLedger, decapsulations: list[int]
) -> None:
    """A slot count over MAX_SLOTS is refused while parsing (page.SealedPage.from_bytes: ``if not 1 <=
    count <= MAX_SLOTS``); without it a page could carry 255 slots."""
    alice, bob = pair
    alice.chat.send_message("hello", "bob")
    strangers = [kem.ReceiveKey.generate().public for _ in range(40)]
    pair_ = alice.chat._pair("bob")
    sealed, _header, _secret = new_page(
        conversation=pair_.conversation, writer=alice.chat.my_fingerprint, epoch=1, number=2, first_seq=2,
        link=GENESIS_HASH, readers=strangers, next_receive_key=kem.ReceiveKey.generate().public,
        created=to_micros(datetime.now(timezone.utc)), signer=alice.chat._sign,
    )
    raw = bytes([2, len(sealed.slots)]) + b"".join(sealed.slots) + len(sealed.header).to_bytes(4, "big") + \
        sealed.header + bytes([0])
    import base64

    ledger.set(address(alice, bob, 2), PREFIX + base64.b64encode(raw).decode())
    before = decapsulations[0]
    view = bob.chat.get_update("alice")
    assert texts(view) == ["hello"]
    assert decapsulations[0] - before <= 1  # page 1 only
    assert "damaged" in kinds(view.problems)


def test_a_writer_cannot_replay_an_old_epoch_as_the_new_one(
    tmp_path: Path, pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """alice restarts (lost state); before bob reads the new epoch, the writer copies alice's epoch-1
    page 1 (keyed to bob's card keys, so it opens) over her epoch-2 page 1. lane.open_page's check
    ``(header.epoch, header.number) != (epoch, number)`` refuses it; without it, bob would show the old
    messages again as epoch 2 (the page opens: it is keyed to bob's card keys)."""
    alice, bob = pair
    fill(alice, "bob", 3)
    assert texts(bob.chat.get_update("alice")) == ["m0", "m1", "m2"]
    shutil.rmtree(alice.home / "lanes")
    again = make_person("alice", 0, alice.home, ledger)
    again.chat.send_message("after", "bob")
    old = ledger.get(address(alice, bob, 1, epoch=1))
    assert old is not None
    ledger.set(address(alice, bob, 1, epoch=2), old)  # the writer: both keys were seen
    fresh = make_person("bob", 1, tmp_path / "fresh-bob", ledger)
    fresh.friends.add_friend("alice", crypto.parse_contact(alice.card))
    for reader in (bob, fresh):
        view = reader.chat.load_all("alice")
        assert [m.text for m in view.messages if m.epoch == 2] == []
        assert texts(view) == ["m0", "m1", "m2"]


def test_a_writer_cannot_silently_hide_a_friends_restart(
    tmp_path: Path, pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """chat._follow_restarts follows a restart only when page 1 of the next epoch verifies, and the value
    read there is never reported: the loop that reports values above the top (chat._load, "A value
    above the newest verified page ... is said") only looks at the current epoch. The writer sees the
    new key appear when alice restarts, and overwrites it once (after alice's read confirmed it)."""
    alice, bob = pair
    fill(alice, "bob", 3)
    assert texts(bob.chat.get_update("alice")) == ["m0", "m1", "m2"]
    shutil.rmtree(alice.home / "lanes")
    again = make_person("alice", 0, alice.home, ledger)
    again.chat.send_message("after", "bob")
    fill(again, "bob", PAGE_CAPACITY, "later")  # alice's epoch 2 goes on to page 2
    again.chat.get_update("bob")  # confirmed: alice will never re-send page 1 of epoch 2
    ledger.set(address(alice, bob, 1, epoch=2), PREFIX + "AAAA")  # the writer
    fresh = make_person("bob", 1, tmp_path / "fresh-bob", ledger)
    fresh.friends.add_friend("alice", crypto.parse_contact(alice.card))
    for reader in (bob, fresh):
        view = reader.chat.get_update("alice")
        assert "later19" in texts(view) or view.problems, f"{texts(view)}, no problem shown"


def test_a_friend_announcing_an_unusable_receive_key_cannot_break_my_sends(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """alice signs a page whose announced key is a low-order X25519 point. kem.ReceivePublic.keys refuses
    it on import and chat._readers falls back to her card keys (its ``except (ValueError,
    kem.KemError)``); without that, every send of bob's would raise."""
    alice, bob = pair
    genuine = kem.ReceiveKey.generate().public
    bad = kem.ReceivePublic(x25519=bytes(32), mlkem=genuine.mlkem)
    where, value, _secret = craft(alice, bob, 1, records=[("hi", datetime.now(timezone.utc), (0, 0))],
                                  next_key=bad)
    ledger.set(where, value)
    assert texts(bob.chat.get_update("alice")) == ["hi"]
    assert bob.chat.send_message("still works", "alice").error is None
    assert [m.text for m in alice.chat.get_update("bob").messages if not m.outgoing] == ["still works"]


def test_a_friend_cannot_put_words_in_my_mouth_in_my_own_lane(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """alice can compute bob's own page addresses. She overwrites his confirmed page 1 with a page she
    signed, keyed to bob's card keys, that names bob as its writer. chat._open opens our own pages only
    with the page secrets we kept (``if stored`` and ``elif mine: raise _Unopenable``), and lane.open_page
    checks them with our own key: three layers; the test fails when all three are removed."""
    alice, bob = pair
    fill(bob, "alice", PAGE_CAPACITY + 1, "b")
    bob.chat.get_update("alice")  # page 1 confirmed and pruned from the outbox
    pair_ = alice.chat._pair("bob")
    sealed, header, secret = new_page(
        conversation=pair_.conversation, writer=crypto.fingerprint_bytes(bob.identity.public_key), epoch=1,
        number=1, first_seq=1, link=GENESIS_HASH, readers=[bob.identity.statics.public],
        next_receive_key=kem.ReceiveKey.generate().public, created=to_micros(datetime.now(timezone.utc)),
        signer=alice.chat._sign,
    )
    record = Record(type="text", seq=1, prev=GENESIS_HASH, timestamp=datetime.now(timezone.utc), causal=(0, 0),
                    type_ext="", body=b"bob: I owe alice 5000 EUR")
    sealed, _r, _d = add_record(sealed, header, secret, record, alice.chat._sign)
    ledger.set(address(bob, alice, 1), sealed.to_string())
    view = make_person("bob", 1, bob.home, ledger).chat.load_all("alice")  # a new session reads page 1 again
    assert "5000 EUR" not in repr(view.messages)
    assert {"forged", "damaged", "undecryptable"} & set(kinds(view.problems))


def test_a_card_reusing_someone_elses_static_keys_shares_no_address_with_them(tmp_path: Path) -> None:
    """mallory signs a card with alice's static keys and her own RSA key; bob befriends both. The
    static agreement is then the same, but schedule.pair_keys binds both fingerprints (``binding``),
    so the two conversations share no address and no key store file."""
    ledger = MemoryLedger()
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    mallory = make_person("mallory", 2, tmp_path / "mallory", ledger)
    befriend(alice, bob)
    card = crypto.make_card("mallory", mallory.identity.private_key, alice.identity.statics.public)
    bob.friends.add_friend("mallory", crypto.parse_contact(card))
    bob.chat.send_message("for alice", "alice")
    bob.chat.send_message("for mallory", "mallory")
    assert bob.chat.lane_address("alice", mine=True, number=1) != bob.chat.lane_address("mallory", mine=True, number=1)
    assert bob.chat._pair("alice").conversation != bob.chat._pair("mallory").conversation
    assert [m.text for m in alice.chat.get_update("bob").messages] == ["for alice"]


def test_the_card_signature_covers_every_field() -> None:
    """Swap the static keys, the name, the issue date or the location of a card and fix its checksum:
    crypto.parse_contact's ``verify(key, _card_signed(...), signature)`` refuses each."""
    from reschat.crypto import CARD_PREFIX, _b64u, _card_checksum, _unb64u
    from tests.conftest import rsa_key, statics_key

    key = rsa_key(0)
    card = crypto.make_card("alice", key, statics_key(0).public, "ledger.example:1", 5)
    body = _unb64u(card[len(CARD_PREFIX):].split(":")[0])
    other = statics_key(1).public.to_bytes()
    start = body.index(statics_key(0).public.to_bytes())
    variants = {
        "statics": body[:start] + other + body[start + len(other):],
        "name": body.replace(b"alice", b"alicf", 1),
        "issued": body[: start + len(other)] + (6).to_bytes(8, "big") + body[start + len(other) + 8:],
        "location": body.replace(b"ledger.example:1", b"ledger.example:2", 1),
    }
    assert crypto.parse_contact(card).issued == 5
    for field, changed in variants.items():
        forged = CARD_PREFIX + _b64u(changed)
        with pytest.raises(crypto.KeyFormatError, match="signature"):
            crypto.parse_contact(forged + ":" + _card_checksum(forged))
        assert field


def test_the_key_store_seals_every_write_under_a_fresh_key(tmp_path: Path) -> None:
    """keystore.write_sealed draws a random 32-byte salt per write and derives the key from it, so the
    fixed-nonce page.seal never sees one key twice; without the salt two writes of a state would
    share key and nonce."""

    path = tmp_path / "x.state"
    store_key = bytes(range(32))
    write_sealed(path, store_key, {"a": "same length 1"})
    first = path.read_bytes()
    write_sealed(path, store_key, {"a": "same length 2"})
    second = path.read_bytes()
    assert first[:32] != second[:32]
    body1, body2 = first[32:-16], second[32:-16]
    assert bytes(x ^ y for x, y in zip(body1, body2, strict=True)).count(0) < len(body1) - 2
    assert read_sealed(path, store_key) == {"a": "same length 2"}


def test_one_junk_page_does_not_stop_newer_messages(pair: tuple[Person, Person], ledger: MemoryLedger) -> None:
    """Issue 10 guarantee 3: no junk page, "inside or outside the window, stops new genuine messages
    from showing". chat._discover_top stops at ``top`` when page top + 1 does not verify (``not
    self._present``), which is true of junk as well as of an absent page. alice's page 2 was confirmed,
    so she never re-sends it; the writer overwrites it once."""
    alice, bob = pair
    fill(alice, "bob", PAGE_CAPACITY, "a")
    bob.chat.get_update("alice")
    fill(alice, "bob", PAGE_CAPACITY, "b")  # page 2
    alice.chat.get_update("bob")
    ledger.set(address(alice, bob, 2), PREFIX + "AAAA")  # the writer
    later = fill(alice, "bob", 2 * PAGE_CAPACITY, "c")  # pages 3 and 4
    for reader in (bob, make_person("bob", 1, bob.home, ledger)):
        assert later[-1] in texts(reader.chat.get_update("alice"))


def test_a_page_hidden_for_one_update_is_readable_once_it_is_back(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """chat._remember deletes every receive key below the newest one a page of this update used, even
    when a page below it was damaged or missing in this very update. alice's pages 2-4 are keyed to
    K1, page 5 to K2; the writer (or a stale read) hides page 4 while bob's gallop finds page 5."""
    alice, bob = pair
    fill(alice, "bob", PAGE_CAPACITY, "a")  # alice's page 1, bob's card keys
    bob.chat.get_update("alice")  # bob's page 1 announces K1
    alice.chat.get_update("bob")
    fill(alice, "bob", 3 * PAGE_CAPACITY, "b")  # pages 2-4, keyed to K1
    fill(bob, "alice", PAGE_CAPACITY + 1, "x")  # bob's page 2 announces K2
    alice.chat.get_update("bob")
    later = fill(alice, "bob", 1, "c")  # alice's page 5, keyed to K2
    assert alice.chat.own_lane("bob").page == 5
    hidden = address(alice, bob, 4)
    genuine = ledger.get(hidden)
    assert genuine is not None
    ledger.set(hidden, PREFIX + "AAAA")  # the writer, for one update
    bob.chat.get_update("alice")
    ledger.set(hidden, genuine)  # back, as alice's own re-send or a fresh read would bring it
    view = make_person("bob", 1, bob.home, ledger).chat.load_all("alice")
    assert "undecryptable" not in kinds(view.problems), view.problems
    assert "b58" in texts(view) and later[-1] in texts(view)


def test_a_friend_rewriting_an_old_epoch_is_reported_by_the_rotation(
    pair: tuple[Person, Person], ledger: MemoryLedger
) -> None:
    """Issue 10 guarantee 4: a rewrite is reported within ceil(pages/K) updates "whatever its depth".
    chat._rotation_numbers only picks pages of the current epoch, so a rewrite behind a restart shows
    only on ``load_all``."""
    alice, bob = pair
    fill(alice, "bob", 3)
    assert texts(bob.chat.get_update("alice")) == ["m0", "m1", "m2"]
    shutil.rmtree(alice.home / "lanes")
    again = make_person("alice", 0, alice.home, ledger)
    fill(again, "bob", 4 * PAGE_CAPACITY, "e2-")  # epoch 2: four pages
    bob.chat.get_update("alice")
    now = datetime.now(timezone.utc)
    where, value, _secret = craft(alice, bob, 1, records=[
        ("m0", now, (0, 0)), ("I agree to pay", now, (0, 0)), ("m2", now, (0, 0)),
    ])
    ledger.set(where, value)
    reported = False
    for _ in range(6):
        view = bob.chat.get_update("alice")
        reported = reported or bool({"rewritten", "forged"} & set(kinds(view.problems)))
    assert reported
