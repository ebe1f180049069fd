"""An agent configured with an InfluxDB URL stores its plant's sensor data there and
learns from heats assembled back out of it (real influxd, real mosquitto)."""

from __future__ import annotations

from pathlib import Path

from agent.store import open_store
from alchimia.local import LocalFederation
from alchimia.monitor import Monitor


def test_agent_streams_sensor_data_into_influxdb_and_trains_on_it(
        mosquitto, influxd, tmp_path: Path) -> None:
    database = "agent_e2e"
    fed = LocalFederation(
        mosquitto.url, "influx", 1, tmp_path / "coord",
        coordinator={"min_agents": 1, "rounds": 1, "epochs": 1},
        agent={"history_heats": 20, "heat_interval_s": 0, "influx": influxd.url,
               "database": database, "signal_period_s": 10.0})
    monitor = Monitor(mosquitto.url, "influx", "influx-monitor").start()
    try:
        fed.start_coordinator()
        fed.start_agents()
        assert monitor.wait_validation(1, {"plant-1"}, 120)
    finally:
        fed.stop()
        monitor.stop()
    assert fed.agents[0].agent.table is not None
    assert fed.agents[0].agent.table.seen == 20
    store = open_store(influxd.url, database, spool_dir=tmp_path / "reader-spool")
    try:
        heats = store.distinct_tag_values("eaf_tap", "heat", {"plant": "P1"})
        assert len(heats) == 20
        assert store.count("eaf_charge", {"plant": "P1"}) == 20
        assert store.count("eaf_signal", {"plant": "P1", "heat": heats[0]}) > 100
    finally:
        store.close()
