"""The menus in-process: keystrokes through a prompt_toolkit pipe input, output to a string.

alice is the person at the keyboard (a real profile on disk, copied from one made per session);
bob is a profile of the engine on the same ledger, so the tests can make him write to her.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
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
from Crypto.PublicKey import RSA
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput, Output

from reschat import crypto, files, menus, safety, schedule
from reschat.app import ProfilePaths, open_friend_store
from reschat.chat import MAX_TEXT_BYTES, ChatService
from reschat.config import Settings, load_settings
from reschat.errors import UnknownFriendError, WrongPasswordError
from reschat.ledger import Ledger, LocalLedger, MemoryLedger, ResilientDBHttpLedger
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
from reschat.page import SealedPage
from reschat.render import DEFAULT_WIDTH, DELIVERED_MARK, display_width, format_message, gutter
from tests.conftest import TEST_SCRYPT_N, FaultyLedger, Person, make_identity, make_person, rsa_key, statics_key
from tests.standin import StandInCluster
from tests.standin.http_gateway import GatewayStandIn

PASSWORD = "correct horse"
#: A password strong enough for a new identity (passwords.check_new_password).
STRONG = "tulip marble 1987 ferry"
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
    person.friends.add_friend("alice", crypto.parse_contact(alice_identity.card))
    return person


@pytest.fixture
def befriended(settings: Settings, bob: Person) -> Person:
    """bob, already in alice's friend list."""
    open_friend_store(settings).add_friend("bob", crypto.parse_contact(bob.card), "bob")
    return bob


class Terminal:
    """The menus running in a thread on a pipe input; what they print collects in ``output``, what
    prompt_toolkit draws (prompts, toolbars) goes to ``screen`` (by default nowhere)."""

    def __init__(
        self, settings: Settings, ledger: Ledger | None, body: Callable[[Menus], int] | None = None,
        screen: Output | None = None, **options: Any,
    ) -> None:
        self.out = io.StringIO()
        self.menus = Menus(settings, ledger=ledger, stdout=self.out, scrypt_n=TEST_SCRYPT_N, **options)
        #: What runs in the session: the whole program, or one flow of it.
        self._body: Callable[[Menus], int] = body or Menus.run
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
                    self.status = self._body(self.menus)
            except BaseException as exc:  # handed to the test thread, which re-raises or checks it
                self.error = exc

    def start(self) -> Terminal:
        self._thread.start()
        self._started.wait()
        return self

    def type(self, keys: str) -> None:
        assert self._input is not None
        self._input.send_text(keys)

    @property
    def unwrapped(self) -> str:
        """The output with long lines joined again: a line the chat wraps goes on after a ``│`` margin, and
        where it breaks depends on the width of what it holds (a temporary folder's name, say)."""
        return re.sub(r"[ \t]*\n[ \t]*│ ", " ", self.output)

    def wait_for(self, text: str, timeout: float = HANG_TIMEOUT, *, count: int = 1) -> None:
        """Wait until ``text`` was printed ``count`` times, wrapped or not; fail at once if the menu thread died."""
        self.wait_until(lambda: self.unwrapped.count(text) >= count, f"{text!r} (x{count})", timeout)

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


def test_register_asks_name_and_password_twice_then_where_messages_travel(
    tmp_path: Path, ledger: MemoryLedger
) -> None:
    settings = load_settings(home=str(tmp_path / "new"), environ={})
    term = Terminal(settings, ledger).start()
    strong, other = "tulip marble 1987 ferry", "ferry tulip 1987 marble"
    term.type("\r" + "carol\r" + "pw1\r" + "password123!\r" + strong + "\r" + other + "\r"
              + "\r" + strong + "\r" + strong + "\r" + "7\r" + "\r" + CTRL_D)
    output = term.finish()
    assert term.error is None and term.status == 0
    assert f"(Profile directory: {tmp_path / 'new'})" in output
    assert "error: the name must not be empty" in output
    # each refusal gives its reason on one line, and the prompt asks again
    assert "error: too short: use at least 10 characters" in output
    assert "error: too easy to guess: this is similar to a commonly used password;" in output
    assert "error: the passwords do not match; try again" in output
    assert "error: the password must not be empty" in output
    identity = crypto.load_identity(tmp_path / "new", strong)
    assert identity.name == "carol"
    assert f"Your fingerprint: {identity.fingerprint}" in output
    # The first run asks where messages travel; Enter takes the default, this machine only.
    after_keys = output.split("Your fingerprint", 1)[1]
    assert "Where should your messages travel?" in after_keys
    assert "  1. This machine only (the default)" in after_keys
    assert "error: no such choice '7': enter a number from 1 to 3" in after_keys
    assert load_settings(home=str(tmp_path / "new"), environ={}).config_file == tmp_path / "new" / "config.toml"
    assert 'backend = "local"' in (tmp_path / "new" / "config.toml").read_text()
    # The main menu's first screen says where the profile is and where messages travel.
    top = output.split("Main menu", 1)[0]
    assert f"Profile: {tmp_path / 'new'}\nLedger:  this machine only, the file " in top


def test_the_main_menu_starts_with_the_profile_and_the_ledger(
    run: Callable[[str], str], settings: Settings
) -> None:
    output = run(login(CTRL_D))
    top = f"\nProfile: {settings.home}\nLedger:  this machine only, the file {settings.ledger_path}\n\nMain menu"
    assert top in output


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


# --- the first run: where messages travel ------------------------------------------------------------


@pytest.fixture
def gateway() -> Iterator[GatewayStandIn]:
    with GatewayStandIn() as server:
        yield server


