"""ResilientDB through its command-line client ``kv_service_tools``, one process per request.

Everything here follows the KV contract measured on a real cluster (the project's docs on it): the
tool's exit status means nothing on a normal completion, so success is read from stdout; stderr is
log noise; a stuck cluster makes the tool hang forever, so every call has a timeout that kills the
tool's whole process group. The output parsers are pure functions so that they can be property-tested.

Whatever a key holds, the tool's output is read as it arrives and the tool is killed as soon as it has
printed more than any value within the limit could make it print: an oversized value reads as
OVERSIZED_VALUE and was never whole in memory. The tool runs with a minimal environment (no password,
no settings of ResChat's own).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reschat.errors import (
    LedgerConfigError,
    LedgerError,
    LedgerTimeoutError,
    LedgerUnavailableError,
    ValueTooLargeError,
)
from reschat.ledger.base import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    OVERSIZED_VALUE,
    RESILIENTDB_STALE_WINDOW_S,
    Ledger,
    check_key,
    check_value,
)

log = logging.getLogger(__name__)

#: More than any get or set within the size limits makes the tool print (its line echoes the key, and
#: the value for a set): a tool that prints more is killed and the rest is never read.
MAX_OUTPUT_BYTES = MAX_KEY_BYTES + MAX_VALUE_BYTES + 256
#: How much of the tool's log (stderr) is kept: its last line is all that is ever reported.
_STDERR_KEEP = 16 * 1024
_CHUNK = 64 * 1024

#: What the tool may see of our environment: where programs and libraries are, locale, home, time
#: zone and its own log settings. The rest stays out, RESCHAT_PASSWORD above all.
_TOOL_ENV_NAMES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
_TOOL_ENV_PREFIXES = ("LC_", "GLOG_")


def tool_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The minimal environment a ``kv_service_tools`` process is started with."""
    return {name: value for name, value in environ.items()
            if name in _TOOL_ENV_NAMES or name.startswith(_TOOL_ENV_PREFIXES)}

Syntax = Literal["flags", "legacy"]

#: The first line of the tool's usage text, printed (with exit status 0) when it rejects its arguments.
USAGE_FIRST_LINE = "--config: config path"

#: How a shell and Python each report the tool dying by SIGSEGV (missing config) or SIGABRT (bad config).
_SEGFAULT = (128 + signal.SIGSEGV, -signal.SIGSEGV)
_ABORT = (128 + signal.SIGABRT, -signal.SIGABRT)

_CONFIG_FORMATS = "v1.12 and later read JSON with a replica_info list, older tools read `id ip port` lines"


@dataclass(frozen=True)
class ToolResult:
    """What one run of the tool left behind."""

    returncode: int
    stdout: str
    stderr_tail: str
    #: The tool printed more than the cap and was killed: ``stdout`` is only the beginning.
    overflowed: bool = False


def _excerpt(text: str) -> str:
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _usage_error(stdout: str) -> LedgerError | None:
    if stdout.startswith(USAGE_FIRST_LINE):
        return LedgerError(
            "kv_service_tools rejected its arguments and printed its usage: set the ledger syntax to"
            " 'flags' for tools from v1.9 on or 'legacy' for older ones"
        )
    return None


def parse_get_output(stdout: str, key: str, syntax: Syntax = "flags") -> str | None:
    """The value a ``get`` of ``key`` printed, or None for a missing key; raise on a failure line.

    The value is whatever follows the exact prefix built from the key that was sent, up to the final
    newline: a value may itself contain `` value = `` or, written by someone else, raw newlines.
    """
    if syntax == "flags":
        prefix, fail = f"get key = {key} value = ", "get value fail\n"
    else:
        prefix, fail = "client get value = ", "client get value fail\n"
    if stdout in (fail, fail[:-1]):
        raise LedgerUnavailableError(
            f"ResilientDB could not serve the read of {key}: check that its proxy and replicas are running"
        )
    usage = _usage_error(stdout)
    if usage is not None:
        raise usage
    if not stdout.startswith(prefix):
        raise LedgerError(
            f"kv_service_tools printed {_excerpt(stdout)} for a get: is it a ResilientDB KV client?"
        )
    value = stdout[len(prefix) :]
    if value.endswith("\n"):
        value = value[:-1]
    return value or None


