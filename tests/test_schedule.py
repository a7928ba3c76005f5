"""The key schedule and the addresses are the documented HMAC-SHA256 formulas, byte for byte (an
address or a key that changed would make every stored conversation unreadable)."""

from __future__ import annotations

import hashlib
import hmac

from reschat import schedule


def framed(*parts: bytes) -> bytes:
    return b"".join(len(part).to_bytes(2, "big") + part for part in parts)


def test_message_and_chain_keys_are_the_documented_hmacs() -> None:
    chain = bytes(range(32))
    assert schedule.message_key(chain) == hmac.new(chain, b"\x01", hashlib.sha256).digest()
    assert schedule.next_chain_key(chain) == hmac.new(chain, b"\x02", hashlib.sha256).digest()


def test_addresses_are_the_documented_hmacs() -> None:
    key, writer = bytes(range(32)), bytes(range(32, 64))
    number = (7).to_bytes(8, "big")
    page = hmac.new(key, framed(b"page", writer, (3).to_bytes(8, "big"), number), hashlib.sha256).digest()
    assert schedule.page_address(key, writer, 3, 7) == "reschat2-" + page[:24].hex()
    hint = hmac.new(key, framed(b"hint", writer), hashlib.sha256).digest()
    assert schedule.hint_address(key, writer) == "reschat2-" + hint[:24].hex()
