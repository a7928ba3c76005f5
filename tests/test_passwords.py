"""Issue 11, item 8: a new identity gets no weak password (each refusal says why, on one line), and an
existing identity is unlocked with whatever password it has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reschat import crypto
from reschat.cli import main
from reschat.errors import WeakPasswordError
from reschat.passwords import MIN_LENGTH, check_new_password
from tests.conftest import TEST_SCRYPT_N, make_identity

SCRIPT = Path(sys.executable).parent / "reschat"
STRONG = "tulip marble 1987 ferry"


@pytest.mark.parametrize("password", ["k7#Pq!x2Zm", STRONG, "x" * 60 + "k7#Pq!x2Zm-tulip-ferry"])
def test_strong_passwords_are_accepted(password: str) -> None:
    check_new_password(password)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("", "too short: use at least 10 characters"),
        ("k7#Pq!x2Z", "too short: use at least 10 characters"),  # strong, but one character short
        ("password123!", "too easy to guess: this is similar to a commonly used password"),
        ("qwertyuiop", "too easy to guess: this is a top-100 common password"),
        ("aaaaaaaaaaaaaaaa", 'too easy to guess: repeats like "aaa" are easy to guess'),
        ("a" * 200, 'too easy to guess: repeats like "aaa" are easy to guess'),  # beyond what zxcvbn rates
    ],
)
def test_weak_passwords_are_refused_with_a_one_line_reason(password: str, reason: str) -> None:
    with pytest.raises(WeakPasswordError) as refused:
        check_new_password(password)
    assert str(refused.value).startswith(reason)
    assert "\n" not in str(refused.value)
    assert len(password) < MIN_LENGTH or str(refused.value).endswith("use a few uncommon words or more characters")


def test_the_users_own_name_counts_as_easy_to_guess() -> None:
    check_new_password("zorblaxqwimb")  # two rare words: fine for someone else
    with pytest.raises(WeakPasswordError, match="too easy to guess"):
        check_new_password("zorblaxqwimb", user_inputs=["Zorblax Qwimb"])


def run_init(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "--home", str(home), "init", "--name", "carol"],
        capture_output=True, text=True, timeout=120, check=False, env={"PATH": "/usr/bin:/bin", **env},
    )


def test_init_refuses_a_weak_password_before_making_any_key(tmp_path: Path) -> None:
    for password, reason in (("pw", "too short"), ("password123!", "too easy to guess")):
        result = run_init(tmp_path / "carol", RESCHAT_PASSWORD=password)
        assert result.returncode == 1, result
        assert result.stderr.startswith(f"reschat: error: {reason}: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    file = tmp_path / "password"
    file.write_text("carolcarol\n")
    result = subprocess.run(
        [str(SCRIPT), "--home", str(tmp_path / "carol"), "init", "--name", "carol", "--password-file", str(file)],
        capture_output=True, text=True, timeout=120, check=False, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1 and result.stderr.startswith("reschat: error: too easy to guess: ")
    assert not crypto.identity_exists(tmp_path / "carol")


def test_unlocking_an_existing_identity_accepts_its_weak_password(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # An identity made before the rules (or by a test): its password still opens it.
    home = tmp_path / "old"
    crypto.create_keys("dave", "pw", home, scrypt_n=TEST_SCRYPT_N)
    friend = make_identity("erin", 1).card
    common = ["--home", str(home), "--ledger", str(tmp_path / "ledger.sqlite"), "--create"]
    assert main(["add", "erin", friend, *common], environ={}) == 0
    assert main(["read", "erin", "--json", *common], environ={"RESCHAT_PASSWORD": "pw"}) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "[]"
