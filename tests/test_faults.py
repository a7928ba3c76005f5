"""Faults: a ledger that is down or failing, and processes killed with SIGKILL mid-send or mid-write.
After a restart nothing is corrupt and nothing is lost: a message is delivered exactly once, or is
visibly pending in its sender's chat until it is."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from reschat.errors import LedgerUnavailableError
from reschat.friends import FriendStore
from reschat.ledger import Ledger, LocalLedger, MemoryLedger
from tests.conftest import befriend, make_person


class SwitchableLedger(Ledger):
    """A real memory ledger behind a switch that makes every call fail like an unreachable proxy."""

    def __init__(self) -> None:
        self.inner = MemoryLedger()
        self.down = False

    def get(self, key: str) -> str | None:
        if self.down:
            raise LedgerUnavailableError("cannot connect to the ledger")
        return self.inner.get(key)

    def set(self, key: str, value: str) -> None:
        if self.down:
            raise LedgerUnavailableError("cannot connect to the ledger")
        self.inner.set(key, value)


def test_ledger_down_keeps_messages_pending_then_delivers_them_once(tmp_path: Path) -> None:
    ledger = SwitchableLedger()
    alice = make_person("alice", 0, tmp_path / "a", ledger, resend_after=timedelta(0))
    bob = make_person("bob", 1, tmp_path / "b", ledger)
    befriend(alice, bob)
    alice.chat.send_message("before", "bob")
    ledger.down = True
    result = alice.chat.send_message("during", "bob")
    assert isinstance(result.error, LedgerUnavailableError)
    with pytest.raises(LedgerUnavailableError):
        alice.chat.get_update("bob")
    ledger.down = False
    # A new session (the user quit and came back): the outbox still holds "during".
    again = make_person("alice", 0, tmp_path / "a", ledger, resend_after=timedelta(0))
    view = again.chat.get_update("bob")
    assert [(m.text, m.status) for m in view.messages] == [("before", "delivered"), ("during", "pending")]
    view = again.chat.get_update("bob")
    assert [(m.text, m.status) for m in view.messages] == [("before", "delivered"), ("during", "delivered")]
    assert [m.text for m in bob.chat.get_update("alice").messages] == ["before", "during"]


def _send_forever(ledger_path: str, home: str, ready: str) -> None:
    person = make_person("alice", 0, Path(home), LocalLedger(Path(ledger_path)))
    i = 0
    while True:
        person.chat.send_message(f"k {i}", "bob")
        i += 1
        if i == 5:
            Path(ready).touch()


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.047])
def test_sigkill_in_the_middle_of_sending(tmp_path: Path, delay: float) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    alice = make_person("alice", 0, tmp_path / "a", LocalLedger(ledger_path), resend_after=timedelta(0))
    bob = make_person("bob", 1, tmp_path / "b", LocalLedger(ledger_path))
    befriend(alice, bob)
    ready = tmp_path / "ready"
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_send_forever, args=(str(ledger_path), str(alice.home), str(ready)))
    proc.start()
    for _ in range(600):
        if ready.exists():
            break
        time.sleep(0.05)
    time.sleep(delay)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    # After the crash: alice's chat shows every message she sent, delivered or pending, and after one
    # update round (which re-sends) bob has each of them exactly once, in order, with no problem.
    restarted = make_person("alice", 0, alice.home, LocalLedger(ledger_path), resend_after=timedelta(0))
    mine = restarted.chat.get_update("bob").messages
    sent = [m.text for m in mine]
    assert sent == [f"k {i}" for i in range(len(sent))] and len(sent) >= 5
    restarted.chat.send_message("after restart", "bob")
    restarted.chat.get_update("bob")
    view = bob.chat.load_all("alice")
    assert view.problems == []
    texts = [m.text for m in view.messages]
    assert max(Counter(texts).values()) == 1
    assert texts == [*sent, "after restart"]


def _write_friends_forever(path: str, keys: list[Any]) -> None:
    store = FriendStore(Path(path))
    n = 0
    while True:
        store.update("bob", unread=n)
        if n < len(keys):
            store.add_friend(f"f{n}", keys[n])
        n += 1


def test_sigkill_in_the_middle_of_friend_store_writes(tmp_path: Path) -> None:
    from reschat import crypto
    from tests.conftest import make_identity

    path = tmp_path / "friends.json"
    bob = make_identity("bob", 1)
    FriendStore(path).add_friend("bob", crypto.parse_contact(bob.card))
    keys = [crypto.parse_contact(make_identity(f"f{i}", 2 + i).card) for i in range(3)]
    ctx = multiprocessing.get_context("fork")
    for delay in (0.05, 0.2, 0.4):
        proc = ctx.Process(target=_write_friends_forever, args=(str(path), keys))
        proc.start()
        time.sleep(delay)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        data = json.loads(path.read_text())  # never half a file
        store = FriendStore(path)
        names = store.get_all_friend()
        assert names[0] == "bob" and len(names) == len(set(names))
        assert isinstance(data, dict)
        assert store.get_friend("bob").fingerprint == crypto.fingerprint_bytes(bob.public_key).hex()
