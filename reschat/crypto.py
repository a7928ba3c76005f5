"""Keys, fingerprints, contact cards (version 2), and the primitives records are sealed and signed with.

Choices, all explicit rather than library defaults:
- identity keys are RSA-3072 (the seed's RSA, at today's recommended size), used for one purpose
  only: RSA-PSS-SHA256 signatures. Friends' keys must have e = 65537 and 2048 to 4096 bits;
- the private key at rest is PKCS#8 protected with scrypt (N=2**17, r=8, p=1) and AES-256-CBC;
- the *vault* beside it holds, sealed with AES-256-GCM under another scrypt derivation of the
  password, the static X25519 and ML-KEM-768 keys of the card and the random key that seals the
  local key store (``keystore``). No key in ResChat is derived from the RSA key;
- a contact card (version 2) carries the name, the RSA key and the static hybrid public key, signed
  with the RSA key, plus an optional signed ledger location and a checksum that catches typos.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import scrypt
from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes
from Crypto.Signature import pss

from reschat.errors import KeyFormatError, ProfileError, WrongPasswordError
from reschat.kem import PUBLIC_BYTES, KemError, ReceiveKey, ReceivePublic

RandFunc = Callable[[int], bytes]

RSA_BITS = 3072
#: Friends' keys: 2048 is the floor anyone still considers safe; 4096 bounds what one check costs.
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 4096
RSA_EXPONENT = 65537
SCRYPT_N = 2**17
_NONCE_BYTES, _TAG_BYTES, KEY_BYTES = 12, 16, 32

PRIVATE_KEY_FILE = "private_key.pem"
PUBLIC_KEY_FILE = "public_key.pem"
IDENTITY_FILE = "identity.json"
VAULT_FILE = "vault.json"
CARD_FILE = "card.txt"

CARD_PREFIX = "reschat-card:2:"
OLD_CARD_PREFIX = "reschat-card:1:"
_MAX_NAME_CHARS = 64
_MAX_LOCATION_BYTES = 512


# --- keys and identities -----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The user's own name and keys, unlocked for this session."""

    name: str
    private_key: RSA.RsaKey
    #: The static X25519 + ML-KEM-768 key pair whose public half the card carries.
    statics: ReceiveKey
    #: The random key that seals the local key store (kept in the vault, never derived from a key).
    store_key: bytes
    location: str = ""
    #: When the card was issued (its static keys signed): a newer card of the same RSA key wins.
    issued: int = 0
    _card: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def public_key(self) -> RSA.RsaKey:
        return self.private_key.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def card(self) -> str:
        if not self._card:  # signing costs a private-key operation: once per identity
            self._card.append(make_card(self.name, self.private_key, self.statics.public, self.location, self.issued))
        return self._card[0]


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
    location: str = "",
) -> Identity:
    """Create the identity (name, RSA-3072 key pair, vault) in ``profile_dir``; refuse to overwrite one."""
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
    _write_public_file(profile_dir / PUBLIC_KEY_FILE, public_pem + b"\n")
    identity_json = json.dumps({"name": name}, ensure_ascii=False).encode()
    _write_public_file(profile_dir / IDENTITY_FILE, identity_json + b"\n")
    return _open_vault(profile_dir, password, name, key, scrypt_n=scrypt_n, location=location)


def _write_public_file(path: Path, data: bytes) -> None:
    from reschat.storage import atomic_write

    atomic_write(path, data)


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


