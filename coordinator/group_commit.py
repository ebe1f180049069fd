"""Acknowledge messages to the broker only once what they changed is durable, in groups.

``CoordinatorDB.accept_update`` only stages an accepted update; one commit (one fsync of
SQLite's write-ahead log) makes every update staged since the last durable. Messages are
acknowledged after that commit, so a crash before it leaves them unacknowledged and the
broker delivers them again: nothing accepted is lost, nothing is counted twice (the
message ids are committed with the updates).
"""

from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt

from alchimia.coordinator.persistence import CoordinatorDB

# Group commit: accepted updates are made durable together, at most this long after the
# first of them was handled, or this many at once.
GROUP_COMMIT_S = 0.005
GROUP_COMMIT_MAX = 256


class GroupCommit:
    """Acknowledge handled messages to the broker in groups, once what they changed is
    durable: ``CoordinatorDB.accept_update`` only stages an update, and one commit (one
    fsync) makes every update staged since the last durable. A crash before the commit
    leaves their messages unacknowledged, so the broker delivers them again."""

    def __init__(self, db: CoordinatorDB, client: mqtt.Client) -> None:
        self.db, self.client = db, client
        self.pending: list[tuple[int, int]] = []  # (mid, qos) handled, not yet durable
        self._wake = asyncio.Event()

    def handled(self, mid: int, qos: int) -> None:
        self.pending.append((mid, qos))
        self._wake.set()
        if len(self.pending) >= GROUP_COMMIT_MAX:
            self.commit()

    def commit(self) -> None:
        self.db.commit()
        for mid, qos in self.pending:
            self.client.ack(mid, qos)
        self.pending.clear()

    async def run(self) -> None:
        """Commit ``GROUP_COMMIT_S`` after the first message of each group (meanwhile the
        receiver keeps handling, so under load a group holds many updates)."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(GROUP_COMMIT_S)
            self._wake.clear()
            self.commit()
