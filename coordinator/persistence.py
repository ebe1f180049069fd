"""Durable coordinator state: model versions, rounds, agents, seen message ids, and the
accepted updates of the open round (so a restart loses none and counts none twice).

Accepted updates are group-committed: ``accept_update`` stages an update (its exact
payload, in the database) in the open transaction and ``commit`` makes every staged update
durable with one fsync of SQLite's write-ahead log; the coordinator acknowledges those
messages to the broker only after ``commit`` returned, so an update lost by a crash before
its commit is delivered again.

Model versions are files holding the exact payload published on ``model/current``,
written atomically (temp file, fsync, rename, fsync of the directory) *before* their row
is committed and before they are published, so a crash never leaves a half-written
version nor a published version that a restart would not find again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from alchimia.broker.durable import atomic_write
from alchimia.coordinator.registry import AgentInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, round_id INTEGER, parent INTEGER,
    created_ts REAL NOT NULL, file TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY, mode TEXT NOT NULL, base_version INTEGER NOT NULL,
    state TEXT NOT NULL, opened_ts REAL NOT NULL, deadline_ts REAL NOT NULL, closed_ts REAL,
    selected TEXT NOT NULL, accepted TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY, online INTEGER NOT NULL, samples INTEGER NOT NULL,
    software TEXT NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seen_messages (
    msg_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, round_id INTEGER, received_ts REAL);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS validation (
    version INTEGER NOT NULL, agent_id TEXT NOT NULL, ts REAL NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (version, agent_id));
CREATE TABLE IF NOT EXISTS drift_events (
    ts REAL NOT NULL, agent_id TEXT NOT NULL, version INTEGER, metrics TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending_updates (
    msg_id TEXT PRIMARY KEY, round_id INTEGER NOT NULL, agent_id TEXT NOT NULL,
    base_version INTEGER NOT NULL, weight REAL NOT NULL, file TEXT NOT NULL,
    payload BLOB);
"""


