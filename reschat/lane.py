"""Lanes of protocol 2: sealing pages for the ledger, opening them, and verifying a lane (no I/O).

A lane is one writer's stream in one conversation: epochs of pages, each page up to 20 records, each
record naming the digest of the one before it (a hash chain across pages), each page's header naming
the digest of the lane's record before the page (its *link*). A writer signs the header of every
page and every record; a reader checks the newest record of each page (whose signature covers the
header, and through the chain every earlier record of the page) or, for a page with no record, its
header. ``check_lane`` then compares what was read with the reader's checkpoint and the digests it
kept, and names every problem it finds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes

from reschat import crypto, kem, schedule
from reschat.errors import PageFormatError
from reschat.page import (
    GENESIS_HASH,
    MAX_EPOCH,
    MAX_SEQ,
    PREFIX,
    SLOT_BYTES,
    TAG_BYTES,
    Header,
    Record,
    SealedPage,
    open_record,
    seal,
    seal_record,
    unseal,
)

Signer = Callable[[bytes], bytes]
_SLOT_LABEL = b"reschat2 page slot"
_HEADER_AAD = b"reschat2 header"


@dataclass(frozen=True)
class Problem:
    """Something in a lane that is not a genuine message: shown to the user, never as a message."""

    lane: str  # "me" or the friend's nickname: whose lane it was found in
    kind: str  # damaged | old-format | undecryptable | forged | gap | rollback | rewritten | restart | skipped
    detail: str
    time: datetime | None = None  # where it belongs in the conversation, when known (verified data only)


# --- the keys of one page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PageKeys:
    """What opens a page from record ``start`` on: its header key and chain key ``start``.

    A store that keeps the page secret can open every record (start 0). Disappearing messages keep
    only the chain key past the last expired record, so the expired ones can never be opened again.
    """

    header: bytes
    chain: bytes
    start: int = 0

    @classmethod
    def from_secret(cls, page_secret: bytes) -> PageKeys:
        return cls(schedule.header_key(page_secret), schedule.chain_start(page_secret), 0)

    def advanced(self, start: int) -> PageKeys:
        """The keys from record ``start`` on (ValueError when that is before what we hold)."""
        return PageKeys(self.header, schedule.chain_key_at(self.chain, self.start, start), start)

    def message_key(self, index: int) -> bytes:
        return schedule.message_key(schedule.chain_key_at(self.chain, self.start, index))

    def to_text(self) -> str:
        return f"{self.start}:{self.header.hex()}:{self.chain.hex()}"

    @classmethod
    def from_text(cls, text: str) -> PageKeys:
        """Parse ``to_text`` or a bare page secret (64 hex digits); ValueError otherwise."""
        if ":" not in text:
            return cls.from_secret(bytes.fromhex(text))
        start, header, chain = text.split(":")
        keys = cls(bytes.fromhex(header), bytes.fromhex(chain), int(start))
        if len(keys.header) != 32 or len(keys.chain) != 32 or keys.start < 0:
            raise ValueError("damaged page keys")
        return keys


def as_keys(secret: bytes | PageKeys) -> PageKeys:
    return secret if isinstance(secret, PageKeys) else PageKeys.from_secret(secret)


# --- writing -------------------------------------------------------------------------------------


def new_page(
    *,
    conversation: bytes,
    writer: bytes,
    epoch: int,
    number: int,
    first_seq: int,
    link: bytes,
    readers: Sequence[kem.ReceivePublic],
    next_receive_key: kem.ReceivePublic,
    created: int,
    signer: Signer,
    kind: int = 0,
) -> tuple[SealedPage, Header, bytes]:
    """A new, empty page: one KEM slot per reader, a signed sealed header; returns its page secret."""
    page_secret = get_random_bytes(schedule.KEY_BYTES)
    slots = []
    for reader in readers:
        enc, secret = kem.encapsulate(reader, _SLOT_LABEL)
        slots.append(enc + seal(schedule.slot_key(secret), page_secret, enc))
    sealed = SealedPage(slots=slots, header=b"", records=[])
    header = Header(
        conversation=conversation, writer=writer, epoch=epoch, number=number, first_seq=first_seq, link=link,
        kind=kind, slots_digest=sealed.slots_digest, next_receive_key=next_receive_key.to_bytes(), created=created,
    )
    header = replace(header, signature=signer(header.signed_bytes()))
    sealed.header = seal(schedule.header_key(page_secret), header.to_plain(), _HEADER_AAD)
    return sealed, header, page_secret


def add_record(
    sealed: SealedPage, header: Header, page_secret: bytes | PageKeys, record: Record, signer: Signer
) -> tuple[SealedPage, Record, bytes]:
    """``sealed`` with ``record`` signed and sealed at the next index; returns (page, record, digest)."""
    index = len(sealed.records)
    key = as_keys(page_secret).message_key(index)
    signed = replace(record, signature=signer(record.signed_bytes(header.digest, index)))
    page = SealedPage(slots=sealed.slots, header=sealed.header, records=[*sealed.records, b""], tag=sealed.tag)
    page.records[index] = seal_record(signed, key, header.digest, index)
    return page, signed, signed.digest(header.digest, index)


def writer_tag(tag_key: bytes, conversation: bytes, epoch: int, number: int, sealed: SealedPage) -> bytes:
    """The writer's own mark on a page: HMAC over its place and its fixed part (slots and header)."""
    mac = hmac.new(tag_key, b"reschat2 writer tag", hashlib.sha256)
    mac.update(conversation + epoch.to_bytes(4, "big") + number.to_bytes(8, "big"))
    mac.update(sealed.slots_digest + hashlib.sha256(sealed.header).digest())
    return mac.digest()[:TAG_BYTES]


