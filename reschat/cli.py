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
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reschat import __version__, crypto, files, groupcli, retention, safety
from reschat.app import ProfilePaths, open_chat, open_friend_store
from reschat.chat import ChatMessage, ChatService, IntegrityProblem, peek_unread_counts
from reschat.config import (
    Settings,
    card_location,
    config_target,
    describe_ledger,
    http_ledger,
    ledger_mismatch,
    load_settings,
    local_ledger,
    preview_config,
    tool_ledger,
    update_config,
)
from reschat.doctor import format_report, run_doctor
from reschat.errors import (
    DuplicateFriendError,
    LedgerError,
    MessageError,
    PageFormatError,
    ProfileError,
    ReschatError,
    UnknownFriendError,
)
from reschat.friends import Friend
from reschat.page import parse_timestamp
from reschat.passwords import check_new_password
from reschat.render import SETTING_TYPE, format_conversation, local_time, neutralize, setting_text
from reschat.storage import make_private_dirs

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
    parser.add_argument("--create", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="make the local ledger file if it does not exist (its folder must exist)")
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

    add_friend = add("add", cmd_add, "add a friend from their contact card (reschat-card:2:...)")
    add_friend.add_argument("nick", metavar="NICK", help="the nickname you will call them by")
    add_friend.add_argument("card", metavar="CARD", help="the card text, a file holding it, or - for stdin")
    choice = add_friend.add_mutually_exclusive_group()
    choice.add_argument("--replace", action="store_true",
                        help="replace NICK's key with the card's (after comparing the new safety number with them)")
    choice.add_argument("--different-person", action="store_true",
                        help="add the card although a friend has the same name on theirs with another key")

    friends = add(
        "friends", cmd_friends,
        "list friends: nickname, fingerprint, unread count as of the last update (and when that was), verified or not",
        password=True,
    )
    friends.add_argument("--json", action="store_true", help="print a JSON array (with each safety number)")
    friends.add_argument("--update", action="store_true",
                         help="read each friend's lane first, for fresh counts (needs the password)")

    verify = add("verify", cmd_verify, "show the safety number you and a friend compare by voice; mark them verified")
    verify.add_argument("nick", metavar="NICK")
    mark = verify.add_mutually_exclusive_group()
    mark.add_argument("--mark", action="store_true", help="mark NICK verified: you compared the number, it is the same")
    mark.add_argument("--unmark", action="store_true", help="mark NICK not verified")

    send = add("send", cmd_send, "send a message or a file", password=True)
    send.add_argument("nick", metavar="NICK", help="a friend's nickname or a group's name")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("text", metavar="TEXT", nargs="?", help="the message, or - to read it from stdin")
    what.add_argument("--file", metavar="PATH", help="send this file (at most 5 MiB) instead of a message")

    read = add("read", cmd_read, "print a conversation in time order (two most recent pages per lane)",
               password=True)
    read.add_argument("nick", metavar="NICK", help="a friend's nickname or a group's name")
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

    disappear = add("disappear", cmd_disappear,
                    "show or set the disappearing-messages timer of a conversation (both sides see the change)",
                    password=True)
    disappear.add_argument("nick", metavar="NICK", help="a friend's nickname or a group's name")
    disappear.add_argument("duration", metavar="DURATION", nargs="?",
                           help="5m, 1h, 2d, 4w (from 5 minutes to 4 weeks) or off; without it, show the timer")

    groupcli.add_commands(add)

    add("doctor", cmd_doctor, "check that the configured ledger works (a write and a read back) and the profile")

    ledger = add("ledger", cmd_ledger, "show where messages travel, or switch it: local, http or tool")
    kinds = ledger.add_subparsers(dest="kind", metavar="KIND", title="switch to")

    def switch(name: str, help_text: str) -> argparse.ArgumentParser:
        kind = kinds.add_parser(name, help=help_text, description=help_text + ". The new ledger is checked"
                                " first (a write and a read back, as 'reschat doctor' does) and kept only if it works.")
        _common_options(kind, top=False)
        kind.add_argument("--no-check", action="store_true", help="switch without checking the ledger first")
        return kind

    local = switch("local", "this machine only: the embedded SQLite ledger (the shared default file, or PATH)")
    local.add_argument("path", metavar="PATH", nargs="?", help="the SQLite file (default: one shared by all profiles)")
    http = switch("http", "a ResilientDB HTTP gateway (crow_service_main, port 18000)")
    http.add_argument("url", metavar="URL", help="the gateway's address, e.g. http://192.0.2.7:18000")
    tool = switch("tool", "a ResilientDB cluster through kv_service_tools and its client config")
    tool.add_argument("tool", metavar="TOOL", help="the kv_service_tools executable (a path, or a name on PATH)")
    tool.add_argument("client_config", metavar="CONFIG", help="the client config that names the cluster's proxy")
    tool.add_argument("--legacy", action="store_true", help="positional syntax (kv_service_tools v1.8 and older)")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def main(argv: list[str] | None = None, *, environ: MutableMapping[str, str] | None = None) -> int:
    """Run ``reschat`` with ``argv``; returns the exit status.

    ``environ`` (default: ``os.environ``) loses RESCHAT_PASSWORD as soon as it is read here, so that no
    process started later inherits it; the commands see a private copy.
    """
    source = os.environ if environ is None else environ
    env = dict(source)
    source.pop(PASSWORD_ENV, None)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed its text
        return int(exc.code) if isinstance(exc.code, int) else ExitStatus.USAGE
    debug: bool = args.debug
    try:
        settings = load_settings(home=args.home, config=args.config, ledger=args.ledger, environ=env)
        if args.create:
            settings = replace(settings, create_ledger=True)
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
        make_private_dirs(home)
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


