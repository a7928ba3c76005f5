"""The menus in-process: keystrokes through a prompt_toolkit pipe input, output to a string.

alice is the person at the keyboard (a real profile on disk, copied from one made per session);
bob is a profile of the engine on the same ledger, so the tests can make him write to her.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput, Output

from reschat import crypto, files
from reschat.app import ProfilePaths, open_friend_store
from reschat.chat import MAX_TEXT_BYTES, page_key
from reschat.config import Settings, load_settings
from reschat.errors import UnknownFriendError, WrongPasswordError
from reschat.ledger import MemoryLedger
from reschat.menus import (
    ACTIVE_WINDOW_S,
    CHAT_HINT,
    ChatLine,
    Menus,
    Poller,
    dropped_path,
    friend_completer,
    key_input_complete,
    match_nickname,
    poll_gap,
    read_chat_line,
    run_pager,
)
from reschat.page import Page
from reschat.render import DEFAULT_WIDTH, display_width, gutter
from tests.conftest import TEST_SCRYPT_N, Person, make_person, rsa_key

PASSWORD = "correct horse"
CTRL_C, CTRL_D = "\x03", "\x04"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
#: Generous: only reached when a test is broken and a prompt waits for input that never comes.
HANG_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def alice_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("template") / "alice"
    crypto.create_keys("alice", PASSWORD, home, scrypt_n=TEST_SCRYPT_N)
    return home


@pytest.fixture(scope="session")
def alice_identity(alice_template: Path) -> crypto.Identity:
    return crypto.load_identity(alice_template, PASSWORD)


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def settings(tmp_path: Path, alice_template: Path) -> Settings:
    home = tmp_path / "alice"
    shutil.copytree(alice_template, home)
    loaded = load_settings(home=str(home), environ={})
    return replace(loaded, chat=replace(loaded.chat, poll_interval=0.05))


@pytest.fixture
def bob(tmp_path: Path, ledger: MemoryLedger, alice_identity: crypto.Identity) -> Person:
    person = make_person("bob", 1, tmp_path / "bob", ledger)
    person.friends.add_friend("alice", alice_identity.public_key)
    return person


@pytest.fixture
def befriended(settings: Settings, bob: Person) -> Person:
    """bob, already in alice's friend list."""
    open_friend_store(settings).add_friend("bob", bob.identity.public_key, "bob")
    return bob


class Terminal:
    """The menus running in a thread on a pipe input; what they print collects in ``output``, what
    prompt_toolkit draws (prompts, toolbars) goes to ``screen`` (by default nowhere)."""

    def __init__(
        self, settings: Settings, ledger: MemoryLedger, screen: Output | None = None, **options: Any
    ) -> None:
        self.out = io.StringIO()
        self.menus = Menus(settings, ledger=ledger, stdout=self.out, scrypt_n=TEST_SCRYPT_N, **options)
        self.screen = screen if screen is not None else DummyOutput()
        self.status: int | None = None
        self.error: BaseException | None = None
        self._input: PipeInput | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    @property
    def output(self) -> str:
        return self.out.getvalue()

    def _run(self) -> None:
        with create_pipe_input() as pipe:
            self._input = pipe
            self._started.set()
            try:
                with create_app_session(input=pipe, output=self.screen):
                    self.status = self.menus.run()
            except BaseException as exc:  # handed to the test thread, which re-raises or checks it
                self.error = exc

    def start(self) -> Terminal:
        self._thread.start()
        self._started.wait()
        return self

    def type(self, keys: str) -> None:
        assert self._input is not None
        self._input.send_text(keys)

    def wait_for(self, text: str, timeout: float = HANG_TIMEOUT, *, count: int = 1) -> None:
        """Wait until ``text`` was printed ``count`` times; fail at once if the menu thread died."""
        self.wait_until(lambda: self.output.count(text) >= count, f"{text!r} (x{count})", timeout)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = HANG_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if not self._thread.is_alive() or time.monotonic() > deadline:
                pytest.fail(f"{what} never appeared (menus ended: {self.error!r}); output was:\n{self.output}")
            time.sleep(0.01)

    def finish(self) -> str:
        self._thread.join(HANG_TIMEOUT)
        if self._thread.is_alive():
            assert self._input is not None
            self._input.close()
            pytest.fail(f"the menus still wait for input; output was:\n{self.output}")
        return self.output


@pytest.fixture
def terminal(settings: Settings, ledger: MemoryLedger) -> Iterator[Callable[..., Terminal]]:
    """Start the menus; ``settings=`` replaces the test's settings, other options go to Terminal."""
    made: list[Terminal] = []

    def factory(**options: Any) -> Terminal:
        made.append(Terminal(options.pop("settings", settings), ledger, **options).start())
        return made[-1]

    yield factory
    for term in made:  # never leave a thread waiting on a prompt behind a failed test
        if term._input is not None:
            term._input.close()


@pytest.fixture
def run(terminal: Callable[[], Terminal]) -> Callable[[str], str]:
    """Type all ``keys`` at once, wait until the menus end, return their output (status must be 0)."""

    def go(keys: str) -> str:
        term = terminal()
        term.type(keys)
        output = term.finish()
        if term.error is not None:
            raise term.error
        assert term.status == 0, output
        return output

    return go


def login(keys: str = "") -> str:
    return PASSWORD + "\r" + keys


def unwrapped(output: str) -> str:
    """``output`` with wrapped rows joined again (a row break at a blank dropped that blank)."""
    return output.replace("\n" + gutter(DEFAULT_WIDTH), "")


# --- start-up ------------------------------------------------------------------------------------