def written_by_another_copy(
    local: SealedPage, remote: SealedPage, remote_value: str, keys: PageKeys | None, *, conversation: bytes,
    writer: bytes, writer_key: RSA.RsaKey, epoch: int, number: int, verified: set[bytes],
) -> bool:
    """Whether ``remote``, the ledger's copy of our current page ``local`` (its writer tag already checked to
    be ours), was written by another copy of us: a page begun anew at our place (the tag covers the slots and
    the header, and only we can make it), or more or other records that verify under our own signature. The
    tag does not cover records: a ledger writer who changes their bytes makes no other copy of us."""
    if (remote.header, remote.slots) != (local.header, local.slots):
        return True
    if len(remote.records) <= len(local.records) and remote.records == local.records[: len(remote.records)]:
        return False
    if keys is None:
        return False
    try:
        open_page(remote_value, remote, keys, conversation=conversation, writer=writer, writer_key=writer_key,
                  epoch=epoch, number=number, verified=verified)
    except (PageFormatError, ValueError):
        return False
    return True


# --- the page hint ---------------------------------------------------------------------------------

#: A writer rewrites its page hint when it starts a page whose number is a multiple of this.
HINT_EVERY = 8
_HINT_AAD = b"reschat2 hint"
_HINT_FMT = ">IQ"  # epoch, page number


def seal_hint(address_key: bytes, writer: bytes, epoch: int, number: int) -> str:
    """The value of ``writer``'s page hint: "my lane had reached page ``number`` of ``epoch``".

    A reader with no checkpoint has no idea how long the lane is; the hint lets it start the search
    for the newest page near the top instead of at page 1. It is sealed (AES-256-GCM under a key from
    the pair's address key and a fresh random salt), so to anyone but the pair it is random bytes, as
    a page is. It is not signed: nothing is believed because the hint says so. The reader starts from
    page ``number`` only if that page is there, and then searches upwards as from any other start; a
    page is still believed only when its own signature (which covers its number and lane) verifies.
    A stale hint costs the reader more probes, a false one a fall back to the search from page 1.
    """
    salt = get_random_bytes(32)
    plain = struct.pack(_HINT_FMT, epoch, number)
    sealed = seal(schedule.hint_key(address_key, writer, salt), plain, _HINT_AAD + writer)
    return PREFIX + base64.b64encode(salt + sealed).decode("ascii")


def open_hint(address_key: bytes, writer: bytes, value: str) -> tuple[int, int]:
    """(epoch, page number) of a page hint; PageFormatError when ``value`` is not one of this pair's."""
    if not value.startswith(PREFIX) or len(value) > 256:
        raise PageFormatError("not a page hint")
    try:
        raw = base64.b64decode(value[len(PREFIX) :], validate=True)
        salt, sealed = raw[:32], raw[32:]
        plain = unseal(schedule.hint_key(address_key, writer, salt), sealed, _HINT_AAD + writer)
        epoch, number = struct.unpack(_HINT_FMT, plain)
    except (binascii.Error, ValueError, struct.error) as exc:
        raise PageFormatError("the page hint does not open") from exc
    if not 1 <= epoch < MAX_EPOCH or not 1 <= number < MAX_SEQ:
        raise PageFormatError("the page hint names no possible page")
    return epoch, number


# --- reading -------------------------------------------------------------------------------------


