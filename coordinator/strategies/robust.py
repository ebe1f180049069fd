"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean, Krum and Multi-Krum.

These need every delta of the round at once, so they are not streaming: each accepted delta
is copied into one flat vector (4P bytes for float32; copied because wire buffers may be
reused or pinned), up to ``max_updates`` per round. ``finish`` then works on column blocks
of about 1M values across all updates, so its temporaries stay at a few MB on top of the
stored K x 4P instead of another K x 4P stack.

The rules are unweighted, as in the papers: an update's weight (sample count, staleness) is
validated but does not influence the result, since a Byzantine agent could inflate it.
``MultiKrum(flower=True)`` is the exception: Flower weights the kept updates by samples.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from alchimia.coordinator.strategies.base import (
    Accumulator,
    Strategy,
    Weights,
    check_flag,
    check_global,
)

_BLOCK_VALUES = 1 << 20  # values (updates x columns) gathered per block in finish


def _check_max_updates(name: str, max_updates: int) -> int:
    if isinstance(max_updates, bool) or int(max_updates) != max_updates or max_updates < 1:
        raise ValueError(f"{name}: max_updates must be an integer >= 1, got {max_updates!r}")
    return int(max_updates)


class _StoredAccumulator(Accumulator):
    """Keeps each delta as one flat copy; ``finish`` is the owning strategy's reduction."""

    def __init__(self, strategy: _RobustStrategy, global_weights: Weights) -> None:
        super().__init__(global_weights)
        self._strategy = strategy
        dtypes = {g.dtype for g in global_weights.values()}
        self._dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)
        self.layout: list[tuple[str, int, int]] = []
        offset = 0
        for name, g in global_weights.items():
            self.layout.append((name, offset, offset + g.size))
            offset += g.size
        self.size = offset
        self.rows: list[np.ndarray] = []
        self.weights: list[float] = []  # each row's weight (MultiKrum with flower=True)

    def _accept(self, delta: Weights, weight: float, scale: float) -> None:
        limit = self._strategy.max_updates
        if len(self.rows) >= limit:
            raise ValueError(
                f"{self._strategy.name}: this round already holds max_updates={limit} updates"
            )
        row = np.empty(self.size, self._dtype)
        for name, lo, hi in self.layout:
            src = delta[name].reshape(-1)
            if scale == 1.0:
                np.copyto(row[lo:hi], src, casting="same_kind")
            else:
                np.multiply(src, scale, out=row[lo:hi], casting="same_kind")
        self.rows.append(row)
        self.weights.append(weight)

    def blocks(
        self,
        rows: list[np.ndarray] | None = None,
        by_column: bool = False,
    ) -> Iterator[tuple[str, int, int, np.ndarray]]:
        """(param name, start, stop within the param, stacked values) per block.

        The stack is (n, width), or (width, n) with ``by_column``: then each coordinate's n
        values are contiguous, which makes sorting them several times faster.
        """
        rows = self.rows if rows is None else rows
        width = max(4096, _BLOCK_VALUES // max(len(rows), 1))
        for name, lo, hi in self.layout:
            for a in range(lo, hi, width):
                b = min(a + width, hi)
                yield (
                    name,
                    a - lo,
                    b - lo,
                    np.stack([r[a:b] for r in rows], axis=1 if by_column else 0),
                )

    def new_weights(self, reduced: Iterator[tuple[str, int, int, np.ndarray]]) -> Weights:
        """Global + reduced delta, written block by block into fresh per-tensor arrays."""
        out = {name: np.empty(g.shape, g.dtype) for name, g in self._global.items()}
        for name, a, b, values in reduced:
            g = self._global[name].reshape(-1)
            out[name].reshape(-1)[a:b] = g[a:b].astype(np.float64) + values
        return out

    def _finish(self) -> Weights:
        result = self._strategy.reduce(self)
        self._strategy._commit_round()
        return result


class _RobustStrategy(Strategy):
    streaming: ClassVar[bool] = False

    def __init__(self, max_updates: int = 1000) -> None:
        super().__init__()
        self.max_updates = _check_max_updates(self.name, max_updates)

    def open_round(self, global_weights: Weights) -> Accumulator:
        check_global(global_weights)
        return _StoredAccumulator(self, global_weights)

    @abstractmethod
    def reduce(self, acc: _StoredAccumulator) -> Weights:
        """New global weights from all the round's stored deltas."""


class Median(_RobustStrategy):
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML). Unweighted; for an even count the mean of the
    two middle values (numpy's convention).

    Parameters: ``max_updates`` (default 1000).
    """

    name: ClassVar[str] = "median"

    def reduce(self, acc: _StoredAccumulator) -> Weights:
        n = acc.count

        def median(block: np.ndarray) -> np.ndarray:
            block.sort(axis=1)  # a full sort of contiguous rows beats np.median's partition
            if n % 2:
                middle: np.ndarray = block[:, n // 2]
                return middle
            mean: np.ndarray = (block[:, n // 2 - 1].astype(np.float64) + block[:, n // 2]) / 2.0
            return mean

        return acc.new_weights(
            (name, a, b, median(block)) for name, a, b, block in acc.blocks(by_column=True)
        )

    def __repr__(self) -> str:
        return f"Median(max_updates={self.max_updates})"


class TrimmedMean(_RobustStrategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018, same paper as the median).

    Per coordinate, the ``t`` largest and ``t`` smallest values are dropped and the rest
    averaged, unweighted. ``t = floor(beta * n)``, but when ``beta > 0`` and ``n >= 3`` at
    least 1 (so the small rounds of a furnace federation, 3 to 9 plants, still drop a lone
    outlier, which floor(0.1 * n) alone would not), and at most ``(n - 1) // 2`` (something
    must remain). ``beta = 0`` is the plain mean.

    Parameters: ``beta`` (default 0.1, in [0, 0.5); Flower's FedTrimmedAvg defaults to
    0.2), ``max_updates`` (default 1000), ``flower`` (default False: True trims
    ``floor(beta * n)`` only, as Flower and ``scipy.stats.trim_mean`` do, so fewer than
    ``1 / beta`` updates are not trimmed at all).
    """

    name: ClassVar[str] = "trimmed_mean"

    def __init__(self, beta: float = 0.1, max_updates: int = 1000, flower: bool = False) -> None:
        super().__init__(max_updates)
        if not (math.isfinite(beta) and 0.0 <= beta < 0.5):
            raise ValueError(f"trimmed_mean: beta must be in [0, 0.5), got {beta!r}")
        self.beta = float(beta)
        self.flower = check_flag(self.name, "flower", flower)

    def trim_count(self, n: int) -> int:
        """How many values are dropped from each end for n updates."""
        t = math.floor(self.beta * n)
        if self.beta > 0.0 and n >= 3 and not self.flower:
            t = max(t, 1)
        return min(t, (n - 1) // 2)

    def reduce(self, acc: _StoredAccumulator) -> Weights:
        n = acc.count
        t = self.trim_count(n)

        def trimmed(block: np.ndarray) -> np.ndarray:
            if t:
                block.sort(axis=1)
            kept: np.ndarray = block[:, t : n - t].mean(axis=1, dtype=np.float64)
            return kept

        return acc.new_weights(
            (name, a, b, trimmed(block)) for name, a, b, block in acc.blocks(by_column=True)
        )

    def __repr__(self) -> str:
        return (
            f"TrimmedMean(beta={self.beta}, max_updates={self.max_updates}, flower={self.flower})"
        )


class Krum(_RobustStrategy):
    """Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS).

    Each delta's score is the sum of squared L2 distances (over all tensors) to its
    ``n - f - 2`` nearest other deltas; Krum returns the delta with the lowest score (ties:
    the earliest added). Unweighted.

    Parameters: ``f`` (assumed number of Byzantine agents; default None = the largest the
    paper's condition ``n > 2f + 2`` allows, ``max(0, (n - 3) // 2)``; an explicit ``f``
    with ``n <= 2f + 2`` makes ``finish`` raise ValueError), ``max_updates`` (default 1000).
    Distances come from a float64 Gram matrix built block by block (K^2 P flops in BLAS).
    """

    name: ClassVar[str] = "krum"

    def __init__(self, f: int | None = None, max_updates: int = 1000) -> None:
        super().__init__(max_updates)
        if f is not None and (isinstance(f, bool) or int(f) != f or f < 0):
            raise ValueError(f"{self.name}: f must be None or an integer >= 0, got {f!r}")
        self.f = None if f is None else int(f)

    def byzantine(self, n: int) -> int:
        """The f used for n updates."""
        if self.f is None:
            return max(0, (n - 3) // 2)
        if n <= 2 * self.f + 2:
            raise ValueError(
                f"{self.name} with f={self.f} needs more than {2 * self.f + 2} "
                f"updates (n > 2f + 2), got {n}"
            )
        return self.f

    def scores(self, acc: _StoredAccumulator) -> np.ndarray:
        """Krum score of each stored delta, in arrival order."""
        n = acc.count
        gram = np.zeros((n, n), np.float64)
        for _, _, _, block in acc.blocks():
            b64 = block.astype(np.float64)
            gram += b64 @ b64.T
        sq = np.diag(gram).copy()
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
        np.fill_diagonal(dist, np.inf)
        k = max(n - self.byzantine(n) - 2, 0)
        scores: np.ndarray = np.sort(dist, axis=1)[:, :k].sum(axis=1)
        return scores

    def select(self, n: int, scores: np.ndarray) -> np.ndarray:
        return np.argsort(scores, kind="stable")[:1]

    def mean_weights(self, acc: _StoredAccumulator, chosen: np.ndarray) -> np.ndarray | None:
        """Weights of the chosen deltas in their mean; None: unweighted."""
        return None

    def reduce(self, acc: _StoredAccumulator) -> Weights:
        chosen = self.select(acc.count, self.scores(acc))
        w = self.mean_weights(acc, chosen)

        def mean(block: np.ndarray) -> np.ndarray:
            out: np.ndarray = (
                block.mean(axis=0, dtype=np.float64) if w is None else (w @ block) / w.sum()
            )
            return out

        return acc.new_weights(
            (name, a, b, mean(block))
            for name, a, b, block in acc.blocks([acc.rows[i] for i in chosen])
        )

    def __repr__(self) -> str:
        return f"Krum(f={self.f}, max_updates={self.max_updates})"


class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017): the unweighted mean of the ``m`` deltas with the
    lowest Krum scores (ties: earliest added first).

    Parameters: ``f`` (as Krum), ``m`` (default None = ``n - f``; capped at n; Flower's
    ``num_clients_to_keep``), ``max_updates`` (default 1000), ``flower`` (default False:
    True weights the kept deltas by their update weight, the sample count, as Flower's
    Krum does with ``num_clients_to_keep > 0``; an agent that inflates its count then
    pulls the mean once it is kept).
    """

    name: ClassVar[str] = "multikrum"

    def __init__(
        self,
        f: int | None = None,
        m: int | None = None,
        max_updates: int = 1000,
        flower: bool = False,
    ) -> None:
        super().__init__(f, max_updates)
        if m is not None and (isinstance(m, bool) or int(m) != m or m < 1):
            raise ValueError(f"multikrum: m must be None or an integer >= 1, got {m!r}")
        self.m = None if m is None else int(m)
        self.flower = check_flag(self.name, "flower", flower)

    def select(self, n: int, scores: np.ndarray) -> np.ndarray:
        m = n - self.byzantine(n) if self.m is None else min(self.m, n)
        return np.argsort(scores, kind="stable")[:m]

    def mean_weights(self, acc: _StoredAccumulator, chosen: np.ndarray) -> np.ndarray | None:
        if not self.flower:
            return None
        w = np.array([acc.weights[i] for i in chosen], np.float64)
        if not w.sum() > 0.0:
            raise ValueError("multikrum: the kept updates have a total weight of 0; need > 0")
        return w

    def __repr__(self) -> str:
        return (
            f"MultiKrum(f={self.f}, m={self.m}, max_updates={self.max_updates}, "
            f"flower={self.flower})"
        )
