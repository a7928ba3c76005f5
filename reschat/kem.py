"""The hybrid key exchange of protocol 2: X25519 and ML-KEM-768, each through HPKE, bound in HKDF.

pycryptodome keeps raw ML-KEM encapsulation private and cannot export a ``Hybrid.MLKEM768_X25519``
key, so each exchange is one HPKE context per KEM (RFC 9180, base mode, AES-256-GCM): one to the
receiver's ML-KEM-768 key and one to its X25519 key. Each context gives a 32-byte exporter secret,
and the two are combined as PQXDH and X-Wing bind their inputs::

    secret = HKDF-SHA256(ikm = S_mlkem || S_x25519,
                         salt = "reschat2 hybrid kem",
                         info = label || enc_mlkem || enc_x25519 || pk_mlkem || pk_x25519)

so the result is secret as long as either exchange is, and is tied to both ciphertexts and both
public keys (no ciphertext can be replayed against another key pair). Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from Crypto.Hash import SHA256
from Crypto.Protocol import HPKE
from Crypto.Protocol.DH import import_x25519_private_key, import_x25519_public_key
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC, MLKEM

#: Sizes on the wire: an X25519 public key, an ML-KEM-768 public key (DER) and the two encapsulations.
X25519_PUBLIC_BYTES = 32
MLKEM_PUBLIC_BYTES = 1206
MLKEM_ENC_BYTES = 1088
X25519_ENC_BYTES = 32
ENC_BYTES = MLKEM_ENC_BYTES + X25519_ENC_BYTES
PUBLIC_BYTES = X25519_PUBLIC_BYTES + MLKEM_PUBLIC_BYTES

_SALT = b"reschat2 hybrid kem"
_EXPORT_CONTEXT = b"reschat2 exporter"


class KemError(ValueError):
    """A public key or an encapsulation that cannot be used."""


@dataclass(frozen=True)
class ReceivePublic:
    """The public half of a hybrid receive key, as it travels: X25519 raw || ML-KEM-768 DER."""

    x25519: bytes
    mlkem: bytes

    def to_bytes(self) -> bytes:
        return self.x25519 + self.mlkem

    @classmethod
    def from_bytes(cls, data: bytes) -> ReceivePublic:
        if len(data) != PUBLIC_BYTES:
            raise KemError("a hybrid public key has the wrong length")
        public = cls(x25519=bytes(data[:X25519_PUBLIC_BYTES]), mlkem=bytes(data[X25519_PUBLIC_BYTES:]))
        public.keys()  # refuse what cannot be imported now, not at the first use
        return public

    def keys(self) -> tuple[ECC.EccKey, MLKEM.MLKEMKey]:
        try:
            x_key = import_x25519_public_key(self.x25519)
            k_key = MLKEM.import_key(self.mlkem)
        except (ValueError, TypeError, IndexError) as exc:
            raise KemError("a hybrid public key cannot be imported") from exc
        if k_key.has_private() or k_key.param_set != MLKEM.ML_KEM_768:
            raise KemError("not an ML-KEM-768 public key")
        return x_key, k_key

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()


@dataclass(frozen=True)
class ReceiveKey:
    """A hybrid key pair; the private halves are kept as the seeds they are generated from."""

    x25519_seed: bytes  # 32 bytes
    mlkem_private: bytes  # DER (the 64-byte seed inside)

    @classmethod
    def generate(cls) -> ReceiveKey:
        x_key = ECC.generate(curve="Curve25519")
        k_key = MLKEM.generate(param_set=MLKEM.ML_KEM_768)
        return cls(x25519_seed=bytes(x_key.seed), mlkem_private=bytes(k_key.export_key(format="DER")))

    def keys(self) -> tuple[ECC.EccKey, MLKEM.MLKEMKey]:
        try:
            return import_x25519_private_key(self.x25519_seed), MLKEM.import_key(self.mlkem_private)
        except (ValueError, TypeError, IndexError) as exc:
            raise KemError("a stored receive key is damaged") from exc

    @property
    def public(self) -> ReceivePublic:
        x_key, k_key = self.keys()
        return ReceivePublic(
            x25519=bytes(x_key.public_key().export_key(format="raw")),
            mlkem=bytes(k_key.public_key().export_key(format="DER")),
        )

    def to_dict(self) -> dict[str, str]:
        return {"x": self.x25519_seed.hex(), "k": self.mlkem_private.hex()}

    @classmethod
    def from_dict(cls, data: object) -> ReceiveKey:
        if not isinstance(data, dict):
            raise KemError("a stored receive key is damaged")
        try:
            return cls(bytes.fromhex(str(data["x"])), bytes.fromhex(str(data["k"])))
        except (KeyError, ValueError) as exc:
            raise KemError("a stored receive key is damaged") from exc


def _combine(label: bytes, s_mlkem: bytes, s_x: bytes, enc: bytes, public: ReceivePublic) -> bytes:
    info = label + enc + public.mlkem + public.x25519
    combined = HKDF(s_mlkem + s_x, 32, salt=_SALT, hashmod=SHA256, context=info)
    assert isinstance(combined, bytes)
    return combined


def encapsulate(public: ReceivePublic, label: bytes) -> tuple[bytes, bytes]:
    """A fresh shared secret for the holder of ``public``: (enc of ENC_BYTES, 32-byte secret)."""
    x_key, k_key = public.keys()
    to_mlkem = HPKE.new(receiver_key=k_key, aead_id=HPKE.AEAD.AES256_GCM, info=label)
    to_x = HPKE.new(receiver_key=x_key, aead_id=HPKE.AEAD.AES256_GCM, info=label)
    enc = bytes(to_mlkem.enc) + bytes(to_x.enc)
    secret = _combine(label, to_mlkem.export(_EXPORT_CONTEXT, 32), to_x.export(_EXPORT_CONTEXT, 32), enc, public)
    return enc, secret


def decapsulate(key: ReceiveKey, enc: bytes, label: bytes) -> bytes:
    """The secret ``encapsulate`` gave for ``key``'s public half; KemError when ``enc`` is unusable.

    A mismatched key does not fail here (KEMs give a pseudo-random secret instead): the caller finds
    out when the AEAD that the secret keys does not open.
    """
    if len(enc) != ENC_BYTES:
        raise KemError("an encapsulation has the wrong length")
    x_key, k_key = key.keys()
    try:
        from_mlkem = HPKE.new(
            receiver_key=k_key, aead_id=HPKE.AEAD.AES256_GCM, enc=enc[:MLKEM_ENC_BYTES], info=label
        )
        from_x = HPKE.new(receiver_key=x_key, aead_id=HPKE.AEAD.AES256_GCM, enc=enc[MLKEM_ENC_BYTES:], info=label)
    except (ValueError, TypeError, HPKE.DeserializeError) as exc:
        raise KemError("an encapsulation cannot be used") from exc
    return _combine(label, from_mlkem.export(_EXPORT_CONTEXT, 32), from_x.export(_EXPORT_CONTEXT, 32), enc, key.public)


def x25519_shared(own: ReceiveKey, other: ReceivePublic, label: bytes) -> bytes:
    """Static-static X25519 (for the pair's private addresses only), through HKDF with ``label``."""
    from Crypto.Protocol.DH import key_agreement

    # Only the X25519 halves: importing the ML-KEM private key expands it from its seed, which is most
    # of the cost of a whole ``keys()`` and is not needed here.
    try:
        x_own = import_x25519_private_key(own.x25519_seed)
        x_other = import_x25519_public_key(other.x25519)
    except (ValueError, TypeError, IndexError) as exc:
        raise KemError("an X25519 key cannot be imported") from exc

    def kdf(shared: bytes) -> bytes:
        derived = HKDF(shared, 32, salt=b"reschat2 pair", hashmod=SHA256, context=label)
        assert isinstance(derived, bytes)
        return derived

    result = key_agreement(static_priv=x_own, static_pub=x_other, kdf=kdf)
    assert isinstance(result, bytes)
    return result
