"""Two people use the installed ``reschat`` in pseudo-terminals, as a person would.

They register, add each other by pasting contact cards (bob pastes alice's card as one line, alice
pastes bob's as a terminal without bracketed paste delivers a wrapped line: a piece per Enter), then
chat only by typing lines at the chat prompt (a number with a space first, a new line with Esc Enter,
a bracketed paste) and see each other's messages appear without pressing Update.
Both point ``--ledger`` at one SQLite file.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pexpect
import pytest

SCRIPT = Path(sys.executable).parent / "reschat"
TIMEOUT = 60  # keygen is a few seconds; this is only reached when something is broken
PASSWORDS = {"alice": "alice-pw-4711", "bob": "bob-pw-0815", "carol": "carol-pw-42"}
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
GUTTER = " " * 17 + "│ "

pytestmark = pytest.mark.slow


def spawn(home: Path, ledger: Path, config: Path) -> pexpect.spawn:
    if not SCRIPT.exists():
        pytest.fail(f"the reschat console script is not installed next to {sys.executable}: pip install -e '.[test]'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESCHAT_")}
    env.update(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    return pexpect.spawn(
        str(SCRIPT), ["--home", str(home), "--ledger", str(ledger), "--config", str(config), "--create"],
        env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 200),
    )


def register(child: pexpect.spawn, name: str) -> None:
    child.expect("Username")
    child.send(name + "\r")
    child.expect("Password")
    child.send(PASSWORDS[name] + "\r")
    child.expect("Repeat password")
    child.send(PASSWORDS[name] + "\r")


def choose(child: pexpect.spawn, prompt: str, answer: str) -> None:
    child.expect(prompt)
    child.send(answer + "\r")


def add_friend(child: pexpect.spawn, nickname: str, key_text: str) -> None:
    choose(child, "Choose", "2")
    choose(child, "Nickname", nickname)
    child.expect("Card")
    child.send(key_text.replace("\n", "\r") + "\r")  # a paste without bracketed paste: one Enter per line
    child.expect(r"Fingerprint: ([0-9A-F ]{79})")
    choose(child, r"\[y/n\]", "y")
    child.expect(f"Added {nickname}.")


def say(child: pexpect.spawn, line: str) -> None:
    """Type a line at the chat prompt, as a person would: the text, then Enter."""
    child.expect("Message or 1-8")
    child.send(line + "\r")


def leave_chat(child: pexpect.spawn) -> None:
    """Ctrl-D at the chat prompt quits the program."""
    child.expect("Message or 1-8")
    child.send("\x04")
    child.expect("Bye.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def quit_menus(child: pexpect.spawn) -> None:
    # Wait for the prompt: between prompts the terminal is in cooked mode, where the line
    # discipline itself would swallow Ctrl-D as end-of-file.
    child.expect("Choose")
    child.send("\x04")
    child.expect("Bye.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_two_people_register_befriend_and_chat(tmp_path: Path) -> None:
    ledger, config = tmp_path / "ledger.sqlite", tmp_path / "config.toml"
    config.write_text("[chat]\npoll_interval = 0.2\n")
    alice = spawn(tmp_path / "alice", ledger, config)
    bob = spawn(tmp_path / "bob", ledger, config)
    try:
        register(alice, "alice")
        register(bob, "bob")
        alice.expect(r"Your fingerprint: ([0-9A-F ]{79})")
        alice_fpr = alice.match.group(1)
        bob.expect(r"Your fingerprint: ([0-9A-F ]{79})")

        # bob pastes alice's card as shown by her menu; alice pastes bob's card (as 'reschat whoami'
        # prints it) wrapped at 76 characters, one Enter per piece.
        choose(alice, "Choose", "3")
        alice.expect(r"(reschat-card:2:[A-Za-z0-9_-]+:[0-9a-f]{8})")
        alice_card = alice.match.group(1)
        add_friend(bob, "alice", alice_card)
        bob_card = (tmp_path / "bob" / "card.txt").read_text().strip()
        add_friend(alice, "bob", "\n".join(bob_card[i : i + 76] for i in range(0, len(bob_card), 76)))

        # alice opens the chat by a prefix of the nickname and writes first: only typed lines from here.
        choose(alice, "Choose", "1")
        choose(alice, "Choose a friend", "bo")
        alice.expect("Chatting with bob")
        alice.expect("No messages yet.")
        say(alice, "hello bob")
        alice.expect("me: hello bob")

        # bob opens the chat by number and sees her message on entry, then answers.
        choose(bob, "Choose", "1")
        bob.expect(r"1\. alice \(1 unread\)")
        choose(bob, "Choose a friend", "1")
        bob.expect("alice: hello bob")
        say(bob, "hi alice")

        # alice typed nothing since: the answer appears by itself. A number goes with a space first.
        alice.expect("bob: hi alice")
        say(alice, " 42")
        bob.expect("alice: 42")
        # Esc then Enter makes a new line; a bracketed paste keeps its own.
        say(bob, "two\x1b\rlines")
        alice.expect("bob: two\r\n" + GUTTER + "lines")
        say(alice, PASTE_START + "pasted\nlines" + PASTE_END)
        bob.expect("alice: pasted\r\n" + GUTTER + "lines")
        say(alice, "see you")
        bob.expect("alice: see you")
        alice.expect(r"✓ delivered: see you")
        for child in (alice, bob):
            leave_chat(child)

        # Logging in again: a wrong password is refused, the right one shows the same fingerprint.
        again = spawn(tmp_path / "alice", ledger, config)
        transcript: list[str] = []
        again.logfile_read = _Collector(transcript)
        choose(again, "Password", "not it")
        again.expect("error: wrong password; 2 tries left")
        choose(again, "Password", PASSWORDS["alice"])
        again.expect(r"Your fingerprint: ([0-9A-F ]{79})")
        assert again.match.group(1) == alice_fpr
        quit_menus(again)
        assert "Logged in as alice." in "".join(transcript)
        assert PASSWORDS["alice"] not in "".join(transcript)  # typed hidden
    finally:
        for child in (alice, bob):
            if child.isalive():
                child.terminate(force=True)


def test_bad_input_never_shows_a_traceback(tmp_path: Path) -> None:
    ledger, config = tmp_path / "ledger.sqlite", tmp_path / "config.toml"
    config.write_text("[chat]\npoll_interval = 0.2\n")
    carol = spawn(tmp_path / "carol", ledger, config)
    output: list[str] = []
    carol.logfile_read = _Collector(output)
    try:
        register(carol, "carol")
        choose(carol, "Choose", "2")
        choose(carol, "Nickname", "dave")
        choose(carol, "Card", "-----BEGIN PUBLIC KEY-----\rnot base64 at all\r-----END PUBLIC KEY-----")
        carol.expect("error: that card has no static keys \\(an old card or a bare key\\): ask for a new card")
        # The card is asked again for the same nickname; an empty line cancels.
        choose(carol, "Card", "reschat-card:2:bm90IGEgY2FyZA:12345678")
        carol.expect("error: the contact card's checksum does not match")
        choose(carol, "Card", "")
        carol.expect("Nothing pasted; no friend added.")
        choose(carol, "Choose", "1")
        carol.expect("You have no friends yet")
        choose(carol, "Choose", "x")
        carol.expect("error: no such choice 'x'")
        quit_menus(carol)
    finally:
        if carol.isalive():
            carol.terminate(force=True)
    assert "Traceback" not in "".join(output)
    assert not re.search(r"File \".*\", line \d+", "".join(output))


class _Collector:
    """A pexpect log file that keeps everything the program wrote."""

    def __init__(self, into: list[str]) -> None:
        self._into = into

    def write(self, text: str) -> None:
        self._into.append(text)

    def flush(self) -> None:
        pass
