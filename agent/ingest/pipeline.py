"""The edge data path as a HeatSource: sensor source -> durable store -> heat assembly.

Everything the agent learns from goes through the store first, so what it trains on is
what the plant's InfluxDB holds (and an agent restarted on the same store gets its
heats back as history). The simulated plant's twin of it is
:func:`agent.ingest.simulated.simulated_pipeline`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from alchimia.agent.ingest.base import TAP_MEASUREMENT, PointSource, Reason
from alchimia.agent.ingest.heats import AssembledHeat, HeatAssembler
from alchimia.agent.records import STANDARD_CONTRACT, Heat
from alchimia.agent.store import Point, Store, StoreError
from alchimia.broker.rejections import RejectionLog

log = logging.getLogger(__name__)


class StorePipeline:
    """Pulls points from ``source``, writes them to ``store``, returns newly assembled heats.

    Implements :class:`agent.ingest.sources.HeatSource`. ``history()`` first drains what the source
    held at start (a simulated history, a CSV file), then returns every complete heat in
    the store; ``poll()`` ingests what arrived since and returns the heats it completed.

    A store that cannot take points (InfluxDB's spool full) or answer queries (InfluxDB
    down) does not stop the agent: ``poll()`` keeps the unwritten points, up to
    ``max_backlog`` (then it stops polling the source, which holds or drops by its own
    rule), and assembles the heats once the store answers again.

    Why points of a source that can produce them again (``source.volatile`` false: the
    simulator, a CSV file) wait up to ``write_interval_s`` before they are written, and
    heats are assembled only after a tap point was written: the agent polls about five
    times a second, and each store write (an fsync) and each assembly (a flush of the store
    and a query) costs a fixed amount of CPU whatever the number of points; at a furnace's
    rate those fixed costs are most of the gateway's load (bench/bench_store.py --paced).
    Points of a volatile source (a live MQTT feed, acknowledged on receipt) are written at
    every poll, so a crash loses as little as possible. A tap point is written at once, so
    a finished heat is never held back; ``close()`` writes what waits.
    """

    def __init__(
        self,
        source: PointSource,
        store: Store,
        assembler: HeatAssembler,
        *,
        max_backlog: int = 1_000_000,
        write_interval_s: float = 1.0,
        retry_pending_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not write_interval_s >= 0 or not retry_pending_s >= 0:
            raise ValueError("write_interval_s and retry_pending_s must be >= 0")
        self.source = source
        self.store = store
        self.assembler = assembler
        self.contract = STANDARD_CONTRACT  # heat assembly fills every column of models.schema
        self.max_backlog = max_backlog
        self.write_interval_s = write_interval_s
        self.retry_pending_s = retry_pending_s
        self._clock = clock
        # A source that does not say is treated as volatile: its points are written at once.
        self._volatile = bool(getattr(source, "volatile", True))
        self.points_written = 0
        self.last_heats: list[AssembledHeat] = []
        self._backlog: list[Point] = []
        self._tap_waiting = False  # a tap point is in the backlog
        self._last_write = -math.inf
        self._assembly_due = True  # a tap point was written since the last assembly
        self._last_assembly = -math.inf
        self._log = RejectionLog(log, burst=1, what="store warnings")

    @property
    def backlog(self) -> int:
        """Points polled but not written yet: waiting for the write interval, or kept
        after the store failed."""
        return len(self._backlog)

    def ingest(self, *, write_now: bool = False) -> int:
        """One poll of the source (skipped while ``max_backlog`` points wait); the number of
        points written to the store. Points wait for ``write_interval_s`` unless
        ``write_now``, the source is volatile, a tap point arrived or the backlog is full.

        If the store fails the points are kept for the next call, and the error is raised.
        """
        if len(self._backlog) < self.max_backlog:
            new = self.source.poll()
            self._tap_waiting = self._tap_waiting or _has_tap(new)
            self._backlog += new
        now = self._clock()
        if not (
            write_now
            or self._volatile
            or self._tap_waiting
            or len(self._backlog) >= self.max_backlog
            or now - self._last_write >= self.write_interval_s
        ):
            return 0
        return self.write_backlog()

    def write_backlog(self) -> int:
        """Write every point polled so far; the number written. Raises like ``ingest``."""
        points, self._backlog = self._backlog, []
        if not points:
            return 0
        try:
            self.store.write(points)
        except (ValueError, TypeError):
            # A point the source let through but the store refuses: keep the others.
            return self._write_one_by_one(points)
        except BaseException as exc:  # a disk error too: nothing polled is dropped
            self._backlog = points  # _tap_waiting still describes them
            self._log.reject(
                "write", "store did not take %d points (%s); kept to retry", len(points), exc
            )
            raise
        self._written(len(points), self._tap_waiting)
        return len(points)

    def _written(self, n: int, tap: bool) -> None:
        """``n`` points stored, a tap point among them if ``tap``; nothing waits now."""
        self.points_written += n
        self._last_write = self._clock()
        self._tap_waiting = False
        self._assembly_due = self._assembly_due or tap

    def _write_one_by_one(self, points: list[Point]) -> int:
        stored: list[Point] = []
        for i, p in enumerate(points):
            try:
                self.store.write([p])
            except (ValueError, TypeError) as exc:
                self.source.stats.reject(
                    Reason.STORE_REFUSED,
                    "store refused %s point of heat %s: %s",
                    p.measurement,
                    p.tags.get("heat"),
                    exc,
                )
            except BaseException:
                self._written(len(stored), _has_tap(stored))
                self._backlog = points[i:]
                self._tap_waiting = _has_tap(self._backlog)
                raise
            else:
                stored.append(p)
        self._written(len(stored), _has_tap(stored))
        return len(stored)

    def _assemble(self) -> list[Heat]:
        """New heats, if a tap point was written since the last look (or heats that were
        incomplete then are due for another try)."""
        now = self._clock()
        retry = self.assembler.pending and now - self._last_assembly >= self.retry_pending_s
        if not (self._assembly_due or retry):
            self.last_heats = []
            return []
        self.last_heats = self.assembler.new_heats()
        self._assembly_due, self._last_assembly = False, now
        return [h.to_heat() for h in self.last_heats]

    def history(self) -> list[Heat]:
        """Every complete heat in the store, after writing what the source held at start.

        Raises the store's error (InfluxDB down): what was polled is kept (spooled, or in
        the backlog) and the heats are assembled by a later call. Each call polls the
        source at least once, so a live feed keeps being spooled while the caller retries.
        """
        self.ingest(write_now=True)
        while not self.source.caught_up:
            self.ingest(write_now=True)
        return self._assemble()

    def poll(self) -> list[Heat]:
        try:
            self.ingest()
            return self._assemble()
        except StoreError as exc:
            self._log.reject(
                "poll",
                "store unavailable, heats wait in the store or the backlog (%d points): %s",
                len(self._backlog),
                exc,
            )
            return []

    def close(self) -> None:
        """Writes the points still waiting, closes the source; the store belongs to the
        caller."""
        try:
            self.write_backlog()
        except Exception as exc:
            log.error("%d polled points could not be written at close: %s", self.backlog, exc)
        finally:
            self.source.close()


def _has_tap(points: Sequence[Point]) -> bool:
    return any(p.measurement == TAP_MEASUREMENT for p in points)
