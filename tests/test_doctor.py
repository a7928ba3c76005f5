"""``run_doctor`` against the stand-in ResilientDB tool, the gateway stand-in and the local ledger: a
healthy setup passes every check, and each broken one fails the right check with a fix in plain words."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from reschat import crypto
from reschat.config import HttpSettings, LedgerSettings, ResilientDBSettings, Settings
from reschat.doctor import DoctorReport, format_report, probe_key, run_doctor
from reschat.errors import LedgerUnavailableError
from reschat.friends import FriendStore
from reschat.ledger import Ledger
from tests.conftest import rsa_key, statics_key
from tests.standin import StandInCluster
from tests.standin.http_gateway import GatewayStandIn
from tests.test_ledger_resilientdb import gone_or_zombie

#: A fixed "random" source, so the tests know which key the doctor writes.
RANDOM_BYTE = b"\x5a"
PROBE_KEY = probe_key(lambda n: RANDOM_BYTE * n)


def fixed_random(n: int) -> bytes:
    return RANDOM_BYTE * n


def rdb_settings(tmp_path: Path, cluster: StandInCluster, **options: object) -> Settings:
    chosen: dict[str, object] = {"tool": str(cluster.tool), "client_config": str(cluster.config), **options}
    rdb = ResilientDBSettings(**chosen)  # type: ignore[arg-type]
    return Settings(home=tmp_path / "home", ledger=LedgerSettings(backend="resilientdb", resilientdb=rdb))


def http_settings(tmp_path: Path, url: str, timeout: float = 5.0) -> Settings:
    http = HttpSettings(url=url, timeout=timeout)
    return Settings(home=tmp_path / "home", ledger=LedgerSettings(backend="resilientdb-http", http=http))


def local_settings(tmp_path: Path, path: Path) -> Settings:
    """A ledger file named in the settings, made if missing (as --create asks)."""
    return Settings(home=tmp_path / "home", ledger=LedgerSettings(backend="local", path=str(path)), create_ledger=True)


def check(report: DoctorReport, name: str) -> tuple[bool, str]:
    found = [c for c in report.checks if c.name == name]
    assert len(found) == 1, f"no single {name!r} check in {[c.name for c in report.checks]}"
    return found[0].ok, found[0].detail


def names(report: DoctorReport) -> list[str]:
    return [c.name for c in report.checks]


def failed(report: DoctorReport) -> list[str]:
    return [c.name for c in report.problems]


def no_process_mentions(text: str) -> bool:
    """True once every process with ``text`` in its command line has died (within a deadline each)."""
    mentioning = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                mentioning.append(int(proc.name))
        except OSError:
            continue  # it ended while we looked
    return all(gone_or_zombie(pid) for pid in mentioning)


@pytest.fixture
def gateway() -> Iterator[GatewayStandIn]:
    with GatewayStandIn() as server:
        yield server


# --- ResilientDB through kv_service_tools ---------------------------------------------------------


@pytest.mark.parametrize(("generation", "wanted_by"), [("v1.12", "v1.12 and later"), ("v1.11", "v1.11 and older")])
def test_healthy_cluster_passes_every_check(tmp_path: Path, generation: str, wanted_by: str) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", generation)
    report = run_doctor(rdb_settings(tmp_path, cluster), randfunc=fixed_random)
    assert report.ok, format_report(report)
    assert names(report) == ["tool", "client config", "write", "read back", "profile"]
    _ok, detail = check(report, "client config")
    assert wanted_by in detail and "127.0.0.1:10005" in detail
    # The round trip really went through the tool, on the random key.
    stored = cluster.stored(PROBE_KEY)
    assert stored is not None and stored.startswith("reschat2:")
    # Shaped like every protocol-2 key: nothing on the ledger says "doctor" or names the profile.
    assert re.fullmatch(r"reschat2-[0-9a-f]{48}", PROBE_KEY)
    assert "doctor" not in stored and probe_key(lambda n: b"\x5b" * n) != PROBE_KEY
    assert [c.cmd for c in cluster.calls() if c.key == PROBE_KEY][:2] == ["set", "get"]
    text = format_report(report)
    assert "Everything works." in text and "FAIL" not in text


def test_tool_not_on_path(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    report = run_doctor(rdb_settings(tmp_path, cluster, tool="reschat-no-such-kv-tool"))
    assert failed(report) == ["tool"]
    assert "write" not in names(report)
    _ok, detail = check(report, "tool")
    assert "reschat-no-such-kv-tool is not on PATH" in detail and "ledger.resilientdb.tool" in detail
    assert cluster.calls() == []


def test_tool_path_that_does_not_exist(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    missing = tmp_path / "bin" / "kv_service_tools"
    report = run_doctor(rdb_settings(tmp_path, cluster, tool=str(missing)))
    assert failed(report) == ["tool"]
    assert f"{missing} does not exist" in check(report, "tool")[1]


def test_tool_that_is_not_executable(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    copy = tmp_path / "kv_service_tools"
    shutil.copy(cluster.tool, copy)
    copy.chmod(0o644)
    report = run_doctor(rdb_settings(tmp_path, cluster, tool=str(copy)))
    assert failed(report) == ["tool"]
    assert f"chmod +x {copy}" in check(report, "tool")[1]


def test_client_config_missing(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    cluster.config.unlink()
    report = run_doctor(rdb_settings(tmp_path, cluster))
    assert failed(report) == ["client config"]
    _ok, detail = check(report, "client config")
    assert "does not exist" in detail and str(cluster.config) in detail
    assert "write" not in names(report)
    assert cluster.calls() == []


def test_client_config_not_set(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    report = run_doctor(rdb_settings(tmp_path, cluster, client_config=""))
    assert failed(report) == ["client config"]
    assert "ledger.resilientdb.client_config is not set" in check(report, "client config")[1]


def test_client_config_that_does_not_parse(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    cluster.config.write_text("{not json")
    report = run_doctor(rdb_settings(tmp_path, cluster))
    assert failed(report) == ["client config"]
    assert "not valid JSON" in check(report, "client config")[1]


@pytest.mark.parametrize(
    ("generation", "wrong", "says"),
    [
        ("v1.11", "json", "client config is JSON but this tool generation wants `id ip port` lines"),
        ("v1.12", "text", "client config is `id ip port` lines but this tool generation wants JSON"),
    ],
)
def test_client_config_in_the_wrong_format_for_the_tool(tmp_path: Path, generation: str, wrong: str, says: str) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", generation)
    cluster.write_config(wrong)
    report = run_doctor(rdb_settings(tmp_path, cluster))
    # The file itself is a well-formed config; only the tool that reads it can tell it is the wrong one.
    assert check(report, "client config")[0]
    assert failed(report) == ["write"]
    detail = check(report, "write")[1]
    assert says in detail
    assert ("`5 127.0.0.1 10005`" if wrong == "json" else '"port": 10005') in detail


def test_client_config_naming_a_replica_is_pointed_out(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster")
    cluster.config.write_text(json.dumps({"replica_info": [{"id": 1, "ip": "127.0.0.1", "port": 10001}]}))
    report = run_doctor(rdb_settings(tmp_path, cluster))
    assert "127.0.0.1:10001 is a replica's usual port" in check(report, "client config")[1]


def test_proxy_down(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", down=True)
    report = run_doctor(rdb_settings(tmp_path, cluster))
    assert failed(report) == ["write"]
    assert "start the ResilientDB proxy on 127.0.0.1:10005 (node 5)" in check(report, "write")[1]
    assert "read back" not in names(report)
    assert "1 problem(s)" in format_report(report)


def test_hanging_cluster_times_out_and_leaves_no_process(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", hang=True)
    report = run_doctor(rdb_settings(tmp_path, cluster, timeout=0.5))
    assert failed(report) == ["write"]
    detail = check(report, "write")[1]
    assert "the cluster does not answer: the write timed out after 0.5 s; check the replicas are running" in detail
    # Whether the tool got as far as forking its helper depends on the machine's speed; either way,
    # nothing started for this cluster may still be running.
    assert all(gone_or_zombie(pid) for pid in cluster.hung_pids().values())
    assert no_process_mentions(str(cluster.config))


def test_dropped_write_is_reported_as_not_confirmed(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", drop_sets=True)
    report = run_doctor(rdb_settings(tmp_path, cluster), randfunc=fixed_random, confirm_within_s=0.5)
    assert check(report, "write")[0]  # the proxy said ret = 0: only a read can tell
    assert failed(report) == ["read back"]
    assert "write was not confirmed" in check(report, "read back")[1]
    # It did not give up after one read.
    assert sum(1 for c in cluster.calls() if c.cmd == "get" and c.key == PROBE_KEY) >= 2


def test_stale_reads_still_pass_thanks_to_re_reading(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", stale_reads_after_set_s=0.5)
    report = run_doctor(rdb_settings(tmp_path, cluster), randfunc=fixed_random)
    assert report.ok, format_report(report)
    assert cluster.stored(PROBE_KEY) is not None


def test_reads_that_fail_after_a_write(tmp_path: Path) -> None:
    cluster = StandInCluster.create(tmp_path / "cluster", fail_get=True)
    report = run_doctor(rdb_settings(tmp_path, cluster))
    assert failed(report) == ["read back"]
    assert "could not serve the read" in check(report, "read back")[1]


# --- the local ledger --------------------------------------------------------------------------------


def test_local_ledger_healthy(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    report = run_doctor(local_settings(tmp_path, path), randfunc=fixed_random)
    assert report.ok, format_report(report)
    assert names(report) == ["ledger file", "write", "read back", "profile"]
    assert path.is_file()


def test_local_ledger_in_a_place_that_cannot_be_written(tmp_path: Path) -> None:
    # A regular file where the directory should be: unwritable even for root, unlike a chmod.
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    report = run_doctor(local_settings(tmp_path, blocker / "ledger.sqlite"))
    assert failed(report) == ["ledger file"]
    detail = check(report, "ledger file")[1]
    assert f"{blocker} is a file, not a directory" in detail and "ledger.path" in detail
    assert "write" not in names(report)


def test_local_ledger_that_sqlite_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.mkdir()  # a directory where the database file should be
    report = run_doctor(local_settings(tmp_path, path))
    assert failed(report) == ["ledger file"]
    assert "is not a file" in check(report, "ledger file")[1]


# --- the HTTP gateway --------------------------------------------------------------------------------


def test_gateway_healthy(tmp_path: Path, gateway: GatewayStandIn) -> None:
    report = run_doctor(http_settings(tmp_path, gateway.url), randfunc=fixed_random)
    assert report.ok, format_report(report)
    assert names(report) == ["gateway answers", "write", "read back", "profile"]
    assert PROBE_KEY in gateway.store


def test_gateway_that_cannot_reach_the_cluster(tmp_path: Path, gateway: GatewayStandIn) -> None:
    gateway.failing = True
    report = run_doctor(http_settings(tmp_path, gateway.url))
    assert failed(report) == ["gateway answers"]
    detail = check(report, "gateway answers")[1]
    assert detail.startswith("the gateway runs but cannot reach the cluster: start ResilientDB's KV service")


def test_gateway_not_running(tmp_path: Path) -> None:
    with GatewayStandIn() as gone:
        url = gone.url
    report = run_doctor(http_settings(tmp_path, url))
    assert failed(report) == ["gateway answers"]
    detail = check(report, "gateway answers")[1]
    assert detail.startswith("start the ResilientDB HTTP gateway or fix its URL ('reschat ledger http URL')")


def test_gateway_that_does_not_answer(tmp_path: Path, gateway: GatewayStandIn) -> None:
    gateway.delay_s = 60  # released when the fixture closes the gateway
    report = run_doctor(http_settings(tmp_path, gateway.url, timeout=0.5))
    assert failed(report) == ["gateway answers"]
    assert "timed out after 0.5 s" in check(report, "gateway answers")[1]


def test_gateway_url_that_is_not_http(tmp_path: Path) -> None:
    report = run_doctor(http_settings(tmp_path, "ftp://127.0.0.1:18000"))
    assert failed(report) == ["gateway URL"]
    assert "not an http(s) URL" in check(report, "gateway URL")[1]


# --- the profile -------------------------------------------------------------------------------------


def write_profile(home: Path) -> None:
    """An identity as create_keys leaves it, without paying for a new RSA key."""
    key = rsa_key(0)
    home.mkdir(parents=True)
    (home / crypto.PRIVATE_KEY_FILE).write_bytes(
        key.export_key(format="PEM", pkcs=8, passphrase="pw", protection="scryptAndAES256-CBC",
                       prot_params={"iteration_count": 2**10, "block_size": 8, "parallelization": 1})
    )
    (home / crypto.PUBLIC_KEY_FILE).write_bytes(key.public_key().export_key(format="PEM") + b"\n")
    (home / crypto.IDENTITY_FILE).write_text(json.dumps({"name": "alice"}))


def test_profile_is_described(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, tmp_path / "ledger.sqlite")
    assert "no identity" in check(run_doctor(settings), "profile")[1]
    write_profile(settings.home)
    report = run_doctor(settings)
    assert report.ok
    assert "identity 'alice'" in check(report, "profile")[1] and "0 friend(s)" in check(report, "profile")[1]
    assert "your next login creates its static keys" in check(report, "profile")[1]  # a protocol-1 profile
    crypto.load_identity(settings.home, "pw", scrypt_n=2**10)
    assert "static keys" not in check(run_doctor(settings), "profile")[1]


def test_a_friend_pinned_from_an_old_card_fails_the_profile_check(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, tmp_path / "ledger.sqlite")
    write_profile(settings.home)
    store = FriendStore(settings.home / "friends.json")
    store.add_friend("bob", crypto.Contact(rsa_key(1).public_key(), "bob", statics_key(1).public))
    assert run_doctor(settings).ok
    store.update("bob", statics="")  # as a friend store of protocol 1 pinned friends: the RSA key alone
    report = run_doctor(settings)
    assert failed(report) == ["profile"]
    assert "'bob' pinned from an old card" in check(report, "profile")[1]
    assert "ask for a new card" in check(report, "profile")[1]


def test_damaged_friend_store_fails_the_profile_check(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, tmp_path / "ledger.sqlite")
    write_profile(settings.home)
    (settings.home / "friends.json").write_text("{damaged")
    report = run_doctor(settings)
    assert failed(report) == ["profile"]
    assert "friend store" in check(report, "profile")[1] and "damaged" in check(report, "profile")[1]


def test_checking_only_the_ledger_leaves_the_profile_out(tmp_path: Path, gateway: GatewayStandIn) -> None:
    report = run_doctor(http_settings(tmp_path, gateway.url), randfunc=fixed_random, check_profile=False)
    assert report.ok, format_report(report)
    assert names(report) == ["gateway answers", "write", "read back"]


# --- the local ledger's own failures (issue 12) -------------------------------------------------------


def test_a_named_ledger_file_that_does_not_exist_is_refused_with_the_step_that_makes_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    settings = replace(local_settings(tmp_path, path), create_ledger=False)
    report = run_doctor(settings)
    assert failed(report) == ["ledger file"]
    assert "does not exist: to make a new, empty one there, add --create" in check(report, "ledger file")[1]
    assert not path.exists()


def test_a_ledger_file_that_is_not_a_database_gets_specific_advice(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_text("these are someone's notes, not a database\n" * 200)
    report = run_doctor(local_settings(tmp_path, path))
    assert failed(report) == ["ledger file"]
    detail = check(report, "ledger file")[1]
    assert f"{path} is not an SQLite database" in detail and "move it away" in detail and "--create" in detail
    assert "file is not a database" in detail  # SQLite's own words too
    assert path.read_text().startswith("these are someone's notes")  # never overwritten


class FailingDisk(Ledger):
    """The local ledger as a failing disk makes it fail: SQLite's "disk I/O error" on every call."""

    name = "local"

    def get(self, key: str) -> str | None:
        raise LedgerUnavailableError("cannot read the local ledger ledger.sqlite: disk I/O error")

    def set(self, key: str, value: str) -> None:
        raise LedgerUnavailableError("cannot write the local ledger ledger.sqlite: disk I/O error")


def test_a_disk_io_error_gets_specific_advice(tmp_path: Path) -> None:
    report = run_doctor(local_settings(tmp_path, tmp_path / "ledger.sqlite"), ledger=FailingDisk())
    assert failed(report)[0] == "write"
    detail = check(report, "write")[1]
    assert "(disk I/O error): check that the disk is not full or failing" in detail
    assert "-wal and -shm files are yours and writable" in detail
