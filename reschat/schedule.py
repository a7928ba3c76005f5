"""Protocol 2's addressing and key schedule: pure functions from secrets to addresses and keys.

Addresses
---------
The two friends share a *pair secret*: HKDF over the static-static X25519 agreement of their card
keys, bound to both RSA fingerprints. Nobody else can compute it, so nobody else can tell which
ledger keys belong to the pair, or predict the next one. Every key the pair writes is::

    reschat2-<48 hex digits of HMAC-SHA256(address key, what it is)[:24]>

for a page: ``"page" | writer fingerprint | epoch | page number``; for a writer's page hint
(``lane.seal_hint``): ``"hint" | writer fingerprint``; for a file chunk, the address key is derived
from the file's own random key instead. All keys have one length and one alphabet.

Keys of a page
--------------
Each page has a fresh random *page secret*, carried to each reader in a hybrid KEM slot. From it::

    header key = HKDF(page secret, "header")
    chain key 0 = HKDF(page secret, "chain")
    message key i = HMAC(chain key i, 0x01);  chain key i+1 = HMAC(chain key i, 0x02)

as the symmetric-key ratchet of Signal's Double Ratchet (section 2.2 of its specification), so each
message has its own key, and a store that keeps only chain key i can open no message before i.
"""

from __future__ import annotations

import hmac

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

ADDRESS_PREFIX = "reschat2-"
ADDRESS_DIGEST_BYTES = 24
KEY_BYTES = 32

#: Sealed payload sizes: a payload is padded up to the first bucket it fits, so "yes" and "no", or
#: any two short texts, are records of the same size. The last bucket holds the largest payload.
PAD_BUCKETS = (128, 512, 2048, 8192, 40960)


def _hkdf(secret: bytes, purpose: str, salt: bytes = b"") -> bytes:
    derived = HKDF(secret, KEY_BYTES, salt=salt, hashmod=SHA256, context=purpose.encode("ascii"))
    assert isinstance(derived, bytes)
    return derived


def _address(key: bytes, *parts: bytes | str | int) -> str:
    framed = []
    for part in parts:
        if isinstance(part, str):
            raw = part.encode("utf-8")
        elif isinstance(part, int):
            raw = part.to_bytes(8, "big")
        else:
            raw = part
        framed.append(len(raw).to_bytes(2, "big") + raw)
    # hmac.digest: the same HMAC-SHA256 in one call (OpenSSL's one-shot path), a fraction of the cost
    # of an hmac object, and an update reads some thirty addresses.
    return ADDRESS_PREFIX + hmac.digest(key, b"".join(framed), "sha256")[:ADDRESS_DIGEST_BYTES].hex()


def pair_keys(shared: bytes, fingerprint_a: bytes, fingerprint_b: bytes) -> tuple[bytes, bytes]:
    """(address key, conversation id) of a pair, from their static agreement and both fingerprints."""
    binding = b"".join(sorted([fingerprint_a, fingerprint_b]))
    return _hkdf(shared, "reschat2 addresses", binding), _hkdf(shared, "reschat2 conversation id", binding)


def group_keys(epoch_secret: bytes, group_id: bytes) -> tuple[bytes, bytes]:
    """(address key, conversation id) of one membership epoch of a group.

    The address key comes from the epoch's random group secret, so each membership epoch has
    addresses that only its members can compute and that link to no earlier or later epoch; the
    conversation id (inside every signed header, never on the ledger in the clear) names the group.
    """
    return (
        _hkdf(epoch_secret, "reschat2 group addresses", group_id),
        _hkdf(group_id, "reschat2 group conversation"),
    )


def page_address(address_key: bytes, writer: bytes, epoch: int, number: int) -> str:
    """The ledger key of page ``number`` of ``epoch`` of ``writer``'s lane."""
    return _address(address_key, "page", writer, epoch, number)


def board_address(address_key: bytes, epoch: int, slot: int) -> str:
    """The ledger key of slot ``slot`` of a group epoch's board, where the members who were in the epoch
    before vouch for its membership to the members it added (who cannot know their fingerprints yet)."""
    return _address(address_key, "board", epoch, slot)


def hint_address(address_key: bytes, writer: bytes) -> str:
    """The ledger key of ``writer``'s page hint in the pair (see ``lane.seal_hint``)."""
    return _address(address_key, "hint", writer)


def hint_key(address_key: bytes, writer: bytes, salt: bytes) -> bytes:
    """The key one page hint is sealed under: fresh for every hint written (its random ``salt``)."""
    return _hkdf(address_key, "reschat2 hint", salt + writer)


def chunk_address(file_key: bytes, index: int) -> str:
    """The ledger key of chunk ``index`` of the file sealed with ``file_key``."""
    return _address(_hkdf(file_key, "reschat2 chunk addresses"), "chunk", index)


def probe_address(secret: bytes) -> str:
    """A profile's own doctor probe: shaped like any page address, linked to nobody."""
    return _address(_hkdf(secret, "reschat2 doctor probe"), "probe")


def writer_tag_key(static_seed: bytes) -> bytes:
    """The key of our own writer tags: only the holder of our static key can mark a page as ours."""
    return _hkdf(static_seed, "reschat2 writer tag")


def header_key(page_secret: bytes) -> bytes:
    return _hkdf(page_secret, "reschat2 header")


def chain_start(page_secret: bytes) -> bytes:
    return _hkdf(page_secret, "reschat2 chain")


def message_key(chain_key: bytes) -> bytes:
    return hmac.digest(chain_key, b"\x01", "sha256")  # HMAC-SHA256, one call (two per record read)


def next_chain_key(chain_key: bytes) -> bytes:
    return hmac.digest(chain_key, b"\x02", "sha256")


def chain_key_at(chain_key: bytes, start: int, index: int) -> bytes:
    """Chain key ``index`` from chain key ``start`` (ValueError when ``index`` is before it)."""
    if index < start:
        raise ValueError("that message's key was deleted")
    for _ in range(index - start):
        chain_key = next_chain_key(chain_key)
    return chain_key


def slot_key(kem_secret: bytes) -> bytes:
    """The key that wraps the page secret in one reader's slot."""
    return _hkdf(kem_secret, "reschat2 slot")


def pad(payload: bytes) -> bytes:
    """``payload`` with a 4-byte length, zero-padded to the first bucket it fits (ValueError if none)."""
    framed = len(payload).to_bytes(4, "big") + payload
    for bucket in PAD_BUCKETS:
        if len(framed) <= bucket:
            return framed + bytes(bucket - len(framed))
    raise ValueError(f"a payload of {len(payload)} bytes is over the largest bucket")


def unpad(padded: bytes) -> bytes:
    """Inverse of ``pad``; ValueError on anything ``pad`` cannot have made."""
    if len(padded) not in PAD_BUCKETS:
        raise ValueError("not a padded payload")
    size = int.from_bytes(padded[:4], "big")
    if size > len(padded) - 4 or any(padded[4 + size :]):
        raise ValueError("bad padding")
    return padded[4 : 4 + size]


def max_payload() -> int:
    return PAD_BUCKETS[-1] - 4
