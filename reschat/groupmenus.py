"""The menus' group screens: create a group, and a group's members and settings (the chat's item 7).

A group's chat is the menus' third menu itself (``Conversations`` sends a group's name to the group
engine); only its item 7 differs, "Group members and settings" instead of disappearing messages.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from reschat import crypto, retention, safety
from reschat.errors import MessageError, ReschatError, UnknownFriendError
from reschat.group import GroupService, MemberInfo
from reschat.render import neutralize

if TYPE_CHECKING:
    from reschat.menus import Menus, _Screen

GROUP_ITEM = "Group members and settings"
GROUP_MENU = (
    "Members", "Add a member (one of your friends)", "Remove a member", "Make a member an admin",
    "Rename the group", "Leave the group", "Disappearing messages", "Previous menu",
)


def groups_of(menus: Menus) -> GroupService | None:
    from reschat.conversations import Conversations

    chat = menus.chat
    return chat.groups if isinstance(chat, Conversations) else None


def is_group(menus: Menus, name: str) -> bool:
    groups = groups_of(menus)
    return groups is not None and groups.is_group(name)


def is_group_holder(menus: Menus) -> bool:
    """True when the profile has a group (a friend list without friends still lists it)."""
    groups = groups_of(menus)
    return groups is not None and bool(groups.names())


def friend_list_items(menus: Menus, counts: dict[str, int]) -> tuple[list[str], list[str]]:
    """(names, labels) of the groups, for the friend list after the friends."""
    groups = groups_of(menus)
    if groups is None:
        return [], []
    names, labels = [], []
    for info in groups.groups():
        unread = counts.get(info.name, info.unread)
        state = f", {info.status}" if info.status else ""
        names.append(info.name)
        labels.append(f"{neutralize(info.name)} [group, {info.members} members{state}]"
                      + (f" ({unread} unread)" if unread else ""))
    return names, labels


def group_header(menus: Menus, name: str) -> list[str]:
    groups = groups_of(menus)
    assert groups is not None
    members = groups.members(name)
    others = ", ".join(neutralize(m.label.split(" (vouched")[0], max_chars=32) for m in members if m.label != "me")
    role = "admin" if any(m.label == "me" and m.admin for m in members) else "member"
    return [f"Group {neutralize(name)} ({len(members)} members, you are {role}): {others}",
            f"Each line shows who wrote it; item 7: {GROUP_ITEM.lower()}."]


def create_group(menus: Menus) -> None:
    """Main menu 5: name a group and pick its members from the friend list; they are invited at once."""
    from reschat.menus import ask, match_nickname

    groups = groups_of(menus)
    assert groups is not None
    nicknames = menus.chat.friends.get_all_friend()
    if not nicknames:
        menus.say("You have no friends yet: add a friend first (main menu 2).")
        return
    name = ask("Group name (empty: cancel): ").strip()
    if not name:
        menus.say("No group created.")
        return
    menus.show("Your friends:", *(f"  {n}. {neutralize(nick)}" for n, nick in enumerate(nicknames, 1)))
    typed = ask("Members (numbers or nicknames, separated by spaces or commas): ").strip()
    picked: list[str] = []
    for token in (t for t in re.split(r"[,\s]+", typed) if t):
        if token.isdigit() and 1 <= int(token) <= len(nicknames):
            picked.append(nicknames[int(token) - 1])
        else:
            picked.append(match_nickname(token, nicknames))
    if not picked:
        menus.say("No members chosen: no group created.")
        return
    info = groups.create(name, picked)
    menus.show(f"Created {neutralize(info.name)} with {info.members} members; each friend you picked is invited."
               " Open it from 'Start chatting'.")


def group_settings(menus: Menus, screen: _Screen) -> None:
    """The chat's item 7 in a group: members, and the admin's and every member's actions."""
    from reschat.menus import ask

    groups = groups_of(menus)
    assert groups is not None
    number = menus._choose(f"{neutralize(screen.nickname)}: members and settings", GROUP_MENU)
    if number is None or number == len(GROUP_MENU):
        return
    try:
        if number == 1:
            show_members(menus, groups, screen.nickname)
        elif number == 2:
            nickname = ask("Friend to add (nickname): ").strip()
            if nickname:
                with menus._chat_lock:
                    groups.get_update(screen.nickname)
                    again = groups.add(screen.nickname, nickname)
                menus.show(f"{neutralize(nickname)} was a member already: invited again with a fresh start "
                           "(for a member who lost their copy of the group)." if again
                           else f"Added {neutralize(nickname)}: they are invited, and every member sees it.")
        elif number in (3, 4):
            who = ask("Member (nickname, name on their card, or fingerprint): ").strip()
            if who:
                with menus._chat_lock:
                    groups.get_update(screen.nickname)
                    if number == 3:
                        groups.remove(screen.nickname, who)
                    else:
                        groups.make_admin(screen.nickname, who)
                menus.show(f"Removed {neutralize(who)}: a new epoch they cannot read." if number == 3
                           else f"{neutralize(who)} is now an admin.")
        elif number == 5:
            new_name = ask("New name: ").strip()
            if new_name:
                with menus._chat_lock:
                    groups.get_update(screen.nickname)
                    groups.rename(screen.nickname, new_name)
                    screen.nickname = groups._state(new_name).name
                menus.show(f"Renamed to {neutralize(screen.nickname)}.")
        elif number == 7:
            set_timer(menus, groups, screen)
        elif number == 6 and menus.confirm(f"Leave {neutralize(screen.nickname)}? You will read nothing new [y/n]: "):
            with menus._chat_lock:
                groups.leave(screen.nickname)
            menus.show(f"You left {neutralize(screen.nickname)}.")
    except (MessageError, UnknownFriendError) as exc:
        menus.error(exc)
    except ReschatError as exc:
        menus.error(exc)


