"""The interactive menus: start-up (register or log in), main, second (friends) and third (chat).

This is the only module that prompts, and every prompt goes through prompt_toolkit, so tests drive
the menus with a pipe input and the real terminal gets hidden passwords, completion and pasting.
Keys: Ctrl-C goes back one menu (at the main menu it leaves), Ctrl-D quits from anywhere.
Errors a user can act on are printed as one line and the menu goes on.

In a chat, a typed line is sent unless it is a menu number (a leading space sends a number); Esc then
Enter inserts a new line. Background threads (the chat's poll, the unread counts under the main menu
and the friend list) share the one ChatService with the menu thread, only under ``Menus._chat_lock``.
Everything shown from the ledger goes through reschat.render: neutralized and wrapped to the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from Crypto.PublicKey import RSA
from prompt_toolkit import prompt
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.completion import Completer, PathCompleter, WordCompleter
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.patch_stdout import patch_stdout

from reschat import crypto, groupmenus, retention, safety
from reschat.app import ProfilePaths
from reschat.chat import MAX_TEXT_BYTES, ME, ChatMessage, ChatService, ConversationView
from reschat.config import (
    Settings,
    card_location,
    config_target,
    describe_ledger,
    http_ledger,
    ledger_mismatch,
    load_file,
    local_ledger,
    preview_config,
    tool_ledger,
    update_config,
)
from reschat.conversations import open_conversations
from reschat.doctor import format_report, run_doctor
from reschat.errors import (
    DuplicateFriendError,
    LedgerMissingError,
    ReschatError,
    UnknownFriendError,
    WeakPasswordError,
    WrongPasswordError,
)
from reschat.files import FILE_TYPE, message_label
from reschat.friends import Friend, validate_nickname
from reschat.ledger import Ledger, LocalLedger
from reschat.passwords import check_new_password
from reschat.render import (
    DEFAULT_WIDTH,
    DELIVERED_MARK,
    PENDING_MARK,
    format_conversation,
    format_message,
    local_time,
    message_summary,
    neutralize,
    wrap_line,
)

log = logging.getLogger(__name__)

LOGIN_ATTEMPTS = 3
#: "Create a group" comes after Quit so that the seed's four items keep their numbers.
MAIN_MENU = ("Start chatting", "Add or verify a friend", "Show my contact card", "Quit", "Create a group")
LEDGER_MENU = (
    "This machine only (the default): friends who use this computer",
    "A ResilientDB HTTP gateway: a URL such as http://192.0.2.7:18000",
    "A ResilientDB cluster through kv_service_tools: the tool and its client config",
)
INCOMPLETE_CARD = "incomplete: paste the rest, or press Enter to cancel"
CHAT_MENU = (
    "Send message", "Update", "Load older messages", "Send file", "Save a file", "View a whole message",
    "Disappearing messages", "Previous menu",
)
#: The chat prompt: what is typed there is sent, unless it is a menu number.
CHAT_PROMPT = f"Message or 1-{len(CHAT_MENU)}: "
#: Shown under the menu and after each message instead of the whole menu.
CHAT_HINT = f"(typing sends; 1-{len(CHAT_MENU)}: menu item; ' 42' sends 42; Esc Enter: newline; Enter: menu)"
CHAT_PLACEHOLDER = "a message, or a menu number (a space first sends a number; Esc Enter: new line)"
VIEW_ITEM = CHAT_MENU.index("View a whole message") + 1
DISAPPEAR_ITEM = CHAT_MENU.index("Disappearing messages") + 1
#: In others' long messages, what the cut marker says to read the rest.
CHAT_MORE = f"{VIEW_ITEM} shows it whole"
#: Messages offered by "View a whole message" (the newest first); older ones by number all the same.
VIEW_LIST = 9
#: The chat's background poll checks the other friends' unread counts on every this-many-th tick:
#: one more round of reads, which the open conversation does not need every time.
NOTICE_EVERY_TICKS = 3
#: Seconds between redraws of a bottom toolbar (it only reads what the background poll found).
TOOLBAR_REFRESH_S = 0.5
#: A conversation is active for this long after a message was sent or received in it.
ACTIVE_WINDOW_S = 60.0
#: The shortest gap between two poll rounds of an active chat, per backend: a ResilientDB read round
#: costs about 190 ms, and polls must leave the cluster room; the local ledger costs a millisecond.
MIN_POLL_GAP_S = {"local": 0.1, "resilientdb": 0.2, "resilientdb-http": 0.2}
#: Pagers tried, in order, when $PAGER is not set: none passes escape sequences through (no -R).
DEFAULT_PAGERS = (("less", "-F", "-X", "-K"), ("more",))
#: The name a draft over the size limit is sent under, when the user chooses to send it as a file.
DRAFT_FILE_NAME = "message.txt"


class QuitRequested(EOFError):
    """Ctrl-D: leave the program from whatever menu is open (an end of input, as the user means it)."""


# --- prompting -------------------------------------------------------------------------------------


def ask(
    message: str, *, password: bool = False, completer: Completer | None = None,
    toolbar: Callable[[], str] | None = None,
) -> str:
    """One line from the user; Ctrl-C raises KeyboardInterrupt, Ctrl-D raises QuitRequested.

    ``toolbar`` is shown under the prompt and redrawn every ``TOOLBAR_REFRESH_S`` while it waits.
    """
    try:
        return prompt(
            message, is_password=password, completer=completer, complete_while_typing=False,
            bottom_toolbar=toolbar, refresh_interval=TOOLBAR_REFRESH_S if toolbar is not None else 0,
        )
    except EOFError as exc:
        raise QuitRequested from exc


def ask_chat_line(
    message: str, *, default: str = "", placeholder: str | None = None, clear_first: bool = False
) -> str:
    """A chat line: Enter sends it, Esc then Enter (Alt-Enter) inserts a new line, and a bracketed paste
    keeps its new lines. Ctrl-C raises KeyboardInterrupt, or with ``clear_first`` first clears a line
    that has text; Ctrl-D raises QuitRequested. ``default`` prefills the line (a draft kept for editing)."""
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    if clear_first:

        @bindings.add("c-c")
        def _clear_or_back(event: KeyPressEvent) -> None:
            if event.current_buffer.text:
                event.current_buffer.reset()
            else:
                event.app.exit(exception=KeyboardInterrupt, style="class:aborting")

    try:
        return prompt(
            message, default=default, key_bindings=bindings, placeholder=placeholder, prompt_continuation="  ",
        )
    except EOFError as exc:
        raise QuitRequested from exc


def ask_password(message: str = "Password: ") -> str:
    """A hidden password prompt."""
    return ask(message, password=True)


def ask_new_password(say: Callable[[str], None], *, user_inputs: Sequence[str] = ()) -> str:
    """A new password, typed twice, hidden; asks again until it is strong enough and both agree."""
    while True:
        first = ask("Password: ", password=True)
        if not first:
            say("error: the password must not be empty")
            continue
        try:
            check_new_password(first, user_inputs=user_inputs)
        except WeakPasswordError as exc:
            say(f"error: {exc}")
            continue
        if ask("Repeat password: ", password=True) == first:
            return first
        say("error: the passwords do not match; try again")


#: A card ends with a checksum of this many hex digits.
_CHECKSUM_CHARS = 8


def key_input_complete(text: str) -> bool:
    """Whether a pasted card is complete, so Enter should accept it rather than start a new line.

    A card is one line, but a terminal may have broken it, and terminals without bracketed paste
    deliver each piece with an Enter: those Enters must not end the input before the checksum. A
    pasted PEM key or an old card (refused, with "ask for a new card") is read to its end too, so
    that none of its lines reaches the next menu as a choice. An empty line always ends the input.
    """
    stripped = text.strip()
    if not stripped or text.endswith("\n"):
        return True
    if "-----BEGIN" in stripped:
        return "-----END" in stripped
    compact = re.sub(r"\s+", "", stripped)
    if compact.startswith(crypto.OLD_CARD_PREFIX):  # reschat-card:1:<name>:<key>:<checksum>
        parts = compact[len(crypto.OLD_CARD_PREFIX) :].split(":")
        return len(parts) >= 3 and len(parts[2]) >= _CHECKSUM_CHARS
    return not card_incomplete(compact)


def card_incomplete(text: str) -> bool:
    """Whether ``text`` is the start of a contact card that was cut short (its checksum is missing).

    The start of the prefix counts (``resch``), and so does a card (``reschat-card:2:<body>``) whose
    checksum of 8 hex digits is missing or short. An old card is not "cut": it is refused whole.
    """
    compact = re.sub(r"\s+", "", text)
    if not compact or compact.startswith(crypto.OLD_CARD_PREFIX):
        return False
    if crypto.CARD_PREFIX.startswith(compact):
        return True
    if not compact.startswith(crypto.CARD_PREFIX):
        return False
    parts = compact[len(crypto.CARD_PREFIX) :].split(":")
    return not (len(parts) >= 2 and len(parts[1]) >= _CHECKSUM_CHARS)


def ask_key(on_incomplete: Callable[[], None] | None = None) -> str:
    """A pasted contact card (possibly broken over lines by the terminal).

    Enter on a card that is cut short starts a new line for the rest and calls ``on_incomplete``
    (the menus say so); Enter on an empty line always ends the input.
    """
    bindings = KeyBindings()

    @bindings.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if key_input_complete(buffer.text):
            buffer.validate_and_handle()
            return
        buffer.newline(copy_margin=False)
        if on_incomplete is not None and card_incomplete(buffer.text):
            run_in_terminal(on_incomplete)

    try:
        return prompt("Card: ", multiline=True, key_bindings=bindings, prompt_continuation="")
    except EOFError as exc:
        raise QuitRequested from exc


def friend_completer(nicknames: Sequence[str]) -> Completer:
    """Completes nicknames (case-insensitively, spaces allowed), shown through the neutralizer."""
    return WordCompleter(
        list(nicknames), ignore_case=True, sentence=True, display_dict={n: neutralize(n) for n in nicknames}
    )


def _pick(choice: str, count: int) -> int | None:
    """The 1-based menu item a typed number names, or None."""
    choice = choice.strip()
    if choice.isdigit() and 1 <= int(choice) <= count:
        return int(choice)
    return None


@dataclass(frozen=True)
class ChatLine:
    """What a line typed at the chat prompt asks for: ``kind`` is "menu" (an empty line: show the
    menu), "choice" (``number``, a menu item), "no-choice" (a number that is no item) or "message"
    (``text``, to send)."""

    kind: str
    number: int = 0
    text: str = ""


def read_chat_line(line: str, count: int) -> ChatLine:
    """Interpret a line typed at the chat prompt of a menu with ``count`` items.

    A line that is only digits picks a menu item; every other line is a message. To send a text that
    is only a number, start it with a space: one leading space is removed from every message.
    """
    if not line.strip():
        return ChatLine("menu")
    bare = line.rstrip()
    if bare.isascii() and bare.isdigit():
        number = int(bare)
        return ChatLine("choice", number=number) if 1 <= number <= count else ChatLine("no-choice", text=bare)
    return ChatLine("message", text=line[1:] if line.startswith(" ") else line)


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip()).casefold()


def match_nickname(typed: str, nicknames: Sequence[str]) -> str:
    """The nickname ``typed`` picks in the menus: the one it equals (case-insensitively), else the only
    one it begins. UnknownFriendError when none does, or when several do (it names them).

    Only the menus accept a prefix; scripts name a friend exactly."""
    wanted = _fold(typed)
    for nick in nicknames:
        if _fold(nick) == wanted:
            return nick
    found = [nick for nick in nicknames if wanted and _fold(nick).startswith(wanted)]
    if len(found) == 1:
        return found[0]
    if found:
        named = ", ".join(repr(neutralize(nick, max_chars=32)) for nick in found[:5])
        raise UnknownFriendError(f"{typed.strip()!r} could be {named}: type more of the nickname")
    raise UnknownFriendError(f"no friend is called {typed.strip()!r}")


def dropped_path(typed: str) -> str:
    """A path as typed, pasted or dropped on the terminal: surrounding quotes ('/a b.jpg', "/a b.jpg"),
    backslash-escaped blanks (/a\\ b.jpg) and file:// URLs are undone, surrounding blanks dropped."""
    text = typed.strip()
    if text.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(text).path)
    try:
        words = shlex.split(text)
    except ValueError:  # an unmatched quote: not shell syntax, take it as it is
        return text
    return words[0] if len(words) == 1 else text


