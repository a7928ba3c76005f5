"""Protocol 2 against its adversaries: the observer, the holder of every long-term key, the quantum
attacker who broke X25519, and the thief of a whole profile (post-compromise security)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import shutil
from pathlib import Path

from Crypto.PublicKey import RSA

from reschat import crypto, kem
from reschat.lane import find_page_secret
from reschat.ledger import MemoryLedger
from reschat.page import PAGE_CAPACITY, SealedPage
from tests.conftest import Person, befriend, make_person, statics_key


def stored(ledger: MemoryLedger) -> dict[str, str]:
    return dict(ledger._data)


def encodings(raw: bytes) -> list[bytes]:
    """``raw`` as an observer would search for it: raw, hex (both cases), base64 and base64url."""
    return [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw).rstrip(b"="),
            base64.urlsafe_b64encode(raw).rstrip(b"=")]


def card_derived(person: Person) -> list[bytes]:
    der = crypto.public_key_der(person.identity.public_key)
    fingerprint = crypto.fingerprint_bytes(person.identity.public_key)
    statics = person.identity.statics.public
    return [der[-48:], fingerprint, fingerprint[:16], statics.x25519, statics.mlkem[-48:],
            hashlib.sha256(der).digest()[:16]]


def converse(a: Person, b: Person, rounds: int = 3) -> None:
    for i in range(rounds):
        a.chat.send_message(f"{a.name} to {b.name} {i}", b.name)
        b.chat.get_update(a.name)
        b.chat.send_message(f"{b.name} to {a.name} {i}", a.name)
        a.chat.get_update(b.name)


def test_the_observer_finds_no_card_derived_bytes_and_cannot_link_conversations(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    carol = make_person("carol", 2, tmp_path / "carol", ledger)
    befriend(alice, bob)
    befriend(alice, carol)
    before = set(stored(ledger))
    converse(alice, bob)
    ab = set(stored(ledger)) - before
    (tmp_path / "quarterly-report.pdf").write_bytes(b"%PDF secret numbers")
    alice.chat.send_file("bob", tmp_path / "quarterly-report.pdf")
    before = set(stored(ledger))
    converse(alice, carol)
    ac = set(stored(ledger)) - before
    everything = stored(ledger)
    blobs = [key.encode() for key in everything] + [value.encode() for value in everything.values()]
    blobs += [base64.b64decode(value.split(":", 1)[1]) for value in everything.values()]
    for person in (alice, bob, carol):
        for needle in itertools.chain.from_iterable(encodings(raw) for raw in card_derived(person)):
            assert not any(needle in blob for blob in blobs), f"{person.name}'s card bytes are on the ledger"
    # A plaintext would stand in a key, in a value's text outside its base64 payload, or in the payload's
    # decoded bytes. Inside the base64 text itself a four-letter word such as "text" turns up by chance (its
    # letters are base64's own: about once in a hundred runs over this test's values), and means nothing.
    readable = [key.encode() for key in everything] + [value.split(":", 1)[0].encode() for value in everything.values()]
    decoded = [base64.b64decode(value.split(":", 1)[1]) for value in everything.values()]
    for secret in (b"quarterly", b".pdf", b"secret numbers", b"alice to bob", b"text"):
        assert not any(secret in blob for blob in readable + decoded)
    # Every key has one shape; the two conversations share no key and no 16-byte run of value bytes.
    assert len({len(key) for key in everything}) == 1 and all(k.startswith("reschat2-") for k in everything)
    assert not ab & ac

    def windows(keys: set[str]) -> set[bytes]:
        found: set[bytes] = set()
        for key in keys:
            raw = base64.b64decode(everything[key].split(":", 1)[1])
            found |= {raw[i : i + 16] for i in range(0, len(raw) - 16, 8)}
        return found

    assert not windows(ab) & windows(ac)


def test_value_sizes_do_not_depend_on_the_signers_key_size(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    small = make_person("small", 0, tmp_path / "small", ledger)
    object.__setattr__(small.identity, "private_key", RSA.generate(2048))
    small.identity._card.clear()
    big = make_person("big", 1, tmp_path / "big", ledger)
    reader = make_person("reader", 2, tmp_path / "reader", ledger)
    befriend(small, reader)
    befriend(big, reader)
    sizes = {}
    for person in (small, big):
        before = set(stored(ledger))
        person.chat.send_message("yes", "reader")
        (key,) = set(stored(ledger)) - before
        sizes[person.name] = len(stored(ledger)[key])
    assert sizes["small"] == sizes["big"]


def test_holder_of_every_long_term_key_reads_nothing_after_the_first_exchange(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    alice.chat.send_message("first, to bob's card keys", "bob")
    bob.chat.get_update("alice")
    for i in range(PAGE_CAPACITY + 1):
        bob.chat.send_message(f"reply {i}", "alice")
    alice.chat.get_update("bob")
    for i in range(PAGE_CAPACITY + 1):
        alice.chat.send_message(f"later {i}", "bob")
    # The attacker: every RSA and static private key, and the whole ledger; no key store.
    long_term = [(0, statics_key(0)), (0, statics_key(1))]
    opened = []
    for value in stored(ledger).values():
        found = find_page_secret(SealedPage.from_string(value), long_term)
        opened.append(found is not None)
    assert opened.count(True) == 1  # alice's first page, keyed to bob's card before he announced a key
    assert len(opened) >= 4


def test_x25519_alone_opens_no_page(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    alice.chat.send_message("to bob's card", "bob")
    (value,) = stored(ledger).values()
    sealed = SealedPage.from_string(value)
    real = statics_key(1)
    assert find_page_secret(sealed, [(0, real)]) is not None  # the real key opens it
    # The quantum attacker knows bob's X25519 private key but must supply its own ML-KEM half.
    forged = kem.ReceiveKey(x25519_seed=real.x25519_seed, mlkem_private=kem.ReceiveKey.generate().mlkem_private)
    assert find_page_secret(sealed, [(0, forged)]) is None


def test_a_stolen_profile_opens_no_page_once_both_sides_moved_on(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    alice = make_person("alice", 0, tmp_path / "alice", ledger)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    converse(alice, bob, rounds=2)
    # Time T: the thief copies bob's whole profile (key store, static keys, store key).
    shutil.copytree(bob.home, tmp_path / "stolen")
    stolen_state = tmp_path / "stolen" / "lanes"
    # Both sides start a new page after T: bob first (a fresh receive key), then alice (keyed to it).
    for i in range(PAGE_CAPACITY):
        bob.chat.send_message(f"bob after T {i}", "alice")
    alice.chat.get_update("bob")
    for i in range(PAGE_CAPACITY + 1):
        alice.chat.send_message(f"alice after T {i}", "bob")
    assert any(m.text == "alice after T 20" for m in bob.chat.get_update("alice").messages)

    class ReadOnly(MemoryLedger):
        def set(self, key: str, value: str) -> None:  # the passive thief writes nothing
            pass

    thief_ledger = ReadOnly()
    thief_ledger._data = stored(ledger)
    thief = make_person("bob", 1, tmp_path / "thief", thief_ledger)
    shutil.rmtree(thief.home / "lanes", ignore_errors=True)
    shutil.copytree(stolen_state, thief.home / "lanes")
    thief.friends.add_friend("alice", crypto.parse_contact(alice.card))
    view = thief.chat.load_all("alice")
    texts = [m.text for m in view.messages]
    assert "alice to bob 0" in texts  # the stolen state is real: it opens what came before T
    # Messages appended to the page alice had open at T stay readable to the thief; none of the page
    # she started after T (keyed to bob's receive key announced after T) is.
    after = [text for text in texts if text.startswith("alice after T")]
    assert 0 < len(after) < PAGE_CAPACITY + 1 and "alice after T 20" not in texts
    assert any(p.kind == "undecryptable" for p in view.problems)
