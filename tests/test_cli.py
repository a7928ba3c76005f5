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
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reschat import crypto, files, safety, schedule
from reschat.app import open_chat, open_friend_store
from reschat.cli import main
from reschat.config import load_settings
from reschat.ledger import LocalLedger
from tests.conftest import FaultyLedger, make_identity, make_person, rsa_key, statics_key
from tests.standin import StandInCluster
from tests.standin.http_gateway import GatewayStandIn

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
        return reschat("--home", str(world / name), "--ledger", str(world / "ledger.sqlite"), "--create", *args,
                       stdin=stdin, env=env)

    return go


def card_of(world: Path, name: str) -> str:
    """The card ``init`` stored in the profile (what ``whoami`` prints)."""
    card = crypto.load_card(world / name)
    assert card is not None
    return card


def befriend(as_user: Run, world: Path) -> None:
    assert as_user("alice", "add", "bob", card_of(world, "bob"), password=False).returncode == 0
    assert as_user("bob", "add", "alice", card_of(world, "alice"), password=False).returncode == 0


# --- version, help ---------------------------------------------------------------------------------


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    version = reschat("--version")
    assert version.returncode == 0 and version.stdout.strip() == "reschat 0.1.0"
    top = reschat("--help")
    assert top.returncode == 0
    for command in ("init", "whoami", "add", "friends", "send", "read", "save", "doctor", "verify", "ledger",
                    "disappear", "--home", "--ledger", "--debug"):
        assert command in top.stdout
    capsys.readouterr()
    # in-process: startup costs add up
    for command in ("init", "whoami", "add", "friends", "send", "read", "save", "doctor", "verify", "ledger",
                    "disappear"):
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
    assert card.startswith("reschat-card:2:")
    contact = crypto.parse_contact(card)
    assert contact.name == "alice"
    assert crypto.fingerprint(contact.public_key) == fpr
    assert contact.public_key == crypto.load_public_key(world / "alice")
    # The card carries the static keys sealed in the vault, signed by the RSA key.
    assert contact.statics == crypto.load_identity(world / "alice", PASSWORDS["alice"]).statics.public


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


def number_lines(world: Path, a: str, b: str) -> list[str]:
    """The safety number of ``a`` and ``b`` as the CLI prints it."""
    number = safety.safety_number(crypto.load_public_key(world / a), crypto.load_public_key(world / b))
    return [f"    {line}" for line in safety.safety_lines(number)]


def test_add_from_card_text_shows_the_safety_number(as_user: Run, world: Path) -> None:
    added = as_user("alice", "add", "bob", card_of(world, "bob"), password=False)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [
        "Added bob (name on the card: bob)",
        f"Fingerprint: {crypto.fingerprint(crypto.load_public_key(world / 'bob'))}",
        "Safety number with bob:",
        *number_lines(world, "alice", "bob"),
        f"bob is not verified: {safety.CHECKSUM_NOTE} Compare it with them by voice,"
        " then run 'reschat verify bob --mark'.",
    ]
    # bob, adding alice, sees the very same digits.
    other = as_user("bob", "add", "alice", card_of(world, "alice"), password=False)
    assert number_lines(world, "alice", "bob") == other.stdout.splitlines()[3:6]


def test_add_from_stdin_and_from_a_card_file(as_user: Run, world: Path) -> None:
    folded = card_of(world, "bob")
    folded = "\n".join(folded[i : i + 76] for i in range(0, len(folded), 76))  # as a mail client wraps it
    by_stdin = as_user("alice", "add", "bob", "-", stdin=folded + "\n", password=False)
    assert by_stdin.returncode == 0, by_stdin.stderr
    (world / "alice.card").write_text(card_of(world, "alice") + "\n")
    by_file = as_user("bob", "add", "alice", str(world / "alice.card"), password=False)
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout.splitlines()[0] == "Added alice (name on the card: alice)"


def test_a_pem_key_or_an_old_card_is_refused_with_ask_for_a_new_card(as_user: Run, world: Path) -> None:
    pem = world / "alice" / "public_key.pem"
    one_line_error(as_user("bob", "add", "alice", str(pem), password=False), "ask for a new card")
    one_line_error(as_user("bob", "add", "alice", "-", stdin=pem.read_text(), password=False), "ask for a new card")
    one_line_error(as_user("bob", "add", "alice", "reschat-card:1:YWxpY2U:MIIB:12345678", password=False),
                   "ask for a new card")
    assert json.loads(as_user("bob", "friends", "--json", password=False).stdout) == []


