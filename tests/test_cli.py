"""The scriptable subcommands, through the installed ``reschat`` console script.

Two profiles are made once per module with ``reschat init`` (RSA-3072 and the real scrypt cost, a
few seconds) and copied for each test, which then runs on its own ledger file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reschat import crypto, files
from reschat.app import open_chat
from reschat.cli import main
from reschat.config import load_settings
from reschat.ledger import LocalLedger
from tests.standin import StandInCluster

SCRIPT = Path(sys.executable).parent / "reschat"
PASSWORDS = {"alice": "alice's secret", "bob": "bob's secret"}

Run = Callable[..., subprocess.CompletedProcess[str]]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESCHAT_")}
    env.update(extra)
    return env


def reschat(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if not SCRIPT.exists():
        pytest.fail(f"the reschat console script is not installed next to {sys.executable}: pip install -e '.[test]'")
    return subprocess.run(
        [str(SCRIPT), *args],
        input=stdin if stdin is not None else "",
        capture_output=True, text=True, timeout=120, check=False,
        env=env if env is not None else clean_env(),
    )


def one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("reschat: error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("profiles")
    made = reschat("--home", str(root / "alice"), "init", "--name", "alice",
                   env=clean_env(RESCHAT_PASSWORD=PASSWORDS["alice"]))
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("Created the identity of alice")
    password_file = root / "bob-password"
    password_file.write_text(PASSWORDS["bob"] + "\n")
    made = reschat("init", "--name", "bob", "--home", str(root / "bob"), "--password-file", str(password_file))
    assert made.returncode == 0, made.stderr
    return root


@pytest.fixture
def world(tmp_path: Path, templates: Path) -> Path:
    for name in PASSWORDS:
        shutil.copytree(templates / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def as_user(world: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run reschat as ``name`` on the test's own ledger, with the password in the environment."""

    def go(name: str, *args: str, stdin: str | None = None, password: bool = True) -> subprocess.CompletedProcess[str]:
        env = clean_env(RESCHAT_PASSWORD=PASSWORDS[name]) if password else clean_env()
        return reschat("--home", str(world / name), "--ledger", str(world / "ledger.sqlite"), *args,
                       stdin=stdin, env=env)

    return go


def card_of(world: Path, name: str) -> str:
    return crypto.make_card(name, crypto.load_public_key(world / name))


def befriend(as_user: Run, world: Path) -> None:
    assert as_user("alice", "add", "bob", card_of(world, "bob"), password=False).returncode == 0
    assert as_user("bob", "add", "alice", card_of(world, "alice"), password=False).returncode == 0


# --- version, help ---------------------------------------------------------------------------------


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    version = reschat("--version")
    assert version.returncode == 0 and version.stdout.strip() == "reschat 0.1.0"
    top = reschat("--help")
    assert top.returncode == 0
    for command in ("init", "whoami", "add", "friends", "send", "read", "save", "doctor", "--home", "--ledger",
                    "--debug"):
        assert command in top.stdout
    capsys.readouterr()
    # in-process: startup costs add up
    for command in ("init", "whoami", "add", "friends", "send", "read", "save", "doctor"):
        assert main([command, "--help"], environ={}) == 0
        helped = capsys.readouterr().out
        assert f"usage: reschat {command}" in helped and "--home DIR" in helped


def test_usage_error_exits_2() -> None:
    result = reschat("send")
    assert result.returncode == 2
    assert "usage: reschat send" in result.stderr


# --- init, whoami ------------------------------------------------------------------------------------


def test_whoami_prints_card_and_fingerprint_without_a_password(world: Path) -> None:
    result = reschat("whoami", env=clean_env(RESCHAT_HOME=str(world / "alice")))
    assert result.returncode == 0, result.stderr
    card, fpr = result.stdout.splitlines()
    contact = crypto.parse_contact(card)
    assert contact.name == "alice"
    assert crypto.fingerprint(contact.public_key) == fpr
    assert contact.public_key == crypto.load_public_key(world / "alice")


def test_init_refuses_an_existing_identity_and_a_missing_password(world: Path) -> None:
    again = reschat("--home", str(world / "alice"), "init", "--name", "x", env=clean_env(RESCHAT_PASSWORD="p"))
    one_line_error(again, "an identity already exists")
    no_password = reschat("--home", str(world / "new"), "init", "--name", "carol")
    one_line_error(no_password, "no password: set RESCHAT_PASSWORD or use --password-file FILE")
    bad_name = reschat("--home", str(world / "new"), "init", "--name", " ")
    one_line_error(bad_name, "the name must not be empty")


def test_whoami_without_identity(world: Path) -> None:
    one_line_error(reschat("--home", str(world / "nobody"), "whoami"), "no identity in")


