"""Keys, fingerprints, contact cards, and the primitives messages are sealed and signed with.

Choices, all explicit rather than library defaults:
- identity keys are RSA-3072 (the seed's RSA, at today's recommended size);
- the private key at rest is PKCS#8 protected with scrypt (N=2**17, r=8, p=1) and AES-256-CBC;
- symmetric encryption is AES-256-GCM with a random 96-bit nonce and the record header as AAD;
- key wrapping is RSA-OAEP with SHA-256 (and MGF1-SHA-256); signatures are RSA-PSS with SHA-256;
- per-conversation symmetric keys are derived with HKDF-SHA-256 from the private key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes
from Crypto.Signature import pss

from reschat.errors import KeyFormatError, ProfileError, WrongPasswordError

RandFunc = Callable[[int], bytes]

RSA_BITS = 3072
#: Smallest and largest friend keys accepted: 2048 is the floor anyone still considers safe.
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192
SCRYPT_N = 2**17
_NONCE_BYTES, _TAG_BYTES, KEY_BYTES = 12, 16, 32

PRIVATE_KEY_FILE = "private_key.pem"
PUBLIC_KEY_FILE = "public_key.pem"
IDENTITY_FILE = "identity.json"

CARD_PREFIX = "reschat-card:1:"
_MAX_NAME_CHARS = 64


# --- keys and identities -----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The user's own name and key pair, unlocked for this session."""

    name: str
    private_key: RSA.RsaKey

    @property
    def public_key(self) -> RSA.RsaKey:
        return self.private_key.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def card(self) -> str:
        return make_card(self.name, self.public_key)


def identity_exists(profile_dir: Path) -> bool:
    """True when the profile already holds a private key."""
    return (Path(profile_dir) / PRIVATE_KEY_FILE).exists()


def _write_private_file(path: Path, data: bytes) -> None:
    # O_EXCL: never overwrite an identity, even if two processes race to create one.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o600)


def create_keys(
    username: str,
    password: str,
    profile_dir: Path,
    *,
    scrypt_n: int = SCRYPT_N,
    randfunc: RandFunc | None = None,
) -> Identity:
    """Create the identity (name + RSA-3072 key pair) in ``profile_dir``; refuse to overwrite one."""
    name = validate_name(username)
    if not password:
        raise ProfileError("the password must not be empty")
    profile_dir = Path(profile_dir)
    if identity_exists(profile_dir):
        raise ProfileError(f"an identity already exists in {profile_dir}; use another --home for a new one")
    profile_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(profile_dir, 0o700)
    key = RSA.generate(RSA_BITS, randfunc=randfunc or get_random_bytes)
    protected = key.export_key(
        format="PEM",
        pkcs=8,
        passphrase=password,
        protection="scryptAndAES256-CBC",
        prot_params={"iteration_count": scrypt_n, "block_size": 8, "parallelization": 1},
        randfunc=randfunc or get_random_bytes,
    )
    try:
        _write_private_file(profile_dir / PRIVATE_KEY_FILE, protected)
    except FileExistsError as exc:
        raise ProfileError(f"an identity already exists in {profile_dir}") from exc
    public_pem = key.public_key().export_key(format="PEM")
    (profile_dir / PUBLIC_KEY_FILE).write_bytes(public_pem + b"\n")
    identity_json = json.dumps({"name": name}, ensure_ascii=False).encode()
    (profile_dir / IDENTITY_FILE).write_bytes(identity_json + b"\n")
    return Identity(name=name, private_key=key)


def load_private_key(profile_dir: Path, password: str) -> RSA.RsaKey:
    """Unlock the private key; a wrong password raises WrongPasswordError (never returns None)."""
    path = Path(profile_dir) / PRIVATE_KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ProfileError(f"no identity in {profile_dir}: run 'reschat init' first") from exc
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from exc
    if b"ENCRYPTED PRIVATE KEY" not in data:
        raise ProfileError(f"{path} is not a password-protected private key")
    try:
        key = RSA.import_key(data, passphrase=password)
    except ValueError as exc:
        # pycryptodome raises a ValueError subclass for a wrong passphrase and for a damaged file;
        # the two cannot be told apart, so the message names both.
        raise WrongPasswordError("wrong password (or the private key file is damaged)") from exc
    if not key.has_private():
        raise ProfileError(f"{path} holds no private key")
    return key


