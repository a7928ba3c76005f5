"""The ``reschat group ...`` and ``reschat groups`` subcommands, and group names for ``send`` and ``read``.

Group names live in the sealed group store, so every group command asks for the password. ``send`` and
``read`` take a friend's nickname first (before any prompt, as they always did) and fall back to a
group of that name here. Invitations that friends sent are picked up by ``reschat groups`` and by
``reschat group ...`` (one read of each friend's lane), and by the menus' friend list.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reschat import files, retention
from reschat.app import ProfilePaths, open_chat
from reschat.config import Settings
from reschat.errors import MessageError, ReschatError, UnknownFriendError
from reschat.group import GroupService
from reschat.render import format_conversation, neutralize

Adder = Callable[..., argparse.ArgumentParser]


def has_groups(settings: Settings) -> bool:
    """Whether this profile holds any group (the names are sealed; that there are some is not)."""
    return any((ProfilePaths(settings.home).lanes / "groups").glob("*.state"))


def _unknown(name: str) -> UnknownFriendError:
    return UnknownFriendError(f"no friend is called {name!r}, and no group either")

#: ``reschat group ACTION NAME [ARGS]``: the arguments each action takes after the group's name.
ACTIONS: dict[str, tuple[str, int, int]] = {
    "create": ("NICK...", 0, 31),
    "add": ("NICK", 1, 1),
    "remove": ("MEMBER", 1, 1),
    "leave": ("", 0, 0),
    "rename": ("NEW_NAME", 1, 1),
    "admin": ("MEMBER", 1, 1),
    "members": ("", 0, 0),
}


def add_commands(add: Adder) -> None:
    """Register ``group`` and ``groups`` with the parser's ``add`` helper (cli.build_parser)."""
    group = add("group", cmd_group, "create a group or change one: create NAME NICK..., add NAME NICK, "
                "remove NAME MEMBER, leave NAME, rename NAME NEW_NAME, admin NAME MEMBER, members NAME",
                password=True)
    group.add_argument("action", metavar="ACTION", choices=sorted(ACTIONS),
                       help="create, add, remove, leave, rename, admin or members")
    group.add_argument("name", metavar="NAME", help="the group's name (unique among your friends and groups)")
    group.add_argument("rest", metavar="ARG", nargs="*",
                       help="friends' nicknames (create, add), a member (remove, admin: a nickname, the name on "
                       "their card, or a fingerprint), or the new name (rename)")
    group.add_argument("--json", action="store_true", help="members: print a JSON array")
    groups = add("groups", cmd_groups, "list your groups (joining those friends invited you to): name, members, "
                 "unread count, your role", password=True)
    groups.add_argument("--json", action="store_true", help="print a JSON array")


