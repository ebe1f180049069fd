"""Synchronous round state machine, without I/O.

The service feeds it events (updates, the clock) and acts on its answers; tests drive it
with a fake clock. An update is accepted at most once per agent and round, only while
the round is open, only from a selected agent and only against the round's base version.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class Refusal(str):
    """Why an update is refused: the sentence that is logged, with a short ``code`` that
    it is counted under (broker.rejections; docs/PROTOCOL.md lists the codes)."""

    code: str

    def __new__(cls, code: str, text: str) -> Refusal:
        refusal = super().__new__(cls, text)
        refusal.code = code
        return refusal


class RoundState(Enum):
    OPEN = "open"
    READY = "ready"  # may be aggregated now
    FAILED = "failed"  # deadline passed below quorum
    CLOSED = "closed"


class Window(Protocol):
    """What a sync round and an async buffer window have in common: the lifecycle
    (``coordinator.lifecycle``) drives either through this interface alone."""

    window_id: int
    base_version: int
    selected: frozenset[str]
    accepted: dict[str, str]  # message id -> agent id, in both kinds
    closed: bool

    @property
    def deadline_ts(self) -> float: ...

    @property
    def contributors(self) -> list[str]: ...

    @property
    def missing(self) -> list[str]: ...

    def check(self, sender: str, round_id: int, base_version: int) -> Refusal | None: ...

    def weight(self, base_version: int, num_samples: int) -> float: ...

    def accept(self, sender: str, msg_id: str, base_version: int) -> None: ...

    def state(self, now: float) -> RoundState: ...

    def close(self) -> None: ...


class Accepted:
    """The part of :class:`Window` both kinds implement alike, on ``accepted`` (message
    id -> agent id) and ``closed``."""

    accepted: dict[str, str]
    closed: bool

    @property
    def contributors(self) -> list[str]:
        return sorted(set(self.accepted.values()))

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Selection:
    """Which online agents take part in a round."""

    fraction: float = 1.0
    min_agents: int = 1
    max_agents: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError("selection fraction must be in (0, 1]")
        if self.min_agents < 1:
            raise ValueError("min_agents must be at least 1")
        if self.max_agents is not None and self.max_agents < self.min_agents:
            raise ValueError("max_agents must be at least min_agents")

    def choose(
        self, online: Iterable[str], rng: random.Random, prefer: Iterable[str] = ()
    ) -> list[str] | None:
        """Sorted selected ids, or None while fewer than ``min_agents`` are online.

        When not every online agent is taken, those in ``prefer`` (the agents with new
        data) are taken first, at random among themselves; the rest fill up at random.
        """
        pool = sorted(online)
        if len(pool) < self.min_agents:
            return None
        n = max(self.min_agents, round(self.fraction * len(pool)))
        if self.max_agents is not None:
            n = min(n, self.max_agents)
        if n >= len(pool):
            return pool
        wanted = set(prefer)
        first = [a for a in pool if a in wanted]
        if not first or len(first) == len(pool):
            return sorted(rng.sample(pool, n))
        if len(first) >= n:
            return sorted(rng.sample(first, n))
        rest = [a for a in pool if a not in wanted]
        return sorted(first + rng.sample(rest, n - len(first)))


@dataclass
class SyncRound(Accepted):
    window_id: int
    base_version: int
    selected: frozenset[str]
    quorum: int
    deadline_ts: float
    accepted: dict[str, str] = field(default_factory=dict)  # message id -> agent id
    closed: bool = False
    # The agents in ``accepted``: a duplicate is found in O(1), not by a scan of the
    # round's updates (quadratic in a 10,000-agent round, bench/bench_swarm.py).
    _senders: set[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.quorum <= len(self.selected):
            raise ValueError(f"quorum {self.quorum} must be in 1..{len(self.selected)}")
        self._senders = set(self.accepted.values())

    def check(self, sender: str, round_id: int, base_version: int) -> Refusal | None:
        """Why an update must be rejected, or None if it may be accepted."""
        if round_id != self.window_id:
            return Refusal(
                "wrong_round", f"update for round {round_id}, open round is {self.window_id}"
            )
        if self.closed:
            return Refusal("round_closed", f"round {round_id} is closed")
        if sender not in self.selected:
            return Refusal("not_selected", f"{sender} is not selected for round {round_id}")
        if base_version != self.base_version:
            return Refusal(
                "wrong_base",
                f"update against version {base_version}, round base is {self.base_version}",
            )
        if sender in self._senders:
            return Refusal("duplicate", f"{sender} already sent an update for round {round_id}")
        return None

    def weight(self, base_version: int, num_samples: int) -> float:
        return float(num_samples)

    def accept(self, sender: str, msg_id: str, base_version: int) -> None:
        """Record an update that passed ``check`` and the payload checks."""
        self.accepted[msg_id] = sender
        self._senders.add(sender)

    def state(self, now: float) -> RoundState:
        if self.closed:
            return RoundState.CLOSED
        if len(self.accepted) == len(self.selected):
            return RoundState.READY
        if now >= self.deadline_ts:
            return RoundState.READY if len(self.accepted) >= self.quorum else RoundState.FAILED
        return RoundState.OPEN

    @property
    def missing(self) -> list[str]:
        """Selected agents that have not answered: the stragglers once the round closes."""
        return sorted(self.selected - self._senders)
