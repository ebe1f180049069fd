"""The coordinator's group commit off the event loop (coordinator.group_commit,
coordinator.persistence): staged rows are durable only once the writer thread committed
them, messages are acknowledged only after that, the event loop goes on meanwhile,
everything is written in the order handled, a failed commit acknowledges nothing and
stops every later write, and a kill -9 at any moment loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from alchimia.coordinator import group_commit
from alchimia.coordinator.group_commit import GroupCommit
from alchimia.coordinator.persistence import CoordinatorDB, Staged
from alchimia.coordinator.registry import AgentInfo


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CoordinatorDB]:
    db = CoordinatorDB(tmp_path)
    try:
        yield db
    finally:
        db.close()


def on_disk(state_dir: Path, sql: str) -> list[tuple]:
    """What another connection (a restart) finds committed."""
    other = sqlite3.connect(state_dir / "coordinator.sqlite")
    try:
        return other.execute(sql).fetchall()
    finally:
        other.close()


def accept(db: CoordinatorDB, msg_id: str, round_id: int = 1) -> None:
    db.accept_update(msg_id, f"agent-{msg_id}", round_id, 0, 1.0, msg_id.encode())


class Gate:
    """Holds the writer thread before each batch until opened."""

    def __init__(self, db: CoordinatorDB, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        write = db._write_batch

        def gated(batch: Staged) -> None:
            self.entered.set()
            assert self.open.wait(10)
            write(batch)

        monkeypatch.setattr(db, "_write_batch", gated)


class Client:
    """Records acknowledgements, checking that each message's update is durable by then."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        assert qos == 1
        rows = on_disk(self.state_dir, f"SELECT 1 FROM pending_updates WHERE msg_id = 'm{mid}'")
        assert rows, f"message {mid} acknowledged before its update was durable"
        self.acked.append(mid)


def test_staged_rows_are_durable_once_the_flush_is_done(db: CoordinatorDB) -> None:
    for i in range(3):
        accept(db, f"m{i}")
    db.save_agent(AgentInfo("a1", True, 10, "sw", 1.0))
    db.save_agent(AgentInfo("a1", False, 20, "sw", 2.0))  # the latest status wins
    assert on_disk(db.state_dir, "SELECT COUNT(*) FROM seen_messages") == [(0,)]
    assert db.seen("m1") and not db.seen("m9")
    db.flush().result(10)
    assert on_disk(db.state_dir, "SELECT msg_id FROM pending_updates ORDER BY rowid") == [
        ("m0",),
        ("m1",),
        ("m2",),
    ]
    assert on_disk(db.state_dir, "SELECT agent_id, online, samples FROM agents") == [("a1", 0, 20)]
    assert db.seen("m1")
    assert [m for m, *_ in db.pending_updates(1)] == ["m0", "m1", "m2"]


def test_a_large_group_takes_several_statements_in_order(db: CoordinatorDB) -> None:
    ids = [f"m{i:04d}" for i in range(1000)]  # 7,000 values: 8 statements of at most 999
    for msg_id in ids:
        accept(db, msg_id)
    for i in range(300):
        db.save_agent(AgentInfo(f"a{i}", True, i, "sw", 1.0))
    db.commit()
    assert [m for m, *_ in db.pending_updates(1)] == ids
    assert on_disk(db.state_dir, "SELECT COUNT(*), SUM(samples) FROM agents") == [
        (300, sum(range(300)))
    ]


def test_an_id_already_seen_is_refused_and_stages_nothing(db: CoordinatorDB) -> None:
    assert not db.seen("m1")
    accept(db, "m1")
    with pytest.raises(sqlite3.IntegrityError):
        accept(db, "m1")  # staged
    db.commit()
    with pytest.raises(sqlite3.IntegrityError):
        accept(db, "m1")  # durable
    db.commit()
    assert on_disk(db.state_dir, "SELECT COUNT(*) FROM pending_updates") == [(1,)]


