"""Three people in a group, in pseudo-terminals: alice creates it from the menus with her friends bob and
carol, who are not friends of each other; each writes by typing at the chat prompt and sees the others'
lines appear, each line with who wrote it (carol sees bob as vouched for by alice).

The processes run this checkout's code (``python -m reschat`` with it first on the path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

from reschat import crypto
from reschat.friends import FriendStore
from tests.test_e2e import choose, say
from tests.test_e2e import leave_chat as leave

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60  # only reached when something is broken
PASSWORD = "group-e2e-password-4711"

pytestmark = pytest.mark.slow


def spawn(home: Path, ledger: Path, config: Path) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESCHAT_")}
    env.update(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", PYTHONPATH=str(ROOT))
    child = pexpect.spawn(
        sys.executable,
        ["-m", "reschat", "--home", str(home), "--ledger", str(ledger), "--config", str(config), "--create"],
        env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 200),
    )
    child.expect("Password")
    child.send(PASSWORD + "\r")
    return child


def befriend(homes: dict[str, Path], a: str, b: str) -> None:
    for me, other in ((a, b), (b, a)):
        own = crypto.fingerprint_bytes(crypto.load_public_key(homes[me])).hex()
        card = crypto.load_card(homes[other])
        assert card is not None
        FriendStore(homes[me] / "friends.json", own_fingerprint=own).add_friend(other, crypto.parse_contact(card))


def test_three_people_in_a_group_one_not_a_friend_of_another(tmp_path: Path) -> None:
    ledger, config = tmp_path / "ledger.sqlite", tmp_path / "config.toml"
    config.write_text("[chat]\npoll_interval = 0.2\n")
    homes = {name: tmp_path / name for name in ("alice", "bob", "carol")}
    for name, home in homes.items():
        crypto.create_keys(name, PASSWORD, home, scrypt_n=2**10)
        crypto.load_identity(home, PASSWORD)  # the first unlock writes the card
    befriend(homes, "alice", "bob")
    befriend(homes, "alice", "carol")
    children = []
    try:
        alice = spawn(homes["alice"], ledger, config)
        children.append(alice)
        choose(alice, "Choose", "5")
        choose(alice, "Group name", "team")
        choose(alice, "Members", "bob carol")
        alice.expect("Created team with 3 members")
        choose(alice, "Choose", "1")
        choose(alice, "Choose a friend", "team")
        alice.expect("Group team")
        say(alice, "hello team")
        alice.expect("me: hello team")

        bob = spawn(homes["bob"], ledger, config)
        children.append(bob)
        choose(bob, "Choose", "1")
        bob.expect(r"team \[group, 3 members\]")
        choose(bob, "Choose a friend", "team")
        bob.expect("alice: hello team")
        say(bob, "hi from bob")
        bob.expect("me: hi from bob")

        carol = spawn(homes["carol"], ledger, config)
        children.append(carol)
        choose(carol, "Choose", "1")
        choose(carol, "Choose a friend", "team")
        carol.expect("alice: hello team")
        carol.expect(r"bob \(vouched by alice, [0-9a-f]{16}\)")
        carol.expect("hi from bob")
        say(carol, "hi from carol")

        # The open chats show the others' lines as they come, without pressing Update.
        alice.expect("bob: hi from bob")
        alice.expect("carol: hi from carol")
        bob.expect(r"carol \(vouched by alice, [0-9a-f]{16}\)")
        for child in (alice, bob, carol):
            leave(child)
    finally:
        for child in children:
            if child.isalive():
                child.terminate(force=True)
