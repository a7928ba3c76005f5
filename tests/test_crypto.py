"""Keys at rest, wrong passwords, fingerprints, contact cards, and the sealing primitives."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA
from Crypto.Util.asn1 import DerSequence
from hypothesis import given, settings
from hypothesis import strategies as st

from reschat import crypto
from reschat.errors import KeyFormatError, ProfileError, WrongPasswordError
from tests.conftest import TEST_SCRYPT_N, rsa_key


def test_create_keys_protects_the_private_key_with_scrypt_and_mode_0600(tmp_path: Path) -> None:
    identity = crypto.create_keys("alice", "correct horse", tmp_path / "p", scrypt_n=TEST_SCRYPT_N)
    key_file = tmp_path / "p" / crypto.PRIVATE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    pem = key_file.read_text()
    assert pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert identity.private_key.size_in_bits() == 3072
    loaded = crypto.load_identity(tmp_path / "p", "correct horse")
    assert loaded.name == "alice" and loaded.fingerprint == identity.fingerprint
    assert crypto.load_public_key(tmp_path / "p") == identity.public_key


def test_default_protection_is_scrypt_with_the_documented_cost(tmp_path: Path) -> None:
    crypto.create_keys("bob", "pw", tmp_path)  # the real default cost
    pem = (tmp_path / crypto.PRIVATE_KEY_FILE).read_text()
    encoded = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
    algorithm = bytes(DerSequence().decode(DerSequence().decode(encoded)[0]).encode())
    assert bytes.fromhex("2a864886f70d01050d") in algorithm  # PBES2 (1.2.840.113549.1.5.13)
    assert bytes.fromhex("2b06010401da47040b") in algorithm  # scrypt (1.3.6.1.4.1.11591.4.11)
    assert bytes.fromhex("60864801650304012a") in algorithm  # AES-256-CBC
    assert bytes.fromhex("0203") + crypto.SCRYPT_N.to_bytes(3, "big") in algorithm  # INTEGER N = 2**17
    assert crypto.load_identity(tmp_path, "pw").name == "bob"


def test_wrong_password_is_a_specific_error(tmp_path: Path) -> None:
    crypto.create_keys("alice", "right", tmp_path, scrypt_n=TEST_SCRYPT_N)
    with pytest.raises(WrongPasswordError):
        crypto.load_identity(tmp_path, "wrong")
    with pytest.raises(WrongPasswordError):
        crypto.load_identity(tmp_path, "")


def test_existing_identity_is_never_overwritten(tmp_path: Path) -> None:
    first = crypto.create_keys("alice", "pw", tmp_path, scrypt_n=TEST_SCRYPT_N)
    before = (tmp_path / crypto.PRIVATE_KEY_FILE).read_bytes()
    with pytest.raises(ProfileError, match="already exists"):
        crypto.create_keys("mallory", "pw2", tmp_path, scrypt_n=TEST_SCRYPT_N)
    assert (tmp_path / crypto.PRIVATE_KEY_FILE).read_bytes() == before
    assert crypto.load_identity(tmp_path, "pw").fingerprint == first.fingerprint


def test_missing_identity_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="reschat init"):
        crypto.load_identity(tmp_path, "pw")
    for bad in ["", "   ", "a\x1bb", "x" * 65]:
        with pytest.raises(KeyFormatError):
            crypto.create_keys(bad, "pw", tmp_path / "n", scrypt_n=TEST_SCRYPT_N)
    with pytest.raises(ProfileError, match="password"):
        crypto.create_keys("ok", "", tmp_path / "n", scrypt_n=TEST_SCRYPT_N)


def test_fingerprint_is_sha256_of_der_in_groups() -> None:
    import hashlib

    key = rsa_key(0)
    printed = crypto.fingerprint(key)
    groups = printed.split(" ")
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    assert printed.replace(" ", "").lower() == hashlib.sha256(key.public_key().export_key("DER")).hexdigest()


def test_card_round_trip_survives_terminal_folding() -> None:
    key = rsa_key(0).public_key()
    card = crypto.make_card("Zoë 🙂", key)
    assert card.isascii() and card.isprintable() and "\n" not in card
    folded = "  " + "\n".join(card[i : i + 80] for i in range(0, len(card), 80)) + "\n"
    contact = crypto.parse_contact(folded)
    assert contact.public_key == key and contact.name == "Zoë 🙂"


def test_multiline_pem_is_accepted() -> None:
    key = rsa_key(1).public_key()
    contact = crypto.parse_contact(key.export_key("PEM").decode())
    assert contact.public_key == key and contact.name is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "nothing"),
        ("hello", "not a contact card"),
        ("reschat-card:1:abc", "incomplete"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "not a valid"),
    ],
)
def test_bad_contacts_are_rejected(text: str, reason: str) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        crypto.parse_contact(text)


def test_altered_card_fails_its_checksum_and_private_keys_are_refused() -> None:
    card = crypto.make_card("alice", rsa_key(0).public_key())
    altered = card[:40] + ("A" if card[40] != "A" else "B") + card[41:]
    with pytest.raises(KeyFormatError, match="checksum"):
        crypto.parse_contact(altered)
    with pytest.raises(KeyFormatError, match=r"incomplete|checksum"):
        crypto.parse_contact(card[:-20])
    with pytest.raises(KeyFormatError, match="PRIVATE"):
        crypto.parse_contact(rsa_key(0).export_key("PEM").decode())


def test_small_keys_are_refused() -> None:
    small = RSA.generate(1024).public_key()  # noqa: S505 - the point is to refuse it
    with pytest.raises(KeyFormatError, match="bits"):
        crypto.parse_contact(small.export_key("PEM").decode())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_contact_parser_accepts_or_raises_the_documented_error(text: str) -> None:
    try:
        contact = crypto.parse_contact(text)
    except KeyFormatError:
        return
    assert contact.public_key.size_in_bits() >= crypto.MIN_RSA_BITS


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_cards_never_crash(data: st.DataObject) -> None:
    card = crypto.make_card("alice", rsa_key(0).public_key())
    position = data.draw(st.integers(0, len(card) - 1))
    replacement = data.draw(st.text(max_size=3))
    mutated = card[:position] + replacement + card[position + 1 :]
    try:
        contact = crypto.parse_contact(mutated)
    except KeyFormatError:
        return
    # Only a mutation that leaves the card intact (or whitespace) may parse, and then to the same key.
    assert contact.public_key == rsa_key(0).public_key()


def test_seal_wrap_sign_round_trips_and_tampering_is_detected() -> None:
    key = crypto.new_symmetric_key()
    sealed = crypto.encrypt_message(key, b"secret", b"context")
    assert crypto.decrypt_message(key, sealed, b"context") == b"secret"
    with pytest.raises(ValueError):
        crypto.decrypt_message(key, sealed, b"other context")
    with pytest.raises(ValueError):
        crypto.decrypt_message(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"context")
    wrapped = crypto.wrap_key(rsa_key(1).public_key(), key)
    assert crypto.unwrap_key(rsa_key(1), wrapped) == key
    with pytest.raises(ValueError):
        crypto.unwrap_key(rsa_key(0), wrapped)
    signature = crypto.sign(rsa_key(0), b"data")
    assert crypto.verify(rsa_key(0).public_key(), b"data", signature)
    assert not crypto.verify(rsa_key(0).public_key(), b"datb", signature)
    assert not crypto.verify(rsa_key(1).public_key(), b"data", signature)
    assert not crypto.verify(rsa_key(0).public_key(), b"data", b"short")


def test_derived_keys_depend_on_key_purpose_and_context() -> None:
    a = crypto.derive_key(rsa_key(0), "lane", b"c1")
    assert a == crypto.derive_key(rsa_key(0), "lane", b"c1")
    assert len({a, crypto.derive_key(rsa_key(0), "self", b"c1"), crypto.derive_key(rsa_key(0), "lane", b"c2"),
                crypto.derive_key(rsa_key(1), "lane", b"c1")}) == 4


def test_conversation_id_is_symmetric() -> None:
    a, b = rsa_key(0).public_key(), rsa_key(1).public_key()
    assert crypto.conversation_id(a, b) == crypto.conversation_id(b, a)
    assert len(crypto.conversation_id(a, b)) == 64