def poll_gap(*, backend: str, interval: float, since_activity: float | None) -> float:
    """Seconds between the end of one background poll round of an open chat and the start of the next.

    While the conversation is active (a message sent or received less than ``ACTIVE_WINDOW_S`` ago;
    ``since_activity`` is None when nothing was), rounds follow each other after the backend's
    ``MIN_POLL_GAP_S``; after a quiet minute they back off to the configured ``interval``, never
    closer than that minimum.
    """
    floor = MIN_POLL_GAP_S.get(backend, max(MIN_POLL_GAP_S.values()))
    if since_activity is not None and 0 <= since_activity < ACTIVE_WINDOW_S:
        return floor
    return max(floor, interval)


# --- the chat screen's memory -------------------------------------------------------------------------


@dataclass
class _Screen:
    """What the third menu has already shown, so updates print only what is new.

    The menu thread and the background poll both change it, always under the menus' chat lock."""

    nickname: str
    #: (sender, epoch, seq) of each message shown: a restarted lane numbers its messages from 1 again.
    shown: set[tuple[str, int, int]] = field(default_factory=set)
    delivered: set[tuple[int, int]] = field(default_factory=set)
    undelivered: set[tuple[int, int]] = field(default_factory=set)  # own messages said "not delivered yet"
    #: Pages reported missing (lane, detail): why loading older messages may find nothing more.
    gaps: set[tuple[str, str]] = field(default_factory=set)
    problems: set[tuple[str, str, str]] = field(default_factory=set)
    has_older: bool = False
    last_error: str | None = None
    #: The loaded window, in time order (what "View a whole message" offers).
    messages: list[ChatMessage] = field(default_factory=list)
    #: The file messages of the loaded window, in time order (what "Save a file" offers).
    files: list[ChatMessage] = field(default_factory=list)
    ticks: int = 0
    #: Unread counts of the other friends as last seen; None until the first count.
    others: dict[str, int] | None = None
    #: When (monotonic seconds) a message was last sent or received here; None: not in this session.
    last_activity: float | None = None
    #: Text to prefill the prompt with: a draft that was not sent.
    draft: str = ""