def test_register_asks_name_and_password_twice(tmp_path: Path, ledger: MemoryLedger) -> None:
    settings = load_settings(home=str(tmp_path / "new"), environ={})
    term = Terminal(settings, ledger).start()
    term.type("\r" + "carol\r" + "pw1\r" + "pw2\r" + "\r" + "pw1\r" + "pw1\r" + CTRL_D)
    output = term.finish()
    assert term.error is None and term.status == 0
    assert "error: the name must not be empty" in output
    assert "error: the passwords do not match; try again" in output
    assert "error: the password must not be empty" in output
    identity = crypto.load_identity(tmp_path / "new", "pw1")
    assert identity.name == "carol"
    assert f"Your fingerprint: {identity.fingerprint}" in output


def test_login_shows_own_fingerprint(run: Callable[[str], str], alice_identity: crypto.Identity) -> None:
    output = run(login("4\r"))
    assert "Logged in as alice." in output
    assert f"Your fingerprint: {alice_identity.fingerprint}" in output
    assert output.rstrip().endswith("Bye.")


def test_wrong_password_says_so_and_asks_again(run: Callable[[str], str]) -> None:
    output = run("wrong\r" + "also wrong\r" + login(CTRL_D))
    assert "error: wrong password; 2 tries left" in output
    assert "error: wrong password; 1 try left" in output
    assert "Logged in as alice." in output


def test_three_wrong_passwords_give_up(terminal: Callable[[], Terminal]) -> None:
    term = terminal()
    term.type("a\rb\rc\r")
    output = term.finish()
    assert isinstance(term.error, WrongPasswordError)
    assert "3 wrong passwords" in str(term.error)
    assert "Logged in" not in output


def test_ctrl_c_at_login_interrupts(terminal: Callable[[], Terminal]) -> None:
    term = terminal()
    term.type(CTRL_C)
    term.finish()
    assert isinstance(term.error, KeyboardInterrupt)


# --- main menu -------------------------------------------------------------------------------------


def test_main_menu_lists_the_seed_items_and_the_card(
    run: Callable[[str], str], alice_identity: crypto.Identity
) -> None:
    output = run(login("3\r4\r"))
    assert "1. Start chatting\n  2. Add friend\n  3. Show my contact card\n  4. Quit" in output
    card_line = next(line for line in output.splitlines() if line.startswith(crypto.CARD_PREFIX))
    assert card_line == alice_identity.card
    assert crypto.fingerprint(crypto.parse_contact(card_line).public_key) == alice_identity.fingerprint


def test_unknown_main_menu_choice_is_an_error(run: Callable[[str], str]) -> None:
    output = run(login("9\rchat\r\r4\r"))
    assert "error: no such choice '9': enter a number from 1 to 4" in output
    assert "error: no such choice 'chat'" in output


def test_ctrl_c_at_main_menu_leaves_and_ctrl_d_quits(run: Callable[[str], str]) -> None:
    assert run(login(CTRL_C)).rstrip().endswith("Bye.")
    assert run(login(CTRL_D)).rstrip().endswith("Bye.")


# --- add friend --------------------------------------------------------------------------------------


def friend_keys(settings: Settings) -> dict[str, str]:
    return {f.nickname: f.fingerprint for f in open_friend_store(settings).all_friends()}


def bob_fpr(bob: Person) -> str:
    return crypto.fingerprint_bytes(bob.identity.public_key).hex()


def test_add_friend_by_pasting_a_card(run: Callable[[str], str], settings: Settings, bob: Person) -> None:
    output = run(login("2\rbobby\r" + bob.card + "\r" + "y\r" + CTRL_D))
    assert "Name on the card: bob" in output
    assert f"Fingerprint: {crypto.fingerprint(bob.identity.public_key)}" in output
    assert "Added bobby." in output
    assert friend_keys(settings) == {"bobby": bob_fpr(bob)}


def test_add_friend_by_typing_a_pem_line_by_line(run: Callable[[str], str], settings: Settings, bob: Person) -> None:
    # A terminal without bracketed paste sends a pasted PEM as lines, each ended by Enter.
    pem = crypto.public_key_to_string(bob.identity.public_key)
    assert pem.count("\n") > 5
    output = run(login("2\rbob\r" + pem.replace("\n", "\r") + "\r" + "y\r" + "3\r" + CTRL_D))
    assert f"Fingerprint: {crypto.fingerprint(bob.identity.public_key)}" in output
    assert "Added bob." in output
    assert friend_keys(settings) == {"bob": bob_fpr(bob)}
    assert "no such choice" not in output  # no PEM line leaked into a later menu as a choice


def test_add_friend_by_bracketed_paste(run: Callable[[str], str], settings: Settings, bob: Person) -> None:
    pem = crypto.public_key_to_string(bob.identity.public_key) + "\n"
    output = run(login("2\rbob\r" + PASTE_START + pem + PASTE_END + "\r" + "y\r" + CTRL_D))
    assert "Added bob." in output
    assert friend_keys(settings) == {"bob": bob_fpr(bob)}


def test_add_friend_can_be_declined(run: Callable[[str], str], settings: Settings, bob: Person) -> None:
    output = run(login("2\rbob\r" + PASTE_START + bob.card + PASTE_END + "\r" + "maybe\r" + "n\r" + CTRL_D))
    assert "Please answer y or n." in output
    assert "Not added." in output
    assert friend_keys(settings) == {}


@pytest.mark.parametrize(
    ("nickname", "key", "error"),
    [
        ("bob", "bob-card", "error: the nickname 'bob' is already in use"),
        ("carol", "garbage", "error: not a contact card (reschat-card:1:...) or a PEM public key"),
        ("carol", "own-card", "error: that is your own key: add your friend's key instead"),
        ("carol", "bob-card", "error: that key is already your friend 'bob'"),
        ("carol", "cut-card", "error: the contact card's checksum does not match: it was cut or altered"),
        ("1234", "bob-card", "error: the nickname must not be only digits"),
        ("", "bob-card", "error: the nickname must not be empty"),
    ],
)
def test_add_friend_errors_are_one_line_and_back_to_the_menu(
    run: Callable[[str], str], settings: Settings, befriended: Person, alice_identity: crypto.Identity,
    nickname: str, key: str, error: str,
) -> None:
    cards = {
        "bob-card": befriended.card,
        "own-card": alice_identity.card,
        "cut-card": befriended.card[:100] + befriended.card[104:],
        "garbage": "hello there",
    }
    keys = "2\r" + nickname + "\r"
    if "nickname" not in error:
        keys += PASTE_START + cards[key] + PASTE_END + "\r"
    output = run(login(keys + "3\r" + CTRL_D))
    assert error in output
    after_error = output.split(error, 1)[1]
    assert "Main menu" in after_error and alice_identity.card in after_error  # back at the menu, which works
    assert friend_keys(settings) == {"bob": bob_fpr(befriended)}
    assert "Traceback" not in output


