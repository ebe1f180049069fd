"""The edge data path as a HeatSource: sensor source -> durable store -> heat assembly.

Everything the agent learns from goes through the store first, so what it trains on is
what the plant's InfluxDB holds (and an agent restarted on the same store gets its
heats back as history). :func:`simulated_pipeline` is the drop-in twin of
:class:`agent.sources.SimulatedHeats`: same plant, seed, history and heat rate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agent.heats import AssembledHeat, HeatAssembler
from agent.ingest.base import TAP_MEASUREMENT, PointSource, RateLimitedLog, Reason
from agent.ingest.simulated import SimulatedSensorSource
from agent.sim import Drift, Heat, SimulatedPlant, default_plants
from agent.store import Point, Store, StoreError

log = logging.getLogger(__name__)


class StorePipeline:
    """Pulls points from ``source``, writes them to ``store``, returns newly assembled heats.

    Implements :class:`agent.sources.HeatSource`. ``history()`` first drains what the source
    held at start (a simulated history, a CSV file), then returns every complete heat in
    the store; ``poll()`` ingests what arrived since and returns the heats it completed.

    A store that cannot take points (InfluxDB's spool full) or answer queries (InfluxDB
    down) does not stop the agent: ``poll()`` keeps the unwritten points, up to
    ``max_backlog`` (then it stops polling the source, which holds or drops by its own
    rule), and assembles the heats once the store answers again.
    """

    def __init__(self, source: PointSource, store: Store, assembler: HeatAssembler, *,
                 max_backlog: int = 1_000_000) -> None:
        self.source = source
        self.store = store
        self.assembler = assembler
        self.max_backlog = max_backlog
        self.points_written = 0
        self.last_heats: list[AssembledHeat] = []
        self._backlog: list[Point] = []
        self._log = RateLimitedLog(log)

    @property
    def backlog(self) -> int:
        """Points polled but not written yet (the store failed)."""
        return len(self._backlog)

    def ingest(self) -> int:
        """One poll of the source into the store; the number of points written.

        On a store error the points are kept for the next call, and the error is raised.
        """
        if len(self._backlog) < self.max_backlog:
            self._backlog += self.source.poll()
        points, self._backlog = self._backlog, []
        if not points:
            return 0
        try:
            self.store.write(points)
        except (ValueError, TypeError):
            # A point the source let through but the store refuses: keep the others.
            return self._write_one_by_one(points)
        except StoreError as exc:
            self._backlog = points
            self._log.warning("write", "store did not take %d points (%s); kept to retry",
                              len(points), exc)
            raise
        self.points_written += len(points)
        return len(points)

    def _write_one_by_one(self, points: list[Point]) -> int:
        written = 0
        for i, p in enumerate(points):
            try:
                self.store.write([p])
            except (ValueError, TypeError) as exc:
                self.source.stats.reject(Reason.STORE_REFUSED)
                self._log.warning(Reason.STORE_REFUSED, "store refused %s point of heat %s: %s",
                                  p.measurement, p.tags.get("heat"), exc)
            except StoreError:
                self._backlog = points[i:]
                self.points_written += written
                raise
            else:
                written += 1
        self.points_written += written
        return written

    def _assemble(self) -> list[Heat]:
        self.last_heats = self.assembler.new_heats()
        return [h.to_heat() for h in self.last_heats]

    def history(self) -> list[Heat]:
        """Raises the store's error: an agent should not start on a store it cannot use."""
        while not self.source.caught_up:
            self.ingest()
        return self._assemble()

    def poll(self) -> list[Heat]:
        try:
            self.ingest()
            return self._assemble()
        except StoreError as exc:
            self._log.warning("poll", "store unavailable, heats wait in the store or the "
                              "backlog (%d points): %s", len(self._backlog), exc)
            return []

    def close(self) -> None:
        """Closes the source; the store belongs to the caller."""
        self.source.close()


def simulated_pipeline(
    plant: int,
    seed: int,
    history: int,
    interval_s: float,
    store: Store,
    *,
    period_s: float = 1.0,
    drifts: Sequence[Drift] = (),
) -> StorePipeline:
    """Simulated plant ``plant`` (1-based) through ``store``; mirrors ``SimulatedHeats``.

    The same heats as ``SimulatedHeats(plant, seed, history, interval_s)``: the first
    ``history`` at once, then one heat per ``interval_s`` wall seconds (none if <= 0),
    each trickling in sample by sample. ``period_s`` is the signal sample period.
    History heats already tapped in the store (a restart) are not written again.
    """
    profile, plant_seed = default_plants(plant, base_seed=seed)[plant - 1]
    sim = SimulatedPlant(profile, plant_seed, drifts)
    live = interval_s > 0

    tapped: set[str] | None = None

    def stored(heat: Heat) -> bool:
        nonlocal tapped
        if tapped is None:  # one query at the first history heat, not one per heat
            tags = {"plant": profile.name, "furnace": profile.furnace}
            tapped = {p.tags["heat"] for p in store.query_points(TAP_MEASUREMENT, tags)}
        return heat.heat_id in tapped

    source = SimulatedSensorSource(sim, history, period_s=period_s,
                                   heat_interval_s=interval_s if live else None, live=live,
                                   skip_heat=stored)
    return StorePipeline(source, store, HeatAssembler(store, profile.name, profile.furnace))