def fresh_settings(tmp_path: Path) -> Settings:
    """A profile without identity or config file, as on a first run."""
    return load_settings(home=str(tmp_path / "fresh"), environ={})


def choose_ledger_only(menus: Menus) -> int:
    menus.choose_ledger()
    return 0


def saved(settings: Settings) -> Settings:
    return load_settings(home=str(settings.home), environ={})


def test_first_run_through_a_resilientdb_gateway_from_zero_to_the_first_message(
    tmp_path: Path, gateway: GatewayStandIn
) -> None:
    settings = fresh_settings(tmp_path)
    bob = make_person("bob", 1, tmp_path / "bob", ResilientDBHttpLedger(gateway.url))
    term = Terminal(settings, ledger=None).start()  # the menus build their ledger from the settings
    term.type("dana\r" + STRONG + "\r" + STRONG + "\r" + "2\r" + gateway.url + "\r")
    term.wait_for("Main menu")
    output = term.output
    assert f"Checking ResilientDB HTTP gateway at {gateway.url} (a write and a read back)...\nIt works." in output
    assert f"Messages travel through: ResilientDB HTTP gateway at {gateway.url}" in output
    assert f"Ledger:  ResilientDB HTTP gateway at {gateway.url}\n" in output.split("Main menu", 1)[0]
    # Nobody else has written yet: what the gateway holds is the doctor's probe, at a private address.
    probes = list(gateway.store)
    assert probes and all(key.startswith(schedule.ADDRESS_PREFIX) for key in probes)
    chosen = saved(settings)
    assert chosen.ledger.backend == "resilientdb-http" and chosen.ledger.http.url == gateway.url
    # bob, on another machine, writes to dana through the gateway; she adds him and reads it.
    dana_card = crypto.load_card(settings.home)
    assert dana_card is not None
    assert crypto.parse_contact(dana_card).location == gateway.url  # her card names the ledger she chose
    bob.friends.add_friend("dana", crypto.parse_contact(dana_card))
    bob.chat.send_message("hello over the gateway", "dana")
    term.type("2\r" + "bob\r" + bob.card + "\r" + "y\r" + "1\r")
    term.wait_for("1. bob (1 unread)")
    term.type("1\r")
    term.wait_for("bob: hello over the gateway")
    term.type(CTRL_D)
    output = term.finish()
    assert term.error is None and term.status == 0, output


def test_a_gateway_that_fails_the_check_is_not_kept_unless_asked(tmp_path: Path, gateway: GatewayStandIn) -> None:
    settings = fresh_settings(tmp_path)
    gateway.failing = True
    term = Terminal(settings, MemoryLedger(), body=choose_ledger_only).start()
    term.type("2\r" + gateway.url + "\r" + "n\r" + "2\r" + gateway.url + "\r" + "y\r")
    output = term.finish()
    assert term.error is None, output
    first = output.split("Use it anyway", 1)[0]
    assert "FAIL gateway answers" in first and "cannot reach the cluster" in first
    # "n" asked again; "y" kept it although it failed.
    assert output.count("Where should your messages travel?") == 1 and output.count("\nLedger\n") == 2
    assert saved(settings).ledger.http.url == gateway.url


def test_a_gateway_that_fails_then_this_machine_only(tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path)
    term = Terminal(settings, MemoryLedger(), body=choose_ledger_only).start()
    term.type("2\r" + "ftp://example.org\r" + "2\r" + "http://127.0.0.1:9\r" + "n\r" + "1\r")
    output = term.finish()
    assert term.error is None, output
    assert "error: 'ftp://example.org' is not an http(s) URL" in output
    assert "FAIL gateway answers" in output and "start the ResilientDB HTTP gateway" in output
    assert saved(settings).ledger.backend == "local"


