"""Embedded store in one SQLite file, for agents without an InfluxDB (demo, small sites).

Why this schema: it mirrors InfluxDB's model so that both stores answer alike. A series
(measurement + tag set) gets an id once; ``series_tags`` indexes its tags for the
``WHERE tag = value`` lookups; ``points`` is keyed by (series, ts), i.e. by (measurement,
tag set, ts) as in InfluxDB, and stores the fields as one msgpack map (float64 and int64
kept exactly, far smaller than a column per field or JSON).

Same dedup rule as InfluxDB: writing a point whose measurement, tag set and timestamp exist
merges the fields, the new values winning. (A plain ``INSERT OR REPLACE`` would drop fields
the new point lacks, which InfluxDB does not do.) Inserts use ``INSERT OR IGNORE`` and only
the conflicting rows take the read-merge-update path, so the common case stays one
``executemany``. WAL mode lets readers run beside the writer; ``fsync=True`` (the default)
uses ``synchronous=FULL`` so a returned ``write`` survives a power cut, ``False`` only a crash.
"""

from __future__ import annotations

import heapq
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack

from alchimia.agent.store.points import (
    NO_TAGS,
    Point,
    StoreError,
    check_field_key,
    check_measurement,
    check_tags,
    normalize_fields,
    normalize_ts,
    sum_is_finite,
    tagset_key,
)

