"""A third party who can write any key it has seen, and a malicious friend who can write anywhere in
their own lane: junk, protocol-1 values, copied, renumbered, rolled-back, rewritten and erased pages
are reported as such, never shown as messages, and every genuine page is still shown (prototype
defect 4, on protocol 2). On every backend RESCHAT_TEST_LEDGER chooses (see conftest), with the stale
reads the stand-ins serve: the property test of the verifier alone runs on the memory ledger, since it
does not depend on the backend."""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reschat import crypto
from reschat.chat import ConversationView
from reschat.errors import PageFormatError
from reschat.lane import PageKeys, add_record, open_header, open_page
from reschat.ledger import Ledger
from reschat.ledger.base import MAX_VALUE_BYTES
from reschat.page import PAGE_CAPACITY, PREFIX, TAG_BYTES, Record, SealedPage, from_micros, to_micros
from tests.conftest import (
    SETTLE_READS,
    LedgerRig,
    Person,
    befriend,
    ledger_rig,
    make_person,
    settle,
    texts_of,
    update_until,
)


@pytest.fixture
def pair(tmp_path: Path, ledger: Ledger) -> tuple[Person, Person]:
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    return alice, bob


def lane_key(sender: Person, receiver: Person, number: int, epoch: int = 1) -> str:
    """The private address of page ``number`` of ``sender``'s lane to ``receiver``."""
    return sender.chat.lane_address(receiver.name, mine=True, number=number, epoch=epoch)


def kinds(problems: Sequence[object]) -> set[str]:
    return {p.kind for p in problems}  # type: ignore[attr-defined]


def details(problems: Sequence[object]) -> str:
    return " | ".join(p.detail for p in problems)  # type: ignore[attr-defined]


def genuine(person: Person, friend: str, expected: list[str]) -> list[str]:
    """What ``person``'s updates show of the chat once they show ``expected`` (a write read back)."""
    return texts_of(update_until(person, friend, lambda view: texts_of(view) == expected))


def load_all_showing(person: Person, friend: str, expected: list[str]) -> ConversationView:
    """``load_all`` again until it shows ``expected`` (pages written a moment ago read back)."""
    return settle(lambda: person.chat.load_all(friend), lambda view: texts_of(view) == expected)


def fresh_session(person: Person, ledger: Ledger) -> Person:
    """A new session of the same profile: nothing cached, the sealed store's checkpoint kept."""
    return make_person(person.name, {"alice": 0, "bob": 1}[person.name], person.home, ledger)


def two_pages(alice: Person, count: int = PAGE_CAPACITY + 1) -> list[str]:
    """alice fills page 1 of her lane to bob and starts page 2."""
    texts = [f"m{i}" for i in range(count)]
    for text in texts:
        assert alice.chat.send_message(text, "bob").error is None
    return texts


# --- a ledger writer without keys ----------------------------------------------------------------


def _plant(value: str) -> Callable[[LedgerRig, str], None]:
    return lambda rig, key: rig.plant(key, value)


#: What a writer without keys can leave at a page address: each is reported as damaged.
JUNK: dict[str, Callable[[LedgerRig, str], None]] = {
    "not base64": _plant(PREFIX + "{garbage"),
    "base64 of junk": _plant(PREFIX + base64.b64encode(os.urandom(3000)).decode()),
    "at the size limit": _plant("x" * MAX_VALUE_BYTES),
    # Every backend withholds it (OVERSIZED_VALUE) without reading it into memory.
    "over the size limit": _plant("x" * (MAX_VALUE_BYTES + 1)),
    "plain junk": _plant("junk"),
    # On the HTTP gateway a record without a "value" field once made the whole chat unreadable.
    "another program's record": lambda rig, key: rig.plant_foreign(key),
}


