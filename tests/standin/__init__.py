"""Stand-ins for ResilientDB's services, for tests: the ``kv_service_tools`` client and the HTTP gateway.

``StandInCluster.create(tmp_path)`` lays out a cluster in a directory: a client config in the format of
the chosen tool generation and a behaviour file the stand-in tool re-reads on every call. Hand
``cluster.tool`` and ``cluster.config`` to the ledger exactly as a user would hand the real ones.

Both stand-ins serve stale reads as the real cluster does (a get within 1 s of a set of the same key
returns the previous value with probability 0.3) when the tests run with RESCHAT_STANDIN_STALE_READS=1;
a knob given explicitly wins. The environment variable is read by the test process, never by the tool,
which ResChat starts with a minimal environment.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The stand-in executable; run it directly (it has a shebang and mode 755) like the real tool.
TOOL = Path(__file__).with_name("kv_service_tools")

#: Client config formats: v1.12 and later read JSON, older tools read ``id ip port`` lines.
CONFIG_FORMATS = {"v1.12": "json", "v1.11": "text", "v1.9": "text"}

#: Set (to anything but "", "0" or "off") to make both stand-ins serve stale reads like the real cluster.
STALE_READS_ENV = "RESCHAT_STANDIN_STALE_READS"
#: What the real cluster showed: a get this soon after a set of the same key may be stale...
STALE_WINDOW_S = 1.0
#: ... with this probability.
STALE_PROBABILITY = 0.3


def stale_reads_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether the tests' environment asks for the real cluster's stale reads."""
    value = (os.environ if environ is None else environ).get(STALE_READS_ENV, "")
    return value.strip().lower() not in ("", "0", "off", "no", "false")


def client_config_text(fmt: str, port: int = 10005) -> str:
    """A client config naming the proxy at ``127.0.0.1:port`` in ``fmt`` ("json" or "text")."""
    if fmt == "json":
        proxy = {"id": 5, "ip": "127.0.0.1", "port": port}
        return json.dumps({"replica_info": [proxy], "region_id": 1}) + "\n"
    return f"5 127.0.0.1 {port}\n"


@dataclass(frozen=True)
class Call:
    """One run of the stand-in tool, as it logged itself in the shared state."""

    pid: int
    cmd: str
    key: str
    started: float
    ended: float | None


@dataclass
class StandInCluster:
    """A stand-in ResilientDB cluster living in one directory."""

    root: Path
    generation: str = "v1.12"
    tool: Path = TOOL
    behaviour: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, generation: str = "v1.12", **knobs: Any) -> StandInCluster:
        """Write a client config for ``generation`` and a behaviour file with ``knobs`` under ``root``."""
        root.mkdir(parents=True, exist_ok=True)
        if stale_reads_requested() and "stale_reads_after_set_s" not in knobs:
            knobs = {"stale_reads_after_set_s": STALE_WINDOW_S, "stale_read_probability": STALE_PROBABILITY,
                     **knobs}
        cluster = cls(root=root, generation=generation)
        cluster.write_config(CONFIG_FORMATS[generation])
        cluster.behave(**knobs)
        return cluster

    @property
    def config(self) -> Path:
        return self.root / "client.config"

    @property
    def state_path(self) -> Path:
        return Path(f"{self.config}.state.sqlite")

    @property
    def behaviour_path(self) -> Path:
        return Path(f"{self.config}.behaviour.json")

    def write_config(self, fmt: str) -> None:
        """(Re)write the client config in ``fmt`` ("json" or "text"), whatever the tool generation."""
        self.config.write_text(client_config_text(fmt), encoding="utf-8")

    def behave(self, **knobs: Any) -> None:
        """Change knobs (None removes one); the next tool call sees them."""
        for name, value in knobs.items():
            if value is None:
                self.behaviour.pop(name, None)
            else:
                self.behaviour[name] = value
        self.behaviour["generation"] = self.generation
        # Replace atomically so a tool starting right now never reads half a file.
        temporary = self.behaviour_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.behaviour), encoding="utf-8")
        os.replace(temporary, self.behaviour_path)

    def recorded_environment(self) -> dict[str, str] | None:
        """The environment of the latest tool call, when the ``record_environment`` knob is on."""
        path = Path(f"{self.config}.environ.json")
        if not path.exists():
            return None
        loaded = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in loaded.items()}

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.state_path.exists():
            return []
        with closing(sqlite3.connect(self.state_path, timeout=30)) as db:
            try:
                return list(db.execute(sql, params))
            except sqlite3.OperationalError:
                return []  # no tool has run yet, so the tables do not exist

    def calls(self) -> list[Call]:
        """Every call the tool completed or started, oldest first."""
        rows = self._query("SELECT pid, cmd, key, started, ended FROM calls ORDER BY id")
        return [Call(*row) for row in rows]

    def hung_pids(self) -> dict[str, int]:
        """Pids of a hanging tool ("tool") and of the helper it forked into its group ("helper")."""
        return {str(role): int(pid) for pid, role in self._query("SELECT pid, role FROM hung")}

    def stored(self, key: str) -> str | None:
        """What the cluster really holds under ``key``, bypassing any stale-read knob."""
        rows = self._query("SELECT value FROM kv WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None