def test_an_empty_paste_cancels(run: Callable[[str], str], settings: Settings) -> None:
    output = run(login("2\rbob\r\r" + CTRL_D))
    assert "Nothing pasted; no friend added." in output


def test_ctrl_c_while_adding_goes_back_to_the_main_menu(run: Callable[[str], str], settings: Settings) -> None:
    output = run(login("2\rbo" + CTRL_C + "3\r" + CTRL_D))
    assert "(back to the main menu)" in output
    assert crypto.CARD_PREFIX in output.split("(back to the main menu)", 1)[1]


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("", True),
        ("-----BEGIN PUBLIC KEY-----", False),
        ("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", True),
        ("reschat-card:1:Ym9i:MIIBojAN", False),
        ("reschat-card:1:Ym9i:MIIBojAN:1234", False),
        ("reschat-card:1:Ym9i:MIIBojAN:12345678", True),
        ("reschat-card:1:Ym9i:MIIB\n", True),  # an empty line always ends the input
        ("something else", True),
    ],
)
def test_when_enter_ends_a_pasted_key(text: str, complete: bool) -> None:
    assert key_input_complete(text) is complete


# --- second menu -------------------------------------------------------------------------------------


def test_no_friends_yet(run: Callable[[str], str]) -> None:
    output = run(login("1\r" + CTRL_D))
    assert "You have no friends yet" in output


def test_friends_are_numbered_with_unread_counts(run: Callable[[str], str], befriended: Person) -> None:
    befriended.chat.send_message("one", "alice")
    befriended.chat.send_message("two", "alice")
    output = run(login("1\r" + "2\r" + "4\r" + CTRL_D))
    assert "Friends\n  1. bob (2 unread)\n  2. Previous menu" in output
    assert output.count("Main menu") == 2  # "Previous menu" went back to it


@pytest.mark.parametrize("choice", ["1", "bob", "BOB"])
def test_pick_a_friend_by_number_nickname_or_completion(
    run: Callable[[str], str], befriended: Person, choice: str
) -> None:
    befriended.chat.send_message("hello alice", "alice")
    output = run(login("1\r" + choice + "\r" + CTRL_D))
    assert "Chatting with bob" in output
    assert "bob: hello alice" in output


def test_nicknames_complete() -> None:
    completer = friend_completer(["bob", "Bobby Tables", "carol"])
    found = completer.get_completions(Document("bo"), CompleteEvent(completion_requested=True))
    assert [c.text for c in found] == ["bob", "Bobby Tables"]
    hostile = friend_completer(["x\u202ey"]).get_completions(Document("x"), CompleteEvent(completion_requested=True))
    assert [c.display_text for c in hostile] == ["x\\u202ey"]


def test_unknown_friend_choice_is_an_error(run: Callable[[str], str], befriended: Person) -> None:
    output = run(login("1\r" + "carol\r" + "7\r" + "2\r" + CTRL_D))
    assert "error: no friend is called 'carol'" in output
    assert "error: no such choice '7': enter 1 to 2 or a nickname" in output
    assert output.count("Friends\n") == 3
    assert "Chatting with" not in output


def test_ctrl_c_in_second_menu_goes_back(run: Callable[[str], str], befriended: Person) -> None:
    output = run(login("1\r" + CTRL_C + "4\r"))
    assert output.count("Main menu") == 2


# --- third menu --------------------------------------------------------------------------------------


def test_send_message_reaches_the_friend(run: Callable[[str], str], befriended: Person) -> None:
    output = run(login("1\r1\r" + "1\r" + "hello bob\r" + CTRL_D))
    assert "No messages yet." in output
    assert "me: hello bob" in output
    assert [m.text for m in befriended.chat.get_update("alice").messages] == ["hello bob"]


def test_empty_message_and_unknown_choice_are_errors(run: Callable[[str], str], befriended: Person) -> None:
    output = run(login("1\r1\r" + "1\r" + "   \r" + "9\r" + "7\r" + "2\r" + CTRL_D))
    assert "error: the message is empty" in output
    assert "error: no such choice '9': enter 1 to 7, or ' 9' to send it" in output
    assert output.count("Main menu") == 2  # Previous menu, then Previous menu again


def test_conversation_shows_both_sides_in_time_order(run: Callable[[str], str], befriended: Person) -> None:
    befriended.chat.send_message("first from bob", "alice")
    output = run(login("1\r1\r" + "1\r" + "reply from alice\r" + "2\r" + CTRL_D))
    assert output.index("bob: first from bob") < output.index("me: reply from alice")
    assert "No new messages." in output or "✓ delivered: reply from alice" in output


def test_update_shows_only_what_is_new(terminal: Callable[[], Terminal], befriended: Person) -> None:
    term = terminal()
    term.type(login("1\r1\r"))
    term.wait_for("No messages yet.")
    befriended.chat.send_message("news", "alice")
    term.type("2\r")
    term.wait_for("bob: news")
    term.type("2\r")
    term.wait_for("No new messages.")
    term.type(CTRL_D)
    output = term.finish()
    assert output.count("bob: news") == 1


def test_new_messages_appear_without_pressing_update(terminal: Callable[[], Terminal], befriended: Person) -> None:
    term = terminal()
    term.type(login("1\r1\r"))
    term.wait_for("No messages yet.")
    befriended.chat.send_message("are you there?", "alice")
    term.wait_for("bob: are you there?")  # nothing was typed: the background poll showed it
    term.type(CTRL_D)
    output = term.finish()
    assert term.status == 0
    assert output.count("bob: are you there?") == 1