def load_public_key(profile_dir: Path) -> RSA.RsaKey:
    """The user's own public key, readable without the password."""
    path = Path(profile_dir) / PUBLIC_KEY_FILE
    try:
        return string_to_public_key(path.read_text(encoding="ascii"))
    except FileNotFoundError as exc:
        raise ProfileError(f"no identity in {profile_dir}: run 'reschat init' first") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read {path}: {exc}") from exc


def load_identity(profile_dir: Path, password: str) -> Identity:
    """Unlock the identity stored in ``profile_dir``."""
    key = load_private_key(profile_dir, password)
    return Identity(name=load_name(profile_dir), private_key=key)


def load_name(profile_dir: Path) -> str:
    path = Path(profile_dir) / IDENTITY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return validate_name(str(data["name"]))
    except (OSError, ValueError, KeyError, TypeError, KeyFormatError) as exc:
        raise ProfileError(f"cannot read the identity name in {path}") from exc


def validate_name(name: str) -> str:
    """A display name: 1-64 printable characters, no control characters, trimmed."""
    cleaned = name.strip()
    if not cleaned:
        raise KeyFormatError("the name must not be empty")
    if len(cleaned) > _MAX_NAME_CHARS:
        raise KeyFormatError(f"the name is longer than {_MAX_NAME_CHARS} characters")
    if any(not ch.isprintable() for ch in cleaned):
        raise KeyFormatError("the name must not contain control characters")
    return cleaned


def public_key_to_string(key: RSA.RsaKey) -> str:
    """PEM text of a public key (what the friend store keeps)."""
    pem: bytes = key.public_key().export_key(format="PEM")
    return pem.decode("ascii")


def public_key_der(key: RSA.RsaKey) -> bytes:
    der: bytes = key.public_key().export_key(format="DER")
    return der


def _check_public_key(key: RSA.RsaKey) -> RSA.RsaKey:
    if key.has_private():
        raise KeyFormatError("that is a PRIVATE key: never share it; paste the public key or contact card")
    if not MIN_RSA_BITS <= key.size_in_bits() <= MAX_RSA_BITS:
        raise KeyFormatError(
            f"RSA key of {key.size_in_bits()} bits is outside {MIN_RSA_BITS}-{MAX_RSA_BITS} bits"
        )
    return key


def string_to_public_key(text: str) -> RSA.RsaKey:
    """Parse a PEM public key; anything else raises KeyFormatError."""
    if "PRIVATE KEY" in text:
        raise KeyFormatError("that is a PRIVATE key: never share it; paste the public key or contact card")
    try:
        key = RSA.import_key(text.strip())
    except (ValueError, IndexError, TypeError) as exc:
        raise KeyFormatError("not a valid RSA public key in PEM format") from exc
    return _check_public_key(key)


def _der_to_public_key(der: bytes) -> RSA.RsaKey:
    try:
        key = RSA.import_key(der)
    except (ValueError, IndexError, TypeError) as exc:
        raise KeyFormatError("the contact card holds no valid RSA public key") from exc
    return _check_public_key(key)


def fingerprint_bytes(key: RSA.RsaKey) -> bytes:
    """SHA-256 of the public key's DER encoding."""
    return hashlib.sha256(public_key_der(key)).digest()


def conversation_id(key_a: RSA.RsaKey, key_b: RSA.RsaKey) -> str:
    """The seed's page name: both public keys in sorted order, hashed so it is short ASCII."""
    digest = hashlib.sha256()
    for der in sorted([public_key_der(key_a), public_key_der(key_b)]):
        digest.update(len(der).to_bytes(4, "big") + der)
    return digest.hexdigest()


def fingerprint(key: RSA.RsaKey) -> str:
    """The fingerprint for people: 64 hex digits in groups of four."""
    digest = fingerprint_bytes(key).hex().upper()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


