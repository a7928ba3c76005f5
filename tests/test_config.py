"""Settings: defaults, the example file, precedence, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from reschat.config import ChatSettings, LedgerSettings, load_settings
from reschat.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_config_loads_and_equals_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(home=str(tmp_path), config=str(EXAMPLE), environ={})
    assert settings.ledger == LedgerSettings()
    assert settings.chat == ChatSettings()
    assert settings.config_file == EXAMPLE


def test_flags_win_over_environment_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[ledger]\nbackend = "resilientdb"\n[chat]\npoll_interval = 5\n')
    env = {"RESCHAT_CONFIG": str(cfg), "RESCHAT_HOME": str(tmp_path / "envhome"), "RESCHAT_LEDGER": "x.sqlite"}
    from_env = load_settings(environ=env)
    assert from_env.home == tmp_path / "envhome"
    assert from_env.ledger.backend == "local" and from_env.ledger_path == Path("x.sqlite")
    assert from_env.chat.poll_interval == 5.0
    from_flags = load_settings(home=str(tmp_path / "flaghome"), ledger="y.sqlite", environ=env)
    assert from_flags.home == tmp_path / "flaghome"
    assert from_flags.ledger_path == Path("y.sqlite")


def test_profile_config_is_found_without_flags(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[ledger.resilientdb]\ntimeout = 3\nclient_config = "c.json"\n')
    settings = load_settings(home=str(tmp_path), environ={})
    assert settings.ledger.resilientdb.timeout == 3.0
    assert settings.ledger.resilientdb.client_config == "c.json"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[ledger]\nbakend = 'local'\n", "ledger.bakend"),
        ("[chat]\npoll_interval = 'fast'\n", "chat.poll_interval"),
        ("[chat]\npoll_interval = -1\n", "chat.poll_interval"),
        ("[ledger]\nbackend = 'postgres'\n", "ledger.backend"),
        ("[ledger.resilientdb]\ntool = 5\n", "ledger.resilientdb.tool"),
        ("[ledger.resilientdb]\nsyntax = 'new'\n", "ledger.resilientdb.syntax"),
        ("[colours]\nx = 1\n", "colours"),
        ("ledger = 3\n", "ledger"),
        ("[ledger\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key_and_the_file(tmp_path: Path, text: str, named: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(home=str(tmp_path), config=str(cfg), environ={})
    message = str(caught.value)
    assert named in message and str(cfg) in message
    assert "\n" not in message


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(home=str(tmp_path), config=str(tmp_path / "nope.toml"), environ={})


def test_a_config_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes("[chat]\n# café\npoll_interval = 2.0\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_settings(home=str(tmp_path), config=str(cfg), environ={})
    assert str(caught.value) == f"{cfg}: not valid UTF-8 (line 2, column 6): save the file as UTF-8"


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "bom.toml"
    cfg.write_bytes(b"\xef\xbb\xbf[chat]\npoll_interval = 3\n")
    assert load_settings(home=str(tmp_path), config=str(cfg), environ={}).chat.poll_interval == 3.0


def test_bell_is_off_by_default_and_must_be_a_boolean(tmp_path: Path) -> None:
    assert ChatSettings().bell is False
    cfg = tmp_path / "bell.toml"
    cfg.write_text("[chat]\nbell = true\n")
    assert load_settings(home=str(tmp_path), config=str(cfg), environ={}).chat.bell is True
    cfg.write_text("[chat]\nbell = 'yes'\n")
    with pytest.raises(ConfigError, match=r"'chat\.bell' must be true or false"):
        load_settings(home=str(tmp_path), config=str(cfg), environ={})