def load_card(profile_dir: Path) -> str | None:
    """The user's own public card as last unlocked (readable without the password), if any."""
    try:
        text = (Path(profile_dir) / CARD_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def load_identity(profile_dir: Path, password: str, *, scrypt_n: int = SCRYPT_N, location: str = "") -> Identity:
    """Unlock the identity stored in ``profile_dir``; an identity without a vault gains one now.

    ``location`` is the ledger the card names (see ``config.card_location``): the card in the profile
    is signed again with it, so that ``whoami`` shows the ledger in use since the last unlock.
    """
    key = load_private_key(profile_dir, password)
    return _open_vault(Path(profile_dir), password, load_name(profile_dir), key, scrypt_n=scrypt_n,
                       location=location)


# --- the vault: static keys and the key store's key, under the password ---------------------------------


def _vault_kek(password: str, salt: bytes, n: int) -> bytes:
    derived = scrypt(password.encode("utf-8"), salt, KEY_BYTES, N=n, r=8, p=1)
    assert isinstance(derived, bytes)
    return derived


def _open_vault(
    profile_dir: Path, password: str, name: str, key: RSA.RsaKey, *, scrypt_n: int, location: str = ""
) -> Identity:
    path = profile_dir / VAULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = None
    except (OSError, ValueError) as exc:
        raise ProfileError(f"the vault {path} is damaged; restore it from a backup") from exc
    if data is None:
        statics, store_key = ReceiveKey.generate(), get_random_bytes(KEY_BYTES)
        issued = _now_micros()
        salt = get_random_bytes(16)
        content = json.dumps({"statics": statics.to_dict(), "store_key": store_key.hex(), "issued": issued})
        kek = _vault_kek(password, salt, scrypt_n)
        sealed = encrypt_message(kek, content.encode("ascii"), b"reschat-vault/1")
        vault = {"v": 1, "kdf": "scrypt", "n": scrypt_n, "r": 8, "p": 1, "salt": salt.hex(), "sealed": sealed.hex()}
        from reschat.storage import atomic_write_json

        atomic_write_json(path, vault)
    else:
        try:
            n, salt, sealed = int(data["n"]), bytes.fromhex(data["salt"]), bytes.fromhex(data["sealed"])
            if data.get("kdf") != "scrypt" or not 2**10 <= n <= 2**22:
                raise ValueError("unknown key derivation")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(f"the vault {path} is damaged; restore it from a backup") from exc
        try:
            content_bytes = decrypt_message(_vault_kek(password, salt, n), sealed, b"reschat-vault/1")
            content = json.loads(content_bytes)
            statics = ReceiveKey.from_dict(content["statics"])
            store_key = bytes.fromhex(content["store_key"])
            issued = int(content["issued"])
        except ValueError as exc:
            raise WrongPasswordError("the vault does not open with this password (or it is damaged)") from exc
        except (KeyError, TypeError, KemError) as exc:
            raise ProfileError(f"the vault {path} is damaged; restore it from a backup") from exc
    identity = Identity(name=name, private_key=key, statics=statics, store_key=store_key, issued=issued,
                        location=location)
    _write_public_file(profile_dir / CARD_FILE, identity.card.encode("ascii") + b"\n")
    return identity


def relocate(identity: Identity, profile_dir: Path, location: str) -> Identity:
    """The identity with its card naming ``location`` (signed again), the profile's card rewritten."""
    if location == identity.location:
        return identity
    moved = replace(identity, location=location, _card=[])
    _write_public_file(Path(profile_dir) / CARD_FILE, moved.card.encode("ascii") + b"\n")
    return moved


def _now_micros() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1_000_000)


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
    if key.e != RSA_EXPONENT:
        # A huge exponent makes every failed signature check cost ~100 ms: refuse it up front.
        raise KeyFormatError(f"RSA keys must use the public exponent {RSA_EXPONENT}")
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


def _card_signed(name: str, rsa_der: bytes, statics: bytes, issued: int, location: str) -> bytes:
    name_b, loc_b = name.encode("utf-8"), location.encode("utf-8")
    return b"".join([
        b"reschat-card/2", len(name_b).to_bytes(2, "big"), name_b, len(rsa_der).to_bytes(2, "big"), rsa_der,
        statics, issued.to_bytes(8, "big"), len(loc_b).to_bytes(2, "big"), loc_b,
    ])


