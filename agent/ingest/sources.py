"""Where the agent's finished heats come from: the data path its settings describe."""

from __future__ import annotations

import logging
from typing import Protocol

from alchimia.agent.records import DataContract, Heat
from alchimia.agent.settings import AgentSettings

log = logging.getLogger("alchimia.agent")


class HeatSource(Protocol):
    #: The columns its heats carry: a model asking for others is not adopted.
    contract: DataContract

    def history(self) -> list[Heat]:
        """Heats finished before the agent started: learned from, never predicted. Raises
        if its store cannot answer yet; the agent serves meanwhile and calls it again."""
        ...

    def poll(self) -> list[Heat]:
        """Heats finished since the last call (possibly none)."""
        ...

    def close(self) -> None:
        """Flush and release whatever the source holds (a store, a connection)."""
        ...


def build_heat_source(settings: AgentSettings) -> HeatSource:
    """The agent's data path from its settings: sensor points (the PLC gateway's MQTT feed,
    a CSV replay, or the simulator) -> store -> heat assembly, or, with ``store_sensors``
    off, finished heats straight from the simulator.

    Only the simulated branches load the simulator (``agent.ingest.simulated``).
    """
    if not settings.store_sensors:
        from alchimia.agent.ingest.simulated import simulated_heat_source

        return simulated_heat_source(settings)
    from alchimia.agent.store import open_store

    state = settings.state_dir / settings.agent_id
    state.mkdir(parents=True, exist_ok=True)
    spooled = (
        {
            "flush_interval": settings.store_flush_interval_s,
            "fsync_interval": settings.spool_fsync_interval_s,
        }
        if settings.influx
        else {}
    )
    store = open_store(
        settings.influx,
        settings.database,
        spool_dir=state / "spool",
        sqlite_path=state / "sensors.sqlite3",
        **spooled,
    )
    where = (
        f"InfluxDB {settings.influx} database {settings.database!r}"
        if settings.influx
        else f"SQLite {state / 'sensors.sqlite3'}"
    )
    log.info("agent %s stores sensor data in %s", settings.agent_id, where)
    if settings.plant_id is None or settings.furnace_id is None:  # the settings check both
        from alchimia.agent.ingest.simulated import simulated_heat_source

        return simulated_heat_source(settings, store)
    from alchimia.agent.ingest.base import PointSource
    from alchimia.agent.ingest.csv_replay import CsvReplaySource
    from alchimia.agent.ingest.heats import HeatAssembler
    from alchimia.agent.ingest.mqtt_plc import MqttPlcSource
    from alchimia.agent.ingest.pipeline import StorePipeline

    source: PointSource
    if settings.sensor_feed:
        source = MqttPlcSource(
            settings.sensor_feed,
            plant=settings.plant_id,
            furnace=settings.furnace_id,
            prefix=settings.sensor_prefix,
            client_id=f"{settings.agent_id}-sensors",
        )
        log.info(
            "agent %s reads furnace %s/%s from %s",
            settings.agent_id,
            settings.plant_id,
            settings.furnace_id,
            settings.sensor_feed,
        )
    else:
        assert settings.replay_heats is not None and settings.replay_signals is not None
        source = CsvReplaySource(
            settings.replay_heats,
            settings.replay_signals,
            pace=settings.replay_pace,
            history_heats=settings.history_heats,
        )
    return StorePipeline(
        source, store, HeatAssembler(store, settings.plant_id, settings.furnace_id)
    )