def test_add_errors(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    again = as_user("alice", "add", "BOB", card_of(world, "bob"), password=False)
    assert (again.returncode, again.stdout) == (0, "bob already has this key: nothing changed\n")
    one_line_error(as_user("alice", "add", "me", card_of(world, "alice"), password=False), "your own key")
    one_line_error(as_user("alice", "add", "x", "not a key", password=False), "not a contact card")
    one_line_error(as_user("alice", "add", "x", "missing.pem", password=False), "no such file: missing.pem")
    private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    one_line_error(as_user("alice", "add", "x", "-", stdin=private, password=False), "PRIVATE key")


def test_friends_lists_nickname_fingerprint_and_unread_as_of_the_last_update(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    assert as_user("bob", "send", "alice", "-", stdin="one\n").returncode == 0
    bob_fpr = crypto.fingerprint(crypto.load_public_key(world / "bob"))
    # Without the password nothing can be verified: the counts are those of the last update (none yet).
    listed = as_user("alice", "friends", password=False)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == f"bob\t{bob_fpr}\t0\tas of the last update (none yet)\tnot verified\n"
    as_json = json.loads(as_user("alice", "friends", "--json", password=False).stdout)
    number = safety.safety_number(crypto.load_public_key(world / "alice"), crypto.load_public_key(world / "bob"))
    assert as_json == [{"nickname": "bob", "name": "bob", "fingerprint": bob_fpr, "unread": 0, "unread_as_of": None,
                        "verified": False, "safety_number": safety.grouped(number)}]
    one_line_error(as_user("alice", "friends", "--update", password=False), "no password")

    before = datetime.now().astimezone()
    fresh = as_user("alice", "friends", "--update", "--json")  # reads bob's lane with the password
    assert fresh.returncode == 0, fresh.stderr
    [row] = json.loads(fresh.stdout)
    assert row["unread"] == 1
    counted_at = datetime.fromisoformat(row["unread_as_of"])
    assert counted_at.utcoffset() == timedelta(0)
    assert before - timedelta(minutes=1) < counted_at < datetime.now().astimezone() + timedelta(minutes=1)
    remembered = as_user("alice", "friends", password=False).stdout
    assert remembered.startswith(f"bob\t{bob_fpr}\t1\tas of the last update, ")
    assert remembered.rstrip().endswith(counted_at.astimezone().strftime("%Y-%m-%d %H:%M") + "\tnot verified")

    assert as_user("alice", "read", "bob").returncode == 0
    assert json.loads(as_user("alice", "friends", "--json", password=False).stdout)[0]["unread"] == 0


# --- safety numbers, verification, key changes -------------------------------------------------------


def test_verify_shows_the_number_and_marks_the_friend(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    shown = as_user("alice", "verify", "bob", password=False)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "Safety number with bob (they see the same digits):",
        *number_lines(world, "alice", "bob"),
        "bob is not verified: compare the number with them by voice (on the phone or face to face);"
        " if it is the same, run 'reschat verify bob --mark'.",
    ]
    marked = as_user("alice", "verify", "bob", "--mark", password=False)
    assert marked.returncode == 0 and marked.stdout.endswith("bob is now verified.\n")
    assert as_user("alice", "friends", password=False).stdout.endswith("\tverified\n")
    assert json.loads(as_user("alice", "friends", "--json", password=False).stdout)[0]["verified"] is True
    assert as_user("alice", "verify", "bob", password=False).stdout.endswith("bob is verified.\n")
    unmarked = as_user("alice", "verify", "bob", "--unmark", password=False)
    assert unmarked.stdout.endswith("bob is now not verified.\n")
    assert json.loads(as_user("alice", "friends", "--json", password=False).stdout)[0]["verified"] is False
    one_line_error(as_user("alice", "verify", "carol", password=False), "no friend is called 'carol'")
    both = as_user("alice", "verify", "bob", "--mark", "--unmark", password=False)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def impostor_card() -> str:
    """A card that says "bob" with a key that is not bob's."""
    return make_identity("bob", 2).card


def test_a_new_key_for_a_friend_is_refused_until_replace(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    assert as_user("alice", "verify", "bob", "--mark", password=False).returncode == 0
    assert as_user("bob", "send", "alice", "from the old key").returncode == 0
    assert json.loads(as_user("alice", "friends", "--update", "--json").stdout)[0]["unread"] == 1
    old_fpr = crypto.fingerprint(crypto.load_public_key(world / "bob"))
    refused = as_user("alice", "add", "bob", impostor_card(), password=False)
    one_line_error(refused, "the key on this card is NOT the key you have for bob")
    assert "'reschat add --replace bob CARD'" in refused.stderr
    alice_key = crypto.load_public_key(world / "alice")
    new_number = safety.safety_lines(safety.safety_number(alice_key, rsa_key(2)))
    assert refused.stdout.splitlines() == [
        f"Old key (the one you have): {old_fpr}",
        f"New key (on this card):     {crypto.fingerprint(rsa_key(2))}",
        "New safety number with bob, if you accept this card:",
        *(f"    {line}" for line in new_number),
    ]
    listed = json.loads(as_user("alice", "friends", "--json", password=False).stdout)
    assert (listed[0]["fingerprint"], listed[0]["verified"]) == (old_fpr, True)  # nothing changed

    replaced = as_user("alice", "add", "--replace", "bob", impostor_card(), password=False)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.startswith("Replaced the key of bob (name on the card: bob)\n")
    listed = json.loads(as_user("alice", "friends", "--json", password=False).stdout)
    assert (listed[0]["fingerprint"], listed[0]["verified"]) == (crypto.fingerprint(rsa_key(2)), False)
    # A new key is a new conversation (protocol 2 derives it from both cards): its counts start afresh,
    # the new key's messages arrive, and the old key's are not part of it.
    assert (listed[0]["unread"], listed[0]["unread_as_of"]) == (0, None)
    new_bob = make_person("bob", 2, world / "new-bob", LocalLedger(world / "ledger.sqlite"))
    new_bob.friends.add_friend("alice", crypto.parse_contact(card_of(world, "alice")))
    new_bob.chat.send_message("from the new key", "alice")
    read = as_user("alice", "read", "bob", "--json")
    assert read.returncode == 0, read.stderr
    assert [m["text"] for m in json.loads(read.stdout)] == ["from the new key"]

    one_line_error(as_user("alice", "add", "--replace", "carol", card_of(world, "alice"), password=False),
                   "your own key")
    nobody = make_identity("carol", 3).card
    one_line_error(as_user("alice", "add", "--replace", "carol", nobody, password=False),
                   "no friend is called 'carol': nothing to replace")


def test_a_newer_card_with_the_same_key_updates_the_static_keys(as_user: Run, world: Path) -> None:
    """The same identity key signed a card with other static keys (issued later): no key change, no
    warning; the card is updated and the friend stays verified (the safety number is the same). An older
    card of that key does not win back."""
    befriend(as_user, world)
    assert as_user("alice", "verify", "bob", "--mark", password=False).returncode == 0
    bob = crypto.load_identity(world / "bob", PASSWORDS["bob"])
    renewed = crypto.make_card("bob", bob.private_key, statics_key(5).public, issued=bob.issued + 1)
    updated = as_user("alice", "add", "bob", renewed, password=False)
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout == "bob already has this key; the card brings new static keys (signed by that key): updated\n"
    stored = open_friend_store(load_settings(home=str(world / "alice"), environ={})).get_friend("bob")
    assert (stored.statics, stored.issued, stored.verified) == (statics_key(5).public.to_bytes().hex(), bob.issued + 1,
                                                                True)
    again = as_user("alice", "add", "bob", renewed, password=False)
    assert again.stdout == "bob already has this key: nothing changed\n"
    older = as_user("alice", "add", "bob", card_of(world, "bob"), password=False)  # the older card does not win
    assert older.stdout == "bob already has this key: nothing changed\n"
    assert open_friend_store(load_settings(home=str(world / "alice"), environ={})).get_friend("bob").statics == (
        statics_key(5).public.to_bytes().hex()
    )


def test_a_card_with_a_friends_name_and_another_key_needs_a_choice(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    refused = as_user("alice", "add", "bobby", impostor_card(), password=False)
    one_line_error(refused, "your friend 'bob' goes by the name 'bob' too, with another key")
    assert "'reschat add --different-person bobby CARD'" in refused.stderr
    assert [f["nickname"] for f in json.loads(as_user("alice", "friends", "--json", password=False).stdout)] == ["bob"]
    added = as_user("alice", "add", "--different-person", "bobby", impostor_card(), password=False)
    assert added.returncode == 0, added.stderr
    friends = json.loads(as_user("alice", "friends", "--json", password=False).stdout)
    assert [f["nickname"] for f in friends] == ["bob", "bobby"]


# --- disappearing messages ---------------------------------------------------------------------------


def test_disappear_shows_and_sets_the_timer_and_both_sides_see_the_line(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    shown = as_user("alice", "disappear", "bob")
    assert (shown.returncode, shown.stdout) == (0, "Disappearing messages with bob: off\n"), shown.stderr
    one_line_error(as_user("alice", "disappear", "bob", "3s", password=False),
                   "disappearing messages take a timer from 5 minutes to 4 weeks")
    one_line_error(as_user("alice", "disappear", "bob", "soon", password=False), "not a duration: 'soon'")
    one_line_error(as_user("alice", "disappear", "carol", "1h", password=False), "no friend is called 'carol'")
    set_ = as_user("alice", "disappear", "bob", "1h")
    assert set_.returncode == 0, set_.stderr
    assert set_.stdout == "Disappearing messages with bob: 1 hour (from now on, on both sides)\n"
    again = as_user("alice", "disappear", "bob", "60m")
    assert again.stdout == "Disappearing messages with bob are already 1 hour: nothing changed\n"
    # bob reads the change as a plain line; his side follows it.
    read = as_user("bob", "read", "alice")
    assert read.returncode == 0, read.stderr
    [line] = read.stdout.splitlines()
    assert line.endswith(" -- alice set disappearing messages to 1 hour")
    assert as_user("bob", "disappear", "alice").stdout == "Disappearing messages with alice: 1 hour\n"
    [row] = json.loads(as_user("bob", "read", "alice", "--json").stdout)
    assert (row["type"], row["disappear"], row["text"], row["from"]) == (
        "setting", 3600, "set disappearing messages to 1 hour", "alice"
    )
    # bob turns it off, and alice sees that.
    off = as_user("bob", "disappear", "alice", "off")
    assert off.stdout == "Disappearing messages with alice: off (from now on, on both sides)\n"
    lines = as_user("alice", "read", "bob").stdout.splitlines()
    assert lines[-1].endswith(" -- bob turned disappearing messages off")
    assert lines[0].endswith(" -- you set disappearing messages to 1 hour")
    assert as_user("alice", "disappear", "bob").stdout == "Disappearing messages with bob: off\n"


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
        assert message["epoch"] == 1 and message["clock_ahead"] is False
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
    LocalLedger(world / "ledger.sqlite").close()
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
    one_line_error(as_user("bob", "save", "alice"), "no file in the conversation with alice")  # made the ledger
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
    result = reschat("--home", str(world / "alice"), "--ledger", str(world / "ledger.sqlite"), "--create", "doctor")
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


# --- ledger: where messages travel ------------------------------------------------------------------


@pytest.fixture
def gateway() -> Iterator[GatewayStandIn]:
    with GatewayStandIn() as server:
        yield server


@pytest.fixture
def on_profile(world: Path) -> Run:
    """Run reschat as ``name`` with only the profile's own config (no --ledger)."""

    def go(name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return reschat("--home", str(world / name), *args, stdin=stdin,
                       env=clean_env(RESCHAT_PASSWORD=PASSWORDS[name]))

    return go


def test_chat_across_machines_through_a_gateway_from_zero(
    on_profile: Run, world: Path, gateway: GatewayStandIn
) -> None:
    """The README's "Chat across machines", as each friend types it."""
    for name in ("alice", "bob"):
        switched = on_profile(name, "ledger", "http", gateway.url)
        assert switched.returncode == 0, switched.stdout + switched.stderr
        assert switched.stdout.splitlines() == [
            f"Ledger: ResilientDB HTTP gateway at {gateway.url}",
            "Checked: a write and a read back work.",
            f"Saved in {world / name / 'config.toml'}",
        ]
        shown = on_profile(name, "ledger")
        assert shown.stdout.splitlines()[:2] == [
            f"Ledger: ResilientDB HTTP gateway at {gateway.url}",
            f"Set in: {world / name / 'config.toml'}",
        ]
        doctor = on_profile(name, "doctor")
        assert doctor.returncode == 0 and doctor.stdout.splitlines()[-1] == "Everything works.", doctor.stdout
    alice_card = on_profile("alice", "whoami").stdout.splitlines()[0]
    bob_card = on_profile("bob", "whoami").stdout.splitlines()[0]
    # Each card, signed again for the new ledger, names the gateway; the same ledger gives no warning.
    assert crypto.parse_contact(alice_card).location == gateway.url == crypto.parse_contact(bob_card).location
    added = on_profile("alice", "add", "bob", bob_card)
    assert added.returncode == 0 and "Warning" not in added.stdout
    assert on_profile("bob", "add", "alice", alice_card).returncode == 0
    assert on_profile("alice", "send", "bob", "hello across machines").returncode == 0
    read = on_profile("bob", "read", "alice", "--json")
    assert read.returncode == 0, read.stderr
    assert [m["text"] for m in json.loads(read.stdout)] == ["hello across machines"]
    assert any(key.startswith(schedule.ADDRESS_PREFIX) for key in gateway.store)  # it went through the gateway
    assert not (world / "ledger.sqlite").exists()


def test_a_card_naming_another_ledger_gets_a_warning_with_the_command_that_switches(
    on_profile: Run, world: Path, gateway: GatewayStandIn
) -> None:
    assert on_profile("bob", "ledger", "http", gateway.url).returncode == 0
    bob_card = on_profile("bob", "whoami").stdout.splitlines()[0]
    added = on_profile("alice", "add", "bob", bob_card)  # alice is still on this machine's ledger
    assert added.returncode == 0, added.stderr
    assert f"Warning: bob's card says their messages travel through the ResilientDB gateway at {gateway.url};" \
           " yours travel through this machine only" in added.stdout
    assert f"To use theirs: reschat ledger http {gateway.url}" in added.stdout
    # The other way round: bob is told that alice's messages stay on her machine.
    back = on_profile("bob", "add", "alice", on_profile("alice", "whoami").stdout.splitlines()[0])
    assert "Warning: alice's card says their messages travel through their own machine only" in back.stdout


def test_whoami_without_a_password_after_a_switch_prints_the_card_and_says_it_names_the_old_ledger(
    on_profile: Run, world: Path, gateway: GatewayStandIn
) -> None:
    before = on_profile("alice", "whoami").stdout.splitlines()[0]
    assert crypto.parse_contact(before).location == "local"
    assert on_profile("alice", "ledger", "http", gateway.url).returncode == 0
    shown = reschat("--home", str(world / "alice"), "whoami", env=clean_env())
    assert shown.returncode == 0
    assert shown.stdout.splitlines()[0] == before
    assert "this card still names your previous ledger" in shown.stderr and shown.stderr.count("\n") == 1


def test_switching_to_a_gateway_that_fails_its_check_changes_nothing(
    on_profile: Run, world: Path, gateway: GatewayStandIn
) -> None:
    gateway.failing = True
    refused = on_profile("alice", "ledger", "http", gateway.url)
    assert refused.returncode == 1
    assert "FAIL gateway answers" in refused.stdout
    assert refused.stderr.startswith("reschat: error: gateway answers: ")
    assert "cannot reach the cluster" in refused.stderr
    assert "not switched, the ledger is still this machine only" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert not (world / "alice" / "config.toml").exists()
    forced = on_profile("alice", "ledger", "http", gateway.url, "--no-check")
    assert forced.returncode == 0, forced.stderr
    assert "Not checked: run 'reschat doctor'." in forced.stdout
    assert on_profile("alice", "doctor").returncode == 1
    one_line_error(on_profile("alice", "ledger", "http", "ftp://192.0.2.7"), "is not an http(s) URL")


def test_switching_to_kv_service_tools_and_back_to_this_machine(on_profile: Run, world: Path) -> None:
    cluster = StandInCluster.create(world / "cluster")
    config = world / "alice" / "config.toml"
    config.write_text("# chat faster\n[chat]\npoll_interval = 0.5\n")
    switched = on_profile("alice", "ledger", "tool", str(cluster.tool), str(cluster.config))
    assert switched.returncode == 0, switched.stdout + switched.stderr
    assert switched.stdout.splitlines()[0] == (
        f"Ledger: ResilientDB through {cluster.tool} with the client config {cluster.config}"
    )
    assert f"the old file is {config}.bak" in switched.stdout
    assert [c.cmd for c in cluster.calls()][:2] == ["set", "get"]
    assert on_profile("alice", "doctor").returncode == 0
    settings = load_settings(home=str(world / "alice"), environ={})
    assert settings.chat.poll_interval == 0.5  # the other settings stayed

    down = StandInCluster.create(world / "down", down=True)
    refused = on_profile("alice", "ledger", "tool", str(down.tool), str(down.config))
    one_line_error(refused, "start the ResilientDB proxy on 127.0.0.1:10005 (node 5)")
    assert load_settings(home=str(world / "alice"), environ={}).ledger.resilientdb.client_config == str(cluster.config)

    own_file = world / "elsewhere" / "chat.sqlite"
    refused = on_profile("alice", "ledger", "local", str(own_file), "--create")
    assert refused.returncode == 1 and "ResChat makes no folder for a ledger file you named" in refused.stderr
    (world / "elsewhere").mkdir()
    refused = on_profile("alice", "ledger", "local", str(own_file))
    assert refused.returncode == 1 and "does not exist: to make a new, empty one there, add --create" in refused.stderr
    assert not own_file.exists()
    back = on_profile("alice", "ledger", "local", str(own_file), "--create")
    assert back.returncode == 0, back.stderr
    assert back.stdout.splitlines()[0] == f"Ledger: this machine only, the file {own_file}"
    assert load_settings(home=str(world / "alice"), environ={}).ledger_path == own_file


def test_ledger_shows_the_default_and_what_overrides_it(world: Path, as_user: Run) -> None:
    plain = reschat("--home", str(world / "alice"), "ledger")
    assert plain.returncode == 0
    lines = plain.stdout.splitlines()
    assert lines[0].startswith("Ledger: this machine only, the file ")
    assert lines[1] == f"Set in: nothing, it is the default (a switch writes {world / 'alice' / 'config.toml'})"
    overridden = as_user("alice", "ledger", password=False)
    assert overridden.stdout.splitlines()[:2] == [
        f"Ledger: this machine only, the file {world / 'ledger.sqlite'}",
        "Set by: --ledger or RESCHAT_LEDGER (they win over the config file)",
    ]


# --- a ledger file that is not there (issue 12) -------------------------------------------------------


def test_a_ledger_file_that_does_not_exist_is_refused_until_create_and_no_folder_is_made(
    as_user: Run, world: Path
) -> None:
    befriend(as_user, world)
    env = clean_env(RESCHAT_PASSWORD=PASSWORDS["alice"])
    missing = world / "elsewhere.sqlite"
    refused = reschat("--home", str(world / "alice"), "--ledger", str(missing), "send", "bob", "hi", env=env)
    one_line_error(refused, f"the local ledger {missing} does not exist: to make a new, empty one there, add --create")
    assert not missing.exists()
    nowhere = world / "no" / "such" / "folder.sqlite"
    alice = str(world / "alice")
    refused = reschat("--home", alice, "--ledger", str(nowhere), "--create", "send", "bob", "hi", env=env)
    one_line_error(refused, f"the folder {nowhere.parent} does not exist: ResChat makes no folder")
    assert not (world / "no").exists()
    made = reschat("--home", str(world / "alice"), "--ledger", str(missing), "--create", "send", "bob", "hi", env=env)
    assert made.returncode == 0, made.stderr
    assert missing.is_file() and LocalLedger(missing).get(
        open_chat(load_settings(home=str(world / "alice"), ledger=str(missing), environ={}),
                  crypto.load_identity(world / "alice", PASSWORDS["alice"])).lane_address("bob", mine=True, number=1)
    ) is not None


def test_a_command_delivers_what_waits_for_another_friend_too(as_user: Run, world: Path) -> None:
    befriend(as_user, world)
    path = world / "ledger.sqlite"
    carol = make_person("carol", 2, world / "carol", LocalLedger(path))
    carol.friends.add_friend("alice", crypto.parse_contact(card_of(world, "alice")))
    assert as_user("alice", "add", "carol", carol.card, password=False).returncode == 0
    lossy = FaultyLedger(LocalLedger(path))
    lossy.drop_sets = True  # the write of alice's message to carol is lost on the way
    settings = load_settings(home=str(world / "alice"), ledger=str(path), environ={})
    alice = open_chat(settings, crypto.load_identity(world / "alice", PASSWORDS["alice"]), ledger=lossy)
    assert alice.send_message("hi carol", "carol").error is None
    assert [m.text for m in carol.chat.get_update("alice").messages] == []
    # The next command alice runs is about bob; what waits for carol goes out too.
    assert as_user("alice", "read", "bob").returncode == 0
    assert [m.text for m in carol.chat.get_update("alice").messages] == ["hi carol"]