def test_load_older_messages(run: Callable[[str], str], befriended: Person) -> None:
    for i in range(50):
        befriended.chat.send_message(f"m{i}", "alice")
    output = run(login("1\r1\r" + "3\r" + "3\r" + CTRL_D))
    on_entry = output.split("(There are older messages", 1)[0]
    assert "bob: m49" in on_entry and "bob: m20" in on_entry
    assert "bob: m19" not in on_entry
    older = output.split("--- older messages ---", 1)[1]
    assert "bob: m0\n" in older and "bob: m19\n" in older
    assert "No older messages." in older


def test_hostile_text_is_shown_inertly(run: Callable[[str], str], befriended: Person) -> None:
    befriended.chat.send_message("\x1b]0;pwned\x07 \x1b[2J hi \u202eevil", "alice")
    output = run(login("1\r1\r" + CTRL_D))
    assert "bob: \\x1b]0;pwned\\x07 \\x1b[2J hi \\u202eevil" in output
    assert "\x1b" not in output and "\u202e" not in output


def test_forged_record_is_marked_and_never_shown(
    run: Callable[[str], str], settings: Settings, befriended: Person, ledger: MemoryLedger,
    alice_identity: crypto.Identity,
) -> None:
    befriended.chat.send_message("genuine one", "alice")
    befriended.chat.send_message("genuine two", "alice")
    conversation = crypto.conversation_id(alice_identity.public_key, befriended.identity.public_key)
    key = page_key(conversation, bob_fpr(befriended), 1)
    original = Page.from_string(ledger.get(key) or "")
    forged = Page(original.conversation, original.sender, original.number, original.wrapped_key)
    first, second = original.all_messages()
    tampered = bytearray(first.for_receiver)
    tampered[-1] ^= 1
    forged.add_message(replace(first, for_receiver=bytes(tampered)))
    forged.add_message(second)
    ledger.set(key, forged.to_string())
    output = run(login("1\r1\r" + CTRL_D))
    assert "!! forged record hidden in bob's messages" in output
    assert "genuine one" not in output
    assert "bob: genuine two" in output


def test_ctrl_c_in_chat_goes_back_and_cancels_a_message(run: Callable[[str], str], befriended: Person) -> None:
    output = run(login("1\r1\r" + "1\r" + "half typ" + CTRL_C + CTRL_C + "2\r" + CTRL_D))
    assert "(cancelled)" in output
    assert output.count("Friends\n") == 2  # Ctrl-C in the chat menu went back to the friends
    assert befriended.chat.get_update("alice").messages == []


def test_ctrl_d_in_chat_quits(terminal: Callable[[], Terminal], befriended: Person) -> None:
    term = terminal()
    term.type(login("1\r1\r" + CTRL_D))
    output = term.finish()
    assert term.status == 0 and term.error is None
    assert output.rstrip().endswith("Bye.")


def test_chat_menu_lists_the_seed_items_then_files_and_previous_menu_last(
    run: Callable[[str], str], befriended: Person
) -> None:
    output = run(login("1\r1\r" + "7\r" + "2\r" + CTRL_D))
    assert (
        "Chat with bob\n  1. Send message\n  2. Update\n  3. Load older messages\n"
        "  4. Send file\n  5. Save a file\n  6. View a whole message\n  7. Previous menu\n"
    ) in output
    assert output.count("Friends\n") == 2  # 7 went back to the friends


# --- files in the chat ---------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_send_file_reaches_the_friend(
    run: Callable[[str], str], befriended: Person, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2000)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "photo.png").write_bytes(data)
    monkeypatch.setenv("HOME", str(tmp_path))  # the prompt expands ~ like a shell
    output = run(login("1\r1\r" + "4\r" + "~/out/photo.png\r" + "4\r" + "\r" + "4\rmissing.png\r" + CTRL_D))
    assert "me: file photo.png (2.0 KiB)" in output
    assert "No file chosen." in output
    assert "error: no such file: missing.png" in output
    received = [m for m in befriended.chat.get_update("alice").messages if m.type == "file"]
    assert len(received) == 1
    saved = files.save_file(befriended.chat, received[0], tmp_path / "bob-downloads")
    assert sha256(saved.read_bytes()) == sha256(data)


def test_save_a_file_from_the_conversation(run: Callable[[str], str], settings: Settings, befriended: Person,
                                           tmp_path: Path) -> None:
    first, second = os.urandom(100), os.urandom(5000)
    (tmp_path / "first.txt").write_bytes(first)
    (tmp_path / "re\u202efdp.exe").write_bytes(second)  # a right-to-left override hides the real extension
    files.send_file(befriended.chat, "alice", tmp_path / "first.txt")
    befriended.chat.send_message("two files for you", "alice")
    files.send_file(befriended.chat, "alice", tmp_path / "re\u202efdp.exe")
    output = run(login("1\r1\r" + "5\r" + "9\r" + "5\r\r" + "5\r" + "1\r" + CTRL_D))
    assert "bob: file first.txt (100 B)" in output
    # The newest is 1, as 'reschat save NICK N' counts, and the listing says so.
    listing = output.split("Files in this conversation (1 = the newest, as in 'reschat save'):\n", 1)[1]
    assert listing.startswith("  1. file refdp.exe (4.9 KiB), from bob, ")
    assert "\n  2. file first.txt (100 B), from bob, " in listing
    assert "error: no such file '9': enter a number from 1 to 2" in output
    assert "Nothing saved." in output
    downloads = ProfilePaths(settings.home).downloads
    assert f"Saved {downloads / 'refdp.exe'}" in unwrapped(output)
    assert "\u202e" not in output
    assert sorted(p.name for p in downloads.iterdir()) == ["refdp.exe"]
    assert sha256((downloads / "refdp.exe").read_bytes()) == sha256(second)