def test_first_run_through_kv_service_tools(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    settings = fresh_settings(tmp_path)
    term = Terminal(settings, MemoryLedger(), body=choose_ledger_only).start()
    term.type("3\r" + str(cluster.tool) + "\r" + str(cluster.config) + "\r")
    output = term.finish()
    assert term.error is None, output
    assert "It works." in output
    chosen = saved(settings)
    assert chosen.ledger.backend == "resilientdb"
    assert chosen.ledger.resilientdb.tool == str(cluster.tool)
    assert chosen.ledger.resilientdb.client_config == str(cluster.config)
    assert [c.cmd for c in cluster.calls()][:2] == ["set", "get"]  # checked through the tool


def test_a_broken_kv_service_tools_setup_is_explained(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", down=True)
    settings = fresh_settings(tmp_path)
    term = Terminal(settings, MemoryLedger(), body=choose_ledger_only).start()
    term.type("3\r" + str(cluster.tool) + "\r" + str(cluster.config) + "\r" + "n\r" + "\r")
    output = term.finish()
    assert term.error is None, output
    assert "FAIL write" in output and "start the ResilientDB proxy on 127.0.0.1:10005 (node 5)" in output
    assert saved(settings).ledger.backend == "local"  # then Enter: the default


def test_no_ledger_question_when_a_config_or_ledger_flag_chose(tmp_path: Path, ledger: MemoryLedger) -> None:
    config = tmp_path / "given.toml"
    config.write_text("[chat]\npoll_interval = 0.5\n")
    settings = load_settings(home=str(tmp_path / "new"), config=str(config), environ={})
    assert not Menus(settings).first_run_ledger
    assert not Menus(fresh_settings(tmp_path), first_run_ledger=False).first_run_ledger
    term = Terminal(settings, ledger).start()
    term.type("erin\r" + STRONG + "\r" + STRONG + "\r" + CTRL_D)
    output = term.finish()
    assert "Where should your messages travel?" not in output
    assert config.read_text() == "[chat]\npoll_interval = 0.5\n"


# --- main menu -------------------------------------------------------------------------------------


def test_main_menu_lists_the_seed_items_and_the_card(
    run: Callable[[str], str], alice_identity: crypto.Identity
) -> None:
    output = run(login("3\r4\r"))
    assert "1. Start chatting\n  2. Add or verify a friend\n  3. Show my contact card\n  4. Quit" in output
    card_line = next(line for line in output.splitlines() if line.startswith(crypto.CARD_PREFIX))
    shown = crypto.parse_contact(card_line)  # RSA-PSS is randomized: each unlock signs it anew
    assert (shown.name, shown.statics, shown.issued) == ("alice", alice_identity.statics.public, alice_identity.issued)
    assert crypto.fingerprint(shown.public_key) == alice_identity.fingerprint


def test_unknown_main_menu_choice_is_an_error(run: Callable[[str], str]) -> None:
    output = run(login("9\rchat\r\r4\r"))
    assert "error: no such choice '9': enter a number from 1 to 5" in output
    assert "error: no such choice 'chat'" in output


def test_ctrl_c_at_main_menu_leaves_and_ctrl_d_quits(run: Callable[[str], str]) -> None:
    assert run(login(CTRL_C)).rstrip().endswith("Bye.")
    assert run(login(CTRL_D)).rstrip().endswith("Bye.")


# --- add friend --------------------------------------------------------------------------------------


def friend_keys(settings: Settings) -> dict[str, str]:
    return {f.nickname: f.fingerprint for f in open_friend_store(settings).all_friends()}


def bob_fpr(bob: Person) -> str:
    return crypto.fingerprint_bytes(bob.identity.public_key).hex()


def safety_block(own: crypto.Identity, key: RSA.RsaKey) -> str:
    """The safety number's lines as the menus print them."""
    return "\n".join(f"    {line}" for line in safety.safety_lines(safety.safety_number(own.public_key, key)))


def test_add_friend_by_pasting_a_card(
    run: Callable[[str], str], settings: Settings, bob: Person, alice_identity: crypto.Identity
) -> None:
    output = run(login("2\rbobby\r" + bob.card + "\r" + "y\r" + CTRL_D))
    assert "Name on the card: bob" in output
    assert f"Fingerprint: {crypto.fingerprint(bob.identity.public_key)}" in output
    # The safety number, and why it, not the card's checksum, is the check that counts.
    assert safety.CHECKSUM_NOTE in output
    assert "Safety number with bobby (the same digits appear on their screen):\n" in output
    assert safety_block(alice_identity, bob.identity.public_key) in output
    assert "Added bobby." in output
    assert "bobby is not verified yet: once you have compared the safety number with them, mark them verified" in output
    assert friend_keys(settings) == {"bobby": bob_fpr(bob)}
    assert not open_friend_store(settings).get_friend("bobby").verified


def card_naming(person: Person, location: str) -> str:
    """``person``'s card, signed by them, naming the ledger ``location``."""
    identity = person.identity
    return crypto.make_card(identity.name, identity.private_key, identity.statics.public, location, identity.issued)


def test_a_card_naming_another_ledger_warns_and_shows_the_command_that_switches(
    run: Callable[[str], str], settings: Settings, bob: Person
) -> None:
    output = run(login("2\rbob\r" + card_naming(bob, "http://192.0.2.7:18000") + "\r" + "y\r" + CTRL_D))
    assert "Warning: bob's card says their messages travel through the ResilientDB gateway at" \
           " http://192.0.2.7:18000; yours travel through this machine only" in unwrapped(output)
    assert "To use theirs: reschat ledger http http://192.0.2.7:18000" in unwrapped(output)
    assert "Added bob." in output  # a warning, not a refusal: they may be about to switch


def test_a_card_naming_the_same_kind_of_ledger_gives_no_warning(
    run: Callable[[str], str], settings: Settings, bob: Person
) -> None:
    output = run(login("2\rbob\r" + card_naming(bob, "local") + "\r" + "y\r" + CTRL_D))
    assert "Added bob." in output
    assert "Warning" not in output


def folded(card: str, width: int = 80) -> list[str]:
    """A card as a terminal that wraps long lines pastes it."""
    return [card[i : i + width] for i in range(0, len(card), width)]


def test_add_friend_by_typing_a_folded_card_line_by_line(
    run: Callable[[str], str], settings: Settings, bob: Person
) -> None:
    # A terminal without bracketed paste sends a wrapped card as lines, each ended by Enter; a line
    # may even end inside the checksum.
    lines = folded(bob.card, width=len(bob.card) - 4)
    assert len(lines) == 2 and len(lines[1]) == 4
    output = run(login("2\rbob\r" + "\r".join(lines) + "\r" + "y\r" + "3\r" + CTRL_D))
    assert f"Fingerprint: {crypto.fingerprint(bob.identity.public_key)}" in output
    assert "Added bob." in output
    assert friend_keys(settings) == {"bob": bob_fpr(bob)}
    assert "no such choice" not in output  # no piece of the card leaked into a later menu as a choice


def test_a_pem_key_is_refused_whole_with_ask_for_a_new_card(
    run: Callable[[str], str], settings: Settings, bob: Person
) -> None:
    pem = crypto.public_key_to_string(bob.identity.public_key)
    assert pem.count("\n") > 5
    output = unwrapped(run(login("2\rbob\r" + pem.replace("\n", "\r") + "\r" + "\r" + "3\r" + CTRL_D)))
    assert "ask for a new card" in output
    assert "Fingerprint:" not in output.split("Your fingerprint", 2)[1]
    assert friend_keys(settings) == {}
    assert "no such choice" not in output  # no PEM line leaked into a later menu as a choice
    assert menus.INCOMPLETE_CARD not in output  # a PEM arriving line by line is not a cut card


def test_add_friend_by_bracketed_paste(run: Callable[[str], str], settings: Settings, bob: Person) -> None:
    pasted = "\n".join(folded(bob.card)) + "\n"
    output = run(login("2\rbob\r" + PASTE_START + pasted + PASTE_END + "\r" + "y\r" + CTRL_D))
    assert "Added bob." in output
    assert friend_keys(settings) == {"bob": bob_fpr(bob)}


def test_add_friend_can_be_declined(run: Callable[[str], str], settings: Settings, bob: Person) -> None:
    output = run(login("2\rbob\r" + PASTE_START + bob.card + PASTE_END + "\r" + "maybe\r" + "n\r" + CTRL_D))
    assert "Please answer y or n." in output
    assert "Not added." in output
    assert friend_keys(settings) == {}


def carol_card() -> str:
    return make_identity("carol", 2).card


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("garbage", "error: not a contact card (reschat-card:2:...)"),
        ("old-card", "error: that card has no static keys (an old card or a bare key): ask for a new card"),
        ("pem", "error: that card has no static keys (an old card or a bare key): ask for a new card"),
        ("own-card", "error: that is your own key: add your friend's key instead"),
        ("bob-card", "error: that key is already your friend 'bob'"),
        ("cut-card", "error: the contact card's checksum does not match: it was cut or altered"),
    ],
)
def test_a_card_error_keeps_the_nickname_and_asks_for_the_card_again(
    run: Callable[[str], str], settings: Settings, befriended: Person, alice_identity: crypto.Identity,
    key: str, error: str,
) -> None:
    cards = {
        "bob-card": befriended.card,
        "own-card": alice_identity.card,
        "cut-card": befriended.card[:100] + befriended.card[104:],
        "garbage": "hello there",
        "old-card": "reschat-card:1:Ym9i:MIIBojAN:12345678",
        "pem": "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----",
    }
    # The nickname is typed once; after the error only the card is pasted again.
    keys = "2\r" + "carol\r" + PASTE_START + cards[key] + PASTE_END + "\r" + PASTE_START + carol_card() + PASTE_END
    output = unwrapped(run(login(keys + "\r" + "y\r" + CTRL_D)))
    assert error in output
    after_error = output.split(error, 1)[1]
    assert after_error.startswith("\nPaste the card for carol again, or press Enter to cancel.\n")
    assert "Added carol." in after_error
    assert friend_keys(settings) == {
        "bob": bob_fpr(befriended), "carol": crypto.fingerprint_bytes(rsa_key(2)).hex()
    }
    assert "Traceback" not in output


