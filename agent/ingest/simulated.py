"""The simulator as a sensor feed: what a PLC gateway would deliver, point by point.

Unlike :class:`SimulatedHeats`, which hands finished heats to the agent, this source goes
through the same store and heat assembly as a real plant, so the simulated demo exercises
the real data path. This is the one module of ``agent.ingest`` that uses the simulator:
:func:`simulated_heat_source` is what the agent's settings build when no real data is
configured. Per heat it emits the ``eaf_charge`` point at the
heat's start, the ``eaf_signal`` samples, and the ``eaf_tap`` point that closes the heat.

Timestamps are exact integers, ``start_ns + i * period_ns``: never ``float * 1e9``, which
drifts by hundreds of nanoseconds at today's epoch and would make a replayed point a new
point instead of the same one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from alchimia.agent.ingest.base import (
    CHARGE_FIELDS,
    CHARGE_MEASUREMENT,
    SIGNAL_FIELDS,
    SIGNAL_MEASUREMENT,
    TAP_FIELDS,
    TAP_MEASUREMENT,
    IngestStats,
)
from alchimia.agent.ingest.heats import HeatAssembler
from alchimia.agent.ingest.pipeline import StorePipeline
from alchimia.agent.records import STANDARD_CONTRACT, Heat
from alchimia.agent.sim import Drift, SimulatedHeat, SimulatedPlant, default_plants, parse_drift
from alchimia.agent.store import Point, Store, StoreError

if TYPE_CHECKING:
    from alchimia.agent.settings import AgentSettings

log = logging.getLogger(__name__)
DEFAULT_MAX_POINTS = 50_000


def heat_start_ns(heat: Heat) -> int:
    """The heat's start in integer ns (the simulator's clock is float s, whole ms apart)."""
    return round(heat.start_ts * 1000) * 1_000_000


class _HeatFeed:
    """One heat's points in time order, emitted in pieces as its simulated time passes."""

    def __init__(self, heat: SimulatedHeat, period_ns: int) -> None:
        spec = heat.signal_spec
        if spec is None:
            raise ValueError(f"heat {heat.heat_id} has no signals (not simulated)")
        self.heat = heat
        self.tags = {"plant": heat.plant, "furnace": heat.furnace, "heat": heat.heat_id}
        self.start_ns = heat_start_ns(heat)
        self.duration_ns = (spec.power_on_s + spec.power_off_s) * 10**9
        _, arrays = heat.signal_arrays(period_ns / 1e9)
        self.n = len(arrays[SIGNAL_FIELDS[0]])
        self.offsets = np.arange(self.n, dtype=np.int64) * period_ns  # exact integers
        # A sample averages its interval, so it is known at the interval's end (the last
        # interval may be cut short by the end of the heat).
        self.ends = np.minimum(self.offsets + period_ns, self.duration_ns)
        self.columns = np.column_stack([arrays[f] for f in SIGNAL_FIELDS])
        self.charged = False
        self.emitted = 0  # signal samples emitted so far
        self.tapped = False

    def points_until(self, elapsed_ns: int | None) -> list[Point]:
        """Points whose moment has come ``elapsed_ns`` after the start (None: all of them).

        The tap point closes the heat, after its last sample.
        """
        out: list[Point] = []
        if not self.charged:
            fields = {k: float(self.heat.inputs[k]) for k in CHARGE_FIELDS}
            out.append(Point(CHARGE_MEASUREMENT, self.tags, fields, self.start_ns))
            self.charged = True
        if elapsed_ns is None:
            stop = self.n
        else:
            stop = int(np.searchsorted(self.ends, elapsed_ns, side="right"))
        if stop > self.emitted:
            out += self._signals(self.emitted, stop)
            self.emitted = stop
        if self.emitted == self.n and (elapsed_ns is None or elapsed_ns >= self.duration_ns):
            fields = {k: float(self.heat.outcome[k]) for k in TAP_FIELDS}
            out.append(Point(TAP_MEASUREMENT, self.tags, fields, self.start_ns + self.duration_ns))
            self.tapped = True
        return out

    def _signals(self, lo: int, hi: int) -> list[Point]:
        # One tags dict for the whole heat: the line encoder caches its escaping by identity.
        tags, names = self.tags, SIGNAL_FIELDS
        ts = (self.offsets[lo:hi] + self.start_ns).tolist()
        rows = self.columns[lo:hi].tolist()
        return [
            Point(SIGNAL_MEASUREMENT, tags, dict(zip(names, row, strict=True)), t)
            for t, row in zip(ts, rows, strict=True)
        ]


