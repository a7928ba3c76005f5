"""Page: the seed's container of 20 messages, sealed for the ledger (protocol 2, no I/O).

What the ledger stores for a page is one line of printable ASCII::

    reschat2:<base64 of: version | slot count | slots | sealed header | record count | sealed records>

To a stranger all of it is opaque: each *slot* is a hybrid KEM encapsulation to one reader and the
page secret wrapped under it; the *header* and every *record* are AES-256-GCM under keys derived from
that page secret (``schedule``). Inside, the header names the conversation, the writer, the epoch,
the page number, the link to the lane's previous record, a digest of the slots and the writer's next
receive key, and is signed (RSA-PSS) by the writer. Each record holds the seed's fields (type,
timestamp, type extension, text) with its sequence number, the hash of the lane's previous record and
the causal mark (in a pair, the newest record of the friend's lane its writer had seen; in a group, one
record of another member's lane, see ``group``), padded to a size bucket
and followed by its RSA-PSS signature padded to 512 bytes (whatever the signer's key size). The
signature covers the header's digest, so a record cannot be moved to another page, place or lane.

In memory ``Page.msg`` keeps the seed's six columns (receiver, type, timestamp, type extension,
message for the sender, message for the receiver) for the records that are open. One page secret
serves the writer and every reader, so the message for the sender and the message for the receiver
are the same sealed record: the seed needed two ciphertexts only because it encrypted to one RSA key
at a time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from Crypto.Cipher import AES

from reschat import schedule
from reschat.errors import PageFormatError
from reschat.kem import ENC_BYTES, PUBLIC_BYTES

PAGE_CAPACITY = 20
#: The longest page the ledger takes (one argv string for ``kv_service_tools``).
MAX_PAGE_BYTES = 131_071
FORMAT_VERSION = 2
PREFIX = "reschat2:"
OLD_PREFIXES = ("reschat-page/",)
MAX_SLOTS = 32
TAG_BYTES = 16

#: Column names of ``Page.msg`` (the seed's six fields).
MSG_FIELDS = ("receiver", "type", "timestamp", "type_ext", "for_sender", "for_receiver")
MESSAGE_TYPES = ("text", "file", "setting")
GENESIS_HASH = bytes(32)

SIGNATURE_SLOT = 512
_WRAP_BYTES = 32 + 16
SLOT_BYTES = ENC_BYTES + _WRAP_BYTES
_TAG = 16
_NONCE = bytes(12)  # every key seals exactly one plaintext: a fixed nonce is safe and saves 12 bytes
_HEADER_FMT = ">B32s32sIIQ32sB32s"  # version, conversation, writer, epoch, number, first seq, link, kind, slots
_HEADER_FIXED = struct.calcsize(_HEADER_FMT)
HEADER_PLAIN_BYTES = _HEADER_FIXED + PUBLIC_BYTES + 8 + 2 + SIGNATURE_SLOT
_RECORD_FMT = ">BQ32sqIQB"  # type, seq, prev, timestamp (us), causal epoch, causal seq, ext length
_RECORD_FIXED = struct.calcsize(_RECORD_FMT)
MAX_TYPE_EXT = 32
MAX_SEQ = 2**53
MAX_EPOCH = 2**31

#: Timestamps outside this range are refused when parsed: they cannot be real, and far dates
#: overflow local-time conversions.
MIN_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_TIME = datetime(2100, 1, 1, tzinfo=timezone.utc)
_EPOCH0 = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return (moment - _EPOCH0) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """The moment ``micros`` after 1970 UTC; PageFormatError outside 2000-01-01 to 2100-01-01."""
    if not to_micros(MIN_TIME) <= micros < to_micros(MAX_TIME):
        raise PageFormatError("a timestamp is outside 2000-2100")
    return _EPOCH0 + timedelta(microseconds=micros)


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds and a Z, so that text order is time order."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_timestamp(text: str) -> datetime:
    """Inverse of ``format_timestamp`` for local files; ASCII digits only, 2000-2100 only."""
    if (
        not isinstance(text, str) or len(text) != 27 or not text.isascii() or text[-1] != "Z"
        or text[4] != "-" or text[7] != "-" or text[10] != "T" or text[19] != "."
    ):
        raise PageFormatError(f"bad timestamp {str(text)[:40]!r}")
    digits = text[0:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19] + text[20:26]
    if not digits.isdigit() or text[13] != ":" or text[16] != ":":
        raise PageFormatError(f"bad timestamp {text[:40]!r}")
    try:
        moment = datetime(
            int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
            int(text[17:19]), int(text[20:26]), tzinfo=timezone.utc,
        )
    except ValueError as exc:
        raise PageFormatError(f"bad timestamp {text[:40]!r}") from exc
    if not MIN_TIME <= moment < MAX_TIME:
        raise PageFormatError(f"timestamp {text[:40]!r} is outside 2000-2100")
    return moment


def valid_type_ext(type_ext: str) -> bool:
    """A type extension is a short token of letters, digits and ._+- (a file's extension, say)."""
    return (
        len(type_ext) <= MAX_TYPE_EXT and type_ext.isascii()
        and all(ch.isalnum() or ch in "._+-" for ch in type_ext)
    )


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    cipher = AES.new(key, AES.MODE_GCM, nonce=_NONCE, mac_len=_TAG)
    cipher.update(aad)
    body, tag = cipher.encrypt_and_digest(plaintext)
    return bytes(body + tag)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of ``seal``; ValueError when the key, data or aad do not match."""
    if len(sealed) < _TAG:
        raise ValueError("sealed data too short")
    cipher = AES.new(key, AES.MODE_GCM, nonce=_NONCE, mac_len=_TAG)
    cipher.update(aad)
    return bytes(cipher.decrypt_and_verify(sealed[:-_TAG], sealed[-_TAG:]))


def _pad_signature(signature: bytes) -> bytes:
    if not 0 < len(signature) <= SIGNATURE_SLOT:
        raise ValueError("signature does not fit its slot")
    return len(signature).to_bytes(2, "big") + signature + bytes(SIGNATURE_SLOT - len(signature))


def _unpad_signature(data: bytes) -> bytes:
    size = int.from_bytes(data[:2], "big")
    if not 0 < size <= SIGNATURE_SLOT or len(data) != 2 + SIGNATURE_SLOT or any(data[2 + size :]):
        raise PageFormatError("bad signature slot")
    return data[2 : 2 + size]


# --- the header --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What a page says about itself, all of it signed by its writer."""

    conversation: bytes
    writer: bytes  # SHA-256 fingerprint of the writer's RSA key
    epoch: int
    number: int
    first_seq: int  # the sequence number its first record has (or will have)
    link: bytes  # digest of the lane's record before this page; GENESIS_HASH at an epoch's start
    kind: int  # 0: a pair's lane (groups use other kinds)
    slots_digest: bytes
    next_receive_key: bytes  # the writer's newest hybrid public key (kem.ReceivePublic bytes)
    created: int  # microseconds since 1970, UTC
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        fixed = struct.pack(
            _HEADER_FMT, FORMAT_VERSION, self.conversation, self.writer, self.epoch, self.number,
            self.first_seq, self.link, self.kind, self.slots_digest,
        )
        return b"reschat2-header" + fixed + self.next_receive_key + self.created.to_bytes(8, "big")

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.signed_bytes()).digest()

    @property
    def restart(self) -> bool:
        """The first page of an epoch after the first: its writer restarted the lane."""
        return self.epoch > 1 and self.number == 1

    def to_plain(self) -> bytes:
        return self.signed_bytes()[len(b"reschat2-header") :] + _pad_signature(self.signature)

    @classmethod
    def from_plain(cls, data: bytes) -> Header:
        if len(data) != HEADER_PLAIN_BYTES:
            raise PageFormatError("page header has the wrong size")
        version, conversation, writer, epoch, number, first_seq, link, kind, slots_digest = struct.unpack(
            _HEADER_FMT, data[:_HEADER_FIXED]
        )
        if version != FORMAT_VERSION:
            raise PageFormatError("page header of an unknown version")
        if not 1 <= epoch < MAX_EPOCH or not 1 <= number < MAX_SEQ or not 1 <= first_seq < MAX_SEQ:
            raise PageFormatError("bad page header numbers")
        rest = data[_HEADER_FIXED:]
        created = int.from_bytes(rest[PUBLIC_BYTES : PUBLIC_BYTES + 8], "big")
        return cls(
            conversation=conversation, writer=writer, epoch=epoch, number=number, first_seq=first_seq,
            link=link, kind=kind, slots_digest=slots_digest, next_receive_key=bytes(rest[:PUBLIC_BYTES]),
            created=created, signature=_unpad_signature(rest[PUBLIC_BYTES + 8 :]),
        )


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One message of a lane, open."""

    type: str
    seq: int
    prev: bytes  # digest of the lane's previous record (GENESIS_HASH before the first of an epoch)
    timestamp: datetime
    #: Pairs: (epoch, seq) of the newest record of the friend's lane its writer had seen. Groups: one record of
    #: another member its writer had read, as ``groupstate.encode_mark`` packs it ((epoch, 0): none).
    #: Checked, never trusted.
    causal: tuple[int, int]
    type_ext: str
    body: bytes
    signature: bytes = b""

    def content(self) -> bytes:
        ext = self.type_ext.encode("ascii")
        fixed = struct.pack(
            _RECORD_FMT, MESSAGE_TYPES.index(self.type), self.seq, self.prev, to_micros(self.timestamp),
            self.causal[0], self.causal[1], len(ext),
        )
        return fixed + ext + len(self.body).to_bytes(4, "big") + self.body

    def signed_bytes(self, header_digest: bytes, index: int) -> bytes:
        """Everything that identifies this record, in its page, place and lane."""
        return b"reschat2-record" + header_digest + bytes([index]) + self.content()

    def digest(self, header_digest: bytes, index: int) -> bytes:
        """The hash the next record of the lane names as ``prev``."""
        return hashlib.sha256(self.signed_bytes(header_digest, index)).digest()

    @classmethod
    def from_content(cls, data: bytes, signature: bytes) -> Record:
        if len(data) < _RECORD_FIXED + 4:
            raise PageFormatError("record too short")
        type_index, seq, prev, micros, causal_epoch, causal_seq, ext_len = struct.unpack(
            _RECORD_FMT, data[:_RECORD_FIXED]
        )
        if type_index >= len(MESSAGE_TYPES):
            raise PageFormatError("unknown message type")
        if not 1 <= seq < MAX_SEQ or causal_seq >= MAX_SEQ or causal_epoch >= MAX_EPOCH:
            raise PageFormatError("bad sequence number")
        rest = data[_RECORD_FIXED:]
        if ext_len > MAX_TYPE_EXT or len(rest) < ext_len + 4:
            raise PageFormatError("bad type extension")
        try:
            type_ext = rest[:ext_len].decode("ascii")
        except UnicodeDecodeError as exc:
            raise PageFormatError("bad type extension") from exc
        if not valid_type_ext(type_ext):
            raise PageFormatError("bad type extension")
        size = int.from_bytes(rest[ext_len : ext_len + 4], "big")
        body = rest[ext_len + 4 :]
        if size != len(body):
            raise PageFormatError("record body has the wrong length")
        return cls(
            type=MESSAGE_TYPES[type_index], seq=seq, prev=bytes(prev), timestamp=from_micros(micros),
            causal=(causal_epoch, causal_seq), type_ext=type_ext, body=bytes(body), signature=signature,
        )


def seal_record(record: Record, message_key: bytes, header_digest: bytes, index: int) -> bytes:
    plain = schedule.pad(record.content()) + _pad_signature(record.signature)
    return seal(message_key, plain, header_digest + bytes([index]))


def open_record(sealed: bytes, message_key: bytes, header_digest: bytes, index: int) -> Record:
    """The record in ``sealed``; ValueError when it does not open, PageFormatError when it is malformed."""
    plain = unseal(message_key, sealed, header_digest + bytes([index]))
    if len(plain) < 2 + SIGNATURE_SLOT:
        raise PageFormatError("record too short")
    try:
        content = schedule.unpad(plain[: -(2 + SIGNATURE_SLOT)])
    except ValueError as exc:
        raise PageFormatError(str(exc)) from exc
    return Record.from_content(content, _unpad_signature(plain[-(2 + SIGNATURE_SLOT) :]))


def sealed_record_size(payload_bytes: int) -> int:
    """Bytes a record with a content of ``payload_bytes`` takes when sealed."""
    framed = payload_bytes + 4
    bucket = next((b for b in schedule.PAD_BUCKETS if framed <= b), None)
    if bucket is None:
        raise ValueError("payload over the largest bucket")
    return bucket + 2 + SIGNATURE_SLOT + _TAG


def record_content_size(type_ext: str, body_bytes: int) -> int:
    return _RECORD_FIXED + len(type_ext) + 4 + body_bytes


# --- the page as stored -----------------------------------------------------------------------------


@dataclass
class SealedPage:
    """A page as a stranger sees it: slots, a sealed header and sealed records."""

    slots: list[bytes]
    header: bytes
    records: list[bytes]
    #: The writer's own mark: an HMAC only the writer can compute (``lane.writer_tag``), so that the
    #: writer tells its own pages from anything else at its addresses. Random-looking to everyone else.
    tag: bytes = bytes(TAG_BYTES)

    @property
    def slots_digest(self) -> bytes:
        return hashlib.sha256(b"".join(self.slots)).digest()

    def to_bytes(self) -> bytes:
        parts = [bytes([FORMAT_VERSION, len(self.slots)]), self.tag, *self.slots]
        parts.append(len(self.header).to_bytes(4, "big") + self.header)
        parts.append(bytes([len(self.records)]))
        parts += [len(r).to_bytes(4, "big") + r for r in self.records]
        return b"".join(parts)

    def to_string(self) -> str:
        text = PREFIX + base64.b64encode(self.to_bytes()).decode("ascii")
        if len(text) > MAX_PAGE_BYTES:
            raise ValueError("page exceeds the ledger's size limit")
        return text

    def size_with(self, extra_record_bytes: int) -> int:
        """Length of ``to_string`` with one more record of ``extra_record_bytes``."""
        raw = len(self.to_bytes()) + 4 + extra_record_bytes
        return len(PREFIX) + 4 * ((raw + 2) // 3)

    @classmethod
    def from_string(cls, text: object) -> SealedPage:
        """Parse ``to_string``'s output; anything else raises PageFormatError and nothing else."""
        if not isinstance(text, str):
            raise PageFormatError("a page must be text")
        if not text.startswith(PREFIX):
            if text.startswith(OLD_PREFIXES):
                raise PageFormatError("old format: a protocol-1 page, never trusted")
            raise PageFormatError("not a ResChat page")
        if len(text) > MAX_PAGE_BYTES:
            raise PageFormatError("page is over the size limit")
        try:
            raw = base64.b64decode(text[len(PREFIX) :], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PageFormatError("page is not base64") from exc
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SealedPage:
        try:
            if len(raw) < 2 or raw[0] != FORMAT_VERSION:
                raise PageFormatError("page of an unknown format version")
            count = raw[1]
            if not 1 <= count <= MAX_SLOTS:
                raise PageFormatError("bad slot count")
            tag, offset = bytes(raw[2 : 2 + TAG_BYTES]), 2 + TAG_BYTES
            slots = []
            for _ in range(count):
                slots.append(bytes(raw[offset : offset + SLOT_BYTES]))
                offset += SLOT_BYTES
            header_len = int.from_bytes(raw[offset : offset + 4], "big")
            if header_len != HEADER_PLAIN_BYTES + _TAG:
                raise PageFormatError("bad header size")
            header = bytes(raw[offset + 4 : offset + 4 + header_len])
            offset += 4 + header_len
            record_count = raw[offset]
            offset += 1
            if record_count > PAGE_CAPACITY:
                raise PageFormatError("too many records")
            records = []
            for _ in range(record_count):
                size = int.from_bytes(raw[offset : offset + 4], "big")
                if size > len(raw) - offset - 4 or size < _TAG:
                    raise PageFormatError("a record is truncated")
                records.append(bytes(raw[offset + 4 : offset + 4 + size]))
                offset += 4 + size
        except IndexError as exc:
            raise PageFormatError("page is truncated") from exc
        if offset != len(raw) or len(slots[-1]) != SLOT_BYTES or len(header) != header_len:
            raise PageFormatError("page is truncated or has trailing data")
        return cls(slots=slots, header=header, records=records, tag=tag)


# --- the page, open --------------------------------------------------------------------------------


class Page:
    """Up to 20 records of one lane with its header, open (the seed's Page)."""

    def __init__(self, header: Header, sealed: SealedPage, receiver: str = "") -> None:
        self.header = header
        self.sealed = sealed
        self.receiver = receiver
        # Imported here, not with the module: numpy's 15 MB would otherwise sit in every process while
        # scrypt's 128 MiB unlocks the key, which sets the CLI's peak memory (tests/test_bounded_memory.py).
        import numpy as np

        self.msg = np.full((PAGE_CAPACITY, len(MSG_FIELDS)), "", dtype=object)
        self.message_count = 0
        self._records: list[Record] = []

    @property
    def number(self) -> int:
        return self.header.number

    @property
    def epoch(self) -> int:
        return self.header.epoch

    def add_message(self, record: Record) -> None:
        """Keep an open record beside its sealed form (index = its place in the page)."""
        if self.message_count >= PAGE_CAPACITY:
            raise ValueError("page is full")
        sealed = base64.b64encode(self.sealed.records[self.message_count]).decode("ascii")
        self.msg[self.message_count] = [
            self.receiver, record.type, format_timestamp(record.timestamp), record.type_ext, sealed, sealed,
        ]
        self.message_count += 1
        self._records.append(record)

    def all_messages(self) -> list[Record]:
        """The open records of this page, in the order they were written."""
        return list(self._records)

    def sort_by_time(self) -> None:
        """Order the records by timestamp, then sequence number (ISO UTC text sorts as time)."""
        count = self.message_count
        order = sorted(range(count), key=lambda i: (self.msg[i][2], self._records[i].seq))
        self.msg[:count] = self.msg[order]
        self._records = [self._records[i] for i in order]
