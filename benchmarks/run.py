"""ResChat benchmarks (protocol 2): latency, ledger operations, bytes and key-store size, against a crypto floor.

Run from the repository root::

    python -m benchmarks.run            # full run, about a minute
    python -m benchmarks.run --quick    # small sizes, for a smoke check
    python -m benchmarks.run --json out.json

It prints a table, checks the performance targets of the engine (PASS/FAIL each, non-zero exit on a
FAIL) and writes every figure as JSON (``benchmarks/results.json`` unless ``--json`` says otherwise).

The *crypto floor* is fixed by issue 10: 1 RSA-PSS sign + 1 RSA-PSS verify + 1 AES-256-GCM seal + 1
open, plus 1/20 of one hybrid key generation, encapsulation and decapsulation (X25519 + ML-KEM-768,
``reschat.kem``): what one message costs end to end when a page of 20 messages shares one KEM exchange.
Each operation is timed with the primitives of ``reschat.crypto`` and ``reschat.kem`` in the same run,
between the latency samples; the floor is the sum of their medians. Every latency is reported also as a
multiple of that floor.

Two ledgers are measured: the embedded SQLite ledger, and the project's stand-in for ResilientDB's
``kv_service_tools`` set to the real cluster's timings (get 190 ms, set 12 ms). On the stand-in, an open
chat is also measured as the menus run it (their Poller and poll_gap): the time from a friend's send to
the screen while the conversation is active, and the ledger reads per minute of a chat left open and idle.
Ledger operations are counted on the in-memory ledger, which records every operation; whether the reads
of one update form one concurrent round is read from the stand-in's log of each tool call's start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from Crypto.PublicKey import RSA

from reschat import chat as chat_module
from reschat import crypto, kem, lane
from reschat.chat import ChatService
from reschat.friends import FriendStore
from reschat.keystore import ReceiveKeyEntry
from reschat.ledger import Ledger, LocalLedger, MemoryLedger, ResilientDBHttpLedger, ResilientDBLedger
from reschat.menus import ACTIVE_WINDOW_S, Poller, poll_gap
from reschat.outbox import OwnLane, page_id
from reschat.page import Record, SealedPage, format_timestamp, to_micros
from reschat.render import format_message
from reschat.storage import atomic_write
from tests.standin import Call, StandInCluster
from tests.standin.http_gateway import GatewayStandIn

DEFAULT_JSON = Path(__file__).with_name("results.json")
#: The real cluster's median latencies (see the project's notes on ResilientDB's KV service).
RDB_GET_S, RDB_SET_S = 0.190, 0.012
SHORT_TEXT = "hello 1234"  # 10 characters
KIB_TEXT = "x" * 1024
PAGE_MESSAGES = 20
#: Issue 10: bytes on the ledger per 10-character message (a full page's stored size / 20).
MAX_BYTES_PER_SHORT_MESSAGE = 1200
_KEM_LABEL = b"reschat-benchmark"

FLOOR_DEFINITION = (
    "crypto floor = 1 RSA-PSS sign + 1 RSA-PSS verify + 1 AES-256-GCM seal + 1 AES-256-GCM open + 1/20 of "
    "(1 hybrid X25519+ML-KEM-768 key generation + 1 encapsulation + 1 decapsulation): one message of a "
    "20-message page end to end; RSA-3072, SHA-256, a 10-character text; sum of the medians of each "
    "operation timed with reschat.crypto and reschat.kem in this run, sampled before and between the "
    "latency samples so that both see the same load"
)
OUR_DESIGN_OPS = {
    "send": "1 RSA-PSS sign (the record; its signature covers the page header) + 1 AES-256-GCM seal; a send "
    "that starts a page also generates a receive key, encapsulates to the friend's newest one and signs the "
    "header (1 RSA-PSS sign more)",
    "receive": "1 AES-256-GCM open per record; 1 RSA-PSS verify per page read in a session (the newest "
    "record's signature covers the header and, through the hash chain, every record before it); 1 hybrid "
    "decapsulation per page the first time it is read (its page secret is then kept in the key store)",
    "session": "1 static X25519 agreement per friend per session (the pair's private addresses)",
}


@dataclass(frozen=True)
class Sizes:
    """How much work one run does."""

    floor_reps: int = 40
    loop_local: int = 30  # send / update rounds on the local ledger
    loop_standin: int = 5
    open_local: int = 15  # fresh sessions opening the 40-message chat
    open_standin: int = 2
    lone_standin: int = 3  # bare tool calls, for reference
    history: tuple[int, ...] = (1, 10, 100, 1000)
    history_full_pages: int = 100  # pages of the history that hold 20 messages (the deeper ones hold 1)
    history_open_reps: int = 5
    key_store_pages: tuple[int, ...] = (1, 10, 100)  # the key store with and without disappearing messages
    new_page_reps: int = 20
    conversation: int = 40  # messages in the chat that is opened (half each way)
    live_messages: int = 15  # messages sent into an open chat whose poll runs, on the stand-in
    copies_messages: int = 1000  # messages sent one way, for the disk size of the kept page copies


QUICK = Sizes(
    floor_reps=5, loop_local=4, loop_standin=2, open_local=2, open_standin=1, lone_standin=1,
    history=(1, 10, 20), history_open_reps=2, new_page_reps=2, conversation=6, live_messages=2,
    copies_messages=100, key_store_pages=(1, 3),
)
#: Issue target for an open, active chat on the cluster: a friend's send reaches the screen within this (median).
LIVE_TARGET_MS = 400
#: Opening is flat when, from this depth on (window and rotation complete), reads and pages opened
#: vary by at most FLAT_SLACK across the depths.
FLAT_FROM_PAGES = 10
FLAT_SLACK = 2
#: The configured poll interval the idle figures assume (config.example.toml's default).
DEFAULT_POLL_INTERVAL_S = 2.0


# --- instruments ----------------------------------------------------------------------------------


class CountingKey(RSA.RsaKey):
    """An RSA private key that counts its private-key operations (PSS signing)."""

    def __init__(self, **components: int) -> None:
        super().__init__(**components)
        self.private_ops = 0

    def _decrypt_to_bytes(self, ciphertext: int) -> bytes:
        self.private_ops += 1
        result: bytes = super()._decrypt_to_bytes(ciphertext)  # type: ignore[no-untyped-call]
        return result


def counting_key(key: RSA.RsaKey) -> CountingKey:
    return CountingKey(n=key.n, e=key.e, d=key.d, p=key.p, q=key.q, u=key.u)


@dataclass
class KemCounts:
    """Hybrid-KEM and static-key operations, counted process-wide while ``counting_kem`` is active."""

    decapsulations: int = 0
    encapsulations: int = 0
    key_generations: int = 0
    agreements: int = 0  # static-static X25519 (the pair's private addresses)
    pages_opened: int = 0  # lane.open_page calls (a page decrypted and checked)

    def snapshot(self) -> KemCounts:
        return replace(self)


KEM = KemCounts()


@contextmanager
def counting_kem() -> Iterator[KemCounts]:
    """Count the private-key operations of the hybrid keys (and the pages opened) inside the block.

    The engine calls ``kem.decapsulate`` and the others through their modules, so wrapping the module
    attributes sees every call; the crypto itself is the real one.
    """
    decapsulate, encapsulate, generate = kem.decapsulate, kem.encapsulate, kem.ReceiveKey.generate
    agreement, open_page = kem.x25519_shared, getattr(chat_module, "open_page")  # noqa: B009 - not re-exported

    def counted_decapsulate(*args: Any, **kwargs: Any) -> bytes:
        KEM.decapsulations += 1
        return decapsulate(*args, **kwargs)

    def counted_encapsulate(*args: Any, **kwargs: Any) -> tuple[bytes, bytes]:
        KEM.encapsulations += 1
        return encapsulate(*args, **kwargs)

    def counted_generate() -> kem.ReceiveKey:
        KEM.key_generations += 1
        return generate()

    def counted_agreement(*args: Any, **kwargs: Any) -> bytes:
        KEM.agreements += 1
        return agreement(*args, **kwargs)

    def counted_open_page(*args: Any, **kwargs: Any) -> lane.OpenPage:
        KEM.pages_opened += 1
        result: lane.OpenPage = open_page(*args, **kwargs)
        return result

    patches: list[tuple[object, str, object]] = [
        (kem, "decapsulate", counted_decapsulate),
        (kem, "encapsulate", counted_encapsulate),
        (kem.ReceiveKey, "generate", staticmethod(counted_generate)),
        (kem, "x25519_shared", counted_agreement),
        (chat_module, "open_page", counted_open_page),
    ]
    saved = [(owner, name, vars(owner)[name]) for owner, name, _new in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield KEM
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


class OverlayLedger(Ledger):
    """Reads from ``base``, keeps writes to itself: a reader measured again and again sees the same
    ledger, whatever it wrote (a receive key it published, a restarted lane). Records its operations."""

    name = "overlay"

    def __init__(self, base: Ledger) -> None:
        self.base = base
        self.written: dict[str, str] = {}
        self.operations: list[tuple[str, str]] = []
        self.max_concurrency = base.max_concurrency

    def get(self, key: str) -> str | None:
        self.operations.append(("get", key))
        return self.written[key] if key in self.written else self.base.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, str | None]:
        unique = list(dict.fromkeys(keys))
        self.operations += [("get", key) for key in unique]
        found = self.base.get_many([key for key in unique if key not in self.written])
        return {key: self.written[key] if key in self.written else found[key] for key in unique}

    def set(self, key: str, value: str) -> None:
        self.operations.append(("set", key))
        self.written[key] = value


@dataclass
class Person:
    name: str
    home: Path
    key: CountingKey
    identity: crypto.Identity
    friends: FriendStore
    chat: ChatService

    def new_session(self, ledger: Ledger | None = None, state_dir: Path | None = None) -> Person:
        """The same profile opened again: a new ChatService and friend store, so cold in-memory caches.

        With ``state_dir`` (an empty directory) the session has no key store: no checkpoint, no receive
        key of its own, nothing of its lanes, as a profile restored without its ``lanes/``.
        """
        friends = FriendStore(self.home / "friends.json", own_fingerprint=self.friends.own_fingerprint)
        chat = ChatService(self.identity, friends, ledger or self.chat.ledger, state_dir or self.home / "lanes")
        return replace(self, friends=friends, chat=chat)

    def private_ops(self) -> int:
        """RSA private-key operations plus hybrid decapsulations and static agreements, so far."""
        return self.key.private_ops + KEM.decapsulations + KEM.agreements


def make_person(name: str, key: RSA.RsaKey, home: Path, ledger: Ledger) -> Person:
    counted = counting_key(key)
    identity = crypto.Identity(
        name=name, private_key=counted, statics=kem.ReceiveKey.generate(), store_key=os.urandom(32)
    )
    own = crypto.fingerprint_bytes(identity.public_key).hex()
    friends = FriendStore(home / "friends.json", own_fingerprint=own)
    return Person(name, home, counted, identity, friends, ChatService(identity, friends, ledger, home / "lanes"))


def make_pair(root: Path, ledger: Ledger, keys: Sequence[RSA.RsaKey]) -> tuple[Person, Person]:
    alice = make_person("alice", keys[0], root / "alice", ledger)
    bob = make_person("bob", keys[1], root / "bob", ledger)
    alice.friends.add_friend("bob", crypto.parse_contact(bob.identity.card))
    bob.friends.add_friend("alice", crypto.parse_contact(alice.identity.card))
    return alice, bob


def own_page(person: Person, nickname: str) -> int:
    """The number of the current page of ``person``'s lane with ``nickname`` (from its key store)."""
    pair = person.chat._pair(nickname)
    return OwnLane.from_dict(pair.store.load().mine).page


