"""Settings: built-in defaults, overlaid by a TOML file, overlaid by flags and environment.

Lookup order for the file: ``--config`` / ``RESCHAT_CONFIG``, then ``config.toml`` in the profile
directory, then none. Unknown keys and wrong types are errors that name the key and the file, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from reschat.errors import ConfigError
from reschat.storage import atomic_write

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
    #: --create: make the local ledger file when it does not exist (never its folder).
    create_ledger: bool = False

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


# --- writing ---------------------------------------------------------------------------------------
# The standard library reads TOML but does not write it. ResChat only ever writes a few tables of
# strings and numbers, so a small writer is enough and avoids a dependency; every value it writes is
# read back through tomllib and the settings checks before the file is replaced.

CONFIG_FILE = "config.toml"

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            # A file name that is not valid UTF-8 reaches Python as lone surrogates; TOML is UTF-8.
            raise ConfigError(f"cannot store {text!r} in the config file: it is not valid UTF-8")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if key and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in key) else toml_string(key)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item, where) for item in value) + "]"
    raise ConfigError(f"cannot write the setting '{where}' ({type(value).__name__}) to a config file")


def dump_toml(data: dict[str, Any]) -> str:
    """``data`` (tables of strings, numbers, booleans and lists) as TOML text."""
    lines: list[str] = []

    def table(values: dict[str, Any], path: list[str]) -> None:
        plain = [(k, v) for k, v in values.items() if not isinstance(v, dict)]
        nested = [(k, v) for k, v in values.items() if isinstance(v, dict)]
        if path and (plain or not nested):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(part) for part in path) + "]")
        for key, value in plain:
            lines.append(f"{_toml_key(key)} = {_toml_value(value, '.'.join([*path, key]))}")
        for key, value in nested:
            table(value, [*path, key])

    table(data, [])
    return "\n".join(lines) + "\n"


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The data and the text of an existing config file; ({}, "") when there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is no error, as in load_file
        return tomllib.loads(text), text
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8; fix or remove the file first") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix or remove the file first") from exc


@dataclass(frozen=True)
class ConfigWrite:
    """What ``update_config`` did: the file written, and where the old text went if it had comments."""

    path: Path
    backup: Path | None = None


def update_config(path: Path, changes: dict[str, Any]) -> ConfigWrite:
    """Merge ``changes`` (nested tables) into the TOML file at ``path`` and write it atomically.

    Other settings in the file are kept. The result is checked as a config before the file is
    replaced, so a bad value never reaches the disk. Comments cannot be carried over by a rewrite:
    a file that had any is first copied to ``<name>.bak``.
    """
    data, text = _read_toml(path)
    merged = _merge(data, changes)
    rendered = dump_toml(merged)
    _parse(tomllib.loads(rendered), path, Settings(home=path.parent))  # raises ConfigError on a bad value
    backup = None
    if any(line.lstrip().startswith("#") for line in text.splitlines()):
        backup = path.with_name(path.name + ".bak")
        atomic_write(backup, text.encode("utf-8"))
    atomic_write(path, rendered.encode("utf-8"))
    return ConfigWrite(path, backup)


def config_target(settings: Settings) -> Path:
    """The file a setting is written to: the config in use, else ``config.toml`` in the profile."""
    return settings.config_file if settings.config_file is not None else settings.home / CONFIG_FILE


def describe_ledger(settings: Settings) -> str:
    """Where messages travel, in a few words (one line)."""
    ledger = settings.ledger
    if ledger.backend == "resilientdb-http":
        return f"ResilientDB HTTP gateway at {ledger.http.url}"
    if ledger.backend == "resilientdb":
        rdb = ledger.resilientdb
        syntax = ", legacy syntax" if rdb.syntax == "legacy" else ""
        return f"ResilientDB through {rdb.tool} with the client config {rdb.client_config or '(not set)'}{syntax}"
    return f"this machine only, the file {settings.ledger_path}"


#: What a card says about a ledger that is not a gateway: only its kind. A local file's path or a tool's
#: set-up files mean nothing on a friend's machine, and would tell them about ours.
LOCAL_CARD_LOCATION = "local"
TOOL_CARD_LOCATION = "resilientdb kv_service_tools"


def card_location(settings: Settings) -> str:
    """Where our messages travel, as our contact card says it (signed with the card)."""
    ledger = settings.ledger
    if ledger.backend == "resilientdb-http":
        return ledger.http.url
    if ledger.backend == "resilientdb":
        return TOOL_CARD_LOCATION
    return LOCAL_CARD_LOCATION


def ledger_mismatch(settings: Settings, theirs: str, nickname: str) -> list[str]:
    """Lines that warn when a friend's card names another ledger than ours, with the command that
    switches; nothing when the card names none, or one we cannot tell apart from ours (two local
    files, two kv_service_tools set-ups). ``theirs`` came from a card (printable, its parser checks):
    the caller shows each line through ``render.neutralize`` all the same."""
    ours = card_location(settings)
    if not theirs or theirs == ours or (theirs == TOOL_CARD_LOCATION and ours == TOOL_CARD_LOCATION):
        return []
    yours = f"yours travel through {describe_ledger(settings)}"
    if theirs.startswith(("http://", "https://")):
        where = f"the ResilientDB gateway at {theirs}"
        switch = f"To use theirs: reschat ledger http {theirs}"
    elif theirs == LOCAL_CARD_LOCATION:
        where = "their own machine only (the embedded ledger)"
        switch = "Unless you share that machine, agree on a ResilientDB ledger: reschat ledger http URL (both of you)"
    elif theirs == TOOL_CARD_LOCATION:
        where = "a ResilientDB cluster through kv_service_tools"
        switch = "Ask them for the cluster's gateway URL or client config, then: reschat ledger http URL" \
                 " (or: reschat ledger tool kv_service_tools CONFIG)"
    else:
        where = f"a ledger this version does not know ({theirs})"
        switch = "Ask them where their messages travel: reschat ledger shows yours"
    return [
        f"Warning: {nickname}'s card says their messages travel through {where}; {yours}.",
        f"You will not see each other's messages until you both use the same ledger. {switch}",
    ]


# --- choosing the ledger (the first-run question and `reschat ledger`) -----------------------------


def _absolute(path: str) -> str:
    # Stored absolute: a relative path would mean something else from another working directory.
    return os.path.abspath(os.path.expanduser(path.strip()))


def local_ledger(path: str | None = None) -> dict[str, Any]:
    """Settings changes for the embedded ledger: ``path``, or the shared default file."""
    return {"ledger": {"backend": "local", "path": _absolute(path) if path and path.strip() else ""}}


def http_ledger(url: str) -> dict[str, Any]:
    """Settings changes for a ResilientDB HTTP gateway at ``url``."""
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{url!r} is not an http(s) URL: give the gateway's address, e.g. http://192.0.2.7:18000")
    if parts.username is not None or parts.password is not None:
        # The gateway has no accounts, and a password must never sit on a command line or in a file.
        raise ConfigError("the gateway URL must not carry a user name or password: give only http://HOST:PORT")
    return {"ledger": {"backend": "resilientdb-http", "http": {"url": url}}}


def tool_ledger(tool: str, client_config: str, *, legacy: bool = False) -> dict[str, Any]:
    """Settings changes for ResilientDB through ``kv_service_tools`` and its client config."""
    tool = tool.strip() or ResilientDBSettings.tool
    if not client_config.strip():
        raise ConfigError("the client config is required: the file that names the cluster's proxy (node 5)")
    # A bare name is looked up on PATH when the tool runs; anything with a slash is a path.
    named = tool if os.sep not in tool and not tool.startswith("~") else _absolute(tool)
    table = {"tool": named, "client_config": _absolute(client_config), "syntax": "legacy" if legacy else "flags"}
    return {"ledger": {"backend": "resilientdb", "resilientdb": table}}


def preview_config(settings: Settings, changes: dict[str, Any]) -> Settings:
    """The settings as they will be once ``changes`` are written to the config file (nothing is written).

    Flags and environment variables that override the file (``--ledger``) are left out: this is what
    the file will say.
    """
    target = config_target(settings)
    data, _text = _read_toml(target)
    return _parse(_merge(data, changes), target, Settings(home=settings.home))
