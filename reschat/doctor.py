"""``reschat doctor``: check the configured ledger end to end and say in plain words what to fix.

Each check is one line of the report: what was checked, whether it worked, what was found or what to
do about it, and how long it took. The ledger checks write a random probe and read it back. Like every
key ResChat writes, the probe's key is a private address (``schedule.probe_address`` of a fresh random
secret: ``reschat2-<48 hex>``) and its value is opaque (``reschat2:<base64 of random bytes>``), so a
ledger observer cannot tell a doctor run from a conversation nor link it to anyone. ResilientDB's
``set`` is fire-and-forget and a read right after it can return the old value, so the read is
repeated for a couple of seconds before the write is called lost.

The doctor never raises for a problem it finds: a problem is a failed check. The CLI prints
``format_report`` and exits non-zero unless ``report.ok``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from Crypto.Random import get_random_bytes

from reschat import crypto, kem, schedule
from reschat.app import ProfilePaths, build_ledger
from reschat.config import Settings
from reschat.errors import (
    LedgerConfigError,
    LedgerError,
    LedgerMissingError,
    LedgerTimeoutError,
    LedgerUnavailableError,
    ReschatError,
)
from reschat.friends import FriendStore
from reschat.ledger.base import Ledger
from reschat.ledger.resilientdb import check_client_config
from reschat.page import PREFIX as PAGE_PREFIX

RandFunc = Callable[[int], bytes]

#: How long a written key may take to show up in a read before the write is called lost.
CONFIRM_WITHIN_S = 2.0
#: Random bytes in the probe's value (a value shaped like the values ResChat writes).
PROBE_VALUE_BYTES = 48
_PROXY_HINT = "start the ResilientDB proxy on 127.0.0.1:10005 (node 5)"
_GENERATION = {
    "json": "JSON (replica_info), the format kv_service_tools v1.12 and later read",
    "text": "`id ip port` lines, the format kv_service_tools v1.11 and older read",
}


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class DoctorReport:
    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]


class _Stop(Exception):
    """A check failed in a way that makes the later ledger checks meaningless."""


class _Doctor:
    def __init__(self, settings: Settings, ledger: Ledger | None, randfunc: RandFunc, confirm_within_s: float):
        self.settings = settings
        self.ledger = ledger
        self.randfunc = randfunc
        self.confirm_within_s = confirm_within_s
        self.report = DoctorReport(settings.ledger.backend)
        self.proxies: list[str] = []
        self.config_format = ""

    def add(self, name: str, ok: bool, detail: str, seconds: float = 0.0) -> None:
        self.report.checks.append(Check(name, ok, detail, round(seconds, 3)))

    def fail(self, name: str, detail: str, seconds: float = 0.0) -> _Stop:
        self.add(name, False, detail, seconds)
        return _Stop()

    # -- what each backend needs before a round trip -------------------------------------------------

    def resilientdb_setup(self) -> None:
        rdb = self.settings.ledger.resilientdb
        tool = rdb.tool
        if os.sep in tool or (os.altsep and os.altsep in tool):
            path = Path(tool).expanduser()
            if not path.is_file():
                raise self.fail(
                    "tool", f"{path} does not exist: install kv_service_tools or fix ledger.resilientdb.tool"
                )
            if not os.access(path, os.X_OK):
                raise self.fail("tool", f"{path} is not executable: run `chmod +x {path}`")
            found = str(path)
        else:
            located = shutil.which(tool)
            if located is None:
                raise self.fail(
                    "tool",
                    f"{tool} is not on PATH: build ResilientDB's kv_service_tools and put it on PATH, or set"
                    " ledger.resilientdb.tool to its full path",
                )
            found = located
        self.add("tool", True, f"{found} is executable")

        if not rdb.client_config:
            raise self.fail(
                "client config",
                "ledger.resilientdb.client_config is not set: point it at the client config that names the proxy",
            )
        config = Path(rdb.client_config).expanduser()
        try:
            self.config_format = check_client_config(config)
        except LedgerConfigError as exc:
            raise self.fail("client config", str(exc)) from None
        self.proxies = _config_addresses(config)
        detail = f"{config} is {_GENERATION[self.config_format]}; it names {', '.join(self.proxies) or 'no address'}"
        replicas = [a for a in self.proxies if a.rsplit(":", 1)[-1] in ("10001", "10002", "10003", "10004")]
        if replicas:
            detail += (
                f" ({', '.join(replicas)} is a replica's usual port: clients must talk to the proxy, node 5,"
                " usually port 10005, or every call hangs)"
            )
        self.add("client config", True, detail)

    def local_setup(self) -> None:
        path = self.settings.ledger_path
        blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise self.fail(
                "ledger file",
                f"cannot create {path}: {blocker} is a file, not a directory; set ledger.path to a writable place",
            )
        if path.exists() and not path.is_file():
            raise self.fail("ledger file", f"{path} is not a file: set ledger.path to a writable place")

    # -- the round trip --------------------------------------------------------------------------

    def open_ledger(self) -> tuple[Ledger, bool]:
        if self.ledger is not None:
            return self.ledger, False
        started = time.monotonic()
        name = {"local": "ledger file", "resilientdb-http": "gateway URL"}.get(self.report.backend, "open ledger")
        try:
            ledger = build_ledger(self.settings)
        except ReschatError as exc:
            detail = str(exc)
            if self.report.backend == "local":
                advice = _sqlite_advice(str(exc), self.settings.ledger_path)
                if advice:
                    detail = f"{advice} ({exc})"
                elif not isinstance(exc, LedgerMissingError):  # that one says what to do
                    detail += ": set ledger.path (or --ledger) to a file in a directory you can write"
            raise self.fail(name, detail, time.monotonic() - started) from None
        if self.report.backend == "local":
            self.add("ledger file", True, f"{self.settings.ledger_path} opens for writing", time.monotonic() - started)
        return ledger, True

    def explain(self, exc: LedgerError, doing: str) -> str:
        """The ledger's own message, plus what the doctor knows about the likely fix."""
        backend = self.report.backend
        ledger = self.settings.ledger
        timeout = ledger.http.timeout if backend == "resilientdb-http" else ledger.resilientdb.timeout
        if isinstance(exc, LedgerTimeoutError):
            hint = (
                f"the cluster does not answer: the {doing} timed out after {timeout:g} s; check the replicas are"
                " running"
            )
            if backend == "resilientdb":
                hint += " and that the client config names the proxy (node 5), not a replica"
            return f"{hint} ({exc})"
        if backend == "resilientdb" and isinstance(exc, LedgerConfigError) and self.config_format:
            other = "text" if self.config_format == "json" else "json"
            example = _text_config(self.proxies) if other == "text" else _json_config(self.proxies)
            shown = {"json": "JSON", "text": "`id ip port` lines"}
            return (
                f"client config is {shown[self.config_format]} but this tool generation wants {shown[other]}"
                f" (e.g. {example}) ({exc})"
            )
        if backend == "resilientdb" and isinstance(exc, LedgerUnavailableError) and doing == "write":
            where = " or ".join(self.proxies) or "127.0.0.1:10005"
            return f"{_PROXY_HINT}: nothing accepted the write at {where} ({exc})"
        if backend == "resilientdb-http" and isinstance(exc, LedgerUnavailableError):
            if "(HTTP 500" in str(exc):  # the gateway runs; what is behind it does not
                return (
                    f"the gateway runs but cannot reach the cluster: start ResilientDB's KV service behind it ({exc})"
                )
            return f"start the ResilientDB HTTP gateway or fix its URL ('reschat ledger http URL') ({exc})"
        advice = _sqlite_advice(str(exc), self.settings.ledger_path) if backend == "local" else ""
        return f"{advice} ({exc})" if advice else str(exc)

    def round_trip(self, ledger: Ledger) -> None:
        key = probe_key(self.randfunc)
        value = PAGE_PREFIX + base64.b64encode(self.randfunc(PROBE_VALUE_BYTES)).decode("ascii")
        if self.report.backend == "resilientdb-http":
            started = time.monotonic()
            try:
                ledger.get(key)
            except LedgerError as exc:
                raise self.fail("gateway answers", self.explain(exc, "read"), time.monotonic() - started) from None
            url = self.settings.ledger.http.url
            self.add("gateway answers", True, f"{url} answered a read", time.monotonic() - started)

        started = time.monotonic()
        try:
            ledger.set(key, value)
        except LedgerError as exc:
            raise self.fail("write", self.explain(exc, "write"), time.monotonic() - started) from None
        set_s = time.monotonic() - started
        self.add("write", True, f"{key} accepted (a write is only sent; the read below confirms it)", set_s)

        written = time.monotonic()
        deadline = written + self.confirm_within_s
        reads: list[float] = []
        pause = 0.1
        while True:
            started = time.monotonic()
            try:
                got = ledger.get(key)
            except LedgerError as exc:
                raise self.fail("read back", self.explain(exc, "read"), time.monotonic() - started) from None
            reads.append(time.monotonic() - started)
            if got == value:
                after = time.monotonic() - written
                detail = f"the value came back; a read takes {min(reads):.3f} s"
                if len(reads) > 1:
                    detail += f" (the first {len(reads) - 1} read(s) were stale, which the ledger allows)"
                self.add("read back", True, detail, after)
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)
        waited = time.monotonic() - written
        raise self.fail(
            "read back",
            f"write was not confirmed: the ledger accepted it but {len(reads)} read(s) over {waited:.1f} s did not"
            " return it; the cluster is losing writes: check that enough replicas are running and their logs",
            waited,
        )

    # -- the profile ---------------------------------------------------------------------------

    def profile(self) -> None:
        home = self.settings.home
        if not crypto.identity_exists(home):
            self.add("profile", True, f"no identity in {home} yet: the start menu creates one")
            return
        try:
            name = crypto.load_name(home)
            own = crypto.fingerprint_bytes(crypto.load_public_key(home)).hex()
            friends = FriendStore(ProfilePaths(home).friends, own_fingerprint=own).all_friends()
        except ReschatError as exc:
            self.add("profile", False, str(exc))
            return
        detail = f"identity {name!r} in {home}; {len(friends)} friend(s)"
        if crypto.load_card(home) is None:
            detail += "; no contact card v2 yet: your next login creates its static keys"
        old_cards = [friend.nickname for friend in friends if not _has_statics(friend.statics)]
        if old_cards:
            names = ", ".join(repr(nickname) for nickname in old_cards)
            self.add("profile", False, f"{detail}; {names} pinned from an old card, so no message can reach "
                     "them: ask for a new card ('reschat whoami' prints it)")
            return
        self.add("profile", True, detail)