def test_a_card_error_then_enter_cancels(run: Callable[[str], str], settings: Settings) -> None:
    output = run(login("2\r" + "carol\r" + "hello there\r" + "\r" + "3\r" + CTRL_D))
    assert "error: not a contact card" in output
    assert "Nothing pasted; no friend added." in output
    assert crypto.CARD_PREFIX in output.split("Nothing pasted", 1)[1]  # back at the main menu, which works
    assert friend_keys(settings) == {}


@pytest.mark.parametrize(
    ("nickname", "error"),
    [("1234", "error: the nickname must not be only digits"), ("x" * 33, "error: the nickname is longer than 32")],
)
def test_a_bad_nickname_is_asked_again(
    run: Callable[[str], str], settings: Settings, nickname: str, error: str
) -> None:
    output = run(login("2\r" + nickname + "\r" + "carol\r" + carol_card() + "\r" + "y\r" + CTRL_D))
    assert error in output
    assert "Added carol." in output.split(error, 1)[1]
    assert list(friend_keys(settings)) == ["carol"]


def test_an_empty_nickname_adds_nobody(run: Callable[[str], str], settings: Settings) -> None:
    output = run(login("2\r" + "\r" + "3\r" + CTRL_D))
    assert "No nickname: no friend added." in output
    assert crypto.CARD_PREFIX in output.split("No nickname", 1)[1]
    assert friend_keys(settings) == {}


def test_a_card_cut_short_says_so_and_takes_the_rest(
    terminal: Callable[[], Terminal], settings: Settings, bob: Person
) -> None:
    term = terminal()
    term.type(login("2\r" + "bob\r" + bob.card[:60] + "\r"))
    term.wait_for(menus.INCOMPLETE_CARD)  # it used to wait silently here
    assert menus.INCOMPLETE_CARD == "incomplete: paste the rest, or press Enter to cancel"
    term.type(bob.card[60:] + "\r")
    term.wait_for("Name on the card: bob")
    term.type("y\r" + CTRL_D)
    output = term.finish()
    assert "Added bob." in output
    assert friend_keys(settings) == {"bob": bob_fpr(bob)}