def open_header(sealed: SealedPage, page_secret: bytes | PageKeys) -> Header:
    """The header of ``sealed``; ValueError when ``page_secret`` does not open it."""
    return Header.from_plain(unseal(as_keys(page_secret).header, sealed.header, _HEADER_AAD))


def find_page_secret(
    sealed: SealedPage, candidates: Sequence[tuple[int, kem.ReceiveKey]]
) -> tuple[bytes, int] | None:
    """(page secret, index of the receive key that opened a slot), or None when no key opens one."""
    for slot in sealed.slots:
        enc, wrapped = slot[: kem.ENC_BYTES], slot[kem.ENC_BYTES :]
        if len(slot) != SLOT_BYTES:
            continue
        for index, key in candidates:
            try:
                secret = kem.decapsulate(key, enc, _SLOT_LABEL)
                page_secret = unseal(schedule.slot_key(secret), wrapped, enc)
                open_header(sealed, page_secret)
            except (ValueError, PageFormatError):
                continue
            return page_secret, index
    return None


@dataclass
class OpenPage:
    """One page of a lane, opened and checked on its own."""

    value: str
    header: Header
    keys: PageKeys
    records: list[Record] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    #: Records before ``keys.start`` whose keys were deleted (disappearing messages): not opened.
    skipped: int = 0

    @property
    def number(self) -> int:
        return self.header.number

    @property
    def last_digest(self) -> bytes | None:
        """Digest of the lane's newest record up to the end of this page (None: not known here)."""
        if self.digests:
            return self.digests[-1]
        return None if self.skipped else self.header.link

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq if self.records else self.header.first_seq - 1 + self.skipped


def open_page(
    value: str,
    sealed: SealedPage,
    page_secret: bytes | PageKeys,
    *,
    conversation: bytes,
    writer: bytes,
    writer_key: RSA.RsaKey | Callable[[], RSA.RsaKey],
    epoch: int,
    number: int,
    verified: set[bytes],
    kept: Callable[[int], bytes | None] | None = None,
) -> OpenPage:
    """Open and check one page; PageFormatError names what is wrong (its detail says why).

    ``writer_key`` may be a function that gives the key: it is called only when a signature is checked.
    ``verified`` holds digests whose signature was already checked: a page read again costs no RSA.
    ``kept`` gives, for a sequence number, the digest of the record this reader verified and kept at
    that place in an earlier session (its sealed key store), or None. A page whose newest record has
    exactly that digest needs no RSA verification either: a digest is SHA-256 over everything the
    signature covers (label, the page header's digest, the record's index and its whole content), and
    it was kept only after that signature verified, so equal digests mean the same signed bytes,
    already checked. Any other record, or one whose digest differs, is verified as usual.
    """
    keys = as_keys(page_secret)
    try:
        header = open_header(sealed, keys)
    except ValueError as exc:
        raise PageFormatError("its header does not open") from exc
    if header.slots_digest != sealed.slots_digest:
        raise PageFormatError("its key slots were replaced")
    if (header.conversation, header.writer) != (conversation, writer):
        raise PageFormatError("it belongs to another conversation or writer")
    if (header.epoch, header.number) != (epoch, number):
        raise PageFormatError(f"it was signed as page {header.number} of epoch {header.epoch}")
    page = OpenPage(value=value, header=header, keys=keys, skipped=min(keys.start, len(sealed.records)))
    header_digest = header.digest  # a hash over the whole header: computed once, not once per record
    chain = keys.chain
    previous: bytes | None = header.link if keys.start == 0 else None
    for index, sealed_record in enumerate(sealed.records):
        if index < keys.start:
            continue  # its key was deleted: the record stays sealed forever
        try:
            record = open_record(sealed_record, schedule.message_key(chain), header_digest, index)
        except ValueError as exc:
            raise PageFormatError(f"record {index + 1} does not open") from exc
        chain = schedule.next_chain_key(chain)
        if record.seq != header.first_seq + index or (previous is not None and record.prev != previous):
            raise PageFormatError(f"record {index + 1} does not follow the one before it")
        previous = record.digest(header_digest, index)
        page.records.append(record)
        page.digests.append(previous)
    # One signature per page: the newest record's covers the header and, through the chain, every
    # record before it; a page with no record yet is vouched for by its header's own signature.
    if page.records:
        last = page.records[-1]
        checked = page.digests[-1]
        if kept is not None and kept(last.seq) == checked:
            verified.add(checked)  # verified in an earlier session (see above): the same signed bytes
        signed = last.signed_bytes(header_digest, len(page.records) - 1)
        signature = last.signature
    else:
        checked, signed, signature = header_digest, header.signed_bytes(), header.signature
    if checked not in verified:
        key = writer_key if isinstance(writer_key, RSA.RsaKey) else writer_key()
        if not crypto.verify(key, signed, signature):
            raise PageFormatError("its signature does not verify")
        verified.add(checked)
    return page


