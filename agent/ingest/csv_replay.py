"""Replay a plant's recorded heats from two CSV files (schema in docs/SENSORS.md).

``heats.csv`` has one row per heat (ids, charge and tap times, charge and tap values);
``signals.csv`` one row per sensor sample (``ts``, ``heat``, one column per signal field).
A wrong header is the file's fault and raises at once; a bad row is counted under its
reason and skipped, and the replay goes on.

Order of emission, unpaced: every heat's charge point, then the samples as the file lists
them, then the tap points. A tap closes a heat, so no heat is assembled before its last
sample is in the store, even when the caller assembles between two polls. Paced
(``pace`` heats per second, the agent's ``--replay-pace``), heats come one at a time like
a live feed, each heat's tap after its samples (:class:`CsvReplaySource`).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TextIO

from alchimia.agent.ingest.base import (
    CHARGE_FIELDS,
    CHARGE_MEASUREMENT,
    CHARGE_REQUIRED,
    SIGNAL_FIELDS,
    SIGNAL_MEASUREMENT,
    TAP_FIELDS,
    TAP_MEASUREMENT,
    IngestStats,
    Reason,
    Rejected,
    check_id,
    parse_number,
    parse_ts,
)
from alchimia.agent.store import Point

log = logging.getLogger(__name__)

HEAT_ID_COLUMNS: tuple[str, ...] = ("heat", "plant", "furnace", "charge_ts", "tap_ts")
#: Columns heats.csv must have; the charge_<grade>_t columns are optional.
HEAT_REQUIRED: tuple[str, ...] = (*HEAT_ID_COLUMNS, *CHARGE_REQUIRED, *TAP_FIELDS)
HEAT_OPTIONAL: tuple[str, ...] = tuple(f for f in CHARGE_FIELDS if f not in CHARGE_REQUIRED)
SIGNAL_ID_COLUMNS: tuple[str, ...] = ("ts", "heat")


def _check_header(
    path: Path,
    header: list[str] | None,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    at_least_one: bool = False,
) -> list[str]:
    if not header:
        raise ValueError(f"{path}: empty file, expected a header row")
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    missing = [c for c in required if c not in header]
    unknown = [h for h in header if h not in required and h not in optional]
    problems = []
    if dupes:
        problems.append(f"duplicate columns {dupes}")
    if missing:
        problems.append(f"missing columns {missing}")
    if unknown:
        problems.append(f"unknown columns {unknown}")
    if at_least_one and not any(h in optional for h in header):
        problems.append(f"no data column (any of {list(optional)})")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return header


class _Heat:
    __slots__ = ("charge", "tags", "tap")

    def __init__(self, tags: dict[str, str], charge: Point, tap: Point) -> None:
        self.tags, self.charge, self.tap = tags, charge, tap


def parse_heat_row(header: list[str], row: list[str]) -> _Heat | Rejected:
    """One heats.csv row -> its charge and tap points; pure, never raises."""
    if len(row) != len(header):
        return Rejected(Reason.BAD_ROW, f"{len(row)} cells, header has {len(header)}")
    cells = dict(zip(header, (c.strip() for c in row), strict=True))
    if not cells["heat"]:
        return Rejected(Reason.MISSING_HEAT)
    heat = check_id(cells["heat"])
    if heat is None:
        return Rejected(Reason.BAD_HEAT, f"{cells['heat'][:80]!r}")
    plant, furnace = check_id(cells["plant"]), check_id(cells["furnace"])
    if plant is None or furnace is None:
        return Rejected(
            Reason.BAD_ID, f"plant {cells['plant'][:40]!r}, furnace {cells['furnace'][:40]!r}"
        )
    times: list[int] = []
    for col in ("charge_ts", "tap_ts"):
        if not cells[col]:
            return Rejected(Reason.MISSING_TS, col)
        ts = parse_ts(cells[col])
        if isinstance(ts, Rejected):
            return Rejected(ts.reason, f"{col}: {ts.detail}")
        times.append(ts)
    if times[1] <= times[0]:
        return Rejected(Reason.BAD_TS, "tap_ts is not after charge_ts")
    values: dict[str, float] = {}
    for col in (*CHARGE_FIELDS, *TAP_FIELDS):
        text = cells.get(col, "")
        if not text:
            if col in HEAT_OPTIONAL:
                continue  # a grade not charged
            return Rejected(Reason.MISSING_VALUE, col)
        number = parse_number(text)
        if isinstance(number, Rejected):
            return Rejected(number.reason, f"{col}: {number.detail}")
        values[col] = number
    tags = {"plant": plant, "furnace": furnace, "heat": heat}
    charge = {k: v for k, v in values.items() if k in CHARGE_FIELDS}
    tap = {k: values[k] for k in TAP_FIELDS}
    return _Heat(
        tags,
        Point(CHARGE_MEASUREMENT, tags, charge, times[0]),
        Point(TAP_MEASUREMENT, tags, tap, times[1]),
    )


def parse_signal_row(
    header: list[str], row: list[str], heats: dict[str, dict[str, str]]
) -> Point | Rejected:
    """One signals.csv row -> a sample point (tags from the heat table); never raises."""
    if len(row) != len(header):
        return Rejected(Reason.BAD_ROW, f"{len(row)} cells, header has {len(header)}")
    cells = dict(zip(header, (c.strip() for c in row), strict=True))
    if not cells["heat"]:
        return Rejected(Reason.MISSING_HEAT)
    tags = heats.get(cells["heat"])
    if tags is None:
        return Rejected(Reason.UNKNOWN_HEAT, f"{cells['heat'][:80]!r} not in the heat table")
    if not cells["ts"]:
        return Rejected(Reason.MISSING_TS)
    ts = parse_ts(cells["ts"])
    if isinstance(ts, Rejected):
        return ts
    values: dict[str, float] = {}
    for col, text in cells.items():
        if col in SIGNAL_ID_COLUMNS or not text:
            continue  # an empty cell: that sensor had no value in this sample
        number = parse_number(text)
        if isinstance(number, Rejected):
            return Rejected(number.reason, f"{col}: {number.detail}")
        values[col] = number
    if not values:
        return Rejected(Reason.NO_VALUES)
    return Point(SIGNAL_MEASUREMENT, tags, values, ts)


class CsvReplaySource:
    """A recorded history from ``heats_csv`` and ``signals_csv``.

    Unpaced (``pace`` None), every point as fast as it is polled: the whole file is the
    agent's history, learned from and never predicted.

    Paced (``pace`` heats per second), the file plays like a live feed: heats in order of
    charge time, each whole (charge, its samples, tap). The first ``history_heats`` are
    the history, emitted as fast as polled; from the first poll after them, one more heat
    is released every ``1 / pace`` seconds of ``clock``, so the agent predicts each of
    them before it learns from it. A heat is released only once the signal file has been
    read past its last sample (a first pass notes where each heat's samples end), so a
    tap never closes a heat before its samples are in; samples of later heats read on the
    way wait for their heat, which costs memory only if the file is not in time order.
    """

    def __init__(
        self,
        heats_csv: Path,
        signals_csv: Path,
        *,
        max_points: int = 50_000,
        pace: float | None = None,
        history_heats: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if pace is not None and not (math.isfinite(pace) and pace > 0):
            raise ValueError(f"pace must be a positive number of heats per second, got {pace}")
        if history_heats < 0:
            raise ValueError(f"history_heats must be >= 0, got {history_heats}")
        self.heats_path = Path(heats_csv)
        self.signals_path = Path(signals_csv)
        self.max_points = max(1, max_points)
        self.pace = pace
        self.history_heats = history_heats
        self._clock = clock
        self.stats = IngestStats(log)
        self.volatile = False  # a restarted agent reads the files again
        with self.heats_path.open(newline="", encoding="utf-8-sig") as f:
            self._heat_header = _check_header(
                self.heats_path, next(csv.reader(f), None), HEAT_REQUIRED, HEAT_OPTIONAL
            )
        with self.signals_path.open(newline="", encoding="utf-8-sig") as f:
            self._signal_header = _check_header(
                self.signals_path, next(csv.reader(f), None), SIGNAL_ID_COLUMNS, SIGNAL_FIELDS, True
            )
        self._stream: Generator[Point, None, None] | None = None
        self._groups: Generator[list[Point], None, None] | None = None
        self._next_group: list[Point] | None = None
        self._files: list[TextIO] = []
        self._done = False
        self.heats_released = 0
        self._live_start: float | None = None  # clock at the first poll after the history

    @property
    def caught_up(self) -> bool:
        """Unpaced: the whole file was polled; paced: the history heats were."""
        if self.pace is None:
            return self._done
        return self._done or self.heats_released >= self.history_heats

    def _reject(self, path: Path, line: int, r: Rejected) -> None:
        self.stats.reject(
            r.reason, "%s line %d skipped (%s): %s", path.name, line, r.reason, r.detail
        )

    def _rows(self, path: Path, count_errors: bool = True) -> Iterator[tuple[int, list[str]]]:
        f = path.open(newline="", encoding="utf-8-sig", errors="replace")
        self._files.append(f)
        reader = csv.reader(f)
        next(reader, None)  # the header, checked at construction
        try:
            for row in reader:
                if row and any(c.strip() for c in row):  # blank lines are not rows
                    yield reader.line_num, row
        except csv.Error as exc:  # e.g. a NUL byte: the rest of the file is unreadable
            if count_errors:
                self._reject(path, reader.line_num, Rejected(Reason.BAD_ROW, str(exc)))
        finally:
            f.close()

    def _heats(self) -> tuple[list[_Heat], dict[str, dict[str, str]]]:
        heats: list[_Heat] = []
        tags_by_id: dict[str, dict[str, str]] = {}
        for line, row in self._rows(self.heats_path):
            heat = parse_heat_row(self._heat_header, row)
            if isinstance(heat, _Heat) and heat.tags["heat"] in tags_by_id:
                heat = Rejected(Reason.DUPLICATE_HEAT, heat.tags["heat"])
            if isinstance(heat, Rejected):
                self._reject(self.heats_path, line, heat)
                continue
            heats.append(heat)
            tags_by_id[heat.tags["heat"]] = heat.tags
        return heats, tags_by_id

    def _points(self) -> Generator[Point, None, None]:
        heats, tags_by_id = self._heats()
        for heat in heats:
            yield heat.charge
        for line, row in self._rows(self.signals_path):
            point = parse_signal_row(self._signal_header, row, tags_by_id)
            if isinstance(point, Rejected):
                self._reject(self.signals_path, line, point)
            else:
                yield point
        for heat in heats:
            yield heat.tap

    def _last_lines(self) -> dict[str, int]:
        """First pass over the signal file: the line of each heat's last sample row."""
        col = self._signal_header.index("heat")
        last: dict[str, int] = {}
        for line, row in self._rows(self.signals_path, count_errors=False):
            if len(row) == len(self._signal_header):
                last[row[col].strip()] = line
        return last

    def _heat_groups(self) -> Generator[list[Point], None, None]:
        """Paced order: one list per heat (charge, samples, tap), by charge time."""
        heats, tags_by_id = self._heats()
        heats.sort(key=lambda h: h.charge.ts_ns)  # stable: file order among equal times
        last = self._last_lines()
        rows = self._rows(self.signals_path)
        held: dict[str, list[Point]] = {}
        read = 0  # line number of the last signal row read
        for heat in heats:
            need = last.get(heat.tags["heat"], 0)
            while read < need:
                try:
                    read, row = next(rows)
                except StopIteration:
                    break
                point = parse_signal_row(self._signal_header, row, tags_by_id)
                if isinstance(point, Rejected):
                    self._reject(self.signals_path, read, point)
                else:
                    held.setdefault(point.tags["heat"], []).append(point)
            yield [heat.charge, *held.pop(heat.tags["heat"], []), heat.tap]
        for line, row in rows:  # rows after every heat's last sample: count what is wrong
            point = parse_signal_row(self._signal_header, row, tags_by_id)
            if isinstance(point, Rejected):
                self._reject(self.signals_path, line, point)

    def poll(self) -> list[Point]:
        if self._done:
            return []
        out = self._poll_paced() if self.pace is not None else self._poll_all()
        self.stats.accept(len(out))
        return out

    def _poll_all(self) -> list[Point]:
        if self._stream is None:
            self._stream = self._points()
        out: list[Point] = []
        for point in self._stream:
            out.append(point)
            if len(out) >= self.max_points:
                break
        else:
            self._done = True
        return out

    def _poll_paced(self) -> list[Point]:
        assert self.pace is not None
        if self._groups is None:
            self._groups = self._heat_groups()
        if self.heats_released < self.history_heats:
            allowed = self.history_heats  # the history: as fast as polled
        else:
            now = self._clock()
            if self._live_start is None:
                self._live_start = now  # live time starts at the first poll after history
            allowed = self.history_heats + math.floor((now - self._live_start) * self.pace)
        out: list[Point] = []
        while self.heats_released < allowed and len(out) < self.max_points:
            if self._next_group is None:
                self._next_group = next(self._groups, None)
                if self._next_group is None:
                    self._done = True
                    break
            out += self._next_group
            self._next_group = None
            self.heats_released += 1
        return out

    def close(self) -> None:
        for gen in (self._stream, self._groups):
            if gen is not None:
                gen.close()
        for f in self._files:
            f.close()
        self._done = True