def test_a_card_cut_short_then_enter_cancels(run: Callable[[str], str], settings: Settings, bob: Person) -> None:
    output = run(login("2\r" + "bob\r" + bob.card[:60] + "\r" + "\r" + "3\r" + CTRL_D))
    assert menus.INCOMPLETE_CARD in output
    assert "Cancelled: the card was cut short; nothing changed. Copy the whole line and try again." in output
    assert crypto.CARD_PREFIX in output.split("Cancelled", 1)[1]  # back at the main menu
    assert friend_keys(settings) == {}


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
        ("reschat-card:2:AAECAwQF", False),
        ("reschat-card:2:AAEC\nAwQF", False),
        ("reschat-card:2:AAECAwQF:", False),
        ("reschat-card:2:AAECAwQF:1234", False),
        ("reschat-card:2:AAECAwQF:1234\n5678", True),
        ("reschat-card:2:AAECAwQF:12345678", True),
        ("reschat-card:2:AAEC\n", True),  # an empty line always ends the input
        # Read whole, then refused with "ask for a new card":
        ("-----BEGIN PUBLIC KEY-----", False),
        ("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", True),
        ("reschat-card:1:Ym9i:MIIBojAN", False),
        ("reschat-card:1:Ym9i:MIIBojAN:12345678", True),
        ("resch", False),  # the start of a card
        ("reschat-card:", False),
        ("reschat-card:1:Ym9i:MIIB\n", True),  # an empty line always ends the input
        ("something else", True),
    ],
)
def test_when_enter_ends_a_pasted_key(text: str, complete: bool) -> None:
    assert key_input_complete(text) is complete


# --- safety numbers, verification and key changes ----------------------------------------------------


def test_a_friends_nickname_shows_the_safety_number_and_marks_them_verified(
    run: Callable[[str], str], settings: Settings, befriended: Person, alice_identity: crypto.Identity
) -> None:
    output = run(login("2\r" + "BOB\r" + "1\r" + "1\r" + CTRL_D))
    assert "bob is already your friend (name on their card: bob)." in output
    assert safety_block(alice_identity, befriended.identity.public_key) in output
    assert "bob is not verified.\n" in output
    assert "  1. Mark bob verified (you compared the safety number: it is the same)" in output
    assert "bob is now verified." in output
    assert open_friend_store(settings).get_friend("bob").verified
    # The friend list shows it.
    assert "Friends\n  1. bob [verified]\n  2. Previous menu" in output


def test_a_verified_friend_can_be_unmarked(run: Callable[[str], str], settings: Settings, befriended: Person) -> None:
    open_friend_store(settings).update("bob", verified=True)
    output = run(login("2\r" + "bob\r" + "1\r" + CTRL_D))
    assert "bob is verified.\n" in output and "  1. Mark bob not verified" in output
    assert "bob is now not verified." in output
    assert not open_friend_store(settings).get_friend("bob").verified


def test_the_chat_header_says_whether_the_friend_is_verified(
    run: Callable[[str], str], settings: Settings, befriended: Person, alice_identity: crypto.Identity
) -> None:
    digits = safety.safety_number(alice_identity.public_key, befriended.identity.public_key)
    output = run(login("1\r1\r" + CTRL_D))
    # Wrapped to the terminal like every line of the chat screen (80 columns here), whole once unwrapped.
    header = output.split("Chatting with bob (not verified)\n", 1)[1].split("No messages yet.", 1)[0]
    assert all(display_width(row) < DEFAULT_WIDTH for row in header.splitlines())
    assert f"Safety number: {safety.grouped(digits)}\n" in unwrapped(header)
    open_friend_store(settings).update("bob", verified=True)
    output = run(login("1\r1\r" + CTRL_D))
    assert "Chatting with bob (verified)\n" in output and "Safety number" not in output


def new_bob_card() -> str:
    """A card that says "bob" but carries another key."""
    return make_identity("bob", 2).card


def test_a_new_key_for_a_friend_is_a_loud_warning_and_kept_by_default(
    run: Callable[[str], str], settings: Settings, befriended: Person, alice_identity: crypto.Identity
) -> None:
    open_friend_store(settings).update("bob", verified=True)
    output = run(login("2\r" + "bob\r" + "2\r" + new_bob_card() + "\r" + "1\r" + CTRL_D))
    assert "!! WARNING: this card's key is NOT the key you have for bob." in output
    assert f"!!   old key (the one you have): {crypto.fingerprint(befriended.identity.public_key)}" in output
    assert f"!!   new key (on this card):     {crypto.fingerprint(rsa_key(2))}" in output
    assert safety_block(alice_identity, rsa_key(2)) in output  # the NEW safety number, to compare
    assert "  1. Keep the old key (change nothing)\n  2. Replace bob's key with this one" in output
    assert "Kept the old key of bob; nothing changed." in output
    bob_now = open_friend_store(settings).get_friend("bob")
    assert bob_now.fingerprint == bob_fpr(befriended) and bob_now.verified


def test_ctrl_c_at_a_key_change_keeps_the_old_key(
    run: Callable[[str], str], settings: Settings, befriended: Person
) -> None:
    output = run(login("2\r" + "bob\r" + "2\r" + new_bob_card() + "\r" + CTRL_C + CTRL_D))
    assert "Kept the old key of bob; nothing changed." in output
    assert friend_keys(settings) == {"bob": bob_fpr(befriended)}


def test_replacing_a_key_clears_verified_and_restarts_the_conversation(
    run: Callable[[str], str], settings: Settings, befriended: Person, ledger: MemoryLedger, tmp_path: Path,
    alice_identity: crypto.Identity,
) -> None:
    """Protocol 2 derives a conversation from both cards: a new key is a new conversation. The old one's
    counts start afresh, the new key's messages show, and the old key's do not."""
    befriended.chat.send_message("from the old key", "alice")
    store = open_friend_store(settings)
    store.update("bob", verified=True, unread=7, seen="1:7", read="1:5", updated="2024-05-01T12:00:00.000000Z")
    new_bob = make_person("bob", 2, tmp_path / "new-bob", ledger)
    new_bob.friends.add_friend("alice", crypto.parse_contact(alice_identity.card))
    new_bob.chat.send_message("from the new key", "alice")
    output = run(login("2\r" + "bob\r" + "2\r" + new_bob_card() + "\r" + "2\r" + "1\r" + "1\r" + CTRL_D))
    assert "Replaced the key of bob. bob is not verified." in output
    bob_now = open_friend_store(settings).get_friend("bob")
    assert bob_now.fingerprint == crypto.fingerprint_bytes(rsa_key(2)).hex()
    assert bob_now.statics == statics_key(2).public.to_bytes().hex()
    assert not bob_now.verified
    chat = output.split("Chatting with bob", 1)[1]
    assert "bob: from the new key" in chat and "from the old key" not in chat
    assert "!!" not in chat  # nothing of the old conversation is taken for an attack on the new one


