"""The sealed key store: what a load returns is always what the file holds now, and what a save
writes is what the state holds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from reschat.errors import ProfileError
from reschat.keystore import ConversationState, ConversationStore, DigestLog, FriendLane, ReceiveKeyEntry


def test_the_key_store_reads_its_file_every_time_and_decrypts_only_new_bytes(tmp_path: Path) -> None:
    """ConversationStore skips the decryption of bytes it has opened or written itself; a change made
    by another process (another store object on the same file) is always seen, and bytes altered on
    disk never open (the AEAD), even right after a load of the genuine ones."""
    key = b"k" * 32
    mine = ConversationStore(tmp_path, b"c" * 16, key)
    other = ConversationStore(tmp_path, b"c" * 16, key)
    state = mine.load()
    state.settings = {"disappear": 300}
    mine.save(state)
    assert other.load().settings == {"disappear": 300}
    changed = other.load()
    changed.settings = {"disappear": 600}
    other.save(changed)
    assert mine.load().settings == {"disappear": 600}
    first = mine.load()
    first.settings["disappear"] = 1  # a caller's change never leaks into the next load
    assert mine.load().settings == {"disappear": 600}
    data = bytearray(mine.path.read_bytes())
    data[-1] ^= 1
    mine.path.write_bytes(bytes(data))
    with pytest.raises(ProfileError):
        mine.load()


def test_a_state_is_stored_as_every_field_of_it() -> None:
    """ConversationState.to_json builds its JSON without a deep copy; it must hold what asdict holds."""
    state = ConversationState(
        mine={"page": 3, "pages": {"3": "reschat2:x"}}, theirs=FriendLane(epoch=2, digests={"2:1": "ab"},
        record_times={"2:1": [[1, 2, 3]]}, epoch_tops={"1": 7}), receive_keys=[ReceiveKeyEntry(4, {"x": "y"})],
        moved_on=["2:1"], settings={"disappear": 300}, refused={"h": "forged"}, key_counter=4,
    )
    written, plain = state.to_json(), dataclasses.asdict(state)
    assert written["theirs"].pop("digests") == state.theirs.digests.to_json()  # runs, not a dict (DigestLog)
    plain["theirs"].pop("digests")
    assert json.dumps(written, sort_keys=True) == json.dumps(plain, sort_keys=True)
    assert ConversationState.from_json(json.loads(json.dumps(state.to_json()))) == state


def digest(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def test_the_digest_log_keeps_every_digest_and_stores_runs_as_one_string() -> None:
    log = DigestLog()
    for seq in range(1, 501):
        log[f"1:{seq}"] = digest(seq)
    log["1:510"] = digest(510)  # a small gap: the run grows over it, the gap reads as missing
    log["1:9000000000"] = digest(9)  # far away: kept apart, never a run billions of digests long
    log["2:7"] = digest(7)
    del log["1:3"]
    assert log["1:500"] == digest(500) and log["1:510"] == digest(510) and log["1:9000000000"] == digest(9)
    assert "1:3" not in log and "1:505" not in log and "3:1" not in log
    assert len(log) == 500 - 1 + 1 + 1 + 1
    stored = json.loads(json.dumps(log.to_json()))
    assert set(stored) == {"runs", "extra"} and isinstance(stored["runs"]["1"][1], str)
    assert len(stored["runs"]["1"][1]) == 510 * 64  # one hex string for the run
    assert "1:9000000000" in stored["extra"]
    again = DigestLog.from_json(stored)
    assert dict(again.items()) == dict(log.items())
    with pytest.raises(KeyError):
        del again["1:3"]


def test_expired_digests_leave_the_stored_run() -> None:
    log = DigestLog({f"1:{seq}": digest(seq) for seq in range(1, 101)})
    for seq in range(1, 61):  # expiry deletes the oldest first
        del log[f"1:{seq}"]
    stored = log.to_json()
    assert stored["runs"]["1"][0] == 61 and len(stored["runs"]["1"][1]) == 40 * 64
    assert dict(DigestLog.from_json(stored).items()) == {f"1:{seq}": digest(seq) for seq in range(61, 101)}
    for seq in range(61, 101):
        del log[f"1:{seq}"]
    assert log.to_json()["runs"] == {}


def test_a_digest_log_written_as_a_plain_mapping_still_loads() -> None:
    old = {f"1:{seq}": digest(seq) for seq in range(1, 30)}
    state = ConversationState.from_json({"theirs": {"epoch": 1, "digests": old}})
    assert dict(state.theirs.digests.items()) == old


def test_a_damaged_digest_is_a_profile_error_not_a_crash() -> None:
    for damaged in ({"1:1": "not hex"}, {"runs": {"1": [1, "abc"]}, "extra": {}}, {"runs": [], "extra": {}}):
        with pytest.raises(ProfileError):
            ConversationState.from_json({"theirs": {"digests": damaged}})


def test_a_digest_kept_apart_is_still_found_once_its_run_grows_over_it() -> None:
    log = DigestLog({f"1:{seq}": digest(seq) for seq in range(1, 101)})
    log["1:200"] = digest(200)  # too far past the run: kept apart
    for seq in range(101, 200):
        log[f"1:{seq}"] = digest(seq)
    log["1:201"] = digest(201)  # the run grows to 201, over 200's empty slot
    assert log["1:200"] == digest(200)
    again = DigestLog.from_json(json.loads(json.dumps(log.to_json())))
    assert again["1:200"] == digest(200) and len(again) == 201
    del again["1:200"]
    assert "1:200" not in again and len(again) == 200
    again["1:200"] = digest(2000)  # set again once the run reaches it: one entry, the new digest
    assert again["1:200"] == digest(2000) and len(again) == 201 and list(again).count("1:200") == 1