# --- contact cards -------------------------------------------------------------------------------


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64u(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _card_checksum(body: str) -> str:
    return hashlib.sha256(body.encode("ascii")).hexdigest()[:8]


def make_card(name: str, key: RSA.RsaKey) -> str:
    """One line of printable ASCII carrying the name and the public key, with a checksum."""
    body = CARD_PREFIX + _b64u(validate_name(name).encode("utf-8")) + ":" + _b64u(public_key_der(key))
    return body + ":" + _card_checksum(body)


@dataclass(frozen=True)
class Contact:
    """What a pasted card or PEM block tells: the key, and the name its owner chose (if any)."""

    public_key: RSA.RsaKey
    name: str | None


def parse_contact(text: str) -> Contact:
    """Read a contact card or a PEM public key as pasted in a terminal; raise KeyFormatError otherwise.

    Terminals fold long lines and add spaces when pasting, so all whitespace is removed from a card
    before it is checked; the checksum catches a truncated or altered paste.
    """
    stripped = text.strip()
    if not stripped:
        raise KeyFormatError("nothing was pasted: give a contact card or a PEM public key")
    if "-----BEGIN" in stripped:
        return Contact(public_key=string_to_public_key(stripped), name=None)
    compact = re.sub(r"\s+", "", stripped)
    if not compact.isascii() or not compact.startswith(CARD_PREFIX):
        raise KeyFormatError("not a contact card (reschat-card:1:...) or a PEM public key")
    parts = compact[len(CARD_PREFIX) :].split(":")
    if len(parts) != 3:
        raise KeyFormatError("the contact card is incomplete: copy the whole line")
    name_b64, key_b64, checksum = parts
    if _card_checksum(CARD_PREFIX + name_b64 + ":" + key_b64) != checksum.lower():
        raise KeyFormatError("the contact card's checksum does not match: it was cut or altered")
    try:
        name = validate_name(_unb64u(name_b64).decode("utf-8"))
        der = _unb64u(key_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise KeyFormatError("the contact card is damaged") from exc
    return Contact(public_key=_der_to_public_key(der), name=name)


# --- symmetric encryption, wrapping, signatures --------------------------------------------------


def new_symmetric_key(randfunc: RandFunc | None = None) -> bytes:
    return (randfunc or get_random_bytes)(KEY_BYTES)


def encrypt_message(key: bytes, plaintext: bytes, aad: bytes, randfunc: RandFunc | None = None) -> bytes:
    """AES-256-GCM: nonce || ciphertext || tag, authenticated together with ``aad``."""
    nonce = (randfunc or get_random_bytes)(_NONCE_BYTES)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
    cipher.update(aad)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return bytes(nonce + ciphertext + tag)


def decrypt_message(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of encrypt_message; raises ValueError when the key, data or aad do not match."""
    if len(sealed) < _NONCE_BYTES + _TAG_BYTES:
        raise ValueError("sealed message too short")
    nonce, body, tag = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:-_TAG_BYTES], sealed[-_TAG_BYTES:]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
    cipher.update(aad)
    return bytes(cipher.decrypt_and_verify(body, tag))


def wrap_key(public_key: RSA.RsaKey, key: bytes, randfunc: RandFunc | None = None) -> bytes:
    """RSA-OAEP-SHA256 encryption of a symmetric key."""
    cipher = PKCS1_OAEP.new(public_key, hashAlgo=SHA256, randfunc=randfunc or get_random_bytes)
    return bytes(cipher.encrypt(key))


def unwrap_key(private_key: RSA.RsaKey, wrapped: bytes) -> bytes:
    """Inverse of wrap_key; raises ValueError when it was not wrapped for this key."""
    key = PKCS1_OAEP.new(private_key, hashAlgo=SHA256).decrypt(wrapped)
    if len(key) != KEY_BYTES:
        raise ValueError("wrapped key has the wrong length")
    return bytes(key)


def sign(private_key: RSA.RsaKey, data: bytes, randfunc: RandFunc | None = None) -> bytes:
    """RSA-PSS-SHA256 signature of ``data``."""
    signer = pss.new(private_key, rand_func=randfunc or get_random_bytes)
    return bytes(signer.sign(SHA256.new(data)))


def verify(public_key: RSA.RsaKey, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s PSS signature of ``data``."""
    try:
        pss.new(public_key).verify(SHA256.new(data), signature)
    except (ValueError, TypeError):
        return False
    return True


def derive_key(private_key: RSA.RsaKey, purpose: str, context: bytes) -> bytes:
    """A symmetric key only the holder of ``private_key`` can compute (HKDF-SHA256 over the secret)."""
    secret: bytes = private_key.export_key(format="DER", pkcs=8)
    derived = HKDF(secret, KEY_BYTES, salt=context, hashmod=SHA256, context=purpose.encode("ascii"))
    assert isinstance(derived, bytes)
    return derived


def subkey(key: bytes, purpose: str) -> bytes:
    """A symmetric key for another ``purpose`` from ``key`` (HKDF-SHA256; cheap, unlike derive_key)."""
    derived = HKDF(key, KEY_BYTES, salt=b"", hashmod=SHA256, context=purpose.encode("ascii"))
    assert isinstance(derived, bytes)
    return derived
