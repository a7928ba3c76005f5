"""ResilientDBLedger against the stand-in kv_service_tools: every row of the contract's failure table,
both command syntaxes, both client-config generations, and the output parser on its own."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reschat.errors import (
    LedgerConfigError,
    LedgerError,
    LedgerTimeoutError,
    LedgerUnavailableError,
    ValueTooLargeError,
)
from reschat.ledger.base import MAX_KEY_BYTES, MAX_VALUE_BYTES, OVERSIZED_VALUE
from reschat.ledger.resilientdb import (
    ResilientDBLedger,
    check_client_config,
    parse_get_output,
    parse_set_output,
    run_tool,
    tool_environment,
)
from tests.standin import STALE_READS_ENV, StandInCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))
SYNTAXES = ["flags", "legacy"]
GENERATIONS = ["v1.12", "v1.11"]
GLOG_LINE = re.compile(r"[IWEF]\d{8} \d\d:\d\d:\d\d\.\d{6} \d+ [\w.]+:\d+\] ")

#: Values that would trip a parser that splits on separators instead of stripping the exact prefix.
TRICKY_VALUES = [
    PRINTABLE,
    " leading space",
    "trailing space ",
    "a value = b",
    "get key = k value = v",
    "x, value = y done, ret = -1",
    "get value fail",
    "client get value fail",
    "=",
    "\"double\" and 'single' quotes \\ backslash",
    "$(id) `id` ; | & > < * ~",
]


@pytest.fixture
def cluster(tmp_path: Path) -> StandInCluster:
    return StandInCluster.create(tmp_path / "cluster")


def ledger_for(cluster: StandInCluster, **options: object) -> ResilientDBLedger:
    return ResilientDBLedger(cluster.tool, cluster.config, **options)  # type: ignore[arg-type]


def run_standin(cluster: StandInCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the stand-in the other documented way, through the interpreter, as a stranger's client."""
    return subprocess.run(
        [sys.executable, str(cluster.tool), *args], capture_output=True, text=True, timeout=60, check=False
    )