def test_a_newer_card_with_the_same_key_updates_the_static_keys(
    run: Callable[[str], str], settings: Settings, befriended: Person
) -> None:
    """A card that the friend's own identity key signed with other static keys, issued later: no key
    change, no warning; the card is updated and the friend stays verified (the same safety number)."""
    open_friend_store(settings).update("bob", verified=True)
    renewed = crypto.make_card("bob", befriended.identity.private_key, statics_key(5).public,
                               issued=befriended.identity.issued + 1)
    output = run(login("2\r" + "bob\r" + "2\r" + renewed + "\r" + CTRL_D))
    assert "This card has the key you already have for bob, with new static keys (signed by that key): the card is" \
           " updated." in output
    assert "WARNING" not in output
    bob_now = open_friend_store(settings).get_friend("bob")
    assert (bob_now.statics, bob_now.verified) == (statics_key(5).public.to_bytes().hex(), True)


def test_the_same_card_again_changes_nothing(run: Callable[[str], str], settings: Settings, befriended: Person) -> None:
    output = run(login("2\r" + "bob\r" + "2\r" + befriended.card + "\r" + CTRL_D))
    assert "This card has the key you already have for bob: nothing changed." in output
    assert "WARNING" not in output
    assert friend_keys(settings) == {"bob": bob_fpr(befriended)}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("1", {"bob"}), ("2", {"bob"}), ("3", {"bob", "bobby"})],
)
def test_a_card_with_a_friends_name_and_another_key_is_a_loud_warning(
    run: Callable[[str], str], settings: Settings, befriended: Person, choice: str, expected: set[str]
) -> None:
    output = run(login("2\r" + "bobby\r" + new_bob_card() + "\r" + choice + "\r" + CTRL_D))
    assert "!! WARNING: your friend bob goes by the name 'bob' too, with ANOTHER key." in output
    assert "  3. Add bobby as a new friend (someone else with the same name)" in output
    keys = friend_keys(settings)
    assert set(keys) == expected
    new_fpr = crypto.fingerprint_bytes(rsa_key(2)).hex()
    if choice == "1":
        assert keys["bob"] == bob_fpr(befriended)
    elif choice == "2":
        assert keys["bob"] == new_fpr
    else:
        assert keys == {"bob": bob_fpr(befriended), "bobby": new_fpr}


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
    output = run(login("1\r1\r" + "1\r" + "   \r" + "9\r" + "8\r" + "2\r" + CTRL_D))
    assert "error: the message is empty" in output
    assert "error: no such choice '9': enter 1 to 8, or ' 9' to send it" in output
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
    run: Callable[[str], str], befriended: Person, ledger: MemoryLedger
) -> None:
    """A page is verified as a whole: a record altered on the ledger hides its page (never a word of
    it is shown) and is reported, while the genuine page after it is shown."""
    befriended.chat.send_message("genuine one", "alice")
    for i in range(19):
        befriended.chat.send_message(f"filler {i}", "alice")
    befriended.chat.send_message("genuine two", "alice")  # the first record of page 2
    key = befriended.chat.lane_address("alice", mine=True, number=1)
    original = SealedPage.from_string(ledger.get(key) or "")
    tampered = bytearray(original.records[0])
    tampered[-1] ^= 1
    forged = SealedPage(original.slots, original.header, [bytes(tampered), *original.records[1:]])
    ledger.set(key, forged.to_string())
    output = run(login("1\r1\r" + CTRL_D))
    assert "!! forged record hidden in bob's messages" in output
    assert "genuine one" not in output and "filler" not in output
    assert "bob: genuine two" in output


def test_a_restarted_lane_is_one_plain_line_and_its_messages_show(
    terminal: Callable[[], Terminal], befriended: Person, ledger: MemoryLedger, tmp_path: Path,
    alice_identity: crypto.Identity,
) -> None:
    """bob loses his local state (a new machine): his lane restarts in a new epoch, whose messages
    are numbered from 1 again; alice sees one notice and every message, none taken for one shown."""
    befriended.chat.send_message("before", "alice")
    term = terminal()
    term.type(login("1\r1\r"))
    term.wait_for("bob: before")
    again = make_person("bob", 1, tmp_path / "bob-new-machine", ledger)  # same keys, no state
    again.friends.add_friend("alice", crypto.parse_contact(alice_identity.card))
    again.chat.send_message("after", "alice")
    term.wait_for("bob: after")
    term.type(CTRL_D)
    output = term.finish()
    assert "-- bob restarted their side of the conversation" in output
    assert "!!" not in output  # an honest restart is no alarm
    assert output.count("bob: before") == 1 and output.count("bob: after") == 1


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
    output = run(login("1\r1\r" + "8\r" + "2\r" + CTRL_D))
    assert (
        "Chat with bob\n  1. Send message\n  2. Update\n  3. Load older messages\n"
        "  4. Send file\n  5. Save a file\n  6. View a whole message\n  7. Disappearing messages\n"
        "  8. Previous menu\n"
    ) in output
    assert output.count("Friends\n") == 2  # 8 went back to the friends


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
    saved = befriended.chat.save_file(received[0], tmp_path / "bob-downloads")
    assert sha256(saved.read_bytes()) == sha256(data)