# --- the lane as a whole -------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What a reader keeps of a lane between updates."""

    seq: int = 0
    digest: bytes = b""
    kept: dict[int, bytes] = field(default_factory=dict)  # seq -> digest of every record read before


@dataclass
class LaneResult:
    records: list[tuple[Record, bytes]]  # verified (record, digest), oldest first
    problems: list[Problem]
    newest: tuple[int, bytes] | None  # (seq, digest) of the newest verified record


def check_lane(
    owner: str, pages: Mapping[int, OpenPage | None], checkpoint: Checkpoint, *, complete_to: int = 0
) -> LaneResult:
    """Join the opened pages of one epoch, compare them with the checkpoint, and name every problem.

    ``pages`` maps page numbers to opened pages (None: missing or refused, already reported).
    ``complete_to`` is the newest page number that exists, so that a missing page below it is a gap.
    """
    problems: list[Problem] = []
    present = sorted(n for n, p in pages.items() if p is not None)
    records: list[tuple[Record, bytes]] = []
    for number in present:
        page = pages[number]
        assert page is not None
        records += list(zip(page.records, page.digests, strict=True))
    for older, newer in itertools.pairwise(present):
        low, high = pages[older], pages[newer]
        assert low is not None and high is not None
        if newer != older + 1:
            continue
        if low.last_digest is None:
            continue  # what ends the older page was deleted (disappearing messages): nothing to compare
        if low.last_seq < high.header.first_seq - 1:
            continue  # an older, shorter copy of the page (a stale read, a lost write): not a fork
        if high.header.link != low.last_digest or high.header.first_seq != low.last_seq + 1:
            problems.append(Problem(owner, "rewritten", f"page {newer} does not follow page {older}",
                                    high.records[0].timestamp if high.records else None))
    if present:
        wanted = range(min(present), max(present[-1], complete_to) + 1)
        missing = [n for n in wanted if pages.get(n) is None and n in pages]
        for number in missing:
            problems.append(gap_problem(owner, pages, number))
    rewritten = [(r, d) for r, d in records if r.seq in checkpoint.kept and checkpoint.kept[r.seq] != d]
    for record, _digest in rewritten:
        problems.append(Problem(owner, "rewritten", f"message #{record.seq} differs from the one read before; "
                                "the new version is hidden", record.timestamp))
    hidden = {id(r) for r, _d in rewritten}
    shown = [(r, d) for r, d in records if id(r) not in hidden]
    newest = (records[-1][0].seq, records[-1][1]) if records else None
    if present and checkpoint.seq and newest is not None and newest[0] < checkpoint.seq:
        newest_seq = newest[0] if newest else 0
        problems.append(Problem(owner, "rollback",
                                f"the ledger shows an older state of this lane (newest #{newest_seq}, "
                                f"already read #{checkpoint.seq})"))
    return LaneResult(records=shown, problems=problems, newest=newest)


def gap_problem(owner: str, pages: Mapping[int, OpenPage | None], number: int) -> Problem:
    """Page ``number`` of a lane is missing: which messages, as far as the pages around it tell."""
    return Problem(owner, "gap", f"page {number} is missing or unreadable: its messages{_span(pages, number)} "
                   "are not shown")


def _span(pages: Mapping[int, OpenPage | None], number: int) -> str:
    """The message numbers a missing page held, as far as its neighbours tell: " (#21-#40)"."""
    before, after = pages.get(number - 1), pages.get(number + 1)
    first = 1 if number == 1 else before.last_seq + 1 if before is not None else None
    last = after.header.first_seq - 1 if after is not None else None
    if first is not None and last is not None:
        return f" (#{first}-#{last})" if last > first else f" (#{first})" if last == first else ""
    if first is not None:
        return f" (from #{first})"
    if last is not None:
        return f" (up to #{last})"
    return ""


__all__ = [
    "GENESIS_HASH",
    "HINT_EVERY",
    "Checkpoint",
    "LaneResult",
    "OpenPage",
    "PageKeys",
    "Problem",
    "add_record",
    "check_lane",
    "find_page_secret",
    "gap_problem",
    "new_page",
    "open_header",
    "open_hint",
    "open_page",
    "seal_hint",
    "writer_tag",
]
