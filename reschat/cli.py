"""The ``reschat`` command: argument parsing, exit statuses, logging, and the scriptable subcommands.

``reschat`` alone opens the interactive menus; the subcommands do one thing each for scripts. Every
failure a user can act on ends with one line, ``reschat: error: <what happened>``, on stderr and a
non-zero status; a traceback appears only with ``--debug``. Logging goes to ``reschat.log`` in the
profile and never records a password or message text.
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Mapping
from datetime import timezone
from pathlib import Path
from typing import Any

from reschat import __version__, crypto, files
from reschat.app import ProfilePaths, build_ledger, open_chat, open_friend_store
from reschat.chat import ChatMessage, IntegrityProblem, peek_unread_counts
from reschat.config import Settings, load_settings
from reschat.doctor import format_report, run_doctor
from reschat.errors import LedgerError, MessageError, PageFormatError, ProfileError, ReschatError
from reschat.render import format_conversation, neutralize

log = logging.getLogger(__name__)

LOG_FILE = "reschat.log"
PASSWORD_ENV = "RESCHAT_PASSWORD"  # noqa: S105 - the variable's name, not a password


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2  # argparse's own status for a bad command line
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it


Command = Callable[[argparse.Namespace, Settings, Mapping[str, str]], int]


# --- the command line ------------------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the defaults are suppressed so that an option given before the subcommand
    # is not reset by the subcommand's parser: `reschat --home A whoami` == `reschat whoami --home A`.
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--home", metavar="DIR", default=default,
                        help="profile directory (keys, friends); default: $RESCHAT_HOME or the user data dir")
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="settings file (TOML); default: $RESCHAT_CONFIG or config.toml in the profile")
    parser.add_argument("--ledger", metavar="PATH", default=default,
                        help="use the embedded ledger in this SQLite file (shared by everyone who names it)")
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show tracebacks and log details")


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-file", metavar="FILE",
                        help=f"read the password from the first line of FILE (else ${PASSWORD_ENV}, else a prompt)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reschat",
        description="End-to-end encrypted chat over a ResilientDB key-value ledger. "
        "Without a subcommand, opens the interactive menus.",
    )
    parser.add_argument("--version", action="version", version=f"reschat {__version__}")
    _common_options(parser, top=True)
    parser.set_defaults(func=cmd_menus)
    sub = parser.add_subparsers(title="subcommands", metavar="COMMAND")

    def add(name: str, func: Command, help_text: str, *, password: bool = False) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        _common_options(command, top=False)
        if password:
            _password_option(command)
        command.set_defaults(func=func)
        return command

    init = add("init", cmd_init, "create the identity (name and key pair) of this profile", password=True)
    init.add_argument("--name", required=True, help="your name, shown to friends on your contact card")

    add("whoami", cmd_whoami, "print your contact card (line 1) and fingerprint (line 2)")

    add_friend = add("add", cmd_add, "add a friend from their contact card or PEM public key")
    add_friend.add_argument("nick", metavar="NICK", help="the nickname you will call them by")
    add_friend.add_argument("card", metavar="CARD", help="the card text, a card or .pem file, or - for stdin")

    friends = add("friends", cmd_friends, "list friends: nickname, fingerprint, unread count")
    friends.add_argument("--json", action="store_true", help="print a JSON array")

    send = add("send", cmd_send, "send a message or a file", password=True)
    send.add_argument("nick", metavar="NICK")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("text", metavar="TEXT", nargs="?", help="the message, or - to read it from stdin")
    what.add_argument("--file", metavar="PATH", help="send this file (at most 5 MiB) instead of a message")

    read = add("read", cmd_read, "print a conversation in time order (two most recent pages per lane)",
               password=True)
    read.add_argument("nick", metavar="NICK")
    read.add_argument("--all", action="store_true", help="the whole conversation")
    read.add_argument("--full", action="store_true",
                      help="whole messages: a friend's long message is otherwise cut after 1,000 characters a line "
                      "and 40 lines")
    read.add_argument("--json", action="store_true", help="print one JSON array of messages (always whole)")

    save = add("save", cmd_save, "save a file of a conversation into the profile's downloads directory",
               password=True)
    save.add_argument("nick", metavar="NICK")
    save.add_argument("number", metavar="N", nargs="?", type=_positive, default=1,
                      help="the N-th most recent file, received or sent (default: 1, the newest; the menus' "
                      "Save a file numbers them the same way)")

    add("doctor", cmd_doctor, "check that the configured ledger works (a write and a read back) and the profile")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def main(argv: list[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Run ``reschat`` with ``argv``; returns the exit status."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed its text
        return int(exc.code) if isinstance(exc.code, int) else ExitStatus.USAGE
    debug: bool = args.debug
    try:
        settings = load_settings(home=args.home, config=args.config, ledger=args.ledger, environ=dict(env))
        _setup_logging(settings.home, debug)
        log.info("reschat %s: %s", __version__, getattr(args.func, "__name__", "?"))
        status: int = args.func(args, settings, env)
        return status
    except ReschatError as exc:
        log.info("error: %s", exc, exc_info=debug)
        return _fail(str(exc), debug)
    except EOFError:  # Ctrl-D at a prompt (menus.QuitRequested), which menus is not imported to name
        return _fail("cancelled", debug=False)
    except KeyboardInterrupt:
        print("reschat: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`reschat read bob | head`): not worth a message.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return ExitStatus.ERROR
    except Exception as exc:
        log.exception("unexpected error")
        hint = "" if debug else " (run with --debug for details)"
        return _fail(f"unexpected {type(exc).__name__}: {exc}{hint}", debug)


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"reschat: error: {neutralize(message)}", file=sys.stderr)
    return ExitStatus.ERROR


def _setup_logging(home: Path, debug: bool) -> None:
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The log holds no secret, but who you talk to and when is private: owner-only, like the rest.
        os.close(os.open(home / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handler = logging.FileHandler(home / LOG_FILE, encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot use the profile directory {home}: {exc.strerror}") from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("reschat")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


# --- helpers -------------------------------------------------------------------------------------


def _read_stdin() -> str:
    return sys.stdin.read()


def _password(args: argparse.Namespace, env: Mapping[str, str], *, new: bool = False) -> str:
    """The password: --password-file, else $RESCHAT_PASSWORD, else a hidden prompt on the terminal."""
    if args.password_file:
        path = Path(args.password_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ProfileError(f"cannot read the password file {path}: {exc.strerror}") from exc
        password = lines[0] if lines else ""
        if not password:
            raise ProfileError(f"the password file {path} is empty")
        return password
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise ProfileError(f"no password: set {PASSWORD_ENV} or use --password-file FILE (stdin is not a terminal)")
    from reschat import menus  # prompt_toolkit is only loaded when something is prompted

    if new:
        return menus.ask_new_password(lambda line: print(line, file=sys.stderr))
    return menus.ask_password()


def _unlock(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> crypto.Identity:
    if not crypto.identity_exists(settings.home):
        raise ProfileError(f"no identity in {settings.home}: run 'reschat init --name NAME' first")
    return crypto.load_identity(settings.home, _password(args, env))


def _iso_utc(moment: Any) -> str | None:
    return None if moment is None else str(moment.astimezone(timezone.utc).isoformat())


def message_json(message: ChatMessage) -> dict[str, Any]:
    """A message as a JSON object; a file message's ``text`` is its label and ``file`` describes it."""
    is_file = message.type == files.FILE_TYPE
    text = message.text if message.type == "text" else files.message_label(message) if is_file else ""
    shown: dict[str, Any] = {
        "from": message.sender,
        "to": message.receiver,
        "time": _iso_utc(message.time),
        "type": message.type,
        "type_ext": message.type_ext,
        "text": text,
        "size": len(message.body),
        "seq": message.seq,
        "status": message.status,
        "verified": message.verified,
    }
    if is_file:
        try:
            info = files.describe(message)
        except PageFormatError:
            shown["file"] = None  # a damaged manifest: the label says so
        else:
            shown["file"] = {"name": info.name, "size": info.size, "sha256": info.sha256}
    return shown


