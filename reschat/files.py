"""Files in a conversation: encrypted once, stored as chunks, announced by a signed ``file`` message.

The format, version 2
---------------------
Sending a file of at most ``MAX_FILE_BYTES`` (5 MiB):

1. A fresh random 256-bit *file key* encrypts the whole file once with AES-256-GCM
   (``crypto.encrypt_message``: ``nonce (12) || ciphertext || tag (16)``, AAD ``reschat-file/2``).
2. The blob is cut into pieces of ``CHUNK_BYTES``; the last piece is padded with zeros, so every
   chunk of every file has the same size. Each piece becomes one ledger value ``reschat2:<base64>``.
3. Chunk i is stored under ``schedule.chunk_address(file key, i)``: an address only the holders of
   the file key can compute, shaped like every other ResChat address.
4. Only then the *manifest* is sent as the message body with type ``file`` and the file's extension
   as type extension, so it is signed and sealed like any message. It is compact JSON::

       {"v":2,"name":"report.pdf","size":1234,"sha256":"<hex of the plaintext>",
        "key":"<base64 of the file key>","chunks":["<hex SHA-256 of chunk 1's value>", ...]}

Receiving reads every chunk in one ``get_many``, checks each chunk's hash (a missing or altered
chunk is an IntegrityError that names it), decrypts, checks length and SHA-256 of the plaintext, and
only then writes a new file (mode 0600, never over an existing one) in the downloads directory.
This module knows nothing of conversations: ``chat`` announces and reads the messages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import re
import stat
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reschat import crypto, schedule
from reschat.errors import IntegrityError, MessageError, PageFormatError
from reschat.ledger.base import MAX_VALUE_BYTES, Ledger

FILE_TYPE = "file"
MAX_FILE_BYTES = 5 * 1024 * 1024
FORMAT_VERSION = 2
CHUNK_PREFIX = "reschat2:"
#: The most plaintext-blob bytes one ledger value holds after base64 (a multiple of 3: no padding).
CHUNK_BYTES = (MAX_VALUE_BYTES - len(CHUNK_PREFIX)) // 4 * 3
_AAD = b"reschat-file/2"


class FileMessage(Protocol):
    """What this module needs of a message: its type and its (decrypted) body."""

    @property
    def type(self) -> str: ...

    @property
    def body(self) -> bytes: ...
_SEAL_OVERHEAD = 12 + 16  # GCM nonce and tag around the ciphertext
#: Upper bound on the chunks a manifest may list: what the largest file needs, with slack for a
#: future, smaller chunk size. It keeps a damaged manifest from asking for thousands of reads.
MAX_CHUNKS = 4 * math.ceil((MAX_FILE_BYTES + _SEAL_OVERHEAD) / CHUNK_BYTES)
#: File names are cut to this many UTF-8 bytes so that " (123)" still fits in 255-byte names.
MAX_NAME_BYTES = 200
FALLBACK_NAME = "file"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_EXT = re.compile(r"[A-Za-z0-9_+-]{1,32}")
#: Characters that are path separators or reserved somewhere (Windows, SMB shares, USB sticks).
_RESERVED_CHARS = str.maketrans({ch: "_" for ch in '/\\:*?"<>|'})
_RESERVED_STEMS = frozenset(
    ["con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))]
)
_MANIFEST_FIELDS = frozenset({"v", "name", "size", "sha256", "key", "chunks"})


@dataclass(frozen=True)
class FileInfo:
    """What a ``file`` message announces (its decrypted manifest)."""

    name: str  # already sanitized: safe to show and to use as a file name
    size: int
    sha256: str  # of the plaintext, 64 lowercase hex digits
    key: bytes  # the file key (AES-256)
    chunks: tuple[str, ...]  # SHA-256 of each chunk's ledger value, in order

    @property
    def chunk_keys(self) -> list[str]:
        """The ledger keys of the chunks, in order."""
        return [schedule.chunk_address(self.key, index) for index in range(len(self.chunks))]

    @property
    def extension(self) -> str:
        return file_extension(self.name)


# --- names -------------------------------------------------------------------------------------


def sanitize_filename(name: str) -> str:
    """A file name that is safe to create in a downloads directory and to show in a terminal.

    Keeps only the last path component (``/`` and ``\\`` both count), drops control, format
    (bidi overrides, zero-width), surrogate, private-use and unassigned characters and line
    separators, replaces characters reserved on common file systems with ``_``, strips leading dots,
    spaces and dashes and trailing dots and spaces, prefixes Windows device names (``CON``...) with
    ``_``, and cuts it to ``MAX_NAME_BYTES`` UTF-8 bytes keeping the extension. Never empty: the
    fallback is ``file``. Applying it twice changes nothing.
    """
    text = unicodedata.normalize("NFC", name)
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" and ch not in "\u2028\u2029")
    text = text.translate(_RESERVED_CHARS)
    text = text.lstrip(". -").rstrip(". ")
    if text.split(".", 1)[0].rstrip(" ").lower() in _RESERVED_STEMS:
        text = "_" + text
    text = _truncate(text)
    # NFC again: dropping a character can bring a base letter and a combining mark together.
    text = unicodedata.normalize("NFC", text).lstrip(". -").rstrip(". ")
    return text or FALLBACK_NAME


def _truncate(name: str) -> str:
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) > 32:
        stem, ext, dot = name, "", ""
    budget = MAX_NAME_BYTES - len((dot + ext).encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore").rstrip(". ")
    return cut + dot + ext


def file_extension(name: str) -> str:
    """The type extension for ``name``: its last suffix without the dot when it is short and plain, else ""."""
    suffix = Path(name).suffix[1:]
    return suffix if _EXT.fullmatch(suffix) else ""


def _split_for_numbering(name: str) -> tuple[str, str]:
    """("archive", ".tar.gz") for archive.tar.gz, ("report", ".pdf") for report.pdf."""
    path = Path(name)
    suffixes = path.suffixes[-2:] if len(path.suffixes) >= 2 and path.suffixes[-2].lower() == ".tar" else [path.suffix]
    ext = "".join(suffixes)
    if not ext or ext == name:
        return name, ""
    return name[: -len(ext)], ext


# --- sizes and labels ----------------------------------------------------------------------------


def human_size(size: int) -> str:
    """``0 B``, ``999 B``, ``1.5 KiB``, ``5.0 MiB`` (binary units, one decimal)."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def file_label(info: FileInfo) -> str:
    """What the chat shows for a file message: ``file report.pdf (1.2 MiB)``."""
    return f"file {info.name} ({human_size(info.size)})"