# --- add, friends ------------------------------------------------------------------------------------


def test_add_from_card_text(as_user: Run, world: Path) -> None:
    added = as_user("alice", "add", "bob", card_of(world, "bob"), password=False)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [
        "Added bob (name on the card: bob)",
        f"Fingerprint: {crypto.fingerprint(crypto.load_public_key(world / 'bob'))}",
    ]


def test_add_from_stdin_and_from_a_pem_file(as_user: Run, world: Path) -> None:
    by_stdin = as_user("alice", "add", "bob", "-", stdin=card_of(world, "bob") + "\n", password=False)
    assert by_stdin.returncode == 0, by_stdin.stderr
    by_file = as_user("bob", "add", "alice", str(world / "alice" / "public_key.pem"), password=False)
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout.splitlines()[0] == "Added alice"


def test_add_errors(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    one_line_error(as_user("alice", "add", "bob", card_of(world, "bob"), password=False), "already in use")
    one_line_error(as_user("alice", "add", "me", card_of(world, "alice"), password=False), "your own key")
    one_line_error(as_user("alice", "add", "x", "not a key", password=False), "not a contact card")
    one_line_error(as_user("alice", "add", "x", "missing.pem", password=False), "no such file: missing.pem")
    private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    one_line_error(as_user("alice", "add", "x", "-", stdin=private, password=False), "PRIVATE key")


def test_friends_lists_nickname_fingerprint_unread(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    assert as_user("bob", "send", "alice", "-", stdin="one\n").returncode == 0
    listed = as_user("alice", "friends", password=False)
    assert listed.returncode == 0, listed.stderr
    bob_fpr = crypto.fingerprint(crypto.load_public_key(world / "bob"))
    assert listed.stdout == f"bob\t{bob_fpr}\t1\n"
    as_json = json.loads(as_user("alice", "friends", "--json", password=False).stdout)
    assert as_json == [{"nickname": "bob", "name": "bob", "fingerprint": bob_fpr, "unread": 1}]
    assert as_user("alice", "read", "bob").returncode == 0
    assert json.loads(as_user("alice", "friends", "--json", password=False).stdout)[0]["unread"] == 0


# --- send, read --------------------------------------------------------------------------------------


def test_send_and_read_json_shape(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    before = datetime.now().astimezone()
    password_file = world / "pw"
    password_file.write_text(PASSWORDS["alice"] + "\n")
    sent = as_user("alice", "send", "bob", "hello bob", "--password-file", str(password_file), password=False)
    assert sent.returncode == 0, sent.stderr
    assert (sent.stdout, sent.stderr) == ("Sent to bob.\n", "")  # one line, and only on success
    assert as_user("bob", "send", "alice", "-", stdin="line one\nline two\n").returncode == 0
    result = as_user("bob", "read", "alice", "--json")
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout)
    assert [(m["from"], m["to"], m["text"]) for m in messages] == [
        ("alice", "me", "hello bob"),
        ("me", "alice", "line one\nline two"),
    ]
    for message in messages:
        assert message["type"] == "text" and message["verified"] is True
        moment = datetime.fromisoformat(message["time"])
        assert moment.utcoffset() == timedelta(0)
        assert before - timedelta(minutes=1) < moment < datetime.now().astimezone() + timedelta(minutes=1)
    plain = as_user("alice", "read", "bob")
    assert plain.returncode == 0
    lines = plain.stdout.splitlines()
    assert lines[0].endswith(" me: hello bob")
    assert lines[1].endswith("   bob: line one")
    assert lines[2] == " " * 17 + "│ line two"
    log = (world / "alice" / "reschat.log").read_text()
    assert "cmd_send" in log
    assert PASSWORDS["alice"] not in log and "hello bob" not in log
    assert (world / "alice" / "reschat.log").stat().st_mode & 0o777 == 0o600


def test_read_is_inert_and_all_reads_everything(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    settings = load_settings(home=str(world / "alice"), ledger=str(world / "ledger.sqlite"), environ={})
    chat = open_chat(settings, crypto.load_identity(world / "alice", PASSWORDS["alice"]))
    for i in range(45):
        chat.send_message(f"m{i}", "bob")
    chat.send_message("\x1b[2Jgone\u202e", "bob")
    recent = json.loads(as_user("bob", "read", "alice", "--json").stdout)
    everything = json.loads(as_user("bob", "read", "alice", "--all", "--json").stdout)
    assert [m["text"] for m in everything] == [f"m{i}" for i in range(45)] + ["\x1b[2Jgone\u202e"]
    assert len(recent) < len(everything)
    assert [m["text"] for m in recent] == [m["text"] for m in everything][-len(recent):]
    plain = as_user("bob", "read", "alice")
    assert "alice: \\x1b[2Jgone\\u202e" in plain.stdout
    assert "\x1b" not in plain.stdout and "\u202e" not in plain.stdout
    assert "older messages exist" in plain.stderr


def test_read_cuts_long_messages_unless_full_and_wraps_to_the_terminal(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    long_text = "y" * 1200 + "\n" + "\n".join(f"line {i}" for i in range(45))
    assert as_user("bob", "send", "alice", "-", stdin=long_text).returncode == 0
    spoof = "x" * 30 + " " * 60 + "✓ me: yes, I agree to wire you 5000 EUR"
    assert as_user("bob", "send", "alice", spoof).returncode == 0
    cut = as_user("alice", "read", "bob")
    assert cut.returncode == 0, cut.stderr
    gutter = " " * 17 + "│ "
    compact = "".join(cut.stdout.replace("\n" + gutter, "").split())  # rows joined, blanks ignored
    assert "[…200morecharacters;'reschatread--full'showsitwhole]" in compact
    assert "[…6morelines;'reschatread--full'showsitwhole]" in compact
    full = as_user("alice", "read", "bob", "--full")
    assert full.returncode == 0, full.stderr
    rows = full.stdout.splitlines()
    assert all(len(row) < 80 for row in rows)  # 80 columns when stdout is no terminal
    assert all(row.startswith(gutter) or row[:4].isdigit() for row in rows)  # no row poses as a message
    first_line = rows[: rows.index(gutter + "line 0")]
    assert "".join(row.removeprefix(gutter) for row in first_line).endswith("bob: " + "y" * 1200)
    assert [row.removeprefix(gutter) for row in rows if "line " in row][-1] == "line 44"
    assert "more characters" not in full.stdout and "more lines" not in full.stdout
    narrow = reschat("--home", str(world / "alice"), "--ledger", str(world / "ledger.sqlite"), "read", "bob",
                     env=clean_env(RESCHAT_PASSWORD=PASSWORDS["alice"], COLUMNS="40"))
    assert narrow.returncode == 0 and max(len(row) for row in narrow.stdout.splitlines()) < 40
    assert all(row.startswith("  │ ") or row[:4].isdigit() for row in narrow.stdout.splitlines())
    # --json always holds the whole text.
    assert json.loads(as_user("alice", "read", "bob", "--json").stdout)[0]["text"] == long_text


def test_a_config_file_that_is_not_utf8_is_a_one_line_error(world: Path) -> None:
    bad = world / "latin1.toml"
    bad.write_bytes("[chat]\n# café\n".encode("latin-1"))
    result = reschat("--home", str(world / "alice"), "--config", str(bad), "friends")
    one_line_error(result, f"{bad}: not valid UTF-8 (line 2, column 6): save the file as UTF-8")


def test_send_and_read_errors(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    one_line_error(as_user("alice", "send", "carol", "hi"), "no friend is called 'carol'")
    one_line_error(as_user("alice", "send", "bob", "   "), "the message is empty")
    one_line_error(as_user("alice", "read", "bob", password=False), "no password")
    wrong = reschat("--home", str(world / "alice"), "--ledger", str(world / "ledger.sqlite"), "send", "bob", "x",
                    env=clean_env(RESCHAT_PASSWORD="guess"))
    one_line_error(wrong, "wrong password")
    (world / "bad.toml").write_text("[chat]\npoll_interval = -1\n")
    one_line_error(as_user("alice", "--config", str(world / "bad.toml"), "friends"), "poll_interval")


def test_menus_need_a_terminal(world: Path) -> None:
    one_line_error(reschat("--home", str(world / "alice")), "the menus need a terminal")


def test_debug_shows_the_traceback(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["whoami", "--home", str(world / "nobody"), "--debug"], environ={}) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("reschat: error: no identity in")


# --- files: send --file, read, save ------------------------------------------------------------------


def downloads(world: Path, name: str) -> list[str]:
    folder = world / name / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_send_a_file_read_it_and_save_it(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    report = os.urandom(3000)
    (world / "out").mkdir()
    (world / "out" / "report.pdf").write_bytes(report)
    (world / "out" / "notes.txt").write_bytes(b"some notes\n")
    sent = as_user("alice", "send", "bob", "--file", str(world / "out" / "report.pdf"))
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == "Sent file report.pdf (2.9 KiB) to bob.\n"
    assert as_user("alice", "send", "bob", "--file", str(world / "out" / "notes.txt")).returncode == 0
    assert as_user("alice", "send", "bob", "and a message").returncode == 0

    as_json = as_user("bob", "read", "alice", "--json")
    assert as_json.returncode == 0, as_json.stderr
    messages = json.loads(as_json.stdout)
    assert [(m["type"], m["text"]) for m in messages] == [
        ("file", "file report.pdf (2.9 KiB)"),
        ("file", "file notes.txt (11 B)"),
        ("text", "and a message"),
    ]
    assert messages[0]["file"] == {"name": "report.pdf", "size": 3000, "sha256": hashlib.sha256(report).hexdigest()}
    assert messages[0]["type_ext"] == "pdf" and messages[0]["verified"] is True
    assert "file" not in messages[2]
    plain = as_user("bob", "read", "alice").stdout.splitlines()
    assert plain[0].endswith("   alice: file report.pdf (2.9 KiB)")

    newest = as_user("bob", "save", "alice")
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout == f"{world / 'bob' / 'downloads' / 'notes.txt'}\n"
    second = as_user("bob", "save", "alice", "2")
    assert second.returncode == 0, second.stderr
    assert Path(second.stdout.strip()).read_bytes() == report
    again = as_user("bob", "save", "alice", "2")
    assert again.stdout.strip().endswith("report (1).pdf")
    own = as_user("alice", "save", "bob", "2")  # the sender can read back its own file
    assert own.returncode == 0, own.stderr
    assert Path(own.stdout.strip()) == world / "alice" / "downloads" / "report.pdf"
    assert Path(own.stdout.strip()).read_bytes() == report
    assert downloads(world, "bob") == ["notes.txt", "report (1).pdf", "report.pdf"]


def test_send_needs_exactly_one_of_text_or_file(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    (world / "f.txt").write_text("x")
    neither = as_user("alice", "send", "bob")
    assert neither.returncode == 2 and "usage: reschat send" in neither.stderr
    assert "one of the arguments TEXT --file is required" in neither.stderr
    both = as_user("alice", "send", "bob", "hi", "--file", str(world / "f.txt"))
    assert both.returncode == 2 and "not allowed with argument TEXT" in both.stderr
    one_line_error(as_user("alice", "send", "bob", "--file", str(world / "missing.bin")), "no such file")
    one_line_error(as_user("alice", "send", "bob", "--file", str(world)), "is a directory")
    assert json.loads(as_user("bob", "read", "alice", "--json").stdout) == []


def test_save_errors_are_one_line_and_save_nothing(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    one_line_error(as_user("bob", "save", "alice"), "no file in the conversation with alice")
    settings = load_settings(home=str(world / "alice"), ledger=str(world / "ledger.sqlite"), environ={})
    chat = open_chat(settings, crypto.load_identity(world / "alice", PASSWORDS["alice"]))
    (world / "secret.txt").write_bytes(b"the plans")
    sent = chat.send_file("bob", world / "secret.txt")
    one_line_error(as_user("bob", "save", "alice", "2"), "has only 1 file(s)")
    bad = as_user("bob", "save", "alice", "0")
    assert bad.returncode == 2 and "not a positive whole number: '0'" in bad.stderr

    key = files.describe(sent.message).chunk_keys[0]
    ledger = LocalLedger(world / "ledger.sqlite")
    value = ledger.get(key)
    assert value is not None
    flipped = "B" if value[-5] == "A" else "A"
    ledger.set(key, value[:-5] + flipped + value[-4:])
    ledger.close()
    one_line_error(as_user("bob", "save", "alice"), "chunk 1 of 1 of secret.txt was altered on the ledger")
    assert downloads(world, "bob") == []


# --- doctor ------------------------------------------------------------------------------------------


def test_doctor_on_a_healthy_local_ledger(world: Path) -> None:
    result = reschat("--home", str(world / "alice"), "--ledger", str(world / "ledger.sqlite"), "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ResChat doctor: ledger backend local"
    assert any(line.startswith("  ok   write ") for line in lines), result.stdout
    assert any(line.startswith("  ok   read back ") and "the value came back" in line for line in lines)
    assert lines[-1] == "Everything works."


def test_doctor_names_the_fix_when_the_proxy_is_down(world: Path) -> None:
    cluster = StandInCluster.create(world / "cluster", down=True)
    config = world / "rdb.toml"
    config.write_text(
        f"[ledger]\nbackend = \"resilientdb\"\n\n[ledger.resilientdb]\n"
        f"tool = {json.dumps(str(cluster.tool))}\nclient_config = {json.dumps(str(cluster.config))}\n"
    )
    result = reschat("--home", str(world / "alice"), "--config", str(config), "doctor")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ResChat doctor: ledger backend resilientdb" in result.stdout
    write = next(line for line in result.stdout.splitlines() if " write " in line)
    assert write.startswith("  FAIL write ")
    assert "start the ResilientDB proxy on 127.0.0.1:10005 (node 5)" in write
    assert "1 problem(s): fix the first one above" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
