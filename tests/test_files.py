"""Files: sent as encrypted chunks plus a signed manifest, fetched, verified and saved safely, on every
backend RESCHAT_TEST_LEDGER chooses (see conftest), with the stale reads the stand-ins serve: a file
written a moment ago may not be readable yet, and saving it again later succeeds."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reschat import files
from reschat.chat import ChatMessage, ConversationView
from reschat.errors import IntegrityError, MessageError, PageFormatError, UnknownFriendError
from reschat.ledger import Ledger
from reschat.ledger.base import MAX_VALUE_BYTES
from tests.conftest import (
    SETTLE_READS,
    LedgerRig,
    Person,
    arrivals,
    befriend,
    make_person,
    settle,
    update_until,
)

People = Callable[..., tuple[Person, Person]]
_SEAL = 28  # GCM nonce + tag around the encrypted file


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def file_messages(view: ConversationView) -> list[ChatMessage]:
    return [m for m in view.messages if m.type == "file"]


def received_files(person: Person, friend: str, count: int) -> list[ChatMessage]:
    """The file messages of ``person``'s conversation with ``friend``, once ``count`` of them are read."""
    view = update_until(person, friend, lambda v: len(file_messages(v)) >= count and not v.problems)
    assert view.problems == []
    found = file_messages(view)
    assert len(found) == count, f"{len(found)} file message(s) in the conversation, not {count}"
    return found


def received_file(person: Person, friend: str) -> ChatMessage:
    """The one file message in ``person``'s conversation with ``friend``."""
    return received_files(person, friend, 1)[-1]


def save_error(person: Person, message: ChatMessage, downloads: Path) -> IntegrityError:
    """What saving ``message`` raised (the test fails if it saved a file)."""
    with pytest.raises(IntegrityError) as caught:
        person.chat.save_file(message, downloads)
    return caught.value


def save_when_readable(person: Person, message: ChatMessage, downloads: Path) -> Path:
    """Save ``message``'s file; a chunk written a moment ago may read as missing, and is read again."""
    for _ in range(SETTLE_READS - 1):
        try:
            return person.chat.save_file(message, downloads)
        except IntegrityError as exc:
            if "is missing from the ledger" not in str(exc):
                raise
    return person.chat.save_file(message, downloads)


