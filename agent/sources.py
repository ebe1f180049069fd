"""Where finished heats come from. Each source is one small class with ``poll()``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from agent.settings import AgentSettings
from agent.sim import Drift, Heat, SimulatedPlant, default_plants, parse_drift

log = logging.getLogger("alchimia.agent")


class HeatSource(Protocol):
    def history(self) -> list[Heat]:
        """Heats finished before the agent started: learned from, never predicted."""
        ...

    def poll(self) -> list[Heat]:
        """Heats finished since the last call (possibly none)."""
        ...

    def close(self) -> None:
        """Flush and release whatever the source holds (a store, a connection)."""
        ...


class SimulatedHeats:
    """A simulated plant whose history is known at start, then one heat per interval."""

    def __init__(self, plant: int, seed: int, history: int, interval_s: float,
                 drifts: Sequence[Drift] = ()) -> None:
        profile, plant_seed = default_plants(plant, base_seed=seed)[plant - 1]
        self.plant = SimulatedPlant(profile, plant_seed, drifts)
        self.name = profile.name
        self.n_history = history
        self.interval_s = interval_s
        self._next_ts = time.monotonic() + interval_s

    def history(self) -> list[Heat]:
        return self.plant.heats(self.n_history)

    def poll(self) -> list[Heat]:
        if self.interval_s <= 0:
            return []
        n, now = 0, time.monotonic()
        while now >= self._next_ts:
            n += 1
            self._next_ts += self.interval_s
        return self.plant.heats(n) if n else []

    def close(self) -> None:
        """Nothing to release: the heats live in memory."""


def build_heat_source(settings: AgentSettings) -> HeatSource:
    """The agent's data path from its settings: sensor points (the PLC gateway's MQTT feed,
    a CSV replay, or the simulator) -> store -> heat assembly, or, with ``store_sensors``
    off, finished heats straight from the simulator."""
    drifts = [parse_drift(spec) for spec in settings.drift]
    if not settings.store_sensors:
        return SimulatedHeats(settings.plant, settings.seed, settings.history_heats,
                              settings.heat_interval_s, drifts)
    from agent.pipeline import simulated_pipeline
    from agent.store import open_store

    state = settings.state_dir / settings.agent_id
    state.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.influx, settings.database, spool_dir=state / "spool",
                       sqlite_path=state / "sensors.sqlite3")
    where = (f"InfluxDB {settings.influx} database {settings.database!r}" if settings.influx
             else f"SQLite {state / 'sensors.sqlite3'}")
    log.info("agent %s stores sensor data in %s", settings.agent_id, where)
    if settings.plant_id is None or settings.furnace_id is None:  # the settings check both
        return simulated_pipeline(settings.plant, settings.seed, settings.history_heats,
                                  settings.heat_interval_s, store,
                                  period_s=settings.signal_period_s, drifts=drifts)
    from agent.heats import HeatAssembler
    from agent.ingest import CsvReplaySource, MqttPlcSource, PointSource
    from agent.pipeline import StorePipeline

    source: PointSource
    if settings.sensor_feed:
        source = MqttPlcSource(settings.sensor_feed, plant=settings.plant_id,
                               furnace=settings.furnace_id, prefix=settings.sensor_prefix,
                               client_id=f"{settings.agent_id}-sensors")
        log.info("agent %s reads furnace %s/%s from %s", settings.agent_id, settings.plant_id,
                 settings.furnace_id, settings.sensor_feed)
    else:
        assert settings.replay_heats is not None and settings.replay_signals is not None
        source = CsvReplaySource(settings.replay_heats, settings.replay_signals)
    return StorePipeline(source, store,
                         HeatAssembler(store, settings.plant_id, settings.furnace_id))