class CoordinatorDB:
    def __init__(self, state_dir: Path, keep_versions: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.keep_versions = keep_versions  # files of the newest N versions; 0: all
        self.models_dir = self.state_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.updates_dir = self.state_dir / "updates"
        self.updates_dir.mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.state_dir / "coordinator.sqlite", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        columns = [r[1] for r in self.db.execute("PRAGMA table_info(pending_updates)")]
        if "payload" not in columns:  # a state directory from before group commit
            with self.db:
                self.db.execute("ALTER TABLE pending_updates ADD COLUMN payload BLOB")

    def close(self) -> None:
        self.db.close()

    # -- model versions
    def model_path(self, version: int) -> Path:
        return self.models_dir / f"v{version:06d}.msgpack"

    def state_path(self, version: int) -> Path:
        return self.models_dir / f"v{version:06d}.strategy.msgpack"

    def save_version(
        self,
        version: int,
        payload: bytes,
        *,
        round_id: int | None,
        parent: int | None,
        metadata: dict,
        strategy_state: bytes | None = None,
    ) -> Path:
        """Commit a new version; the updates of ``round_id`` are consumed in the same step."""
        path = self.model_path(version)
        atomic_write(path, payload)
        if strategy_state is not None:
            atomic_write(self.state_path(version), strategy_state)
        with self.db:
            self.db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                (version, round_id, parent, time.time(), path.name, json.dumps(metadata)),
            )
            files = self._consume_pending(round_id)
        for name in files:
            (self.updates_dir / name).unlink(missing_ok=True)
        self.prune(self.keep_versions)
        return path

    def prune(self, keep: int) -> list[int]:
        """Delete the files of all but the newest ``keep`` versions (their rows stay, as
        history); return the versions pruned. ``keep`` 0 keeps every file."""
        latest = self.latest_version()
        if keep <= 0 or latest is None:
            return []
        pruned = []
        for (version,) in self.db.execute(
            "SELECT version FROM versions WHERE version <= ?", (latest - keep,)
        ).fetchall():
            path = self.model_path(version)
            if path.exists():
                path.unlink()
                self.state_path(version).unlink(missing_ok=True)
                pruned.append(version)
        return pruned

    def flag(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_flag(self, name: str, value: str | None) -> None:
        with self.db:
            if value is None:
                self.db.execute("DELETE FROM flags WHERE name = ?", (name,))
            else:
                self.db.execute("INSERT OR REPLACE INTO flags VALUES (?, ?)", (name, value))

    def load_strategy_state(self, version: int) -> bytes | None:
        path = self.state_path(version)
        return path.read_bytes() if path.exists() else None

    def version_of_round(self, round_id: int) -> int | None:
        row = self.db.execute(
            "SELECT version FROM versions WHERE round_id = ?", (round_id,)
        ).fetchone()
        return row[0] if row else None

    def latest_version(self) -> int | None:
        row = self.db.execute("SELECT MAX(version) FROM versions").fetchone()
        return row[0]

    def versions(self) -> list[tuple[int, int | None, float, dict]]:
        rows = self.db.execute(
            "SELECT version, round_id, created_ts, metadata FROM versions ORDER BY version"
        )
        return [(v, r, ts, json.loads(m)) for v, r, ts, m in rows]

    def load_payload(self, version: int) -> bytes:
        return self.model_path(version).read_bytes()

    # -- rounds
    def save_round(
        self,
        round_id: int,
        mode: str,
        base_version: int,
        state: str,
        selected: list[str],
        opened_ts: float,
        deadline_ts: float,
        closed_ts: float | None = None,
        accepted: list[str] | None = None,
    ) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    round_id,
                    mode,
                    base_version,
                    state,
                    opened_ts,
                    deadline_ts,
                    closed_ts,
                    json.dumps(selected),
                    json.dumps(accepted or []),
                ),
            )

    def last_round_id(self) -> int | None:
        return self.db.execute("SELECT MAX(round_id) FROM rounds").fetchone()[0]

    def open_round(self) -> tuple[int, str, int, list[str], float, float] | None:
        """``(round_id, mode, base_version, selected, opened_ts, deadline_ts)`` left open."""
        row = self.db.execute(
            "SELECT round_id, mode, base_version, selected, opened_ts, deadline_ts FROM rounds "
            "WHERE state = 'open' ORDER BY round_id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return row[0], row[1], row[2], json.loads(row[3]), row[4], row[5]

    def rounds(self) -> list[tuple[int, str, str, list[str]]]:
        """``(round_id, mode, state, accepted agents)`` of every round, oldest first."""
        rows = self.db.execute(
            "SELECT round_id, mode, state, accepted FROM rounds ORDER BY round_id"
        )
        return [(r, m, st, json.loads(a)) for r, m, st, a in rows]

    # -- agents
    def save_agent(self, info: AgentInfo) -> None:
        """Stage an agent's latest status; durable with the next ``commit`` (the group
        commit that acknowledges the status message), not one fsync per status: 10,000
        agents registering at once took 230 s that way (bench/bench_swarm.py)."""
        if not self.db.in_transaction:
            self.db.execute("BEGIN")
        self.db.execute(
            "INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?)",
            (info.agent_id, int(info.online), info.samples, info.software, info.last_seen),
        )

    def agents(self) -> list[AgentInfo]:
        rows = self.db.execute("SELECT * FROM agents ORDER BY agent_id")
        return [AgentInfo(a, bool(o), s, sw, ls) for a, o, s, sw, ls in rows]

    # -- what agents reported (the admin web page's history, coordinator/web.py)
    def save_validation(
        self, version: int, agent_id: str, ts: float, metrics: dict[str, float], keep: int = 1000
    ) -> None:
        """An agent's validation figures of a version (its latest report of it wins); those
        of versions more than ``keep`` older than this one are deleted."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO validation VALUES (?, ?, ?, ?)",
                (version, agent_id, ts, json.dumps(metrics)),
            )
            self.db.execute("DELETE FROM validation WHERE version < ?", (version - keep,))

    def validation(self, since_version: int = 0) -> list[tuple[int, str, dict[str, float]]]:
        """``(version, agent, figures)`` of every version from ``since_version`` on."""
        rows = self.db.execute(
            "SELECT version, agent_id, metrics FROM validation WHERE "
            "version >= ? ORDER BY version, agent_id",
            (since_version,),
        )
        return [(v, a, json.loads(m)) for v, a, m in rows]

    def save_drift(
        self,
        ts: float,
        agent_id: str,
        version: int | None,
        metrics: dict[str, float],
        keep: int = 1000,
    ) -> None:
        """A drift an agent reported; only the newest ``keep`` are kept."""
        with self.db:
            self.db.execute(
                "INSERT INTO drift_events VALUES (?, ?, ?, ?)",
                (ts, agent_id, version, json.dumps(metrics)),
            )
            self.db.execute(
                "DELETE FROM drift_events WHERE rowid <= (SELECT MAX(rowid) FROM drift_events) - ?",
                (keep,),
            )

    def drift_events(self, limit: int) -> list[tuple[float, str, int | None, dict[str, float]]]:
        """``(ts, agent, version, figures)`` of the newest ``limit`` drift reports, newest
        first."""
        rows = self.db.execute(
            "SELECT ts, agent_id, version, metrics FROM drift_events ORDER BY rowid DESC LIMIT ?",
            (limit,),
        )
        return [(ts, a, v, json.loads(m)) for ts, a, v, m in rows]

    # -- replay protection
    def seen(self, msg_id: str) -> bool:
        """Whether an update with this message id was ever accepted."""
        q = "SELECT 1 FROM seen_messages WHERE msg_id = ?"
        return self.db.execute(q, (msg_id,)).fetchone() is not None

    def accept_update(
        self,
        msg_id: str,
        agent_id: str,
        round_id: int,
        base_version: int,
        weight: float,
        payload: bytes,
    ) -> None:
        """Stage an accepted update (its exact payload); durable once ``commit`` returns.
        A failure leaves nothing of it staged."""
        if not self.db.in_transaction:
            self.db.execute("BEGIN")
        self.db.execute("SAVEPOINT accept")
        try:
            self.db.execute(
                "INSERT INTO seen_messages VALUES (?, ?, ?, ?)",
                (msg_id, agent_id, round_id, time.time()),
            )
            self.db.execute(
                "INSERT INTO pending_updates VALUES (?, ?, ?, ?, ?, ?, ?)",
                (msg_id, round_id, agent_id, base_version, weight, "", payload),
            )
        except BaseException:
            self.db.execute("ROLLBACK TO accept")
            raise
        finally:
            self.db.execute("RELEASE accept")

    def commit(self) -> None:
        """Make every staged update durable (one fsync for all of them)."""
        self.db.commit()

    def pending_updates(self, round_id: int) -> list[tuple[str, str, int, float, bytes]]:
        """``(msg_id, agent, base_version, weight, payload)`` accepted for an open round."""
        rows = self.db.execute(
            "SELECT msg_id, agent_id, base_version, weight, file, payload FROM pending_updates "
            "WHERE round_id = ? ORDER BY rowid",
            (round_id,),
        ).fetchall()
        # Updates accepted before group commit were kept as files.
        return [
            (m, a, b, w, p if p is not None else (self.updates_dir / f).read_bytes())
            for m, a, b, w, f, p in rows
        ]

    def drop_pending(self, round_id: int) -> None:
        """Forget the updates of a round that will never be aggregated (failed, abandoned)."""
        with self.db:
            files = self._consume_pending(round_id)
        for name in files:
            (self.updates_dir / name).unlink(missing_ok=True)

    def _consume_pending(self, round_id: int | None) -> list[str]:
        """Delete a round's pending rows; the names of update files to remove after."""
        rows = self.db.execute(
            "SELECT file FROM pending_updates WHERE round_id = ? AND file != ''", (round_id,)
        ).fetchall()
        self.db.execute("DELETE FROM pending_updates WHERE round_id = ?", (round_id,))
        return [r[0] for r in rows]
