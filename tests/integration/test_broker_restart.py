"""A broker restart in the middle of a round leaves exactly one round driver: no two rounds
open at once, no closed round rewritten, and the federation goes on (issue 17, item 1)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from tests.integration.helpers import wait_for
from tests.integration.test_federation import FAST_AGENT, FAST_COORDINATOR


def _drivers(fed: LocalFederation) -> int:
    """Round-driver tasks alive on the coordinator's event loop."""
    loop = fed.coordinator._loop  # type: ignore[union-attr]
    assert loop is not None

    async def count() -> int:
        return sum(1 for t in asyncio.all_tasks() if "_drive_rounds" in t.get_coro().__qualname__)  # type: ignore[union-attr]

    return asyncio.run_coroutine_threadsafe(count(), loop).result(10)


def _rounds(state_dir: Path) -> list[tuple[int, str, int | None]]:
    """(round id, state, version it produced) of every round, from the coordinator's DB."""
    db = sqlite3.connect(state_dir / "coordinator.sqlite")
    try:
        rows = db.execute(
            "SELECT r.round_id, r.state, v.version FROM rounds r "
            "LEFT JOIN versions v ON v.round_id = r.round_id "
            "ORDER BY r.round_id"
        ).fetchall()
    finally:
        db.close()
    return rows


def test_broker_restarts_mid_round_leave_one_driver(mosquitto, tmp_path: Path) -> None:
    fed = LocalFederation(
        mosquitto.url,
        "brk",
        2,
        tmp_path / "coord",
        coordinator={**FAST_COORDINATOR, "min_agents": 2, "rounds": 0, "round_timeout_s": 30},
        agent={**FAST_AGENT, "heat_interval_s": 0.2},
    )
    monitor = Monitor(mosquitto.url, "brk", "brk-monitor").start()
    try:
        fed.start_coordinator()
        fed.start_agents()
        wait_for(lambda: monitor.model is not None and monitor.model.version >= 1, 120, "version 1")
        # Mid-round: the next round opens as soon as the last one closed.
        wait_for(
            lambda: any(s == "open" for _, s, _ in _rounds(tmp_path / "coord")), 60, "an open round"
        )
        mosquitto.stop()
        mosquitto.start()
        before = monitor.model.version  # type: ignore[union-attr]
        wait_for(
            lambda b=before: monitor.model.version >= b + 1,
            120,  # type: ignore[union-attr]
            "a new version after the broker restart",
        )
        assert _drivers(fed) == 1
        rows = _rounds(tmp_path / "coord")
        assert sum(1 for _, s, _ in rows if s == "open") <= 1, rows
        # A round that produced a version stays closed: no orphaned driver rewrote it.
        assert all(s == "closed" for _, s, v in rows if v is not None), rows
        assert fed.coordinator.error is None  # type: ignore[union-attr]
    finally:
        fed.stop()
        monitor.stop()
