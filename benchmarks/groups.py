"""Group benchmarks: for 2, 8 and 32 members, a send, an idle update, a new page's bytes, bytes per message,
and the Python heap's peak while a member reads the whole group.

    python -m benchmarks.groups              # 2, 8 and 32 members (RSA-3072 keys are made first: slow)
    python -m benchmarks.groups --sizes 2 8  # fewer
    python -m benchmarks.groups --json PATH

On the in-memory ledger, which records every operation: a *round of reads* is one ``get_many`` call
(the engine's reads of one round go out together). Times are medians of a few runs on this machine
(shared cores): figures to compare, never assertions. Bytes are the stored values' lengths (base64).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from Crypto.PublicKey import RSA

from reschat import crypto, kem
from reschat.chat import ChatService
from reschat.friends import FriendStore
from reschat.group import GroupService
from reschat.ledger import MemoryLedger
from reschat.page import PAGE_CAPACITY, SealedPage

TEN_CHARACTERS = "0123456789"
DEFAULT_SIZES = (2, 8, 32)
REPS = 5


class RoundCounter(MemoryLedger):
    """A memory ledger that also counts ``get_many`` calls: one per round of reads."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, str | None]:
        self.rounds += 1
        return super().get_many(keys)


def member(name: str, key: RSA.RsaKey, root: Path, ledger: MemoryLedger) -> GroupService:
    identity = crypto.Identity(name=name, private_key=key, statics=kem.ReceiveKey.generate(),
                               store_key=crypto.new_symmetric_key())
    own = crypto.fingerprint_bytes(identity.public_key).hex()
    friends = FriendStore(root / name / "friends.json", own_fingerprint=own)
    return GroupService(ChatService(identity, friends, ledger, root / name / "lanes"))


def counted(ledger: RoundCounter, action: Callable[[], object]) -> dict[str, Any]:
    before, rounds = len(ledger.operations), ledger.rounds
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    ops = ledger.operations[before:]
    return {"gets": sum(1 for op, _k in ops if op == "get"), "sets": sum(1 for op, _k in ops if op == "set"),
            "read_rounds": ledger.rounds - rounds, "ms": round(elapsed * 1000, 2)}


def measure(size: int, keys: Sequence[RSA.RsaKey], root: Path) -> dict[str, Any]:
    ledger = RoundCounter()
    people = [member(f"m{i}", keys[i], root / str(size), ledger) for i in range(size)]
    admin = people[0]
    for other in people[1:]:
        admin.friends.add_friend(other.identity.name, crypto.parse_contact(other.identity.card))
        other.friends.add_friend(admin.identity.name, crypto.parse_contact(admin.identity.card))
    admin.create("bench", [p.identity.name for p in people[1:]])
    for other in people[1:]:
        other.accept_invitations()
    for _ in range(2):  # every member reads every lane once and announces its receive key
        for person in people:
            person.get_update("bench")
    writer, reader = people[-1], people[0]
    address = writer.lane_address("bench", "me", 1, 1)
    # A new page: the writer's first page of the epoch, with one 10-character message.
    first = counted(ledger, lambda: writer.send_message(TEN_CHARACTERS, "bench"))
    new_page = len(ledger._data[address])
    sends = [counted(ledger, lambda: writer.send_message(TEN_CHARACTERS, "bench")) for _ in range(REPS)]
    while len(SealedPage.from_string(ledger._data[address]).records) < PAGE_CAPACITY:
        writer.send_message(TEN_CHARACTERS, "bench")
    full_page = len(ledger._data[address])
    reader.get_update("bench")
    reader.get_update("bench")
    idle = [counted(ledger, lambda: reader.get_update("bench")) for _ in range(REPS)]
    one_new = []
    for _ in range(REPS):
        writer.send_message(TEN_CHARACTERS, "bench")
        one_new.append(counted(ledger, lambda: reader.get_update("bench")))
    # Memory: the Python heap's peak while the reader reads the whole group (every lane from page 1) with
    # no session cache, as a fresh start does; tracemalloc counts what Python allocates, not the process.
    reader._opened.clear()
    reader._opened_bytes = 0
    tracemalloc.start()
    reader.load_all("bench")
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "members": size,
        "load_all_peak_kib": round(peak / 1024),
        "send": {**{k: sends[0][k] for k in ("gets", "sets", "read_rounds")},
                 "ms_median": statistics.median(s["ms"] for s in sends)},
        "send_new_page": first,
        "update_idle": {**{k: idle[0][k] for k in ("gets", "sets", "read_rounds")},
                        "ms_median": statistics.median(s["ms"] for s in idle)},
        "update_1_new": {**{k: one_new[0][k] for k in ("gets", "sets", "read_rounds")},
                         "ms_median": statistics.median(s["ms"] for s in one_new)},
        "new_page_bytes": new_page,
        "full_page_bytes": full_page,
        "bytes_per_message": round(full_page / PAGE_CAPACITY),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.groups", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    sizes: list[int] = args.sizes
    print(f"making {max(sizes)} RSA-{crypto.RSA_BITS} keys...", file=sys.stderr)
    keys = [RSA.generate(crypto.RSA_BITS) for _ in range(max(sizes))]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            print(f"measuring {size} members...", file=sys.stderr)
            results.append(measure(size, keys, Path(scratch)))
    print(f"{'members':>7} {'send':>22} {'idle update':>26} {'new page':>9} {'per message':>11} {'read all':>9}")
    for row in results:
        send, idle = row["send"], row["update_idle"]
        print(f"{row['members']:>7} {send['sets']} write {send['gets']} reads {send['ms_median']:>7.1f} ms "
              f"{idle['read_rounds']} round {idle['gets']:>3} reads {idle['ms_median']:>7.1f} ms "
              f"{row['new_page_bytes']:>8} B {row['bytes_per_message']:>9} B {row['load_all_peak_kib']:>6} KiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
