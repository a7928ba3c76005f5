"""ResChat: end-to-end encrypted chat over a ResilientDB key-value ledger, with no central server."""

__version__ = "0.1.0"
