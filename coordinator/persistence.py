"""Durable coordinator state: model versions, rounds, agents, seen message ids, and the
accepted updates of the open round (so a restart loses none and counts none twice).

Accepted updates and agents' statuses are group-committed, off the event loop:
``accept_update`` and ``save_agent`` only stage their rows, in memory and in the order
handled, and ``flush`` hands everything staged to one writer thread, which inserts it and
commits on its own connection (one fsync of SQLite's write-ahead log; SQLite releases the
GIL while it writes and fsyncs, so the event loop goes on handling messages meanwhile).
The coordinator acknowledges those messages to the broker only once the future ``flush``
returned is done (``coordinator/group_commit.py``), so an update lost by a crash before its
commit is delivered again, and one committed is known as seen (its message id is committed
with it) and never counted twice.

Everything stays in the order handled: the writer takes one batch at a time, oldest first;
``seen`` also looks at the ids staged or being written; and every other write, on the
loop's connection (a round, a version consuming the round's updates, a flag...), first
waits for the writer and writes what is still staged in its own transaction, so a crash
never keeps a later change without an earlier one. A batch that failed stops every later
write (they raise its error): the coordinator stops, and what was not durable is
delivered again.

Model versions are files holding the exact payload published on ``model/current``,
written atomically (temp file, fsync, rename, fsync of the directory) *before* their row
is committed and before they are published, so a crash never leaves a half-written
version nor a published version that a restart would not find again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


class Staged:
    """Rows staged for the next group commit, in the order handled."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int, float]] = []
        self.pending: list[tuple[str, int, str, int, float, str, bytes]] = []
        self.agents: dict[str, tuple[str, int, int, str, float]] = {}  # the latest wins
        self.ids: set[str] = set()  # message ids of ``seen``

    def __bool__(self) -> bool:
        return bool(self.seen or self.agents)

    def then(self, later: Staged) -> Staged:
        """These rows followed by ``later``'s."""
        self.seen += later.seen
        self.pending += later.pending
        self.agents.update(later.agents)
        self.ids |= later.ids
        return self

    def write(self, db: sqlite3.Connection) -> None:
        """Insert the rows in the transaction open on ``db`` (one opens if none is)."""
        _insert(db, "INSERT INTO seen_messages", self.seen)
        _insert(db, "INSERT INTO pending_updates", self.pending)
        _insert(db, "INSERT OR REPLACE INTO agents", list(self.agents.values()))


# Values one statement may bind: SQLite's limit before 3.32 (32,766 since).
MAX_VARIABLES = 999


def _insert(db: sqlite3.Connection, insert: str, rows: list[tuple]) -> None:
    """``insert`` ``VALUES (...), (...), ...``: one statement for many rows, not one per row
    as ``executemany``, because each statement releases the GIL while SQLite runs it and the
    writer thread then waits to take it back while the event loop runs: ~30 ms for a group
    of 70 updates that way, 5 ms for 23 this way (bench_coordinator_ingest.py --breakdown)."""
    if not rows:
        return
    per_statement = MAX_VARIABLES // len(rows[0])
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        row = "(" + ", ".join("?" * len(chunk[0])) + ")"
        values = ", ".join([row] * len(chunk))
        db.execute(f"{insert} VALUES {values}", [v for r in chunk for v in r])


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a connection's own setting
    return db