def _password(
    args: argparse.Namespace, env: Mapping[str, str], *, new: bool = False, user_inputs: tuple[str, ...] = ()
) -> str:
    """The password: --password-file, else $RESCHAT_PASSWORD, else a hidden prompt on the terminal.

    A ``new`` password must pass ``passwords.check_new_password`` (the prompt asks again until it does).
    """
    if new and (args.password_file or env.get(PASSWORD_ENV)):
        password = _password(args, env)
        check_new_password(password, user_inputs=user_inputs)
        return password
    if getattr(args, "password_file", None):  # not every command takes it (whoami)
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
        return menus.ask_new_password(lambda line: print(line, file=sys.stderr), user_inputs=user_inputs)
    return menus.ask_password()


def _unlock(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> crypto.Identity:
    if not crypto.identity_exists(settings.home):
        raise ProfileError(f"no identity in {settings.home}: run 'reschat init --name NAME' first")
    return crypto.load_identity(settings.home, _password(args, env), location=card_location(settings))


def _deliver_the_rest(chat: ChatService, nickname: str) -> None:
    """After login, what waits in any other friend's outbox goes out too, as the menus do in the
    background (an update of each conversation that holds unconfirmed messages; nothing for the rest)."""
    try:
        chat.deliver_pending(besides=nickname)
    except ReschatError as exc:
        log.warning("what waits for other friends goes out next time: %s", exc)


def _iso_utc(moment: datetime | None) -> str | None:
    return None if moment is None else str(moment.astimezone(timezone.utc).isoformat())


def message_json(message: ChatMessage) -> dict[str, Any]:
    """A message as a JSON object; a file message's ``text`` is its label and ``file`` describes it."""
    is_file = message.type == files.FILE_TYPE
    text = message.text if message.type == "text" else files.message_label(message) if is_file else ""
    if message.type == SETTING_TYPE:
        text = setting_text(message)
    shown: dict[str, Any] = {
        "from": message.sender,
        "to": message.receiver,
        "time": _iso_utc(message.time),
        "type": message.type,
        "type_ext": message.type_ext,
        "text": text,
        "size": len(message.body),
        "seq": message.seq,
        "epoch": message.epoch,
        "status": message.status,
        # Still not returned by a ledger read after six times chat.resend_after (status "undelivered").
        "not_delivered_yet": message.status == "undelivered",
        # The engine returns only verified messages; problems carry "verified": false.
        "verified": True,
        "clock_ahead": message.clock_ahead,
    }
    if message.type == SETTING_TYPE:
        shown["disappear"] = retention.parse_setting(message.body)  # seconds (0: off), null: not understood
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

    # --ledger / RESCHAT_LEDGER already say where messages travel: the first run does not ask.
    chosen = bool(args.ledger or env.get("RESCHAT_LEDGER"))
    return Menus(settings, first_run_ledger=not chosen).run()


def cmd_init(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    name = crypto.validate_name(args.name)
    if crypto.identity_exists(settings.home):
        raise ProfileError(f"an identity already exists in {settings.home}; use another --home for a new one")
    identity = crypto.create_keys(name, _password(args, env, new=True, user_inputs=(name,)), settings.home,
                                  location=card_location(settings))
    print(f"Created the identity of {neutralize(identity.name)} in {settings.home}")
    print(f"Fingerprint: {identity.fingerprint}")
    return ExitStatus.OK


def cmd_whoami(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    key = crypto.load_public_key(settings.home)
    card = crypto.load_card(settings.home)
    if card is None:
        # An identity made before cards carried static keys gains them at its next unlock.
        card = _unlock(args, settings, env).card
    elif _card_location(card) != card_location(settings):
        # The ledger changed since the card was signed: a friend given the old card would be told to
        # use the old ledger. Signing it again needs the password; without one, say so and go on.
        try:
            card = _unlock(args, settings, env).card
        except ProfileError as exc:
            print(f"reschat: warning: this card still names your previous ledger ({exc}); give your password"
                  " once (any command that asks for it) to sign it for the ledger you use now", file=sys.stderr)
    print(card)
    print(crypto.fingerprint(key))
    return ExitStatus.OK


def _card_location(card: str) -> str | None:
    """The ledger our own stored card names (None if it does not parse: it is printed as it is)."""
    try:
        return crypto.parse_contact(card).location
    except ReschatError:
        return None


def _card_text(card: str) -> str:
    if card == "-":
        return _read_stdin()
    stripped = card.strip()
    if stripped.startswith(("reschat-card:", "-----BEGIN")):  # parse_contact names what is wrong
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


def _print_safety_number(own: Any, key: Any, heading: str) -> None:
    print(heading)
    for line in safety.safety_lines(safety.safety_number(own, key)):
        print(f"    {line}")


def cmd_add(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    friends = open_friend_store(settings)
    contact = crypto.parse_contact(_card_text(args.card))
    own = crypto.load_public_key(settings.home)
    nick: str = args.nick
    check = safety.check_card(friends, own, nick, contact.public_key, contact.name)
    card_name = f" (name on the card: {neutralize(contact.name)})" if contact.name else ""
    if check.kind == "own":
        raise DuplicateFriendError("that is your own key: add your friend's key instead")
    if check.kind == "known-key":
        assert check.friend is not None
        raise DuplicateFriendError(f"that key is already your friend {check.friend.nickname!r}")
    if check.kind == "same":
        assert check.friend is not None
        if safety.renews(check.friend, contact):
            friends.replace_key(check.friend.nickname, contact)
            friends.update(check.friend.nickname, verified=check.friend.verified)  # the same identity key
            print(f"{neutralize(check.friend.nickname)} already has this key; the card brings new static keys"
                  " (signed by that key): updated")
        else:
            print(f"{neutralize(check.friend.nickname)} already has this key: nothing changed")
        return ExitStatus.OK
    if args.replace and check.kind != "changed":
        raise UnknownFriendError(f"no friend is called {nick!r}: nothing to replace (add them without --replace)")
    if check.kind == "changed" and not args.replace:
        assert check.friend is not None
        shown = neutralize(check.friend.nickname)
        print(f"Old key (the one you have): {crypto.fingerprint(check.friend.key)}")
        print(f"New key (on this card):     {crypto.fingerprint(contact.public_key)}")
        _print_safety_number(own, contact.public_key, f"New safety number with {shown}, if you accept this card:")
        raise safety.KeyChangedError(
            f"the key on this card is NOT the key you have for {check.friend.nickname}: they may have a new key,"
            " or someone may be pretending to be them; compare the new safety number above with them by voice,"
            f" then run 'reschat add --replace {check.friend.nickname} CARD' to replace it"
        )
    if check.kind == "name-clash" and not args.different_person:
        assert check.friend is not None
        _print_safety_number(own, contact.public_key, "Safety number with this card's key:")
        raise safety.KeyChangedError(
            f"your friend {check.friend.nickname!r} goes by the name {contact.name!r} too, with another key:"
            f" if this is their new key, compare the safety number above with them by voice and run"
            f" 'reschat add --replace {check.friend.nickname} CARD'; if it is someone else, run"
            f" 'reschat add --different-person {nick} CARD'"
        )
    if check.kind == "changed":
        assert check.friend is not None
        friend = friends.replace_key(check.friend.nickname, contact)
        print(f"Replaced the key of {neutralize(friend.nickname)}{card_name}")
    else:
        friend = friends.add_friend(nick, contact)
        print(f"Added {neutralize(friend.nickname)}{card_name}")
    print(f"Fingerprint: {crypto.fingerprint(contact.public_key)}")
    for line in ledger_mismatch(settings, contact.location, friend.nickname):
        print(neutralize(line))
    _print_safety_number(own, contact.public_key, f"Safety number with {neutralize(friend.nickname)}:")
    print(f"{neutralize(friend.nickname)} is not verified: {safety.CHECKSUM_NOTE} Compare it with them by voice,"
          f" then run 'reschat verify {friend.nickname} --mark'.")
    return ExitStatus.OK


def _last_update(friend: Friend) -> datetime | None:
    try:
        return parse_timestamp(friend.updated) if friend.updated else None
    except PageFormatError:
        return None


def cmd_friends(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Unread counts are those of each friend's last verified update, and say so: fresh ones need the
    private keys, so only ``--update`` (which asks for the password) reads the ledger first."""
    store = open_friend_store(settings)
    if args.update and store.all_friends():
        open_chat(settings, _unlock(args, settings, env)).unread_counts()
    counts = peek_unread_counts(store)
    friends = store.all_friends()
    own = crypto.load_public_key(settings.home)
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    for friend in friends:
        updated = _last_update(friend)
        rows.append({
            "nickname": friend.nickname,
            "name": friend.name,
            "fingerprint": crypto.fingerprint(friend.key),
            "unread": counts.get(friend.nickname, friend.unread),
            # When the update that counted them ran (null: never): counts are as of the last update.
            "unread_as_of": _iso_utc(updated),
            "verified": friend.verified,
            "safety_number": safety.grouped(safety.safety_number(own, friend.key)),
        })
        when = f"as of the last update, {local_time(updated)}" if updated else "as of the last update (none yet)"
        status = safety.verification_label(friend)
        lines.append(f"{neutralize(friend.nickname)}\t{rows[-1]['fingerprint']}\t{rows[-1]['unread']}\t{when}\t{status}")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for line in lines:
            print(line)
    return ExitStatus.OK


def cmd_verify(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    friends = open_friend_store(settings)
    friend = friends.get_friend(args.nick)
    shown = neutralize(friend.nickname)
    _print_safety_number(crypto.load_public_key(settings.home), friend.key,
                         f"Safety number with {shown} (they see the same digits):")
    if args.mark or args.unmark:
        friend = friends.update(friend.nickname, verified=bool(args.mark))
        print(f"{shown} is now {safety.verification_label(friend)}.")
    elif friend.verified:
        print(f"{shown} is verified.")
    else:
        print(f"{shown} is not verified: compare the number with them by voice (on the phone or face to face);"
              f" if it is the same, run 'reschat verify {friend.nickname} --mark'.")
    return ExitStatus.OK


def cmd_send(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    try:
        open_friend_store(settings).get_friend(args.nick)  # an unknown nickname fails before the password prompt
    except UnknownFriendError:
        # Or a group's name, known only once unlocked (an invitation may wait to be picked up).
        return groupcli.send_to_group(args, settings, env)
    if args.file is not None:
        path = Path(args.file).expanduser()
        if not path.exists():  # before the password prompt too; send_file checks the rest
            raise MessageError(f"no such file: {path}")
        chat = open_chat(settings, _unlock(args, settings, env))
        result = chat.send_file(args.nick, path)
    else:
        text: str = _read_stdin().rstrip("\r\n") if args.text == "-" else args.text
        chat = open_chat(settings, _unlock(args, settings, env))
        result = chat.send_message(text, args.nick)
    _deliver_the_rest(chat, args.nick)
    if result.error is not None:
        raise ReschatError(
            f"the message is saved but not yet on the ledger ({result.error}); "
            "it is re-sent by the next 'reschat read' or update"
        )
    what = f"{files.message_label(result.message)} " if args.file is not None else ""
    print(f"Sent {what}to {neutralize(result.message.receiver)}.")
    return ExitStatus.OK


def cmd_read(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    try:
        open_friend_store(settings).get_friend(args.nick)
    except UnknownFriendError:
        return groupcli.read_group(args, settings, env)
    chat = open_chat(settings, _unlock(args, settings, env))
    view = chat.load_all(args.nick) if args.all else chat.get_update(args.nick)
    chat.mark_read(args.nick)
    _deliver_the_rest(chat, args.nick)
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


def cmd_disappear(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Show the timer, or set it: a signed ``setting`` line in the conversation that both sides see."""
    try:
        friend = open_friend_store(settings).get_friend(args.nick)  # before the password prompt, as the duration
    except UnknownFriendError:
        if not groupcli.has_groups(settings):
            raise  # no group joined yet: the one-line error, before any password prompt
        return groupcli.disappear_group(args, settings, env)
    seconds = None if args.duration is None else retention.parse_duration(args.duration)
    shown = neutralize(friend.nickname)
    chat = open_chat(settings, _unlock(args, settings, env))
    current = chat.disappearing(friend.nickname)
    if seconds is None:
        print(f"Disappearing messages with {shown}: {retention.describe(current)}")
        return ExitStatus.OK
    if seconds == current:
        print(f"Disappearing messages with {shown} are already {retention.describe(current)}: nothing changed")
        return ExitStatus.OK
    result = chat.set_disappearing(friend.nickname, seconds)
    if result.error is not None:
        raise ReschatError(
            f"the setting is saved but not yet on the ledger ({result.error}); "
            "it is re-sent by the next 'reschat read' or update"
        )
    if seconds:
        print(f"Disappearing messages with {shown}: {retention.describe(seconds)} (from now on, on both sides)")
    else:
        print(f"Disappearing messages with {shown}: off (from now on, on both sides)")
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


def cmd_ledger(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    overridden = bool(getattr(args, "ledger", None) or env.get("RESCHAT_LEDGER"))
    if args.kind is None:
        print(f"Ledger: {neutralize(describe_ledger(settings))}")
        if overridden:
            print("Set by: --ledger or RESCHAT_LEDGER (they win over the config file)")
        elif settings.config_file is not None:
            print(f"Set in: {settings.config_file}")
        else:
            print(f"Set in: nothing, it is the default (a switch writes {config_target(settings)})")
        print("Check it with 'reschat doctor'; switch with 'reschat ledger local|http|tool ...'.")
        return ExitStatus.OK
    if args.kind == "local":
        changes = local_ledger(args.path)
    elif args.kind == "http":
        changes = http_ledger(args.url)
    else:
        changes = tool_ledger(args.tool, args.client_config, legacy=args.legacy)
    chosen = replace(preview_config(settings, changes), create_ledger=settings.create_ledger)  # --create counts
    if not args.no_check:
        report = run_doctor(chosen, check_profile=False)
        if not report.ok:
            for line in format_report(report).splitlines():
                print(neutralize(line))
            raise LedgerError(
                f"{report.problems[0].name}: {report.problems[0].detail}: not switched, the ledger is still"
                f" {describe_ledger(settings)} (fix it, or switch anyway with --no-check)"
            )
    written = update_config(config_target(settings), changes)
    print(f"Ledger: {neutralize(describe_ledger(chosen))}")
    print("Checked: a write and a read back work." if not args.no_check else "Not checked: run 'reschat doctor'.")
    print(f"Saved in {written.path}")
    if written.backup is not None:
        print(f"(the file had comments, which a rewrite cannot keep: the old file is {written.backup})")
    if overridden:
        print("reschat: warning: --ledger or RESCHAT_LEDGER is set and still wins over this setting", file=sys.stderr)
    return ExitStatus.OK
