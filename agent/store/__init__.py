"""The agent's durable sensor store: InfluxDB (1.x HTTP API) or an embedded SQLite file.

The rest of the system only uses :class:`Store` and :func:`open_store`. Both stores keep
one point per measurement + tag set + timestamp (a rewrite merges fields, as InfluxDB
does), return points ordered by time (ties by tag set), and take time ranges as half-open
``[start_ns, end_ns)``. Furnace data carries the tags in :data:`FURNACE_TAGS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from alchimia.agent.store.buffered import FlushTimeout, WriterStats
from alchimia.agent.store.influx import InfluxStore, StoreUnavailableError, default_state_dir
from alchimia.agent.store.points import (
    FURNACE_TAGS,
    NO_TAGS,
    FieldValue,
    LineEncoder,
    Point,
    StoreError,
    encode_line,
)
from alchimia.agent.store.spool import SpoolFullError, SpoolLockedError
from alchimia.agent.store.sqlite import SQLiteStore

__all__ = [
    "FURNACE_TAGS",
    "FieldValue",
    "FlushTimeout",
    "InfluxStore",
    "LineEncoder",
    "Point",
    "SQLiteStore",
    "SpoolFullError",
    "SpoolLockedError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "WriterStats",
    "encode_line",
    "open_store",
]


@runtime_checkable
class Store(Protocol):
    """What the agent needs from a sensor store (heat assembly, training, replay)."""

    def write(self, points: Sequence[Point]) -> None:
        """Durable once it returns (spooled if the server is down); invalid points raise."""
        ...

    def flush(self) -> None: ...

    def query_points(
        self,
        measurement: str,
        tags: Mapping[str, str],
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[Point]: ...

    def count(self, measurement: str, tags: Mapping[str, str]) -> int: ...

    def distinct_tag_values(
        self, measurement: str, tag: str, where: Mapping[str, str] = NO_TAGS
    ) -> list[str]: ...

    def close(self) -> None: ...


def open_store(
    influx_url: str | None,
    database: str = "alchimia",
    spool_dir: Path | None = None,
    sqlite_path: Path | None = None,
    **opts: Any,
) -> Store:
    """InfluxDB store if a URL is given, else SQLite; ``opts`` go to the store's constructor.

    Defaults keep state under ``$XDG_STATE_HOME/alchimia`` (``~/.local/state/alchimia``):
    the spool in ``spool/<database>``, the SQLite file in ``<database>.sqlite3``.
    """
    if influx_url:
        return InfluxStore(influx_url, database, spool_dir, **opts)
    if sqlite_path is None:
        sqlite_path = default_state_dir() / f"{database}.sqlite3"
    return SQLiteStore(sqlite_path, **opts)
