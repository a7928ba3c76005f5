"""Real OS processes sending at once: no message is ever lost or duplicated (prototype defects 1-3).

On every backend RESCHAT_TEST_LEDGER chooses that processes can share (the memory ledger cannot), with
the stale reads the stand-ins serve: the readers read again until the last writes are read back."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reschat.ledger import Ledger
from reschat.page import PAGE_CAPACITY, SealedPage
from tests.conftest import LedgerRig, Person, befriend, ledger_rig, make_person, selected_backends, settle

LedgerFactory = Callable[[], Ledger]
#: The backends processes can share, and how many senders the load test runs on each (each
#: kv_service_tools call is a process of its own, so two senders already keep both cores busy).
SHARED = [kind for kind in selected_backends() if kind != "memory"]
LOAD_SENDERS = {"local": 4, "resilientdb": 2, "http": 4}


def _sender(make_ledger: LedgerFactory, name: str, key_index: int, home: str, friend: str, tag: str,
            count: int, start: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    person = make_person(name, key_index, Path(home), make_ledger())
    start.wait(30)
    for i in range(count):
        result = person.chat.send_message(f"{tag} {i}", friend)
        if result.error is not None:
            raise SystemExit(f"send failed: {result.error}")


def run_senders(make_ledger: LedgerFactory, jobs: list[tuple[str, int, Path, str, str]], count: int) -> None:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_sender, args=(make_ledger, name, key, str(home), friend, tag, count, start))
        for name, key, home, friend, tag in jobs
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(300)
        assert proc.exitcode == 0, f"sender {proc.name} failed"


def check_conversation(reader: Person, friend: str, expected: dict[str, list[str]]) -> None:
    """Every expected text appears exactly once, each sender's messages in the order sent."""
    wanted = [text for texts in expected.values() for text in texts]
    view = settle(lambda: reader.chat.load_all(friend), lambda v: len(v.messages) >= len(wanted) and not v.problems)
    assert view.problems == []
    seen = Counter(m.text for m in view.messages)
    duplicated = [text for text, n in seen.items() if n > 1]
    lost = [text for text in wanted if text not in seen]
    assert (lost, duplicated) == ([], [])
    assert len(view.messages) == len(wanted)
    for tag, texts in expected.items():
        in_order = [m.text for m in view.messages if m.text.startswith(tag + " ")]
        assert in_order == texts


@pytest.fixture(params=SHARED)
def shared_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerRig]:
    """A ledger processes can share: each process opens its own connection with ``rig.connect``."""
    with ledger_rig(request.param, tmp_path / "ledger") as rig:
        assert rig.connect is not None
        yield rig


def records_per_page(rig: LedgerRig, writer: Person, friend: str) -> list[int]:
    """How many records each page of epoch 1 of ``writer``'s lane to ``friend`` holds, as stored."""
    counts: list[int] = []
    while (value := rig.stored(writer.chat.lane_address(friend, mine=True, number=len(counts) + 1))) is not None:
        counts.append(len(SealedPage.from_string(value).records))
    return counts


def test_two_friends_and_a_second_terminal_send_at_once(tmp_path: Path, shared_rig: LedgerRig) -> None:
    assert shared_rig.connect is not None
    shared_ledger = shared_rig.connect
    alice = make_person("alice", 0, tmp_path / "alice", shared_ledger())
    bob = make_person("bob", 1, tmp_path / "bob", shared_ledger())
    befriend(alice, bob)
    count = 50
    run_senders(
        shared_ledger,
        [
            ("alice", 0, alice.home, "bob", "a1"),
            ("alice", 0, alice.home, "bob", "a2"),  # the same profile in a second terminal
            ("bob", 1, bob.home, "alice", "b1"),
        ],
        count,
    )
    expected = {tag: [f"{tag} {i}" for i in range(count)] for tag in ("a1", "a2", "b1")}
    check_conversation(bob, "alice", expected)
    check_conversation(alice, "bob", expected)
    # alice's 100 messages fill exactly 5 pages of her lane: page numbers never drifted (her pages had
    # announced a receive key already, so reading bob's pages keyed to her card adds no key-only page)
    state = alice.chat.own_lane("bob")
    assert (state.epoch, state.page, state.seq) == (1, 5, 100)
    assert records_per_page(shared_rig, alice, "bob") == [PAGE_CAPACITY] * 5


def test_load_many_processes_200_messages_each(tmp_path: Path, shared_rig: LedgerRig) -> None:
    """Issue 5's load test: 0 lost, 0 duplicated, each sender's order preserved."""
    senders = LOAD_SENDERS[shared_rig.kind]
    assert shared_rig.connect is not None
    factory = shared_rig.connect
    alice = make_person("alice", 0, tmp_path / "alice", factory())
    bob = make_person("bob", 1, tmp_path / "bob", factory())
    befriend(alice, bob)
    count = 200
    jobs = [
        ("alice", 0, alice.home, "bob", "a1"),
        ("bob", 1, bob.home, "alice", "b1"),
        ("alice", 0, alice.home, "bob", "a2"),
        ("bob", 1, bob.home, "alice", "b2"),
    ][:senders]
    run_senders(factory, jobs, count)
    expected = {tag: [f"{tag} {i}" for i in range(count)] for _, _, _, _, tag in jobs}
    check_conversation(bob, "alice", expected)
    check_conversation(alice, "bob", expected)