def problem_json(problem: IntegrityProblem) -> dict[str, Any]:
    """An integrity problem in the message array: never verified, its own type, the lane it was in."""
    return {
        "from": problem.lane,
        "to": None,
        "time": _iso_utc(problem.time),
        "type": "integrity-problem",
        "kind": problem.kind,
        "text": problem.detail,
        "verified": False,
    }


# --- the commands --------------------------------------------------------------------------------


def cmd_menus(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ReschatError("the menus need a terminal; in scripts use the subcommands (see 'reschat --help')")
    from reschat.menus import Menus

    return Menus(settings).run()


def cmd_init(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    name = crypto.validate_name(args.name)
    if crypto.identity_exists(settings.home):
        raise ProfileError(f"an identity already exists in {settings.home}; use another --home for a new one")
    identity = crypto.create_keys(name, _password(args, env, new=True), settings.home)
    print(f"Created the identity of {neutralize(identity.name)} in {settings.home}")
    print(f"Fingerprint: {identity.fingerprint}")
    return ExitStatus.OK


def cmd_whoami(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    key = crypto.load_public_key(settings.home)
    print(crypto.make_card(crypto.load_name(settings.home), key))
    print(crypto.fingerprint(key))
    return ExitStatus.OK


def _card_text(card: str) -> str:
    if card == "-":
        return _read_stdin()
    stripped = card.strip()
    if stripped.startswith(crypto.CARD_PREFIX) or "-----BEGIN" in stripped:
        return card
    path = Path(card).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"cannot read {path}: {exc}") from exc
    if os.sep in card or card.endswith((".pem", ".card", ".txt")):
        raise ProfileError(f"no such file: {card}")
    return card


def cmd_add(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    friends = open_friend_store(settings)
    contact = crypto.parse_contact(_card_text(args.card))
    friend = friends.add_friend(args.nick, contact.public_key, contact.name)
    card_name = f" (name on the card: {neutralize(contact.name)})" if contact.name else ""
    print(f"Added {neutralize(friend.nickname)}{card_name}")
    print(f"Fingerprint: {crypto.fingerprint(contact.public_key)}")
    return ExitStatus.OK


def cmd_friends(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    store = open_friend_store(settings)
    friends = store.all_friends()
    try:
        counts = peek_unread_counts(crypto.load_public_key(settings.home), store, build_ledger(settings))
    except LedgerError as exc:
        print(f"reschat: warning: {neutralize(str(exc))}; unread counts are as of the last update", file=sys.stderr)
        counts = {friend.nickname: friend.unread for friend in friends}
    rows: list[dict[str, Any]] = [
        {
            "nickname": friend.nickname,
            "name": friend.name,
            "fingerprint": crypto.fingerprint(friend.key),
            "unread": counts.get(friend.nickname, friend.unread),
        }
        for friend in friends
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{neutralize(str(row['nickname']))}\t{row['fingerprint']}\t{row['unread']}")
    return ExitStatus.OK


def cmd_send(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    open_friend_store(settings).get_friend(args.nick)  # an unknown nickname fails before the password prompt
    if args.file is not None:
        path = Path(args.file).expanduser()
        if not path.exists():  # before the password prompt too; send_file checks the rest
            raise MessageError(f"no such file: {path}")
        result = open_chat(settings, _unlock(args, settings, env)).send_file(args.nick, path)
    else:
        text: str = _read_stdin().rstrip("\r\n") if args.text == "-" else args.text
        result = open_chat(settings, _unlock(args, settings, env)).send_message(text, args.nick)
    if result.error is not None:
        raise ReschatError(
            f"the message is saved but not yet on the ledger ({result.error}); "
            "it is re-sent by the next 'reschat read' or update"
        )
    what = f"{files.message_label(result.message)} " if args.file is not None else ""
    print(f"Sent {what}to {neutralize(result.message.receiver)}.")
    return ExitStatus.OK


def cmd_read(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    open_friend_store(settings).get_friend(args.nick)
    chat = open_chat(settings, _unlock(args, settings, env))
    view = chat.load_all(args.nick) if args.all else chat.get_update(args.nick)
    chat.mark_read(args.nick)
    if args.json:
        items = [(m.time, 0, message_json(m)) for m in view.messages]
        items += [(p.time, 1, problem_json(p)) for p in view.problems if p.time is not None]
        items.sort(key=lambda item: (item[0], item[1]))
        undated = [problem_json(p) for p in view.problems if p.time is None]
        print(json.dumps([item for _t, _o, item in items] + undated, indent=2))
    else:
        # Wrapped to the terminal (80 columns when it is not one): a row that the terminal or a pager
        # wraps by itself could pose as a message line.
        width = shutil.get_terminal_size().columns
        more = "'reschat read --full' shows it whole"
        for line in format_conversation(view.messages, view.problems, width=width, full=args.full, more=more):
            print(line)
        if view.has_older:
            print("reschat: older messages exist: use --all to read them", file=sys.stderr)
    return ExitStatus.OK


def cmd_save(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    open_friend_store(settings).get_friend(args.nick)
    chat = open_chat(settings, _unlock(args, settings, env))
    wanted: int = args.number
    view = chat.get_update(args.nick)
    found = [m for m in view.messages if m.type == files.FILE_TYPE]
    while len(found) < wanted and view.has_older:  # widen the window only as far as needed
        view = chat.load_older(args.nick)
        found = [m for m in view.messages if m.type == files.FILE_TYPE]
    if not found:
        raise MessageError(f"no file in the conversation with {args.nick}")
    if len(found) < wanted:
        raise MessageError(f"the conversation with {args.nick} has only {len(found)} file(s)")
    saved = chat.save_file(found[-wanted], ProfilePaths(settings.home).downloads)
    print(neutralize(str(saved)))
    return ExitStatus.OK


def cmd_doctor(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    report = run_doctor(settings)
    for line in format_report(report).splitlines():
        print(neutralize(line))  # details quote what the ledger tool said
    return ExitStatus.OK if report.ok else ExitStatus.ERROR