class Poller:
    """Runs ``tick`` in a daemon thread until stopped, waiting ``gap()`` seconds after each round.

    ``nudge`` cuts the current wait short and starts a new one (the gap may have shrunk: a message
    was just sent)."""

    def __init__(self, gap: Callable[[], float], tick: Callable[[], None]) -> None:
        self._gap = gap
        self._tick = tick
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reschat-poll", daemon=True)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._gap())
            if self._stop.is_set():
                return
            if self._wake.is_set():
                self._wake.clear()
                continue
            self._tick()

    def nudge(self) -> None:
        self._wake.set()

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()


class _UnreadWatch:
    """Unread counts for a bottom toolbar, counted in a background thread while one prompt waits.

    Counting uses the shared ChatService, so it takes the menus' chat lock; the toolbar only reads the
    last result, under a lock of its own, and never waits for the ledger."""

    def __init__(
        self, count: Callable[[], dict[str, int]], gap: float, on_rise: Callable[[], None] | None = None,
        counted: Mapping[str, int] | None = None,
    ) -> None:
        self._count = count
        self._gap = gap
        self._on_rise = on_rise
        self._lock = threading.Lock()
        #: What was counted just before (the next count comes a gap later), or None.
        self._counts: dict[str, int] | None = None if counted is None else dict(counted)
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reschat-unread", daemon=True)

    def _run(self) -> None:
        if self._counts is not None and self._stop.wait(self._gap):
            return
        while True:
            try:
                counts = self._count()
            except Exception as exc:  # a background thread must never end in a traceback on the screen
                log.warning("counting unread messages failed", exc_info=True)
                with self._lock:
                    self._error = str(exc) if isinstance(exc, ReschatError) else f"unexpected {type(exc).__name__}"
            else:
                with self._lock:
                    before, self._counts, self._error = self._counts, dict(counts), None
                if before is not None and self._on_rise is not None and any(
                    count > before.get(nick, 0) for nick, count in counts.items()
                ):
                    self._on_rise()
            if self._stop.wait(self._gap):
                return

    def toolbar(self) -> str:
        """One line: who has unread messages, as last counted."""
        with self._lock:
            counts, error = self._counts, self._error
        if error is not None:
            return f" unread counts unavailable: {neutralize(error, max_chars=100)}"
        if counts is None:
            return " counting unread messages..."
        unread = [f"{neutralize(nick, max_chars=32)} {count}" for nick, count in counts.items() if count]
        return " unread: " + ", ".join(unread) if unread else " no unread messages"

    def __enter__(self) -> _UnreadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the pager ---------------------------------------------------------------------------------------

#: Shows a text, returns False when it could not (then the caller prints it).
Pager = Callable[[str], bool]


def run_pager(text: str, *, environ: Mapping[str, str] | None = None, terminal: TextIO | None = None) -> bool:
    """Show ``text`` (already safe) in $PAGER, else less or more, fed through a pipe (never a file).

    False when the output is not a terminal or no pager can be started. The default pager gets
    ``LESSSECURE=1``: no shell commands, editing or log files from inside it.
    """
    out = sys.__stdout__ if terminal is None else terminal
    if out is None or not out.isatty():
        return False
    env = dict(os.environ if environ is None else environ)
    try:
        command = shlex.split(env.get("PAGER", ""))
    except ValueError:
        command = []
    if not command:
        for candidate in DEFAULT_PAGERS:
            found = shutil.which(candidate[0], path=env.get("PATH"))
            if found is not None:
                command = [found, *candidate[1:]]
                env["LESSSECURE"] = "1"
                break
        else:
            return False
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, env=env)
    except OSError:
        return False
    try:
        with contextlib.suppress(BrokenPipeError):  # the reader quit before the end: fine
            process.communicate((text + "\n").encode("utf-8", errors="replace"))
    except KeyboardInterrupt:  # Ctrl-C reaches the pager too; wait for it to go
        pass
    process.wait()
    return True


@contextlib.contextmanager
def _draft_as_file(text: str) -> Iterator[Path]:
    """A path named ``DRAFT_FILE_NAME`` whose content is ``text``, for ChatService.send_file.

    On Linux the text lives in memory only (a memfd, reached through a symlink in a private temporary
    folder), so the draft is never written to a disk; elsewhere it is a 0600 file in a private folder,
    removed as soon as it is sent."""
    data = text.encode("utf-8")
    with tempfile.TemporaryDirectory(prefix="reschat-draft-") as folder:
        path = Path(folder) / DRAFT_FILE_NAME
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is not None and Path("/proc/self/fd").is_dir():
            fd = memfd_create(DRAFT_FILE_NAME)
            try:
                _write_all(fd, data)
                path.symlink_to(f"/proc/self/fd/{fd}")
                yield path
            finally:
                os.close(fd)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            yield path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- the menus -----------------------------------------------------------------------------------------


