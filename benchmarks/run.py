"""ResChat benchmarks: latency, ledger operations and bytes per message, against a crypto floor.

Run from the repository root::

    python -m benchmarks.run            # full run, a few minutes at most
    python -m benchmarks.run --quick    # small sizes, for a smoke check
    python -m benchmarks.run --json out.json

It prints a table, checks the performance targets of the engine (PASS/FAIL each, non-zero exit on a
FAIL) and writes every figure as JSON (``benchmarks/results.json`` unless ``--json`` says otherwise).

The *crypto floor* is the bare cost of the RSA and AES operations one message needs end to end in the
seed's per-message hybrid design: the sender signs (RSA-PSS), wraps a fresh AES key for the receiver and
for itself (2 x RSA-OAEP encrypt) and seals the text (AES-256-GCM); the receiver unwraps the key (RSA-OAEP
decrypt), verifies the signature (RSA-PSS) and opens the text. Each is timed with the primitives of
``reschat.crypto`` in the same run, between the latency samples; the floor is the sum of their medians.
Every latency is reported
also as a multiple of that floor.

Two ledgers are measured: the embedded SQLite ledger, and the project's stand-in for ResilientDB's
``kv_service_tools`` set to the real cluster's timings (get 190 ms, set 12 ms). On the stand-in, an open
chat is also measured as the menus run it (their Poller and poll_gap): the time from a friend's send to
the screen while the conversation is active, and the ledger reads per minute of a chat left open and idle.
Ledger operations are counted on the in-memory ledger, which records every operation; whether the reads
of one update form one concurrent round is read from the stand-in's log of each tool call's start and end.
"""

from __future__ import annotations

import argparse
import hashlib
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

from reschat import crypto
from reschat.chat import ChatService, LaneState, page_key
from reschat.friends import FriendStore
from reschat.ledger import Ledger, LocalLedger, MemoryLedger, ResilientDBLedger
from reschat.menus import ACTIVE_WINDOW_S, Poller, poll_gap
from reschat.page import Page, Record, format_timestamp
from reschat.render import format_message
from tests.standin import Call, StandInCluster

DEFAULT_JSON = Path(__file__).with_name("results.json")
#: The real cluster's median latencies (see the project's notes on ResilientDB's KV service).
RDB_GET_S, RDB_SET_S = 0.190, 0.012
SHORT_TEXT = "hello 1234"  # 10 characters
KIB_TEXT = "x" * 1024

FLOOR_DEFINITION = (
    "crypto floor = the RSA and AES operations one message needs end to end in the seed's per-message "
    "hybrid design: RSA-PSS sign + 2 x RSA-OAEP wrap (receiver and sender) + AES-256-GCM seal (sender), "
    "RSA-OAEP unwrap + RSA-PSS verify + AES-256-GCM open (receiver); RSA-3072, SHA-256, a 10-character "
    "text; sum of the medians of each operation timed with reschat.crypto in this run, sampled before and "
    "between the latency samples so that both see the same load"
)
OUR_DESIGN_OPS = {
    "send": "1 RSA-PSS sign + 2 AES-256-GCM seals (self copy, receiver copy); 1 RSA-OAEP wrap per new lane "
    "page only when the lane key is first wrapped in a session",
    "receive": "1 AES-256-GCM open per message; 1 RSA-PSS verify per lane per update that brings new records "
    "(the hash chain authenticates the older ones); 1 RSA-OAEP unwrap of the friend's lane key per session",
}


@dataclass(frozen=True)
class Sizes:
    """How much work one run does."""

    floor_reps: int = 40
    loop_local: int = 30  # send / update rounds on the local ledger
    loop_standin: int = 10
    open_local: int = 15  # fresh sessions opening the 40-message chat
    open_standin: int = 4
    lone_standin: int = 5  # bare tool calls, for reference
    history: tuple[int, ...] = (1, 10, 100, 1000)
    history_open_reps: int = 9
    conversation: int = 40  # messages in the chat that is opened (half each way)
    live_messages: int = 15  # messages sent into an open chat whose poll runs, on the stand-in


