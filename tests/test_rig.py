"""The test rig itself: RESCHAT_TEST_LEDGER chooses the engine suites' backends, and every backend's
levers (plant, erase, list, faults) act on what its clients read."""

from __future__ import annotations

from pathlib import Path

import pytest

from reschat.errors import LedgerUnavailableError
from reschat.ledger.base import MAX_VALUE_BYTES, OVERSIZED_VALUE
from tests.conftest import BACKENDS, TEST_LEDGER_ENV, LedgerRig, ledger_rig, selected_backends


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
    assert ledger.get_many(["planted", "huge", "written"]) == {
        "planted": "as is", "huge": OVERSIZED_VALUE, "written": "one",
    }
    rig.erase("planted")
    assert ledger.get("planted") is None and rig.stored("written") == "one"
    assert set(rig.values()) == {"huge", "written"}

    rig.behave(stale=True)
    ledger.set("written", "two")
    assert ledger.get("written") == "one" and rig.stored("written") == "two"
    rig.behave(stale=False, drop_sets=True)
    ledger.set("written", "three")
    assert ledger.get("written") == "two" and rig.sets_of("written") == 3
    rig.behave(drop_sets=False, down=True)
    with pytest.raises(LedgerUnavailableError):
        ledger.get("written")
    rig.behave(down=False)
    assert ledger.get("written") == "two"


def test_other_connections_see_the_same_ledger(tmp_path: Path) -> None:
    for kind in ("local", "resilientdb", "http"):
        with ledger_rig(kind, tmp_path / kind) as rig:
            assert rig.connect is not None
            rig.ledger.set("k", kind)
            other = rig.connect()
            assert other.get("k") == kind
            other.close()
