"""The group benchmark measures what it claims: structural facts only, never timings."""

from __future__ import annotations

from pathlib import Path

from benchmarks import groups as bench
from tests.conftest import rsa_key


def test_a_group_send_is_one_write_and_an_idle_update_one_round(tmp_path: Path) -> None:
    row = bench.measure(3, [rsa_key(i) for i in range(3)], tmp_path)
    assert {k: row["send"][k] for k in ("gets", "sets", "read_rounds")} == {"gets": 0, "sets": 1, "read_rounds": 0}
    assert (row["update_idle"]["read_rounds"], row["update_idle"]["sets"]) == (1, 0)
    assert row["update_1_new"]["read_rounds"] == 1
    # One slot per other member: a third member adds one 1,168-byte slot (about 1.56 KB in base64).
    two = bench.measure(2, [rsa_key(0), rsa_key(1)], tmp_path / "two")
    assert 1_500 < row["new_page_bytes"] - two["new_page_bytes"] < 1_600