def gone_or_zombie(pid: int) -> bool:
    """Wait until ``pid`` is dead (a zombie awaiting its reaper counts: it runs no code)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# --- round trips --------------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_round_trip_in_every_syntax_and_config_generation(
    tmp_path: Path, generation: str, syntax: str
) -> None:
    cluster = StandInCluster.create(tmp_path, generation)
    ledger = ledger_for(cluster, syntax=syntax)
    assert ledger.config_format == ("json" if generation == "v1.12" else "text")
    assert ledger.get("room") is None
    ledger.set("room", "first")
    assert ledger.get("room") == "first"
    ledger.set("room", "second")
    assert ledger.get("room") == "second"
    assert cluster.stored("room") == "second"


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_tricky_values_round_trip_exactly(cluster: StandInCluster, syntax: str) -> None:
    ledger = ledger_for(cluster, syntax=syntax)
    keys = [f"k{i}" for i in range(len(TRICKY_VALUES))]
    # Independent keys: written together only to keep the test quick.
    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        list(pool.map(ledger.set, keys, TRICKY_VALUES))
    assert ledger.get_many(keys) == dict(zip(keys, TRICKY_VALUES, strict=True))


def test_keys_with_punctuation_round_trip(cluster: StandInCluster) -> None:
    ledger = ledger_for(cluster)
    key = "a=b,\"c\"'d'value=e;$(f)"
    ledger.set(key, "v a l u e")
    assert ledger.get(key) == "v a l u e"
    assert ledger.get("a=b") is None


def test_largest_value_that_fits_on_a_command_line_round_trips(cluster: StandInCluster) -> None:
    ledger = ledger_for(cluster)
    value = "x" * (MAX_VALUE_BYTES - 1) + "y"
    ledger.set("big", value)
    assert ledger.get("big") == value


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_newline_written_by_someone_else_is_returned_as_stored(cluster: StandInCluster, syntax: str) -> None:
    # ResChat never writes a newline, but anyone can; the tool prints it raw, across several lines.
    stranger = "line one value = 1\nline two\n"
    written = run_standin(
        cluster, "--config", str(cluster.config), "--cmd", "set", "--key", "k", "--value", stranger
    )
    assert written.stdout == f"set key = k, value = {stranger} done, ret = 0\n"
    assert ledger_for(cluster, syntax=syntax).get("k") == stranger


def test_two_processes_share_the_ledger(cluster: StandInCluster) -> None:
    script = (
        "import sys\n"
        "from reschat.ledger.resilientdb import ResilientDBLedger\n"
        "ledger = ResilientDBLedger(sys.argv[1], sys.argv[2])\n"
        "if sys.argv[3] == 'set':\n"
        "    ledger.set('shared', 'from the other process')\n"
        "else:\n"
        "    print(ledger.get('shared'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def other(action: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, str(cluster.tool), str(cluster.config), action],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        return done.stdout

    other("set")
    ledger = ledger_for(cluster)
    assert ledger.get("shared") == "from the other process"
    ledger.set("shared", "reply from this one")
    assert other("get") == "reply from this one\n"


# --- the semantics the contract warns about -----------------------------------------------------------


def test_a_read_right_after_a_set_can_return_the_previous_value(cluster: StandInCluster) -> None:
    ledger = ledger_for(cluster)
    ledger.set("page", "old")
    cluster.behave(stale_reads_after_set_s=3600)
    ledger.set("page", "new")
    ledger.set("fresh", "value")
    assert ledger.get("page") == "old"
    assert ledger.get("fresh") is None
    assert cluster.stored("page") == "new"
    cluster.behave(stale_reads_after_set_s=None)  # "a re-read a second later was right"
    assert ledger.get("page") == "new"
    assert ledger.get("fresh") == "value"


def test_a_dropped_write_is_reported_as_sent(cluster: StandInCluster) -> None:
    # ret = 0 only means the bytes reached the proxy: only a later read confirms a write.
    ledger = ledger_for(cluster)
    cluster.behave(drop_sets=True)
    ledger.set("k", "lost")
    assert ledger.get("k") is None
    assert cluster.stored("k") is None


def test_get_many_reads_concurrently(cluster: StandInCluster) -> None:
    ledger = ledger_for(cluster)
    # Long enough that a busy machine's slower process starts cannot pull the reads apart.
    cluster.behave(get_delay_s=1.0)
    keys = [f"key{i}" for i in range(8)]
    assert ledger.get_many(keys) == dict.fromkeys(keys)
    gets = [call for call in cluster.calls() if call.cmd == "get"]
    assert sorted(call.key for call in gets) == keys
    intervals = [(call.started, call.ended) for call in gets]
    assert all(end is not None for _, end in intervals)
    # Reads issued one after another never overlap; the proxy only batches reads that are in flight
    # together, so every read must have been running while at least one other one was.
    for i, (start, end) in enumerate(intervals):
        others = intervals[:i] + intervals[i + 1 :]
        assert any(s < end and start < e for s, e in others if e is not None), f"read {i} ran alone"


# --- the failure table --------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_proxy_not_listening(cluster: StandInCluster, syntax: str) -> None:
    ledger = ledger_for(cluster, syntax=syntax)
    cluster.behave(down=True)
    with pytest.raises(LedgerUnavailableError, match="cannot connect to the ResilientDB proxy"):
        ledger.set("k", "v")
    with pytest.raises(LedgerUnavailableError, match="could not serve the read of k"):
        ledger.get("k")
    assert cluster.stored("k") is None
    cluster.behave(down=None)
    ledger.set("k", "v")
    assert ledger.get("k") == "v"


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_transport_failure_on_get(cluster: StandInCluster, syntax: str) -> None:
    ledger = ledger_for(cluster, syntax=syntax)
    cluster.behave(fail_get=True)
    ledger.set("k", "v")
    with pytest.raises(LedgerUnavailableError):
        ledger.get("k")
    assert cluster.stored("k") == "v"


def test_missing_config_is_caught_before_running_the_tool(tmp_path: Path, cluster: StandInCluster) -> None:
    with pytest.raises(LedgerConfigError, match="does not exist"):
        ResilientDBLedger(cluster.tool, tmp_path / "no-such.config")
    assert cluster.calls() == []


@pytest.mark.parametrize("crash_with_signal", [False, True], ids=["exit-139", "sigsegv"])
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_config_removed_after_start_segfaults_the_tool(
    cluster: StandInCluster, syntax: str, crash_with_signal: bool
) -> None:
    ledger = ledger_for(cluster, syntax=syntax)
    cluster.behave(crash_with_signal=crash_with_signal)
    cluster.config.unlink()
    with pytest.raises(LedgerConfigError, match="missing or unreadable"):
        ledger.get("k")
    with pytest.raises(LedgerConfigError, match="missing or unreadable"):
        ledger.set("k", "v")


@pytest.mark.parametrize("crash_with_signal", [False, True], ids=["exit-134", "sigabrt"])
@pytest.mark.parametrize(
    ("generation", "wrong_format", "shown_as"),
    [("v1.12", "text", "`id ip port` lines"), ("v1.11", "json", "JSON")],
)
def test_config_in_the_wrong_format_for_the_tool_aborts_it(
    tmp_path: Path, generation: str, wrong_format: str, shown_as: str, crash_with_signal: bool
) -> None:
    cluster = StandInCluster.create(tmp_path, generation, crash_with_signal=crash_with_signal)
    cluster.write_config(wrong_format)
    ledger = ledger_for(cluster)
    with pytest.raises(LedgerConfigError, match="wrong format for this tool version") as caught:
        ledger.get("k")
    assert shown_as in str(caught.value)
    with pytest.raises(LedgerConfigError, match="wrong format"):
        ledger.set("k", "v")


@pytest.mark.parametrize(
    "text",
    ["", "hello world\n", "5 127.0.0.1\n", '{"replica_info": []}', '{"region_id": 1}', "{not json", "[1, 2]"],
)
def test_unusable_config_is_refused_with_a_clear_message(tmp_path: Path, text: str) -> None:
    config = tmp_path / "client.config"
    config.write_text(text)
    with pytest.raises(LedgerConfigError, match=re.escape(str(config))):
        check_client_config(config)


def test_hanging_tool_times_out_and_its_whole_process_group_is_killed(cluster: StandInCluster) -> None:
    ledger = ledger_for(cluster, timeout_s=2.0)
    cluster.behave(hang=True)
    with pytest.raises(LedgerTimeoutError, match="abandoned"):
        ledger.get("k")
    pids = cluster.hung_pids()
    assert set(pids) == {"tool", "helper"}
    assert gone_or_zombie(pids["tool"])
    assert gone_or_zombie(pids["helper"]), "the tool's helper process survived the timeout"


def test_hanging_set_times_out(cluster: StandInCluster) -> None:
    ledger = ledger_for(cluster, timeout_s=1.0)
    cluster.behave(hang=True)
    with pytest.raises(LedgerTimeoutError):
        ledger.set("k", "v")


def test_oversize_key_or_value_is_refused_without_running_the_tool(cluster: StandInCluster) -> None:
    ledger = ledger_for(cluster)
    with pytest.raises(ValueTooLargeError):
        ledger.set("k", "x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(ValueTooLargeError):
        ledger.set("k" * (MAX_KEY_BYTES + 1), "v")
    with pytest.raises(ValueTooLargeError):
        ledger.get("k" * (MAX_KEY_BYTES + 1))
    assert cluster.calls() == []


def test_argument_the_os_refuses_is_value_too_large(cluster: StandInCluster) -> None:
    # One byte over the limit: the kernel refuses to start the process at all (E2BIG).
    argv = [str(cluster.tool), "--config", str(cluster.config), "--cmd", "set", "--key", "k"]
    with pytest.raises(ValueTooLargeError, match="too long"):
        run_tool([*argv, "--value", "x" * (MAX_VALUE_BYTES + 1)], timeout_s=30)
    assert cluster.calls() == []


def test_usage_text_is_a_ledger_error_naming_the_syntax_setting(tmp_path: Path) -> None:
    # v1.9 understands only the flag syntax and answers positional arguments with its usage, exit 0.
    cluster = StandInCluster.create(tmp_path, "v1.9")
    ledger = ledger_for(cluster, syntax="legacy")
    with pytest.raises(LedgerError, match=r"usage.*syntax") as caught:
        ledger.get("k")
    assert type(caught.value) is LedgerError
    with pytest.raises(LedgerError, match="usage"):
        ledger.set("k", "v")
    ledger_for(cluster, syntax="flags").set("k", "v")
    assert cluster.stored("k") == "v"


def test_missing_tool_is_unavailable_and_named(tmp_path: Path, cluster: StandInCluster) -> None:
    missing = tmp_path / "bin" / "kv_service_tools"
    with pytest.raises(LedgerUnavailableError, match=re.escape(str(missing))):
        ResilientDBLedger(missing, cluster.config).get("k")
    with pytest.raises(LedgerUnavailableError, match="not found"):
        ResilientDBLedger("reschat-no-such-kv-tool", cluster.config).set("k", "v")


def test_tool_that_is_not_executable_is_unavailable_and_named(
    tmp_path: Path, cluster: StandInCluster
) -> None:
    copy = tmp_path / "kv_service_tools"
    shutil.copy(cluster.tool, copy)
    copy.chmod(0o644)
    with pytest.raises(LedgerUnavailableError, match=f"{re.escape(str(copy))} is not executable"):
        ResilientDBLedger(copy, cluster.config).get("k")


def test_a_tool_that_is_not_the_kv_client_is_reported(cluster: StandInCluster) -> None:
    echo, false = shutil.which("echo"), shutil.which("false")
    assert echo is not None and false is not None
    with pytest.raises(LedgerError, match="is it a ResilientDB KV client"):
        ResilientDBLedger(echo, cluster.config).get("k")
    with pytest.raises(LedgerError, match="is it a ResilientDB KV client"):
        ResilientDBLedger(echo, cluster.config).set("k", "v")
    with pytest.raises(LedgerError, match="exit status 1"):
        ResilientDBLedger(false, cluster.config).get("k")


def test_constructor_refuses_bad_settings(cluster: StandInCluster) -> None:
    with pytest.raises(LedgerConfigError, match="syntax"):
        ResilientDBLedger(cluster.tool, cluster.config, syntax="positional")  # type: ignore[arg-type]
    with pytest.raises(LedgerConfigError, match="timeout"):
        ResilientDBLedger(cluster.tool, cluster.config, timeout_s=0)


# --- the output parser on its own ---------------------------------------------------------------------

keys = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40).filter(
    lambda key: not key.startswith("-")
)
#: What a get can print after the prefix: anything but NUL (which truncates it in the C++ printf).
printed_values = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=200)
sendable_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=200)


@given(keys, printed_values)
def test_parse_get_output_recovers_exactly_what_was_printed(key: str, value: str) -> None:
    assert parse_get_output(f"get key = {key} value = {value}\n", key) == (value or None)
    assert parse_get_output(f"client get value = {value}\n", key, "legacy") == (value or None)


@given(keys, keys, printed_values)
def test_parse_get_output_refuses_the_answer_for_another_key(key: str, other: str, value: str) -> None:
    if other == key:
        return
    stdout = f"get key = {other} value = {value}\n"
    if stdout.startswith(f"get key = {key} value = "):
        return  # ``other`` is ``key`` followed by " value = ...": the same bytes, legitimately ambiguous
    with pytest.raises(LedgerError):
        parse_get_output(stdout, key)


@given(keys, st.text(max_size=300), st.sampled_from(SYNTAXES))
def test_parse_get_output_raises_nothing_but_ledger_errors(key: str, stdout: str, syntax: str) -> None:
    try:
        value = parse_get_output(stdout, key, syntax)  # type: ignore[arg-type]
    except LedgerError:
        return
    assert value is None or value in stdout


@given(keys, sendable_values)
def test_parse_set_output_accepts_only_ret_zero(key: str, value: str) -> None:
    parse_set_output(f"set key = {key}, value = {value} done, ret = 0\n", key, value)
    parse_set_output("client set ret = 0\n", key, value, "legacy")
    with pytest.raises(LedgerUnavailableError, match="cannot connect"):
        parse_set_output(f"set key = {key}, value = {value} done, ret = -1\n", key, value)
    with pytest.raises(LedgerUnavailableError, match="cannot connect"):
        parse_set_output("client set ret = -1\n", key, value, "legacy")
    with pytest.raises(LedgerError):
        parse_set_output(f"set key = {key}, value = {value}x done, ret = 0\n", key, value)


@given(keys, sendable_values, st.text(max_size=300))
def test_parse_set_output_raises_nothing_but_ledger_errors(key: str, value: str, stdout: str) -> None:
    try:
        parse_set_output(stdout, key, value)
    except LedgerError:
        return
    assert stdout == f"set key = {key}, value = {value} done, ret = 0\n"


def test_parser_edge_cases() -> None:
    assert parse_get_output("get key = k value = \n", "k") is None
    assert parse_get_output("get key = k value = v", "k") == "v"  # no final newline
    assert parse_get_output("get key = k value =  v \n", "k") == " v "
    assert parse_get_output("get key = k value = a\n\n", "k") == "a\n"
    assert parse_get_output("client get value = \n", "k", "legacy") is None
    for failure in ("get value fail\n", "get value fail"):
        with pytest.raises(LedgerUnavailableError):
            parse_get_output(failure, "k")
    with pytest.raises(LedgerUnavailableError):
        parse_get_output("client get value fail\n", "k", "legacy")
    with pytest.raises(LedgerError, match="usage"):
        parse_get_output("--config: config path\n--cmd set/get\n", "k")
    with pytest.raises(LedgerError, match="usage"):
        parse_set_output("--config: config path\n", "k", "v")
    with pytest.raises(LedgerError):
        parse_get_output("", "k")
    with pytest.raises(LedgerUnavailableError, match="ret = 2"):
        parse_set_output("set key = k, value = v done, ret = 2\n", "k", "v")


# --- the stand-in itself follows the contract ---------------------------------------------------------


def test_standin_output_exit_codes_and_logs(cluster: StandInCluster) -> None:
    cfg = str(cluster.config)
    done = run_standin(cluster, "--config", cfg, "--cmd", "set", "--key", "k1", "--value", "value1")
    assert (done.returncode, done.stdout) == (0, "set key = k1, value = value1 done, ret = 0\n")
    assert done.stderr and all(GLOG_LINE.match(line) for line in done.stderr.splitlines())
    assert (
        run_standin(cluster, "--config", cfg, "--cmd", "get", "--key", "k1").stdout
        == "get key = k1 value = value1\n"
    )
    assert (
        run_standin(cluster, "--config", cfg, "--cmd", "get", "--key", "nokey").stdout
        == "get key = nokey value = \n"
    )
    assert run_standin(cluster, cfg, "set", "k2", "oldv").stdout == "client set ret = 0\n"
    assert run_standin(cluster, cfg, "get", "k2").stdout == "client get value = oldv\n"
    assert run_standin(cluster, cfg, "get", "k3").stdout == "client get value = \n"
    cluster.behave(down=True)
    down = run_standin(cluster, "--config", cfg, "--cmd", "set", "--key", "k1", "--value", "v")
    assert (down.returncode, down.stdout) == (0, "set key = k1, value = v done, ret = -1\n")
    assert run_standin(cluster, "--config", cfg, "--cmd", "get", "--key", "k1").stdout == "get value fail\n"
    assert run_standin(cluster, cfg, "get", "k2").stdout == "client get value fail\n"
    missing = run_standin(cluster, "--config", cfg + ".missing", "--cmd", "get", "--key", "k1")
    assert (missing.returncode, missing.stdout) == (139, "")
    cluster.write_config("text")
    wrong = run_standin(cluster, "--config", cfg, "--cmd", "get", "--key", "k1")
    assert (wrong.returncode, wrong.stdout) == (134, "")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--config"],
        ["--config", "{cfg}", "--cmd", "set", "--key", "k", "--value", ""],
        ["--config", "{cfg}", "--cmd", "set", "--key", "k"],
        ["--config", "{cfg}", "--cmd", "frobnicate", "--key", "k"],
        [
            "--config",
            "{cfg}",
            "--cmd",
            "get_history",
            "--key",
            "k",
            "--min_version",
            "3",
            "--max_version",
            "1",
        ],
        ["{cfg}", "set", "k"],
        ["{cfg}", "delete", "k"],
    ],
)
def test_standin_prints_usage_on_bad_arguments(cluster: StandInCluster, args: list[str]) -> None:
    done = run_standin(cluster, *(arg.format(cfg=cluster.config) for arg in args))
    assert done.returncode == 0
    assert done.stdout.startswith("--config: config path\n")
    assert done.stdout.endswith("More examples can be found from README.\n")


def test_standin_versioned_keys_are_a_compare_and_set(cluster: StandInCluster) -> None:
    cfg = ["--config", str(cluster.config)]

    def cas(value: str, version: int) -> str:
        args = ["--cmd", "set_with_version", "--key", "doc", "--value", value, "--version", str(version)]
        return run_standin(cluster, *cfg, *args).stdout

    def read(version: int, key: str = "doc") -> str:
        return run_standin(
            cluster, *cfg, "--cmd", "get_with_version", "--key", key, "--version", str(version)
        ).stdout

    first = 'say "hi"\\\tnow\né'
    # The tool prints ret = 0 whether or not it won, and reads back the key (its printf's bug), not the value.
    assert (
        cas(first, 0) == f"set key = doc, value = {first}, version = 0 done, ret = 0\ncurrent value = doc\n"
    )
    assert cas("loses the race", 0).startswith(
        "set key = doc, value = loses the race, version = 0 done, ret = 0\n"
    )
    escaped = 'value: "say \\"hi\\"\\\\\\tnow\\n\\303\\251"\nversion: 1\n'
    assert read(0) == f"get key = doc, value = {escaped}\n"
    assert cas("second", 1).endswith("ret = 0\ncurrent value = doc\n")
    assert read(0) == 'get key = doc, value = value: "second"\nversion: 2\n\n'
    assert read(1) == f"get key = doc, value = {escaped}\n"
    assert read(0, "never") == "get key = never, value = \n"
    # Versioned keys and plain keys are separate spaces.
    assert run_standin(cluster, *cfg, "--cmd", "get", "--key", "doc").stdout == "get key = doc value = \n"

    history = run_standin(
        cluster, *cfg, "--cmd", "get_history", "--key", "doc", "--min_version", "1", "--max_version", "2"
    ).stdout
    assert history.startswith("get history key = doc, min version = 1, max version = 2\n value = item {\n")
    assert history.count("item {") == 2 and "version: 1" in history and "version: 2" in history
    top = run_standin(cluster, *cfg, "--cmd", "get_top", "--key", "doc", "--top", "1").stdout
    assert top.startswith("key = doc, top 1\n value = item {\n")
    assert top.count("item {") == 1 and 'value: "second"' in top


# --- bounded reads, a minimal environment, stale reads -----------------------------------------------


def plant(cluster: StandInCluster, key: str, value: str) -> None:
    """Put a value straight into the stand-in cluster's state, as a client with no size limit could."""
    ledger_for(cluster).set("created", "so that the state exists")
    with closing(sqlite3.connect(cluster.state_path, timeout=30)) as db, db:
        db.execute("INSERT OR REPLACE INTO kv (key, value, previous, set_at) VALUES (?, ?, '', 0)", (key, value))


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_a_value_over_the_limit_reads_as_the_marker_and_the_other_keys_still_read(
    cluster: StandInCluster, syntax: str
) -> None:
    ledger = ledger_for(cluster, syntax=syntax)
    plant(cluster, "big", "x" * (MAX_VALUE_BYTES + 1))
    plant(cluster, "huge", "y" * (3 * MAX_VALUE_BYTES))
    ledger.set("small", "fine")
    assert ledger.get_many(["big", "huge", "small", "none"]) == {
        "big": OVERSIZED_VALUE, "huge": OVERSIZED_VALUE, "small": "fine", "none": None,
    }


