"""Page: the seed's container of 20 messages, and its one-line string form for the ledger.

A page belongs to one lane: the messages one sender wrote in one conversation. ``msg`` keeps the
seed's six fields per message (receiver, type, timestamp, type extension, message for the sender,
message for the receiver); ``integrity`` holds what makes a lane a signed hash chain (sequence number,
hash of the previous record, signature). No I/O and no crypto beyond hashing happen here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from reschat.errors import PageFormatError

PAGE_CAPACITY = 20
#: The longest page the ledger takes (one argv string for ``kv_service_tools``).
MAX_PAGE_BYTES = 131_071
FORMAT_VERSION = 1
_PREFIX = f"reschat-page/{FORMAT_VERSION}:"

#: Column names of ``Page.msg`` (the seed's six fields) and ``Page.integrity``.
MSG_FIELDS = ("receiver", "type", "timestamp", "type_ext", "for_sender", "for_receiver")
INTEGRITY_FIELDS = ("seq", "prev", "signature")

GENESIS_HASH = bytes(32)
MESSAGE_TYPES = ("text", "file")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_TYPE_EXT = re.compile(r"[A-Za-z0-9._+-]{0,32}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_MAX_SEQ = 2**53


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds and a Z, so that text order is time order."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    # isoformat pads the year to four digits on every platform; strftime("%Y") does not on Linux.
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_timestamp(text: str) -> datetime:
    if not _TIMESTAMP.fullmatch(text):
        raise PageFormatError(f"bad timestamp {text[:40]!r}")
    try:
        # The pattern fixed every field's place; building the datetime from them is ~10x faster than
        # strptime, which mattered when a chat opens (two timestamps parsed per record).
        return datetime(
            int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
            int(text[17:19]), int(text[20:26]), tzinfo=timezone.utc,
        )
    except ValueError as exc:
        raise PageFormatError(f"bad timestamp {text[:40]!r}") from exc


def valid_type_ext(type_ext: str) -> bool:
    """A type extension is a short token (a file's extension, for example)."""
    return bool(_TYPE_EXT.fullmatch(type_ext))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not _B64.fullmatch(text) or len(text) % 4:
        raise PageFormatError(f"{what} is not base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PageFormatError(f"{what} is not base64") from exc


def _hex64(text: object, what: str) -> str:
    if not isinstance(text, str) or not _HEX64.fullmatch(text):
        raise PageFormatError(f"{what} is not a 64-digit lowercase hex string")
    return text


@dataclass(frozen=True)
class Record:
    """One message of a lane, as stored: every field public, the texts sealed."""

    receiver: str  # the receiver's fingerprint, 64 lowercase hex digits
    type: str
    timestamp: datetime
    type_ext: str
    for_sender: bytes  # the text sealed for the sender
    for_receiver: bytes  # the text sealed for the receiver
    seq: int
    prev: bytes  # SHA-256 of the previous record of this lane (GENESIS_HASH before the first)
    signature: bytes = b""

    def signed_bytes(self, conversation: str, sender: str, wrap_digest: bytes) -> bytes:
        """Everything that identifies this record, in one unambiguous encoding, for signing and hashing."""
        fields = [
            "reschat-record/1",
            conversation,
            sender,
            self.receiver,
            self.seq,
            self.prev.hex(),
            format_timestamp(self.timestamp),
            self.type,
            self.type_ext,
            _b64(self.for_sender),
            _b64(self.for_receiver),
            wrap_digest.hex(),
        ]
        return json.dumps(fields, separators=(",", ":")).encode("ascii")

    def digest(self, conversation: str, sender: str, wrap_digest: bytes) -> bytes:
        """The hash the next record of the lane names as ``prev``."""
        return hashlib.sha256(self.signed_bytes(conversation, sender, wrap_digest)).digest()

    def to_row(self) -> tuple[list[str], list[object]]:
        msg = [
            self.receiver,
            self.type,
            format_timestamp(self.timestamp),
            self.type_ext,
            _b64(self.for_sender),
            _b64(self.for_receiver),
        ]
        return msg, [self.seq, self.prev.hex(), _b64(self.signature)]

    @classmethod
    def from_row(cls, msg: list[object], integrity: list[object]) -> Record:
        receiver, mtype, timestamp, type_ext, for_sender, for_receiver = msg
        seq, prev, signature = integrity
        if mtype not in MESSAGE_TYPES:
            raise PageFormatError(f"unknown message type {str(mtype)[:20]!r}")
        if not isinstance(type_ext, str) or not _TYPE_EXT.fullmatch(type_ext):
            raise PageFormatError("bad type extension")
        if not isinstance(timestamp, str):
            raise PageFormatError("bad timestamp")
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= _MAX_SEQ:
            raise PageFormatError("bad sequence number")
        return cls(
            receiver=_hex64(receiver, "receiver"),
            type=str(mtype),
            timestamp=parse_timestamp(timestamp),
            type_ext=type_ext,
            for_sender=_unb64(for_sender, "message for the sender"),
            for_receiver=_unb64(for_receiver, "message for the receiver"),
            seq=seq,
            prev=bytes.fromhex(_hex64(prev, "previous hash")),
            signature=_unb64(signature, "signature"),
        )


class Page:
    """Up to 20 records of one lane, with the header that names the lane and its wrapped lane key."""

    def __init__(self, conversation: str, sender: str, number: int, wrapped_key: bytes) -> None:
        if number < 1:
            raise ValueError("page numbers start at 1")
        self.conversation = conversation
        self.sender = sender
        self.number = number
        #: The lane key wrapped with RSA-OAEP for the receiver (see chat.py for why there is one).
        self.wrapped_key = wrapped_key
        self.msg = np.full((PAGE_CAPACITY, len(MSG_FIELDS)), "", dtype=object)
        self.integrity = np.full((PAGE_CAPACITY, len(INTEGRITY_FIELDS)), None, dtype=object)
        self.message_count = 0
        # The parsed records, kept beside the rows so that reading them back does not parse them again.
        self._records: list[Record] = []

    @property
    def wrap_digest(self) -> bytes:
        return hashlib.sha256(self.wrapped_key).digest()

    def _header(self) -> dict[str, object]:
        return {
            "conversation": self.conversation,
            "sender": self.sender,
            "page": self.number,
            "wrapped_key": _b64(self.wrapped_key),
        }

    def _rows(self) -> list[list[object]]:
        return [
            [*self.msg[i].tolist(), *self.integrity[i].tolist()] for i in range(self.message_count)
        ]

    def is_full(self, next_record: Record | None = None) -> bool:
        """True when no more records fit: 20 of them, or the next one would pass the size limit."""
        if self.message_count >= PAGE_CAPACITY:
            return True
        if next_record is None:
            return False
        return len(self._serialize(extra=next_record)) > MAX_PAGE_BYTES

    def add_message(self, record: Record) -> None:
        """Append ``record``; the caller checks ``is_full(record)`` first."""
        if self.is_full(record):
            raise ValueError("page is full")
        msg, integrity = record.to_row()
        self.msg[self.message_count] = msg
        self.integrity[self.message_count] = integrity
        self.message_count += 1
        self._records.append(record)

    def all_messages(self) -> list[Record]:
        """The records of this page, in the order they were added."""
        return list(self._records)

    def sort_by_time(self) -> None:
        """Order the records by timestamp, then sequence number (ISO UTC text sorts as time)."""
        count = self.message_count
        order = sorted(range(count), key=lambda i: (self.msg[i][2], self.integrity[i][0]))
        self.msg[:count] = self.msg[order]
        self.integrity[:count] = self.integrity[order]
        self._records = [self._records[i] for i in order]

    def _serialize(self, extra: Record | None = None) -> str:
        rows = self._rows()
        if extra is not None:
            msg, integrity = extra.to_row()
            rows.append([*msg, *integrity])
        body = {**self._header(), "records": rows}
        return _PREFIX + json.dumps(body, separators=(",", ":"), ensure_ascii=True)

    def to_string(self) -> str:
        """One line of printable ASCII, starting with the format name and version."""
        text = self._serialize()
        if len(text) > MAX_PAGE_BYTES:
            raise ValueError("page exceeds the ledger's size limit")
        return text

    @classmethod
    def from_string(cls, text: str) -> Page:
        """Parse ``to_string``'s output; anything else raises PageFormatError and nothing else."""
        if not isinstance(text, str):
            raise PageFormatError("a page must be text")
        if not text.startswith(_PREFIX):
            if text.startswith("reschat-page/"):
                raise PageFormatError("page written by another ResChat version (unknown format version)")
            raise PageFormatError("not a ResChat page")
        if len(text) > MAX_PAGE_BYTES:
            raise PageFormatError("page is over the size limit")
        try:
            body = json.loads(text[len(_PREFIX) :])
        except (ValueError, RecursionError) as exc:
            raise PageFormatError("page is truncated or not valid JSON") from exc
        if not isinstance(body, dict) or set(body) != {"conversation", "sender", "page", "wrapped_key", "records"}:
            raise PageFormatError("page has missing or unexpected fields")
        number = body["page"]
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= _MAX_SEQ:
            raise PageFormatError("bad page number")
        page = cls(
            conversation=_hex64(body["conversation"], "conversation"),
            sender=_hex64(body["sender"], "sender"),
            number=number,
            wrapped_key=_unb64(body["wrapped_key"], "wrapped key"),
        )
        records = body["records"]
        if not isinstance(records, list) or len(records) > PAGE_CAPACITY:
            raise PageFormatError("page holds a bad list of records")
        width = len(MSG_FIELDS) + len(INTEGRITY_FIELDS)
        for row in records:
            if not isinstance(row, list) or len(row) != width:
                raise PageFormatError("a record has the wrong number of fields")
            record = Record.from_row(row[: len(MSG_FIELDS)], row[len(MSG_FIELDS) :])
            msg, integrity = record.to_row()
            page.msg[page.message_count] = msg
            page.integrity[page.message_count] = integrity
            page.message_count += 1
            page._records.append(record)
        return page
