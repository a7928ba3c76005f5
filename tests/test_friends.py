"""The friend store: validation, duplicates, persistence, atomic writes, two processes at once."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

from reschat import crypto
from reschat.errors import DuplicateFriendError, KeyFormatError, ProfileError, UnknownFriendError
from reschat.friends import FriendStore
from tests.conftest import rsa_key


def own_fpr() -> str:
    return crypto.fingerprint_bytes(rsa_key(0)).hex()


def store(tmp_path: Path) -> FriendStore:
    return FriendStore(tmp_path / "friends.json", own_fingerprint=own_fpr())


def test_add_get_and_list_friends_persist(tmp_path: Path) -> None:
    friends = store(tmp_path)
    added = friends.add_friend("bob", rsa_key(1).public_key(), name="Bob B.")
    friends.add_friend("Zoë", crypto.public_key_to_string(rsa_key(2)))
    reopened = store(tmp_path)
    assert reopened.get_all_friend() == ["bob", "Zoë"]
    bob = reopened.get_friend("BOB")
    assert bob == added and bob.key == rsa_key(1).public_key() and bob.name == "Bob B."
    assert bob.fingerprint == crypto.fingerprint_bytes(rsa_key(1)).hex()
    assert os.stat(tmp_path / "friends.json").st_mode & 0o777 == 0o600


def test_each_rejection_has_its_own_error(tmp_path: Path) -> None:
    friends = store(tmp_path)
    friends.add_friend("bob", rsa_key(1).public_key())
    with pytest.raises(DuplicateFriendError, match="nickname"):
        friends.add_friend("Bob", rsa_key(2).public_key())
    with pytest.raises(DuplicateFriendError, match="already your friend 'bob'"):
        friends.add_friend("robert", rsa_key(1).public_key())
    with pytest.raises(DuplicateFriendError, match="your own key"):
        friends.add_friend("me", rsa_key(0).public_key())
    with pytest.raises(KeyFormatError):
        friends.add_friend("carol", "not a key")
    for bad in ["", "  ", "12", "a\x1b[31m", "x" * 33, "evil\u202e"]:
        with pytest.raises(KeyFormatError):
            friends.add_friend(bad, rsa_key(2).public_key())
    with pytest.raises(UnknownFriendError):
        friends.get_friend("nobody")
    assert friends.get_all_friend() == ["bob"]


def test_update_page_num_only_raises_the_hint(tmp_path: Path) -> None:
    friends = store(tmp_path)
    friends.add_friend("bob", rsa_key(1).public_key())
    assert friends.update_page_num("bob", 5).lane_page == 5
    assert friends.update_page_num("bob", 3).lane_page == 5


def test_a_damaged_store_is_reported_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "friends.json").write_text("{not json")
    friends = store(tmp_path)
    with pytest.raises(ProfileError, match="damaged"):
        friends.get_all_friend()
    assert (tmp_path / "friends.json").read_text() == "{not json"


def _add_many(path: str, prefix: str, count: int) -> None:
    friends = FriendStore(Path(path))
    for i in range(count):
        friends.update_page_num("bob", 1)  # a read-modify-write of a shared record
        friends.add_friend(f"{prefix}{i}", _KEYS[prefix][i])


_KEYS: dict[str, list[object]] = {}


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    friends = store(tmp_path)
    friends.add_friend("bob", rsa_key(1).public_key())
    # Each friend needs a distinct key; 2048 bits is the smallest accepted and the quickest to make.
    count = 6
    _KEYS["p"] = [RSA.generate(2048).public_key() for _ in range(count)]
    _KEYS["q"] = [RSA.generate(2048).public_key() for _ in range(count)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path / "friends.json"), p, count)) for p in "pq"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    names = store(tmp_path).get_all_friend()
    assert sorted(names) == sorted(["bob"] + [f"{p}{i}" for p in "pq" for i in range(count)])
    json.loads((tmp_path / "friends.json").read_text())  # still one valid document
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
