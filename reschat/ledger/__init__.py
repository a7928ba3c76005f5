"""Ledger backends behind one get/set interface."""

from reschat.ledger.base import MAX_VALUE_BYTES, OVERSIZED_VALUE, Ledger
from reschat.ledger.http import ResilientDBHttpLedger
from reschat.ledger.local import LocalLedger
from reschat.ledger.memory import MemoryLedger
from reschat.ledger.resilientdb import ResilientDBLedger

__all__ = [
    "MAX_VALUE_BYTES",
    "OVERSIZED_VALUE",
    "Ledger",
    "LocalLedger",
    "MemoryLedger",
    "ResilientDBHttpLedger",
    "ResilientDBLedger",
]