QUICK = Sizes(
    floor_reps=5, loop_local=4, loop_standin=2, open_local=2, open_standin=1, lone_standin=1,
    history=(1, 3), history_open_reps=2, conversation=6, live_messages=2,
)
#: The configured poll interval the idle figures assume (config.example.toml's default).
DEFAULT_POLL_INTERVAL_S = 2.0


# --- instruments ----------------------------------------------------------------------------------


class CountingKey(RSA.RsaKey):
    """An RSA private key that counts its private-key operations (PSS signing, OAEP decryption)."""

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
class Person:
    name: str
    home: Path
    key: CountingKey
    identity: crypto.Identity
    friends: FriendStore
    chat: ChatService

    def new_session(self, ledger: Ledger | None = None) -> Person:
        """The same profile opened again: a new ChatService and friend store, so cold in-memory caches."""
        friends = FriendStore(self.home / "friends.json", own_fingerprint=self.friends.own_fingerprint)
        chat = ChatService(self.identity, friends, ledger or self.chat.ledger, self.home / "lanes")
        return replace(self, friends=friends, chat=chat)


def make_person(name: str, key: RSA.RsaKey, home: Path, ledger: Ledger) -> Person:
    counted = counting_key(key)
    identity = crypto.Identity(name=name, private_key=counted)
    own = crypto.fingerprint_bytes(identity.public_key).hex()
    friends = FriendStore(home / "friends.json", own_fingerprint=own)
    return Person(name, home, counted, identity, friends, ChatService(identity, friends, ledger, home / "lanes"))


def make_pair(root: Path, ledger: Ledger, keys: Sequence[RSA.RsaKey]) -> tuple[Person, Person]:
    alice = make_person("alice", keys[0], root / "alice", ledger)
    bob = make_person("bob", keys[1], root / "bob", ledger)
    alice.friends.add_friend("bob", bob.identity.public_key)
    bob.friends.add_friend("alice", alice.identity.public_key)
    return alice, bob


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


def measure_floor(keys: Sequence[RSA.RsaKey], reps: int, text: str = SHORT_TEXT) -> dict[str, list[float]]:
    """Time each operation of the seed's per-message hybrid design with reschat.crypto, ``reps`` times."""
    sender, receiver = keys[0], keys[1]
    sender_pub, receiver_pub = sender.public_key(), receiver.public_key()
    body = text.encode()
    aad = b"reschat-benchmark"
    # What a per-message design signs: the header and both sealed copies (about 500 bytes).
    signed = os.urandom(480)
    samples: dict[str, list[float]] = {
        "rsa_pss_sign": [], "rsa_oaep_wrap": [], "aes_gcm_seal": [],
        "rsa_oaep_unwrap": [], "rsa_pss_verify": [], "aes_gcm_open": [],
    }
    for _ in range(reps):
        message_key = crypto.new_symmetric_key()
        start = time.perf_counter()
        sealed = crypto.encrypt_message(message_key, body, aad)
        t_seal = time.perf_counter()
        wrapped = crypto.wrap_key(receiver_pub, message_key)
        crypto.wrap_key(sender_pub, message_key)
        t_wrap = time.perf_counter()
        signature = crypto.sign(sender, signed)
        t_sign = time.perf_counter()
        unwrapped = crypto.unwrap_key(receiver, wrapped)
        t_unwrap = time.perf_counter()
        ok = crypto.verify(sender_pub, signed, signature)
        t_verify = time.perf_counter()
        opened = crypto.decrypt_message(unwrapped, sealed, aad)
        t_open = time.perf_counter()
        assert ok and opened == body
        samples["aes_gcm_seal"].append(t_seal - start)
        samples["rsa_oaep_wrap"].append((t_wrap - t_seal) / 2)
        samples["rsa_pss_sign"].append(t_sign - t_wrap)
        samples["rsa_oaep_unwrap"].append(t_unwrap - t_sign)
        samples["rsa_pss_verify"].append(t_verify - t_unwrap)
        samples["aes_gcm_open"].append(t_open - t_verify)
    return samples


