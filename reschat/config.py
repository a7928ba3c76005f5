"""Settings: built-in defaults, overlaid by a TOML file, overlaid by flags and environment.

Lookup order for the file: ``--config`` / ``RESCHAT_CONFIG``, then ``config.toml`` in the profile
directory, then none. Unknown keys and wrong types are errors that name the key and the file, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from reschat.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

APP_NAME = "reschat"
BACKENDS = ("local", "resilientdb", "resilientdb-http")


def default_data_dir() -> Path:
    """The OS user's data directory for ResChat (shared by every profile of that user)."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class ResilientDBSettings:
    tool: str = "kv_service_tools"
    client_config: str = ""
    syntax: str = "flags"  # "flags" (v1.9+) or "legacy" (positional, v1.8 and older)
    timeout: float = 10.0


@dataclass(frozen=True)
class HttpSettings:
    url: str = "http://127.0.0.1:18000"
    timeout: float = 10.0


@dataclass(frozen=True)
class LedgerSettings:
    backend: str = "local"
    path: str = ""  # local backend: the SQLite file; empty means the shared default
    resilientdb: ResilientDBSettings = field(default_factory=ResilientDBSettings)
    http: HttpSettings = field(default_factory=HttpSettings)


@dataclass(frozen=True)
class ChatSettings:
    poll_interval: float = 2.0  # seconds between background updates while a chat is open
    resend_after: float = 10.0  # seconds before an unconfirmed message is written again
    bell: bool = False  # ring the terminal bell when a new message arrives


@dataclass(frozen=True)
class Settings:
    home: Path
    config_file: Path | None = None
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)

    @property
    def ledger_path(self) -> Path:
        if self.ledger.path:
            return Path(self.ledger.path).expanduser()
        return default_data_dir() / "ledger.sqlite"


def _check_table(cls: type, table: Any, where: str, file: Path) -> dict[str, Any]:
    """Validate one TOML table against a settings dataclass; return the converted values."""
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"{file}: unknown setting '{dotted}'")
        default = known[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{file}: '{dotted}' must be true or false, not {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{file}: '{dotted}' must be a string, not {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{file}: '{dotted}' must be a positive number, not {value!r}")
            value = float(value)
        else:
            raise ConfigError(f"{file}: '{dotted}' must be a table")
        values[key] = value
    return values


def _parse(data: dict[str, Any], file: Path, base: Settings) -> Settings:
    top = dict(data)
    unknown = set(top) - {"ledger", "chat"}
    if unknown:
        raise ConfigError(f"{file}: unknown section or setting '{sorted(unknown)[0]}'")
    ledger_table = dict(top.get("ledger", {})) if isinstance(top.get("ledger", {}), dict) else None
    if ledger_table is None:
        raise ConfigError(f"{file}: [ledger] must be a table")
    rdb = _check_table(ResilientDBSettings, ledger_table.pop("resilientdb", {}), "ledger.resilientdb", file)
    http = _check_table(HttpSettings, ledger_table.pop("http", {}), "ledger.http", file)
    plain = _check_table(LedgerSettings, ledger_table, "ledger", file)
    chat = _check_table(ChatSettings, top.get("chat", {}), "chat", file)
    ledger = replace(
        base.ledger,
        **plain,
        resilientdb=replace(base.ledger.resilientdb, **rdb),
        http=replace(base.ledger.http, **http),
    )
    settings = replace(base, ledger=ledger, chat=replace(base.chat, **chat), config_file=file)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    where = settings.config_file or "settings"
    if settings.ledger.backend not in BACKENDS:
        raise ConfigError(f"{where}: 'ledger.backend' must be one of {', '.join(BACKENDS)}, "
                          f"not {settings.ledger.backend!r}")
    if settings.ledger.resilientdb.syntax not in ("flags", "legacy"):
        raise ConfigError(f"{where}: 'ledger.resilientdb.syntax' must be 'flags' or 'legacy'")


def load_file(path: Path, base: Settings) -> Settings:
    """Overlay the TOML file at ``path`` on ``base``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is no error
    except UnicodeDecodeError as exc:
        head = raw[: exc.start]
        line, column = head.count(b"\n") + 1, exc.start - head.rfind(b"\n")
        raise ConfigError(
            f"{path}: not valid UTF-8 (line {line}, column {column}): save the file as UTF-8"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return _parse(data, path, base)


def load_settings(
    *,
    home: str | None = None,
    config: str | None = None,
    ledger: str | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Resolve the settings: flags win over the environment, which wins over the file."""
    env = os.environ if environ is None else environ
    home_dir = Path(home or env.get("RESCHAT_HOME") or default_data_dir() / "profile").expanduser()
    settings = Settings(home=home_dir)
    config_path = config or env.get("RESCHAT_CONFIG")
    if config_path:
        settings = load_file(Path(config_path).expanduser(), settings)
    elif (home_dir / "config.toml").is_file():
        settings = load_file(home_dir / "config.toml", settings)
    ledger_path = ledger or env.get("RESCHAT_LEDGER")
    if ledger_path:
        # --ledger PATH always means the embedded ledger in that file.
        settings = replace(settings, ledger=replace(settings.ledger, backend="local", path=ledger_path))
    return settings