def test_ids_being_written_are_seen(db: CoordinatorDB, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(db, monkeypatch)
    accept(db, "m1")
    done = db.flush()
    assert gate.entered.wait(10)
    assert db.seen("m1") and not done.done()
    with pytest.raises(sqlite3.IntegrityError):
        accept(db, "m1")
    gate.open.set()
    done.result(10)
    assert db.seen("m1")


def test_acknowledged_only_after_the_commit_while_the_loop_goes_on(
    db: CoordinatorDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "GROUP_COMMIT_S", 0.0)
    gate = Gate(db, monkeypatch)
    client = Client(db.state_dir)

    async def main() -> None:
        acks = GroupCommit(db, client)  # type: ignore[arg-type]
        runner = asyncio.create_task(acks.run())
        for mid in (1, 2, 3):
            accept(db, f"m{mid}")
            acks.handled(mid, 1)
        async with asyncio.timeout(10):
            while not gate.entered.is_set():  # the first group is being committed
                await asyncio.sleep(0.001)
        # Meanwhile the event loop handles the next message, into the next group.
        accept(db, "m4")
        acks.handled(4, 1)
        await asyncio.sleep(0.05)
        assert client.acked == []
        gate.open.set()
        async with asyncio.timeout(10):
            while len(client.acked) < 4 and not runner.done():
                await asyncio.sleep(0.001)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(main())
    assert client.acked == [1, 2, 3, 4]


def test_a_failed_commit_acknowledges_nothing_and_stops_later_writes(
    db: CoordinatorDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "GROUP_COMMIT_S", 0.0)
    client = Client(db.state_dir)
    write = Staged.write

    def disk_error(self: Staged, conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Staged, "write", disk_error)

    async def main() -> None:
        acks = GroupCommit(db, client)  # type: ignore[arg-type]
        accept(db, "m1")
        acks.handled(1, 1)
        with pytest.raises(sqlite3.OperationalError):
            await acks.run()

    asyncio.run(main())
    monkeypatch.setattr(Staged, "write", write)
    assert client.acked == []
    # A later change must not become durable when an earlier one is not.
    accept(db, "m2")
    with pytest.raises(sqlite3.OperationalError):
        db.flush().result(10)
    with pytest.raises(sqlite3.OperationalError):
        db.save_round(1, "async", 0, "closed", [], 0.0, 1.0)
    assert on_disk(db.state_dir, "SELECT COUNT(*) FROM seen_messages") == [(0,)]
    assert on_disk(db.state_dir, "SELECT COUNT(*) FROM rounds") == [(0,)]


def test_other_writes_come_after_the_staged_rows_in_one_transaction(
    db: CoordinatorDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(db, monkeypatch)
    accept(db, "m1")
    db.flush()  # held by the gate
    assert gate.entered.wait(10)
    accept(db, "m2")
    threading.Timer(0.1, gate.open.set).start()
    # Waits for the writer's batch (m1), then writes m2 and the version, which consumes
    # the round's updates: none is left pending, both are seen.
    db.save_version(1, b"model", round_id=1, parent=0, metadata={})
    assert on_disk(db.state_dir, "SELECT COUNT(*) FROM pending_updates") == [(0,)]
    assert on_disk(db.state_dir, "SELECT msg_id FROM seen_messages ORDER BY rowid") == [
        ("m1",),
        ("m2",),
    ]
    assert db.flush().done()


def test_staged_rows_stay_staged_when_another_write_fails(db: CoordinatorDB) -> None:
    accept(db, "m1")
    with pytest.raises(TypeError):
        db.save_validation(1, "a1", 0.0, {"figure": object()})  # type: ignore[dict-item]
    assert db.seen("m1")
    db.commit()
    assert on_disk(db.state_dir, "SELECT msg_id FROM seen_messages") == [("m1",)]


# A process that stages updates and flushes them in groups, printing the ids of each group
# once its commit returned (what the coordinator then acknowledges), until it is killed.
_WRITER = """
import sys
from pathlib import Path
from alchimia.coordinator.persistence import CoordinatorDB
db = CoordinatorDB(Path(sys.argv[1]))
i = 0
while True:
    group = [f"m{i + k}" for k in range(7)]
    for msg_id in group:
        db.accept_update(msg_id, "a", 1, 0, 1.0, msg_id.encode() * 100)
    i += len(group)
    db.flush().result()
    print(" ".join(group), flush=True)
"""


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        while len(acked) < 300:
            line = proc.stdout.readline()
            assert line, "the writer stopped"
            acked += line.split()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    db = CoordinatorDB(tmp_path)
    try:
        durable = [m for m, *_ in db.pending_updates(1)]
        assert durable[: len(acked)] == acked  # all acknowledged, in order, once each
        assert len(set(durable)) == len(durable)
        assert all(db.seen(m) for m in durable)
        assert all(p == m.encode() * 100 for m, _, _, _, p in db.pending_updates(1))
    finally:
        db.close()
