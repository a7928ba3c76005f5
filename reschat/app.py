"""Wiring: the only place that turns settings into real objects (ledger, friend store, chat service).

The CLI and the menus call these; tests build the same objects directly with their own seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from reschat import crypto
from reschat.chat import ChatService
from reschat.config import Settings
from reschat.errors import ConfigError
from reschat.friends import FriendStore
from reschat.ledger import Ledger, LocalLedger


@dataclass(frozen=True)
class ProfilePaths:
    """Where one profile keeps its files (all private to the user, mode 0600/0700)."""

    home: Path

    @property
    def friends(self) -> Path:
        return self.home / "friends.json"

    @property
    def lanes(self) -> Path:
        """The local key and history store: one sealed state file per conversation (``keystore``)."""
        return self.home / "lanes"

    @property
    def downloads(self) -> Path:
        return self.home / "downloads"


def build_ledger(settings: Settings) -> Ledger:
    """The ledger backend the settings name."""
    backend = settings.ledger.backend
    if backend == "local":
        # The default file (and its folder) is made on a first run with no question. A file the user
        # named, or the default one once this profile has conversations (it was deleted), only on
        # --create or the menus' question: a lost ledger is said, never silently replaced by an empty one.
        default = not settings.ledger.path
        first_run = not any(ProfilePaths(settings.home).lanes.glob("*.state"))
        create = settings.create_ledger or (default and first_run)
        return LocalLedger(settings.ledger_path, create=create, make_folders=default)
    if backend == "resilientdb":
        from reschat.ledger.resilientdb import ResilientDBLedger

        rdb = settings.ledger.resilientdb
        if not rdb.client_config:
            raise ConfigError("ledger.resilientdb.client_config is not set: point it at the client config file")
        return ResilientDBLedger(
            rdb.tool, Path(rdb.client_config).expanduser(), syntax=rdb.syntax,  # type: ignore[arg-type]
            timeout_s=rdb.timeout,
        )
    if backend == "resilientdb-http":
        from reschat.ledger.http import ResilientDBHttpLedger

        return ResilientDBHttpLedger(settings.ledger.http.url, timeout_s=settings.ledger.http.timeout)
    raise ConfigError(f"unknown ledger backend {backend!r}")


def open_friend_store(settings: Settings) -> FriendStore:
    """The friend store, knowing our own key so that it can refuse it as a friend."""
    own = crypto.fingerprint_bytes(crypto.load_public_key(settings.home)).hex()
    return FriendStore(ProfilePaths(settings.home).friends, own_fingerprint=own)


def open_chat(
    settings: Settings, identity: crypto.Identity, ledger: Ledger | None = None,
    service: type[ChatService] = ChatService,
) -> ChatService:
    """A chat service for an unlocked identity (``service``: ChatService, or a subclass of it)."""
    paths = ProfilePaths(settings.home)
    return service(
        identity,
        open_friend_store(settings),
        ledger if ledger is not None else build_ledger(settings),
        paths.lanes,
        resend_after=timedelta(seconds=settings.chat.resend_after),
    )