def _sqlite_advice(message: str, path: Path) -> str:
    """What to do about the two SQLite failures a local ledger meets in practice, or ""."""
    if "file is not a database" in message:
        return (
            f"{path} is not an SQLite database (another program's file, or damaged): move it away (keep it if"
            " it may matter), then run 'reschat --create' to make a new ledger there; your conversations are"
            " put back from the copies your profiles keep"
        )
    if "disk I/O error" in message:
        return (
            f"SQLite could not read or write {path} (disk I/O error): check that the disk is not full or"
            f" failing, that {path.name} and its -wal and -shm files are yours and writable, and that the"
            " folder is not on a network share; then run 'reschat doctor' again"
        )
    return ""


def _has_statics(statics: str) -> bool:
    try:
        kem.ReceivePublic.from_bytes(bytes.fromhex(statics))
    except (ValueError, kem.KemError):
        return False
    return True


def probe_key(randfunc: RandFunc) -> str:
    """The ledger key of one doctor probe: a private address from a fresh random secret."""
    return schedule.probe_address(randfunc(schedule.KEY_BYTES))


def run_doctor(
    settings: Settings,
    *,
    ledger: Ledger | None = None,
    randfunc: RandFunc | None = None,
    confirm_within_s: float = CONFIRM_WITHIN_S,
    check_profile: bool = True,
) -> DoctorReport:
    """Check the configured ledger (and, unless ``check_profile`` is False, the profile) end to end;
    problems are failed checks, not errors. The first-run question and ``reschat ledger`` check a
    ledger before choosing it with ``check_profile=False``."""
    doctor = _Doctor(settings, ledger, randfunc or get_random_bytes, confirm_within_s)
    backend = settings.ledger.backend
    opened: Ledger | None = None
    close = False
    try:
        if backend == "resilientdb" and ledger is None:
            doctor.resilientdb_setup()
        elif backend == "local" and ledger is None:
            doctor.local_setup()
        opened, close = doctor.open_ledger()
        doctor.round_trip(opened)
    except _Stop:
        pass
    finally:
        if close and opened is not None:
            opened.close()
    if check_profile:
        doctor.profile()
    return doctor.report


