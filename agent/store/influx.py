"""Store on InfluxDB's 1.x HTTP API: line protocol on ``/write``, InfluxQL on ``/query``.

Why the 1.x API: InfluxDB 1.x serves it natively and 2.x/3.x serve it as their
compatibility API, so one client covers every server a plant may run (DESIGN.md). httpx
does the HTTP for queries, httptools on a socket for writes (:mod:`agent.store.http_post`
says why); the retry policy is ours because it is tied to the spool (see
:mod:`agent.store.buffered`): nothing is retried in memory, everything waits on disk.
Bodies are gzipped with ISA-L (``isal``): standard gzip that influxd reads, for a quarter of
the CPU, and gzip was the largest cost after formatting on the agent's write path.

Replays cannot duplicate points: InfluxDB keeps a single point per measurement + tag set +
timestamp, so a batch sent twice (an acknowledgement lost, a crash before the commit)
overwrites itself with identical values. Timestamps are exact integer nanoseconds
(``precision=ns``), never floats, so a replayed point has exactly the same key.

Reading back: InfluxQL returns every integral number as a JSON integer, so a float field
holding 1500.0 comes back as ``1500``; the field types from ``SHOW FIELD KEYS`` turn values
back into the types that were written (floats exactly: the server prints shortest
round-trip text). ``COUNT()`` in InfluxQL counts values of each field, not points, so
:meth:`InfluxStore.count` counts rows of a streamed ``SELECT *``, which is exact.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from isal import isal_zlib

from alchimia.agent.store.buffered import (
    DEFAULT_FLUSH_INTERVAL_S,
    SEND_OK,
    BufferedWriter,
    Outcome,
    SendResult,
    WriterStats,
)
from alchimia.agent.store.http_post import PostConnection, PostError, split_credentials
from alchimia.agent.store.points import NO_TAGS, FieldValue, Point, StoreError, tagset_key
from alchimia.agent.store.spool import DEFAULT_FSYNC_INTERVAL_S, Spool

log = logging.getLogger(__name__)

QUERY_CHUNK_ROWS = 10_000
#: Upper bound of extra POSTs spent isolating the refused points of one partial write.
MAX_ISOLATION_REQUESTS = 256
_DROPPED = re.compile(r"dropped=(\d+)")


class StoreUnavailableError(StoreError):
    """InfluxDB could not be reached for a query (writes are spooled instead)."""


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes (measurement, tag key, database)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal (tag values)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def where_clause(
    tags: Mapping[str, str], start_ns: int | None = None, end_ns: int | None = None
) -> str:
    """``WHERE`` on exact tag values and a half-open time range ``[start_ns, end_ns)``."""
    conds = [f"{quote_ident(k)} = {quote_string(v)}" for k, v in sorted(tags.items())]
    if start_ns is not None:
        conds.append(f"time >= {int(start_ns)}")
    if end_ns is not None:
        conds.append(f"time < {int(end_ns)}")
    return (" WHERE " + " AND ".join(conds)) if conds else ""


def _parse_int(text: str) -> int | float:
    # Only a float can print as "-0"; keep its sign (an integer zero prints as "0").
    return -0.0 if text == "-0" else int(text)


_CONVERTERS: dict[str, Callable[[Any], FieldValue]] = {
    "float": float,
    "integer": int,
    "string": str,
    "boolean": bool,
}


def _identity(value: Any) -> Any:
    return value


def gzip_body(payload: bytes, level: int) -> bytes:
    """A gzip-framed body (``wbits=31``) for ``Content-Encoding: gzip``."""
    return isal_zlib.compress(payload, level, wbits=31)


class InfluxHTTP:
    """The HTTP conversation with one InfluxDB database; also the spool's sink."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        retention_policy: str | None = None,
        timeout: float = 10.0,
        gzip_level: int = 1,
    ) -> None:
        bare, url_user, url_password = split_credentials(url)
        if url_user is not None and username is None:
            username, password = url_user, url_password
        self.url = bare.rstrip("/")  # what logs and errors show: no password
        self.database = database
        self.retention_policy = retention_policy
        if not 0 <= gzip_level <= isal_zlib.ISAL_BEST_COMPRESSION:
            raise ValueError(
                f"gzip_level must be 0 (no compression) to "
                f"{isal_zlib.ISAL_BEST_COMPRESSION}, not {gzip_level}"
            )
        self.gzip_level = gzip_level
        auth = (username, password or "") if username else None
        connect = min(timeout, 3.0)
        # Two connections: the sender thread and query callers never wait on each other.
        self._write = PostConnection(
            self.url, username=username, password=password, timeout=timeout, connect_timeout=connect
        )
        # Like the write connection: the system's CA store, no proxy from the environment.
        self._query_client = httpx.Client(
            base_url=self.url,
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=connect),
            verify=ssl.create_default_context(),
            trust_env=False,
        )
        self._write_params = {"db": database, "precision": "ns"}
        if retention_policy:
            self._write_params["rp"] = retention_policy
        self._db_ready = False

    def describe(self) -> str:
        return f"InfluxDB {self.url} db={self.database}"

    def create_database(self) -> bool:
        """``CREATE DATABASE`` (idempotent); False only if the server cannot be reached.

        An HTTP error (no admin rights; InfluxDB 2.x/3.x, whose 1.x API maps databases to
        buckets and has no CREATE) is logged and otherwise ignored: the writes will tell.
        """
        form = urlencode({"q": f"CREATE DATABASE {quote_ident(self.database)}"}).encode()
        try:
            status, body = self._write.post(
                "/query", {}, form, {"Content-Type": "application/x-www-form-urlencoded"}
            )
        except PostError as exc:
            log.debug("CREATE DATABASE failed: %s", exc)
            return False
        error = _error_text(body) if status >= 300 else ""
        if not error and body:
            with contextlib.suppress(ValueError, AttributeError, LookupError, TypeError):
                error = json.loads(body)["results"][0].get("error", "")
        if error:
            log.warning("CREATE DATABASE %s: HTTP %d %s", self.database, status, error)
        self._db_ready = True
        return True

    def send(self, payload: bytes, points: int) -> SendResult:
        """POST one batch; a partial write is narrowed down to the points InfluxDB refused."""
        if not self._db_ready and not self.create_database():
            return SendResult(Outcome.RETRY, f"cannot reach {self.url}")
        result = self._post(payload)
        if result.outcome is Outcome.REJECT and points > 1 and "partial write" in result.reason:
            return self._isolate(payload.splitlines(keepends=True), result)
        return result

    def _post(self, payload: bytes) -> SendResult:
        """One gzipped POST, its answer mapped to acknowledged / retry later / reject."""
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        body = payload
        if self.gzip_level:  # 0: InfluxDB on the same host, where gzip only costs CPU
            body = gzip_body(payload, self.gzip_level)
            headers["Content-Encoding"] = "gzip"
        for _attempt in range(2):
            try:
                status, answer = self._write.post("/write", self._write_params, body, headers)
            except PostError as exc:
                return SendResult(Outcome.RETRY, str(exc))
            if 200 <= status < 300:
                return SEND_OK
            reason = _error_text(answer)
            if status == 404 and "database not found" in reason:
                # Dropped or never created: create it and send again, once.
                self._db_ready = False
                if self.create_database():
                    continue
                return SendResult(Outcome.RETRY, reason, status)
            if status in (401, 403):
                # Not this batch's fault: keep it until the credentials are fixed.
                return SendResult(
                    Outcome.RETRY, f"not authorised (HTTP {status}): {reason}", status
                )
            if status in (408, 429) or status >= 500:
                return SendResult(Outcome.RETRY, f"HTTP {status}: {reason}", status)
            return SendResult(Outcome.REJECT, reason, status)
        return SendResult(Outcome.RETRY, "database not found after CREATE DATABASE")

    def _isolate(self, lines: list[bytes], first: SendResult) -> SendResult:
        """Find the refused lines of a partial write by bisection.

        InfluxDB 1.x stores the good points of a partially refused batch and reports only the
        first error and a ``dropped=N`` count, so re-sending halves (idempotent for the good
        points) narrows the refusal down to the very lines, and ``rejected/`` then holds
        exactly what InfluxDB does not have. Bounded by :data:`MAX_ISOLATION_REQUESTS`.
        """
        refused: list[bytes] = []
        reasons: dict[str, None] = {}
        budget = MAX_ISOLATION_REQUESTS

        def visit(chunk: list[bytes], result: SendResult) -> SendResult | None:
            nonlocal budget
            if result.outcome is Outcome.OK:
                return None
            if result.outcome is Outcome.RETRY:
                return result
            match = _DROPPED.search(result.reason)
            if (
                len(chunk) == 1
                or budget <= 0
                or "partial write" not in result.reason
                or (match is not None and int(match.group(1)) >= len(chunk))
            ):
                refused.extend(chunk)
                reasons[result.reason] = None
                return None
            mid = len(chunk) // 2
            for half in (chunk[:mid], chunk[mid:]):
                budget -= 1
                retry = visit(half, self._post(b"".join(half)))
                if retry is not None:
                    return retry
            return None

        retry = visit(lines, first)
        if retry is not None:
            return retry  # the server went away meanwhile: the whole batch is retried
        if not refused:
            return SEND_OK
        reason = " | ".join(reasons)
        if len(reason) > 2000:
            reason = reason[:2000] + "..."
        return SendResult(Outcome.REJECT, reason, first.status, b"".join(refused), len(refused))

    def query(self, q: str) -> Iterator[dict[str, Any]]:
        """Stream the series of a one-statement query (chunked, so no server row limit bites)."""
        params = {
            "db": self.database,
            "epoch": "ns",
            "chunked": "true",
            "chunk_size": str(QUERY_CHUNK_ROWS),
        }
        try:
            with self._query_client.stream("POST", "/query", params=params, data={"q": q}) as r:
                if r.status_code != 200:
                    r.read()
                    raise StoreError(
                        f"InfluxDB query failed (HTTP {r.status_code}): "
                        f"{_error_text(r.content)} [{q}]"
                    )
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    doc = json.loads(line, parse_int=_parse_int)
                    if "error" in doc:
                        raise StoreError(f"InfluxDB query failed: {doc['error']} [{q}]")
                    for result in doc.get("results", ()):
                        err = result.get("error")
                        if err:
                            if "database not found" in err:
                                return  # nothing written yet: an empty answer
                            raise StoreError(f"InfluxDB query failed: {err} [{q}]")
                        yield from result.get("series", ())
        except httpx.TransportError as exc:
            raise StoreUnavailableError(f"cannot query {self.url}: {exc}") from exc

    def field_types(self, measurement: str) -> dict[str, str]:
        types: dict[str, str] = {}
        for series in self.query(f"SHOW FIELD KEYS FROM {quote_ident(measurement)}"):
            for key, ftype in series.get("values") or ():
                types[key] = ftype
        return types

    def close(self) -> None:
        self._write.close()
        self._query_client.close()