def floor_summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    per_op = {op: round(statistics.median(times) * 1000, 3) for op, times in samples.items()}
    count = {"rsa_oaep_wrap": 2}
    total = sum(per_op[op] * count.get(op, 1) for op in per_op)
    return {
        "definition": FLOOR_DEFINITION,
        "per_op_median_ms": per_op,
        "op_counts": {op: count.get(op, 1) for op in per_op},
        "floor_ms": round(total, 3),
        "n": len(next(iter(samples.values()))),
    }


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


def measure_operations(root: Path, keys: Sequence[RSA.RsaKey], sizes: Sizes) -> dict[str, Any]:
    """Ledger operations and private-key operations per send and per update, on the memory ledger."""
    ledger = MemoryLedger()
    alice, bob = make_pair(root / "ops", ledger, keys)
    for i in range(sizes.conversation // 2):
        alice.chat.send_message(f"a{i}", "bob")
        bob.chat.get_update("alice")
        bob.chat.send_message(f"b{i}", "alice")
        alice.chat.get_update("bob")

    def observe(person: Person, action: Callable[[], object]) -> dict[str, int]:
        ledger.operations.clear()
        before = person.key.private_ops
        action()
        ops = [op for op, _ in ledger.operations]
        return {"gets": ops.count("get"), "sets": ops.count("set"), "private_key_ops": person.key.private_ops - before}

    send = observe(alice, lambda: alice.chat.send_message(SHORT_TEXT, "bob"))
    update_new = observe(bob, lambda: bob.chat.get_update("alice"))
    update_idle = observe(bob, lambda: bob.chat.get_update("alice"))
    fresh = bob.new_session()
    opening = observe(fresh, lambda: fresh.chat.get_update("alice"))
    return {
        "messages_in_chat": sizes.conversation + 1,
        "send": send,
        "update_1_new": update_new,
        "update_idle": update_idle,
        "open_chat": opening,
    }


def measure_bytes(root: Path, keys: Sequence[RSA.RsaKey]) -> dict[str, Any]:
    """Bytes on the ledger per message: one full page (20 records) of each text size in a new chat."""
    ledger = MemoryLedger()
    alice, bob = make_pair(root / "bytes", ledger, keys)
    conversation = crypto.conversation_id(alice.identity.public_key, bob.identity.public_key)
    result: dict[str, Any] = {}
    for page, (label, text) in enumerate((("text_10_chars", SHORT_TEXT), ("text_1_kib", KIB_TEXT)), start=1):
        key = page_key(conversation, alice.chat.my_fingerprint, page)
        written = 0
        first = 0
        for i in range(20):
            alice.chat.send_message(text, "bob")
            value = ledger.get(key) or ""
            written += len(value)
            if i == 0:
                first = len(value)
        full = len(ledger.get(key) or "")
        result[label] = {
            "text_bytes": len(text.encode()),
            "page_bytes_20_messages": full,
            "stored_bytes_per_message": round(full / 20, 1),
            "marginal_bytes_per_message": round((full - first) / 19, 1),
            "bytes_written_per_send_mean": round(written / 20, 1),
        }
    return result


# --- latency on a ledger --------------------------------------------------------------------------


def measure_latency(
    root: Path, keys: Sequence[RSA.RsaKey], ledger: Ledger, cluster: StandInCluster | None,
    loops: int, opens: int, conversation: int, floor: FloorSampler,
) -> dict[str, Any]:
    """Send, update (idle, 1 new message) and opening a chat, on ``ledger``."""
    alice, bob = make_pair(root, ledger, keys)
    for i in range(conversation // 2):
        alice.chat.send_message(f"a{i}", "bob")
        bob.chat.send_message(f"b{i}", "alice")
    alice.chat.get_update("bob")
    bob.chat.get_update("alice")

    # A fresh session of bob opens the chat of ``conversation`` messages each time; nobody writes
    # in between, so every opening sees the same conversation.
    open_times: list[float] = []
    open_rounds: list[int] = []
    for _ in range(opens):
        floor.sample()
        fresh = bob.new_session()
        with tool_calls(cluster) as calls:
            open_times.append(timed(lambda fresh=fresh: fresh.chat.get_update("alice")))  # type: ignore[misc]
        open_rounds.append(read_rounds(calls))

    send_t: list[float] = []
    new_t: list[float] = []
    idle_t: list[float] = []
    send_reads, send_writes, idle_rounds, new_rounds, idle_private = [], [], [], [], []
    for i in range(loops):
        floor.sample()
        with tool_calls(cluster) as calls:
            send_t.append(timed(lambda i=i: alice.chat.send_message(f"{SHORT_TEXT[:-3]}{i % 1000:03d}", "bob")))  # type: ignore[misc]
        send_reads.append(sum(1 for c in calls if c.cmd.startswith("get")))
        send_writes.append(sum(1 for c in calls if c.cmd.startswith("set")))
        with tool_calls(cluster) as calls:
            new_t.append(timed(lambda: bob.chat.get_update("alice")))
        new_rounds.append(read_rounds(calls))
        before = bob.key.private_ops
        with tool_calls(cluster) as calls:
            idle_t.append(timed(lambda: bob.chat.get_update("alice")))
        idle_rounds.append(read_rounds(calls))
        idle_private.append(bob.key.private_ops - before)
        alice.chat.get_update("bob")  # alice sees her messages delivered, as a chat window would

    result: dict[str, Any] = {
        "send": summary_ms(send_t),
        "update_idle": summary_ms(idle_t),
        "update_1_new": summary_ms(new_t),
        f"open_chat_{conversation}": summary_ms(open_times),
        "idle_update_private_key_ops_max": max(idle_private),
    }
    if cluster is not None:
        result["rounds"] = {
            "send_gets_max": max(send_reads),
            "send_sets_max": max(send_writes),
            "update_idle_max": max(idle_rounds),
            "update_1_new_max": max(new_rounds),
            f"open_chat_{conversation}_max": max(open_rounds),
        }
    return result


def measure_lone_calls(cluster: StandInCluster, reps: int) -> dict[str, Any]:
    """One bare get and one bare set through the stand-in tool: what one round trip costs here."""
    ledger = ResilientDBLedger(cluster.tool, cluster.config, timeout_s=60)
    ledger.set("reschat-benchmark-probe", "x")
    gets = [timed(lambda: ledger.get("reschat-benchmark-probe")) for _ in range(reps)]
    sets = [timed(lambda: ledger.set("reschat-benchmark-probe", "x")) for _ in range(reps)]
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


def append_filler_pages(person: Person, friend_nickname: str, count: int) -> None:
    """Extend ``person``'s lane by ``count`` genuine pages of one record each, signed with the real key.

    Built with the engine's own pieces (Page, Record, reschat.crypto) and its outbox state, so the lane
    stays one valid signed hash chain and later send_message calls continue it. A page of one record is
    as valid as a full one; it only keeps the cost of a deep history to one signature per page.
    """
    chat = person.chat
    friend = person.friends.get_friend(friend_nickname)
    conversation = crypto.conversation_id(person.identity.public_key, friend.key)
    state = chat._load_state(conversation) or LaneState()
    wrapped = crypto.wrap_key(friend.key, chat._lane_key(conversation))
    now = datetime.now(timezone.utc)
    for _ in range(count):
        seq, number = state.seq + 1, state.page + 1
        now += timedelta(microseconds=1)
        body = f"filler {seq}".encode()
        aad = chat._aad
        record = Record(
            receiver=friend.fingerprint, type="text", timestamp=now, type_ext="",
            for_sender=crypto.encrypt_message(
                chat._self_key(conversation), body, aad(conversation, chat.my_fingerprint, seq, "s")
            ),
            for_receiver=crypto.encrypt_message(
                chat._lane_key(conversation), body, aad(conversation, chat.my_fingerprint, seq, "r")
            ),
            seq=seq, prev=bytes.fromhex(state.head),
        )
        page = Page(conversation, chat.my_fingerprint, number, wrapped)
        signed = record.signed_bytes(conversation, chat.my_fingerprint, page.wrap_digest)
        page.add_message(replace(record, signature=crypto.sign(person.identity.private_key, signed)))
        value = page.to_string()
        chat.ledger.set(page_key(conversation, chat.my_fingerprint, number), value)
        state.page, state.seq, state.head = number, seq, hashlib.sha256(signed).hexdigest()
        state.last_time = format_timestamp(now)
        state.confirmed_seq = seq
        state.pages = {str(number): value}
        state.written_at = {str(number): format_timestamp(now)}
    chat._save_state(conversation, state)


def copy_ledger(source: MemoryLedger, target: Ledger, copied: dict[str, str]) -> None:
    """Copy what changed in ``source`` since the last copy into ``target``."""
    for key in source.keys():  # noqa: SIM118 - a ledger, not a dict
        value = source.get(key)
        if value is not None and copied.get(key) != value:
            target.set(key, value)
            copied[key] = value


def measure_history(
    root: Path, keys: Sequence[RSA.RsaKey], depths: Sequence[int], reps: int, floor: FloorSampler
) -> list[dict[str, Any]]:
    """Open a chat whose friend lane has each of ``depths`` pages: reads and time must stay flat."""
    memory = MemoryLedger()
    local = LocalLedger(root / "history" / "ledger.sqlite")
    alice, bob = make_pair(root / "history", memory, keys)
    lane = f"-{alice.chat.my_fingerprint[:32]}-"
    copied: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    pages = 0
    for depth in sorted(depths):
        # Pages up to ``depth`` (one record each), then 19 real messages fill the newest page.
        append_filler_pages(alice, "bob", depth - pages)
        for i in range(19):
            alice.chat.send_message(f"{SHORT_TEXT[:-3]}{i:03d}", "bob")
        pages = depth
        bob.chat.get_update("alice")  # bob follows the chat: his friend store knows the newest page
        copy_ledger(memory, local, copied)

        fresh = bob.new_session()
        memory.operations.clear()
        view = fresh.chat.get_update("alice")
        reads = [key for op, key in memory.operations if op == "get"]
        assert not view.problems, view.problems
        stored = set(memory.keys())
        times = []
        for _ in range(reps):
            floor.sample()
            times.append(timed(lambda: bob.new_session(local).chat.get_update("alice")))
        med = statistics.median(times) * 1000
        rows.append({
            "pages": depth,
            "ledger_gets": len(reads),
            "ledger_sets": sum(1 for op, _ in memory.operations if op == "set"),
            # Pages that hold data, read from the deep lane; the other gets are probes past its end.
            "pages_with_data_read": sorted(
                int(key.rsplit("-", 1)[1]) for key in reads if key in stored and lane in key
            ),
            "messages_shown": len(view.messages),
            "local_median_ms": round(med, 2),
        })
    local.close()
    return rows


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


def check_targets(results: dict[str, Any], conversation: int) -> list[Target]:
    ops = results["operations"]
    local = results["latency"]["local"]
    standin = results["latency"].get("resilientdb_standin")
    targets = [
        Target(
            "send: exactly one ledger write and no read",
            ops["send"] == {"gets": 0, "sets": 1, "private_key_ops": 1}
            and (standin is None or (standin["rounds"]["send_sets_max"], standin["rounds"]["send_gets_max"]) == (1, 0)),
            f"{ops['send']['sets']} set, {ops['send']['gets']} get",
        ),
        Target(
            "send on the local ledger <= 1.5 x crypto floor (median)",
            local["send"]["median_x_floor"] <= 1.5,
            f"{local['send']['median_x_floor']} x",
        ),
        Target(
            "idle update: no private-key operation",
            ops["update_idle"]["private_key_ops"] == 0 and local["idle_update_private_key_ops_max"] == 0
            and (standin is None or standin["idle_update_private_key_ops_max"] == 0),
            f"{ops['update_idle']['private_key_ops']} private-key ops, {ops['update_idle']['sets']} sets",
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
    targets.append(Target(
        f"opening a {conversation}-message chat on the local ledger <= 2 x crypto floor (median)",
        opening["median_x_floor"] <= 2.0,
        f"{opening['median_x_floor']} x",
    ))
    history = results["history"]
    newest_only = all(
        row["pages_with_data_read"] == [n for n in (row["pages"] - 1, row["pages"]) if n >= 1] for row in history
    )
    # A probe past the end of a lane that lands on a page already read is not read twice, so the
    # count may differ by a read or two between depths; it must not grow with the depth.
    gets = [row["ledger_gets"] for row in history]
    targets.append(Target(
        "opening reads only the two newest pages of a deep lane, whatever the history length",
        newest_only and max(gets) <= min(gets) + 2,
        "gets " + "/".join(map(str, gets)) + " for " + "/".join(str(row["pages"]) for row in history)
        + " pages; pages with data read: " + ", ".join(str(row["pages_with_data_read"]) for row in history),
    ))
    return targets


def format_table(results: dict[str, Any], targets: list[Target], conversation: int) -> str:
    floor = results["crypto_floor"]
    lines = [FLOOR_DEFINITION + ".", ""]
    per_op = ", ".join(f"{op} {ms:.2f}" for op, ms in floor["per_op_median_ms"].items())
    lines.append(f"crypto floor: {floor['floor_ms']:.1f} ms  (medians in ms: {per_op}; wrap counted twice)")
    lines.append("")
    header = f"| {'latency':<26} | {'local median':>12} | {'local p95':>9} | {'x floor':>7} |"
    header += f" {'ResilientDB stand-in median':>27} | {'p95':>7} | {'x floor':>7} |"
    lines += [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    standin = results["latency"].get("resilientdb_standin")
    for key, label in (
        ("send", "send"),
        ("update_idle", "update, no new message"),
        ("update_1_new", "update, 1 new message"),
        (f"open_chat_{conversation}", f"open a {conversation}-message chat"),
    ):
        loc = results["latency"]["local"][key]
        row = f"| {label:<26} | {loc['median_ms']:>9.1f} ms | {loc['p95_ms']:>6.1f} ms |"
        row += f" {loc['median_x_floor']:>6.2f}x |"
        if standin is not None:
            rdb = standin[key]
            row += f" {rdb['median_ms']:>24.0f} ms | {rdb['p95_ms']:>4.0f} ms | {rdb['median_x_floor']:>6.1f}x |"
        else:
            row += f" {'-':>27} | {'-':>7} | {'-':>7} |"
        lines.append(row)
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
            "| an open chat on the ResilientDB stand-in | median | p95 |",
            "|---|---|---|",
            f"| a friend's send to the screen, conversation active (rounds {live['poll_gap_active_ms']} ms apart) "
            f"| {live['send_to_screen']['median_ms']:.0f} ms | {live['send_to_screen']['p95_ms']:.0f} ms |",
            f"| one poll round while messages arrive | {live['poll_round']['median_ms']:.0f} ms "
            f"| {live['poll_round']['p95_ms']:.0f} ms |",
            "",
            f"idle open chat: {idle['reads_per_minute']} ledger reads per minute ({idle['rounds_per_minute']} rounds "
            f"of {idle['gets_per_round']} gets, {idle['poll_gap_quiet_s']:g} s apart); "
            f"{idle['reads_per_minute_while_active']} per minute while the conversation is active",
        ]
    ops = results["operations"]
    lines += ["", "| ledger operations (memory ledger) | gets | sets | private-key ops |", "|---|---|---|---|"]
    for key, label in (("send", "send"), ("update_idle", "update, no new message"),
                       ("update_1_new", "update, 1 new message"), ("open_chat", "open the chat (new session)")):
        o = ops[key]
        lines.append(f"| {label} | {o['gets']} | {o['sets']} | {o['private_key_ops']} |")
    lines += ["", "| bytes on the ledger | per message (full page / 20) | marginal | written per send |",
              "|---|---|---|---|"]
    for label, b in results["bytes"].items():
        lines.append(f"| {label.replace('_', ' ')} | {b['stored_bytes_per_message']:.0f} | "
                     f"{b['marginal_bytes_per_message']:.0f} | {b['bytes_written_per_send_mean']:.0f} |")
    lines += ["", "| history (pages in the friend's lane) | gets on opening | its pages read | open, local median"
              " | x floor |", "|---|---|---|---|---|"]
    for row in results["history"]:
        lines.append(f"| {row['pages']} | {row['ledger_gets']} | {', '.join(map(str, row['pages_with_data_read']))} | "
                     f"{row['local_median_ms']:.1f} ms | {row['local_median_x_floor']:.2f}x |")
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
    started = time.perf_counter()
    if keys is None:
        log("generating two RSA-3072 keys...")
        keys = [RSA.generate(crypto.RSA_BITS) for _ in range(2)]
    results: dict[str, Any] = {"sizes": sizes.__dict__ | {"history": list(sizes.history)}}

    log("crypto floor...")
    floor = FloorSampler(keys)
    floor.sample(sizes.floor_reps)
    log("ledger operations and bytes (memory ledger)...")
    results["operations"] = measure_operations(workdir, keys, sizes)
    results["bytes"] = measure_bytes(workdir, keys)

    log("latency on the local ledger...")
    local = LocalLedger(workdir / "local" / "ledger.sqlite")
    results["latency"] = {"local": measure_latency(
        workdir / "local", keys, local, None, sizes.loop_local, sizes.open_local, sizes.conversation, floor
    )}
    local.close()
    log("opening against the history length...")
    results["history"] = measure_history(workdir, keys, sizes.history, sizes.history_open_reps, floor)

    if standin:
        log("latency on the ResilientDB stand-in (get 190 ms, set 12 ms)...")
        use_this_interpreter_for_the_standin()
        cluster = StandInCluster.create(workdir / "cluster", get_delay_s=RDB_GET_S, set_delay_s=RDB_SET_S)
        results["standin_lone_calls"] = measure_lone_calls(cluster, sizes.lone_standin)
        rdb = ResilientDBLedger(cluster.tool, cluster.config, timeout_s=60)
        results["latency"]["resilientdb_standin"] = measure_latency(
            workdir / "rdb", keys, rdb, cluster, sizes.loop_standin, sizes.open_standin, sizes.conversation, floor
        )
        log("an open chat on the ResilientDB stand-in: send to screen...")
        live = measure_live(workdir / "live", keys, rdb, "resilientdb", sizes.live_messages)
        idle_round = results["latency"]["resilientdb_standin"]["update_idle"]["median_ms"]
        live["idle_chat"] = idle_reads_per_minute(workdir / "live", keys, idle_round, "resilientdb")
        results["live_chat_resilientdb_standin"] = live
    # The floor is sampled before and between the latency samples; every ratio uses all its samples.
    results["crypto_floor"] = floor.summary()
    add_ratios(results["latency"], results["crypto_floor"]["floor_ms"])
    add_ratios(results["history"], results["crypto_floor"]["floor_ms"])
    results["our_design_per_message_ops"] = OUR_DESIGN_OPS
    report = Report(results=results, targets=check_targets(results, sizes.conversation))
    results["targets"] = [{"name": t.name, "passed": t.passed, "measured": t.measured} for t in report.targets]
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
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
    args.json.write_text(json.dumps(report.results, indent=1) + "\n", encoding="utf-8")
    print(f"\nfigures written to {args.json}")
    return 0 if all(t.passed for t in report.targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