def parse_set_output(stdout: str, key: str, value: str, syntax: Syntax = "flags") -> None:
    """Return if a ``set`` of ``key`` to ``value`` reached the proxy (``ret = 0``); raise otherwise."""
    prefix = f"set key = {key}, value = {value} done, ret = " if syntax == "flags" else "client set ret = "
    if stdout.startswith(prefix) and stdout.endswith("\n"):
        ret = stdout[len(prefix) : -1]
        if ret == "0":
            return
        if ret == "-1":
            raise LedgerUnavailableError(
                "cannot connect to the ResilientDB proxy named in the client config:"
                " start the proxy or fix the config"
            )
        if ret.lstrip("-").isdigit():
            raise LedgerUnavailableError(
                f"ResilientDB refused the write of {key} (ret = {ret}): check the cluster"
            )
    usage = _usage_error(stdout)
    if usage is not None:
        raise usage
    raise LedgerError(
        f"kv_service_tools printed {_excerpt(stdout)} for a set: is it a ResilientDB KV client?"
    )


def check_client_config(path: Path) -> str:
    """Check that ``path`` is a readable client config; return its format, "json" or "text".

    The real tool segfaults on a missing config and aborts on a malformed one; a readable message
    before it runs is worth a file read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LedgerConfigError(
            f"ResilientDB client config {path} does not exist: create it ({_CONFIG_FORMATS})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerConfigError(f"cannot read ResilientDB client config {path}: {exc}") from exc
    if text.lstrip().startswith("{"):
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise LedgerConfigError(f"ResilientDB client config {path} is not valid JSON: {exc}") from exc
        replicas = loaded.get("replica_info") if isinstance(loaded, dict) else None
        if not (
            isinstance(replicas, list)
            and replicas
            and all(isinstance(r, dict) and "ip" in r and isinstance(r.get("port"), int) for r in replicas)
        ):
            raise LedgerConfigError(
                f"ResilientDB client config {path} has no replica_info list of {{id, ip, port}}: fix it"
            )
        return "json"
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or not all(len(f) == 3 and f[0].isdigit() and f[2].isdigit() for f in lines):
        raise LedgerConfigError(
            f"ResilientDB client config {path} is neither JSON nor `id ip port` lines: {_CONFIG_FORMATS}"
        )
    return "text"


def run_tool(
    argv: list[str],
    timeout_s: float,
    *,
    max_stdout: int = MAX_OUTPUT_BYTES,
    environ: Mapping[str, str] | None = None,
) -> ToolResult:
    """Run one tool command; kill its whole process group and raise LedgerTimeoutError on timeout.

    At most ``max_stdout`` + 1 bytes of its output are read: past that the tool is killed and the
    result says ``overflowed``. It gets ``tool_environment`` of ``environ`` (default: ours).
    """
    tool = argv[0]
    try:
        # A new session makes the tool a process-group leader, so killing the group also kills anything
        # it started; stdin is closed so a confused tool cannot wait on the terminal.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=tool_environment(os.environ if environ is None else environ),
        )
    except FileNotFoundError:
        raise LedgerUnavailableError(
            f"ResilientDB client tool {tool} not found: install kv_service_tools or fix the tool path"
        ) from None
    except PermissionError:
        raise LedgerUnavailableError(
            f"ResilientDB client tool {tool} is not executable: make it executable or fix the tool path"
        ) from None
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            raise ValueTooLargeError(
                f"the command line for {tool} is too long for the OS: keep keys and values under"
                f" {MAX_VALUE_BYTES} bytes"
            ) from exc
        raise LedgerUnavailableError(f"cannot start ResilientDB client tool {tool}: {exc}") from exc

    try:
        out, err, overflowed = _collect(proc, timeout_s, max_stdout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise LedgerTimeoutError(
            f"ResilientDB did not answer within {timeout_s:g} s and the request was abandoned: the cluster"
            " may be stuck, or the client config names a replica instead of the proxy"
        ) from None
    except BaseException:
        _kill_group(proc)  # Ctrl-C or any other surprise must not leave a tool hanging forever
        raise
    stderr_lines = err.decode("utf-8", "replace").strip().splitlines()
    return ToolResult(
        returncode=proc.returncode,
        # A stranger's value may hold any bytes: the page parser upstream rejects what is not ours.
        stdout=out.decode("utf-8", "replace"),
        stderr_tail=stderr_lines[-1] if stderr_lines else "",
        overflowed=overflowed,
    )


def _collect(proc: subprocess.Popen[bytes], timeout_s: float, max_stdout: int) -> tuple[bytes, bytes, bool]:
    """Read the tool's stdout and stderr as they come until both close and it exits, within the timeout.

    Returns (stdout, stderr tail, overflowed); an overflowing tool is killed at once.
    """
    deadline = time.monotonic() + timeout_s
    out, err = bytearray(), bytearray()
    assert proc.stdout is not None and proc.stderr is not None  # both are pipes
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout_s)
            for ready, _events in selector.select(remaining):
                chunk = os.read(ready.fd, _CHUNK)
                if not chunk:
                    selector.unregister(ready.fileobj)
                    continue
                buffer: bytearray = ready.data
                buffer += chunk
                if buffer is out and len(out) > max_stdout:
                    _kill_group(proc)
                    return bytes(out[: max_stdout + 1]), bytes(err), True
                if buffer is err and len(err) > _STDERR_KEEP:
                    del err[:-_STDERR_KEEP]
    proc.wait(max(deadline - time.monotonic(), 0.001))
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    return bytes(out), bytes(err), False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()  # the group is gone or not ours: the child itself is what must not survive
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class ResilientDBLedger(Ledger):
    """ResilientDB's KV service through ``kv_service_tools`` (flag syntax, or the legacy positional one)."""

    name = "resilientdb"
    stale_read_window_s = RESILIENTDB_STALE_WINDOW_S

    def __init__(
        self,
        tool: str | Path,
        client_config: Path,
        *,
        syntax: Syntax = "flags",
        timeout_s: float = 10.0,
    ) -> None:
        if syntax not in ("flags", "legacy"):
            raise LedgerConfigError(f"unknown kv_service_tools syntax {syntax!r}: use 'flags' or 'legacy'")
        if timeout_s <= 0:
            raise LedgerConfigError(f"ledger timeout must be positive, not {timeout_s}")
        self.tool = str(tool)
        # Absolute, so that the path can never be read as an option and survives a change of directory.
        self.client_config = Path(os.path.abspath(client_config))
        self.syntax: Syntax = syntax
        self.timeout_s = timeout_s
        self.config_format = check_client_config(self.client_config)

    def _argv(self, cmd: str, key: str, value: str | None = None) -> list[str]:
        config = str(self.client_config)
        if self.syntax == "legacy":
            return [self.tool, config, cmd, key] + ([] if value is None else [value])
        argv = [self.tool, "--config", config, "--cmd", cmd, "--key", key]
        return argv + ([] if value is None else ["--value", value])

    def _run(self, cmd: str, key: str, value: str | None = None) -> ToolResult:
        started = time.monotonic()
        result = run_tool(self._argv(cmd, key, value), self.timeout_s)
        log.debug(
            "kv_service_tools %s %s: status %d in %.3f s; stderr: %s",
            cmd,
            key,
            result.returncode,
            time.monotonic() - started,
            result.stderr_tail,
        )
        if result.overflowed:
            return result  # killed for printing too much: its exit status says nothing
        status = result.returncode
        if status in _SEGFAULT and not result.stdout:
            raise LedgerConfigError(
                f"kv_service_tools crashed reading its client config {self.client_config}: the file is"
                " missing or unreadable; restore it"
            )
        if status in _ABORT:
            hint = "JSON" if self.config_format == "json" else "`id ip port` lines"
            raise LedgerConfigError(
                f"kv_service_tools aborted on its client config {self.client_config} ({hint}): wrong format"
                f" for this tool version; {_CONFIG_FORMATS}"
            )
        if status != 0:
            raise LedgerError(
                f"kv_service_tools failed with exit status {status} ({result.stderr_tail or 'no log'}):"
                " check the tool and the cluster"
            )
        return result

    def get(self, key: str) -> str | None:
        check_key(key)
        result = self._run("get", key)
        value = None if result.overflowed else parse_get_output(result.stdout, key, self.syntax)
        if result.overflowed or (value is not None and len(value) > MAX_VALUE_BYTES):
            log.warning("ledger key %s holds a value over %d bytes: not read", key, MAX_VALUE_BYTES)
            return OVERSIZED_VALUE
        return value

    def set(self, key: str, value: str) -> None:
        # Checked before spawning: an oversize argument would not even let the process start.
        check_key(key)
        check_value(value)
        result = self._run("set", key, value)
        if result.overflowed:
            raise LedgerError(
                f"kv_service_tools printed more than {MAX_OUTPUT_BYTES} bytes for a set: is it a ResilientDB KV client?"
            )
        parse_set_output(result.stdout, key, value, self.syntax)