class Menus:
    """The seed's menus over one profile; collaborators are injected so tests can pass their own."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger | None = None,
        stdout: TextIO | None = None,
        scrypt_n: int = crypto.SCRYPT_N,
        first_run_ledger: bool = True,
        pager: Pager | None = None,
        columns: Callable[[], int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        cadence: Callable[..., float] = poll_gap,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        #: Ask where messages travel when a first run creates the identity, unless a config file (or the
        #: caller, for --ledger) has already chosen.
        self.first_run_ledger = first_run_ledger and settings.config_file is None
        self._stdout = stdout
        self.scrypt_n = scrypt_n
        # Written to a stream (tests), the menus page nothing and wrap to the default width.
        self._pager: Pager = pager if pager is not None else run_pager if stdout is None else (lambda _text: False)
        self._columns = columns if columns is not None else (
            (lambda: shutil.get_terminal_size().columns) if stdout is None else (lambda: DEFAULT_WIDTH)
        )
        self._monotonic = monotonic
        self._cadence = cadence
        self._print_lock = threading.Lock()
        # The background pollers and the menu share one ChatService, which is not thread-safe, and the
        # chat screen's memory: both only under this lock (re-entrant: showing an update marks it read).
        self._chat_lock = threading.RLock()
        self._chat: ChatService | None = None
        self.identity: crypto.Identity | None = None
        #: The local ledger file went missing, as a background thread found: the menu thread asks what to do.
        self._lost: LedgerMissingError | None = None

    # -- output ------------------------------------------------------------------------------------

    def say(self, *lines: str) -> None:
        """Print lines (looked up at call time, so patch_stdout can draw them above the prompt)."""
        out = self._stdout if self._stdout is not None else sys.stdout
        with self._print_lock:
            for line in lines:
                out.write(line + "\n")
            out.flush()

    def show(self, *lines: str) -> None:
        """Print safe lines wrapped to the terminal: a row that the terminal wrapped by itself would
        start at the left margin with whatever text came there, looking like a line of its own."""
        width = self._columns()
        self.say(*(row for line in lines for row in wrap_line(line, width)))

    def bell(self) -> None:
        """Ring the terminal bell, when the settings ask for it."""
        if self.settings.chat.bell:
            out = self._stdout if self._stdout is not None else sys.stdout
            with self._print_lock:
                out.write("\a")
                out.flush()

    def error(self, problem: ReschatError | str) -> None:
        self.show(f"error: {neutralize(str(problem))}")

    def _choose(self, title: str, items: Sequence[str], *, toolbar: Callable[[], str] | None = None) -> int | None:
        """Show a numbered menu until a valid number is chosen; None when Ctrl-C asks to go back."""
        while True:
            self._menu(title, items)
            try:
                choice = ask("Choose: ", toolbar=toolbar)
            except KeyboardInterrupt:
                return None
            number = _pick(choice, len(items))
            if number is not None:
                return number
            if choice.strip():
                self.error(f"no such choice {choice.strip()!r}: enter a number from 1 to {len(items)}")

    def _menu(self, title: str, items: Sequence[str]) -> None:
        self.say("", title, *(f"  {number}. {item}" for number, item in enumerate(items, 1)))

    def _unread_watch(self, counted: Mapping[str, int] | None = None) -> _UnreadWatch:
        """Unread counts for the toolbar of one prompt, counted while it waits (``counted``: just now)."""

        def count() -> dict[str, int]:
            with self._chat_lock:
                try:
                    return self.chat.unread_counts()
                except LedgerMissingError as exc:
                    self._lost = exc
                    raise

        return _UnreadWatch(count, self.settings.chat.poll_interval, on_rise=self.bell, counted=counted)

    @contextlib.contextmanager
    def _above_prompt(self) -> Iterator[None]:
        """While background output is possible, draw it above the prompt instead of through it."""
        if self._stdout is not None:
            yield
        else:
            with patch_stdout():
                yield

    @property
    def chat(self) -> ChatService:
        if self._chat is None:
            raise RuntimeError("not logged in")
        return self._chat

    # -- the program ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Start-up, then the main menu until Quit or Ctrl-D; returns the exit status."""
        try:
            self.identity = self.start()
            self._chat = self._open_chat(self.identity)
            self.say("", *self.locations())
            with self._delivery():
                self.main_menu()
        except QuitRequested:
            pass
        if self._chat is not None:
            self.say(*self.pending_note())
        self.say("Bye.")
        return 0

    def _open_chat(self, identity: crypto.Identity) -> ChatService:
        """The chat service; a local ledger file that is not there is made only when the user says so."""
        try:
            return open_conversations(self.settings, identity, ledger=self.ledger)
        except LedgerMissingError as exc:
            self.error(exc)
            if "folder" in str(exc) or not self.confirm(
                f"Make a new, empty ledger file {neutralize(str(self.settings.ledger_path))}? [y/n]: "
            ):
                raise
            self.settings = replace(self.settings, create_ledger=True)
            return open_conversations(self.settings, identity, ledger=self.ledger)

    def _problem(self, exc: ReschatError) -> None:
        """An error in the menu thread: one line, and for a lost local ledger file, the question."""
        if isinstance(exc, LedgerMissingError):
            self._offer_ledger(exc)
        else:
            self.error(exc)

    def _check_ledger(self) -> None:
        """Ask about a lost local ledger file a background thread found, once."""
        lost, self._lost = self._lost, None
        if lost is not None:
            self._offer_ledger(lost, said=True)

    def _offer_ledger(self, exc: LedgerMissingError, *, said: bool = False) -> None:
        """The local ledger file was deleted or replaced under this session: use it again (a new,
        empty file, or the one there now) only when the user says so; updates then put back what this
        profile keeps."""
        self._lost = None
        ledger = self.chat.ledger
        if not said:
            self.error(exc)
        if not isinstance(ledger, LocalLedger):
            return
        path = neutralize(str(ledger.path))
        if not self.confirm(f"Use the ledger file {path} again (a new, empty one if it is gone) and put your"
                            " conversations back into it? [y/n]: "):
            self.say("Nothing changed: no message is read or written until you say so (or restart with --create).")
            return
        try:
            with self._chat_lock:
                ledger.reopen()
        except ReschatError as failed:
            self.error(failed)
            return
        self.say(f"Using {path}: your conversations are put back from this profile as they update"
                 " (your friends' profiles put back theirs).")

    @contextlib.contextmanager
    def _delivery(self) -> Iterator[None]:
        """For the whole session after login: what waits in any friend's outbox goes out in the
        background, at once and then every ``chat.resend_after`` seconds, whichever chat is open."""
        waits = iter([0.0])

        def gap() -> float:
            return next(waits, self.settings.chat.resend_after)

        def deliver() -> None:
            try:
                with self._chat_lock:
                    self.chat.deliver_pending()
            except LedgerMissingError as exc:
                self._lost = exc
            except Exception:  # a background thread must never end in a traceback; the menus report failures
                log.warning("background delivery failed", exc_info=True)

        with Poller(gap, deliver):
            yield

    def pending_note(self) -> list[str]:
        """At quit: how many messages no ledger read has confirmed yet, and that they go out later."""
        with self._chat_lock:
            counts = self.chat.pending_counts()
        total = sum(counts.values())
        if not total:
            return []
        each = ", ".join(f"{count} to {neutralize(nick, max_chars=32)}" for nick, count in sorted(counts.items()))
        plural = "message is" if total == 1 else "messages are"
        return [f"{total} {plural} not confirmed by the ledger yet ({each}): they go out at the next start."]

    def start(self) -> crypto.Identity:
        """Register when the profile has no identity, else log in; then show the fingerprint."""
        first_run = not crypto.identity_exists(self.settings.home)
        identity = self.register() if first_run else self.login()
        self.say(f"Logged in as {neutralize(identity.name)}.", f"Your fingerprint: {identity.fingerprint}")
        if first_run and self.first_run_ledger:
            self.choose_ledger()
            # The card names the ledger just chosen, so a friend on another one is warned.
            identity = crypto.relocate(identity, self.settings.home, card_location(self.settings))
        return identity

    def locations(self) -> list[str]:
        """Where this session keeps its profile and sends its messages (the main menu's first lines)."""
        return [
            f"Profile: {neutralize(str(self.settings.home))}",
            f"Ledger:  {neutralize(describe_ledger(self.settings))}",
        ]

    def register(self) -> crypto.Identity:
        self.say(
            "Welcome to ResChat. This profile has no identity yet: let us create one.",
            f"(Profile directory: {neutralize(str(self.settings.home))})",
        )
        while True:
            try:
                name = crypto.validate_name(ask("Username: "))
                break
            except ReschatError as exc:
                self.error(exc)
        password = ask_new_password(self.say, user_inputs=(name,))
        self.say("Creating your keys (this takes a few seconds)...")
        return crypto.create_keys(name, password, self.settings.home, scrypt_n=self.scrypt_n,
                                  location=card_location(self.settings))

    def login(self) -> crypto.Identity:
        for attempt in range(1, LOGIN_ATTEMPTS + 1):
            password = ask_password()
            try:
                return crypto.load_identity(self.settings.home, password, location=card_location(self.settings))
            except WrongPasswordError:
                left = LOGIN_ATTEMPTS - attempt
                self.error("wrong password" + (f"; {left} {'try' if left == 1 else 'tries'} left" if left else ""))
        raise WrongPasswordError(f"{LOGIN_ATTEMPTS} wrong passwords: giving up")

    def main_menu(self) -> None:
        while True:
            self._check_ledger()
            with self._unread_watch() as watch:
                number = self._choose("Main menu", MAIN_MENU, toolbar=watch.toolbar)
            if number is None or number == 4:
                return
            try:
                if number == 1:
                    self.friends_menu()
                elif number == 2:
                    self.add_friend()
                elif number == 5:
                    groupmenus.create_group(self)
                else:
                    self.show_card()
            except KeyboardInterrupt:
                self.say("(back to the main menu)")
            except ReschatError as exc:
                self._problem(exc)

    def show_card(self) -> None:
        assert self.identity is not None
        self.say(
            "Your contact card (give this line to your friends):",
            self.identity.card,
            f"Your fingerprint: {self.identity.fingerprint}",
        )

    # -- where messages travel (asked on the first run; `reschat ledger` changes it later) -------------

    def choose_ledger(self) -> None:
        """Ask where messages travel, check a ResilientDB choice as the doctor does, save it in config.toml."""
        target = config_target(self.settings)
        self.say("", "Where should your messages travel? (Change it later with 'reschat ledger'.)")
        while True:
            self._menu("Ledger", LEDGER_MENU)
            try:
                choice = ask("Choose [1]: ").strip() or "1"
            except KeyboardInterrupt:
                choice = "1"
            number = _pick(choice, len(LEDGER_MENU))
            if number is None:
                self.error(f"no such choice {choice!r}: enter a number from 1 to {len(LEDGER_MENU)}")
                continue
            try:
                changes = self._ledger_changes(number)
                if changes is None:
                    continue
                chosen = preview_config(self.settings, changes)
                if number != 1 and not self._ledger_works(chosen):
                    continue
                update_config(target, changes)
                self.settings = load_file(target, self.settings)
            except KeyboardInterrupt:
                self.say("(cancelled)")
                continue
            except ReschatError as exc:
                self.error(exc)
                continue
            self.say(f"Messages travel through: {neutralize(describe_ledger(self.settings))}", f"Saved in {target}")
            return

    def _ledger_changes(self, number: int) -> dict[str, object] | None:
        """The settings for menu item ``number``; None when the user left a question empty."""
        if number == 1:
            return local_ledger()
        if number == 2:
            url = ask("Gateway URL (for example http://192.0.2.7:18000): ").strip()
            return http_ledger(url) if url else None
        tool = ask("kv_service_tools (a path, or Enter for the one on PATH): ",
                   completer=PathCompleter(expanduser=True)).strip()
        config = ask("Client config (the file that names the proxy, node 5): ",
                     completer=PathCompleter(expanduser=True)).strip()
        return tool_ledger(tool, config) if config else None

    def _ledger_works(self, chosen: Settings) -> bool:
        """Check ``chosen`` as the doctor does; when it fails, show why and let the user keep it anyway."""
        self.say(f"Checking {neutralize(describe_ledger(chosen))} (a write and a read back)...")
        report = run_doctor(chosen, check_profile=False)
        if report.ok:
            self.say("It works.")
            return True
        self.say(*(neutralize(line) for line in format_report(report).splitlines()))
        return self.confirm("Use it anyway (for example because the cluster is not running yet)? [y/n]: ")

    # -- adding and verifying friends ----------------------------------------------------------------

    def add_friend(self) -> None:
        """Add a friend by nickname and card; a nickname you already use shows that friend instead."""
        nickname = self._ask_nickname()
        if nickname is None:
            return
        try:
            existing = self.chat.friends.get_friend(nickname)
        except UnknownFriendError:
            pass
        else:
            self.friend_info(existing)
            return
        self.say(
            "Paste your friend's contact card (reschat-card:2:...), then press Enter (an empty line cancels).",
            safety.CHECKSUM_NOTE,
        )
        contact = self._ask_card(nickname)
        if contact is None:
            return
        check = safety.check_card(self.chat.friends, self.chat.identity.public_key, nickname,
                                  contact.public_key, contact.name)
        if check.kind == "name-clash":
            assert check.friend is not None
            self._key_change(check.friend, contact, new_nickname=nickname)
            return
        if contact.name:
            self.say(f"Name on the card: {neutralize(contact.name)}")
        self.say(f"Fingerprint: {crypto.fingerprint(contact.public_key)}")
        self.say(*(neutralize(line) for line in ledger_mismatch(self.settings, contact.location, nickname)))
        self.offer_to_add(nickname, contact)

    def offer_to_add(self, nickname: str, contact: crypto.Contact) -> None:
        """The safety number, then the friend added only when the user says yes (a pasted or vouched card)."""
        self._show_safety_number(nickname, contact.public_key)
        if self.confirm(f"Add {neutralize(nickname)} with this key? [y/n]: "):
            friend = self.chat.friends.add_friend(nickname, contact)
            self.say(f"Added {neutralize(friend.nickname)}.")
            self._verify_hint(friend)
        else:
            self.say("Not added.")

    def _ask_nickname(self) -> str | None:
        """A valid nickname; asked again after an error, None (nothing added) when left empty."""
        while True:
            typed = ask("Nickname (a new friend's, or a friend's to see the safety number): ")
            if not typed.strip():
                self.say("No nickname: no friend added.")
                return None
            try:
                nickname = validate_nickname(typed)
                if groupmenus.is_group(self, nickname):  # names are unique across friends and groups
                    raise DuplicateFriendError(f"{nickname!r} is the name of one of your groups: choose another")
                return nickname
            except ReschatError as exc:
                self.error(exc)

    def _ask_card(self, nickname: str, existing: Friend | None = None) -> crypto.Contact | None:
        """A pasted card that is neither your own key nor another friend's; asked again after an error
        (the nickname stays), None when the user cancels."""
        while True:
            text = ask_key(on_incomplete=lambda: self.say(INCOMPLETE_CARD))
            if not text.strip():
                self.say("Nothing pasted; no friend added." if existing is None else "Nothing pasted; nothing changed.")
                return None
            if card_incomplete(text):
                self.say("Cancelled: the card was cut short; nothing changed. Copy the whole line and try again.")
                return None
            try:
                contact = crypto.parse_contact(text)
                check = safety.check_card(self.chat.friends, self.chat.identity.public_key, nickname,
                                          contact.public_key, contact.name)
                if check.kind == "own":
                    raise ReschatError("that is your own key: add your friend's key instead")
                if check.kind == "known-key" and check.friend is not None:
                    raise ReschatError(f"that key is already your friend {check.friend.nickname!r}")
                return contact
            except ReschatError as exc:
                self.error(exc)
                self.say(f"Paste the card for {neutralize(nickname)} again, or press Enter to cancel.")

    def _show_safety_number(self, nickname: str, key: RSA.RsaKey) -> None:
        digits = safety.safety_number(self.chat.identity.public_key, key)
        self.say(
            f"Safety number with {neutralize(nickname)} (the same digits appear on their screen):",
            *(f"    {line}" for line in safety.safety_lines(digits)),
            "Compare it with them by voice (on the phone or face to face) before you trust this key.",
        )

    def _verify_hint(self, friend: Friend) -> None:
        shown = neutralize(friend.nickname)
        self.say(f"{shown} is not verified yet: once you have compared the safety number with them, mark them"
                 f" verified (main menu 2, nickname {shown}, or 'reschat verify {shown} --mark').")

    def friend_info(self, friend: Friend) -> None:
        """A friend's name, fingerprint, safety number and verification; mark verified or check a new card."""
        shown = neutralize(friend.nickname)
        name = f" (name on their card: {neutralize(friend.name)})" if friend.name else ""
        self.say("", f"{shown} is already your friend{name}.", f"Fingerprint: {crypto.fingerprint(friend.key)}")
        self._show_safety_number(friend.nickname, friend.key)
        self.say(f"{shown} is {safety.verification_label(friend)}.")
        mark = (f"Mark {shown} not verified" if friend.verified
                else f"Mark {shown} verified (you compared the safety number: it is the same)")
        number = self._choose(f"Friend {shown}", [mark, f"Paste a new card from {shown}", "Previous menu"])
        if number is None or number == 3:
            return
        if number == 1:
            friend = self.chat.friends.update(friend.nickname, verified=not friend.verified)
            self.say(f"{shown} is now {safety.verification_label(friend)}.")
            return
        self.say(f"Paste {shown}'s card, then press Enter (an empty line cancels).")
        contact = self._ask_card(friend.nickname, existing=friend)
        if contact is None:
            return
        if crypto.fingerprint_bytes(contact.public_key).hex() == friend.fingerprint:
            if safety.renews(friend, contact):
                self.chat.friends.replace_key(friend.nickname, contact)
                self.chat.friends.update(friend.nickname, verified=friend.verified)  # the same identity key
                self.say(f"This card has the key you already have for {shown}, with new static keys"
                         " (signed by that key): the card is updated.")
                return
            self.say(f"This card has the key you already have for {shown}: nothing changed.")
            return
        self._key_change(friend, contact)

    def _key_change(self, friend: Friend, contact: crypto.Contact, *, new_nickname: str | None = None) -> None:
        """A card with another key for ``friend`` (or, with ``new_nickname``, for someone who uses their
        name): a loud warning, the new safety number, and a choice; nothing changes by default."""
        shown = neutralize(friend.nickname)
        if new_nickname is None:
            self.say("", f"!! WARNING: this card's key is NOT the key you have for {shown}.",
                     f"!! {shown} may have a new key (a new computer, a reinstall), or someone may be"
                     f" pretending to be {shown}.")
        else:
            self.say("", f"!! WARNING: your friend {shown} goes by the name"
                         f" {neutralize(contact.name or '')!r} too, with ANOTHER key.",
                     f"!! Either this is {shown}'s new key, or someone else uses the same name,"
                     f" or someone is pretending to be {shown}.")
        self.say(f"!!   old key (the one you have): {crypto.fingerprint(friend.key)}",
                 f"!!   new key (on this card):     {crypto.fingerprint(contact.public_key)}")
        self._show_safety_number(friend.nickname, contact.public_key)
        items = ["Keep the old key (change nothing)",
                 f"Replace {shown}'s key with this one ({shown} is then no longer verified)"]
        if new_nickname is not None:
            items.append(f"Add {neutralize(new_nickname)} as a new friend (someone else with the same name)")
        number = self._choose("What should happen?", items)
        if number is None or number == 1:
            self.say(f"Kept the old key of {shown}; nothing changed.")
        elif number == 2:
            replaced = self.chat.friends.replace_key(friend.nickname, contact)
            self.say(f"Replaced the key of {shown}. {shown} is not verified.")
            self._verify_hint(replaced)
        else:
            assert new_nickname is not None
            added = self.chat.friends.add_friend(new_nickname, contact)
            self.say(f"Added {neutralize(added.nickname)}.")
            self._verify_hint(added)

    def chat_header(self, nickname: str) -> list[str]:
        """The first lines of a chat: who, verified or not, and while not verified, the safety number."""
        if groupmenus.is_group(self, nickname):
            return groupmenus.group_header(self, nickname)
        friend = self.chat.friends.get_friend(nickname)
        shown = neutralize(friend.nickname)
        if friend.verified:
            return [f"Chatting with {shown} (verified)"]
        digits = safety.safety_number(self.chat.identity.public_key, friend.key)
        return [
            f"Chatting with {shown} (not verified)",
            f"Safety number: {safety.grouped(digits)}",
            f"Compare it with {shown} by voice, then mark them verified (main menu 2, nickname {shown}).",
        ]

    def confirm(self, question: str) -> bool:
        while True:
            answer = ask(question).strip().lower()
            if answer in ("y", "yes"):
                return True
            if answer in ("n", "no"):
                return False
            self.say("Please answer y or n.")

    # -- second menu -----------------------------------------------------------------------------------

    def friends_menu(self) -> None:
        while True:
            nicknames = self.chat.friends.get_all_friend()
            if not nicknames and not groupmenus.is_group_holder(self):
                self.say("You have no friends yet: choose 'Add or verify a friend' in the main menu first.")
                return
            counted: dict[str, int] | None
            try:
                with self._chat_lock:
                    counted = self.chat.unread_counts()
            except LedgerMissingError as exc:
                self._offer_ledger(exc)
                continue
            except ReschatError as exc:
                self.error(f"cannot count unread messages: {exc}")
                counted = None
            counts = counted or {}
            verified = {friend.nickname for friend in self.chat.friends.all_friends() if friend.verified}
            items = [
                neutralize(nick) + (" [verified]" if nick in verified else "")
                + (f" ({counts[nick]} unread)" if counts.get(nick) else "")
                for nick in nicknames
            ]
            # Groups follow the friends, with their unread counts (names are unique across both).
            group_names, group_items = groupmenus.friend_list_items(self, counts)
            nicknames, items = [*nicknames, *group_names], [*items, *group_items]
            self._menu("Friends", [*items, "Previous menu"])
            try:
                with self._unread_watch(counted) as watch:
                    choice = ask(
                        "Choose a friend (number or nickname): ", completer=friend_completer(nicknames),
                        toolbar=watch.toolbar,
                    ).strip()
            except KeyboardInterrupt:
                return
            if not choice:
                continue
            if choice.isdigit():
                number = _pick(choice, len(nicknames) + 1)
                if number is None:
                    self.error(f"no such choice {choice!r}: enter 1 to {len(nicknames) + 1} or a nickname")
                    continue
                if number == len(nicknames) + 1:
                    return
                nickname = nicknames[number - 1]
            else:
                try:
                    nickname = match_nickname(choice, nicknames)
                except UnknownFriendError as exc:
                    self.error(exc)
                    continue
            try:
                self.chat_menu(nickname, unread=counted)
            except KeyboardInterrupt:
                pass
            except ReschatError as exc:
                self._problem(exc)

    # -- third menu ------------------------------------------------------------------------------------

    def chat_menu(self, nickname: str, *, unread: Mapping[str, int] | None = None) -> None:
        """The chat with ``nickname``: a line typed at the prompt is sent, a menu number runs an item.

        ``unread`` are the counts already shown, so only later arrivals from other friends are announced.
        """
        screen = _Screen(nickname, others=None if unread is None else dict(unread))
        self.say("")
        self.show(*self.chat_header(nickname))
        with self._chat_lock:
            view = self.chat.get_update(nickname)
            if not self._show_new(view, screen, initial=True):
                self.say("No messages yet.")
            self._recent_activity(view, screen)
        if view.has_older:
            self.say("(There are older messages: choose 'Load older messages'.)")
        title = f"Chat with {neutralize(nickname)}"
        items: tuple[str, ...] = CHAT_MENU
        if groupmenus.is_group(self, nickname):
            items = tuple(groupmenus.GROUP_ITEM if n == DISAPPEAR_ITEM else item for n, item in enumerate(CHAT_MENU, 1))
        self._menu(title, items)
        self.show(CHAT_HINT)
        actions: dict[int, Callable[[_Screen], None]] = {
            1: self._send, 2: self._update, 3: self._older, 4: self._send_file, 5: self._save_file,
            VIEW_ITEM: self._view, DISAPPEAR_ITEM: self._disappearing,
        }
        with self._above_prompt(), Poller(lambda: self._poll_gap(screen), lambda: self._poll(screen)) as poller:
            while True:
                self._check_ledger()
                draft, screen.draft = screen.draft, ""
                try:
                    line = ask_chat_line(CHAT_PROMPT, default=draft, placeholder=CHAT_PLACEHOLDER, clear_first=True)
                except KeyboardInterrupt:
                    return
                typed = read_chat_line(line, len(CHAT_MENU))
                if typed.kind == "menu":
                    self._menu(title, items)
                    self.show(CHAT_HINT)
                    continue
                if typed.kind == "no-choice":
                    self.error(
                        f"no such choice {typed.text!r}: enter 1 to {len(CHAT_MENU)}, or ' {typed.text}' to send it"
                    )
                    continue
                if typed.kind == "choice" and typed.number == len(CHAT_MENU):
                    return
                try:
                    if typed.kind == "message":
                        self._send_text(screen, typed.text)
                    else:
                        actions[typed.number](screen)
                except KeyboardInterrupt:
                    self.say("(cancelled)")
                except ReschatError as exc:
                    self._problem(exc)
                poller.nudge()  # a send makes the chat active: poll at the active pace from now
                self.show(CHAT_HINT)

    def _poll_gap(self, screen: _Screen) -> float:
        with self._chat_lock:
            since = None if screen.last_activity is None else self._monotonic() - screen.last_activity
        interval = self.settings.chat.poll_interval
        return self._cadence(backend=self.settings.ledger.backend, interval=interval, since_activity=since)

    def _recent_activity(self, view: ConversationView, screen: _Screen) -> None:
        """On opening a chat: a message sent or received in the last minute makes it active already
        (a message dated in the future, by a clock ahead, does not)."""
        if view.messages:
            age = (datetime.now(timezone.utc) - max(m.time for m in view.messages)).total_seconds()
            if 0 <= age < ACTIVE_WINDOW_S:
                screen.last_activity = self._monotonic() - age

    def _send(self, screen: _Screen) -> None:
        """Menu item 1: ask for a message, then send it as a typed line would be."""
        self._send_text(screen, ask_chat_line("Message: ", placeholder="Esc Enter: new line"))

    def _send_text(self, screen: _Screen, text: str) -> None:
        """Send ``text``; a draft over the size limit is never thrown away (sent as a file or kept), and
        a draft the engine refuses for another reason comes back at the prompt."""
        size = len(text.encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            self._oversized(screen, text, size)
            return
        try:
            with self._chat_lock:
                result = self.chat.send_message(text, screen.nickname)
                screen.shown.add(_message_id(result.message))
                screen.last_activity = self._monotonic()
                self.show(*format_message(result.message, width=self._columns()))
        except ReschatError:
            if text.strip():
                screen.draft = text
            raise
        if result.error is not None:
            self.error(f"not written to the ledger yet ({result.error}); it is re-sent on the next update")

    def _oversized(self, screen: _Screen, text: str, size: int) -> None:
        self.say(
            f"This message is {size:,} bytes; a message holds at most {MAX_TEXT_BYTES:,} bytes (16 KiB).",
            f"  1. Send it as a file ({DRAFT_FILE_NAME})",
            "  2. Keep it to edit (it comes back at the prompt)",
        )
        try:
            choice = ask("Choose (Enter: keep it): ").strip()
        except KeyboardInterrupt:
            choice = ""
        if choice != "1":
            screen.draft = text
            self.say("Kept: edit it at the prompt, or clear it with Ctrl-C.")
            return
        self.say("Sending...")
        try:
            with _draft_as_file(text) as path, self._chat_lock:
                result = self.chat.send_file(screen.nickname, path)
                self._after_file_sent(screen, result.message)
        except (ReschatError, OSError) as exc:
            screen.draft = text
            self.error(f"not sent ({exc}); the message is kept at the prompt")
            return
        if result.error is not None:
            self.error(f"not written to the ledger yet ({result.error}); it is re-sent on the next update")

    def _after_file_sent(self, screen: _Screen, message: ChatMessage) -> None:
        screen.shown.add(_message_id(message))
        screen.files = [*screen.files, message]
        screen.last_activity = self._monotonic()
        self.show(*format_message(message, width=self._columns()))

    def _send_file(self, screen: _Screen) -> None:
        typed = ask("File to send: ", completer=PathCompleter(expanduser=True))
        if not typed.strip():
            self.say("No file chosen.")
            return
        # A path typed as is wins over its unquoted form: a name may contain quotes or backslashes.
        path = Path(typed.strip()).expanduser()
        if not path.exists():
            path = Path(dropped_path(typed)).expanduser()
        self.say("Sending...")
        with self._chat_lock:
            result = self.chat.send_file(screen.nickname, path)
            self._after_file_sent(screen, result.message)
        if result.error is not None:
            self.error(f"not written to the ledger yet ({result.error}); it is re-sent on the next update")

    def _save_file(self, screen: _Screen) -> None:
        with self._chat_lock:
            found = list(reversed(screen.files))  # the newest first, as 'reschat save NICK N' counts
            has_older = screen.has_older
        if not found:
            more = " (choose 'Load older messages' to look further back)" if has_older else ""
            self.say(f"No files in the loaded messages{more}.")
            return
        self.show(
            "Files in this conversation (1 = the newest, as in 'reschat save'):",
            *(f"  {n}. {_file_line(m)}" for n, m in enumerate(found, 1)),
        )
        choice = ask("Save file number (empty: cancel): ").strip()
        if not choice:
            self.say("Nothing saved.")
            return
        number = _pick(choice, len(found))
        if number is None:
            self.error(f"no such file {choice!r}: enter a number from 1 to {len(found)}")
            return
        with self._chat_lock:
            saved = self.chat.save_file(found[number - 1], ProfilePaths(self.settings.home).downloads)
        self.show(f"Saved {neutralize(str(saved))}")

    def _view(self, screen: _Screen) -> None:
        """Show one whole message (nothing cut) through the pager, or printed when there is none."""
        with self._chat_lock:
            recent = list(reversed(screen.messages))
        if not recent:
            self.say("No messages to view.")
            return
        width = self._columns()
        self.show(
            "Recent messages (1 = the newest):",
            *(f"  {n}. {local_time(m.time)} {_who(m)}: {message_summary(m, max(20, width - 40))}"
              for n, m in enumerate(recent[:VIEW_LIST], 1)),
        )
        more = f", or up to {len(recent)}" if len(recent) > VIEW_LIST else ""
        choice = ask(f"View message number (1 to {min(len(recent), VIEW_LIST)}{more}; empty: cancel): ").strip()
        if not choice:
            return
        number = _pick(choice, len(recent))
        if number is None:
            self.error(f"no such message {choice!r}: enter a number from 1 to {len(recent)}")
            return
        rows = format_message(recent[number - 1], width=width, full=True)
        with self._print_lock:  # background output waits while the pager owns the terminal
            paged = self._pager("\n".join(rows))
        if not paged:
            self.say(*rows)

    def _disappearing(self, screen: _Screen) -> None:
        """Show the conversation's disappearing-messages timer and set a new one (or turn it off): a
        signed line that both sides see, the newest setting from either side wins."""
        if groupmenus.is_group(self, screen.nickname):
            groupmenus.group_settings(self, screen)  # item 7 of a group's chat
            return
        with self._chat_lock:
            current = self.chat.disappearing(screen.nickname)
        self.show(
            f"Disappearing messages: {retention.describe(current)}.",
            "With a timer, your messages disappear that long after you send them, and your friend's that long"
            " after they are first shown (unread ones after twice as long), on both sides.",
        )
        typed = ask("New timer (5m, 1h, 2d, 4w, or off; empty: keep it): ").strip()
        if not typed:
            self.say("Nothing changed.")
            return
        seconds = retention.parse_duration(typed)
        if seconds == current:
            self.say(f"Disappearing messages are already {retention.describe(current)}: nothing changed.")
            return
        with self._chat_lock:
            result = self.chat.set_disappearing(screen.nickname, seconds)
            screen.shown.add(_message_id(result.message))
            screen.last_activity = self._monotonic()
            self.show(*format_message(result.message, width=self._columns()))
        if result.error is not None:
            self.error(f"not written to the ledger yet ({result.error}); it is re-sent on the next update")

    def _update(self, screen: _Screen) -> None:
        with self._chat_lock:
            view = self.chat.get_update(screen.nickname)
            if not self._show_new(view, screen):
                self.say("No new messages.")

    def _older(self, screen: _Screen) -> None:
        with self._chat_lock:
            if not screen.has_older:
                self.show(self._nothing_older(screen))
                return
            view = self.chat.load_older(screen.nickname)
            if not self._show_new(view, screen, header="--- older messages ---", initial=True):
                self.show(self._nothing_older(screen))

    @staticmethod
    def _nothing_older(screen: _Screen) -> str:
        """Why loading older messages showed nothing: the lane's start, or pages the ledger lost."""
        if not screen.gaps:
            return "No older messages."
        named = "; ".join(f"{_lane_name(lane)}: {detail}" for lane, detail in sorted(screen.gaps))
        return f"Nothing older can be shown: missing from the ledger, and no copy here to restore them: {named}"

    def _poll(self, screen: _Screen) -> None:
        """One background update: print what is new (and, every few ticks, news from other friends);
        report a failure once, not every interval."""
        try:
            with self._chat_lock:
                screen.ticks += 1
                view = self.chat.get_update(screen.nickname)
                self._show_new(view, screen)
                if screen.ticks % NOTICE_EVERY_TICKS == 0 and self._has_other_friends(screen.nickname):
                    self._notice_others(self.chat.unread_counts(), screen)
        except Exception as exc:  # a background thread must never end in a traceback on the screen
            log.warning("background update failed", exc_info=True)
            if isinstance(exc, LedgerMissingError):
                self._lost = exc  # the menu thread asks at the next line typed
            text = str(exc) if isinstance(exc, ReschatError) else f"unexpected {type(exc).__name__}"
            if text != screen.last_error:
                screen.last_error = text
                self.error(f"background update failed: {text}")
            return
        screen.last_error = None

    def _has_other_friends(self, nickname: str) -> bool:
        return any(other != nickname for other in self.chat.friends.get_all_friend())

    def _notice_others(self, counts: Mapping[str, int], screen: _Screen) -> None:
        """One line per rise of another friend's unread count; the first count only sets the baseline."""
        others = {nick: count for nick, count in counts.items() if nick != screen.nickname}
        if screen.others is not None:
            for nick, count in others.items():
                if count > screen.others.get(nick, 0):
                    plural = "message" if count == 1 else "messages"
                    self.show(f"({count} new {plural} from {neutralize(nick, max_chars=64)})")
                    self.bell()
        screen.others = others

    def _show_new(
        self, view: ConversationView, screen: _Screen, header: str | None = None, *, initial: bool = False
    ) -> bool:
        """Print messages and problems not shown yet, and deliveries of own messages; True if any.

        Called under the chat lock. A message that arrives while the chat is open (not ``initial``:
        opening it or loading older messages) makes the conversation active and may ring the bell."""
        screen.has_older = view.has_older
        screen.messages = list(view.messages)
        screen.files = [m for m in view.messages if m.type == FILE_TYPE]
        fresh = [m for m in view.messages if _message_id(m) not in screen.shown]
        problems = [p for p in view.problems if (p.lane, p.kind, p.detail) not in screen.problems]
        delivered = [
            m for m in view.messages
            if m.outgoing and m.status == "delivered" and (m.epoch, m.seq) not in screen.delivered
            and _message_id(m) in screen.shown
        ]
        overdue = [
            m for m in view.messages
            if m.outgoing and m.status == "undelivered" and (m.epoch, m.seq) not in screen.undelivered
            and _message_id(m) in screen.shown
        ]
        lines = format_conversation(fresh, problems, width=self._columns(), more=CHAT_MORE)
        for message in overdue:
            lines.append(f"{PENDING_MARK} not delivered yet: {message_summary(message)} (it is sent again until it is)")
        for message in delivered:
            lines.append(f"{DELIVERED_MARK} delivered: {message_summary(message)}")
        if header and lines:
            lines.insert(0, header)
        if lines:
            self.show(*lines)
        screen.shown.update(_message_id(m) for m in fresh)
        screen.problems.update((p.lane, p.kind, p.detail) for p in problems)
        screen.delivered.update((m.epoch, m.seq) for m in view.messages if m.outgoing and m.status == "delivered")
        screen.undelivered.update((m.epoch, m.seq) for m in view.messages if m.outgoing and m.status == "undelivered")
        screen.gaps.update((p.lane, neutralize(p.detail)) for p in view.problems if p.kind == "gap")
        if fresh and not initial:
            screen.last_activity = self._monotonic()
            if any(not m.outgoing for m in fresh):
                self.bell()
        if any(not m.outgoing for m in fresh):
            self.chat.mark_read(screen.nickname)
        return bool(lines)


def _message_id(message: ChatMessage) -> tuple[str, int, int]:
    """What tells one message of a conversation from every other: its lane, epoch and number."""
    return message.sender, message.epoch, message.seq


def _lane_name(lane: str) -> str:
    return "your lane" if lane == ME else f"{neutralize(lane, max_chars=32)}'s lane"


def _who(message: ChatMessage) -> str:
    return ME if message.outgoing else neutralize(message.sender, max_chars=32)


def _file_line(message: ChatMessage) -> str:
    """A file message in the "Save a file" list: its label, who sent it and when."""
    who = "sent by you" if message.outgoing else f"from {neutralize(message.sender, max_chars=64)}"
    return f"{neutralize(message_label(message))}, {who}, {local_time(message.time)}"
