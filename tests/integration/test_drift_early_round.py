"""A drift report from an agent opens the next sync round early (real Mosquitto)."""

from __future__ import annotations

from pathlib import Path

from alchimia.broker.schemas import MetricsBody, message
from alchimia.broker.topics import Topics
from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from tests.integration.helpers import RawClient, wait_for


def test_drift_report_cuts_the_pause_between_rounds(mosquitto, tmp_path: Path) -> None:
    fed = LocalFederation(
        mosquitto.url,
        "drift",
        1,
        tmp_path / "coord",
        coordinator={"min_agents": 1, "rounds": 2, "epochs": 1, "round_interval_s": 3600},
        agent={"history_heats": 40, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    monitor = Monitor(mosquitto.url, "drift", "drift-monitor").start()
    plant = RawClient(mosquitto.host, mosquitto.port, "drift-reporter")
    try:
        coordinator = fed.start_coordinator()
        fed.start_agents()
        wait_for(lambda: monitor.model is not None and monitor.model.version == 1, 60, "v1")
        assert coordinator.coordinator.next_round_id == 2  # paused, no round 2 yet
        plant.publish(
            Topics("drift").agent_metrics("plant-1"),
            message("plant-1", MetricsBody(scope="drift", values={"page_hinkley": 1.0})),
        )
        # Without the report the next round would wait an hour.
        wait_for(lambda: monitor.model is not None and monitor.model.version == 2, 60, "v2")
    finally:
        fed.stop()
        monitor.stop()
        plant.close()
