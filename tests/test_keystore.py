"""The sealed key store: what a load returns is always what the file holds now, and what a save
writes is what the state holds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from reschat.errors import ProfileError
from reschat.keystore import ConversationState, ConversationStore, FriendLane, ReceiveKeyEntry


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
    assert json.dumps(state.to_json(), sort_keys=True) == json.dumps(dataclasses.asdict(state), sort_keys=True)
    assert ConversationState.from_json(json.loads(json.dumps(state.to_json()))) == state
