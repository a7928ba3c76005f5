"""Keys at rest (private key and vault), wrong passwords, fingerprints, contact cards (version 2),
and the primitives records are sealed, signed and keyed with."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA
from Crypto.Util.asn1 import DerSequence
from hypothesis import given, settings
from hypothesis import strategies as st

from reschat import crypto, kem, schedule
from reschat.errors import KeyFormatError, ProfileError, WrongPasswordError
from tests.conftest import TEST_SCRYPT_N, rsa_key, statics_key


def card_for(name: str, index: int, location: str = "") -> str:
    """A genuine card of test key ``index`` with its static keys."""
    return crypto.make_card(name, rsa_key(index), statics_key(index).public, location)


def assembled_card(public_key: RSA.RsaKey, signature: bytes, name: str = "mallory") -> str:
    """A card laid out exactly as make_card lays it out, with any key and any signature."""
    der = crypto.public_key_der(public_key)
    signed = crypto._card_signed(name, der, statics_key(0).public.to_bytes(), 0, "")
    body = crypto.CARD_PREFIX + crypto._b64u(
        signed[len(b"reschat-card/2") :] + len(signature).to_bytes(2, "big") + signature
    )
    return body + ":" + crypto._card_checksum(body)


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
    # The vault: the static keys and the store key, sealed, owner-only, the same at every unlock.
    vault = tmp_path / "p" / crypto.VAULT_FILE
    assert stat.S_IMODE(vault.stat().st_mode) == 0o600
    sealed = json.loads(vault.read_text())
    assert sealed["kdf"] == "scrypt" and set(sealed) >= {"salt", "sealed"}
    assert identity.store_key.hex() not in vault.read_text()
    assert identity.statics.x25519_seed.hex() not in vault.read_text()
    assert loaded.statics == identity.statics and loaded.store_key == identity.store_key
    assert loaded.issued == identity.issued != 0
    assert len(identity.store_key) == 32 and identity.store_key != loaded.statics.x25519_seed


def test_the_public_card_is_kept_for_whoami_without_the_password(tmp_path: Path) -> None:
    identity = crypto.create_keys("alice", "pw", tmp_path, scrypt_n=TEST_SCRYPT_N)
    stored = crypto.load_card(tmp_path)
    assert stored is not None and stored.startswith(crypto.CARD_PREFIX)
    contact = crypto.parse_contact(stored)
    assert contact.public_key == identity.public_key and contact.name == "alice"
    assert contact.statics == identity.statics.public and contact.issued == identity.issued
    assert "PRIVATE" not in stored and identity.statics.x25519_seed.hex() not in stored
    assert crypto.load_card(tmp_path / "nobody") is None


def test_an_identity_without_a_vault_gains_one_at_its_next_unlock(tmp_path: Path) -> None:
    first = crypto.create_keys("alice", "pw", tmp_path, scrypt_n=TEST_SCRYPT_N)
    (tmp_path / crypto.VAULT_FILE).unlink()  # as a protocol-1 profile is: a private key, no vault
    (tmp_path / crypto.CARD_FILE).unlink()
    assert crypto.load_card(tmp_path) is None
    unlocked = crypto.load_identity(tmp_path, "pw")
    assert unlocked.fingerprint == first.fingerprint
    assert unlocked.statics != first.statics  # new static keys, signed by the same RSA key
    assert (tmp_path / crypto.VAULT_FILE).exists()
    card = crypto.load_card(tmp_path)
    assert card is not None and crypto.parse_contact(card).statics == unlocked.statics.public
    assert crypto.load_identity(tmp_path, "pw").statics == unlocked.statics


def test_a_vault_that_does_not_open_is_refused(tmp_path: Path) -> None:
    crypto.create_keys("alice", "pw", tmp_path / "a", scrypt_n=TEST_SCRYPT_N)
    crypto.create_keys("bob", "other", tmp_path / "b", scrypt_n=TEST_SCRYPT_N)
    vault = tmp_path / "a" / crypto.VAULT_FILE
    vault.write_bytes((tmp_path / "b" / crypto.VAULT_FILE).read_bytes())  # sealed under another password
    with pytest.raises(WrongPasswordError, match="vault"):
        crypto.load_identity(tmp_path / "a", "pw")
    vault.write_text("{damaged")
    with pytest.raises(ProfileError, match="damaged"):
        crypto.load_identity(tmp_path / "a", "pw")


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
    card = crypto.make_card("Zoë 🙂", rsa_key(0), statics_key(0).public, "ledger.example:10005", issued=42)
    assert card.startswith("reschat-card:2:")
    assert card.isascii() and card.isprintable() and "\n" not in card
    folded = "  " + "\n".join(card[i : i + 80] for i in range(0, len(card), 80)) + "\n"
    contact = crypto.parse_contact(folded)
    assert contact.public_key == rsa_key(0).public_key() and contact.name == "Zoë 🙂"
    assert contact.statics == statics_key(0).public
    assert contact.location == "ledger.example:10005" and contact.issued == 42


def test_pem_keys_and_version_1_cards_are_refused_with_ask_for_a_new_card() -> None:
    pem = rsa_key(1).public_key().export_key("PEM").decode()
    with pytest.raises(KeyFormatError, match="ask for a new card"):
        crypto.parse_contact(pem)
    old_card = "reschat-card:1:Ym9i:" + base64.urlsafe_b64encode(crypto.public_key_der(rsa_key(1))).decode()
    with pytest.raises(KeyFormatError, match="ask for a new card"):
        crypto.parse_contact(old_card + ":12345678")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "nothing"),
        ("hello", "not a contact card"),
        ("reschat-card:2:abc", "incomplete"),
        ("reschat-card:1:abc", "ask for a new card"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "ask for a new card"),
    ],
)
def test_bad_contacts_are_rejected(text: str, reason: str) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        crypto.parse_contact(text)


def test_altered_card_fails_its_checksum_and_private_keys_are_refused() -> None:
    card = card_for("alice", 0)
    altered = card[:40] + ("A" if card[40] != "A" else "B") + card[41:]
    with pytest.raises(KeyFormatError, match="checksum"):
        crypto.parse_contact(altered)
    with pytest.raises(KeyFormatError, match=r"incomplete|checksum"):
        crypto.parse_contact(card[:-20])
    with pytest.raises(KeyFormatError, match="PRIVATE"):
        crypto.parse_contact(rsa_key(0).export_key("PEM").decode())


def test_a_card_altered_under_a_new_checksum_fails_its_signature() -> None:
    """The checksum catches typos; the signature catches an edit: the name, keys and location are signed."""
    genuine = crypto.parse_contact(card_for("alice", 0))
    signed = crypto._card_signed("alice", crypto.public_key_der(rsa_key(0)), statics_key(0).public.to_bytes(), 0, "")
    signature = crypto.sign(rsa_key(0), signed)
    assert genuine.name == "alice"
    assert crypto.parse_contact(assembled_card(rsa_key(0).public_key(), signature, "alice")).name == "alice"
    with pytest.raises(KeyFormatError, match="signature"):
        crypto.parse_contact(assembled_card(rsa_key(0).public_key(), signature, "mallory"))
    swapped_statics = crypto.make_card("alice", rsa_key(0), statics_key(1).public)
    assert crypto.parse_contact(swapped_statics).statics == statics_key(1).public  # signed by the RSA key: fine
    body, _checksum = swapped_statics.rsplit(":", 1)
    raw = bytearray(crypto._unb64u(body[len(crypto.CARD_PREFIX) :]))
    raw[-10] ^= 1  # inside the signature
    forged = crypto.CARD_PREFIX + crypto._b64u(bytes(raw))
    with pytest.raises(KeyFormatError, match="signature"):
        crypto.parse_contact(forged + ":" + crypto._card_checksum(forged))


def test_keys_outside_the_accepted_sizes_or_exponent_are_refused() -> None:
    small = RSA.generate(1024)  # noqa: S505 - the point is to refuse it
    with pytest.raises(KeyFormatError, match="bits"):
        crypto.parse_contact(crypto.make_card("small", small, statics_key(0).public))
    # Checked before the signature: a key that would make every check slow costs nothing to refuse.
    huge = RSA.construct((2**4200 + 1, crypto.RSA_EXPONENT))
    with pytest.raises(KeyFormatError, match="bits"):
        crypto.parse_contact(assembled_card(huge, b"x" * 525))
    big_exponent = RSA.construct((rsa_key(0).n, 2**64 + 1))
    with pytest.raises(KeyFormatError, match="65537"):
        crypto.parse_contact(assembled_card(big_exponent, b"x" * 384))
    three = RSA.construct((rsa_key(0).n, 3))
    with pytest.raises(KeyFormatError, match="65537"):
        crypto.parse_contact(assembled_card(three, b"x" * 384))


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
    card = card_for("alice", 0)
    position = data.draw(st.integers(0, len(card) - 1))
    replacement = data.draw(st.text(max_size=3))
    mutated = card[:position] + replacement + card[position + 1 :]
    try:
        contact = crypto.parse_contact(mutated)
    except KeyFormatError:
        return
    # Only a mutation that leaves the card intact (or whitespace) may parse, and then to the same keys.
    assert contact.public_key == rsa_key(0).public_key() and contact.statics == statics_key(0).public


def test_seal_sign_and_kem_round_trip_and_tampering_is_detected() -> None:
    key = crypto.new_symmetric_key()
    sealed = crypto.encrypt_message(key, b"secret", b"context")
    assert crypto.decrypt_message(key, sealed, b"context") == b"secret"
    with pytest.raises(ValueError):
        crypto.decrypt_message(key, sealed, b"other context")
    with pytest.raises(ValueError):
        crypto.decrypt_message(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"context")
    # The hybrid KEM that carries a page secret to one reader (what RSA-OAEP wrapping did in protocol 1).
    enc, secret = kem.encapsulate(statics_key(1).public, b"label")
    assert len(enc) == kem.ENC_BYTES and len(secret) == 32
    assert kem.decapsulate(statics_key(1), enc, b"label") == secret
    assert kem.decapsulate(statics_key(0), enc, b"label") != secret  # another reader's key
    assert kem.decapsulate(statics_key(1), enc, b"other label") != secret
    assert kem.decapsulate(statics_key(1), enc[:-1] + bytes([enc[-1] ^ 1]), b"label") != secret
    with pytest.raises(kem.KemError):
        kem.decapsulate(statics_key(1), enc[:-1], b"label")
    assert kem.encapsulate(statics_key(1).public, b"label")[1] != secret  # fresh every time
    signature = crypto.sign(rsa_key(0), b"data")
    assert crypto.verify(rsa_key(0).public_key(), b"data", signature)
    assert not crypto.verify(rsa_key(0).public_key(), b"datb", signature)
    assert not crypto.verify(rsa_key(1).public_key(), b"data", signature)
    assert not crypto.verify(rsa_key(0).public_key(), b"data", b"short")


def test_derived_keys_depend_on_purpose_and_place() -> None:
    secret = bytes(range(32))
    keys = {schedule.header_key(secret), schedule.chain_start(secret), schedule.slot_key(secret)}
    assert len(keys) == 3 and schedule.header_key(secret) == schedule.header_key(bytes(range(32)))
    chain = schedule.chain_start(secret)
    assert schedule.message_key(chain) != schedule.message_key(schedule.next_chain_key(chain))
    assert schedule.chain_key_at(chain, 0, 2) == schedule.next_chain_key(schedule.next_chain_key(chain))
    writer_a, writer_b = b"a" * 32, b"b" * 32
    addresses = {
        schedule.page_address(secret, writer_a, 1, 1), schedule.page_address(secret, writer_b, 1, 1),
        schedule.page_address(secret, writer_a, 2, 1), schedule.page_address(secret, writer_a, 1, 2),
        schedule.page_address(bytes(32), writer_a, 1, 1), schedule.chunk_address(secret, 0),
        schedule.chunk_address(secret, 1), schedule.probe_address(secret),
    }
    assert len(addresses) == 8
    assert all(len(a) == len("reschat2-") + 48 and a.startswith("reschat2-") for a in addresses)


def test_the_pair_secret_is_symmetric_and_only_the_pair_can_compute_it() -> None:
    a, b, c = statics_key(0), statics_key(1), statics_key(2)
    fpr_a, fpr_b = crypto.fingerprint_bytes(rsa_key(0)), crypto.fingerprint_bytes(rsa_key(1))
    shared_ab = kem.x25519_shared(a, b.public, b"reschat2 pair secret")
    assert shared_ab == kem.x25519_shared(b, a.public, b"reschat2 pair secret")
    assert shared_ab != kem.x25519_shared(c, b.public, b"reschat2 pair secret")
    address_key, conversation = schedule.pair_keys(shared_ab, fpr_a, fpr_b)
    assert (address_key, conversation) == schedule.pair_keys(shared_ab, fpr_b, fpr_a)
    assert address_key != conversation and len(conversation) == 32
    # Nothing public names the pair: not the fingerprints, not their hash.
    import hashlib

    public = [fpr_a, fpr_b, hashlib.sha256(b"".join(sorted([fpr_a, fpr_b]))).digest()]
    assert conversation not in public and address_key not in public