@pytest.mark.parametrize("junk", list(JUNK), ids=list(JUNK))
def test_junk_at_a_known_address_is_damaged_and_the_rest_still_shows(
    pair: tuple[Person, Person], rig: LedgerRig, junk: str
) -> None:
    alice, bob = pair
    texts = two_pages(alice)
    bob.chat.send_message("bob's own", "alice")
    whole = [*texts, "bob's own"]  # one read of both pages whole: bob then keeps page 1, to heal it
    assert texts_of(update_until(bob, "alice", lambda v: texts_of(v) == whole)) == whole
    JUNK[junk](rig, lane_key(alice, bob, 1))
    views = [bob.chat.load_all("alice")]
    while texts[PAGE_CAPACITY] not in texts_of(views[-1]) and len(views) < SETTLE_READS:
        views.append(bob.chat.load_all("alice"))  # page 2, written a moment ago, may read stale
    assert texts[PAGE_CAPACITY] in texts_of(views[-1])  # the rest still shows
    reported = [v for v in views if "damaged" in kinds(v.problems)]
    assert reported, [kinds(v.problems) for v in views]
    assert all(m.text not in texts[:PAGE_CAPACITY] for m in reported[0].messages)  # junk is never shown
    # bob kept the exact value of alice's page 1 (a later page of hers follows it): he put it back, so
    # a new session reads the whole lane again, with nothing to report.
    healed = load_all_showing(fresh_session(bob, rig.ledger), "alice", [*texts, "bob's own"])
    assert texts_of(healed) == [*texts, "bob's own"]
    assert "damaged" not in kinds(healed.problems)


def test_junk_at_the_friends_only_page_is_reported(pair: tuple[Person, Person], rig: LedgerRig) -> None:
    alice, bob = pair
    alice.chat.send_message("real", "bob")
    rig.plant(lane_key(alice, bob, 1), "junk")
    view = fresh_session(bob, rig.ledger).chat.load_all("alice")
    assert view.messages == []
    assert "damaged" in kinds(view.problems)


