"""The benchmark runs and measures what it claims: structural facts only, never timings."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import run as bench
from reschat import kem
from reschat.ledger import MemoryLedger
from tests.conftest import rsa_key


def test_operations_per_send_and_update(tmp_path: Path) -> None:
    with bench.counting_kem():
        ops = bench.measure_operations(tmp_path, [rsa_key(0), rsa_key(1)], bench.QUICK)
    # A send in an open chat: one write, no read, one signature (the record's).
    assert {k: ops["send"][k] for k in ("gets", "sets", "private_key_ops", "rsa_signs")} == {
        "gets": 0, "sets": 1, "private_key_ops": 1, "rsa_signs": 1,
    }
    assert ops["update_idle"]["sets"] == 0
    assert ops["update_idle"]["private_key_ops"] == 0
    assert ops["update_1_new"]["rsa_signs"] == 0 and ops["update_1_new"]["sets"] == 0
    # A new session keeps the page secrets it read in its key store: no KEM decapsulation, no RSA;
    # only the pair's private addresses cost one static X25519 agreement.
    assert ops["open_chat"]["kem_decapsulations"] == 0 and ops["open_chat"]["rsa_signs"] == 0
    assert ops["open_chat"]["static_agreements"] == 1
    # A new page: the header is signed too, and the reader decapsulates its slot once.
    assert (ops["send_new_page"]["gets"], ops["send_new_page"]["sets"], ops["send_new_page"]["rsa_signs"]) == (0, 1, 2)
    assert ops["update_new_page"]["kem_decapsulations"] == 1


def test_the_counters_count_and_are_removed_afterwards() -> None:
    original = kem.decapsulate
    with bench.counting_kem() as counts:
        before = counts.snapshot()
        key = kem.ReceiveKey.generate()
        enc, secret = kem.encapsulate(key.public, b"x")
        assert kem.decapsulate(key, enc, b"x") == secret
        assert (counts.key_generations, counts.encapsulations, counts.decapsulations) == (
            before.key_generations + 1, before.encapsulations + 1, before.decapsulations + 1,
        )
    assert kem.decapsulate is original
    assert isinstance(kem.ReceiveKey.__dict__["generate"], classmethod)


def test_an_overlay_ledger_keeps_its_writes_to_itself() -> None:
    base = MemoryLedger()
    base.set("reschat2-" + "1" * 48, "a")
    overlay = bench.OverlayLedger(base)
    overlay.set("reschat2-" + "2" * 48, "b")
    assert overlay.get_many(["reschat2-" + "1" * 48, "reschat2-" + "2" * 48]) == {
        "reschat2-" + "1" * 48: "a", "reschat2-" + "2" * 48: "b",
    }
    assert base.get("reschat2-" + "2" * 48) is None
    assert [op for op, _key in overlay.operations] == ["set", "get", "get"]


def test_read_rounds_from_tool_call_times() -> None:
    def call(start: float, end: float) -> bench.Call:
        return bench.Call(pid=1, cmd="get", key="k", started=start, ended=end)

    assert bench.read_rounds([call(0.0, 1.0), call(0.1, 1.1), call(0.2, 0.9)]) == 1
    assert bench.read_rounds([call(0.0, 1.0), call(0.1, 1.1), call(1.2, 2.0)]) == 2
    assert bench.read_rounds([]) == 0


def test_quick_run_writes_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    bench.main(["--quick", "--no-standin", "--json", str(out)], keys=[rsa_key(0), rsa_key(1)])
    results = json.loads(out.read_text(encoding="utf-8"))
    assert {"crypto_floor", "operations", "bytes", "new_page", "latency", "history", "key_store", "targets"} <= set(
        results
    )
    # The floor of issue 10: sign, verify, seal, open, and 1/20 of the three KEM operations.
    assert results["crypto_floor"]["op_counts"] == {
        "rsa_pss_sign": 1.0, "rsa_pss_verify": 1.0, "aes_gcm_seal": 1.0, "aes_gcm_open": 1.0,
        "kem_keygen": 0.05, "kem_encapsulate": 0.05, "kem_decapsulate": 0.05,
    }
    local = results["latency"]["local"]
    for key in ("send", "update_idle", "update_1_new", "open_chat_6"):
        assert {"median_ms", "p95_ms", "median_x_floor"} <= set(local[key])
    assert local["idle_update_private_key_ops_max"] == 0
    assert set(results["bytes"]) == {"text_10_chars", "text_1_kib"}
    assert results["bytes"]["text_10_chars"]["page_bytes_20_messages"] > results["new_page"]["empty_page_bytes"] > 0
    history = {row["pages"]: row for row in results["history"]}
    assert set(history) == {1, 10, 20}
    for pages, row in history.items():
        # With a checkpoint: the two newest pages, and (from 4 pages on) two older ones in rotation.
        read = row["checkpoint"]["friend_pages_read"]
        assert {pages - 1, pages} - {0} <= set(read) and len(read) <= 4
        assert row["checkpoint"]["kem_decapsulations"] == 0 and row["checkpoint"]["ledger_sets"] == 0
        # With none: the same messages, found through the pages keyed to the card's static keys.
        assert row["no_checkpoint"]["messages_shown"] == row["checkpoint"]["messages_shown"] > 0
        assert row["no_checkpoint"]["kem_decapsulations"] >= 1
    # The reader keeps a digest of every message read: its key store grows with the history.
    assert history[20]["reader_key_store_bytes"] > history[1]["reader_key_store_bytes"] > 0
    names = {t["name"] for t in results["targets"]}
    assert "send (in an open chat): exactly one ledger write and no read" in names
    assert any(name.startswith("bytes per 10-character message") for name in names)
    assert sum(name.startswith("opening stays flat") for name in names) == 2


def test_an_open_chat_sees_every_message_and_an_idle_one_reads_at_the_configured_pace(tmp_path: Path) -> None:
    live = bench.measure_live(tmp_path / "live", [rsa_key(0), rsa_key(1)], MemoryLedger(), "local", 2)
    assert live["send_to_screen"]["n"] == 2 and live["poll_gap_active_ms"] == 100
    idle = bench.idle_reads_per_minute(tmp_path / "idle", [rsa_key(0), rsa_key(1)], 0.0, "resilientdb")
    ops = bench.measure_operations(tmp_path / "ops", [rsa_key(0), rsa_key(1)], bench.QUICK)
    assert idle["gets_per_round"] == ops["update_idle"]["gets"]
    assert idle["poll_gap_quiet_s"] == 2.0 and idle["rounds_per_minute"] == 30.0  # an instant round: 60 s / 2 s
    assert idle["reads_per_minute"] == 30 * idle["gets_per_round"]
    assert idle["reads_per_minute_while_active"] == 300 * idle["gets_per_round"]  # rounds 0.2 s apart


def test_the_key_store_with_disappearing_messages_drops_what_expired(tmp_path: Path) -> None:
    """After 8 pages of 10 minutes each, the pages older than the 1-hour timer have expired: their kept
    copies are gone (the copies without a timer stay), and both runs reached the same pages."""
    rows = bench.measure_key_store(tmp_path, [rsa_key(0), rsa_key(1)], (1, 8))
    assert [row["pages"] for row in rows] == [1, 8]
    last = rows[-1]
    assert last["off"]["writer_pages"] == last["disappearing"]["writer_pages"] == 8
    assert last["disappearing"]["reader_copies_bytes"] < last["off"]["reader_copies_bytes"]
    assert last["disappearing"]["writer_copies_bytes"] < last["off"]["writer_copies_bytes"]
    assert all(row[mode]["reader_key_store_bytes"] > 0 for row in rows for mode in ("off", "disappearing"))
