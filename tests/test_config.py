"""Settings: defaults, the example file, precedence, and errors that name the key and the file."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reschat.config import (
    ChatSettings,
    HttpSettings,
    LedgerSettings,
    ResilientDBSettings,
    Settings,
    describe_ledger,
    dump_toml,
    http_ledger,
    load_settings,
    local_ledger,
    toml_string,
    tool_ledger,
    update_config,
)
from reschat.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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


# --- writing the config (the first-run question and `reschat ledger`) ------------------------------


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_any_string_survives_a_round_trip_through_the_toml_writer(text: str) -> None:
    written = dump_toml({"ledger": {"path": text, text or "x": text}})
    assert tomllib.loads(written) == {"ledger": {"path": text, text or "x": text}}


def test_a_string_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        toml_string("bad \udcff name")


def test_update_config_keeps_other_settings_and_backs_up_comments(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("# my notes\n[chat]\npoll_interval = 0.5\n\n[ledger.http]\ntimeout = 3\n")
    written = update_config(cfg, http_ledger("http://192.0.2.7:18000"))
    assert written.backup == tmp_path / "config.toml.bak"
    assert written.backup.read_text().startswith("# my notes\n")
    settings = load_settings(home=str(tmp_path), environ={})
    assert settings.ledger.backend == "resilientdb-http"
    assert settings.ledger.http == HttpSettings(url="http://192.0.2.7:18000", timeout=3.0)
    assert settings.chat.poll_interval == 0.5
    assert cfg.stat().st_mode & 0o777 == 0o600
    # Back to this machine: the gateway's settings stay for a later switch, no second backup.
    again = update_config(cfg, local_ledger())
    assert again.backup is None
    settings = load_settings(home=str(tmp_path), environ={})
    assert settings.ledger.backend == "local" and settings.ledger.path == ""
    assert settings.ledger.http.url == "http://192.0.2.7:18000"


def test_update_config_creates_the_file_and_never_writes_a_bad_value(tmp_path: Path) -> None:
    cfg = tmp_path / "profile" / "config.toml"
    update_config(cfg, tool_ledger("kv_service_tools", "client.config", legacy=True))
    settings = load_settings(home=str(tmp_path / "profile"), environ={})
    assert settings.ledger.resilientdb == ResilientDBSettings(
        tool="kv_service_tools", client_config=os.path.abspath("client.config"), syntax="legacy"
    )
    before = cfg.read_text()
    with pytest.raises(ConfigError, match=r"ledger\.backend"):
        update_config(cfg, {"ledger": {"backend": "postgres"}})
    assert cfg.read_text() == before


def test_update_config_refuses_a_damaged_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(b"[ledger\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        update_config(cfg, local_ledger())
    cfg.write_bytes(b"path = '\xff'\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        update_config(cfg, local_ledger())
    assert cfg.read_bytes() == b"path = '\xff'\n"


@pytest.mark.parametrize("url", ["ftp://192.0.2.7", "192.0.2.7:18000", "http://", ""])
def test_a_gateway_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        http_ledger(url)


@pytest.mark.parametrize("url", ["http://me:secret@192.0.2.7:18000", "https://me@192.0.2.7"])
def test_a_gateway_url_carries_no_password(url: str) -> None:
    with pytest.raises(ConfigError, match="must not carry a user name or password") as caught:
        http_ledger(url)
    assert "secret" not in str(caught.value)


def test_ledger_paths_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_ledger("chat.sqlite") == {"ledger": {"backend": "local", "path": str(tmp_path / "chat.sqlite")}}
    table = tool_ledger("./bin/kv_service_tools", "c.json")["ledger"]["resilientdb"]
    assert table["tool"] == str(tmp_path / "bin" / "kv_service_tools")  # a path
    assert tool_ledger("kv_service_tools", "c.json")["ledger"]["resilientdb"]["tool"] == "kv_service_tools"  # on PATH
    with pytest.raises(ConfigError, match="client config is required"):
        tool_ledger("kv_service_tools", " ")


def test_describe_ledger(tmp_path: Path) -> None:
    base = Settings(home=tmp_path)
    assert describe_ledger(replace(base, ledger=LedgerSettings(path="/x/l.sqlite"))) == (
        "this machine only, the file /x/l.sqlite"
    )
    http = LedgerSettings(backend="resilientdb-http", http=HttpSettings(url="http://h:18000"))
    assert describe_ledger(replace(base, ledger=http)) == "ResilientDB HTTP gateway at http://h:18000"
    rdb = LedgerSettings(backend="resilientdb", resilientdb=ResilientDBSettings(tool="t", client_config="c"))
    assert describe_ledger(replace(base, ledger=rdb)) == "ResilientDB through t with the client config c"


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


def test_writing_the_ledger_choice_keeps_the_bell_and_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(b"\xef\xbb\xbf[chat]\nbell = true\n")
    update_config(cfg, local_ledger())
    settings = load_settings(home=str(tmp_path), environ={})
    assert settings.chat.bell is True and settings.ledger.backend == "local"
    assert "bell = true" in cfg.read_text()
