"""Safety numbers, and what a pasted card means for the friends you already have.

A safety number is one number per pair of friends, the same on both sides, short enough to read
to each other on the phone (as Signal's safety number). Each side's half is 30 digits derived
from that side's RSA identity public key alone: SHA-512 over a version, the key's DER and a fixed
label, then iterated 5,200 times over the previous digest and the DER again (so that searching for
a key whose half matches someone else's costs 5,200 hashes per try). The two halves are sorted and
joined, so both friends compute the same 60 digits. Nothing else goes in: no names, no ledger, no
card checksum.

The card's own checksum only catches typing and pasting mistakes: anyone can make a valid card
with any name on it. Comparing the safety number over a channel you trust (by voice) is what shows
that the key is really your friend's.

``check_card`` tells a new friend from a known key, a key change under a known nickname, and a card
whose name belongs to a friend you already have with another key. The core never decides: the
menus and the CLI warn and ask.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Literal

from Crypto.PublicKey import RSA

from reschat.crypto import Contact, fingerprint_bytes, public_key_der
from reschat.errors import FriendError, UnknownFriendError
from reschat.friends import Friend, FriendStore

VERSION = (0).to_bytes(2, "big")
LABEL = b"ResChat safety number"
ITERATIONS = 5200
#: Digits of one side's half; the whole number has twice as many.
HALF_DIGITS = 30
GROUP = 5

CHECKSUM_NOTE = (
    "The card's checksum only catches typos: anyone can make a valid card with any name on it."
    " The safety number is the check that counts."
)


class KeyChangedError(FriendError):
    """A card carries a different key for a friend you already have; nothing was changed."""


@functools.lru_cache(maxsize=256)
def _half(der: bytes) -> str:
    digest = hashlib.sha512(VERSION + der + LABEL).digest()
    for _ in range(ITERATIONS):
        digest = hashlib.sha512(digest + der).digest()
    # Six 5-byte chunks, each reduced to 5 decimal digits, as Signal does.
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


def safety_number(key_a: RSA.RsaKey, key_b: RSA.RsaKey) -> str:
    """The 60 digits both friends see for the pair ``key_a``, ``key_b`` (the order does not matter)."""
    halves = sorted([_half(public_key_der(key_a)), _half(public_key_der(key_b))])
    return halves[0] + halves[1]


def grouped(digits: str) -> str:
    """Digits in groups of five: ``12345 67890 ...``."""
    return " ".join(digits[i : i + GROUP] for i in range(0, len(digits), GROUP))


def safety_lines(digits: str, per_line: int = 4) -> list[str]:
    """The number as a few lines of ``per_line`` groups, easy to read aloud line by line."""
    groups = grouped(digits).split(" ")
    return [" ".join(groups[i : i + per_line]) for i in range(0, len(groups), per_line)]


def verification_label(friend: Friend) -> str:
    return "verified" if friend.verified else "not verified"


CardKind = Literal["new", "same", "changed", "name-clash", "known-key", "own"]


@dataclass(frozen=True)
class CardCheck:
    """What adding a card's key under a nickname would mean.

    - ``new``: nobody you know; add it.
    - ``same``: the nickname is already this key: nothing to do.
    - ``changed``: the nickname has another key: a key change, never applied without asking.
    - ``name-clash``: another friend (``friend``) goes by the card's name with another key: either that
      friend's new key, or someone else with the same name.
    - ``known-key``: the key is already ``friend``'s, under another nickname.
    - ``own``: your own key.
    """

    kind: CardKind
    friend: Friend | None = None


def _same_name(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def check_card(
    friends: FriendStore, own_key: RSA.RsaKey, nickname: str, key: RSA.RsaKey, name: str | None
) -> CardCheck:
    """Classify a card (its ``key`` and the ``name`` on it) pasted for ``nickname``."""
    fpr = fingerprint_bytes(key).hex()
    if fpr == fingerprint_bytes(own_key).hex():
        return CardCheck("own")
    try:
        by_nickname: Friend | None = friends.get_friend(nickname)
    except UnknownFriendError:
        by_nickname = None
    everyone = friends.all_friends()
    by_key = next((f for f in everyone if f.fingerprint == fpr), None)
    if by_key is not None:
        if by_nickname is not None and by_nickname.nickname == by_key.nickname:
            return CardCheck("same", by_key)
        return CardCheck("known-key", by_key)
    if by_nickname is not None:
        return CardCheck("changed", by_nickname)
    if name:
        for friend in everyone:
            if _same_name(friend.nickname, name) or (friend.name is not None and _same_name(friend.name, name)):
                return CardCheck("name-clash", friend)
    return CardCheck("new")


def renews(friend: Friend, contact: Contact) -> bool:
    """Whether ``contact``, a card with ``friend``'s own identity key, brings static keys the store does
    not have (a friend pinned from an old card, or a card issued later). The identity key signed the
    card, so it is theirs and the safety number stays the same; the conversation, which protocol 2
    derives from both cards, starts afresh with the new static keys."""
    same_key = fingerprint_bytes(contact.public_key).hex() == friend.fingerprint
    return same_key and contact.statics.to_bytes().hex() != friend.statics and contact.issued >= friend.issued
