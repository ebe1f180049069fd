"""Asynchronous aggregation window (FedBuff, Nguyen et al. 2022), without I/O.

Updates are accepted at any time against any recent version; each is weighted by its
sample count times a staleness factor of (current version - base version); the window is
ready to publish a new version once it holds K updates. Updates staler than the maximum
are rejected with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from alchimia.coordinator.rounds import Accepted, Refusal, RoundState


@dataclass
class AsyncWindow(Accepted):
    window_id: int
    base_version: int  # the global version this window aggregates onto
    k: int
    max_staleness: int
    staleness: Callable[[int], float]
    selected: frozenset[str] = frozenset()  # invited agents: every online agent
    accepted: dict[str, str] = field(default_factory=dict)  # msg id -> agent id
    _keys: set[tuple[str, int]] = field(default_factory=set)  # (agent, base version)
    closed: bool = False

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_staleness < 0:
            raise ValueError("buffer size K must be >= 1 and max staleness >= 0")

    def check(self, sender: str, round_id: int, base_version: int) -> Refusal | None:
        """Why an update must be rejected, or None. ``round_id`` does not matter here."""
        if self.closed:
            return Refusal("round_closed", f"window {self.window_id} is closed")
        s = self.base_version - base_version
        if s < 0:
            return Refusal(
                "wrong_base",
                f"update against version {base_version}, newer than {self.base_version}",
            )
        if s > self.max_staleness:
            return Refusal(
                "too_stale", f"staleness {s} exceeds the maximum of {self.max_staleness}"
            )
        if (sender, base_version) in self._keys:
            return Refusal(
                "duplicate", f"{sender} already sent an update against version {base_version}"
            )
        return None

    def weight(self, base_version: int, num_samples: int) -> float:
        return num_samples * self.staleness(self.base_version - base_version)

    def accept(self, sender: str, msg_id: str, base_version: int) -> None:
        self.accepted[msg_id] = sender
        self._keys.add((sender, base_version))

    @property
    def deadline_ts(self) -> float:
        """No deadline (0 on the wire): a window waits for K updates, whenever they come."""
        return 0.0

    @property
    def missing(self) -> list[str]:
        """No stragglers: nobody in particular is waited for."""
        return []

    def state(self, now: float) -> RoundState:
        if self.closed:
            return RoundState.CLOSED
        return RoundState.READY if len(self.accepted) >= self.k else RoundState.OPEN