def open_groups(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> GroupService:
    from reschat.cli import _unlock

    return GroupService(open_chat(settings, _unlock(args, settings, env)))


def the_group(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> GroupService:
    """The group service, when ``args.nick`` names a group (after taking invitations not picked up yet)."""
    service = open_groups(args, settings, env)
    if not service.is_group(args.nick) or service.waits_for_fresh_start(args.nick):
        service.accept_invitations()
    if not service.is_group(args.nick):
        raise _unknown(args.nick)
    return service


def cmd_groups(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    service = open_groups(args, settings, env)
    joined = service.accept_invitations()
    for name in joined:
        print(f"Joined {neutralize(name)} (a friend added you)", file=sys.stderr)
    rows = [{"name": g.name, "members": g.members, "unread": g.unread, "admin": g.admin,
             "status": g.status or "member", "epoch": g.epoch} for g in service.groups()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        role = "admin" if row["admin"] else row["status"]
        print(f"{neutralize(str(row['name']))}\t{row['members']} members\t{row['unread']} unread\t{role}")
    return 0


def cmd_group(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    action: str = args.action
    usage, low, high = ACTIONS[action]
    rest: list[str] = args.rest
    if not low <= len(rest) <= high:
        raise MessageError(f"usage: reschat group {action} NAME {usage}".rstrip())
    service = open_groups(args, settings, env)
    service.accept_invitations()
    name: str = args.name
    if action == "create":
        info = service.create(name, rest)
        print(f"Created {neutralize(info.name)} with {info.members} members; each friend you added is invited.")
        return 0
    if not service.is_group(name):
        raise UnknownFriendError(f"no group is called {name!r}")
    service.get_update(name)  # act on the newest membership
    if action == "add":
        if service.add(name, rest[0]):
            print(f"{neutralize(rest[0])} was a member of {neutralize(name)} already: invited again, with a fresh "
                  "start in a new epoch (for a member who lost their copy of the group); every member sees it.")
        else:
            print(f"Added {neutralize(rest[0])} to {neutralize(name)}: invited, and every member sees it.")
    elif action == "remove":
        service.remove(name, rest[0])
        print(f"Removed {neutralize(rest[0])} from {neutralize(name)}: a new epoch they cannot read.")
    elif action == "leave":
        service.leave(name)
        print(f"You left {neutralize(name)}.")
    elif action == "rename":
        service.rename(name, rest[0])
        print(f"Renamed {neutralize(name)} to {neutralize(rest[0])}.")
    elif action == "admin":
        service.make_admin(name, rest[0])
        print(f"{neutralize(rest[0])} is now an admin of {neutralize(name)}.")
    else:
        _print_members(service, name, as_json=bool(args.json))
    return 0


def _print_members(service: GroupService, name: str, *, as_json: bool) -> None:
    members = service.members(name)
    if as_json:
        print(json.dumps([{"name": m.label, "fingerprint": m.fingerprint, "admin": m.admin, "friend": m.friend,
                           "vouched_by": m.vouched_by or None} for m in members], indent=2))
        return
    for member in members:
        role = "admin" if member.admin else "member"
        how = "you" if member.label == "me" else "friend" if member.friend else f"vouched by {member.vouched_by}"
        print(f"{neutralize(member.label, max_chars=120)}\t{member.fingerprint}\t{role}\t{neutralize(how)}")


def send_to_group(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """``reschat send NAME ...`` when NAME is no friend: a group of that name, or the usual error."""
    service = the_group(args, settings, env)
    if args.file is not None:
        path = Path(args.file).expanduser()
        if not path.exists():
            raise MessageError(f"no such file: {path}")
        result = service.send_file(args.nick, path)
    else:
        text: str = sys.stdin.read().rstrip("\r\n") if args.text == "-" else args.text
        result = service.send_message(text, args.nick)
    if result.error is not None:
        raise ReschatError(f"the message is saved but not yet on the ledger ({result.error}); "
                           "it is re-sent by the next 'reschat read' or update")
    what = f"{files.message_label(result.message)} " if args.file is not None else ""
    print(f"Sent {what}to {neutralize(args.nick)}.")
    return 0


def read_group(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """``reschat read NAME`` when NAME is no friend: the group's conversation, each line with its writer."""
    from reschat.cli import message_json, problem_json

    service = the_group(args, settings, env)
    view = service.load_all(args.nick) if args.all else service.get_update(args.nick)
    service.mark_read(args.nick)
    if args.json:
        items: list[tuple[Any, int, dict[str, Any]]] = [(m.time, 0, message_json(m)) for m in view.messages]
        items += [(p.time, 1, problem_json(p)) for p in view.problems if p.time is not None]
        items.sort(key=lambda item: (item[0], item[1]))
        undated = [problem_json(p) for p in view.problems if p.time is None]
        print(json.dumps([item for _t, _o, item in items] + undated, indent=2))
        return 0
    width = shutil.get_terminal_size().columns
    for line in format_conversation(view.messages, view.problems, width=width, full=args.full,
                                    more="'reschat read --full' shows it whole"):
        print(line)
    return 0


def disappear_group(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """``reschat disappear NAME [DURATION]`` for a group: every member sees the change; the newest wins."""
    seconds = None if args.duration is None else retention.parse_duration(args.duration)
    service = open_groups(args, settings, env)
    if not service.is_group(args.nick):
        raise _unknown(args.nick)
    service.get_update(args.nick)  # the newest setting of any member first
    current = service.disappearing(args.nick)
    shown = neutralize(args.nick)
    if seconds is None or seconds == current:
        print(f"Disappearing messages in {shown}: {retention.describe(current)}")
        return 0
    result = service.set_disappearing(args.nick, seconds)
    if result.error is not None:
        raise ReschatError(f"the setting is saved but not yet on the ledger ({result.error}); "
                           "it is re-sent by the next 'reschat read' or update")
    print(f"Disappearing messages in {shown}: {retention.describe(seconds)} (from now on, for every member)")
    return 0
