"""Issue 11, item 7: the password leaves the environment once read and never reaches the ledger tool,
and every folder of a profile is private to its owner (0700), the local ledger file too (0600)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reschat import crypto
from reschat.cli import PASSWORD_ENV, main
from tests.conftest import TEST_SCRYPT_N, make_identity
from tests.standin import StandInCluster

SCRIPT = Path(sys.executable).parent / "reschat"
PASSWORD = "tulip marble 1987 ferry"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dave's profile, with erin as a friend (erin's key only: she never runs here)."""
    home = tmp_path_factory.mktemp("template") / "dave"
    crypto.create_keys("dave", PASSWORD, home, scrypt_n=TEST_SCRYPT_N)
    assert main(["add", "erin", make_identity("erin", 1).card, "--home", str(home),
                 "--ledger", str(home.parent / "unused.sqlite")], environ={}) == 0
    return home


@pytest.fixture
def dave(tmp_path: Path, template: Path) -> Path:
    home = tmp_path / "dave"
    shutil.copytree(template, home)
    return home


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, under which a folder made without an explicit mode is 0755."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_password_leaves_the_environment_once_read(dave: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    status = main(["read", "erin", "--home", str(dave), "--ledger", str(tmp_path / "ledger.sqlite"), "--create"])
    assert status == 0  # the password was read, and it unlocked the key
    assert PASSWORD_ENV not in os.environ
    assert PASSWORD not in os.environ.values()


def test_an_injected_environment_loses_the_password_too(tmp_path: Path) -> None:
    environ = {PASSWORD_ENV: PASSWORD, "OTHER": "kept"}
    assert main(["whoami", "--home", str(tmp_path / "nobody")], environ=environ) == 1  # no identity there
    assert environ == {"OTHER": "kept"}


def test_the_ledger_tool_started_by_reschat_never_sees_the_password(dave: Path, tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", record_environment=True)
    config = tmp_path / "rdb.toml"
    config.write_text(
        f"[ledger]\nbackend = \"resilientdb\"\n\n[ledger.resilientdb]\n"
        f"tool = {json.dumps(str(cluster.tool))}\nclient_config = {json.dumps(str(cluster.config))}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESCHAT_")}
    env[PASSWORD_ENV] = PASSWORD
    result = subprocess.run([str(SCRIPT), "--home", str(dave), "--config", str(config), "read", "erin"],
                            capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 0, result.stderr
    seen = cluster.recorded_environment()
    assert seen is not None, "the tool never ran"
    assert PASSWORD_ENV not in seen and PASSWORD not in seen.values()
    assert "PATH" in seen


def test_every_profile_folder_is_0700_and_the_ledger_file_0600(dave: Path, tmp_path: Path, umask_022: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    dave.chmod(0o700)
    ledger = tmp_path / "data" / "ledgers" / "ledger.sqlite"
    (tmp_path / "data" / "ledgers").mkdir(parents=True)  # a folder for a ledger you name is never made for you
    common = ["--home", str(dave), "--ledger", str(ledger), "--create"]
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    assert main(["send", "erin", "hello", *common]) == 0
    (tmp_path / "notes.txt").write_text("notes\n")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    assert main(["send", "erin", "--file", str(tmp_path / "notes.txt"), *common]) == 0
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    assert main(["save", "erin", *common]) == 0
    fresh = tmp_path / "new" / "profile"
    assert main(["whoami", "--home", str(fresh)], environ={}) == 1  # no identity yet, but its folder exists

    folders = [p for p in dave.rglob("*") if p.is_dir()]
    assert {p.name for p in folders} >= {"lanes", "downloads"}
    assert {str(p): mode(p) for p in [dave, *folders, fresh, fresh.parent]} == {
        str(p): 0o700 for p in [dave, *folders, fresh, fresh.parent]
    }
    ledger_files = [p for p in (ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")) if p.exists()]
    assert ledger in ledger_files
    assert [mode(p) for p in ledger_files] == [0o600] * len(ledger_files)