class CoordinatorDB:
    def __init__(self, state_dir: Path, keep_versions: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.keep_versions = keep_versions  # files of the newest N versions; 0: all
        self.models_dir = self.state_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.updates_dir = self.state_dir / "updates"
        self.updates_dir.mkdir(exist_ok=True)
        self.db = _connect(self.state_dir / "coordinator.sqlite")
        self.db.executescript(SCHEMA)
        columns = [r[1] for r in self.db.execute("PRAGMA table_info(pending_updates)")]
        if "payload" not in columns:  # a state directory from before group commit
            with self.db:
                self.db.execute("ALTER TABLE pending_updates ADD COLUMN payload BLOB")
        # Group commit (module docstring): rows staged since the last flush; batches
        # handed to the writer thread, oldest first (pruned once written); its connection
        # (used by that thread only) and the error of a batch it failed to write.
        self._staged = Staged()
        self._writes: deque[tuple[Future[None], Staged]] = deque()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="coordinator-db-writer")
        self._writer_db = _connect(self.state_dir / "coordinator.sqlite")
        self._failed: BaseException | None = None
        self._unseen: str | None = None  # the last id ``seen`` found nowhere

    def close(self) -> None:
        """Close, once the batches handed to the writer are written (what is still staged,
        never flushed, is not: nothing of it was acknowledged)."""
        self._writer.shutdown(wait=True)
        self._writer_db.close()
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
        with self._transaction():
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
        with self._transaction():
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
        with self._transaction():
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
        """Stage an agent's latest status; durable with the next group commit (``flush``,
        the one that acknowledges the status message), not one fsync per status: 10,000
        agents registering at once took 230 s that way (bench/bench_swarm.py)."""
        self._staged.agents[info.agent_id] = (
            info.agent_id,
            int(info.online),
            info.samples,
            info.software,
            info.last_seen,
        )

    def agents(self) -> list[AgentInfo]:
        self.commit()
        rows = self.db.execute("SELECT * FROM agents ORDER BY agent_id")
        return [AgentInfo(a, bool(o), s, sw, ls) for a, o, s, sw, ls in rows]

    # -- what agents reported (the admin web page's history, coordinator/web.py)
    def save_validation(
        self, version: int, agent_id: str, ts: float, metrics: dict[str, float], keep: int = 1000
    ) -> None:
        """An agent's validation figures of a version (its latest report of it wins); those
        of versions more than ``keep`` older than this one are deleted."""
        with self._transaction():
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
        with self._transaction():
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
        """Whether an update with this message id was ever accepted (staged included)."""
        if msg_id in self._staged.ids or any(msg_id in batch.ids for _, batch in self._writes):
            return True
        q = "SELECT 1 FROM seen_messages WHERE msg_id = ?"
        if self.db.execute(q, (msg_id,)).fetchone() is not None:
            return True
        # Only staging writes a message id: until it is staged, it stays unseen.
        self._unseen = msg_id
        return False

    def accept_update(
        self,
        msg_id: str,
        agent_id: str,
        round_id: int,
        base_version: int,
        weight: float,
        payload: bytes,
    ) -> None:
        """Stage an accepted update (its exact payload); durable once the future of the
        next ``flush`` is done. A message id already seen raises, staging nothing (the
        lifecycle has just asked ``seen``: its answer is reused)."""
        if msg_id != self._unseen and self.seen(msg_id):
            raise sqlite3.IntegrityError("UNIQUE constraint failed: seen_messages.msg_id")
        self._unseen = None
        staged = self._staged
        staged.seen.append((msg_id, agent_id, round_id, time.time()))
        staged.pending.append((msg_id, round_id, agent_id, base_version, weight, "", payload))
        staged.ids.add(msg_id)

    def flush(self) -> Future[None]:
        """Hand every row staged so far to the writer thread, which inserts and commits
        them (one fsync for all of them); the future is done once they, and everything
        staged before them, are durable, and holds the error if they cannot be."""
        while self._writes and self._writes[0][0].done():
            self._writes.popleft()  # written: ``seen`` finds their ids in the database
        if self._staged:
            batch, self._staged = self._staged, Staged()
            self._writes.append((self._writer.submit(self._write_batch, batch), batch))
        if self._writes:
            return self._writes[-1][0]  # one writer, one batch at a time: the last one
        done: Future[None] = Future()
        if self._failed is None:
            done.set_result(None)
        else:
            done.set_exception(self._failed)
        return done

    def commit(self) -> None:
        """Make everything staged durable now (blocking; ``flush`` is the way not to)."""
        self.flush().result()

    def _write_batch(self, batch: Staged) -> None:
        """The writer thread's work. After a batch that failed, nothing more is written:
        a later change must not be durable when an earlier one is not."""
        if self._failed is not None:
            raise self._failed
        try:
            with self._writer_db:
                batch.write(self._writer_db)
        except BaseException as exc:
            self._failed = exc
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write on the loop's connection, after every row staged before it: once the
        writer wrote what it was handed, with what is still staged in the same transaction
        (one fsync). Staged rows stay staged if the transaction fails."""
        while self._writes:
            self._writes[0][0].result()  # raises a failed batch's error
            self._writes.popleft()
        if self._failed is not None:
            raise self._failed
        staged, self._staged = self._staged, Staged()
        try:
            with self.db:
                staged.write(self.db)
                yield
        except BaseException:
            self._staged = staged.then(self._staged)
            raise

    def pending_updates(self, round_id: int) -> list[tuple[str, str, int, float, bytes]]:
        """``(msg_id, agent, base_version, weight, payload)`` accepted for an open round."""
        self.commit()
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
        with self._transaction():
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