def first_error_but_missing(person: Person, message: ChatMessage, downloads: Path) -> IntegrityError:
    """The error saving ``message`` raises once no chunk reads as missing for a moment (stale reads)."""
    return settle(lambda: save_error(person, message, downloads), lambda e: "is missing" not in str(e))


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize(
    "size",
    [0, 1, files.CHUNK_BYTES - _SEAL, files.CHUNK_BYTES - _SEAL + 1, files.MAX_FILE_BYTES],
    ids=["empty", "one-byte", "one-chunk-exactly", "two-chunks", "5MiB"],
)
def test_file_round_trip(people: People, rig: LedgerRig, tmp_path: Path, size: int) -> None:
    alice, bob = people()
    data = os.urandom(size)
    source = write(tmp_path / "out" / "report.pdf", data)
    result = alice.chat.send_file("bob", source)
    assert result.error is None
    assert result.message.type == "file" and result.message.type_ext == "pdf"

    message = received_file(bob, "alice")
    info = files.describe(message)
    assert (info.name, info.size, info.sha256) == ("report.pdf", size, hashlib.sha256(data).hexdigest())
    expected_chunks = -(-(size + _SEAL) // files.CHUNK_BYTES)
    assert len(info.chunks) == expected_chunks
    for key in info.chunk_keys:
        value = rig.stored(key)
        assert value is not None and len(value) <= MAX_VALUE_BYTES
        assert value.startswith("reschat2:")
    saved = save_when_readable(bob, message, tmp_path / "bob-downloads")
    assert saved == tmp_path / "bob-downloads" / "report.pdf"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_one_chunk_exactly_fills_a_ledger_value_as_far_as_base64_allows(
    people: People, rig: LedgerRig, tmp_path: Path
) -> None:
    alice, bob = people()
    source = write(tmp_path / "exact.bin", os.urandom(files.CHUNK_BYTES - _SEAL))
    alice.chat.send_file("bob", source)
    info = files.describe(received_file(bob, "alice"))
    assert len(info.chunks) == 1
    value = rig.stored(info.chunk_keys[0])
    assert value is not None
    assert len(value) <= MAX_VALUE_BYTES < len(value) + 4  # one more base64 quantum would not fit


def test_sender_can_save_its_own_file(people: People, tmp_path: Path) -> None:
    alice, _bob = people()
    data = b"my own notes\n"
    alice.chat.send_file("bob", write(tmp_path / "notes.txt", data))
    mine = received_file(alice, "bob")
    assert mine.outgoing
    saved = save_when_readable(alice, mine, tmp_path / "alice-downloads")
    assert saved.read_bytes() == data


def test_file_message_in_update_with_type_extension_and_label(
    people: People, rig: LedgerRig, tmp_path: Path
) -> None:
    alice, bob = people()
    alice.chat.send_message("here it comes", "bob")
    alice.chat.send_file("bob", write(tmp_path / "archive.tar.gz", os.urandom(1536)))
    arrived, view = arrivals(bob, "alice", 2)
    assert [(m.type, m.type_ext) for m in view.messages] == [("text", ""), ("file", "gz")]
    assert [(m.type, m.type_ext) for m in arrived] == [("text", ""), ("file", "gz")]  # each new once
    message = view.messages[1]
    assert files.file_label(files.describe(message)) == "file archive.tar.gz (1.5 KiB)"
    assert files.message_label(message) == "file archive.tar.gz (1.5 KiB)"
    # the manifest is sealed: neither the name nor the chunk keys appear on the ledger in clear
    info = files.describe(message)
    stored = rig.values()
    assert all(k in stored for k in info.chunk_keys)
    assert all("archive" not in value for value in stored.values())


def test_a_name_without_a_usable_extension_gets_an_empty_type_extension(people: People, tmp_path: Path) -> None:
    alice, bob = people()
    alice.chat.send_file("bob", write(tmp_path / "Makefile", b"all:\n"))
    alice.chat.send_file("bob", write(tmp_path / "odd.ex t", b"x"))
    assert [m.type_ext for m in received_files(bob, "alice", 2)] == ["", ""]


def test_five_mib_plus_one_byte_is_refused(people: People, rig: LedgerRig, tmp_path: Path) -> None:
    alice, _bob = people()
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(files.MAX_FILE_BYTES + 1)
    with pytest.raises(MessageError, match=r"big\.bin is 5\.0 MiB \(5242881 bytes\); files are limited to"):
        alice.chat.send_file("bob", big)
    assert rig.values() == {}  # not a chunk was written


def test_paths_that_are_not_sendable_files(people: People, tmp_path: Path) -> None:
    alice, _bob = people()
    with pytest.raises(MessageError, match="no such file"):
        alice.chat.send_file("bob", tmp_path / "missing.txt")
    with pytest.raises(MessageError, match="is a directory"):
        alice.chat.send_file("bob", tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(MessageError, match="not a regular file"):
        alice.chat.send_file("bob", fifo)  # must not hang waiting for a writer
    with pytest.raises(MessageError, match="cannot read"):
        alice.chat.send_file("bob", write(tmp_path / "plain.txt", b"p") / "inside")
    with pytest.raises(UnknownFriendError):
        alice.chat.send_file("carol", write(tmp_path / "a.txt", b"a"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_refused(people: People, tmp_path: Path) -> None:
    alice, _bob = people()
    secret = write(tmp_path / "secret.txt", b"s")
    secret.chmod(0)
    with pytest.raises(MessageError, match="cannot read"):
        alice.chat.send_file("bob", secret)


def test_a_tampered_chunk_is_detected_and_nothing_is_saved(people: People, rig: LedgerRig, tmp_path: Path) -> None:
    alice, bob = people()
    alice.chat.send_file("bob", write(tmp_path / "data.bin", os.urandom(3 * files.CHUNK_BYTES)))
    message = received_file(bob, "alice")
    info = files.describe(message)
    assert len(info.chunks) == 4
    original = rig.stored(info.chunk_keys[1])
    assert original is not None
    # A valid-looking chunk of the same length, written over the real one (anyone may write any key).
    forged = "reschat2:" + base64.b64encode(os.urandom(files.CHUNK_BYTES)).decode("ascii")
    rig.plant(info.chunk_keys[1], forged)
    downloads = tmp_path / "downloads"
    error = first_error_but_missing(bob, message, downloads)
    assert re.fullmatch(r"chunk 2 of 4 of data\.bin was altered on the ledger", str(error))
    assert listing(downloads) == []
    rig.plant(info.chunk_keys[1], original)  # put back: the file is whole again
    assert save_when_readable(bob, message, downloads).name == "data.bin"


def test_chunks_swapped_between_keys_are_detected(people: People, rig: LedgerRig, tmp_path: Path) -> None:
    alice, bob = people()
    alice.chat.send_file("bob", write(tmp_path / "data.bin", os.urandom(2 * files.CHUNK_BYTES)))
    message = received_file(bob, "alice")
    first, second = files.describe(message).chunk_keys[:2]
    one, two = rig.stored(first), rig.stored(second)
    assert one is not None and two is not None
    rig.plant(first, two)
    rig.plant(second, one)
    error = first_error_but_missing(bob, message, tmp_path / "downloads")
    assert str(error).startswith("chunk 1 of 3 of data.bin was altered")
    assert listing(tmp_path / "downloads") == []


class LosingLedger(Ledger):
    """A ledger that silently loses the chosen file-chunk writes, as a fire-and-forget ``set`` may."""

    name = "losing"

    def __init__(self, inner: Ledger, lose: Sequence[int]) -> None:
        self.inner = inner
        self.lose = set(lose)
        self.chunk_writes = 0
        self.chunk_addresses: set[str] = set()  # the test tells which keys are chunks (addresses are secret)

    def get(self, key: str) -> str | None:
        return self.inner.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, str | None]:
        return self.inner.get_many(keys)

    def set(self, key: str, value: str) -> None:
        if key in self.chunk_addresses:
            self.chunk_writes += 1
            if self.chunk_writes in self.lose:
                return
        self.inner.set(key, value)


def test_a_missing_chunk_is_detected_and_nothing_is_saved(ledger: Ledger, tmp_path: Path) -> None:
    losing = LosingLedger(ledger, lose=[3])
    alice = make_person("alice", 0, tmp_path / "alice", losing)
    bob = make_person("bob", 1, tmp_path / "bob", ledger)
    befriend(alice, bob)
    source = write(tmp_path / "data.bin", os.urandom(3 * files.CHUNK_BYTES))
    prepared = files.prepare_file(source)
    losing.chunk_addresses = {key for key, _value in prepared.chunks}
    files.store_chunks(losing, prepared.chunks, max_workers=1)
    alice.chat.send_message(prepared.manifest, "bob", msg_type="file", type_ext="bin")
    assert losing.chunk_writes == 4
    message = received_file(bob, "alice")
    # Chunks 1 and 2 were written a moment ago and may read as missing for a moment; chunk 3 never will.
    error = settle(lambda: save_error(bob, message, tmp_path / "downloads"), lambda e: "chunk 3 of 4" in str(e))
    assert re.match(r"chunk 3 of 4 of data\.bin is missing", str(error))
    assert listing(tmp_path / "downloads") == []


def test_a_damaged_manifest_is_a_clear_error_not_a_traceback(people: People, tmp_path: Path) -> None:
    alice, bob = people()
    good = files.make_manifest("a.txt", b"a", bytes(32), ["reschat2:YQ=="])
    bad_manifests = [
        b"not json",
        b"[1, 2]",
        b'{"v": 1}',
        b"\xff\xfe",
        good.replace(b'"v":2', b'"v":1'),
        good.replace(b'"v":2', b'"v":true'),
        good.replace(b'"size":1', b'"size":-1'),
        good.replace(b'"size":1', b'"size":5242881'),
        good.replace(b'"chunks":[', b'"chunks":["nothex",'),
        good.replace(b'"key":"', b'"key":"AAAA'),
    ]
    for body in bad_manifests:
        alice.chat.send_message(body, "bob", msg_type="file", type_ext="txt")
    damaged = received_files(bob, "alice", len(bad_manifests))
    for message in damaged:
        with pytest.raises(PageFormatError, match="file"):
            files.describe(message)
        with pytest.raises(PageFormatError):
            bob.chat.save_file(message, tmp_path / "downloads")
        assert files.message_label(message).startswith("file (damaged")
    assert listing(tmp_path / "downloads") == []


def test_a_text_message_is_not_a_file(people: People) -> None:
    alice, bob = people()
    alice.chat.send_message("hello", "bob")
    (message,) = update_until(bob, "alice", lambda v: len(v.messages) >= 1).messages
    with pytest.raises(MessageError, match="not a file"):
        files.describe(message)


# --- saving ----------------------------------------------------------------------------------------


def test_saving_twice_never_overwrites(people: People, tmp_path: Path) -> None:
    alice, bob = people()
    alice.chat.send_file("bob", write(tmp_path / "photo.jpg", b"jpeg bytes"))
    alice.chat.send_file("bob", write(tmp_path / "backup.tar.gz", b"tarball"))
    downloads = tmp_path / "nested" / "downloads"
    photo, backup = received_files(bob, "alice", 2)
    first = save_when_readable(bob, photo, downloads)
    second = save_when_readable(bob, photo, downloads)
    third = save_when_readable(bob, photo, downloads)
    save_when_readable(bob, backup, downloads)
    save_when_readable(bob, backup, downloads)
    assert (first.name, second.name, third.name) == ("photo.jpg", "photo (1).jpg", "photo (2).jpg")
    assert listing(downloads) == ["backup (1).tar.gz", "backup.tar.gz", "photo (1).jpg", "photo (2).jpg", "photo.jpg"]
    assert first.read_bytes() == second.read_bytes() == third.read_bytes() == b"jpeg bytes"
    assert stat.S_IMODE(downloads.stat().st_mode) == 0o700
    assert stat.S_IMODE(downloads.parent.stat().st_mode) == 0o700


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    target = write(tmp_path / "victim", b"precious")
    (downloads / "report.pdf").symlink_to(target)
    saved = files.write_new_file(downloads, "report.pdf", b"new")
    assert saved.name == "report (1).pdf"
    assert target.read_bytes() == b"precious"


def test_saving_into_a_file_instead_of_a_directory_is_refused(tmp_path: Path) -> None:
    not_a_dir = write(tmp_path / "downloads", b"")
    with pytest.raises(MessageError, match="not a directory"):
        files.write_new_file(not_a_dir, "a.txt", b"a")


def test_hostile_names_are_saved_inside_the_downloads_directory(people: People, tmp_path: Path) -> None:
    alice, bob = people()
    names = ["../../etc/passwd", "..\\..\\boot.ini", "", ".bashrc", "evil\u202etxt.exe", "a\x00b\x1bc\nd", "CON.txt"]
    for name in names:
        manifest_body = _manifest_for(alice, name, b"payload")
        alice.chat.send_message(manifest_body, "bob", msg_type="file", type_ext="")
    downloads = tmp_path / "downloads"
    messages = received_files(bob, "alice", len(names))
    saved = [save_when_readable(bob, m, downloads) for m in messages]
    assert [p.name for p in saved] == ["passwd", "boot.ini", "file", "bashrc", "eviltxt.exe", "abcd", "_CON.txt"]
    assert all(p.parent == downloads and p.read_bytes() == b"payload" for p in saved)
    assert not (tmp_path / "etc").exists()


def _manifest_for(sender: Person, name: str, data: bytes) -> bytes:
    """Store ``data`` as chunks and make a manifest that carries ``name`` raw, as a buggy client might."""
    key, values = files.encrypt_file(data)
    files.store_chunks(sender.chat.ledger, files.chunk_items(key, values))
    manifest = files.make_manifest("x", data, key, values)

    parsed = json.loads(manifest)
    parsed["name"] = name
    return json.dumps(parsed).encode("ascii")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("report.pdf", "report.pdf"),
        ("", "file"),
        ("...", "file"),
        (".bashrc", "bashrc"),
        ("-rf", "rf"),
        ("a\u202egpj.exe", "agpj.exe"),
        ("zero\u200bwidth", "zerowidth"),
        ("tab\there", "tabhere"),
        ("what?.txt", "what_.txt"),
        ("nul", "_nul"),
        ("trailing. . ", "trailing"),
        ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
        ("é" * 150, "é" * 100),
    ],
)
def test_sanitize_filename_examples(name: str, expected: str) -> None:
    assert files.sanitize_filename(name) == expected


#: Characters the sanitizer treats specially, so that generated names hit its corner cases often.
_TRICKY = st.sampled_from(list("./\\ -_:?conCONuxlpt1.tar.gzé\u0301\u202e\u200b\x00\x1b\n\u2028\ud800\U0010ffff"))


@given(st.one_of(st.text(max_size=300), st.text(alphabet=_TRICKY, max_size=300)))
def test_sanitized_names_are_always_safe(name: str) -> None:
    clean = files.sanitize_filename(name)
    assert clean
    assert "/" not in clean and "\\" not in clean and "\x00" not in clean
    assert not clean.startswith(".")
    assert all(unicodedata.category(ch)[0] != "C" for ch in clean)
    assert clean not in (".", "..")
    assert len(clean.encode("utf-8")) <= files.MAX_NAME_BYTES
    assert files.sanitize_filename(clean) == clean


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (int(1.2 * 1024 * 1024), "1.2 MiB"), (5 * 1024 * 1024, "5.0 MiB"), (3 * 1024**3, "3.0 GiB")],
)
def test_human_size(size: int, text: str) -> None:
    assert files.human_size(size) == text


def test_chat_service_sends_and_saves_files_in_one_call(people: People, tmp_path: Path) -> None:
    alice, bob = people()
    data = os.urandom(4096)
    result = alice.chat.send_file("bob", write(tmp_path / "q.csv", data))
    assert (result.message.type, result.message.type_ext, result.error) == ("file", "csv", None)
    saved = save_when_readable(bob, received_file(bob, "alice"), tmp_path / "downloads")
    assert saved.read_bytes() == data