def format_report(report: DoctorReport) -> str:
    """The report in plain words, one line per check and a last line that sums it up."""
    lines = [f"ResChat doctor: ledger backend {report.backend}"]
    width = max((len(check.name) for check in report.checks), default=0)
    for check in report.checks:
        mark = "ok  " if check.ok else "FAIL"
        timing = f" [{check.seconds:.2f} s]" if check.seconds else ""
        lines.append(f"  {mark} {check.name.ljust(width)}  {check.detail}{timing}")
    problems = report.problems
    if not problems:
        lines.append("Everything works.")
    else:
        lines.append(f"{len(problems)} problem(s): fix the first one above, then run the doctor again.")
    return "\n".join(lines)


def _config_addresses(path: Path) -> list[str]:
    """The ``ip:port`` addresses a client config names (already checked by ``check_client_config``)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        return [f"{r['ip']}:{r['port']}" for r in json.loads(text)["replica_info"]]
    return [f"{f[1]}:{f[2]}" for f in (line.split() for line in text.splitlines()) if len(f) == 3]


def _proxy(addresses: list[str]) -> tuple[str, int]:
    ip, _, port = (addresses[0] if addresses else "127.0.0.1:10005").rpartition(":")
    return ip, int(port)


def _json_config(addresses: list[str]) -> str:
    """The one-proxy client config a v1.12 tool reads, for the address the config names."""
    ip, port = _proxy(addresses)
    return json.dumps({"replica_info": [{"id": 5, "ip": ip, "port": port}], "region_id": 1})


def _text_config(addresses: list[str]) -> str:
    """The one-proxy client config a v1.11 or older tool reads."""
    ip, port = _proxy(addresses)
    return f"`5 {ip} {port}`"


__all__ = ["CONFIRM_WITHIN_S", "Check", "DoctorReport", "format_report", "probe_key", "run_doctor"]
