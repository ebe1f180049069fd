"""The defaults over a real Mosquitto with fast simulated heats: weeks of furnace time (a
heat every 0.05 s stands for one every ~50 min) without one legitimate message rejected,
rounds that follow the heats instead of spinning, and every agent learning."""

from __future__ import annotations

import time
from pathlib import Path

from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from tests.integration.helpers import wait_for

RUN_S = 40.0


def test_default_settings_reject_nothing_and_rounds_follow_the_heats(
    mosquitto, tmp_path: Path
) -> None:
    fed = LocalFederation(
        mosquitto.url,
        "longrun",
        3,
        tmp_path / "coord",
        coordinator={"min_agents": 3},  # everything else: the defaults
        agent={"history_heats": 100, "heat_interval_s": 0.05, "store_sensors": False},
    )
    monitor = Monitor(mosquitto.url, "longrun", "longrun-monitor").start()
    try:
        coordinator = fed.start_coordinator().coordinator
        agents = [a.agent for a in fed.start_agents()]
        wait_for(
            lambda: monitor.model is not None and monitor.model.version >= 1,
            120,
            "the first version",
        )
        started = time.monotonic()
        time.sleep(RUN_S)
        elapsed = time.monotonic() - started
        versions = monitor.model.version  # type: ignore[union-attr]
        heats = min(a.table.seen for a in agents if a.table is not None)
    finally:
        fed.stop()
        monitor.stop()
    assert coordinator is not None
    assert coordinator.rejections == [], coordinator.rejections[:5]
    assert all(a.models_rejected == 0 for a in agents)
    assert all(a.updates_sent >= 3 for a in agents)
    assert heats >= 100 + 0.5 * RUN_S / 0.05  # the heats really came, fast
    # Rounds follow the heats: each round waits for an update's training (the agents'
    # statuses bring new heats at most every status_interval_s = 5 s), so versions come
    # seconds apart, never the back-to-back spin of several a second.
    assert 3 <= versions <= elapsed / 1.0, (versions, elapsed)