def test_save_a_file_with_an_altered_chunk_is_an_error_and_saves_nothing(
    run: Callable[[str], str], settings: Settings, befriended: Person, ledger: MemoryLedger, tmp_path: Path
) -> None:
    (tmp_path / "plans.txt").write_bytes(b"the plans")
    sent = files.send_file(befriended.chat, "alice", tmp_path / "plans.txt")
    key = files.describe(sent.message).chunk_keys[0]
    value = ledger.get(key) or ""
    ledger.set(key, value[:-5] + ("B" if value[-5] == "A" else "A") + value[-4:])
    output = run(login("1\r1\r" + "5\r1\r" + "1\rstill here\r" + CTRL_D))
    assert "error: chunk 1 of 1 of plans.txt was altered on the ledger" in output
    assert "me: still here" in output  # the menu went on
    downloads = ProfilePaths(settings.home).downloads
    assert not downloads.exists() or list(downloads.iterdir()) == []
    assert "Traceback" not in output


def test_save_a_file_when_there_is_none(run: Callable[[str], str], befriended: Person) -> None:
    befriended.chat.send_message("no files here", "alice")
    output = run(login("1\r1\r" + "5\r" + CTRL_D))
    assert "No files in the loaded messages." in output


# --- news from other friends -----------------------------------------------------------------------------


@pytest.fixture
def carol(tmp_path: Path, ledger: MemoryLedger, settings: Settings, alice_identity: crypto.Identity) -> Person:
    """A second friend of alice on the same ledger."""
    person = make_person("carol", 2, tmp_path / "carol", ledger)
    person.friends.add_friend("alice", alice_identity.public_key)
    open_friend_store(settings).add_friend("carol", person.identity.public_key, "carol")
    return person


def test_a_notice_when_another_friend_writes(
    terminal: Callable[[], Terminal], befriended: Person, carol: Person
) -> None:
    carol.chat.send_message("c0", "alice")  # already unread before the chat opens: no notice for it
    term = terminal()
    term.type(login("1\r"))
    term.wait_for("carol (1 unread)")
    term.type("bob\r")
    term.wait_for("No messages yet.")
    carol.chat.send_message("c1", "alice")
    term.wait_for("(2 new messages from carol)")
    befriended.chat.send_message("from bob", "alice")
    term.wait_for("bob: from bob")
    carol.chat.send_message("c2", "alice")
    term.wait_for("(3 new messages from carol)")
    term.type("7\r")
    term.wait_for("carol (3 unread)")
    term.type(CTRL_D)
    output = term.finish()
    assert output.count("(2 new messages from carol)") == 1  # once per rise, not on every poll
    assert "new message from carol)" not in output and "from bob)" not in output
    assert "carol: c1" not in output  # a notice, not carol's messages in bob's chat


def test_unread_counts_in_the_friends_menu_follow_arrivals_and_reading(
    terminal: Callable[[], Terminal], befriended: Person, carol: Person
) -> None:
    befriended.chat.send_message("b1", "alice")
    befriended.chat.send_message("b2", "alice")
    term = terminal()
    term.type(login("1\r"))
    term.wait_for("1. bob (2 unread)\n  2. carol\n  3. Previous menu")
    term.type("bob\r")
    term.wait_for("bob: b2")
    term.type("7\r")
    term.wait_for("1. bob\n  2. carol\n  3. Previous menu")  # read: no count left
    befriended.chat.send_message("b3", "alice")
    carol.chat.send_message("c1", "alice")
    term.type("\r")  # an empty choice shows the list again, counted afresh
    term.wait_for("1. bob (1 unread)\n  2. carol (1 unread)\n  3. Previous menu")
    term.type("carol\r")
    term.wait_for("carol: c1")
    term.type("7\r")
    term.wait_for("1. bob (1 unread)\n  2. carol\n  3. Previous menu")
    term.type(CTRL_D)
    assert term.finish().rstrip().endswith("Bye.")


# --- typing sends (issue 14.1) ---------------------------------------------------------------------------


def texts(person: Person) -> list[str]:
    return [m.text for m in person.chat.get_update("alice").messages if m.type == "text"]


def test_typing_a_line_sends_it_and_a_number_needs_a_space(
    terminal: Callable[..., Terminal], befriended: Person
) -> None:
    term = terminal()
    term.type(login("1\r1\r"))
    term.wait_for(CHAT_HINT)
    term.type("hello bob\r")
    term.wait_for("me: hello bob")
    # ' 42' sends 42, '42' is no menu item; Esc Enter makes a new line, a bracketed paste keeps its own.
    term.type(" 42\r" + "42\r" + "two\x1b\rlines\r" + PASTE_START + "pasted\nlines" + PASTE_END + "\r")
    term.wait_for("me: pasted")
    term.type("thrown away" + CTRL_C + "kept\r")  # Ctrl-C clears a line that has text
    term.wait_for("me: kept")
    term.type(CTRL_C)  # and on an empty line goes back to the friends
    term.wait_for("Friends\n", count=2)
    term.type(CTRL_D)
    output = term.finish()
    assert texts(befriended) == ["hello bob", "42", "two\nlines", "pasted\nlines", "kept"]
    assert "error: no such choice '42': enter 1 to 7, or ' 42' to send it" in output
    assert "me: two\n" + gutter(DEFAULT_WIDTH) + "lines\n" in output
    # The menu once, on entry; after each message a one-line hint instead.
    assert output.count("  1. Send message") == 1
    assert output.count(CHAT_HINT) == 1 + 5
    assert "\a" not in output  # no bell unless the settings ask for it