def make_card(
    name: str, private_key: RSA.RsaKey, statics: ReceivePublic, location: str = "", issued: int = 0
) -> str:
    """One line of printable ASCII: name, RSA key, signed static keys, signed location, checksum."""
    if len(location.encode("utf-8")) > _MAX_LOCATION_BYTES:
        raise KeyFormatError("the ledger location is too long for a card")
    signed = _card_signed(validate_name(name), public_key_der(private_key), statics.to_bytes(), issued, location)
    signature = sign(private_key, signed)
    body = CARD_PREFIX + _b64u(signed[len(b"reschat-card/2") :] + len(signature).to_bytes(2, "big") + signature)
    return body + ":" + _card_checksum(body)


@dataclass(frozen=True)
class Contact:
    """What a pasted card tells: the RSA key, the name its owner chose, the signed static keys."""

    public_key: RSA.RsaKey
    name: str
    statics: ReceivePublic
    location: str = ""
    issued: int = 0


def _take(data: bytes, offset: int, size: int) -> tuple[bytes, int]:
    if offset + size > len(data):
        raise ValueError("truncated")
    return data[offset : offset + size], offset + size


def _take_sized(data: bytes, offset: int) -> tuple[bytes, int]:
    size_bytes, offset = _take(data, offset, 2)
    return _take(data, offset, int.from_bytes(size_bytes, "big"))


def card_is_incomplete(text: str) -> bool:
    """True for the start of a card that has not been pasted whole yet (no checksum at its end)."""
    compact = re.sub(r"\s+", "", text)
    return compact.startswith(CARD_PREFIX[: len(compact)]) or (
        compact.startswith(CARD_PREFIX) and compact.count(":") < 3
    )


def parse_contact(text: str) -> Contact:
    """Read a contact card as pasted in a terminal; raise KeyFormatError otherwise.

    Terminals fold long lines and add spaces when pasting, so all whitespace is removed from a card
    before it is checked; the checksum catches a truncated or altered paste (only that: whether the
    key is really your friend's is what the safety number tells).
    """
    stripped = text.strip()
    if not stripped:
        raise KeyFormatError("nothing was pasted: give a contact card (reschat-card:2:...)")
    if "PRIVATE KEY" in stripped:
        raise KeyFormatError("that is a PRIVATE key: never share it; paste the contact card")
    compact = re.sub(r"\s+", "", stripped)
    if "-----BEGIN" in stripped or compact.startswith(OLD_CARD_PREFIX):
        raise KeyFormatError("that card has no static keys (an old card or a bare key): ask for a new card")
    if not compact.isascii() or not compact.startswith(CARD_PREFIX):
        raise KeyFormatError("not a contact card (reschat-card:2:...)")
    parts = compact[len(CARD_PREFIX) :].split(":")
    if len(parts) != 2:
        raise KeyFormatError("the contact card is incomplete: copy the whole line")
    body_b64, checksum = parts
    if _card_checksum(CARD_PREFIX + body_b64) != checksum.lower():
        raise KeyFormatError("the contact card's checksum does not match: it was cut or altered")
    try:
        body = _unb64u(body_b64)
        name_b, offset = _take_sized(body, 0)
        rsa_der, offset = _take_sized(body, offset)
        statics_b, offset = _take(body, offset, PUBLIC_BYTES)
        issued_b, offset = _take(body, offset, 8)
        loc_b, offset = _take_sized(body, offset)
        signature, offset = _take_sized(body, offset)
        if offset != len(body):
            raise ValueError("trailing data")
        name = validate_name(name_b.decode("utf-8"))
        location = loc_b.decode("utf-8")
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise KeyFormatError("the contact card is damaged") from exc
    key = _der_to_public_key(rsa_der)
    issued = int.from_bytes(issued_b, "big")
    if not verify(key, _card_signed(name, rsa_der, statics_b, issued, location), signature):
        raise KeyFormatError("the contact card's signature does not verify: it was altered")
    try:
        statics = ReceivePublic.from_bytes(statics_b)
    except KemError as exc:
        raise KeyFormatError("the contact card's static keys are damaged") from exc
    if any(not ch.isprintable() for ch in location):
        raise KeyFormatError("the contact card's ledger location is damaged")
    return Contact(public_key=key, name=name, statics=statics, location=location, issued=issued)


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