def _error_text(body: bytes) -> str:
    """InfluxDB's ``{"error": ...}`` message, or the start of whatever else it answered."""
    text = body.decode("utf-8", "replace")
    try:
        return str(json.loads(text).get("error", text)).strip()
    except (ValueError, AttributeError):
        return text.strip()[:500]


class InfluxStore:
    """The agent's sensor store on InfluxDB: spooled, batched writes; InfluxQL reads.

    Reads first flush (so a query sees every write that returned before it); if InfluxDB is
    down they raise :class:`StoreUnavailableError` or
    :class:`~agent.store.buffered.FlushTimeout` while writes keep being spooled. They fail
    fast: one delivery attempt made at once, not ``flush_timeout`` seconds of retries, so a
    caller polling the store (the agent's work loop) is never held up by an outage.
    """

    def __init__(
        self,
        url: str,
        database: str = "alchimia",
        spool_dir: Path | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        retention_policy: str | None = None,
        batch_size: int = 5000,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL_S,
        max_spool_bytes: int = 1 << 30,
        segment_bytes: int = 8 << 20,
        fsync: bool = True,
        fsync_interval: float = DEFAULT_FSYNC_INTERVAL_S,
        timeout: float = 10.0,
        gzip_level: int = 1,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        flush_timeout: float = 60.0,
    ) -> None:
        if spool_dir is None:
            spool_dir = default_state_dir() / "spool" / database
        self.http = InfluxHTTP(
            url,
            database,
            username=username,
            password=password,
            retention_policy=retention_policy,
            timeout=timeout,
            gzip_level=gzip_level,
        )
        if not self.http.create_database():
            log.warning(
                "%s is not reachable at start; points are spooled in %s until it is",
                self.http.describe(),
                spool_dir,
            )
        try:
            spool = Spool(
                Path(spool_dir),
                max_bytes=max_spool_bytes,
                segment_bytes=segment_bytes,
                fsync=fsync,
                fsync_interval=fsync_interval,
            )
        except BaseException:
            self.http.close()
            raise
        self._writer = BufferedWriter(
            spool,
            self.http,
            batch_size=batch_size,
            flush_interval=flush_interval,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            flush_timeout=flush_timeout,
        )

    @property
    def spool(self) -> Spool:
        return self._writer.spool

    @property
    def stats(self) -> WriterStats:
        return self._writer.stats

    @property
    def outage(self) -> bool:
        return self._writer.outage

    def write(self, points: Sequence[Point]) -> None:
        self._writer.write(points)

    def flush(self, timeout: float | None = None) -> None:
        self._writer.flush(timeout)

    def _flush_for_read(self) -> None:
        self._writer.flush(fail_fast=True)

    def _select(
        self,
        measurement: str,
        tags: Mapping[str, str],
        start_ns: int | None,
        end_ns: int | None,
    ) -> str:
        return (
            f"SELECT * FROM {quote_ident(measurement)}"
            f"{where_clause(tags, start_ns, end_ns)} GROUP BY *"
        )

    def query_points(
        self,
        measurement: str,
        tags: Mapping[str, str],
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[Point]:
        """Points matching all ``tags`` in ``[start_ns, end_ns)``, by time then tag set."""
        self._flush_for_read()
        types = self.http.field_types(measurement)
        rows: dict[str, tuple[dict[str, str], list[Point]]] = {}
        for series in self.http.query(self._select(measurement, tags, start_ns, end_ns)):
            stags = {k: v for k, v in (series.get("tags") or {}).items() if v != ""}
            key = tagset_key(stags)
            out = rows.setdefault(key, (stags, []))[1]
            cols = series["columns"][1:]
            conv = [_CONVERTERS.get(types.get(c, ""), _identity) for c in cols]
            for row in series.get("values") or ():
                fields = {
                    c: f(v) for c, f, v in zip(cols, conv, row[1:], strict=True) if v is not None
                }
                if fields:
                    out.append(Point(measurement, stags, fields, int(row[0])))
        streams = [[(p.ts_ns, key, p) for p in pts] for key, (_, pts) in sorted(rows.items())]
        return [p for _, _, p in heapq.merge(*streams, key=lambda t: (t[0], t[1]))]

    def count(self, measurement: str, tags: Mapping[str, str]) -> int:
        """Exact number of points (rows), see the module docstring for why not COUNT()."""
        self._flush_for_read()
        return sum(
            sum(1 for row in series.get("values") or () if any(v is not None for v in row[1:]))
            for series in self.http.query(self._select(measurement, tags, None, None))
        )

    def distinct_tag_values(
        self, measurement: str, tag: str, where: Mapping[str, str] = NO_TAGS
    ) -> list[str]:
        """Sorted values of ``tag`` among the series matching ``where``."""
        self._flush_for_read()
        q = (
            f"SHOW TAG VALUES FROM {quote_ident(measurement)} WITH KEY = {quote_ident(tag)}"
            f"{where_clause(where)}"
        )
        values: set[str] = set()
        for series in self.http.query(q):
            values.update(v for _k, v in series.get("values") or ())
        return sorted(values)

    def close(self, timeout: float | None = None) -> None:
        self._writer.close(timeout)


def default_state_dir() -> Path:
    """Where the agent keeps durable state when not told: ``$XDG_STATE_HOME/alchimia``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "alchimia"