def test_an_empty_line_shows_the_menu_again(run: Callable[[str], str], befriended: Person) -> None:
    output = run(login("1\r1\r" + "\r" + "  \r" + CTRL_D))
    assert output.count("  1. Send message") == 3
    assert texts(befriended) == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello", ChatLine("message", text="hello")),
        ("3", ChatLine("choice", number=3)),
        ("3  ", ChatLine("choice", number=3)),
        (" 3", ChatLine("message", text="3")),
        ("  two spaces", ChatLine("message", text=" two spaces")),
        ("8", ChatLine("no-choice", text="8")),
        ("0", ChatLine("no-choice", text="0")),
        ("٣", ChatLine("message", text="٣")),  # only ASCII digits pick items
        ("3\n4", ChatLine("message", text="3\n4")),
        ("", ChatLine("menu")),
        ("   ", ChatLine("menu")),
    ],
)
def test_how_a_chat_line_is_read(line: str, expected: ChatLine) -> None:
    assert read_chat_line(line, 7) == expected


def test_the_seed_item_send_message_still_asks_for_a_message(run: Callable[[str], str], befriended: Person) -> None:
    output = run(login("1\r1\r" + "1\r" + "via the menu\x1b\rtwo lines\r" + CTRL_D))
    assert "me: via the menu" in output
    assert texts(befriended) == ["via the menu\ntwo lines"]


# --- whole messages (issue 14.2) ---------------------------------------------------------------------------


def test_view_a_whole_message_in_the_pager_or_printed(terminal: Callable[..., Terminal], befriended: Person) -> None:
    long_text = "x" * 1500 + "\n" + "\n".join(f"line {i}" for i in range(60))
    befriended.chat.send_message(long_text, "alice")
    befriended.chat.send_message("short one", "alice")
    paged: list[str] = []

    def pager(text: str) -> bool:  # pages the first time; then there is "no pager", so it is printed
        paged.append(text)
        return len(paged) == 1

    term = terminal(pager=pager)
    term.type(login("1\r1\r"))
    term.wait_for(CHAT_HINT)
    term.type("6\r")
    term.wait_for("Recent messages (1 = the newest):")
    term.type("2\r")
    term.wait_for(CHAT_HINT, count=2)
    term.type("6\r3\r" + "6\r\r" + "6\r2\r")
    term.wait_for("line 59")
    term.type(CTRL_D)
    output = term.finish()
    # In the chat a friend's long message is cut, and the marker says how to read it all.
    assert "[… 500 more characters; 6 shows it whole]" in output
    assert "[… 21 more lines; 6 shows it whole]" in output
    listing = output.split("Recent messages (1 = the newest):\n", 1)[1]
    assert listing.startswith("  1. ")
    assert listing.split("\n")[0].endswith(" bob: short one")
    assert " bob: " + "x" * 10 in listing.split("\n")[1] and listing.split("\n")[1].endswith("…")
    assert "error: no such message '3': enter a number from 1 to 2" in output
    rows = paged[0].split("\n")
    assert rows[0].startswith(paged[1].split("\n")[0][:16]) and " bob: xxx" in rows[0]
    assert all(row.startswith(gutter(DEFAULT_WIDTH)) for row in rows[1:])
    assert all(display_width(row) < DEFAULT_WIDTH for row in rows)
    assert "x" * 1500 in unwrapped(paged[0])
    assert [row.removeprefix(gutter(DEFAULT_WIDTH)) for row in rows[-60:]] == [f"line {i}" for i in range(60)]
    assert "more characters" not in paged[0] and "more lines" not in paged[0]
    assert paged[1] == paged[0]
    assert paged[0] in output  # the second time, with no pager, it was printed


def test_view_with_no_messages(run: Callable[[str], str], befriended: Person) -> None:
    assert "No messages to view." in run(login("1\r1\r" + "6\r" + CTRL_D))


def test_a_draft_over_the_limit_is_kept_for_editing_or_sent_as_a_file(
    terminal: Callable[..., Terminal], befriended: Person, tmp_path: Path
) -> None:
    draft = "0123456789abcdef" * 1100  # 17,600 bytes: over the 16 KiB of one message
    assert len(draft.encode()) > MAX_TEXT_BYTES
    term = terminal()
    term.type(login("1\r1\r"))
    term.wait_for(CHAT_HINT)
    term.type(PASTE_START + draft + PASTE_END + "\r")
    term.wait_for("This message is 17,600 bytes; a message holds at most 16,384 bytes (16 KiB).")
    term.type("\r")  # Enter keeps it
    term.wait_for("Kept: edit it at the prompt")
    term.type("\x7f" * 1300 + "\r")  # the prompt holds the draft: delete its last 1,300 characters, send
    term.wait_for("me: 0123456789abcdef")
    term.type(PASTE_START + draft + PASTE_END + "\r")
    term.wait_for("This message is 17,600 bytes", count=2)
    term.type("1\r")  # send it as a file
    term.wait_for("me: file message.txt (17.2 KiB)")
    term.type(CTRL_D)
    output = term.finish()
    assert "error" not in output
    received = befriended.chat.get_update("alice").messages
    assert [m.type for m in received] == ["text", "file"]
    assert received[0].text == draft[:-1300]
    saved = files.save_file(befriended.chat, received[1], tmp_path / "bob-downloads")
    assert saved.name == "message.txt" and saved.read_text(encoding="utf-8") == draft


def test_a_draft_the_engine_refuses_comes_back_at_the_prompt(
    terminal: Callable[..., Terminal], befriended: Person, settings: Settings
) -> None:
    friends = ProfilePaths(settings.home).friends
    stored = friends.read_text(encoding="utf-8")
    term = terminal()
    term.type(login("1\r1\r"))
    term.wait_for(CHAT_HINT)
    # bob is renamed behind the chat's back (another terminal of the profile could): sending fails.
    friends.write_text(stored.replace('"nickname": "bob"', '"nickname": "robert"'), encoding="utf-8")
    term.type("my precious draft\r")
    term.wait_for("error: no friend is called 'bob'")
    friends.write_text(stored, encoding="utf-8")
    term.type("\r")  # the prompt holds the draft: Enter sends it now
    term.wait_for("me: my precious draft")
    term.type(CTRL_D)
    term.finish()
    assert texts(befriended) == ["my precious draft"]