def test_save_a_file_from_the_conversation(run: Callable[[str], str], settings: Settings, befriended: Person,
                                           tmp_path: Path) -> None:
    first, second = os.urandom(100), os.urandom(5000)
    (tmp_path / "first.txt").write_bytes(first)
    (tmp_path / "re\u202efdp.exe").write_bytes(second)  # a right-to-left override hides the real extension
    befriended.chat.send_file("alice", tmp_path / "first.txt")
    befriended.chat.send_message("two files for you", "alice")
    befriended.chat.send_file("alice", tmp_path / "re\u202efdp.exe")
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
    sent = befriended.chat.send_file("alice", tmp_path / "plans.txt")
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
    person.friends.add_friend("alice", crypto.parse_contact(alice_identity.card))
    open_friend_store(settings).add_friend("carol", crypto.parse_contact(person.card), "carol")
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
    term.type("8\r")
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
    term.type("8\r")
    term.wait_for("1. bob\n  2. carol\n  3. Previous menu")  # read: no count left
    befriended.chat.send_message("b3", "alice")
    carol.chat.send_message("c1", "alice")
    term.type("\r")  # an empty choice shows the list again, counted afresh
    term.wait_for("1. bob (1 unread)\n  2. carol (1 unread)\n  3. Previous menu")
    term.type("carol\r")
    term.wait_for("carol: c1")
    term.type("8\r")
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
    assert "error: no such choice '42': enter 1 to 8, or ' 42' to send it" in output
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
    saved = befriended.chat.save_file(received[1], tmp_path / "bob-downloads")
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


# --- disappearing messages ---------------------------------------------------------------------------------


def test_disappearing_messages_shows_the_timer_sets_it_and_both_sides_see_the_line(
    terminal: Callable[..., Terminal], befriended: Person
) -> None:
    term = terminal()
    term.type(login("1\r1\r"))
    term.wait_for(CHAT_HINT)
    term.type("7\r")
    term.wait_for("Disappearing messages: off.")
    term.type("3s\r")  # a timer out of range is an error; nothing is sent
    term.wait_for("error: disappearing messages take a timer from 5 minutes to 4 weeks")
    term.type("7\r" + "soon\r")
    term.wait_for("error: not a duration: 'soon' (say 5m, 1h, 2d, 4w or off)")
    term.type("7\r" + "\r")
    term.wait_for("Nothing changed.")
    assert befriended.chat.disappearing("alice") == 0
    assert [m.type for m in befriended.chat.get_update("alice").messages] == []
    term.type("7\r" + "1h\r")
    term.wait_for("-- you set disappearing messages to 1 hour")
    # bob's side: the same setting, as a line of the conversation, and his timer follows it.
    seen = befriended.chat.get_update("alice").messages
    assert [(m.type, m.sender) for m in seen] == [("setting", "alice")]
    assert format_message(seen[0], width=DEFAULT_WIDTH)[0].endswith("-- alice set disappearing messages to 1 hour")
    assert befriended.chat.disappearing("alice") == 3600
    term.type("7\r")
    term.wait_for("Disappearing messages: 1 hour.")
    term.type("1h\r")
    term.wait_for("Disappearing messages are already 1 hour: nothing changed.")
    # bob turns it off: alice's open chat shows his line by itself, and her timer follows.
    befriended.chat.set_disappearing("alice", 0)
    term.wait_for("-- bob turned disappearing messages off")
    term.type("7\r")
    term.wait_for("Disappearing messages: off.", count=2)
    term.type("\r")
    term.wait_for("Nothing changed.", count=2)
    term.type(CTRL_D)
    output = term.finish()
    assert term.error is None and "Traceback" not in output
    assert output.count("-- you set disappearing messages to") == 1  # the refused and the unchanged sent nothing
    assert "✓ delivered: set disappearing messages to 1 hour" in output
    assert [m.type for m in befriended.chat.get_update("alice").messages] == ["setting", "setting"]


# --- safe wrapping in the chat (issue 11.6) -----------------------------------------------------------------


def test_padding_cannot_fake_a_line_in_the_chat(run: Callable[[str], str], befriended: Person) -> None:
    spoof = "✓ me: yes, I agree to wire you 5000 EUR today"
    befriended.chat.send_message("ok" + " " * 56 + spoof, "alice")  # blank padding
    befriended.chat.send_message("ok" + "." * 56 + spoof, "alice")  # printable padding
    befriended.chat.send_message("ok\n" + spoof, "alice")  # a new line
    output = run(login("1\r1\r" + CTRL_D))
    rows = output.split("Chatting with bob (not verified)\n", 1)[1].splitlines()
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
    open_friend_store(settings).add_friend("bobcat", crypto.parse_contact(make_identity("bobcat", 3).card))
    output = run(login("1\r" + "ca\r" + "8\r" + "bo\r" + "BOBC\r" + "8\r" + "bob\r" + "8\r" + "z\r" + CTRL_D))
    assert "Chatting with carol" in output and "Chatting with bobcat" in output and "Chatting with bob (" in output
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


# --- delivery you can trust (issue 12) --------------------------------------------------------------------


