"""Safety numbers and what a pasted card means: pure functions over keys and the friend store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

from reschat import crypto, safety
from reschat.errors import DuplicateFriendError
from reschat.friends import FriendStore
from tests.conftest import rsa_key, statics_key

#: A fixed public key (any 3072-bit odd modulus makes a valid public key object), so that the number
#: below pins the algorithm: a change to it would make every pair of friends compare different digits.
FIXED_A = RSA.construct((2**3071 + 0x5A5A5A5A5A5A5A5A5A5B, 65537))
FIXED_B = RSA.construct((2**3071 + 0x123456789ABCDEF, 65537))
FIXED_NUMBER = "035928498733432050076768611288" "743817575975249527506520101311"


def independent_half(key: RSA.RsaKey) -> str:
    """The documented algorithm, written out again: SHA-512 over version, DER and label, then 5,200 more
    rounds over the digest and the DER; six 5-byte chunks, each mod 100,000."""
    der = key.export_key(format="DER")
    digest = hashlib.sha512(b"\x00\x00" + der + b"ResChat safety number").digest()
    for _ in range(5200):
        digest = hashlib.sha512(digest + der).digest()
    return "".join(str(int.from_bytes(digest[i : i + 5], "big") % 100000).zfill(5) for i in range(0, 30, 5))


def test_the_number_is_the_same_on_both_sides_and_follows_the_documented_algorithm() -> None:
    a, b = rsa_key(0).public_key(), rsa_key(1).public_key()
    number = safety.safety_number(a, b)
    assert number == safety.safety_number(b, a)
    assert len(number) == 60 and number.isdigit()
    assert number == "".join(sorted([independent_half(a), independent_half(b)]))


def test_a_fixed_pair_gives_a_fixed_number() -> None:
    assert safety.safety_number(FIXED_A, FIXED_B) == FIXED_NUMBER


def test_the_number_depends_on_each_key_only() -> None:
    a, b, c = (rsa_key(i).public_key() for i in range(3))
    assert safety.safety_number(a, b) != safety.safety_number(a, c)
    assert safety.safety_number(a, b) != safety.safety_number(c, b)
    # A private key object gives the number of its public half: the number covers public keys only.
    assert safety.safety_number(rsa_key(0), rsa_key(1)) == safety.safety_number(a, b)


def test_grouping_for_reading_aloud() -> None:
    digits = "".join(str(i % 10) for i in range(60))
    assert safety.grouped(digits) == "01234 56789 " * 5 + "01234 56789"
    lines = safety.safety_lines(digits)
    assert lines == ["01234 56789 01234 56789"] * 3


# --- what a card means ----------------------------------------------------------------------------------


def contact(index: int, name: str = "", *, statics: int | None = None, issued: int = 0) -> crypto.Contact:
    """What a card of test key ``index`` says (its static keys: those of ``statics``, by default ``index``)."""
    chosen = statics_key(index if statics is None else statics)
    return crypto.Contact(public_key=rsa_key(index).public_key(), name=name, statics=chosen.public, issued=issued)


@pytest.fixture
def store(tmp_path: Path) -> FriendStore:
    friends = FriendStore(tmp_path / "friends.json", own_fingerprint=crypto.fingerprint_bytes(rsa_key(0)).hex())
    friends.add_friend("bob", contact(1, "Bob"))
    return friends


@pytest.mark.parametrize(
    ("nickname", "key_index", "name", "kind", "concerns"),
    [
        ("carol", 2, "carol", "new", None),
        ("BOB", 1, "Bob", "same", "bob"),
        ("bob", 2, "Bob", "changed", "bob"),
        ("robert", 2, "bob", "name-clash", "bob"),  # the card's name is a friend's nickname
        ("robert", 2, " BOB ", "name-clash", "bob"),  # ...or the name on their card
        ("robert", 1, "Bob", "known-key", "bob"),
        ("bob", 0, "alice", "own", None),
        ("carol", 2, None, "new", None),  # a PEM key carries no name
    ],
)
def test_check_card(
    store: FriendStore, nickname: str, key_index: int, name: str | None, kind: str, concerns: str | None
) -> None:
    check = safety.check_card(store, rsa_key(0), nickname, rsa_key(key_index).public_key(), name)
    assert check.kind == kind
    assert (check.friend.nickname if check.friend else None) == concerns


# --- the friend store's verified flag and key replacement ---------------------------------------------


def test_verified_is_stored_and_old_stores_read_as_not_verified(store: FriendStore, tmp_path: Path) -> None:
    assert store.get_friend("bob").verified is False  # written before the field existed: the default
    store.update("bob", verified=True)
    assert FriendStore(tmp_path / "friends.json").get_friend("bob").verified is True


def test_replace_key_starts_afresh_and_clears_verified(store: FriendStore) -> None:
    """A new key is a new conversation (protocol 2 derives it from both cards): the counts of the old
    one start afresh, the new card's static keys are pinned, and the friend is no longer verified."""
    store.update("bob", verified=True, unread=9, seen="1:9", read="1:4", updated="2024-05-01T12:00:00.000000Z")
    before = store.get_friend("bob")
    after = store.replace_key("BOB", contact(2, "Bob 2", issued=7))
    assert after == store.get_friend("bob")
    assert after.fingerprint == crypto.fingerprint_bytes(rsa_key(2)).hex()
    assert (after.nickname, after.name, after.added) == ("bob", "Bob 2", before.added)
    assert (after.statics, after.issued) == (statics_key(2).public.to_bytes().hex(), 7)
    assert after.receive_public.to_bytes() == statics_key(2).public.to_bytes()
    assert not after.verified
    assert (after.unread, after.seen, after.read, after.updated) == (0, "0:0", "0:0", "")
    assert store.get_all_friend() == ["bob"]
    assert store.replace_key("bob", contact(3, "Bob 3"), name="Bobby").name == "Bobby"


def test_replace_key_refuses_own_and_another_friends_key(store: FriendStore) -> None:
    store.add_friend("carol", contact(2))
    with pytest.raises(DuplicateFriendError, match="your own key"):
        store.replace_key("bob", contact(0))
    with pytest.raises(DuplicateFriendError, match="already your friend 'carol'"):
        store.replace_key("bob", contact(2))
    assert store.get_friend("bob").fingerprint == crypto.fingerprint_bytes(rsa_key(1)).hex()


def test_a_newer_card_of_the_same_key_renews_the_static_keys(store: FriendStore) -> None:
    bob = store.get_friend("bob")
    assert not safety.renews(bob, contact(1, "Bob"))  # the very card already pinned
    assert safety.renews(bob, contact(1, "Bob", statics=4, issued=5))  # the key signed new static keys
    assert not safety.renews(bob, contact(2, "Bob", statics=4, issued=5))  # another key: a key change
    newer = store.replace_key("bob", contact(1, "Bob", statics=4, issued=5))
    assert not safety.renews(newer, contact(1, "Bob"))  # an older card does not win back
    # A friend pinned from an old card (no static keys) is renewed by their first card v2.
    store.update("bob", statics="", issued=0)
    assert safety.renews(store.get_friend("bob"), contact(1, "Bob"))
