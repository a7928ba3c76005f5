"""The test rig itself: RESCHAT_TEST_LEDGER chooses the engine suites' backends, every backend's
levers (plant, erase, list, faults) act on what its clients read, and the stand-ins serve the real
cluster's stale reads unless RESCHAT_STANDIN_STALE_READS=0."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from reschat.errors import LedgerUnavailableError
from reschat.ledger.base import MAX_VALUE_BYTES, OVERSIZED_VALUE
from tests.conftest import (
    BACKENDS,
    TEST_LEDGER_ENV,
    LedgerRig,
    ledger_rig,
    selected_backends,
    settle,
    standin_stale_reads,
)
from tests.standin import STALE_PROBABILITY, STALE_READS_ENV, STALE_WINDOW_S


def test_the_environment_chooses_the_backends() -> None:
    assert selected_backends({}) == BACKENDS
    assert selected_backends({TEST_LEDGER_ENV: " local, memory ,local"}) == ("local", "memory")
    assert selected_backends({TEST_LEDGER_ENV: "memory,"}) == ("memory",)
    for wrong in ("sqlite", ",", "memory,sqlite"):
        with pytest.raises(pytest.UsageError, match="name some of memory, local, resilientdb, http"):
            selected_backends({TEST_LEDGER_ENV: wrong})


def test_the_levers_act_on_what_clients_read(rig: LedgerRig, tmp_path: Path) -> None:
    ledger = rig.ledger
    rig.plant("planted", "as is")
    rig.plant("huge", "x" * (MAX_VALUE_BYTES + 1))
    ledger.set("written", "one")
    # A write may read back stale for a moment (on the stand-ins); a planted value never does.
    values = settle(lambda: ledger.get_many(["planted", "huge", "written"]), lambda v: v["written"] is not None)
    assert values == {"planted": "as is", "huge": OVERSIZED_VALUE, "written": "one"}
    rig.erase("planted")
    assert ledger.get("planted") is None and rig.stored("written") == "one"
    assert set(rig.values()) == {"huge", "written"}

    rig.behave(stale=True)
    ledger.set("written", "two")
    assert ledger.get("written") == "one" and rig.stored("written") == "two"
    rig.behave(stale=False, drop_sets=True)
    ledger.set("written", "three")
    assert settle(lambda: ledger.get("written"), lambda v: v == "two") == "two"
    assert rig.sets_of("written") == 3
    rig.behave(drop_sets=False, down=True)
    with pytest.raises(LedgerUnavailableError):
        ledger.get("written")
    rig.behave(down=False)
    assert settle(lambda: ledger.get("written"), lambda v: v == "two") == "two"
    assert rig.stored("written") == "two"

    # the real cluster's kind of stale reads, with chosen numbers: here always within the hour
    rig.stale_window(3600.0, 1.0)
    ledger.set("windowed", "one")
    ledger.set("windowed", "two")
    assert ledger.get("windowed") == "one" and rig.stored("windowed") == "two"
    rig.stale_window(0.0, 0.0)  # never
    assert ledger.get("windowed") == "two"


def test_other_connections_see_the_same_ledger(tmp_path: Path) -> None:
    for kind in ("local", "resilientdb", "http"):
        with ledger_rig(kind, tmp_path / kind) as rig:
            assert rig.connect is not None
            rig.ledger.set("k", kind)
            other = rig.connect()
            assert settle(partial(other.get, "k"), lambda v: v is not None) == kind
            other.close()


def test_the_stand_ins_serve_stale_reads_unless_the_environment_turns_them_off() -> None:
    assert standin_stale_reads({})
    assert standin_stale_reads({STALE_READS_ENV: "1"})
    for off in ("", "0", "off", "no", "false"):
        assert not standin_stale_reads({STALE_READS_ENV: off})


def test_the_rig_serves_the_real_clusters_stale_reads_on_the_stand_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STALE_READS_ENV, raising=False)
    normal = {"stale_reads_after_set_s": STALE_WINDOW_S, "stale_read_probability": STALE_PROBABILITY}
    with ledger_rig("resilientdb", tmp_path / "tool") as rig:
        assert rig.stale_normally and rig.cluster is not None
        assert {k: rig.cluster.behaviour.get(k) for k in normal} == normal
        rig.behave(stale=True)
        rig.behave(stale=False)  # back to normal: stale now and then, not never
        assert {k: rig.cluster.behaviour.get(k) for k in normal} == normal
    with ledger_rig("http", tmp_path / "http") as rig:
        assert rig.stale_normally and rig.gateway is not None
        ledger, seen = rig.ledger, []
        for i in range(100):
            ledger.set(f"k{i}", "old")
            ledger.set(f"k{i}", "new")
            seen.append(ledger.get(f"k{i}"))
        # p = 0.3 of 100 reads right after their write: none or all stale has a chance below 1e-15
        assert set(seen) == {"old", "new"}
        rig.behave(stale=True)
        rig.behave(stale=False)
        assert (rig.gateway.stale_window_s, rig.gateway.stale_probability) == (STALE_WINDOW_S, STALE_PROBABILITY)
    for kind in ("memory", "local"):
        with ledger_rig(kind, tmp_path / kind) as rig:
            assert not rig.stale_normally
    monkeypatch.setenv(STALE_READS_ENV, "0")
    with ledger_rig("resilientdb", tmp_path / "tool-off") as rig:
        assert rig.cluster is not None and "stale_reads_after_set_s" not in rig.cluster.behaviour
    with ledger_rig("http", tmp_path / "http-off") as rig:
        assert rig.gateway is not None and rig.gateway.stale_window_s == 0


def test_planted_and_erased_values_read_back_at_once(rig: LedgerRig) -> None:
    """The stale reads the rig serves follow the writes of the people under test, not the levers."""
    ledger = rig.ledger
    for i in range(20):
        ledger.set(f"k{i}", "written")
        rig.plant(f"k{i}", "planted")
        assert ledger.get(f"k{i}") == "planted"
        rig.erase(f"k{i}")
        assert ledger.get(f"k{i}") is None
