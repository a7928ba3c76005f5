"""The benchmark runs and measures what it claims: structural facts only, never timings."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import run as bench
from reschat.ledger import MemoryLedger
from tests.conftest import rsa_key


def test_operations_per_send_and_update(tmp_path: Path) -> None:
    ops = bench.measure_operations(tmp_path, [rsa_key(0), rsa_key(1)], bench.QUICK)
    assert ops["send"] == {"gets": 0, "sets": 1, "private_key_ops": 1}
    assert ops["update_idle"]["sets"] == 0
    assert ops["update_idle"]["private_key_ops"] == 0
    assert ops["update_1_new"]["private_key_ops"] == 0  # the friend's lane key was unwrapped once already
    assert ops["open_chat"]["private_key_ops"] == 0  # a new session finds the lane key sealed on disk


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
    assert {"crypto_floor", "operations", "bytes", "latency", "history", "targets"} <= set(results)
    assert set(results["crypto_floor"]["op_counts"]) == {
        "rsa_pss_sign", "rsa_oaep_wrap", "aes_gcm_seal", "rsa_oaep_unwrap", "rsa_pss_verify", "aes_gcm_open",
    }
    assert results["crypto_floor"]["op_counts"]["rsa_oaep_wrap"] == 2
    local = results["latency"]["local"]
    for key in ("send", "update_idle", "update_1_new", "open_chat_6"):
        assert {"median_ms", "p95_ms", "median_x_floor"} <= set(local[key])
    assert local["idle_update_private_key_ops_max"] == 0
    assert set(results["bytes"]) == {"text_10_chars", "text_1_kib"}
    # Opening a deeper lane reads only its two newest pages.
    assert [row["pages_with_data_read"] for row in results["history"]] == [[1], [2, 3]]
    assert {t["name"] for t in results["targets"]} >= {"send: exactly one ledger write and no read"}


def test_an_open_chat_sees_every_message_and_an_idle_one_reads_at_the_configured_pace(tmp_path: Path) -> None:
    live = bench.measure_live(tmp_path / "live", [rsa_key(0), rsa_key(1)], MemoryLedger(), "local", 2)
    assert live["send_to_screen"]["n"] == 2 and live["poll_gap_active_ms"] == 100
    idle = bench.idle_reads_per_minute(tmp_path / "idle", [rsa_key(0), rsa_key(1)], 0.0, "resilientdb")
    ops = bench.measure_operations(tmp_path / "ops", [rsa_key(0), rsa_key(1)], bench.QUICK)
    assert idle["gets_per_round"] == ops["update_idle"]["gets"]
    assert idle["poll_gap_quiet_s"] == 2.0 and idle["rounds_per_minute"] == 30.0  # an instant round: 60 s / 2 s
    assert idle["reads_per_minute"] == 30 * idle["gets_per_round"]
    assert idle["reads_per_minute_while_active"] == 300 * idle["gets_per_round"]  # rounds 0.2 s apart