def heat_points(heat: SimulatedHeat, period_s: float = 1.0) -> list[Point]:
    """All points of one simulated heat: charge, samples every ``period_s``, tap."""
    return _HeatFeed(heat, _period_ns(period_s)).points_until(None)


def _period_ns(period_s: float) -> int:
    period_ns = round(period_s * 1e9) if math.isfinite(period_s) else 0
    if period_ns <= 0 or period_ns % 1000:
        raise ValueError(f"period_s must be a positive whole number of µs, got {period_s}")
    return period_ns


class SimulatedSensorSource:
    """A simulated plant's heats as sensor points: history at once, then live heats.

    The first ``history_heats`` heats are emitted as fast as the caller polls (at most
    ``max_points`` points per poll, whole heats). Live heats then follow:

    * ``realtime=False``: as fast as possible, like the history, without end;
    * ``realtime=True`` or a speed factor ``s``: paced on ``clock`` so that simulated time
      runs ``s`` times faster than wall time, each heat trickling in sample by sample;
    * ``heat_interval_s``: paced so that each heat's whole cycle takes that many wall
      seconds (what :class:`SimulatedHeats` does with finished heats).

    ``live=False`` stops after the history. ``period_s`` is the sample period: 1 s is what
    a gateway delivers; a longer one cuts the points of a long history proportionally.
    History heats for which ``skip_heat`` is true (already in the store, after a restart)
    are generated, to keep the chain of heats, but not emitted again.
    """

    def __init__(
        self,
        plant: SimulatedPlant,
        history_heats: int,
        realtime: bool | float = False,
        *,
        period_s: float = 1.0,
        heat_interval_s: float | None = None,
        live: bool = True,
        max_points: int = DEFAULT_MAX_POINTS,
        clock: Callable[[], float] = time.monotonic,
        skip_heat: Callable[[Heat], bool] | None = None,
    ) -> None:
        if history_heats < 0:
            raise ValueError(f"history_heats must be >= 0, got {history_heats}")
        period_ns = _period_ns(period_s)
        speed = 1.0 if realtime is True else float(realtime or 0.0)
        if realtime is not False and not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"realtime must be True, False or a speed factor > 0: {realtime}")
        if heat_interval_s is not None and not heat_interval_s > 0:
            raise ValueError(f"heat_interval_s must be > 0, got {heat_interval_s}")
        self.plant = plant
        self.stats = IngestStats()
        self.volatile = False  # a restarted agent simulates the same heats again
        self.period_ns = period_ns
        self.speed = speed if realtime is not False else None
        self.heat_interval_s = heat_interval_s
        self.live = live
        self.max_points = max(1, max_points)
        self._clock = clock
        self._history_left = history_heats
        self.skip_heat = skip_heat
        self._current: _HeatFeed | None = None  # the live heat being paced
        self._wall_start: float | None = None  # wall time at which the current heat starts
        self.heats_emitted = 0
        self.heats_skipped = 0

    @property
    def paced(self) -> bool:
        return self.speed is not None or self.heat_interval_s is not None

    @property
    def caught_up(self) -> bool:
        """True once every history heat has been emitted (or skipped)."""
        return self._history_left == 0

    def _wall_duration(self, feed: _HeatFeed) -> float:
        if self.heat_interval_s is not None:
            return self.heat_interval_s
        return feed.duration_ns / 1e9 / (self.speed or 1.0)

    def poll(self) -> list[Point]:
        if not self.caught_up:
            out = self._poll_history()  # live time starts at the next poll
        elif not self.live:
            out = []
        elif self.paced:
            out = self._poll_paced(self._clock())
        else:
            out = []
            while len(out) < self.max_points:
                out += self._emit_whole(self.plant.next_heat())
        self.stats.accept(len(out))
        return out

    def _emit_whole(self, heat: SimulatedHeat) -> list[Point]:
        self.heats_emitted += 1
        return _HeatFeed(heat, self.period_ns).points_until(None)

    def _poll_history(self) -> list[Point]:
        out: list[Point] = []
        while len(out) < self.max_points and self._history_left > 0:
            heat = self.plant.next_heat()  # generated even when skipped: heats are a chain
            self._history_left -= 1
            if self.skip_heat is not None and self.skip_heat(heat):
                self.heats_skipped += 1
                continue
            out += self._emit_whole(heat)
        return out

    def _poll_paced(self, now: float) -> list[Point]:
        out: list[Point] = []
        while len(out) < self.max_points:
            if self._current is None:
                self._current = _HeatFeed(self.plant.next_heat(), self.period_ns)
                if self._wall_start is None:
                    self._wall_start = now  # live time starts at the first live poll
            feed, start = self._current, self._wall_start
            assert start is not None
            wall = self._wall_duration(feed)
            progress = min(max(now - start, 0.0) / wall, 1.0)
            # The end is exactly the heat's duration, not a float product of it.
            elapsed = feed.duration_ns if progress >= 1.0 else int(progress * feed.duration_ns)
            out += feed.points_until(elapsed)
            if not feed.tapped:
                break
            self._current = None
            self.heats_emitted += 1
            self._wall_start = start + wall  # no drift: the next heat starts as this one ends
        return out

    def close(self) -> None:
        """Nothing to release."""