# --- safe wrapping in the chat (issue 11.6) -----------------------------------------------------------------


def test_padding_cannot_fake_a_line_in_the_chat(run: Callable[[str], str], befriended: Person) -> None:
    spoof = "✓ me: yes, I agree to wire you 5000 EUR today"
    befriended.chat.send_message("ok" + " " * 56 + spoof, "alice")  # blank padding
    befriended.chat.send_message("ok" + "." * 56 + spoof, "alice")  # printable padding
    befriended.chat.send_message("ok\n" + spoof, "alice")  # a new line
    output = run(login("1\r1\r" + CTRL_D))
    rows = output.split("Chatting with bob\n", 1)[1].splitlines()
    assert all(display_width(row) < DEFAULT_WIDTH for row in rows)  # the terminal never wraps a row itself
    assert not any(row.lstrip().startswith("✓") for row in rows)
    assert sum(spoof.split(" ", 1)[1][:10] in row for row in rows) == 3
    for row in rows:
        if "me: yes" in row:
            assert row.startswith(gutter(DEFAULT_WIDTH)) or row.startswith("20")  # a continuation, or bob's line


# --- fixes (issue 14.4) -------------------------------------------------------------------------------------


def test_a_file_is_delivered_under_its_label_not_its_manifest(
    terminal: Callable[..., Terminal], befriended: Person, tmp_path: Path
) -> None:
    (tmp_path / "photo.png").write_bytes(os.urandom(2000))
    term = terminal()
    term.type(login("1\r1\r" + "4\r" + str(tmp_path / "photo.png") + "\r"))
    term.wait_for("✓ delivered: file photo.png (2.0 KiB)")  # the background poll confirmed it
    term.type(CTRL_D)
    output = term.finish()
    assert '{"v"' not in output and "chunks" not in output


@pytest.mark.parametrize(
    "typed",
    [
        "'{path}'",  # what many terminals insert for a dropped file
        '"{path}"',
        "{escaped}",  # others escape the blanks
        " '{path}' ",
        "file://{url}",
    ],
)
def test_send_file_accepts_quoted_and_dropped_paths(
    run: Callable[[str], str], befriended: Person, tmp_path: Path, typed: str
) -> None:
    folder = tmp_path / "my photos"
    folder.mkdir()
    path = folder / "with space.jpg"
    path.write_bytes(b"\xff\xd8 a picture")
    line = typed.format(
        path=path, escaped=str(path).replace(" ", "\\ "), url=urllib.parse.quote(str(path))
    )
    output = run(login("1\r1\r" + "4\r" + line + "\r" + CTRL_D))
    assert "me: file with space.jpg (12 B)" in output, output
    assert [m.type for m in befriended.chat.get_update("alice").messages] == ["file"]


@pytest.mark.parametrize(
    ("typed", "path"),
    [
        ("/a/b.jpg", "/a/b.jpg"),
        ("  '/a/with space.jpg' ", "/a/with space.jpg"),
        ('"/a/with space.jpg"', "/a/with space.jpg"),
        ("/a/with\\ space.jpg", "/a/with space.jpg"),
        ("file:///a/with%20space.jpg", "/a/with space.jpg"),
        ("'/a/unmatched", "'/a/unmatched"),
        ("/a/two words", "/a/two words"),
    ],
)
def test_dropped_paths_are_unquoted(typed: str, path: str) -> None:
    assert dropped_path(typed) == path


def test_a_friend_is_picked_by_a_unique_prefix_in_the_menus(
    run: Callable[[str], str], befriended: Person, carol: Person, settings: Settings
) -> None:
    open_friend_store(settings).add_friend("bobcat", rsa_key(3).public_key(), "bobcat")
    output = run(login("1\r" + "ca\r" + "7\r" + "bo\r" + "BOBC\r" + "7\r" + "bob\r" + "7\r" + "z\r" + CTRL_D))
    assert "Chatting with carol" in output and "Chatting with bobcat" in output and "Chatting with bob\n" in output
    assert "error: 'bo' could be 'bob', 'bobcat': type more of the nickname" in output
    assert "error: no friend is called 'z'" in output


def test_nickname_matching() -> None:
    names = ["bob", "Bobcat", "Élodie"]
    assert match_nickname("BOB", names) == "bob"  # an exact name wins over the longer one it begins
    assert match_nickname("bobc", names) == "Bobcat"
    assert match_nickname(" élo ", names) == "Élodie"
    with pytest.raises(UnknownFriendError, match="could be 'bob', 'Bobcat'"):
        match_nickname("b", names)
    with pytest.raises(UnknownFriendError, match="no friend is called"):
        match_nickname("", names)


# --- live unread counts, the bell (issue 14.3) ---------------------------------------------------------------


class ScreenRecorder(DummyOutput):
    """A prompt_toolkit output that keeps what is drawn (prompts and toolbars, not printed lines).

    prompt_toolkit redraws only the characters that changed since the last drawing, unless the terminal
    size changed; so each drawing (a burst of size queries, a refresh apart from the last) is told
    another width, and every toolbar appears whole in ``text``."""

    def __init__(self) -> None:
        self._drawn: list[str] = []
        self._lock = threading.Lock()
        self._drawing = 0
        self._last_query = 0.0

    def write(self, data: str) -> None:
        with self._lock:
            self._drawn.append(data)

    def get_size(self) -> Size:
        with self._lock:
            now = time.monotonic()
            if now - self._last_query > 0.02:
                self._drawing += 1
            self._last_query = now
            return Size(rows=40, columns=DEFAULT_WIDTH + self._drawing % 2)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._drawn)


