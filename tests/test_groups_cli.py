"""``reschat group ...``, ``reschat groups`` and group names in ``send`` and ``read``, in process (``cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reschat import crypto
from reschat.cli import main

PASSWORD = "a long test password for groups"


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("group-profiles")
    for name in ("alice", "bob", "carol"):
        crypto.create_keys(name, PASSWORD, root / name, scrypt_n=2**10)
    return root


def run(root: Path, who: str, *args: str) -> int:
    return main(["--home", str(root / who), "--ledger", str(root / "ledger.sqlite"), "--create", *args],
                environ={"RESCHAT_PASSWORD": PASSWORD})


def card(root: Path, who: str) -> str:
    text = crypto.load_card(root / who)
    if text is None:  # the card is written at the first unlock
        text = crypto.load_identity(root / who, PASSWORD).card
    return text


def test_three_people_in_a_group_from_the_command_line(templates: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = templates
    # alice is friends with bob and carol; bob and carol are not friends of each other.
    for who, other in (("alice", "bob"), ("alice", "carol"), ("bob", "alice"), ("carol", "alice")):
        assert run(root, who, "add", other, card(root, other)) == 0
    capsys.readouterr()
    assert run(root, "alice", "group", "create", "team", "bob", "carol") == 0
    assert "Created team with 3 members" in capsys.readouterr().out
    assert run(root, "bob", "groups", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(g["name"], g["members"], g["admin"]) for g in listed] == [("team", 3, False)]
    assert run(root, "bob", "send", "team", "hello from bob") == 0
    assert "Sent to team." in capsys.readouterr().out
    assert run(root, "carol", "read", "team") == 0
    out = capsys.readouterr().out
    (line,) = [row for row in out.splitlines() if "hello from bob" in row]
    assert "bob (vouched by alice" in line
    assert "added you" in out
    assert run(root, "carol", "group", "members", "team", "--json") == 0
    members = {m["name"].split(" ")[0]: m for m in json.loads(capsys.readouterr().out)}
    assert members["bob"]["vouched_by"] == "alice" and members["alice"]["admin"] and members["alice"]["friend"]
    assert run(root, "alice", "read", "team", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [m["from"] for m in shown if m["type"] == "text"] == ["bob"]
    assert run(root, "bob", "disappear", "team", "1h") == 0
    assert "Disappearing messages in team: 1 hour" in capsys.readouterr().out
    assert run(root, "alice", "disappear", "team") == 0
    assert "Disappearing messages in team: 1 hour" in capsys.readouterr().out
    # Admin actions; a non-admin is told so in one line.
    assert run(root, "bob", "group", "rename", "team", "crew") == 1
    assert "only an admin" in capsys.readouterr().err
    assert run(root, "alice", "group", "remove", "team", "carol") == 0
    capsys.readouterr()
    assert run(root, "carol", "read", "team") == 0
    assert "alice removed you" in capsys.readouterr().out
    assert run(root, "carol", "send", "team", "still there?") == 1
    assert "removed" in capsys.readouterr().err
    assert run(root, "carol", "send", "nosuch", "hi") == 1  # a profile with groups looks among them too
    assert "no friend is called 'nosuch', and no group either" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "expected"), [
    (("group", "add", "team"), "usage: reschat group add NAME NICK"),
    (("group", "members", "nosuch"), "no group is called"),
    (("send", "nosuch", "hi"), "no friend is called 'nosuch'"),
    (("group", "create", "x\x1b[2Jy"), "control"),
])
def test_bad_input_is_one_clear_line(
    templates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], expected: str,
) -> None:
    import shutil

    shutil.copytree(templates / "alice", tmp_path / "alice")
    capsys.readouterr()
    assert run(tmp_path, "alice", *args) == 1
    err = capsys.readouterr().err
    assert err.startswith("reschat: error: ") and err.count("\n") == 1 and expected in err, err
    assert "Traceback" not in err