def test_a_tool_streaming_a_huge_value_is_killed_before_the_end(cluster: StandInCluster) -> None:
    ledger = ledger_for(cluster)
    cluster.behave(huge_values_bytes=200_000_000)
    assert ledger.get("k") == OVERSIZED_VALUE
    [call] = cluster.calls()
    assert call.ended is None  # the tool never got to log the end of its call: it was killed mid-value


def test_a_tool_printing_without_end_on_a_set_is_a_ledger_error(tmp_path: Path, cluster: StandInCluster) -> None:
    chatty = tmp_path / "chatty_tool"
    chatty.write_text("#!/bin/sh\nexec head -c 100000000 /dev/zero\n")
    chatty.chmod(0o755)
    with pytest.raises(LedgerError, match="printed more than"):
        ResilientDBLedger(chatty, cluster.config).set("k", "v")


def test_the_tool_gets_a_minimal_environment_without_the_password(
    cluster: StandInCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESCHAT_PASSWORD", "correct horse battery staple")
    monkeypatch.setenv("SOME_TOKEN", "not for the tool")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    cluster.behave(record_environment=True)
    ledger_for(cluster).get("k")
    seen = cluster.recorded_environment()
    assert seen is not None
    assert "correct horse battery staple" not in seen.values()
    assert "RESCHAT_PASSWORD" not in seen and "SOME_TOKEN" not in seen
    assert seen.get("PATH") == os.environ["PATH"] and seen.get("LC_ALL") == "C.UTF-8"
    allowed = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"}
    # Python itself may add LC_CTYPE when it coerces a C locale.
    assert all(name in allowed or name.startswith(("LC_", "GLOG_")) for name in seen), sorted(seen)


def test_tool_environment_keeps_only_what_a_tool_needs() -> None:
    environ = {"PATH": "/bin", "HOME": "/h", "LC_TIME": "C", "GLOG_v": "1", "RESCHAT_PASSWORD": "x",
               "RESCHAT_HOME": "/p", "PYTHONPATH": "/evil", "LD_PRELOAD": "/evil.so"}
    assert tool_environment(environ) == {"PATH": "/bin", "HOME": "/h", "LC_TIME": "C", "GLOG_v": "1"}


def test_the_stand_in_serves_stale_reads_when_the_environment_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in itself: with RESCHAT_STANDIN_STALE_READS, a read right after a write is sometimes the
    previous value (never anything else); with it off, never."""
    monkeypatch.setenv(STALE_READS_ENV, "1")
    cluster = StandInCluster.create(tmp_path / "stale")
    assert cluster.behaviour["stale_reads_after_set_s"] == 1.0
    assert cluster.behaviour["stale_read_probability"] == 0.3
    ledger = ledger_for(cluster)
    seen = []
    for i in range(40):
        ledger.set(f"k{i}", "old")
        ledger.set(f"k{i}", "new")
        seen.append(ledger.get(f"k{i}"))
    assert set(seen) <= {"old", "new"}
    # p = 0.3 of 40 reads (each well within 1 s of its write): none stale or all stale is below 1e-6
    assert 0 < seen.count("old") < 40
    monkeypatch.setenv(STALE_READS_ENV, "0")
    assert "stale_reads_after_set_s" not in StandInCluster.create(tmp_path / "fresh").behaviour
