"""Bounded memories of past heats, replayed next to new ones so old skills are kept.

A site keeps every heat in its store, but training on all of them weights each regime by
its age, and a federated update must stay small. A reservoir keeps a uniform sample of the
whole stream in fixed memory; the regime-balanced variant gives every regime (split at
each detected drift) an equal share, so a long old regime cannot crowd out a short new
one and the new one cannot flush out the old.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ReplayBuffer:
    """Reservoir sampling (Vitter's algorithm R): after n inserts, each row is kept with
    probability capacity / n, independently of when it arrived."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._x)

    def add(
        self,
        x_row: Sequence[float] | np.ndarray,
        y_row: Sequence[float] | np.ndarray,
    ) -> None:
        x, y = np.asarray(x_row, np.float32).copy(), np.asarray(y_row, np.float32).copy()
        self.seen += 1
        if len(self._x) < self.capacity:
            self._x.append(x)
            self._y.append(y)
            return
        j = int(self._rng.integers(self.seen))
        if j < self.capacity:
            self._x[j], self._y[j] = x, y

    def shrink(self, capacity: int) -> None:
        """Lower the capacity, keeping a uniform random subset (still a uniform sample)."""
        capacity = max(capacity, 1)
        if len(self._x) > capacity:
            keep = np.sort(self._rng.choice(len(self._x), capacity, replace=False))
            self._x = [self._x[i] for i in keep]
            self._y = [self._y[i] for i in keep]
        self.capacity = capacity

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Everything held, as (x, y); empty arrays of unknown width when empty."""
        if not self._x:
            return np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)
        return np.stack(self._x), np.stack(self._y)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` distinct rows, uniformly."""
        x, y = self.arrays()
        if n >= len(x):
            return x, y
        idx = self._rng.choice(len(x), n, replace=False)
        return x[idx], y[idx]


class RegimeReplayBuffer:
    """One reservoir per regime, each with an equal share of ``capacity``.

    ``new_regime()`` (call it on a detected drift) opens a new reservoir and shrinks the
    older ones to the new share; beyond ``max_regimes`` the oldest regime is dropped, so
    the share never falls below ``capacity // max_regimes`` rows. ``sample`` draws equally
    from every regime that has rows (a young regime gives all it has, the rest is spread
    over the others), so replay stays balanced whatever each regime's length.
    """

    def __init__(self, capacity: int, seed: int = 0, max_regimes: int = 4) -> None:
        if max_regimes < 1 or capacity < max_regimes:
            raise ValueError("need max_regimes >= 1 and capacity >= max_regimes")
        self.capacity, self.max_regimes = capacity, max_regimes
        self._seed = np.random.SeedSequence(seed)
        self._rng = np.random.default_rng(self._seed.spawn(1)[0])
        self.regimes: list[ReplayBuffer] = []
        self.new_regime()

    def _share(self) -> int:
        return self.capacity // len(self.regimes)

    def new_regime(self) -> None:
        if len(self.regimes) == self.max_regimes:
            self.regimes.pop(0)
        self.regimes.append(
            ReplayBuffer(self.capacity, int(self._seed.spawn(1)[0].generate_state(1)[0]))
        )
        for r in self.regimes:
            r.shrink(self._share())

    @property
    def current(self) -> ReplayBuffer:
        return self.regimes[-1]

    def __len__(self) -> int:
        return sum(len(r) for r in self.regimes)

    def add(
        self,
        x_row: Sequence[float] | np.ndarray,
        y_row: Sequence[float] | np.ndarray,
    ) -> None:
        self.current.add(x_row, y_row)

    def sample(self, n: int, *, past_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` rows balanced over regimes; ``past_only`` leaves out the current one."""
        pools = [r for r in (self.regimes[:-1] if past_only else self.regimes) if len(r)]
        if not pools or n <= 0:
            return np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)
        quota = {id(r): 0 for r in pools}
        left = min(n, sum(len(r) for r in pools))
        open_pools = list(pools)
        while left > 0:  # water-filling: equal shares, capped by what each regime holds
            share = max(left // len(open_pools), 1)
            for r in list(open_pools):
                take = min(share, len(r) - quota[id(r)], left)
                quota[id(r)] += take
                left -= take
                if quota[id(r)] == len(r):
                    open_pools.remove(r)
                if left == 0:
                    break
        parts = [r.sample(quota[id(r)]) for r in pools if quota[id(r)]]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        order = self._rng.permutation(len(x))
        return x[order], y[order]
