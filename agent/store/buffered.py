"""Batching, durable writer: encoder + spool + a sender thread in front of any sink.

Why a spool in front of the network rather than a queue in memory: ``write`` must be
durable when it returns, even while InfluxDB is down for hours. So the points go to disk
first (a crash of the process loses none; a power loss at most the spool's
``fsync_interval``, see :mod:`agent.store.spool`) and a background thread ships the spool
in order, in batches of up to ``batch_size`` points, at least every ``flush_interval``
seconds (default 5: each POST costs a fixed amount of CPU, which dominates at a furnace's
pace), as soon as ``batch_size`` points wait, or at once on ``flush`` (every read of the
store flushes first). It commits (deletes) spooled data only after the sink acknowledged
it. The same thread makes the spool's grouped fsyncs that fall due between two writes.

Delivery is at-least-once: a batch whose acknowledgement was lost, or that was sent just
before a crash but not yet committed, is sent again. That does not create duplicates,
because InfluxDB keeps one point per measurement + tag set + timestamp and a resent point
carries the same exact integer-nanosecond timestamp and values; the SQLite store has the
same rule. Ordering is preserved, so a later correction of a point is never undone by a
replay of the earlier version.

The sink decides per batch (see :class:`SendResult`): acknowledged, retry later (server
unreachable, 5xx, auth trouble: the data stays in the spool, retried with exponential
backoff, one WARNING per outage and one INFO when it is back), or reject (4xx for this
batch: the batch is moved to ``rejected/`` with the reason, and the sender goes on).
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from alchimia.agent.store.points import LineEncoder, Point, StoreError
from alchimia.agent.store.spool import Spool, SpoolCorruptError

log = logging.getLogger(__name__)

#: Seconds a spooled point waits at most before it is POSTed (Telegraf's default is 10 s).
DEFAULT_FLUSH_INTERVAL_S = 5.0


class FlushTimeout(StoreError):
    """Points are still spooled (safe on disk) but the sink has not acknowledged them yet."""


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class SendResult:
    """A sink's verdict on a batch; a REJECT may name only part of it (``rejected``).

    With ``rejected`` set, those lines (``rejected_points`` of them) were refused and the
    rest of the batch was stored; without it the whole batch was refused.
    """

    outcome: Outcome
    reason: str = ""
    status: int | None = None
    rejected: bytes | None = None
    rejected_points: int | None = None


SEND_OK = SendResult(Outcome.OK)


class Sink(Protocol):
    """Where batches go; ``send`` must not raise for expected failures (it returns RETRY)."""

    def send(self, payload: bytes, points: int) -> SendResult: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class WriterStats:
    sent_points: int = 0
    sent_batches: int = 0
    rejected_points: int = 0
    rejected_batches: int = 0
    outages: int = 0
    last_error: str = ""


class BufferedWriter:
    """Owns a spool and a sender thread; thread safe for concurrent ``write`` calls."""

    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        *,
        batch_size: int = 5000,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL_S,
        max_batch_bytes: int = 16 << 20,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        flush_timeout: float = 60.0,
    ) -> None:
        if batch_size <= 0 or flush_interval <= 0:
            raise ValueError("batch_size and flush_interval must be positive")
        self.spool = spool
        self.sink = sink
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_batch_bytes = max_batch_bytes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.flush_timeout = flush_timeout
        self.stats = WriterStats()
        self._encoder = LineEncoder()
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._wake = False
        self._stop = False
        self._closed = False
        self._outage_since: float | None = None
        self._attempts = 0  # delivery attempts begun (under _cond)
        self._failed_attempt = 0  # the latest of them that found the sink unavailable
        self._wakes_at = 0.0  # monotonic time the sleeping sender thread wakes up by itself
        self._planned_due = math.inf  # the spool's fsync due time it took into account then
        self._thread = threading.Thread(
            target=self._run, name=f"alchimia-store-sender[{sink.describe()}]", daemon=True
        )
        self._thread.start()

    # -- caller side ------------------------------------------------------------------------

    def write(self, points: Sequence[Point]) -> None:
        """Encode and spool; durable when it returns. Invalid points: nothing is written."""
        if not points:
            return
        if self._closed:
            raise StoreError("store is closed")
        n = self.batch_size
        with self._write_lock:
            chunks = [points[i : i + n] for i in range(0, len(points), n)]
            records = [(self._encoder.encode(chunk), len(chunk)) for chunk in chunks]
            self.spool.append(records)
        # Wake the sender for a full batch, or for an fsync due before it would wake anyway:
        # not for one it already waits for (the writes that follow the first one an fsync
        # waits for leave its due time as it is), and under _cond, where the sender decides
        # when to wake up, so that a write between its decision and its wait is not missed.
        with self._cond:
            if (self.spool.pending_points >= n and self._outage_since is None) or (
                self.spool.sync_due != self._planned_due
                and time.monotonic() + self.spool.until_sync() < self._wakes_at
            ):
                self._cond.notify_all()

    def flush(self, timeout: float | None = None, *, fail_fast: bool = False) -> None:
        """Send everything written so far and wait for the acknowledgement.

        Raises :class:`FlushTimeout` if the sink does not acknowledge in time, or, with
        ``fail_fast``, as soon as one delivery attempt begun after this call finds the sink
        unavailable (a read must not wait out an outage, nor the sender's backoff: the
        attempt is made at once); the points stay in the spool and are sent when it answers.
        """
        timeout = self.flush_timeout if timeout is None else timeout
        target = self.spool.end
        deadline = time.monotonic() + timeout
        with self._cond:
            asked = self._attempts  # attempts after this one were made for this flush
            self._wake = True
            self._cond.notify_all()
            while self.spool.committed < target:
                if not self._thread.is_alive():
                    raise StoreError("the store's sender thread has stopped")
                remaining = deadline - time.monotonic()
                failed = fail_fast and self._failed_attempt > asked
                if remaining <= 0 or failed:
                    when = "at once: it is unavailable" if failed else f"after {timeout:g}s"
                    raise FlushTimeout(
                        f"{self.spool.pending_points} points not yet acknowledged by "
                        f"{self.sink.describe()} {when} (last error: "
                        f"{self.stats.last_error or 'none'}); they are safe in the spool "
                        f"{self.spool.directory} and will be sent when it answers"
                    )
                self._cond.wait(min(remaining, 0.5))

    def close(self, timeout: float | None = None) -> None:
        """Try to deliver what is pending, then stop; undelivered points stay spooled.

        Without ``timeout`` it waits at most 10 s, or 1 s (one more try) during an outage:
        shutting the agent down must not hang on an absent server, and nothing is lost.
        """
        if self._closed:
            return
        self._closed = True
        if timeout is None:
            timeout = 1.0 if self.outage else min(self.flush_timeout, 10.0)
        try:
            self.flush(timeout)
        except StoreError as exc:
            log.info(
                "closing with %d points spooled in %s (%s); they are replayed on the next start",
                self.spool.pending_points,
                self.spool.directory,
                exc,
            )
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30.0)
        if self._thread.is_alive():
            log.warning(
                "sender thread did not stop; leaving spool %s to process exit", self.spool.directory
            )
            return
        self.sink.close()
        self.spool.close()

    @property
    def outage(self) -> bool:
        return self._outage_since is not None

    # -- sender thread ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.backoff_initial
        send_at = time.monotonic() + self.flush_interval
        while True:
            self._sync_due()  # outside _cond: flush() never waits on the disk
            with self._cond:
                if self._stop:
                    return
                now = time.monotonic()
                if (
                    not self._wake
                    and now < send_at
                    and (
                        self._outage_since is not None
                        or self.spool.pending_points < self.batch_size
                    )
                ):
                    self._planned_due = self.spool.sync_due
                    timeout = min(send_at - now, self.spool.until_sync())
                    self._wakes_at = now + timeout
                    self._cond.wait(timeout)
                    continue
                self._wakes_at = 0.0  # busy: it syncs what is due between batches
                outage = self._outage_since is not None
                self._wake = False
                self._attempts += 1
                attempt = self._attempts
            try:
                delivered = self._drain()
            except Exception as exc:  # a bug or a disk error must not kill the sender
                log.exception("store sender failed; retrying")
                self.stats.last_error = repr(exc)
                delivered = False
            with self._cond:
                if not delivered:
                    self._failed_attempt = attempt
                self._cond.notify_all()  # flush() waiters re-check
            if delivered:
                backoff = self.backoff_initial
            else:
                backoff = min(backoff * 2, self.backoff_max) if outage else self.backoff_initial
            send_at = time.monotonic() + (self.flush_interval if delivered else backoff)

    def _sync_due(self) -> None:
        try:
            self.spool.sync_if_due()
        except OSError as exc:  # tried again one fsync interval later
            log.error("fsync of the spool %s failed: %r", self.spool.directory, exc)
            self.stats.last_error = repr(exc)

    def _drain(self) -> bool:
        """Send batches until the spool is empty (True) or the sink is unavailable (False)."""
        while not self._stop:
            self._sync_due()  # a long replay must not hold back the fsync of new points
            try:
                batch = self.spool.read_batch(self.batch_size, self.max_batch_bytes)
            except SpoolCorruptError as exc:
                self.spool.quarantine_rest_of_segment(exc.position, str(exc))
                continue
            if batch is None:
                return True
            result = self.sink.send(batch.payload, batch.points)
            if result.outcome is Outcome.OK:
                if self._outage_since is not None:
                    log.info(
                        "%s is reachable again after %.1fs; replaying %d spooled points",
                        self.sink.describe(),
                        time.monotonic() - self._outage_since,
                        self.spool.pending_points,
                    )
                    self._outage_since = None
                # Stats first: flush() returns as soon as the commit lands.
                self.stats.sent_points += batch.points
                self.stats.sent_batches += 1
                self.spool.commit(batch)
                # All sent (at a furnace's pace, one batch a flush interval): a second
                # read_batch would only find that out, at the cost of another read.
                if self.spool.committed >= self.spool.end:
                    return True
            elif result.outcome is Outcome.REJECT:
                refused = batch.points if result.rejected is None else result.rejected_points or 0
                self.stats.rejected_points += refused
                self.stats.rejected_batches += 1
                self.stats.sent_points += batch.points - refused
                path = self.spool.reject(
                    batch, result.reason, result.status, payload=result.rejected, points=refused
                )
                log.error(
                    "%s refused %d of a batch of %d points (HTTP %s): %s; moved to %s",
                    self.sink.describe(),
                    refused,
                    batch.points,
                    result.status,
                    result.reason,
                    path,
                )
            else:
                self.stats.last_error = result.reason
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    self.stats.outages += 1
                    log.warning(
                        "%s unavailable (%s); keeping %d points in the spool %s and "
                        "retrying with backoff",
                        self.sink.describe(),
                        result.reason,
                        self.spool.pending_points,
                        self.spool.directory,
                    )
                return False
            with self._cond:
                self._cond.notify_all()
        return True
