"""Shared fixtures: identities are costly to make (RSA-3072), so each test session makes a few once."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

from reschat import crypto, kem
from reschat.chat import ChatService
from reschat.friends import FriendStore
from reschat.ledger import Ledger, LocalLedger, MemoryLedger, ResilientDBLedger
from tests.standin import StandInCluster

#: Low scrypt cost for tests that create identities; one test checks the real default separately.
TEST_SCRYPT_N = 2**10
_KEY_CACHE: list[RSA.RsaKey] = []
_STATICS_CACHE: list[kem.ReceiveKey] = []


def rsa_key(index: int) -> RSA.RsaKey:
    """The index-th RSA-3072 test key, generated once per test session."""
    while len(_KEY_CACHE) <= index:
        _KEY_CACHE.append(RSA.generate(crypto.RSA_BITS))
    return _KEY_CACHE[index]


def statics_key(index: int) -> kem.ReceiveKey:
    while len(_STATICS_CACHE) <= index:
        _STATICS_CACHE.append(kem.ReceiveKey.generate())
    return _STATICS_CACHE[index]


def make_identity(name: str, key_index: int) -> crypto.Identity:
    """An unlocked identity without a profile on disk: RSA key, static keys and store key of ``key_index``."""
    return crypto.Identity(
        name=name, private_key=rsa_key(key_index), statics=statics_key(key_index),
        store_key=hashlib.sha256(f"test store key {key_index}".encode()).digest(),
    )


@dataclass
class Person:
    """One user's profile: identity, friend store and chat service on a shared ledger."""

    name: str
    home: Path
    identity: crypto.Identity
    friends: FriendStore
    chat: ChatService

    @property
    def card(self) -> str:
        return self.identity.card


def make_person(name: str, key_index: int, home: Path, ledger: Ledger, **chat_options: object) -> Person:
    identity = make_identity(name, key_index)
    friends = FriendStore(home / "friends.json", own_fingerprint=crypto.fingerprint_bytes(identity.public_key).hex())
    chat = ChatService(identity, friends, ledger, home / "lanes", **chat_options)  # type: ignore[arg-type]
    return Person(name, home, identity, friends, chat)


@contextlib.contextmanager
def private_key_operations(key: RSA.RsaKey) -> Iterator[list[int]]:
    """Count the RSA private-key operations (signing, OAEP decryption) ``key`` does inside the block."""
    original = key._decrypt_to_bytes
    count = [0]

    def counting(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return original(*args, **kwargs)

    key._decrypt_to_bytes = counting
    try:
        yield count
    finally:
        del key._decrypt_to_bytes


def memory_pair(root: Path) -> tuple[MemoryLedger, Person, Person]:
    """alice and bob, befriended, on a fresh memory ledger."""
    ledger = MemoryLedger()
    alice = make_person("alice", 0, root / "alice", ledger)
    bob = make_person("bob", 1, root / "bob", ledger)
    befriend(alice, bob)
    return ledger, alice, bob


def befriend(a: Person, b: Person) -> None:
    a.friends.add_friend(b.name, crypto.parse_contact(b.card))
    b.friends.add_friend(a.name, crypto.parse_contact(a.card))


def make_ledger(kind: str, root: Path) -> Ledger:
    """A fresh ledger of ``kind``: memory, local (SQLite) or the stand-in ResilientDB tool."""
    if kind == "memory":
        return MemoryLedger()
    if kind == "local":
        return LocalLedger(root / "ledger.sqlite")
    cluster = StandInCluster.create(root / "cluster")
    return ResilientDBLedger(cluster.tool, cluster.config, timeout_s=30)


@pytest.fixture(params=["memory", "local", "resilientdb"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """Every backend the engine tests run on."""
    backend = make_ledger(request.param, tmp_path)
    yield backend
    backend.close()


@pytest.fixture
def people(tmp_path: Path, ledger: Ledger) -> Callable[..., tuple[Person, Person]]:
    """A factory for two befriended people on ``ledger``."""

    def factory(**chat_options: object) -> tuple[Person, Person]:
        alice = make_person("alice", 0, tmp_path / "alice", ledger, **chat_options)
        bob = make_person("bob", 1, tmp_path / "bob", ledger, **chat_options)
        befriend(alice, bob)
        return alice, bob

    return factory
