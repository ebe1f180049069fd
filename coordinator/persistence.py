"""Durable coordinator state: model versions, rounds, agents and seen message ids.

Model versions are files holding the exact payload published on ``model/current``,
written atomically (temp file, fsync, rename, fsync of the directory) *before* their row
is committed and before they are published, so a crash never leaves a half-written
version nor a published version that a restart would not find again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from coordinator.registry import AgentInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, round_id INTEGER, parent INTEGER,
    created_ts REAL NOT NULL, file TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY, base_version INTEGER NOT NULL, state TEXT NOT NULL,
    opened_ts REAL NOT NULL, closed_ts REAL, selected TEXT NOT NULL, accepted TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY, online INTEGER NOT NULL, samples INTEGER NOT NULL,
    software TEXT NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seen_messages (
    msg_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, round_id INTEGER, received_ts REAL);
"""


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CoordinatorDB:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.models_dir = self.state_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.state_dir / "coordinator.sqlite", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- model versions
    def model_path(self, version: int) -> Path:
        return self.models_dir / f"v{version:06d}.msgpack"

    def save_version(self, version: int, payload: bytes, *, round_id: int | None,
                     parent: int | None, metadata: dict) -> Path:
        path = self.model_path(version)
        atomic_write(path, payload)
        with self.db:
            self.db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                (version, round_id, parent, time.time(), path.name, json.dumps(metadata)),
            )
        return path

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
    def save_round(self, round_id: int, base_version: int, state: str, selected: list[str],
                   accepted: dict[str, str], opened_ts: float,
                   closed_ts: float | None = None) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?)",
                (round_id, base_version, state, opened_ts, closed_ts, json.dumps(selected),
                 json.dumps(accepted)),
            )

    def last_round_id(self) -> int | None:
        return self.db.execute("SELECT MAX(round_id) FROM rounds").fetchone()[0]

    def round_states(self) -> list[tuple[int, str]]:
        return list(self.db.execute("SELECT round_id, state FROM rounds ORDER BY round_id"))

    # -- agents
    def save_agent(self, info: AgentInfo) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?)",
                (info.agent_id, int(info.online), info.samples, info.software, info.last_seen),
            )

    def agents(self) -> list[AgentInfo]:
        rows = self.db.execute("SELECT * FROM agents ORDER BY agent_id")
        return [AgentInfo(a, bool(o), s, sw, ls) for a, o, s, sw, ls in rows]

    # -- replay protection
    def seen(self, msg_id: str) -> bool:
        q = "SELECT 1 FROM seen_messages WHERE msg_id = ?"
        return self.db.execute(q, (msg_id,)).fetchone() is not None

    def mark_seen(self, msg_id: str, agent_id: str, round_id: int | None) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO seen_messages VALUES (?, ?, ?, ?)",
                (msg_id, agent_id, round_id, time.time()),
            )