def current_page_full(person: Person, nickname: str) -> bool:
    """Whether ``person``'s next message to ``nickname`` starts a new page."""
    own = OwnLane.from_dict(person.chat._pair(nickname).store.load().mine)
    current = own.pages.get(str(own.page))
    return current is None or len(SealedPage.from_string(current).records) >= PAGE_MESSAGES


def store_bytes(person: Person) -> int:
    """Size on disk of ``person``'s local key store (every ``lanes/*.state`` file)."""
    return sum(path.stat().st_size for path in (person.home / "lanes").glob("*.state"))


def copies_bytes(person: Person) -> int:
    """Size on disk of ``person``'s kept page copies for self-healing (``lanes/*.pages/``)."""
    return sum(path.stat().st_size for path in (person.home / "lanes").glob("*.pages/*") if path.is_file())


def timed(action: Callable[[], object]) -> float:
    """Seconds one call of ``action`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank), so that p95 of few samples is a real sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(samples: Sequence[float]) -> dict[str, Any]:
    """Median and p95 in ms; the ratios to the floor are added at the end of the run (add_ratios)."""
    return {
        "n": len(samples),
        "median_ms": round(statistics.median(samples) * 1000, 2),
        "p95_ms": round(percentile(samples, 95) * 1000, 2),
    }


def add_ratios(node: Any, floor_ms: float) -> None:
    """Add ``*_x_floor`` beside every ``*_ms`` figure of the latency and history results."""
    if isinstance(node, list):
        for item in node:
            add_ratios(item, floor_ms)
    elif isinstance(node, dict):
        for key in list(node):
            if key.startswith("cpu_"):
                continue  # CPU time is compared with the floor in CPU time (run)
            if key.endswith("median_ms") or key == "p95_ms":
                node[key.removesuffix("_ms") + "_x_floor"] = round(node[key] / floor_ms, 2)
            else:
                add_ratios(node[key], floor_ms)


def read_rounds(calls: Sequence[Call]) -> int:
    """How many rounds of reads ``calls`` form: a round is a set of gets all started before any ended."""
    gets = sorted((c for c in calls if c.cmd.startswith("get")), key=lambda c: c.started)
    rounds, first_end = 0, float("-inf")
    for call in gets:
        if call.started >= first_end:
            rounds += 1
            first_end = call.ended if call.ended is not None else float("inf")
        elif call.ended is not None:
            first_end = min(first_end, call.ended)
    return rounds


@contextmanager
def tool_calls(cluster: StandInCluster | None) -> Iterator[list[Call]]:
    """Collect the stand-in tool calls made inside the block (nothing without a cluster)."""
    made: list[Call] = []
    before = len(cluster.calls()) if cluster is not None else 0
    yield made
    if cluster is not None:
        made.extend(cluster.calls()[before:])


# --- the crypto floor -----------------------------------------------------------------------------

FLOOR_OPS = (
    "rsa_pss_sign", "rsa_pss_verify", "aes_gcm_seal", "aes_gcm_open",
    "kem_keygen", "kem_encapsulate", "kem_decapsulate",
)
#: Suffix of the floor's samples in CPU time (time.process_time) beside the wall-clock ones.
CPU = "_cpu"
#: How many of each operation one message costs in the floor (issue 10).
FLOOR_COUNTS = {
    "rsa_pss_sign": 1.0, "rsa_pss_verify": 1.0, "aes_gcm_seal": 1.0, "aes_gcm_open": 1.0,
    "kem_keygen": 1 / PAGE_MESSAGES, "kem_encapsulate": 1 / PAGE_MESSAGES, "kem_decapsulate": 1 / PAGE_MESSAGES,
}


def measure_floor(keys: Sequence[RSA.RsaKey], reps: int, text: str = SHORT_TEXT) -> dict[str, list[float]]:
    """Time each operation of the floor with reschat.crypto and reschat.kem, ``reps`` times."""
    signer = keys[0]
    verifier = signer.public_key()
    body = text.encode()
    aad = b"reschat-benchmark"
    # What a record's signature covers: a label, the header digest, its index and its content.
    signed = os.urandom(160)
    samples: dict[str, list[float]] = {name: [] for op in FLOOR_OPS for name in (op, op + CPU)}

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    for _ in range(reps):
        key = crypto.new_symmetric_key()
        start = now()
        receive = kem.ReceiveKey.generate()
        t_keygen = now()
        public = receive.public
        t_public = now()
        enc, secret = kem.encapsulate(public, _KEM_LABEL)
        t_enc = now()
        sealed = crypto.encrypt_message(key, body, aad)
        t_seal = now()
        signature = crypto.sign(signer, signed)
        t_sign = now()
        opened_secret = kem.decapsulate(receive, enc, _KEM_LABEL)
        t_dec = now()
        ok = crypto.verify(verifier, signed, signature)
        t_verify = now()
        opened = crypto.decrypt_message(key, sealed, aad)
        t_open = now()
        assert ok and opened == body and opened_secret == secret
        for op, begun, ended in (
            ("kem_keygen", start, t_keygen), ("kem_encapsulate", t_public, t_enc), ("aes_gcm_seal", t_enc, t_seal),
            ("rsa_pss_sign", t_seal, t_sign), ("kem_decapsulate", t_sign, t_dec), ("rsa_pss_verify", t_dec, t_verify),
            ("aes_gcm_open", t_verify, t_open),
        ):
            samples[op].append(ended[0] - begun[0])
            samples[op + CPU].append(ended[1] - begun[1])
    return samples


def floor_summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    per_op = {op: round(statistics.median(samples[op]) * 1000, 3) for op in FLOOR_OPS}
    total = sum(per_op[op] * FLOOR_COUNTS[op] for op in FLOOR_OPS)
    summary = {
        "definition": FLOOR_DEFINITION,
        "per_op_median_ms": per_op,
        "op_counts": {op: round(FLOOR_COUNTS[op], 4) for op in FLOOR_OPS},
        "floor_ms": round(total, 3),
        "n": len(samples[FLOOR_OPS[0]]),
    }
    if all(samples.get(op + CPU) for op in FLOOR_OPS):
        # The same floor in CPU time: what the operations cost this process, without the waits for
        # the CPU that other jobs on a shared machine add (see cpu_ms in the latency figures).
        summary["cpu_floor_ms"] = round(sum(
            statistics.median(samples[op + CPU]) * 1000 * FLOOR_COUNTS[op] for op in FLOOR_OPS), 3)
    return summary


class FloorSampler:
    """Samples of the crypto floor, taken between latency samples so that both see the same load."""

    def __init__(self, keys: Sequence[RSA.RsaKey]) -> None:
        self.keys = keys
        self.samples: dict[str, list[float]] = {}

    def sample(self, reps: int = 1) -> None:
        for op, times in measure_floor(self.keys, reps).items():
            self.samples.setdefault(op, []).extend(times)

    def summary(self) -> dict[str, Any]:
        return floor_summary(self.samples)


# --- ledger operations (in-memory ledger) ---------------------------------------------------------


def exchange(alice: Person, bob: Person, messages: int) -> None:
    """``messages`` messages, half each way, each side updating after each message of the other."""
    for i in range(messages // 2):
        alice.chat.send_message(f"a{i}", "bob")
        bob.chat.get_update("alice")
        bob.chat.send_message(f"b{i}", "alice")
        alice.chat.get_update("bob")


def observe(ledger: MemoryLedger | OverlayLedger, person: Person, action: Callable[[], object]) -> dict[str, int]:
    """Ledger and private-key operations of ``action``: gets, sets, RSA signs, decapsulations, agreements."""
    ledger.operations.clear()
    rsa_before, kem_before = person.key.private_ops, KEM.snapshot()
    action()
    ops = [op for op, _ in ledger.operations]
    rsa = person.key.private_ops - rsa_before
    decaps = KEM.decapsulations - kem_before.decapsulations
    agreements = KEM.agreements - kem_before.agreements
    return {
        "gets": ops.count("get"),
        "sets": ops.count("set"),
        "private_key_ops": rsa + decaps + agreements,
        "rsa_signs": rsa,
        "kem_decapsulations": decaps,
        "static_agreements": agreements,
        "pages_opened": KEM.pages_opened - kem_before.pages_opened,
    }


def measure_operations(root: Path, keys: Sequence[RSA.RsaKey], sizes: Sizes) -> dict[str, Any]:
    """Ledger operations and private-key operations per send and per update, on the memory ledger."""
    ledger = MemoryLedger()
    alice, bob = make_pair(root / "ops", ledger, keys)
    exchange(alice, bob, sizes.conversation)
    messages = sizes.conversation + 1
    if current_page_full(alice, "bob"):  # the next send would start a page: measured below on its own
        alice.chat.send_message(SHORT_TEXT, "bob")
        bob.chat.get_update("alice")
        messages += 1
    alice.chat.get_update("bob")  # the chat was opened once: a send is measured in an open chat
    send = observe(ledger, alice, lambda: alice.chat.send_message(SHORT_TEXT, "bob"))
    update_new = observe(ledger, bob, lambda: bob.chat.get_update("alice"))
    update_idle = observe(ledger, bob, lambda: bob.chat.get_update("alice"))
    fresh = bob.new_session()
    opening = observe(ledger, fresh, lambda: fresh.chat.get_update("alice"))
    # A send that starts a new page (KEM to bob's newest receive key, a new receive key of alice's).
    for _ in range(PAGE_MESSAGES):
        page = own_page(alice, "bob")
        result = observe(ledger, alice, lambda: alice.chat.send_message(SHORT_TEXT, "bob"))
        if own_page(alice, "bob") != page:
            break
    new_page_send = result
    new_page_read = observe(ledger, bob, lambda: bob.chat.get_update("alice"))
    return {
        "messages_in_chat": messages,
        "send": send,
        "update_1_new": update_new,
        "update_idle": update_idle,
        "open_chat": opening,
        "send_new_page": new_page_send,
        "update_new_page": new_page_read,
    }


def measure_bytes(root: Path, keys: Sequence[RSA.RsaKey]) -> dict[str, Any]:
    """Bytes on the ledger per message: one full page (20 records) of each text size in a new chat."""
    ledger = MemoryLedger()
    alice, _bob = make_pair(root / "bytes", ledger, keys)
    result: dict[str, Any] = {}
    for number, (label, text) in enumerate((("text_10_chars", SHORT_TEXT), ("text_1_kib", KIB_TEXT)), start=1):
        key = alice.chat.lane_address("bob", mine=True, number=number)
        written = 0
        first = 0
        for i in range(PAGE_MESSAGES):
            alice.chat.send_message(text, "bob")
            value = ledger.get(key) or ""
            written += len(value)
            if i == 0:
                first = len(value)
        full = len(ledger.get(key) or "")
        result[label] = {
            "text_bytes": len(text.encode()),
            "page_bytes_20_messages": full,
            "stored_bytes_per_message": round(full / PAGE_MESSAGES, 1),
            "marginal_bytes_per_message": round((full - first) / (PAGE_MESSAGES - 1), 1),
            "bytes_written_per_send_mean": round(written / PAGE_MESSAGES, 1),
        }
    return result


def measure_disk(root: Path, reps: int, size: int = 24_000) -> dict[str, Any]:
    """What one crash-safe write of a key-store-sized file costs on this disk (``storage.atomic_write``:
    a temporary file, fsync, rename, fsync of the directory): every send writes the key store once."""
    path = root / "disk" / "probe.state"
    data = os.urandom(size)
    times = [timed(lambda: atomic_write(path, data)) for _ in range(reps)]
    return {"bytes": size, **summary_ms(times)}


# --- self-healing: a wiped ledger, and what the kept copies cost on disk ----------------------------

#: Pages per lane in the conversation that is wiped (as tests/test_healing.py does).
HEAL_PAGES = 3
#: Rounds (one update by each friend) a heal may take before the benchmark gives up on it.
HEAL_ROUNDS_LIMIT = 20


def measure_healing(root: Path, keys: Sequence[RSA.RsaKey], copies_messages: int) -> dict[str, Any]:
    """A conversation of HEAL_PAGES full pages per lane, then the whole (memory) ledger emptied: how many
    usual updates of each friend and how many ledger writes until every value is back as it was; and
    the disk size of the kept copies per 1,000 ten-character messages, writer and reader."""
    ledger = MemoryLedger()
    alice, bob = make_pair(root / "heal", ledger, keys)
    for i in range(HEAL_PAGES * PAGE_MESSAGES):
        alice.chat.send_message(f"a{i}", "bob")
        bob.chat.send_message(f"b{i}", "alice")
        if i % 7 == 0:
            alice.chat.get_update("bob")
            bob.chat.get_update("alice")
    for _ in range(3):
        alice.chat.get_update("bob")
        bob.chat.get_update("alice")
    before = dict(ledger._data)
    ledger._data.clear()
    ledger.operations.clear()
    rounds = 0
    while any(ledger._data.get(key) != value for key, value in before.items()) and rounds < HEAL_ROUNDS_LIMIT:
        rounds += 1
        alice.chat.get_update("bob")
        bob.chat.get_update("alice")
    healed = all(ledger._data.get(key) == value for key, value in before.items())
    ops = [op for op, _key in ledger.operations]

    # The kept copies: alice writes, bob follows (an update after every page), ten characters a message.
    writer, reader = make_pair(root / "copies", MemoryLedger(), keys)
    for i in range(copies_messages):
        writer.chat.send_message(SHORT_TEXT, "bob")
        if i % PAGE_MESSAGES == PAGE_MESSAGES - 1:
            reader.chat.get_update("alice")
    reader.chat.get_update("alice")
    per_1000 = 1000 / copies_messages
    return {
        "pages_per_lane": HEAL_PAGES,
        "values_wiped": len(before),
        "healed": healed,
        "rounds_of_updates": rounds,
        "ledger_sets": ops.count("set"),
        "ledger_gets": ops.count("get"),
        "copies_messages": copies_messages,
        "kept_copies_bytes_per_1000_messages": {
            "writer": round(copies_bytes(writer) * per_1000),
            "reader": round(copies_bytes(reader) * per_1000),
        },
    }


# --- a new page: its cost in time and bytes --------------------------------------------------------


def measure_new_page(keys: Sequence[RSA.RsaKey], reps: int, floor: FloorSampler) -> dict[str, Any]:
    """What starting a page costs: the writer's side (a receive key generated, one hybrid encapsulation,
    the header signed and sealed) and the reader's (a decapsulation, the header opened and verified),
    with the engine's own ``lane.new_page``; and its bytes (an empty page: one KEM slot and the header)."""
    writer = keys[0]
    writer_fpr = crypto.fingerprint_bytes(writer)
    reader = kem.ReceiveKey.generate()
    reader_public = reader.public
    write_t: list[float] = []
    read_t: list[float] = []
    size = 0

    def sign(data: bytes) -> bytes:
        return crypto.sign(writer, data)

    for number in range(1, reps + 1):
        floor.sample()
        start = time.perf_counter()
        sealed, header, _secret = lane.new_page(
            conversation=bytes(32), writer=writer_fpr, epoch=1, number=number, first_seq=1,
            link=bytes(32), readers=[reader_public], next_receive_key=kem.ReceiveKey.generate().public,
            created=to_micros(datetime.now(timezone.utc)), signer=sign,
        )
        value = sealed.to_string()
        write_t.append(time.perf_counter() - start)
        size = len(value)
        start = time.perf_counter()
        parsed = SealedPage.from_string(value)
        found = lane.find_page_secret(parsed, [(1, reader)])
        assert found is not None
        opened = lane.open_page(
            value, parsed, found[0], conversation=bytes(32), writer=writer_fpr, writer_key=writer.public_key(),
            epoch=1, number=number, verified=set(),
        )
        read_t.append(time.perf_counter() - start)
        assert opened.header == header
    return {
        "write": summary_ms(write_t),
        "read": summary_ms(read_t),
        "empty_page_bytes": size,
        "kem_slot_bytes": kem.ENC_BYTES + 48,
        "announced_key_bytes": kem.PUBLIC_BYTES,
    }