_FLOAT_ONLY = {float}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id          INTEGER PRIMARY KEY,
    measurement TEXT NOT NULL,
    tagset      TEXT NOT NULL,          -- canonical escaped, sorted "k=v,k=v"
    tags        BLOB NOT NULL,          -- msgpack map
    UNIQUE (measurement, tagset)
);
CREATE TABLE IF NOT EXISTS series_tags (
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    series_id INTEGER NOT NULL REFERENCES series(id),
    PRIMARY KEY (key, value, series_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL REFERENCES series(id),
    ts        INTEGER NOT NULL,
    fields    BLOB NOT NULL,            -- msgpack map
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
"""


class SQLiteStore:
    """The :class:`~agent.store.Store` interface on one SQLite file; thread safe."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute("PRAGMA foreign_keys=OFF")
        self._db.executescript(_SCHEMA)
        self._series: dict[tuple[Any, ...], int] = {}
        self._field_keys: set[tuple[str, ...]] = set()  # key tuples check_field_key passed
        self._closed = False

    # -- writing ----------------------------------------------------------------------------

    def _series_id(self, measurement: str, tags: Mapping[str, str]) -> int:
        key = (measurement, *tags.items())
        sid = self._series.get(key)
        if sid is not None:
            return sid
        check_measurement(measurement)
        check_tags(tags)
        tagset = tagset_key(tags)
        row = self._db.execute(
            "SELECT id FROM series WHERE measurement = ? AND tagset = ?", (measurement, tagset)
        ).fetchone()
        if row is None:
            plain = dict(sorted(tags.items()))
            cur = self._db.execute(
                "INSERT INTO series (measurement, tagset, tags) VALUES (?, ?, ?)",
                (measurement, tagset, msgpack.packb(plain)),
            )
            sid = int(cur.lastrowid)  # type: ignore[arg-type]
            self._db.executemany(
                "INSERT INTO series_tags (key, value, series_id) VALUES (?, ?, ?)",
                [(k, v, sid) for k, v in plain.items()],
            )
        else:
            sid = int(row[0])
        if len(self._series) > 65536:
            self._series.clear()
        self._series[key] = sid
        return sid

    def _fields(self, fields: Mapping[str, object]) -> Mapping[str, object]:
        """What :func:`normalize_fields` returns, without its per-field calls when possible.

        Those calls were most of this store's CPU. A plain dict of finite floats whose keys
        were checked before is already normalised: it is returned as it is.
        """
        if type(fields) is dict and set(map(type, fields.values())) == _FLOAT_ONLY:
            keys = tuple(fields)
            if sum_is_finite(fields.values()) and (
                keys in self._field_keys or self._remember_keys(keys)
            ):
                return fields
        return normalize_fields(fields)

    def _remember_keys(self, keys: tuple[str, ...]) -> bool:
        try:
            for key in keys:
                check_field_key(key)
        except (TypeError, ValueError):
            return False  # normalize_fields raises the error
        if len(self._field_keys) >= 4096:
            self._field_keys.clear()
        self._field_keys.add(keys)
        return True

    def write(self, points: Sequence[Point]) -> None:
        """One transaction per call; invalid points raise before anything is written."""
        if not points:
            return
        with self._lock:
            if self._closed:
                raise StoreError("store is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = [
                    (
                        self._series_id(p.measurement, p.tags),
                        normalize_ts(p.ts_ns),
                        msgpack.packb(self._fields(p.fields)),
                    )
                    for p in points
                ]
                cur = self._db.executemany(
                    "INSERT OR IGNORE INTO points (series_id, ts, fields) VALUES (?, ?, ?)", rows
                )
                if cur.rowcount != len(rows):
                    self._merge(rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._series.clear()  # ids created in the rolled-back transaction are gone
                raise

    def _merge(self, rows: list[tuple[int, int, bytes]]) -> None:
        """Slow path for existing keys: merge fields like InfluxDB, in write order."""
        for sid, ts, blob in rows:
            (old,) = self._db.execute(
                "SELECT fields FROM points WHERE series_id = ? AND ts = ?", (sid, ts)
            ).fetchone()
            if old != blob:
                merged = msgpack.unpackb(old) | msgpack.unpackb(blob)
                self._db.execute(
                    "UPDATE points SET fields = ? WHERE series_id = ? AND ts = ?",
                    (msgpack.packb(merged), sid, ts),
                )

    def flush(self, timeout: float | None = None) -> None:
        """Nothing to do: every ``write`` is committed when it returns."""

    # -- reading ----------------------------------------------------------------------------

    def _matching_series(
        self, measurement: str, tags: Mapping[str, str]
    ) -> list[tuple[int, str, dict[str, str]]]:
        sql = "SELECT id, tagset, tags FROM series WHERE measurement = ?"
        args: list[Any] = [measurement]
        for k, v in tags.items():
            sql += " AND id IN (SELECT series_id FROM series_tags WHERE key = ? AND value = ?)"
            args += [k, v]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY tagset", args).fetchall()
        return [(sid, tagset, msgpack.unpackb(blob)) for sid, tagset, blob in rows]

    def query_points(
        self,
        measurement: str,
        tags: Mapping[str, str],
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[Point]:
        """Points matching all ``tags`` in ``[start_ns, end_ns)``, by time then tag set."""
        lo = -(2**63) if start_ns is None else int(start_ns)
        hi = 2**63 - 1 if end_ns is None else int(end_ns)
        streams = []
        for sid, tagset, stags in self._matching_series(measurement, tags):
            with self._lock:
                rows = self._db.execute(
                    "SELECT ts, fields FROM points WHERE series_id = ? AND ts >= ? AND ts < ?"
                    " ORDER BY ts",
                    (sid, lo, hi),
                ).fetchall()
            streams.append(
                [(ts, tagset, Point(measurement, stags, msgpack.unpackb(f), ts)) for ts, f in rows]
            )
        return [p for _, _, p in heapq.merge(*streams, key=lambda t: (t[0], t[1]))]

    def count(self, measurement: str, tags: Mapping[str, str]) -> int:
        total = 0
        for sid, _, _ in self._matching_series(measurement, tags):
            with self._lock:
                (n,) = self._db.execute(
                    "SELECT COUNT(*) FROM points WHERE series_id = ?", (sid,)
                ).fetchone()
            total += int(n)
        return total

    def distinct_tag_values(
        self, measurement: str, tag: str, where: Mapping[str, str] = NO_TAGS
    ) -> list[str]:
        """Sorted values of ``tag`` among the series matching ``where``."""
        sql = (
            "SELECT DISTINCT value FROM series_tags WHERE key = ? AND series_id IN"
            " (SELECT id FROM series WHERE measurement = ?"
        )
        args: list[Any] = [tag, measurement]
        for k, v in where.items():
            sql += " AND id IN (SELECT series_id FROM series_tags WHERE key = ? AND value = ?)"
            args += [k, v]
        with self._lock:
            rows = self._db.execute(sql + ") ORDER BY value", args).fetchall()
        return [str(v) for (v,) in rows]

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