class SimulatedHeats:
    """A simulated plant whose history is known at start, then one heat per interval:
    finished heats straight to the agent, without store or assembly (``store_sensors``
    off)."""

    def __init__(
        self, plant: int, seed: int, history: int, interval_s: float, drifts: Sequence[Drift] = ()
    ) -> None:
        profile, plant_seed = default_plants(plant, base_seed=seed)[plant - 1]
        self.plant = SimulatedPlant(profile, plant_seed, drifts)
        self.name = profile.name
        self.n_history = history
        self.interval_s = interval_s
        self.contract = STANDARD_CONTRACT
        self._next_ts = time.monotonic() + interval_s

    def history(self) -> list[Heat]:
        return list(self.plant.heats(self.n_history))

    def poll(self) -> list[Heat]:
        if self.interval_s <= 0:
            return []
        n, now = 0, time.monotonic()
        while now >= self._next_ts:
            n += 1
            self._next_ts += self.interval_s
        return list(self.plant.heats(n)) if n else []

    def close(self) -> None:
        """Nothing to release: the heats live in memory."""


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
            try:
                tapped = {p.tags["heat"] for p in store.query_points(TAP_MEASUREMENT, tags)}
            except StoreError as exc:
                # InfluxDB down at start: write every history heat again (the same points,
                # so the store keeps one copy of each) rather than wait for it.
                log.info(
                    "cannot ask the store which history heats it holds (%s); writing them all", exc
                )
                tapped = set()
        return heat.heat_id in tapped

    source = SimulatedSensorSource(
        sim,
        history,
        period_s=period_s,
        heat_interval_s=interval_s if live else None,
        live=live,
        skip_heat=stored,
    )
    return StorePipeline(source, store, HeatAssembler(store, profile.name, profile.furnace))


def simulated_heat_source(
    settings: AgentSettings, store: Store | None = None
) -> SimulatedHeats | StorePipeline:
    """The simulated plant of the agent's settings (``plant``, ``seed``, ``history_heats``,
    ``heat_interval_s``, ``drift``): through ``store`` if given, else finished heats."""
    drifts = [parse_drift(spec) for spec in settings.drift]
    if store is None:
        return SimulatedHeats(
            settings.plant, settings.seed, settings.history_heats, settings.heat_interval_s, drifts
        )
    return simulated_pipeline(
        settings.plant,
        settings.seed,
        settings.history_heats,
        settings.heat_interval_s,
        store,
        period_s=settings.signal_period_s,
        drifts=drifts,
    )
