"""The friend store: pinned cards, validation, duplicates, the counts of the last update, persistence,
atomic writes, two processes at once."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

from reschat import crypto, kem
from reschat.chat import peek_unread_counts
from reschat.errors import DuplicateFriendError, KeyFormatError, ProfileError, UnknownFriendError
from reschat.friends import FriendStore
from tests.conftest import rsa_key, statics_key


def contact(index: int, name: str = "x") -> crypto.Contact:
    """What parse_contact gives for the card of test key ``index``."""
    return crypto.parse_contact(crypto.make_card(name, rsa_key(index), statics_key(index).public, issued=7))


def own_fpr() -> str:
    return crypto.fingerprint_bytes(rsa_key(0)).hex()


def store(tmp_path: Path) -> FriendStore:
    return FriendStore(tmp_path / "friends.json", own_fingerprint=own_fpr())


def test_add_get_and_list_friends_persist(tmp_path: Path) -> None:
    friends = store(tmp_path)
    added = friends.add_friend("bob", contact(1, "Bob B."))
    zoe = friends.add_friend("Zoë", contact(2, "Zoë Z."), name="my Zoë")
    reopened = store(tmp_path)
    assert reopened.get_all_friend() == ["bob", "Zoë"]
    bob = reopened.get_friend("BOB")
    assert bob == added and bob.key == rsa_key(1).public_key() and bob.name == "Bob B."
    assert bob.fingerprint == crypto.fingerprint_bytes(rsa_key(1)).hex()
    # The card's static keys are pinned with the RSA key: new pages to bob are keyed to them.
    assert bob.receive_public == statics_key(1).public and bob.issued == 7
    assert reopened.get_friend("zoë") == zoe and zoe.name == "my Zoë"
    assert (bob.unread, bob.seen, bob.read) == (0, "0:0", "0:0")
    assert os.stat(tmp_path / "friends.json").st_mode & 0o777 == 0o600


def test_each_rejection_has_its_own_error(tmp_path: Path) -> None:
    friends = store(tmp_path)
    friends.add_friend("bob", contact(1))
    with pytest.raises(DuplicateFriendError, match="nickname"):
        friends.add_friend("Bob", contact(2))
    with pytest.raises(DuplicateFriendError, match="already your friend 'bob'"):
        friends.add_friend("robert", contact(1))
    with pytest.raises(DuplicateFriendError, match="your own key"):
        friends.add_friend("me", contact(0))
    for bad in ["", "  ", "12", "a\x1b[31m", "x" * 33, "evil\u202e"]:
        with pytest.raises(KeyFormatError):
            friends.add_friend(bad, contact(2))
    with pytest.raises(UnknownFriendError):
        friends.get_friend("nobody")
    assert friends.get_all_friend() == ["bob"]


def test_a_friend_pinned_without_static_keys_is_asked_for_a_new_card(tmp_path: Path) -> None:
    """A friend store from protocol 1 pinned only the RSA key: that friend needs a card v2."""
    (tmp_path / "friends.json").write_text(json.dumps({"friends": {"1": {
        "nickname": "old", "public_key": crypto.public_key_to_string(rsa_key(1)),
        "fingerprint": crypto.fingerprint_bytes(rsa_key(1)).hex(), "name": "old", "lane_page": 3,
    }}}))
    old = store(tmp_path).get_friend("old")
    assert old.key == rsa_key(1).public_key()
    with pytest.raises(KeyFormatError, match="ask for a new card"):
        _ = old.receive_public


def test_update_keeps_the_counts_of_the_last_update(tmp_path: Path) -> None:
    friends = store(tmp_path)
    friends.add_friend("bob", contact(1))
    friends.add_friend("carol", contact(2))
    friends.update("bob", unread=3, seen="1:7", updated="2026-01-01T00:00:00.000000Z")
    assert friends.update("bob", unread=lambda n: n + 1).unread == 4  # a callable maps old to new
    reopened = store(tmp_path)
    bob = reopened.get_friend("bob")
    assert (bob.unread, bob.seen, bob.read, bob.updated) == (4, "1:7", "0:0", "2026-01-01T00:00:00.000000Z")
    assert peek_unread_counts(reopened) == {"bob": 4, "carol": 0}
    with pytest.raises(UnknownFriendError):
        friends.update("nobody", unread=1)


def test_a_damaged_store_is_reported_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "friends.json").write_text("{not json")
    friends = store(tmp_path)
    with pytest.raises(ProfileError, match="damaged"):
        friends.get_all_friend()
    assert (tmp_path / "friends.json").read_text() == "{not json"


def _add_many(path: str, prefix: str, count: int) -> None:
    friends = FriendStore(Path(path))
    for i in range(count):
        friends.update("bob", unread=lambda n: n + 1)  # a read-modify-write of a shared record
        friends.add_friend(f"{prefix}{i}", _CONTACTS[prefix][i])


_CONTACTS: dict[str, list[crypto.Contact]] = {}


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    friends = store(tmp_path)
    friends.add_friend("bob", contact(1))
    # Each friend needs a distinct key; 2048 bits is the smallest accepted and the quickest to make.
    count = 6
    for prefix in "pq":
        _CONTACTS[prefix] = [
            crypto.Contact(RSA.generate(2048).public_key(), prefix, kem.ReceiveKey.generate().public)
            for _ in range(count)
        ]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path / "friends.json"), p, count)) for p in "pq"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    names = store(tmp_path).get_all_friend()
    assert sorted(names) == sorted(["bob"] + [f"{p}{i}" for p in "pq" for i in range(count)])
    assert store(tmp_path).get_friend("bob").unread == 2 * count  # no update lost
    json.loads((tmp_path / "friends.json").read_text())  # still one valid document
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