def show_members(menus: Menus, groups: GroupService, name: str) -> None:
    lines = []
    members = groups.members(name)
    for member in members:
        role = "admin" if member.admin else "member"
        how = "you" if member.label == "me" else "your friend" if member.friend \
            else f"not your friend, vouched by {member.vouched_by}"
        lines.append(f"  {neutralize(member.label, max_chars=120)}: {role}, {neutralize(how)}")
        lines.append(f"      fingerprint {member.fingerprint}")
    menus.show(f"Members of {neutralize(name)}:", *lines)
    strangers = [m for m in members if not m.friend and m.label != "me" and m.card]
    if strangers:
        befriend_member(menus, strangers)


def befriend_member(menus: Menus, strangers: list[MemberInfo]) -> None:
    """Offer to add a member who is not a friend from the card an admin's roster carried for them: the
    same safety number and confirmation as a pasted card, since an admin's word is not a verification."""
    items = [f"Add {neutralize(m.label, max_chars=80)} as your friend" for m in strangers] + ["No, go back"]
    number = menus._choose("Members who are not your friends (vouched for by an admin):", items)
    if number is None or number == len(items):
        return
    member = strangers[number - 1]
    contact = crypto.parse_contact(member.card)  # verified when the roster was read; parsed again here
    nickname = menus._ask_nickname()
    if nickname is None:
        return
    check = safety.check_card(menus.chat.friends, menus.chat.identity.public_key, nickname,
                              contact.public_key, contact.name)
    if check.kind != "new":
        other = check.friend.nickname if check.friend is not None else nickname
        reason = {
            "changed": f"you already have a friend called {other!r}: choose another nickname",
            "name-clash": f"your friend {other!r} goes by the name {contact.name!r} too, with another key: this"
                          " may be someone pretending to be them",
            "own": "that is your own key",
        }.get(check.kind, f"that key is already your friend {other!r}")
        menus.error(f"{reason}; nothing added")
        return
    menus.say(f"Fingerprint: {crypto.fingerprint(contact.public_key)}",
              f"This card was vouched for by {neutralize(member.vouched_by)}, an admin of the group: that is"
              " their word, not a verification.")
    menus.offer_to_add(nickname, contact)


def set_timer(menus: Menus, groups: GroupService, screen: _Screen) -> None:
    """The group's disappearing-messages timer, for every member: a signed line all see; the newest wins."""
    from reschat.menus import ask

    current = groups.disappearing(screen.nickname)
    menus.show(f"Disappearing messages in {neutralize(screen.nickname)}: {retention.describe(current)}.")
    typed = ask("New timer (5m, 1h, 2d, 4w, or off; empty: keep it): ").strip()
    if not typed:
        menus.say("Nothing changed.")
        return
    seconds = retention.parse_duration(typed)
    with menus._chat_lock:
        result = groups.set_disappearing(screen.nickname, seconds)
    menus.show(f"Disappearing messages in {neutralize(screen.nickname)}: {retention.describe(seconds)}"
               " (from now on, for every member).")
    if result.error is not None:
        menus.error(f"not written to the ledger yet ({result.error}); it is re-sent on the next update")
