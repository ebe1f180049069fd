"""Where finished heats come from. Each source is one small class with ``poll()``."""

from __future__ import annotations

import time
from typing import Protocol

from agent.sim import Heat, SimulatedPlant, default_plants


class HeatSource(Protocol):
    def history(self) -> list[Heat]:
        """Heats finished before the agent started: learned from, never predicted."""
        ...

    def poll(self) -> list[Heat]:
        """Heats finished since the last call (possibly none)."""
        ...


class SimulatedHeats:
    """A simulated plant whose history is known at start, then one heat per interval."""

    def __init__(self, plant: int, seed: int, history: int, interval_s: float) -> None:
        profile, plant_seed = default_plants(plant, base_seed=seed)[plant - 1]
        self.plant = SimulatedPlant(profile, plant_seed)
        self.name = profile.name
        self.n_history = history
        self.interval_s = interval_s
        self._next_ts = time.monotonic() + interval_s

    def history(self) -> list[Heat]:
        return self.plant.heats(self.n_history)

    def poll(self) -> list[Heat]:
        if self.interval_s <= 0:
            return []
        n, now = 0, time.monotonic()
        while now >= self._next_ts:
            n += 1
            self._next_ts += self.interval_s
        return self.plant.heats(n) if n else []