def test_a_value_over_the_size_limit_is_reported_without_being_read(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    """Issue 11, item 2: every backend withholds it (OVERSIZED_VALUE), and the reader goes on."""
    alice, bob = pair
    alice.chat.send_message("real", "bob")
    rig.plant(lane_key(alice, bob, 2), "x" * (MAX_VALUE_BYTES + 1))
    view = update_until(bob, "alice", lambda v: texts_of(v) == ["real"])
    assert texts_of(view) == ["real"]
    assert "damaged" in kinds(view.problems)
    # the one genuine message, not yet marked read
    assert settle(bob.chat.unread_counts, lambda counts: counts == {"alice": 1}) == {"alice": 1}


def test_another_programs_record_under_a_page_key_is_reported_not_fatal(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    """Issue 11, item 9: on the HTTP gateway this used to make every read of the chat raise LedgerError."""
    alice, bob = pair
    alice.chat.send_message("real", "bob")
    rig.plant_foreign(lane_key(alice, bob, 2))
    view = update_until(bob, "alice", lambda v: texts_of(v) == ["real"])
    assert texts_of(view) == ["real"]
    assert "damaged" in kinds(view.problems)
    assert texts_of(settle(lambda: bob.chat.load_all("alice"), lambda v: texts_of(v) == ["real"])) == ["real"]
    # the one genuine message, not yet marked read
    assert settle(bob.chat.unread_counts, lambda counts: counts == {"alice": 1}) == {"alice": 1}


def test_a_protocol_1_value_at_a_protocol_2_address_is_old_format(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    alice, bob = pair
    texts = two_pages(alice)
    old = 'reschat-page/1:{"records":[["bob","text","2030-01-01T00:00:00.000000Z","","aGk=","aGk=",1,"",""]]}'
    rig.plant(lane_key(alice, bob, 1), old)
    view = load_all_showing(fresh_session(bob, rig.ledger), "alice", texts[PAGE_CAPACITY:])
    assert texts_of(view) == texts[PAGE_CAPACITY:]
    assert "old-format" in kinds(view.problems)
    assert "damaged" not in kinds(view.problems)


def test_a_genuine_page_copied_over_another_address_is_forged(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    alice, bob = pair
    texts = two_pages(alice)
    page2 = rig.stored(lane_key(alice, bob, 2))
    assert page2 is not None
    rig.plant(lane_key(alice, bob, 1), page2)  # a writer who saw both addresses
    # bob has never read page 1: the copy opens, and its signed header names another page.
    view = load_all_showing(bob, "alice", texts[PAGE_CAPACITY:])
    assert texts_of(view) == texts[PAGE_CAPACITY:]  # page 2 shown once, page 1 not at all
    assert "forged" in kinds(view.problems)
    assert "signed as page 2" in details(view.problems)
    # Once bob holds page 1's key, the copy does not even open: still refused, this session and a new one.
    for session in (bob, fresh_session(bob, rig.ledger)):
        view = load_all_showing(session, "alice", texts[PAGE_CAPACITY:])
        assert texts_of(view) == texts[PAGE_CAPACITY:]
        assert "forged" in kinds(view.problems)


def test_a_page_moved_to_the_next_number_is_not_shown_twice(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    """The same page replayed under page 2 (only its friend could know that address): refused, never
    counted as the lane's newest page, and the real page 2 still arrives."""
    alice, bob = pair
    alice.chat.send_message("one", "bob")
    value = rig.stored(lane_key(alice, bob, 1))
    assert value is not None
    rig.plant(lane_key(alice, bob, 2), value)
    view = update_until(bob, "alice", lambda v: texts_of(v) == ["one"])
    assert texts_of(view) == ["one"]
    assert bob.chat.conversation_state("alice").theirs.top == 1
    texts = ["one", *two_pages(alice, PAGE_CAPACITY)]  # the real page 2 overwrites the copy
    assert genuine(bob, "alice", texts) == texts


def test_a_page_signed_by_a_stranger_is_never_shown_as_the_friend(
    tmp_path: Path, pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    alice, bob = pair
    # mallory calls herself alice, knows bob's card, and builds a perfectly formed page of her own
    mallory = make_person("alice", 2, tmp_path / "mallory", rig.ledger)
    mallory.friends.add_friend("bob", crypto.parse_contact(bob.card))
    mallory.chat.send_message("send me your password", "bob")
    forged_value = rig.stored(lane_key(mallory, bob, 1))
    assert forged_value is not None
    texts = two_pages(alice)
    rig.plant(lane_key(alice, bob, 1), forged_value)
    view = load_all_showing(fresh_session(bob, rig.ledger), "alice", texts[PAGE_CAPACITY:])
    assert texts_of(view) == texts[PAGE_CAPACITY:]
    assert "send me your password" not in repr(view.messages)
    assert kinds(view.problems) & {"forged", "undecryptable"}


def test_a_page_copied_from_another_conversation_is_refused(tmp_path: Path, rig: LedgerRig) -> None:
    alice = make_person("alice", 0, tmp_path / "alice", rig.ledger)
    bob = make_person("bob", 1, tmp_path / "bob", rig.ledger)
    carol = make_person("carol", 2, tmp_path / "carol", rig.ledger)
    befriend(alice, bob)
    alice.friends.add_friend("carol", crypto.parse_contact(carol.card))
    carol.friends.add_friend("alice", crypto.parse_contact(alice.card))
    alice.chat.send_message("for carol only", "carol")
    texts = two_pages(alice)
    carol_value = rig.stored(lane_key(alice, carol, 1))
    assert carol_value is not None
    rig.plant(lane_key(alice, bob, 1), carol_value)
    view = load_all_showing(bob, "alice", texts[PAGE_CAPACITY:])
    assert texts_of(view) == texts[PAGE_CAPACITY:]
    assert "for carol only" not in repr(view.messages)
    assert kinds(view.problems) & {"forged", "undecryptable"}


def test_replayed_and_reordered_records_are_refused(pair: tuple[Person, Person], rig: LedgerRig) -> None:
    """Each record is sealed to its index and chained: a page with records replayed or reordered is forged."""
    alice, bob = pair
    texts = two_pages(alice)
    key = lane_key(alice, bob, 1)
    value = rig.stored(key)
    assert value is not None
    sealed = SealedPage.from_string(value)
    rows = sealed.records
    sealed.records = [rows[2], rows[0], rows[1], rows[0]]
    rig.plant(key, sealed.to_string())
    view = load_all_showing(bob, "alice", texts[PAGE_CAPACITY:])
    assert texts_of(view) == texts[PAGE_CAPACITY:]
    assert "forged" in kinds(view.problems)


def test_rollback_to_an_older_copy_is_detected(pair: tuple[Person, Person], rig: LedgerRig) -> None:
    alice, bob = pair
    alice.chat.send_message("one", "bob")
    old_copy = rig.stored(lane_key(alice, bob, 1))
    alice.chat.send_message("two", "bob")
    assert genuine(bob, "alice", ["one", "two"]) == ["one", "two"]
    assert old_copy is not None
    rig.plant(lane_key(alice, bob, 1), old_copy)
    for session in (bob, fresh_session(bob, rig.ledger)):
        # One older read may be a stale one (the cluster serves them for a second after a write): the
        # rollback is said when a second update still finds it, in this session and in a new one.
        first = session.chat.get_update("alice")
        assert texts_of(first) == ["one"]
        view = session.chat.get_update("alice")
        assert texts_of(view) == ["one"]
        assert "rollback" in kinds(view.problems)
    assert bob.chat.conversation_state("alice").theirs.seq == 2  # the checkpoint never goes back


def test_erased_page_shows_a_gap(pair: tuple[Person, Person], rig: LedgerRig) -> None:
    alice, bob = pair
    texts = two_pages(alice, 2 * PAGE_CAPACITY + 5)
    rig.erase(lane_key(alice, bob, 2))  # e.g. lost by a restarted in-memory node
    expected = texts[:PAGE_CAPACITY] + texts[2 * PAGE_CAPACITY:]
    reader = fresh_session(bob, rig.ledger)
    assert texts_of(load_all_showing(reader, "alice", expected)) == expected
    # the gap is said once a second read agrees (stale reads), from this read on
    view = settle(lambda: reader.chat.load_all("alice"), lambda v: texts_of(v) == expected)
    assert texts_of(view) == expected
    assert "gap" in kinds(view.problems)
    assert "page 2 is missing" in details(view.problems)


def test_overwritten_own_page_is_resent_by_its_sender(tmp_path: Path, rig: LedgerRig) -> None:
    alice = make_person("alice", 0, tmp_path / "alice", rig.ledger, resend_after=timedelta(0))
    bob = make_person("bob", 1, tmp_path / "bob", rig.ledger)
    befriend(alice, bob)

    def statuses(view: ConversationView) -> list[tuple[str, str | None]]:
        return [(m.text, m.status) for m in view.messages]

    alice.chat.send_message("important", "bob")
    view = update_until(alice, "bob", lambda v: statuses(v) == [("important", "delivered")])
    assert statuses(view) == [("important", "delivered")]
    alice.chat.send_message("second", "bob")
    rig.plant(lane_key(alice, bob, 1), "junk")
    view = alice.chat.get_update("bob")  # sees its page is not what it wrote: writes it again
    assert statuses(view) == [("important", "delivered"), ("second", "pending")]
    both = [("important", "delivered"), ("second", "delivered")]
    assert statuses(update_until(alice, "bob", lambda v: statuses(v) == both)) == both
    assert genuine(bob, "alice", ["important", "second"]) == ["important", "second"]


def test_the_pages_are_ciphertext_only(pair: tuple[Person, Person], rig: LedgerRig) -> None:
    alice, bob = pair
    alice.chat.send_message("the eagle lands at noon", "bob")
    bob.chat.get_update("alice")
    stored = rig.values()
    assert "eagle" not in " ".join(stored.values())
    assert stored
    assert all(key.startswith("reschat2-") and len(key) == len("reschat2-") + 48 for key in stored)
    on_disk = b"".join(p.read_bytes() for p in alice.home.rglob("*") if p.is_file())
    on_disk += b"".join(p.read_bytes() for p in bob.home.rglob("*") if p.is_file())
    assert b"eagle" not in on_disk
    sealed = SealedPage.from_string(stored[lane_key(alice, bob, 1)])
    assert len(sealed.records) == 1
    assert b"eagle" not in sealed.to_bytes()


# --- a malicious friend: alice's own keys ---------------------------------------------------------


def test_a_friend_rewriting_a_page_already_read_is_reported(
    tmp_path: Path, pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    """alice's second copy, with her keys and her state from before a send, writes another message 2."""
    alice, bob = pair
    alice.chat.send_message("zero", "bob")
    shutil.copytree(alice.home / "lanes", tmp_path / "evil" / "lanes")
    alice.chat.send_message("original", "bob")
    assert genuine(bob, "alice", ["zero", "original"]) == ["zero", "original"]

    evil = make_person("alice", 0, tmp_path / "evil", rig.ledger)
    befriend(evil, make_person("bob", 1, tmp_path / "unused-bob", rig.ledger))
    # A malicious client skips the check an honest one makes before its first send (that check would
    # see the ledger ahead of this copy and restart the lane in a new epoch instead).
    evil.chat._lane_checked.add(evil.chat._pair("bob").conversation)
    sent = evil.chat.send_message("evil twin", "bob")
    assert (sent.message.epoch, sent.message.seq) == (1, 2)  # the same place as "original"
    for session in (bob, fresh_session(bob, rig.ledger)):

        def update(session: Person = session) -> ConversationView:
            view = session.chat.get_update("alice")
            assert "evil twin" not in texts_of(view)  # not even while reads still return the genuine page
            return view

        view = settle(update, lambda v: "rewritten" in kinds(v.problems))
        assert "rewritten" in kinds(view.problems)


def test_junk_from_the_friend_above_the_top_does_not_stop_new_messages(
    pair: tuple[Person, Person], rig: LedgerRig
) -> None:
    alice, bob = pair
    alice.chat.send_message("first", "bob")
    assert genuine(bob, "alice", ["first"]) == ["first"]
    for number in (1 + 2, 1 + 5):  # alice can compute every address of her own lane
        rig.plant(bob.chat.lane_address("alice", mine=False, number=number), PREFIX + "AAAA")
    texts = ["first", *two_pages(alice, PAGE_CAPACITY + 2)]  # fills page 1, writes page 2
    newest = texts[PAGE_CAPACITY:]
    view = update_until(bob, "alice", lambda v: texts_of(v)[-len(newest):] == newest)
    assert texts_of(view)[-len(newest):] == newest
    assert texts_of(load_all_showing(bob, "alice", texts)) == texts
    assert bob.chat.conversation_state("alice").theirs.top == 2


# --- dates a page cannot carry ---------------------------------------------------------------------


@pytest.fixture(params=["UTC", "Asia/Tokyo", "America/St_Johns", "Pacific/Kiritimati"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield request.param
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def test_from_micros_refuses_dates_outside_2000_to_2100() -> None:
    low = to_micros(datetime(2000, 1, 1, tzinfo=timezone.utc))
    high = to_micros(datetime(2100, 1, 1, tzinfo=timezone.utc))
    assert from_micros(low) == datetime(2000, 1, 1, tzinfo=timezone.utc)
    assert from_micros(high - 1).year == 2099
    for micros in (low - 1, high, -(2**63), 2**63 - 1, 0):
        with pytest.raises(PageFormatError, match="outside 2000-2100"):
            from_micros(micros)


#: Dates a signed record cannot carry, each tried in every local zone.
IMPOSSIBLE_DATES = [datetime(1, 1, 1, tzinfo=timezone.utc), datetime(9999, 12, 31, tzinfo=timezone.utc),
                    datetime(1999, 12, 31, 23, 59, tzinfo=timezone.utc)]


def test_a_signed_record_with_an_impossible_date_is_refused_without_crashing(
    tmp_path: Path, pair: tuple[Person, Person], rig: LedgerRig, local_zone: str
) -> None:
    """Even the friend's own signature cannot carry such a date: a reader refuses the page, in any zone.

    Each date is read by a reader that has never read the lane (as the first reader of the page would)."""
    alice, bob = pair
    texts = two_pages(alice)
    own = alice.chat.own_lane("bob")
    secret = PageKeys.from_text(own.secrets["1:1"])
    value = rig.stored(lane_key(alice, bob, 1))
    assert value is not None
    sealed = SealedPage.from_string(value)
    header = open_header(sealed, secret)
    opened = open_page(value, sealed, secret, conversation=header.conversation, writer=header.writer,
                       writer_key=alice.identity.public_key, epoch=1, number=1, verified=set())
    last = PAGE_CAPACITY - 1
    shorter = SealedPage(slots=sealed.slots, header=sealed.header, records=sealed.records[:last])
    for index, when in enumerate(IMPOSSIBLE_DATES):
        record = Record(type="text", seq=last + 1, prev=opened.digests[last - 1], timestamp=when, causal=(0, 0),
                        type_ext="", body=b"from another century")
        crafted, _record, _digest = add_record(shorter, header, secret, record, alice.chat._sign)
        rig.plant(lane_key(alice, bob, 1), crafted.to_string())
        reader = make_person("bob", 1, tmp_path / f"reader-{index}", rig.ledger)
        reader.friends.add_friend("alice", crypto.parse_contact(alice.card))
        view = load_all_showing(reader, "alice", texts[PAGE_CAPACITY:])
        assert "from another century" not in repr(view.messages)
        assert texts_of(view) == texts[PAGE_CAPACITY:]
        assert view.problems, f"{when:%Y-%m-%d} refused silently in {local_zone}"
        assert "outside 2000-2100" in details(view.problems)


# --- any altered byte ------------------------------------------------------------------------------


_GENUINE: list[tuple[Person, bytes, str]] = []
_FRESH = [0]


def _fuzz_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Person, bytes, str]:
    if not _GENUINE:
        root = tmp_path_factory.mktemp("fuzz")
        with ledger_rig("memory", root) as rig:
            alice = make_person("alice", 0, root / "alice", rig.ledger)
            bob = make_person("bob", 1, root / "bob", rig.ledger)
            befriend(alice, bob)
            two_pages(alice)
            value, second = rig.stored(lane_key(alice, bob, 1)), rig.stored(lane_key(alice, bob, 2))
        assert value is not None and second is not None
        _GENUINE.append((alice, SealedPage.from_string(value).to_bytes(), second))
    return _GENUINE[0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_page_verifier_never_accepts_an_altered_page(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Any change to any byte of page 1: a reader shows none of its messages and reports it, never raises."""
    alice, raw, second = _fuzz_setup(tmp_path_factory)
    # Every byte but the writer's tag (bytes 2-17): that mark means something only to its writer, who
    # alone holds its key; to a reader it is opaque, and altering it changes nothing a reader shows.
    position = data.draw(st.integers(0, len(raw) - 1).filter(lambda p: not 2 <= p < 2 + TAG_BYTES))
    flip = data.draw(st.integers(1, 255))
    altered = bytearray(raw)
    altered[position] ^= flip
    _FRESH[0] += 1
    root = alice.home.parent / f"fresh{_FRESH[0]}"
    with ledger_rig("memory", root) as rig:
        reader = make_person("bob", 1, root / "bob", rig.ledger)  # nothing cached yet
        reader.friends.add_friend("alice", crypto.parse_contact(alice.card))
        rig.plant(reader.chat.lane_address("alice", mine=False, number=1),
                  PREFIX + base64.b64encode(bytes(altered)).decode())
        rig.plant(reader.chat.lane_address("alice", mine=False, number=2), second)
        view = reader.chat.load_all("alice")
    assert texts_of(view) == [f"m{PAGE_CAPACITY}"]  # page 2 only
    assert view.problems, f"a page altered at byte {position} was not reported"
