"""One service for every conversation, pairs and groups alike, for the menus' friend list and chat screen.

``Conversations`` is a ``ChatService`` whose conversation methods take a friend's nickname or a
group's name (names are unique across both): a group's name goes to the group engine (group.py),
anything else to the pair engine, so the menus' third menu serves both unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reschat import crypto
from reschat.app import open_chat
from reschat.chat import ChatService, ConversationView, SendResult
from reschat.config import Settings
from reschat.group import GroupService
from reschat.ledger.base import Ledger


class Conversations(ChatService):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups = GroupService(self)

    def is_group(self, name: str) -> bool:
        return self.groups.is_group(name)

    def get_update(self, nickname: str) -> ConversationView:
        return self.groups.get_update(nickname) if self.is_group(nickname) else super().get_update(nickname)

    def load_older(self, nickname: str) -> ConversationView:
        return self.groups.load_older(nickname) if self.is_group(nickname) else super().load_older(nickname)

    def load_all(self, nickname: str) -> ConversationView:
        return self.groups.load_all(nickname) if self.is_group(nickname) else super().load_all(nickname)

    def send_message(
        self, message: str | bytes, nickname: str, *, msg_type: str = "text", type_ext: str = ""
    ) -> SendResult:
        if self.is_group(nickname):
            return self.groups.send_message(message, nickname, msg_type=msg_type, type_ext=type_ext)
        return super().send_message(message, nickname, msg_type=msg_type, type_ext=type_ext)

    def send_file(self, nickname: str, path: Path) -> SendResult:
        return self.groups.send_file(nickname, path) if self.is_group(nickname) else super().send_file(nickname, path)

    def mark_read(self, nickname: str) -> None:
        if self.is_group(nickname):
            self.groups.mark_read(nickname)
        else:
            super().mark_read(nickname)

    def disappearing(self, nickname: str) -> int:
        return self.groups.disappearing(nickname) if self.is_group(nickname) else super().disappearing(nickname)

    def set_disappearing(self, nickname: str, seconds: int) -> SendResult:
        if self.is_group(nickname):
            return self.groups.set_disappearing(nickname, seconds)
        return super().set_disappearing(nickname, seconds)

    def unread_counts(self) -> dict[str, int]:
        """Every friend's and every group's unread count; invitations read on the way are accepted."""
        counts = super().unread_counts()
        self.groups.accept_invitations(refresh=False)
        counts.update(self.groups.unread_counts())
        return counts


def open_conversations(settings: Settings, identity: crypto.Identity, ledger: Ledger | None = None) -> Conversations:
    """As ``app.open_chat``, with groups."""
    service = open_chat(settings, identity, ledger, service=Conversations)
    assert isinstance(service, Conversations)
    return service
