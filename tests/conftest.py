"""Shared fixtures: identities are costly to make (RSA-3072), so each test session makes a few once.

The engine suites run on every ledger backend through the ``ledger`` fixture (and ``rig``, which adds
the levers of whoever runs the ledger: write anything anywhere, erase, list, and the faults the real
service has). RESCHAT_TEST_LEDGER chooses the backends, comma-separated: ``memory``, ``local``
(SQLite), ``resilientdb`` (the kv_service_tools stand-in) and ``http`` (the gateway stand-in); unset,
all four. Tests written for one backend's own behaviour run only when that backend is chosen.

Stale reads are the normal case: on the two stand-ins the rig serves the real cluster's (a get within
1 s of a set of the same key returns the previous value with probability 0.3) unless
RESCHAT_STANDIN_STALE_READS=0 turns them off. A test that waits for a write to show reads again, a
bounded number of times (``settle``, ``update_until``, ``arrivals``), until what it expects has come (the
messages, and no problem where it expects none), and checks what it finally reads in full: what the
engine does on a stale read itself is tested, one stale read at a time, in test_stale_reads.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from Crypto.PublicKey import RSA

from reschat import crypto, kem
from reschat.chat import ChatMessage, ChatService, ConversationView
from reschat.errors import LedgerUnavailableError
from reschat.friends import FriendStore
from reschat.ledger import Ledger, LocalLedger, MemoryLedger, ResilientDBHttpLedger, ResilientDBLedger
from reschat.ledger.base import check_key, check_value
from tests.standin import (
    STALE_PROBABILITY,
    STALE_READS_ENV,
    STALE_WINDOW_S,
    StandInCluster,
    stale_reads_requested,
)
from tests.standin.http_gateway import GatewayStandIn

#: Low scrypt cost for tests that create identities; one test checks the real default separately.
TEST_SCRYPT_N = 2**10
_KEY_CACHE: list[RSA.RsaKey] = []
_STATICS_CACHE: list[kem.ReceiveKey] = []


def rsa_key(index: int) -> RSA.RsaKey:
    """The index-th RSA-3072 test key, generated once per test session."""
    while len(_KEY_CACHE) <= index:
        _KEY_CACHE.append(RSA.generate(crypto.RSA_BITS))
    return _KEY_CACHE[index]


def statics_key(index: int) -> kem.ReceiveKey:
    """The index-th static hybrid key pair (the card's X25519 and ML-KEM keys), made once per session."""
    while len(_STATICS_CACHE) <= index:
        _STATICS_CACHE.append(kem.ReceiveKey.generate())
    return _STATICS_CACHE[index]


def make_identity(name: str, key_index: int) -> crypto.Identity:
    """An unlocked identity without a profile on disk: RSA key, static keys and store key of ``key_index``."""
    return crypto.Identity(
        name=name, private_key=rsa_key(key_index), statics=statics_key(key_index),
        store_key=hashlib.sha256(f"test store key {key_index}".encode()).digest(),
    )


@dataclass
class Person:
    """One user's profile: identity, friend store and chat service on a shared ledger."""

    name: str
    home: Path
    identity: crypto.Identity
    friends: FriendStore
    chat: ChatService

    @property
    def card(self) -> str:
        return self.identity.card


def make_person(name: str, key_index: int, home: Path, ledger: Ledger, **chat_options: object) -> Person:
    identity = make_identity(name, key_index)
    friends = FriendStore(home / "friends.json", own_fingerprint=crypto.fingerprint_bytes(identity.public_key).hex())
    chat = ChatService(identity, friends, ledger, home / "lanes", **chat_options)  # type: ignore[arg-type]
    return Person(name, home, identity, friends, chat)


@contextlib.contextmanager
def private_key_operations(key: RSA.RsaKey) -> Iterator[list[int]]:
    """Count the RSA private-key operations (signing, OAEP decryption) ``key`` does inside the block."""
    original = key._decrypt_to_bytes
    count = [0]

    def counting(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return original(*args, **kwargs)

    key._decrypt_to_bytes = counting
    try:
        yield count
    finally:
        del key._decrypt_to_bytes


def memory_pair(root: Path) -> tuple[MemoryLedger, Person, Person]:
    """alice and bob, befriended, on a fresh memory ledger."""
    ledger = MemoryLedger()
    alice = make_person("alice", 0, root / "alice", ledger)
    bob = make_person("bob", 1, root / "bob", ledger)
    befriend(alice, bob)
    return ledger, alice, bob


def befriend(a: Person, b: Person) -> None:
    a.friends.add_friend(b.name, crypto.parse_contact(b.card))
    b.friends.add_friend(a.name, crypto.parse_contact(a.card))


# --- the ledger backends of the engine suites -----------------------------------------------------------

BACKENDS = ("memory", "local", "resilientdb", "http")
TEST_LEDGER_ENV = "RESCHAT_TEST_LEDGER"


def selected_backends(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The backends RESCHAT_TEST_LEDGER names (comma-separated), or all of them when it is unset."""
    text = (os.environ if environ is None else environ).get(TEST_LEDGER_ENV, "").strip()
    if not text:
        return BACKENDS
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not chosen or any(kind not in BACKENDS for kind in chosen):
        raise pytest.UsageError(f"{TEST_LEDGER_ENV}={text!r}: name some of {', '.join(BACKENDS)}, comma-separated")
    return chosen


def standin_stale_reads(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the rig's stand-ins serve the real cluster's stale reads: yes, unless
    RESCHAT_STANDIN_STALE_READS is set to an off value ("", "0", "off", "no", "false")."""
    environ = os.environ if environ is None else environ
    return STALE_READS_ENV not in environ or stale_reads_requested(dict(environ))


def standin_stale_knobs() -> dict[str, Any]:
    """The knobs of the tool stand-in (StandInCluster.create) that serve the real cluster's stale reads,
    or none when RESCHAT_STANDIN_STALE_READS turns them off."""
    if not standin_stale_reads():
        return {}
    return {"stale_reads_after_set_s": STALE_WINDOW_S, "stale_read_probability": STALE_PROBABILITY}


def needs_backend(kind: str) -> pytest.MarkDecorator:
    """Skip a test of one backend's own behaviour unless RESCHAT_TEST_LEDGER chose that backend."""
    return pytest.mark.skipif(kind not in selected_backends(), reason=f"{TEST_LEDGER_ENV} does not choose {kind}")


class FaultyLedger(Ledger):
    """A real backend behind the faults the stand-ins have as knobs: stale reads, lost writes, and a
    ledger that cannot be reached. A stale read returns what a key held before its latest write: every
    read (``stale``), or, as the real cluster does, a read within ``window_s`` of the write with
    ``probability``."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        self.name = inner.name
        self.stale = False
        self.window_s = 0.0
        self.probability = 0.0
        self.drop_sets = False
        self.down = False
        self.previous: dict[str, str | None] = {}
        self.written_at: dict[str, float] = {}
        self.sets: Counter[str] = Counter()
        self.random = random.Random()

    @property
    def stale_read_window_s(self) -> float:  # type: ignore[override]
        """As the stand-ins declare theirs: the window of the stale reads turned on (every read stale
        has no window; the contract's second stands for it)."""
        if self.stale:
            return max(self.window_s, STALE_WINDOW_S)
        return self.window_s if self.probability else 0.0

    def _reachable(self) -> None:
        if self.down:
            raise LedgerUnavailableError("cannot connect to the ledger (it is down in this test)")

    def get(self, key: str) -> str | None:
        return self.get_many([key])[key]

    def get_many(self, keys: Sequence[str]) -> dict[str, str | None]:
        self._reachable()
        values = self.inner.get_many(keys)
        if self.stale:
            return {key: self.previous.get(key, value) for key, value in values.items()}
        if self.window_s:
            now = time.monotonic()
            for key, value in values.items():
                recent = now - self.written_at.get(key, float("-inf")) < self.window_s
                if recent and self.random.random() < self.probability:
                    values[key] = self.previous.get(key, value)
        return values

    def set(self, key: str, value: str) -> None:
        self._reachable()
        check_key(key)
        check_value(value)
        self.sets[key] += 1
        if self.drop_sets:
            return
        self.previous[key] = self.inner.get(key)
        self.written_at[key] = time.monotonic()
        self.inner.set(key, value)

    def close(self) -> None:
        self.inner.close()


@dataclass
class LedgerRig:
    """One backend for a test: ``ledger`` for the people, and the levers of whoever runs the ledger."""

    kind: str
    ledger: Ledger
    #: A factory of further connections to the same ledger (for other processes); None for memory.
    connect: Callable[[], Ledger] | None
    #: Where the backend keeps its state on disk, if anywhere.
    root: Path | None = None
    cluster: StandInCluster | None = None
    gateway: GatewayStandIn | None = None
    faulty: FaultyLedger | None = None
    local_path: Path | None = None
    #: The backend serves the real cluster's occasional stale reads when no fault is turned on.
    stale_normally: bool = False

    # -- writing what no client of ours would write --------------------------------------------------

    def plant(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` as is (any size, any text), as another client could.

        Every read returns it at once, as one written long ago: the stale reads the rig serves are
        those that follow the writes of the people under test.
        """
        if self.gateway is not None:
            with self.gateway.lock:
                self.gateway.store[key] = json.dumps({"id": key, "value": value}).encode()
                self._forget_gateway_write(key)
        elif self.cluster is not None:
            self._cluster_sql("INSERT OR REPLACE INTO kv (key, value, previous, set_at) VALUES (?, ?, '', 0)",
                              (key, value))
        elif self.local_path is not None:
            with contextlib.closing(sqlite3.connect(self.local_path, timeout=30)) as db, db:
                db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                           (key, value.encode("utf-8", "surrogateescape")))
        else:
            self._memory()._data[key] = value
        if self.faulty is not None:
            self.faulty.previous.pop(key, None)
            self.faulty.written_at.pop(key, None)

    def plant_foreign(self, key: str) -> None:
        """What another program using the same service would leave under ``key`` (read back at once)."""
        if self.gateway is not None:
            with self.gateway.lock:
                self.gateway.store[key] = json.dumps({"id": key, "note": "another program's record"}).encode()
                self._forget_gateway_write(key)
        else:
            self.plant(key, "another program's record")

    def erase(self, key: str) -> None:
        """Make ``key`` empty, as a restarted in-memory cluster would (every read then finds nothing)."""
        if self.gateway is not None:
            with self.gateway.lock:
                self.gateway.store.pop(key, None)
                self._forget_gateway_write(key)
        elif self.cluster is not None:
            self._cluster_sql("DELETE FROM kv WHERE key = ?", (key,))
        elif self.local_path is not None:
            with contextlib.closing(sqlite3.connect(self.local_path, timeout=30)) as db, db:
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
        else:
            self._memory()._data.pop(key, None)
        if self.faulty is not None:
            self.faulty.previous.pop(key, None)
            self.faulty.written_at.pop(key, None)

    def wipe(self) -> None:
        """Empty the whole ledger, as a restarted in-memory cluster does (the local file itself stays)."""
        for key in list(self.values()):
            self.erase(key)

    # -- looking at what is stored --------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        """Every key and what it really holds (never a stale view), as anyone can list them."""
        if self.gateway is not None:
            with self.gateway.lock:
                bodies = dict(self.gateway.store)
            found = {key: json.loads(body) for key, body in bodies.items()}
            return {key: str(item.get("value", "")) for key, item in found.items() if isinstance(item, dict)}
        if self.cluster is not None:
            return {str(k): str(v) for k, v in self._cluster_sql("SELECT key, value FROM kv", ())}
        if self.local_path is not None:
            with contextlib.closing(sqlite3.connect(self.local_path, timeout=30)) as db:
                rows = db.execute("SELECT key, CAST(value AS TEXT) FROM kv").fetchall()
            return {str(k): str(v) for k, v in rows}
        return dict(self._memory()._data)

    def stored(self, key: str) -> str | None:
        return self.values().get(key)

    def sets_of(self, key: str) -> int:
        """How many writes of ``key`` reached the ledger's front door (lost ones included)."""
        if self.gateway is not None:
            return self.gateway.commits.count(key)
        if self.cluster is not None:
            return sum(1 for call in self.cluster.calls() if call.cmd == "set" and call.key == key)
        assert self.faulty is not None
        return self.faulty.sets[key]

    # -- faults ---------------------------------------------------------------------------------------

    def _declare_stale_window(self, window_s: float) -> None:
        """What the stand-in ledger tells the engine of its stale reads (see ``ledger_rig``)."""
        self.ledger.stale_read_window_s = window_s

    def behave(self, *, stale: bool | None = None, drop_sets: bool | None = None, down: bool | None = None) -> None:
        """Turn faults on (True) or off (False): every read stale, every write lost, the ledger unreachable.

        Off means as the backend normally is: the stand-ins then go on serving the real cluster's
        occasional stale reads (``stale_normally``).
        """
        normal = {"stale_reads_after_set_s": STALE_WINDOW_S, "stale_read_probability": STALE_PROBABILITY} \
            if self.stale_normally else {"stale_reads_after_set_s": None, "stale_read_probability": None}
        if stale is not None and self.faulty is None:
            self._declare_stale_window(STALE_WINDOW_S if stale else 0.0)
        if self.cluster is not None:
            knobs: dict[str, object] = {}
            if stale is not None:
                knobs.update({"stale_reads_after_set_s": 3600, "stale_read_probability": 1.0} if stale else normal)
            if drop_sets is not None:
                knobs["drop_sets"] = drop_sets or None
            if down is not None:
                knobs["down"] = down or None
            self.cluster.behave(**knobs)
        elif self.gateway is not None:
            if stale is not None:
                self.gateway.stale_window_s = 3600 if stale else float(normal["stale_reads_after_set_s"] or 0)
                self.gateway.stale_probability = 1.0 if stale else STALE_PROBABILITY
            if drop_sets is not None:
                self.gateway.drop_commits = drop_sets
            if down is not None:
                self.gateway.failing = down
        else:
            assert self.faulty is not None
            for name, value in (("stale", stale), ("drop_sets", drop_sets), ("down", down)):
                if value is not None:
                    setattr(self.faulty, name, value)
            if stale is not None:
                self.faulty.window_s = self.faulty.probability = 0.0

    def stale_window(self, window_s: float, probability: float) -> None:
        """Serve stale reads the way the real cluster does, with these numbers, on every backend: a read
        within ``window_s`` of a write of the same key returns the value before that write with
        ``probability``. ``behave(stale=...)`` ends it."""
        if self.faulty is None:
            self._declare_stale_window(window_s if probability else 0.0)
        if self.cluster is not None:
            self.cluster.behave(stale_reads_after_set_s=window_s, stale_read_probability=probability)
        elif self.gateway is not None:
            self.gateway.stale_window_s, self.gateway.stale_probability = window_s, probability
        else:
            assert self.faulty is not None
            self.faulty.stale = False
            self.faulty.window_s, self.faulty.probability = window_s, probability

    # -- helpers --------------------------------------------------------------------------------------

    def _forget_gateway_write(self, key: str) -> None:
        """The gateway serves no stale read of ``key`` (its lock held)."""
        assert self.gateway is not None
        self.gateway.previous.pop(key, None)
        self.gateway.written_at.pop(key, None)

    def _memory(self) -> MemoryLedger:
        assert self.faulty is not None and isinstance(self.faulty.inner, MemoryLedger)
        return self.faulty.inner

    def _cluster_sql(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        assert self.cluster is not None
        if not self.cluster.state_path.exists():
            self.ledger.get("reschat-test-state")  # the first tool call creates the state and its tables
        with contextlib.closing(sqlite3.connect(self.cluster.state_path, timeout=30)) as db, db:
            return list(db.execute(sql, params))


@contextlib.contextmanager
def ledger_rig(kind: str, root: Path) -> Iterator[LedgerRig]:
    """A fresh ledger of ``kind`` (one of BACKENDS) with its levers; closed at the end of the block."""
    rig: LedgerRig
    connect: Callable[[], Ledger]
    with contextlib.ExitStack() as stack:
        if kind in ("memory", "local"):
            path = root / "ledger.sqlite"
            inner: Ledger = MemoryLedger() if kind == "memory" else LocalLedger(path)
            faulty = FaultyLedger(inner)
            rig = LedgerRig(kind, faulty, None if kind == "memory" else partial(LocalLedger, path),
                            root=None if kind == "memory" else root, faulty=faulty,
                            local_path=None if kind == "memory" else path)
        elif kind == "resilientdb":
            cluster = StandInCluster.create(root / "cluster", **standin_stale_knobs())
            connect = partial(ResilientDBLedger, cluster.tool, cluster.config, timeout_s=60)
            rig = LedgerRig(kind, connect(), connect, root=cluster.root, cluster=cluster,
                            stale_normally=standin_stale_reads())
        elif kind == "http":
            stale = standin_stale_reads()
            gateway = stack.enter_context(GatewayStandIn())
            gateway.stale_window_s = STALE_WINDOW_S if stale else 0.0
            gateway.stale_probability = STALE_PROBABILITY
            connect = partial(ResilientDBHttpLedger, gateway.url, timeout_s=30)
            rig = LedgerRig(kind, connect(), connect, gateway=gateway, stale_normally=stale)
        else:
            raise ValueError(f"unknown ledger backend {kind!r}: one of {BACKENDS}")
        if rig.faulty is None:
            # A lane that starts reads its epochs a second time once the stale window has passed, which
            # costs that second at every first send. The stand-ins declare their window only when a
            # test turns stale reads on (stale_window, behave): the suites that test this wait,
            # tests/test_stale_reads.py, do; the others run as on a ledger that is never stale.
            rig._declare_stale_window(0.0)
        try:
            yield rig
        finally:
            rig.ledger.close()


@pytest.fixture(params=selected_backends())
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerRig]:
    """Every backend the engine tests run on (RESCHAT_TEST_LEDGER chooses), with its levers."""
    with ledger_rig(request.param, tmp_path) as made:
        yield made


@pytest.fixture
def ledger(rig: LedgerRig) -> Ledger:
    """Every backend the engine tests run on (RESCHAT_TEST_LEDGER chooses)."""
    return rig.ledger


@pytest.fixture
def people(tmp_path: Path, ledger: Ledger) -> Callable[..., tuple[Person, Person]]:
    """A factory for two befriended people on ``ledger``."""

    def factory(**chat_options: object) -> tuple[Person, Person]:
        alice = make_person("alice", 0, tmp_path / "alice", ledger, **chat_options)
        bob = make_person("bob", 1, tmp_path / "bob", ledger, **chat_options)
        befriend(alice, bob)
        return alice, bob

    return factory


# --- reading until stale reads have settled ---------------------------------------------------------

T = TypeVar("T")

#: How many times a test reads before it takes what it read as final. A read is stale only within 1 s
#: of a write, and then with probability 0.3, so 40 reads in a row that miss a write (with the few
#: keys one update depends on, each stale with probability 1 - 0.7 ** 3 at worst) come with a chance
#: below 1e-7; a state that never settles fails the assertion the test makes on the last read.
SETTLE_READS = 40


def settle(read: Callable[[], T], done: Callable[[T], bool], reads: int = SETTLE_READS) -> T:
    """``read()`` again until ``done`` holds of what it returned (at most ``reads`` times): the last result.

    The caller then asserts everything it expects of that result, so nothing is checked less than on
    a ledger without stale reads, and a state that never comes fails there.
    """
    for _ in range(reads - 1):
        result = read()
        if done(result):
            return result
    return read()


def settle_views(read: Callable[[], T], done: Callable[[T], bool], reads: int = SETTLE_READS) -> list[T]:
    """Like ``settle``, but every result read, in order (to check what each of them reported)."""
    results = [read()]
    while not done(results[-1]) and len(results) < reads:
        results.append(read())
    return results


def texts_of(view: ConversationView, *, outgoing: bool | None = None) -> list[str]:
    return [m.text for m in view.messages if outgoing is None or m.outgoing == outgoing]


def update_until(person: Person, friend: str, done: Callable[[ConversationView], bool],
                 reads: int = SETTLE_READS) -> ConversationView:
    """``person``'s updates of the chat with ``friend`` until ``done`` holds of one (see ``settle``)."""
    return settle(lambda: person.chat.get_update(friend), done, reads)


def arrivals(person: Person, friend: str, count: int = 0, *,
             until: Callable[[ConversationView], bool] | None = None,
             reads: int = SETTLE_READS) -> tuple[list[ChatMessage], ConversationView]:
    """Updates until ``count`` new messages from ``friend`` arrived (and ``until`` holds of the view):
    every new message the updates reported, in order (a message reported twice is there twice), and
    the last view."""
    arrived: list[ChatMessage] = []
    view = person.chat.get_update(friend)
    arrived += view.new_messages
    for _ in range(reads - 1):
        if len(arrived) >= count and (until is None or until(view)):
            break
        view = person.chat.get_update(friend)
        arrived += view.new_messages
    return arrived, view