def test_quit_and_restart_with_unsent_messages_for_two_friends_delivers_both_without_opening_either_chat(
    settings: Settings, ledger: MemoryLedger, befriended: Person, carol: Person
) -> None:
    faulty = FaultyLedger(ledger)
    faulty.drop_sets = True  # every write is lost: nothing alice sends is confirmed
    first = Terminal(settings, faulty).start()
    first.type(login("1\r1\r" + "hi bob\r" + "8\r" + "2\r" + "hi carol\r" + "8\r"))
    first.wait_for("me: hi carol")
    first.type(CTRL_D)
    output = first.finish()
    assert "2 messages are not confirmed by the ledger yet (1 to bob, 1 to carol): they go out at the next start." \
        in output
    assert texts(befriended) == [] and [m.text for m in carol.chat.get_update("alice").messages] == []

    # The next start, on a ledger that works, re-sending only after an hour: alice logs in and opens no chat.
    patient = replace(settings, chat=replace(settings.chat, resend_after=3600.0))
    again = Terminal(patient, ledger).start()
    again.type(login())
    again.wait_for("Main menu")
    again.wait_until(lambda: texts(befriended) == ["hi bob"], "bob receives 'hi bob'")
    again.wait_until(lambda: [m.text for m in carol.chat.get_update("alice").messages] == ["hi carol"],
                     "carol receives 'hi carol'")
    again.wait_until(lambda: not again.menus.chat.pending_counts(), "both confirmed by a read")
    again.type(CTRL_D)
    output = again.finish()
    assert "not confirmed" not in output and "Chat with" not in output


def test_loading_older_messages_names_pages_the_ledger_lost_and_never_says_there_are_none(
    run: Callable[[str], str], ledger: MemoryLedger, befriended: Person
) -> None:
    for i in range(50):
        befriended.chat.send_message(f"m{i}", "alice")
    del ledger._data[befriended.chat.lane_address("alice", mine=True, number=1)]  # lost, and bob is away
    output = unwrapped(run(login("1\r1\r" + "3\r" + "3\r" + CTRL_D)))
    named = "page 1 is missing or unreadable: its messages (#1-#20) are not shown"
    assert named in output.split("--- older messages ---", 1)[1]
    nothing = "Nothing older can be shown: missing from the ledger, and no copy here to restore them"
    assert f"{nothing}: bob's lane: {named}" in output
    assert "No older messages" not in output and "bob: m19" not in output and "bob: m20" in output


def test_a_local_ledger_file_deleted_while_chatting_is_reported_at_once_and_made_again_when_confirmed(
    tmp_path: Path, settings: Settings, alice_identity: crypto.Identity
) -> None:
    path = tmp_path / "ledger.sqlite"
    bob = make_person("bob", 1, tmp_path / "bob", LocalLedger(path))
    bob.friends.add_friend("alice", crypto.parse_contact(alice_identity.card))
    open_friend_store(settings).add_friend("bob", crypto.parse_contact(bob.card), "bob")
    bob.chat.send_message("hello alice", "alice")
    local = replace(settings, ledger=replace(settings.ledger, backend="local", path=str(path)))
    term = Terminal(local, None).start()
    term.type(login("1\r1\r" + "hi bob\r"))
    term.wait_for("me: hi bob")
    alice_page = bob.chat.lane_address("alice", mine=False, number=1)
    term.wait_until(lambda: LocalLedger(path).get(alice_page) is not None, "alice's page on the ledger")
    path.unlink()
    term.wait_for("was deleted")  # said by the chat's poll at once, nothing typed
    assert not path.exists()
    term.type("\r" + "y\r")  # Enter, and the question: use the file again? (prompts go to the terminal)
    term.wait_for("Using ")
    # alice's updates put back her page (and bob's, which hers follows not: his newest is his own).
    term.wait_until(lambda: path.exists() and LocalLedger(path).get(alice_page) is not None, "alice's page back")
    term.type("8\r" + CTRL_D)
    term.finish()
    assert term.error is None and term.status == 0


def test_what_waits_goes_out_in_the_background_while_a_prompt_with_no_poll_of_its_own_waits(
    settings: Settings, ledger: MemoryLedger, befriended: Person
) -> None:
    faulty = FaultyLedger(ledger)
    faulty.drop_sets = True

    def session(menus: Menus) -> int:
        """Log in, then wait at the nickname prompt of 'Add a friend' (no unread count, no chat poll)."""
        menus.identity = menus.start()
        menus._chat = menus._open_chat(menus.identity)
        with menus._delivery():
            menus.add_friend()
        return 0

    identity = crypto.load_identity(settings.home, PASSWORD, scrypt_n=TEST_SCRYPT_N)
    first = ChatService(identity, open_friend_store(settings), faulty, ProfilePaths(settings.home).lanes)
    assert first.send_message("sent before a quit", "bob").error is None  # and lost on the way
    faulty.drop_sets = False
    patient = replace(settings, chat=replace(settings.chat, resend_after=3600.0))
    term = Terminal(patient, ledger, body=session).start()
    term.type(login())
    term.wait_until(lambda: texts(befriended) == ["sent before a quit"], "bob receives it")
    term.type("\r")  # an empty nickname adds nobody
    term.finish()
    assert term.error is None and term.status == 0


def test_a_message_unconfirmed_for_long_is_not_delivered_yet_in_the_chat_until_it_is(
    settings: Settings, ledger: MemoryLedger, befriended: Person
) -> None:
    faulty = FaultyLedger(ledger)
    faulty.drop_sets = True
    hasty = replace(settings, chat=replace(settings.chat, resend_after=0.05))  # "not delivered yet" after 0.3 s
    term = Terminal(hasty, faulty).start()
    term.type(login("1\r1\r" + "hello\r"))
    term.wait_for("me: hello")
    term.wait_for("not delivered yet: hello")  # the chat's poll says so, once
    faulty.drop_sets = False
    term.wait_for(f"{DELIVERED_MARK} delivered: hello")
    term.type("8\r" + CTRL_D)
    output = term.finish()
    assert term.error is None and output.count("not delivered yet: hello") == 1
