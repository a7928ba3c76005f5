"""The service layer: conversations across page rollover, in order, verified, on every ledger (with the
stale reads the stand-ins serve: a test reads again until a write is read back, see conftest)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reschat.chat import ChatMessage, ChatService, ConversationView
from reschat.errors import MessageError, ProfileError, UnknownFriendError
from reschat.ledger import Ledger, MemoryLedger
from reschat.page import PAGE_CAPACITY
from tests.conftest import (
    Person,
    arrivals,
    befriend,
    make_person,
    memory_pair,
    private_key_operations,
    settle,
    settle_views,
    texts_of,
    update_until,
)


def texts(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.sender, m.text) for m in messages]


def test_45_messages_both_directions_across_rollover(people: Callable[..., tuple[Person, Person]]) -> None:
    alice, bob = people()
    sent: list[tuple[str, str]] = []
    for i in range(45):
        if i % 3 == 2:
            bob.chat.send_message(f"bob says {i}", "alice")
            sent.append(("bob", f"bob says {i}"))
        else:
            alice.chat.send_message(f"alice says {i}", "bob")
            sent.append(("alice", f"alice says {i}"))
    view = settle(lambda: bob.chat.load_all("alice"), lambda v: len(v.messages) == len(sent) and not v.problems)
    assert view.problems == []
    assert [(m.sender if m.sender != "me" else "bob", m.text) for m in view.messages] == sent
    # alice wrote 30 messages: two pages of her lane, the second one started by rollover
    assert alice.chat.own_lane("bob").page == 2
    view_a = settle(lambda: alice.chat.load_all("bob"), lambda v: len(v.messages) == len(sent))
    assert [(m.sender if m.sender != "me" else "alice", m.text) for m in view_a.messages] == sent


def test_update_loads_two_most_recent_pages_per_lane(
    people: Callable[..., tuple[Person, Person]], ledger: Ledger
) -> None:
    alice, bob = people()
    for i in range(3 * PAGE_CAPACITY):
        alice.chat.send_message(f"m{i}", "bob")
    newest = [f"m{i}" for i in range(PAGE_CAPACITY, 3 * PAGE_CAPACITY)]

    def opened() -> tuple[Person, ConversationView]:
        """The chat opened in a new session (a session whose opening read was stale has its window)."""
        session = make_person("bob", 1, bob.home, ledger)
        return session, session.chat.get_update("alice")

    reader, view = settle(opened, lambda opening: texts_of(opening[1]) == newest)
    assert texts_of(view) == newest
    assert view.has_older
    everything = [f"m{i}" for i in range(3 * PAGE_CAPACITY)]
    older = settle(lambda: reader.chat.load_older("alice"), lambda v: texts_of(v) == everything)
    assert texts_of(older) == everything
    assert not older.has_older


def test_new_messages_are_reported_once(people: Callable[..., tuple[Person, Person]]) -> None:
    alice, bob = people()
    alice.chat.send_message("hello", "bob")
    first, _view = arrivals(bob, "alice", 1)
    assert [m.text for m in first] == ["hello"]
    assert bob.chat.get_update("alice").new_messages == []
    alice.chat.send_message("again", "bob")
    again, _view = arrivals(bob, "alice", 1)
    assert [m.text for m in again] == ["again"]


def test_own_messages_become_delivered_after_a_read(people: Callable[..., tuple[Person, Person]]) -> None:
    alice, _bob = people()
    result = alice.chat.send_message("hi", "bob")
    assert result.error is None and result.message.status == "pending"
    view = update_until(alice, "bob", lambda v: v.messages[0].status == "delivered")
    assert [(m.text, m.status) for m in view.messages] == [("hi", "delivered")]


def test_send_is_one_write_and_no_read() -> None:
    ledger = MemoryLedger()
    import tempfile
    from pathlib import Path


    with tempfile.TemporaryDirectory() as tmp:
        alice = make_person("alice", 0, Path(tmp) / "a", ledger)
        bob = make_person("bob", 1, Path(tmp) / "b", ledger)
        befriend(alice, bob)
        alice.chat.send_message("first", "bob")
        ledger.operations.clear()
        for i in range(PAGE_CAPACITY + 2):
            ledger.operations.clear()
            alice.chat.send_message(f"m{i}", "bob")
            assert [op for op, _ in ledger.operations] == ["set"]


def test_update_without_news_does_no_private_key_operation(people: Callable[..., tuple[Person, Person]]) -> None:
    alice, bob = people()
    alice.chat.send_message("hi", "bob")
    update_until(bob, "alice", lambda v: texts_of(v) == ["hi"])  # the chat opened, its page read
    with private_key_operations(bob.identity.private_key) as count:
        bob.chat.get_update("alice")
        assert count == [0]
        alice.chat.send_message("more", "bob")
        arrived, _view = arrivals(bob, "alice", 1)
        assert [m.text for m in arrived] == ["more"]
        assert count == [0]  # the lane key was unwrapped once, when the chat opened
    with private_key_operations(bob.identity.private_key) as count:
        bob.chat.send_message("reply", "alice")
        assert count == [1]  # the counter does see a signature: the zeros above are real


def test_empty_and_oversized_messages_are_refused(people: Callable[..., tuple[Person, Person]]) -> None:
    alice, _bob = people()
    with pytest.raises(MessageError, match="empty"):
        alice.chat.send_message("  \n\t ", "bob")
    with pytest.raises(MessageError, match="16 KiB"):
        alice.chat.send_message("x" * (16 * 1024 + 1), "bob")
    with pytest.raises(UnknownFriendError):
        alice.chat.send_message("hi", "carol")
    result = alice.chat.send_message("é" * (8 * 1024), "bob")  # exactly 16 KiB of UTF-8
    assert result.error is None
    for bad in [{"msg_type": "exe"}, {"type_ext": "bad ext!"}, {"msg_type": "file", "type_ext": "x" * 33}]:
        with pytest.raises(MessageError):
            alice.chat.send_message("hi", "bob", **bad)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="empty"):
        alice.chat.send_message(b"", "bob", msg_type="file")
    with pytest.raises(MessageError, match="limit"):
        alice.chat.send_message(b"m" * (32 * 1024 + 1), "bob", msg_type="file")
    alice.chat.send_message(b"m" * (32 * 1024), "bob", msg_type="file", type_ext="bin")
    # nothing refused was written: the conversation still reads back cleanly
    view = alice.chat.get_update("bob")
    assert view.problems == [] and len(view.messages) == 2


def test_lane_timestamps_never_go_backwards(tmp_path: object, ledger: Ledger) -> None:
    from pathlib import Path


    base = Path(str(tmp_path))
    moments = iter([datetime(2026, 1, 1, 12, tzinfo=timezone.utc), datetime(2025, 1, 1, tzinfo=timezone.utc)])
    now = {"t": datetime(2026, 1, 1, 12, tzinfo=timezone.utc)}

    def clock() -> datetime:
        return now["t"]

    alice = make_person("alice", 0, base / "a", ledger, clock=clock)
    bob = make_person("bob", 1, base / "b", ledger)
    befriend(alice, bob)
    now["t"] = next(moments)
    alice.chat.send_message("one", "bob")
    now["t"] = next(moments)  # the clock jumps back a year
    alice.chat.send_message("two", "bob")
    view = update_until(bob, "alice", lambda v: len(v.messages) == 2)
    assert [m.text for m in view.messages] == ["one", "two"]
    assert view.messages[1].time > view.messages[0].time
    assert view.messages[0].time.tzinfo is not None
    assert view.messages[1].time - view.messages[0].time < timedelta(seconds=1)


def test_unread_counts_follow_arrivals_and_reading(people: Callable[..., tuple[Person, Person]]) -> None:
    alice, bob = people()
    assert bob.chat.unread_counts() == {"alice": 0}
    for i in range(3):
        alice.chat.send_message(f"m{i}", "bob")

    def unread(person: Person, expected: dict[str, int]) -> dict[str, int]:
        """The counts once an update read back every write (a count from a stale read is lower)."""
        return settle(person.chat.unread_counts, lambda counts: counts == expected)

    assert unread(bob, {"alice": 3}) == {"alice": 3}  # seen from the lane head, before opening the chat
    update_until(bob, "alice", lambda v: len(v.messages) == 3)
    assert unread(bob, {"alice": 3}) == {"alice": 3}  # fetched but not yet shown to the user
    bob.chat.mark_read("alice")  # after an update that read all three
    assert bob.chat.unread_counts() == {"alice": 0}
    for i in range(PAGE_CAPACITY):
        alice.chat.send_message(f"n{i}", "bob")  # rolls over onto alice's page 2
    assert unread(bob, {"alice": PAGE_CAPACITY}) == {"alice": PAGE_CAPACITY}
    assert alice.chat.unread_counts() == {"bob": 0}


def test_deep_history_of_30_pages_loads_page_by_page_and_completely(tmp_path: object) -> None:
    from pathlib import Path


    ledger = MemoryLedger()
    alice = make_person("alice", 0, Path(str(tmp_path)) / "a", ledger)
    bob = make_person("bob", 1, Path(str(tmp_path)) / "b", ledger)
    befriend(alice, bob)
    total = 30 * PAGE_CAPACITY
    for i in range(total):
        alice.chat.send_message(f"h{i}", "bob")
    view = bob.chat.get_update("alice")
    assert len(view.messages) == 2 * PAGE_CAPACITY and view.has_older
    pages_loaded = 2
    while view.has_older:
        view = bob.chat.load_older("alice")
        pages_loaded += 1
        assert len(view.messages) == pages_loaded * PAGE_CAPACITY
    assert pages_loaded == 30
    assert [m.text for m in view.messages] == [f"h{i}" for i in range(total)]
    fresh = make_person("bob", 1, bob.home, ledger)
    everything = fresh.chat.load_all("alice")
    assert [m.text for m in everything.messages] == [f"h{i}" for i in range(total)]
    assert everything.problems == [] and not everything.has_older


def test_lost_outbox_state_is_rebuilt_from_the_ledger(tmp_path: object, ledger: Ledger) -> None:
    import shutil
    from pathlib import Path


    base = Path(str(tmp_path))
    alice = make_person("alice", 0, base / "a", ledger)
    bob = make_person("bob", 1, base / "b", ledger)
    befriend(alice, bob)
    for i in range(25):
        alice.chat.send_message(f"m{i}", "bob")
    assert texts_of(update_until(bob, "alice", lambda v: texts_of(v)[-1:] == ["m24"]))[-1] == "m24"
    shutil.rmtree(alice.home / "lanes")  # e.g. the profile was restored without its outbox
    again = make_person("alice", 0, alice.home, ledger)
    again.chat.send_message("after", "bob")
    assert again.chat.own_lane("bob").epoch == 2  # a new epoch: no sequence number is written twice
    # The restart is reported once, by the update that sees it (with "after", or just before it when
    # that page read back stale at first).
    views = settle_views(lambda: bob.chat.get_update("alice"), lambda v: bool(v.new_messages))
    restart = ("restart", "alice restarted their side of the conversation")
    assert [(p.kind, p.detail) for v in views for p in v.problems] == [restart]
    assert [m.text for v in views for m in v.new_messages] == ["after"]
    expected = [f"m{i}" for i in range(25)] + ["after"]

    everything = settle(lambda: bob.chat.load_all("alice"),
                        lambda v: texts_of(v) == expected and [p.kind for p in v.problems] == ["restart"])
    assert [p.kind for p in everything.problems] == ["restart"]
    assert texts_of(everything) == expected


def test_a_new_session_opens_the_chat_without_a_private_key_operation(tmp_path: Path) -> None:
    ledger, alice, bob = memory_pair(tmp_path)
    marker = "hi, a marker no ciphertext holds by chance"
    alice.chat.send_message(marker, "bob")
    assert [m.text for m in bob.chat.get_update("alice").messages] == [marker]
    kept = list((tmp_path / "bob" / "lanes").glob("*.state"))
    assert len(kept) == 1 and b"a marker no ciphertext" not in kept[0].read_bytes()

    # The same profile opened again: the page secret comes from the sealed key store, no RSA at all.
    again = ChatService(bob.identity, bob.friends, ledger, tmp_path / "bob" / "lanes")
    with private_key_operations(bob.identity.private_key) as count:
        assert [m.text for m in again.get_update("alice").messages] == [marker]
        assert count == [0]

    # A damaged key store is a clear error, never a traceback or a silent loss.
    damaged = bytearray(kept[0].read_bytes())
    damaged[-1] ^= 0xFF  # always a change (appending b"x" was none when the last byte was already "x")
    kept[0].write_bytes(bytes(damaged))
    third = ChatService(bob.identity, bob.friends, ledger, tmp_path / "bob" / "lanes")
    with pytest.raises(ProfileError, match="damaged"):
        third.get_update("alice")


def test_update_after_the_friend_wrote_many_pages_misses_nothing(tmp_path: Path) -> None:
    _ledger, alice, bob = memory_pair(tmp_path)
    alice.chat.send_message("first", "bob")
    assert [m.text for m in bob.chat.get_update("alice").messages] == ["first"]
    for i in range(5 * PAGE_CAPACITY):  # five more pages while bob's chat is open
        alice.chat.send_message(f"m{i}", "bob")
    view = bob.chat.get_update("alice")
    assert [m.text for m in view.messages] == ["first"] + [f"m{i}" for i in range(5 * PAGE_CAPACITY)]
    assert view.problems == []


def test_a_jump_of_many_pages_between_updates_misses_nothing(tmp_path: Path) -> None:
    _ledger, alice, bob = memory_pair(tmp_path)
    alice.chat.send_message("first", "bob")
    bob.chat.get_update("alice")  # the opening probes pages 2, 3, 5, 9, 17, ... and finds them missing
    total = 24 * PAGE_CAPACITY
    for i in range(total):
        alice.chat.send_message(f"m{i}", "bob")
    view = bob.chat.get_update("alice")
    assert view.problems == []
    assert [m.text for m in view.messages] == ["first"] + [f"m{i}" for i in range(total)]