def message_label(message: FileMessage) -> str:
    """``file_label`` of a ``file`` message, or a short note when its manifest is damaged."""
    try:
        return file_label(describe(message))
    except PageFormatError:
        return "file (damaged file message: it cannot be saved)"


# --- sending ---------------------------------------------------------------------------------------


def read_local_file(path: Path, *, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``; MessageError when it is missing, unreadable,
    not a regular file or larger than ``limit``."""
    path = Path(path).expanduser()
    try:
        # O_NONBLOCK: opening a FIFO must not hang waiting for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise MessageError(f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise MessageError(f"{path} is a directory: choose a file") from exc
    except OSError as exc:
        raise MessageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise MessageError(f"{path} is a directory: choose a file")
        if not stat.S_ISREG(info.st_mode):
            raise MessageError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise MessageError(_too_large(path, info.st_size, limit))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        try:
            # One byte more than allowed: a file that grew after fstat is still caught.
            data = handle.read(limit + 1)
        except OSError as exc:
            raise MessageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise MessageError(_too_large(path, len(data), limit))
    return data


def _too_large(path: Path, size: int, limit: int) -> str:
    return f"{path.name} is {human_size(size)} ({size} bytes); files are limited to {human_size(limit)} ({limit} bytes)"


def encrypt_file(data: bytes, randfunc: crypto.RandFunc | None = None) -> tuple[bytes, list[str]]:
    """Encrypt ``data`` under a fresh file key; returns the key and the chunk values, in order.

    The plaintext is padded with zeros *before* it is sealed so that every chunk is ``CHUNK_BYTES``
    long: the ledger shows only how many chunks a file has, and no two files share a byte pattern.
    """
    key = crypto.new_symmetric_key(randfunc)
    chunks = max(1, -(-(len(data) + _SEAL_OVERHEAD) // CHUNK_BYTES))
    padded = data + bytes(chunks * CHUNK_BYTES - _SEAL_OVERHEAD - len(data))
    blob = crypto.encrypt_message(key, padded, _AAD, randfunc)
    values = [
        CHUNK_PREFIX + base64.b64encode(blob[start : start + CHUNK_BYTES]).decode("ascii")
        for start in range(0, len(blob), CHUNK_BYTES)
    ]
    return key, values


def make_manifest(name: str, data: bytes, key: bytes, values: Sequence[str]) -> bytes:
    """The compact JSON manifest (see the module docstring) for ``data`` stored as ``values``."""
    manifest = {
        "v": FORMAT_VERSION,
        "name": sanitize_filename(name),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "key": base64.b64encode(key).decode("ascii"),
        "chunks": [_value_digest(value) for value in values],
    }
    return json.dumps(manifest, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _value_digest(value: str) -> str:
    # A stranger's value may hold any character: hash it as UTF-8 (ours are ASCII, so nothing changes).
    return hashlib.sha256(value.encode("utf-8", errors="surrogatepass")).hexdigest()


def chunk_items(key: bytes, values: Sequence[str]) -> list[tuple[str, str]]:
    """(ledger key, value) of each chunk of the file sealed with ``key``."""
    return [(schedule.chunk_address(key, index), value) for index, value in enumerate(values)]


def store_chunks(ledger: Ledger, items: Sequence[tuple[str, str]], *, max_workers: int | None = None) -> None:
    """Write every chunk under its address; concurrent, since a remote ``set`` is a round trip.

    A LedgerError from any write is raised (after the others finished), before anything is announced.
    """
    workers = max(1, min(len(items), max_workers or ledger.max_concurrency))
    if workers == 1:
        for key, value in items:
            ledger.set(key, value)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(ledger.set, key, value) for key, value in items]
        for future in futures:
            future.result()


@dataclass(frozen=True)
class PreparedFile:
    """A file ready to send: its manifest (the message body), type extension and chunks."""

    manifest: bytes
    type_ext: str
    chunks: list[tuple[str, str]]


def prepare_file(path: Path, randfunc: crypto.RandFunc | None = None) -> PreparedFile:
    """Read and encrypt the file at ``path``; MessageError for a path that cannot be sent."""
    path = Path(path).expanduser()
    data = read_local_file(path)
    name = sanitize_filename(path.name)
    key, values = encrypt_file(data, randfunc)
    return PreparedFile(make_manifest(name, data, key, values), file_extension(name), chunk_items(key, values))


# --- receiving ------------------------------------------------------------------------------------


def describe(message: FileMessage) -> FileInfo:
    """Parse the manifest of a ``file`` message; PageFormatError when it is damaged or unknown."""
    if message.type != FILE_TYPE:
        raise MessageError("that message is not a file")
    return parse_manifest(message.body)


def parse_manifest(body: bytes) -> FileInfo:
    """Strictly parse a manifest; anything unexpected raises PageFormatError and nothing else."""
    try:
        data: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PageFormatError("the file message is damaged: its description is not valid JSON") from exc
    if not isinstance(data, dict):
        raise PageFormatError("the file message is damaged: its description is not an object")
    version = data.get("v")
    if type(version) is int and version != FORMAT_VERSION:
        raise PageFormatError("the file was sent by another ResChat version (unknown file format)")
    if type(version) is not int:
        raise PageFormatError("the file message is damaged: no format version")
    if set(data) != _MANIFEST_FIELDS:
        raise PageFormatError("the file message is damaged: missing or unexpected fields")
    name, size, sha256, key_text, chunks = (data[k] for k in ("name", "size", "sha256", "key", "chunks"))
    if not isinstance(name, str):
        raise PageFormatError("the file message is damaged: bad file name")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
        raise PageFormatError("the file message is damaged: bad file size")
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise PageFormatError("the file message is damaged: bad file hash")
    if not isinstance(key_text, str) or not _B64.fullmatch(key_text) or len(key_text) % 4:
        raise PageFormatError("the file message is damaged: bad file key")
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PageFormatError("the file message is damaged: bad file key") from exc
    if len(key) != crypto.KEY_BYTES:
        raise PageFormatError("the file message is damaged: bad file key")
    if (
        not isinstance(chunks, list)
        or not 1 <= len(chunks) <= MAX_CHUNKS
        or not all(isinstance(c, str) and _HEX64.fullmatch(c) for c in chunks)
    ):
        raise PageFormatError("the file message is damaged: bad chunk list")
    return FileInfo(name=sanitize_filename(name), size=size, sha256=sha256, key=key, chunks=tuple(chunks))


def fetch_file(ledger: Ledger, info: FileInfo) -> bytes:
    """Read, verify and decrypt the file ``info`` describes; IntegrityError on any mismatch."""
    keys = info.chunk_keys
    values = ledger.get_many(keys)
    total = len(info.chunks)
    parts: list[bytes] = []
    for index, digest in enumerate(info.chunks, start=1):
        value = values.get(keys[index - 1])
        if value is None:
            raise IntegrityError(
                f"chunk {index} of {total} of {info.name} is missing from the ledger "
                "(not written yet, or lost): try again later"
            )
        if _value_digest(value) != digest:
            raise IntegrityError(f"chunk {index} of {total} of {info.name} was altered on the ledger")
        body = value[len(CHUNK_PREFIX) :]
        if not value.startswith(CHUNK_PREFIX) or not _B64.fullmatch(body) or len(body) % 4:
            raise IntegrityError(f"chunk {index} of {total} of {info.name} is not a ResChat file chunk")
        parts.append(base64.b64decode(body))
    blob = b"".join(parts)
    if len(blob) != len(info.chunks) * CHUNK_BYTES or len(blob) < info.size + _SEAL_OVERHEAD:
        raise IntegrityError(f"{info.name}: the chunks do not add up to the announced size")
    try:
        padded = crypto.decrypt_message(info.key, blob, _AAD)
    except ValueError as exc:
        raise IntegrityError(f"{info.name} does not decrypt: the file is damaged") from exc
    data, padding = padded[: info.size], padded[info.size :]
    if any(padding):
        raise IntegrityError(f"{info.name}: the file does not have the announced size")
    if hashlib.sha256(data).hexdigest() != info.sha256:
        raise IntegrityError(f"{info.name}: the SHA-256 of the received file does not match the announced one")
    return data


def save_file(ledger: Ledger, message: FileMessage, downloads_dir: Path) -> Path:
    """Fetch, verify and save the file of ``message`` in ``downloads_dir``; returns the new file's path.

    Works for both directions (the sender can read back its own files). Nothing is written unless
    every check passed; an existing file is never replaced: ``name (1).ext``, ``name (2).ext``...
    """
    info = describe(message)
    data = fetch_file(ledger, info)
    return write_new_file(Path(downloads_dir), info.name, data)


def write_new_file(directory: Path, name: str, data: bytes) -> Path:
    """Create a new file (mode 0600) for ``data`` in ``directory`` (made 0700 if missing)."""
    directory = Path(directory).expanduser()
    _make_private_dirs(directory)
    stem, ext = _split_for_numbering(sanitize_filename(name))
    for number in range(10_000):
        candidate = directory / (f"{stem}{ext}" if number == 0 else f"{stem} ({number}){ext}")
        try:
            # O_EXCL: never replace a file, even one created between our check and our open; it
            # also refuses to follow a symlink planted under that name.
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise MessageError(f"cannot save in {directory}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                candidate.unlink()
            raise MessageError(f"cannot save {candidate.name}: {exc.strerror or exc}") from exc
        return candidate
    raise MessageError(f"cannot save {stem}{ext}: too many files with that name in {directory}")


def _make_private_dirs(directory: Path) -> None:
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    try:
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
    except OSError as exc:
        raise MessageError(f"cannot create the downloads directory {directory}: {exc.strerror or exc}") from exc
    if not directory.is_dir():
        raise MessageError(f"{directory} is not a directory: cannot save files there")


__all__ = [
    "CHUNK_BYTES",
    "MAX_FILE_BYTES",
    "FileInfo",
    "PreparedFile",
    "describe",
    "fetch_file",
    "file_extension",
    "file_label",
    "human_size",
    "message_label",
    "parse_manifest",
    "prepare_file",
    "sanitize_filename",
    "save_file",
    "store_chunks",
]
