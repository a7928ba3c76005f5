"""The outbox: what a writer keeps of its own lane (ciphertext and page secrets, inside the key store).

Sending appends to the local copy of the current page, never to a possibly stale read, so a send is
one ledger write and no read. A page stays here until a ledger read returned all of its records
(then it is *confirmed*); a page still unconfirmed ``resend_after`` seconds after its last write is
written again, with the same bytes, so a reader never sees a message twice. The page secrets of our
own pages stay (unless disappearing messages drop them) so that our own history can be read back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from reschat.errors import ProfileError
from reschat.page import GENESIS_HASH


def page_id(epoch: int, number: int) -> str:
    return f"{epoch}:{number}"


@dataclass
class OwnLane:
    epoch: int = 0  # 0: the lane has not been started (or must be restarted) by this profile
    page: int = 0
    seq: int = 0
    head: str = GENESIS_HASH.hex()  # digest of our newest record
    last_time: str = ""
    confirmed: int = 0  # every record up to this sequence number was returned by a ledger read
    pages: dict[str, str] = field(default_factory=dict)  # page number -> value, current and unconfirmed
    written_at: dict[str, str] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)  # page number -> its newest sequence number
    secrets: dict[str, str] = field(default_factory=dict)  # "epoch:page" -> page secret (hex)
    restart_needed: str = ""  # why the next send starts a new epoch (another copy of us wrote here)
    restored: int = 0  # pages re-written since the ledger lost them (self-healing)
    #: Pages written whose exact value no ledger read has returned yet (key-only pages included).
    unseen: list[str] = field(default_factory=list)
    #: Disappearing messages: "epoch:page" -> the sending time (microseconds) of each of its records.
    record_times: dict[str, list[int]] = field(default_factory=dict)
    #: File chunks no ledger read has returned yet: ledger key -> when last written ("": not written
    #: yet). Their values are in the kept copies (``keystore.PageCopies``); a lane restart keeps them.
    chunks: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> OwnLane:
        if not isinstance(data, dict):
            return cls()
        try:
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise ProfileError("the outbox is damaged") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def unconfirmed(self) -> list[int]:
        """Numbers of kept pages that no read has returned as written yet."""
        return sorted(
            int(n) for n in self.pages if self.last_seq.get(n, 0) > self.confirmed or n in self.unseen
        )

    def unconfirmed_messages(self) -> int:
        """How many of our messages no ledger read has returned yet."""
        return max(self.seq - self.confirmed, 0) if self.epoch else 0

    def prune(self) -> None:
        """Keep the current page and pages not yet confirmed by a ledger read."""
        self.unseen = [n for n in self.unseen if n in self.pages]
        for number in list(self.pages):
            if int(number) != self.page and self.last_seq.get(number, 0) <= self.confirmed \
                    and number not in self.unseen:
                del self.pages[number]
                self.written_at.pop(number, None)
                self.last_seq.pop(number, None)

    def restart(self, epoch: int) -> None:
        """Begin epoch ``epoch``: nothing of the old epoch is appended to or re-sent again."""
        self.epoch, self.page, self.seq, self.head = epoch, 0, 0, GENESIS_HASH.hex()
        self.confirmed = 0
        self.unseen = []
        self.pages.clear()
        self.written_at.clear()
        self.last_seq.clear()
        self.restart_needed = ""