def test_unread_counts_update_by_themselves_under_the_main_menu_and_the_friend_list(
    terminal: Callable[..., Terminal], befriended: Person, carol: Person
) -> None:
    screen = ScreenRecorder()
    term = terminal(screen=screen)
    term.type(login())
    term.wait_until(lambda: "no unread messages" in screen.text, "the toolbar")
    befriended.chat.send_message("b1", "alice")
    term.wait_until(lambda: "unread: bob 1" in screen.text, "bob's count")  # nothing was typed
    term.type("1\r")
    term.wait_for("1. bob (1 unread)\n  2. carol\n")
    carol.chat.send_message("c1", "alice")
    term.wait_until(lambda: "unread: bob 1, carol 1" in screen.text, "carol's count under the friend list")
    term.type(CTRL_D)
    term.finish()
    assert term.error is None


def test_the_bell_rings_on_new_messages_when_the_settings_ask(
    terminal: Callable[..., Terminal], settings: Settings, befriended: Person
) -> None:
    screen = ScreenRecorder()
    term = terminal(settings=replace(settings, chat=replace(settings.chat, bell=True)), screen=screen)
    term.type(login())
    term.wait_until(lambda: "no unread messages" in screen.text, "the first count")
    befriended.chat.send_message("ding", "alice")
    term.wait_for("\a")  # under the main menu
    term.type("1\r1\r")
    term.wait_for("bob: ding")
    befriended.chat.send_message("dong", "alice")
    term.wait_for("bob: dong")
    term.type(CTRL_D)
    assert term.finish().count("\a") == 2  # and none for the message already shown on opening


@pytest.mark.parametrize(
    ("backend", "interval", "since", "gap"),
    [
        ("resilientdb", 2.0, 0.0, 0.2),  # a message just now: rounds 200 ms apart on ResilientDB
        ("resilientdb-http", 2.0, 59.9, 0.2),
        ("local", 2.0, 30.0, 0.1),  # and 100 ms apart on the local ledger
        ("resilientdb", 2.0, 60.0, 2.0),  # a quiet minute: back to the configured interval
        ("local", 5.0, 600.0, 5.0),
        ("local", 2.0, None, 2.0),  # nothing sent or received in this session
        ("resilientdb", 0.05, None, 0.2),  # never closer than the minimum, whatever the settings say
        ("local", 0.05, 1.0, 0.1),
    ],
)
def test_poll_cadence(backend: str, interval: float, since: float | None, gap: float) -> None:
    assert poll_gap(backend=backend, interval=interval, since_activity=since) == gap


def test_the_open_chat_polls_fast_while_active_and_backs_off_when_quiet(
    terminal: Callable[..., Terminal], befriended: Person
) -> None:
    clock = [1000.0]  # the menus' monotonic clock, moved by the test
    asked: list[float | None] = []  # what the poll's cadence was asked: seconds since the last activity

    def cadence(*, backend: str, interval: float, since_activity: float | None) -> float:
        asked.append(since_activity)
        return poll_gap(backend=backend, interval=interval, since_activity=since_activity)

    def next_asked(check: Callable[[float | None], bool], what: str) -> None:
        start = len(asked)
        term.wait_until(lambda: any(check(since) for since in asked[start:]), what)

    befriended.chat.send_message("just now", "alice")
    term = terminal(monotonic=lambda: clock[0], cadence=cadence)
    term.type(login("1\r1\r"))
    term.wait_for("bob: just now")
    # Opening a chat whose newest message is seconds old: active already.
    next_asked(lambda since: since is not None and 0 <= since < ACTIVE_WINDOW_S, "active on opening")
    clock[0] += 61
    next_asked(lambda since: since is not None and since >= ACTIVE_WINDOW_S, "quiet after a minute")
    term.type("hello\r")  # sending makes it active
    term.wait_for("me: hello")
    next_asked(lambda since: since == 0.0, "active after sending")
    clock[0] += 61
    next_asked(lambda since: since is not None and since >= ACTIVE_WINDOW_S, "quiet again")
    befriended.chat.send_message("back", "alice")  # and so does receiving
    term.wait_for("bob: back")
    next_asked(lambda since: since == 0.0, "active after receiving")
    term.type(CTRL_D)
    term.finish()


def test_a_nudge_cuts_the_wait_short() -> None:
    gaps = iter([3600.0])
    ticked = threading.Event()
    with Poller(lambda: next(gaps, 0.0), ticked.set) as poller:
        poller.nudge()  # the hour-long first wait ends, the next gap (0 s) is asked for, and a round runs
        assert ticked.wait(HANG_TIMEOUT)


def test_the_pager_is_fed_through_a_pipe(tmp_path: Path) -> None:
    received = tmp_path / "received"
    script = tmp_path / "pager.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, stat, sys\n"
        "kind = 'pipe' if stat.S_ISFIFO(os.fstat(0).st_mode) else 'not a pipe'\n"
        "text = sys.stdin.read()\n"
        "with open(os.environ['RECEIVED'], 'w') as out:\n"
        "    out.write('|'.join([kind, ' '.join(sys.argv[1:]), os.environ.get('LESSSECURE', '-'), text]))\n"
    )
    script.chmod(0o755)
    tty = FakeTerminal()
    env = {"RECEIVED": str(received)}
    assert run_pager("row 1\nrow 2", environ={**env, "PAGER": f"{script} --opt"}, terminal=tty)
    assert received.read_text() == "pipe|--opt|-|row 1\nrow 2\n"
    # No $PAGER: less (never -R), with LESSSECURE; here a stand-in found on PATH.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "less").symlink_to(script)
    assert run_pager("hello", environ={**env, "PATH": str(bindir)}, terminal=tty)
    assert received.read_text() == "pipe|-F -X -K|1|hello\n"
    assert not run_pager("x", environ={**env, "PATH": str(tmp_path / "empty")}, terminal=tty)  # no pager at all
    assert not run_pager("x", environ={**env, "PAGER": str(tmp_path / "missing")}, terminal=tty)
    assert not run_pager("x", environ={**env, "PAGER": str(script)}, terminal=io.StringIO())
    assert received.read_text() == "pipe|-F -X -K|1|hello\n"  # not a terminal: nothing was started


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True
