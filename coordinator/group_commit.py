"""Acknowledge messages to the broker only once what they changed is durable, in groups,
with the commit off the event loop.

``CoordinatorDB.accept_update`` and ``save_agent`` only stage rows (in memory, in the order
handled); ``CoordinatorDB.flush`` hands them to its writer thread, which inserts and
commits them on its own SQLite connection: one fsync of the write-ahead log makes every
update staged since the last flush durable. Messages are acknowledged (the PUBACK of each
QoS 1 message) only once that commit returned, so a crash before it (kill -9 included)
leaves them unacknowledged and the broker delivers them again: nothing accepted is lost,
nothing is counted twice (the message ids are committed with the updates, and ``seen``
knows the ones staged or being written).

Why a thread: the commit (``synchronous=FULL``) took 1.2-5 ms per group on the event
loop's thread, during which no message was handled (issue 14 §1). SQLite releases the GIL
while it writes and fsyncs, so now the event loop handles the next messages meanwhile,
into the next group: ``run`` flushes one group, awaits its commit, acknowledges it, and
flushes what was handled meanwhile. The round logic still sees every message in the
order handled: only the writing moved, and the writer takes one group at a time, oldest
first (``persistence`` keeps every other write after it).

The wait before each flush (``GROUP_COMMIT_S``, 5 ms as when the commit blocked the
loop) trades two costs: each group costs the event loop a hand-off to the writer thread
and back (a wake-up, and the GIL to take back after the writer held it), and a longer
wait acknowledges every message later (the broker keeps each one until then, and
Mosquitto sends a client only so many unacknowledged ones: ``max_inflight_messages``).
Accepted updates/s (bench/bench_coordinator_ingest.py --group-commit-s, medians of 5
interleaved runs on a shared 2-core VM at load 1.0-1.5, within its noise): 0 ms 1,989,
1 ms 1,923, 5 ms 2,006, 10 ms 2,319.
"""

from __future__ import annotations

import asyncio
import contextlib

import paho.mqtt.client as mqtt

from alchimia.coordinator.persistence import CoordinatorDB

# Group commit: once a group's first message was handled, wait this long for more (or
# until this many are waiting) before flushing it.
GROUP_COMMIT_S = 0.005
GROUP_COMMIT_MAX = 256


class GroupCommit:
    """Acknowledge handled messages to the broker in groups, once what they changed is
    durable: ``CoordinatorDB.flush`` hands the staged rows to the database's writer
    thread, whose commit (one fsync) makes every update staged since the last flush
    durable. A crash before the commit leaves their messages unacknowledged, so the
    broker delivers them again."""

    def __init__(self, db: CoordinatorDB, client: mqtt.Client) -> None:
        self.db, self.client = db, client
        self.pending: list[tuple[int, int]] = []  # (mid, qos) handled, not yet flushed
        self._wake = asyncio.Event()
        self._full = asyncio.Event()

    def handled(self, mid: int, qos: int) -> None:
        self.pending.append((mid, qos))
        self._wake.set()
        if len(self.pending) >= GROUP_COMMIT_MAX:
            self._full.set()

    def commit(self) -> None:
        """Commit and acknowledge everything handled now (blocking: when stopping)."""
        self.db.commit()
        self._ack(self.pending)
        self.pending = []

    def _ack(self, handled: list[tuple[int, int]]) -> None:
        for mid, qos in handled:
            self.client.ack(mid, qos)

    async def run(self) -> None:
        """Flush each group ``GROUP_COMMIT_S`` after its first message, acknowledge it once
        its commit returned, then the next (handled meanwhile)."""
        while True:
            await self._wake.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GROUP_COMMIT_S):
                    await self._full.wait()
            self._wake.clear()
            self._full.clear()
            group, self.pending = self.pending, []
            try:
                # Shielded: a cancellation (a stop, a lost connection) must not cancel a
                # batch queued for the writer, whose ids ``seen`` already counts.
                await asyncio.shield(asyncio.wrap_future(self.db.flush()))
            except asyncio.CancelledError:
                self.pending[:0] = group  # ``commit`` acknowledges them when stopping
                raise
            self._ack(group)