# --- latency on a ledger --------------------------------------------------------------------------


def measure_latency(
    root: Path, keys: Sequence[RSA.RsaKey], ledger: Ledger, cluster: StandInCluster | None,
    loops: int, opens: int, conversation: int, floor: FloorSampler,
) -> dict[str, Any]:
    """Send, update (idle, 1 new message) and opening a chat, on ``ledger``.

    The conversation is written on a memory ledger and its final values copied to ``ledger`` (a few
    writes instead of one per message: the stand-in takes a tenth of a second per call); alice and bob
    then use ``ledger`` in new sessions.
    """
    memory = MemoryLedger()
    alice, bob = make_pair(root, memory, keys)
    for i in range(conversation // 2):
        alice.chat.send_message(f"a{i}", "bob")
        bob.chat.send_message(f"b{i}", "alice")
    for _ in range(2):  # each reads the other's pages and learns the receive key the other published
        alice.chat.get_update("bob")
        bob.chat.get_update("alice")
    copy_ledger(memory, ledger, {})
    alice, bob = alice.new_session(ledger), bob.new_session(ledger)
    alice.chat.get_update("bob")
    bob.chat.get_update("alice")

    # A fresh session of bob opens the chat of ``conversation`` messages each time; nobody writes
    # in between, so every opening sees the same conversation.
    open_times: list[float] = []
    open_cpu: list[float] = []  # the same openings in CPU time (this process): the load of other jobs left out
    open_rounds: list[int] = []
    for _ in range(opens):
        floor.sample()
        fresh = bob.new_session()
        with tool_calls(cluster) as calls:
            cpu_before = time.process_time()
            open_times.append(timed(lambda fresh=fresh: fresh.chat.get_update("alice")))  # type: ignore[misc]
            open_cpu.append(time.process_time() - cpu_before)
        open_rounds.append(read_rounds(calls))

    send_t: list[float] = []
    send_page_t: list[float] = []
    new_t: list[float] = []
    idle_t: list[float] = []
    send_reads, send_writes, idle_rounds, new_rounds, idle_private, idle_writes = [], [], [], [], [], []
    for i in range(loops):
        floor.sample()
        page = own_page(alice, "bob")
        with tool_calls(cluster) as calls:
            spent = timed(lambda i=i: alice.chat.send_message(f"{SHORT_TEXT[:-3]}{i % 1000:03d}", "bob"))  # type: ignore[misc]
        (send_page_t if own_page(alice, "bob") != page else send_t).append(spent)
        send_reads.append(sum(1 for c in calls if c.cmd.startswith("get")))
        send_writes.append(sum(1 for c in calls if c.cmd.startswith("set")))
        with tool_calls(cluster) as calls:
            new_t.append(timed(lambda: bob.chat.get_update("alice")))
        new_rounds.append(read_rounds(calls))
        before = bob.private_ops()
        with tool_calls(cluster) as calls:
            idle_t.append(timed(lambda: bob.chat.get_update("alice")))
        idle_rounds.append(read_rounds(calls))
        idle_writes.append(sum(1 for c in calls if c.cmd.startswith("set")))
        idle_private.append(bob.private_ops() - before)
        alice.chat.get_update("bob")  # alice sees her messages delivered, as a chat window would

    result: dict[str, Any] = {
        "send": summary_ms(send_t),
        "update_idle": summary_ms(idle_t),
        "update_1_new": summary_ms(new_t),
        f"open_chat_{conversation}": summary_ms(open_times) | {
            "cpu_median_ms": round(statistics.median(open_cpu) * 1000, 2)},
        "idle_update_private_key_ops_max": max(idle_private),
    }
    if send_page_t:
        result["send_new_page"] = summary_ms(send_page_t)
    if cluster is not None:
        result["rounds"] = {
            "send_gets_max": max(send_reads),
            "send_sets_max": max(send_writes),
            "update_idle_max": max(idle_rounds),
            "update_idle_sets_max": max(idle_writes),
            "update_1_new_max": max(new_rounds),
            f"open_chat_{conversation}_max": max(open_rounds),
        }
    return result


def measure_lone_calls(cluster: StandInCluster, reps: int) -> dict[str, Any]:
    """One bare get and one bare set through the stand-in tool: what one round trip costs here."""
    ledger = ResilientDBLedger(cluster.tool, cluster.config, timeout_s=60)
    probe = "reschat2-" + "0" * 48
    ledger.set(probe, "x")
    gets = [timed(lambda: ledger.get(probe)) for _ in range(reps)]
    sets = [timed(lambda: ledger.set(probe, "x")) for _ in range(reps)]
    return {
        "get_median_ms": round(statistics.median(gets) * 1000, 1),
        "set_median_ms": round(statistics.median(sets) * 1000, 1),
        "n": reps,
    }


# --- an open chat: from a friend's send to the screen, and the reads of an idle chat ------------------


def measure_live(
    root: Path, keys: Sequence[RSA.RsaKey], ledger: Ledger, backend: str, messages: int, seed: int = 7
) -> dict[str, Any]:
    """Bob has the chat open: the menus' own Poller runs get_update at the menus' own cadence
    (``reschat.menus.poll_gap``, the conversation active), and each message new to him is formatted for
    the screen. Alice sends ``messages`` messages at random moments, so that they fall anywhere in the
    poll cycle; the latency of one is from the start of her send to the moment his poll formatted it."""
    alice, bob = make_pair(root, ledger, keys)
    alice.chat.send_message("warm-up", "bob")
    bob.chat.get_update("alice")
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    rounds: list[float] = []
    all_seen = threading.Event()

    def tick() -> None:
        start = time.perf_counter()
        view = bob.chat.get_update("alice")
        for message in view.new_messages:
            format_message(message)
            seen.setdefault(message.text, time.perf_counter())
        rounds.append(time.perf_counter() - start)
        if len(seen) >= messages + 1:
            all_seen.set()

    def gap() -> float:  # a message was just sent or received: the conversation stays active
        return poll_gap(backend=backend, interval=DEFAULT_POLL_INTERVAL_S, since_activity=0.0)

    chance = random.Random(seed)
    seen["warm-up"] = 0.0
    with Poller(gap, tick):
        for i in range(messages):
            time.sleep(chance.uniform(0.3, 0.9))
            text = f"live {i}"
            sent[text] = time.perf_counter()
            alice.chat.send_message(text, "bob")
        if not all_seen.wait(60):
            raise RuntimeError(f"the open chat never showed {sorted(set(sent) - set(seen))}")
    latencies = [seen[text] - sent[text] for text in sent]
    return {
        "send_to_screen": summary_ms(latencies),
        "poll_gap_active_ms": round(gap() * 1000),
        "poll_round": summary_ms(rounds),
        "messages": messages,
    }


def idle_reads_per_minute(
    root: Path, keys: Sequence[RSA.RsaKey], idle_round_ms: float, backend: str
) -> dict[str, Any]:
    """Ledger reads per minute of an open chat that stays quiet: rounds of get_update (each counted on
    the memory ledger) every configured interval, as poll_gap says, plus the time a round takes."""
    ledger = MemoryLedger()
    alice, bob = make_pair(root / "idle", ledger, keys)
    for i in range(3):  # a conversation both have written to, then quiet
        alice.chat.send_message(f"a{i}", "bob")
        bob.chat.get_update("alice")
        bob.chat.send_message(f"b{i}", "alice")
        alice.chat.get_update("bob")
    bob.chat.get_update("alice")
    ledger.operations.clear()
    bob.chat.get_update("alice")
    gets = sum(1 for op, _ in ledger.operations if op == "get")
    quiet = poll_gap(backend=backend, interval=DEFAULT_POLL_INTERVAL_S, since_activity=ACTIVE_WINDOW_S)
    active = poll_gap(backend=backend, interval=DEFAULT_POLL_INTERVAL_S, since_activity=0.0)
    per_minute = 60 / (quiet + idle_round_ms / 1000)
    return {
        "gets_per_round": gets,
        "poll_gap_quiet_s": quiet,
        "rounds_per_minute": round(per_minute, 1),
        "reads_per_minute": round(per_minute * gets),
        "reads_per_minute_while_active": round(60 / (active + idle_round_ms / 1000) * gets),
        "assumes": f"poll_interval {DEFAULT_POLL_INTERVAL_S} s, one friend (no other friends' counts), "
        f"an idle round of {idle_round_ms:.0f} ms",
    }


# --- opening against the length of the history ---------------------------------------------------


def append_filler_pages(person: Person, friend_nickname: str, count: int, records: int = 1) -> None:
    """Extend ``person``'s lane by ``count`` genuine pages of ``records`` records each, signed with the real key.

    Built with the engine's own ``lane.new_page`` and ``lane.add_record`` and kept in its outbox state,
    so the lane stays one valid, signed hash chain and later ``send_message`` calls continue it. Each
    page is keyed, as the engine keys it, to the friend's newest announced receive key (here: the static
    keys of their card, since this writer never reads), and announces one receive key of the writer's
    (generated once, kept in its key store). A page of one record is as valid as a full one; it keeps
    the cost of a deep history to two signatures per page (header and record) instead of 21.
    """
    if count < 1:
        return
    chat = person.chat
    pair = chat._pair(friend_nickname)
    with pair.store.lock():
        state = pair.store.load()
        own = OwnLane.from_dict(state.mine)
        if own.epoch == 0:
            own.restart(1)  # nothing of this lane is on the ledger yet
        readers = chat._readers(state, pair)
        announced = kem.ReceiveKey.generate()
        index = max((entry.index for entry in state.receive_keys), default=0) + 1
        state.receive_keys.append(ReceiveKeyEntry(index=index, key=announced.to_dict()))
        now = datetime.now(timezone.utc)
        for _ in range(count):
            now += timedelta(microseconds=1)
            number, seq = own.page + 1, own.seq + 1
            sealed, header, secret = lane.new_page(
                conversation=pair.conversation, writer=chat.my_fingerprint, epoch=own.epoch, number=number,
                first_seq=seq, link=bytes.fromhex(own.head), readers=readers,
                next_receive_key=announced.public, created=to_micros(now), signer=chat._sign,
            )
            head = own.head
            for i in range(records):
                now += timedelta(microseconds=1)
                record = Record(
                    type="text", seq=seq + i, prev=bytes.fromhex(head), timestamp=now,
                    causal=(state.theirs.epoch, state.theirs.seq), type_ext="", body=f"filler {seq + i}".encode(),
                )
                sealed, _signed, digest = lane.add_record(sealed, header, secret, record, chat._sign)
                head = digest.hex()
            seq += records - 1
            value = sealed.to_string()
            chat.ledger.set(chat.lane_address(friend_nickname, mine=True, number=number, epoch=own.epoch), value)
            chat._write_hint(pair, own.epoch, number)  # as the engine does after starting a page
            own.page, own.seq, own.head = number, seq, head
            own.secrets[page_id(own.epoch, number)] = secret.hex()
            own.pages[str(number)] = value
            own.last_seq[str(number)] = seq
            own.written_at[str(number)] = format_timestamp(now)
            own.last_time = format_timestamp(now)
            own.confirmed = seq  # written straight to the ledger, as if read back
            own.prune()
        state.mine = own.to_dict()
        pair.store.save(state)


#: While the history grows, bob reads it every this many pages: as many as one update catches up.
FOLLOW_EVERY_PAGES = chat_module.MAX_CATCH_UP_PAGES


def follow(reader: Person) -> None:
    """One update of ``reader`` in a new session, as ``reschat read`` makes it; nothing may be wrong."""
    view = reader.new_session().chat.get_update("alice")
    assert not view.problems, view.problems


def reader_session(person: Person, kind: str, ledger: Ledger, scratch: Path) -> Person:
    """A new session of ``person``: with its key store (``checkpoint``), or on a copy of its profile
    without it (``no_checkpoint``: no checkpoint of the friend's lane, no receive key, no own lane)."""
    if kind == "checkpoint":
        return person.new_session(ledger)
    home = Path(tempfile.mkdtemp(prefix="no-checkpoint-", dir=scratch))
    shutil.copy(person.home / "friends.json", home / "friends.json")
    return replace(person, home=home).new_session(ledger)


def friend_page_numbers(reader: Person, nickname: str, pages: int) -> dict[str, int]:
    """Ledger key -> page number of the friend's lane (epoch 1), as the reader computes them."""
    return {reader.chat.lane_address(nickname, mine=False, number=n): n for n in range(1, pages + 1)}


def open_once(reader: Person, ledger: OverlayLedger, numbers: dict[str, int]) -> dict[str, Any]:
    """Counts of one opening of the chat with alice by ``reader`` (a fresh session) on ``ledger``."""
    ledger.written.clear()
    holder: list[Any] = []
    counted = observe(ledger, reader, lambda: holder.append(reader.chat.get_update("alice")))
    view = holder[0]
    reads = [key for op, key in ledger.operations if op == "get"]
    unexpected = [p for p in view.problems if p.kind != "restart"]
    assert not unexpected, unexpected
    return {
        "ledger_gets": counted["gets"],
        "ledger_sets": counted["sets"],
        "pages_opened": counted["pages_opened"],
        "private_key_ops": counted["private_key_ops"],
        "kem_decapsulations": counted["kem_decapsulations"],
        # Pages of the deep lane that were read and hold data; the other gets are probes and own pages.
        "friend_pages_read": sorted({numbers[key] for key in reads if key in numbers}),
        "messages_shown": len(view.messages),
    }


def measure_history(
    root: Path, keys: Sequence[RSA.RsaKey], depths: Sequence[int], reps: int, floor: FloorSampler,
    full_pages_up_to: int = 100,
) -> list[dict[str, Any]]:
    """Open a chat whose friend lane has each of ``depths`` pages, as a reader with a checkpoint and as
    one with none: reads, pages opened and time must stay flat. Also the key stores' sizes.

    Only alice writes, and she never reads, so every page of hers is keyed to the static keys of bob's
    card: a reader who lost bob's key store (no checkpoint, none of his receive keys) can still open them.
    Bob follows the chat (a ``reschat read`` every 64 pages), so his checkpoint is the newest page. Pages
    up to ``full_pages_up_to`` hold 20 messages each, the deeper ones one message (to keep the set-up
    short); the newest page of each depth is filled by 19 real ``send_message`` calls.
    """
    memory = MemoryLedger()
    local = LocalLedger(root / "history" / "ledger.sqlite")
    alice, bob = make_pair(root / "history", memory, keys)
    copied: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    pages = 0
    for depth in sorted(depths):
        # Pages up to ``depth`` (one record each), then 19 real messages fill the newest page.
        while pages < depth - 1:
            step = min(FOLLOW_EVERY_PAGES, depth - 1 - pages)
            full = max(0, min(step, full_pages_up_to - pages))
            append_filler_pages(alice, "bob", full, records=PAGE_MESSAGES)
            append_filler_pages(alice, "bob", step - full)
            pages += step
            follow(bob)
        append_filler_pages(alice, "bob", 1)
        pages += 1
        for i in range(PAGE_MESSAGES - 1):
            alice.chat.send_message(f"{SHORT_TEXT[:-3]}{i:03d}", "bob")
        follow(bob)
        copy_ledger(memory, local, copied)
        numbers = friend_page_numbers(bob, "alice", depth)

        row: dict[str, Any] = {
            "pages": depth,
            "writer_key_store_bytes": store_bytes(alice),
            "reader_key_store_bytes": store_bytes(bob),
        }
        for kind in ("checkpoint", "no_checkpoint"):
            overlay = OverlayLedger(memory)
            counts = open_once(reader_session(bob, kind, overlay, root / "history"), overlay, numbers)
            times = []
            for _ in range(reps):
                floor.sample()
                reader = reader_session(bob, kind, OverlayLedger(local), root / "history")
                times.append(timed(lambda reader=reader: reader.chat.get_update("alice")))  # type: ignore[misc]
            row[kind] = {**counts, "local_median_ms": round(statistics.median(times) * 1000, 2),
                         "local_best_ms": round(min(times) * 1000, 2)}
        rows.append(row)
    local.close()
    return rows


# --- the key store with and without disappearing messages ---------------------------------------------

#: The disappearing conversation's timer, and the simulated time between two of alice's messages: a
#: page of 20 is 10 minutes of conversation, so about six pages are younger than the timer at any time.
DISAPPEAR_S = 3600
MESSAGE_GAP = timedelta(seconds=30)


class SimulatedClock:
    """A clock that moves only when told, shared by both sides of a conversation."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def measure_key_store(root: Path, keys: Sequence[RSA.RsaKey], depths: Sequence[int]) -> list[dict[str, Any]]:
    """The local key store (``lanes/*.state``) and the kept page copies (``lanes/*.pages/``) of both sides
    after N pages, in one conversation without a timer and in one with disappearing messages (1 hour).

    The same conversation both times, through the engine's own ``send_message`` and ``get_update`` on a
    simulated clock: alice sends 20 messages a page, 30 s apart; after each page both sides update (bob
    reads the page, alice sees it delivered), as two open chats would. With the timer, what has expired
    is deleted at each update: pages older than an hour keep no key and no copy.
    """
    rows: dict[int, dict[str, Any]] = {depth: {"pages": depth} for depth in depths}
    for mode, timer in (("off", 0), ("disappearing", DISAPPEAR_S)):
        clock = SimulatedClock()
        ledger = MemoryLedger()
        alice, bob = make_pair(root / f"key-store-{mode}", ledger, keys)
        alice = replace(alice, chat=ChatService(alice.identity, alice.friends, ledger, alice.home / "lanes",
                                                clock=clock))
        bob = replace(bob, chat=ChatService(bob.identity, bob.friends, ledger, bob.home / "lanes", clock=clock))
        if timer:
            alice.chat.set_disappearing("bob", timer)
            bob.chat.get_update("alice")  # bob sees the setting and adopts it
        for depth in sorted(depths):
            while not (own_page(alice, "bob") >= depth and current_page_full(alice, "bob")):
                clock.now += MESSAGE_GAP
                alice.chat.send_message(SHORT_TEXT, "bob")
                if current_page_full(alice, "bob"):
                    bob.chat.get_update("alice")
                    alice.chat.get_update("bob")
            rows[depth][mode] = {
                "writer_key_store_bytes": store_bytes(alice), "reader_key_store_bytes": store_bytes(bob),
                "writer_copies_bytes": copies_bytes(alice), "reader_copies_bytes": copies_bytes(bob),
                "writer_pages": own_page(alice, "bob"),
            }
    return [rows[depth] for depth in sorted(depths)]


def copy_ledger(source: MemoryLedger, target: Ledger, copied: dict[str, str]) -> None:
    """Copy what changed in ``source`` since the last copy into ``target``."""
    for key in source.keys():  # noqa: SIM118 - a ledger, not a dict
        value = source.get(key)
        if value is not None and copied.get(key) != value:
            target.set(key, value)
            copied[key] = value


# --- targets, table, main -------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    passed: bool
    measured: str


@dataclass
class Report:
    results: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)


def flat(history: list[dict[str, Any]], kind: str) -> tuple[bool, str]:
    """Whether opening as ``kind`` stays flat over the history depths, and the figures that say so.

    Flat means the work does not grow with the history: from FLAT_FROM_PAGES pages on (where the
    window and the rotation are complete) the ledger reads, the pages opened, the KEM decapsulations
    and the writes of one opening vary by at most FLAT_SLACK. Those counts are exact; the times (best
    of n, printed beside them) move with the load of a shared machine and are not part of the check.
    """
    rows = [row for row in history if row["pages"] >= FLAT_FROM_PAGES] or history
    counted = {
        name: [row[kind][field] for row in rows]
        for name, field in (("gets", "ledger_gets"), ("pages opened", "pages_opened"),
                            ("KEM decapsulations", "kem_decapsulations"), ("writes", "ledger_sets"))
    }
    best = [row[kind]["local_best_ms"] for row in rows]
    passed = all(max(values) <= min(values) + FLAT_SLACK for values in counted.values())
    depths = "/".join(str(row["pages"]) for row in rows)
    figures = ", ".join(f"{name} {'/'.join(map(str, values))}" for name, values in counted.items())
    return passed, f"for {depths} pages: {figures}; best time {'/'.join(f'{b:.1f}' for b in best)} ms"


def check_targets(results: dict[str, Any], conversation: int) -> list[Target]:
    ops = results["operations"]
    local = results["latency"]["local"]
    standin = results["latency"].get("resilientdb_standin")
    send = ops["send"]
    idle = ops["update_idle"]
    targets = [
        Target(
            "send (in an open chat): exactly one ledger write and no read",
            (send["gets"], send["sets"]) == (0, 1)
            and (standin is None or (standin["rounds"]["send_sets_max"], standin["rounds"]["send_gets_max"]) == (1, 0)),
            f"{send['sets']} set, {send['gets']} get, {send['rsa_signs']} RSA sign",
        ),
        Target(
            "send on the local ledger <= 1.5 x crypto floor (median)",
            local["send"]["median_x_floor"] <= 1.5,
            f"{local['send']['median_x_floor']} x",
        ),
        Target(
            "idle update: no private-key operation (RSA, KEM decapsulation, static agreement) and no write",
            idle["private_key_ops"] == 0 and idle["sets"] == 0 and local["idle_update_private_key_ops_max"] == 0
            and (standin is None or (
                standin["idle_update_private_key_ops_max"], standin["rounds"]["update_idle_sets_max"]) == (0, 0)),
            f"{idle['private_key_ops']} private-key ops, {idle['sets']} sets",
        ),
    ]
    if standin is not None:
        lone_get = results["standin_lone_calls"]["get_median_ms"]
        targets.append(Target(
            "idle update on the ResilientDB stand-in: one concurrent round of reads",
            standin["rounds"]["update_idle_max"] <= 1,
            f"{standin['rounds']['update_idle_max']} round(s), median "
            f"{standin['update_idle']['median_ms']:.0f} ms vs lone get {lone_get:.0f} ms",
        ))
    opening = local[f"open_chat_{conversation}"]
    in_cpu = f" (in CPU time: {opening['cpu_median_x_cpu_floor']} x)" if "cpu_median_x_cpu_floor" in opening else ""
    targets.append(Target(
        f"opening a {conversation}-message chat on the local ledger <= 2 x crypto floor (median)",
        opening["median_x_floor"] <= 2.0,
        f"{opening['median_x_floor']} x{in_cpu}",
    ))
    history = results["history"]
    for kind, label in (("checkpoint", "with a checkpoint"), ("no_checkpoint", "with no checkpoint")):
        passed, measured = flat(history, kind)
        targets.append(Target(
            f"opening stays flat from 1 to {history[-1]['pages']} pages, reader {label} (reads, pages opened,"
            f" decapsulations and writes +-{FLAT_SLACK} from {FLAT_FROM_PAGES} pages on)",
            passed, measured,
        ))
    short = results["bytes"]["text_10_chars"]["stored_bytes_per_message"]
    targets.append(Target(
        f"bytes per 10-character message (a full page / 20, RSA-3072) <= {MAX_BYTES_PER_SHORT_MESSAGE / 1000:.1f} KB",
        short <= MAX_BYTES_PER_SHORT_MESSAGE,
        f"{short:.0f} bytes",
    ))
    live_http = results.get("live_chat_http_standin")
    if live_http is not None:
        median = live_http["send_to_screen"]["median_ms"]
        targets.append(Target(
            "an open chat through the HTTP gateway set to the cluster's timings: a friend's send to the screen"
            f" <= {LIVE_TARGET_MS} ms (median, conversation active)",
            median <= LIVE_TARGET_MS,
            f"{median:.0f} ms (p95 {live_http['send_to_screen']['p95_ms']:.0f} ms; rounds"
            f" {live_http['poll_gap_active_ms']} ms apart, a round {live_http['poll_round']['median_ms']:.0f} ms)",
        ))
    return targets


def _ops_row(label: str, o: dict[str, int]) -> str:
    return (f"| {label} | {o['gets']} | {o['sets']} | {o['rsa_signs']} | {o['kem_decapsulations']} | "
            f"{o['static_agreements']} |")


def format_table(results: dict[str, Any], targets: list[Target], conversation: int) -> str:
    floor = results["crypto_floor"]
    lines = [FLOOR_DEFINITION + ".", ""]
    per_op = ", ".join(f"{op} {ms:.3f}" for op, ms in floor["per_op_median_ms"].items())
    lines.append(f"crypto floor: {floor['floor_ms']:.2f} ms  (medians in ms: {per_op}; the three KEM operations "
                 f"counted 1/{PAGE_MESSAGES})")
    lines.append("")
    header = f"| {'latency':<26} | {'local median':>12} | {'local p95':>9} | {'x floor':>7} |"
    header += f" {'ResilientDB stand-in median':>27} | {'p95':>7} | {'x floor':>7} |"
    lines += [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    standin = results["latency"].get("resilientdb_standin")
    for key, label in (
        ("send", "send"),
        ("send_new_page", "send that starts a page"),
        ("update_idle", "update, no new message"),
        ("update_1_new", "update, 1 new message"),
        (f"open_chat_{conversation}", f"open a {conversation}-message chat"),
    ):
        loc = results["latency"]["local"].get(key)
        if loc is None:
            continue
        row = f"| {label:<26} | {loc['median_ms']:>9.1f} ms | {loc['p95_ms']:>6.1f} ms |"
        row += f" {loc['median_x_floor']:>6.2f}x |"
        rdb = standin.get(key) if standin is not None else None
        if rdb is not None:
            row += f" {rdb['median_ms']:>24.0f} ms | {rdb['p95_ms']:>4.0f} ms | {rdb['median_x_floor']:>6.1f}x |"
        else:
            row += f" {'-':>27} | {'-':>7} | {'-':>7} |"
        lines.append(row)
    opening = results["latency"]["local"].get(f"open_chat_{conversation}", {})
    if "cpu_median_x_cpu_floor" in opening:
        lines += ["", f"in CPU time (this process; other jobs' load left out): opening a {conversation}-message chat "
                  f"{opening['cpu_median_ms']:.1f} ms, the floor {floor['cpu_floor_ms']:.2f} ms: "
                  f"{opening['cpu_median_x_cpu_floor']:.2f} x"]
    if standin is not None:
        lone = results["standin_lone_calls"]
        rounds = standin["rounds"]
        lines.append("")
        lines.append(
            f"stand-in: a lone get takes {lone['get_median_ms']:.0f} ms and a lone set {lone['set_median_ms']:.0f} ms "
            f"here (cluster timings {RDB_GET_S * 1000:.0f}/{RDB_SET_S * 1000:.0f} ms + starting the tool); rounds of "
            f"reads: idle update {rounds['update_idle_max']}, update with 1 new {rounds['update_1_new_max']}, "
            f"open {rounds[f'open_chat_{conversation}_max']}"
        )
    live = results.get("live_chat_resilientdb_standin")
    if live is not None:
        idle = live["idle_chat"]
        lines += [
            "",
            "| an open chat | send to screen, median | p95 | one poll round, median | p95 |",
            "|---|---|---|---|---|",
        ]
        for label, figures in (("kv_service_tools stand-in (a process per call)", live),
                               ("HTTP gateway stand-in", results.get("live_chat_http_standin"))):
            if figures is None:
                continue
            lines.append(
                f"| {label}, rounds {figures['poll_gap_active_ms']} ms apart "
                f"| {figures['send_to_screen']['median_ms']:.0f} ms | {figures['send_to_screen']['p95_ms']:.0f} ms "
                f"| {figures['poll_round']['median_ms']:.0f} ms | {figures['poll_round']['p95_ms']:.0f} ms |"
            )
        lines += [
            "",
            f"idle open chat: {idle['reads_per_minute']} ledger reads per minute ({idle['rounds_per_minute']} rounds "
            f"of {idle['gets_per_round']} gets, {idle['poll_gap_quiet_s']:g} s apart); "
            f"{idle['reads_per_minute_while_active']} per minute while the conversation is active",
        ]
    ops = results["operations"]
    lines += ["", "| ledger and private-key operations (memory ledger) | gets | sets | RSA signs | KEM decapsulations"
              " | static agreements |", "|---|---|---|---|---|---|"]
    for key, label in (("send", "send"), ("update_idle", "update, no new message"),
                       ("update_1_new", "update, 1 new message"), ("open_chat", "open the chat (new session)"),
                       ("send_new_page", "send that starts a page"), ("update_new_page", "update reading a new page")):
        lines.append(_ops_row(label, ops[key]))
    lines += ["", "| bytes on the ledger | per message (full page / 20) | marginal | written per send |",
              "|---|---|---|---|"]
    for label, b in results["bytes"].items():
        lines.append(f"| {label.replace('_', ' ')} | {b['stored_bytes_per_message']:.0f} | "
                     f"{b['marginal_bytes_per_message']:.0f} | {b['bytes_written_per_send_mean']:.0f} |")
    new_page = results["new_page"]
    lines += ["", f"a new page: {new_page['empty_page_bytes']} bytes on the ledger before its first record (one KEM "
              f"slot of {new_page['kem_slot_bytes']} bytes and the sealed header announcing a "
              f"{new_page['announced_key_bytes']}-byte receive key, in base64); writing it "
              f"{new_page['write']['median_ms']:.2f} ms (p95 {new_page['write']['p95_ms']:.2f}), reading it "
              f"{new_page['read']['median_ms']:.2f} ms (p95 {new_page['read']['p95_ms']:.2f}), medians"]
    disk = results["disk_write"]
    lines += ["", f"disk: one crash-safe write of {disk['bytes'] // 1000} KB (what each send does to the key store: "
              f"temporary file, fsync, rename, fsync of the directory) takes {disk['median_ms']:.2f} ms here "
              f"(p95 {disk['p95_ms']:.2f})"]
    heal = results["healing"]
    copies = heal["kept_copies_bytes_per_1000_messages"]
    lines += ["", "| self-healing (memory ledger) | figure |", "|---|---|",
              f"| a wiped conversation of {heal['pages_per_lane']} pages per lane ({heal['values_wiped']} values): "
              f"updates of each friend until every value is back | "
              f"{heal['rounds_of_updates'] if heal['healed'] else 'not healed'} |",
              f"| ledger writes while healing (reads) | {heal['ledger_sets']} ({heal['ledger_gets']}) |",
              f"| kept copies per 1,000 ten-character messages, writer / reader | "
              f"{copies['writer'] / 1e6:.2f} MB / {copies['reader'] / 1e6:.2f} MB |"]
    lines += ["", "| history (pages in the friend's lane) | reader | gets on opening | pages opened | KEM decaps |"
              " writes | open, local median | best | x floor |", "|---|---|---|---|---|---|---|---|---|"]
    for row in results["history"]:
        for kind, label in (("checkpoint", "checkpoint"), ("no_checkpoint", "no checkpoint")):
            r = row[kind]
            lines.append(f"| {row['pages']} | {label} | {r['ledger_gets']} | {r['pages_opened']} | "
                         f"{r['kem_decapsulations']} | {r['ledger_sets']} | {r['local_median_ms']:.1f} ms | "
                         f"{r['local_best_ms']:.1f} ms | {r['local_median_x_floor']:.2f}x |")
    lines += ["", "| key store (lanes/*.state) after N pages | writer (alice) | reader (bob, following) |",
              "|---|---|---|"]
    for row in results["history"]:
        lines.append(
            f"| {row['pages']} | {row['writer_key_store_bytes']} bytes | {row['reader_key_store_bytes']} bytes |"
        )
    store = results.get("key_store")
    if store:
        lines += ["", f"| one conversation, after N pages of alice's (20 messages each, 30 s apart; both update "
                  f"after each page) | key store, writer | key store, reader | with disappearing messages "
                  f"({DISAPPEAR_S // 60} min): writer | reader | page copies, no timer (writer + reader) "
                  f"| page copies, disappearing |", "|---|---|---|---|---|---|---|"]
        for row in store:
            off, gone = row["off"], row["disappearing"]
            lines.append(
                f"| {row['pages']} | {off['writer_key_store_bytes']} bytes | {off['reader_key_store_bytes']} bytes "
                f"| {gone['writer_key_store_bytes']} bytes | {gone['reader_key_store_bytes']} bytes "
                f"| {off['writer_copies_bytes'] + off['reader_copies_bytes']} bytes "
                f"| {gone['writer_copies_bytes'] + gone['reader_copies_bytes']} bytes |"
            )
    lines += ["", "targets:"]
    for target in targets:
        lines.append(f"  {'PASS' if target.passed else 'FAIL'}  {target.name}: {target.measured}")
    return "\n".join(lines)


def use_this_interpreter_for_the_standin() -> None:
    """Let the stand-in tool (``#!/usr/bin/env python3``) start with this interpreter, not a shim."""
    bindir = Path(sys.executable).parent
    if (bindir / "python3").exists():
        os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


def run(
    sizes: Sizes, workdir: Path, *, standin: bool = True, keys: Sequence[RSA.RsaKey] | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Every measurement; returns the figures and the targets checked against them."""
    started, cpu_started = time.perf_counter(), time.process_time()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if keys is None:
        log("generating two RSA-3072 keys...")
        keys = [RSA.generate(crypto.RSA_BITS) for _ in range(2)]
    results: dict[str, Any] = {"sizes": sizes.__dict__ | {"history": list(sizes.history)}}
    stages: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        log(name + "...")
        begun = time.perf_counter()
        yield
        stages[name] = round(time.perf_counter() - begun, 1)

    with counting_kem():
        floor = FloorSampler(keys)
        with stage("crypto floor"):
            floor.sample(sizes.floor_reps)
        with stage("ledger operations, bytes and a new page (memory ledger)"):
            results["operations"] = measure_operations(workdir, keys, sizes)
            results["bytes"] = measure_bytes(workdir, keys)
            results["new_page"] = measure_new_page(keys, sizes.new_page_reps, floor)
            results["disk_write"] = measure_disk(workdir, sizes.new_page_reps)
        with stage("healing a wiped ledger, disk size of the kept copies (memory ledger)"):
            results["healing"] = measure_healing(workdir, keys, sizes.copies_messages)
        with stage("latency on the local ledger"):
            local = LocalLedger(workdir / "local" / "ledger.sqlite")
            results["latency"] = {"local": measure_latency(
                workdir / "local", keys, local, None, sizes.loop_local, sizes.open_local, sizes.conversation, floor
            )}
            local.close()
        with stage("opening against the history length, key-store size"):
            results["history"] = measure_history(
                workdir, keys, sizes.history, sizes.history_open_reps, floor, sizes.history_full_pages
            )
        with stage("the key store with and without disappearing messages"):
            results["key_store"] = measure_key_store(workdir, keys, sizes.key_store_pages)
        if standin:
            with stage("latency on the ResilientDB stand-in (get 190 ms, set 12 ms)"):
                use_this_interpreter_for_the_standin()
                cluster = StandInCluster.create(workdir / "cluster", get_delay_s=RDB_GET_S, set_delay_s=RDB_SET_S)
                results["standin_lone_calls"] = measure_lone_calls(cluster, sizes.lone_standin)
                rdb = ResilientDBLedger(cluster.tool, cluster.config, timeout_s=60)
                results["latency"]["resilientdb_standin"] = measure_latency(
                    workdir / "rdb", keys, rdb, cluster, sizes.loop_standin, sizes.open_standin, sizes.conversation,
                    floor,
                )
            with stage("an open chat on the ResilientDB stand-in: send to screen, idle reads"):
                live = measure_live(workdir / "live", keys, rdb, "resilientdb", sizes.live_messages)
                idle_round = results["latency"]["resilientdb_standin"]["update_idle"]["median_ms"]
                live["idle_chat"] = idle_reads_per_minute(workdir / "live", keys, idle_round, "resilientdb")
                results["live_chat_resilientdb_standin"] = live
            with stage("an open chat through the HTTP gateway stand-in (get 190 ms, set 12 ms)"), \
                    GatewayStandIn() as gateway:
                gateway.delay_s, gateway.commit_delay_s = RDB_GET_S, RDB_SET_S
                http = ResilientDBHttpLedger(gateway.url, timeout_s=60)
                results["live_chat_http_standin"] = measure_live(
                    workdir / "live-http", keys, http, "resilientdb-http", sizes.live_messages
                )
    # The floor is sampled before and between the latency samples; every ratio uses all its samples.
    results["crypto_floor"] = floor.summary()
    add_ratios(results["latency"], results["crypto_floor"]["floor_ms"])
    add_ratios(results["history"], results["crypto_floor"]["floor_ms"])
    add_ratios(results["new_page"], results["crypto_floor"]["floor_ms"])
    opening = results["latency"]["local"][f"open_chat_{sizes.conversation}"]
    cpu_floor = results["crypto_floor"].get("cpu_floor_ms")
    if cpu_floor:
        opening["cpu_median_x_cpu_floor"] = round(opening["cpu_median_ms"] / cpu_floor, 2)
    results["our_design_per_message_ops"] = OUR_DESIGN_OPS
    report = Report(results=results, targets=check_targets(results, sizes.conversation))
    results["targets"] = [{"name": t.name, "passed": t.passed, "measured": t.measured} for t in report.targets]
    results["machine"] = {
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
        # Load averages (1, 5, 15 min) at the start and the end: other jobs on a shared machine.
        "load_at_start": load_at_start, "load_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    results["stage_seconds"] = stages
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    # CPU time of this process (the stand-in's tool processes mostly sleep): on a machine shared with
    # other jobs the wall time grows with their load, this does not.
    results["cpu_time_s"] = round(time.process_time() - cpu_started, 1)
    return report


def main(argv: Sequence[str] | None = None, *, keys: Sequence[RSA.RsaKey] | None = None) -> int:
    """Run, print the table and the targets, write the JSON; 1 when a target fails."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to quote")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write the figures (default {DEFAULT_JSON.name})"
    )
    parser.add_argument("--no-standin", action="store_true", help="skip the ResilientDB stand-in")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    workdir = Path(tempfile.mkdtemp(prefix="reschat-bench-"))
    try:
        report = run(
            sizes, workdir, standin=not args.no_standin, keys=keys, log=lambda text: print(text, file=sys.stderr)
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(format_table(report.results, report.targets, sizes.conversation))
    machine = report.results["machine"]
    print(f"\nload average (1/5/15 min) {machine['load_at_start']} at the start, {machine['load_at_end']} at the end")
    print(f"wall time {report.results['wall_time_s']} s (CPU {report.results['cpu_time_s']} s), by stage: "
          + ", ".join(f"{name} {seconds} s" for name, seconds in report.results["stage_seconds"].items()))
    args.json.write_text(json.dumps(report.results, indent=1) + "\n", encoding="utf-8")
    print(f"figures written to {args.json}")
    return 0 if all(t.passed for t in report.targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
