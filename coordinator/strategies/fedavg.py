"""Weighted averaging of deltas, streamed: the base of FedAvg, FedProx and the server optimisers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from coordinator.strategies.base import Accumulator, Strategy, Weights, check_global

# Elements per slice of the float32 scratch product (fits in L2 with its float64 target).
_SLICE = 1 << 16


class MeanAccumulator(Accumulator):
    """Running sum of ``weight * delta`` per tensor in float64, plus the total weight.

    Why float64: with thousands of updates weighted by sample counts in the thousands, the
    rounding of the sum stays ~1e-16 relative, so the result does not depend on arrival
    order in practice (a round is reproducible from its inputs) and cannot overflow. Cost:
    the sums take 8P bytes (2x the float32 model) and adding is ~2x slower than a float32
    sum would be (measured with bench/bench_aggregation.py); memory is O(P) whatever the
    number of updates. ``weight * delta`` is formed in float32 (one rounding per term, not
    accumulated) in a small cache-resident scratch slice, so no P-sized temporary exists.
    """

    def __init__(self, global_weights: Weights,
                 apply: Callable[[dict[str, np.ndarray]], Weights]) -> None:
        super().__init__(global_weights)
        self._sums = {k: np.zeros(v.shape, np.float64) for k, v in global_weights.items()}
        self._total = 0.0
        largest = max(v.size for v in global_weights.values())
        self._scratch = np.empty(min(_SLICE, max(largest, 1)), np.float32)
        self._apply = apply

    @property
    def total_weight(self) -> float:
        return self._total

    def _accept(self, delta: Weights, weight: float, scale: float) -> None:
        factor = weight * scale
        for name, acc in self._sums.items():
            src = delta[name].reshape(-1)
            dst = acc.reshape(-1)
            for lo in range(0, src.size, _SLICE):
                hi = min(lo + _SLICE, src.size)
                tmp = self._scratch[:hi - lo]
                np.multiply(src[lo:hi], factor, out=tmp, casting="same_kind")
                np.add(dst[lo:hi], tmp, out=dst[lo:hi])
        self._total += weight

    def _finish(self) -> Weights:
        if not (self._total > 0.0 and math.isfinite(self._total)):
            raise ValueError(f"total weight of the round is {self._total}; need > 0")
        for acc in self._sums.values():
            acc /= self._total  # in place: the sums become the weighted mean delta
        return self._apply(self._sums)


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data"): ``new = global + sum(w_i d_i) / sum(w_i)``.

    Parameters: none. Streaming, O(P) memory (see ``MeanAccumulator``).
    """

    name: ClassVar[str] = "fedavg"
    streaming: ClassVar[bool] = True

    def open_round(self, global_weights: Weights) -> Accumulator:
        check_global(global_weights)
        self._check_state(global_weights)
        return MeanAccumulator(global_weights, lambda avg: self._apply(global_weights, avg))

    def _check_state(self, global_weights: Weights) -> None:
        """Stateful subclasses verify their state still fits the model (e.g. after a load)."""

    def _apply(self, global_weights: Weights, avg: dict[str, np.ndarray]) -> Weights:
        """Turn the weighted mean delta into new weights; commits state. May consume ``avg``."""
        out: Weights = {}
        for name, g in global_weights.items():
            mean = avg[name]
            mean += g
            out[name] = mean.astype(g.dtype)
        self._commit_round()
        return out


class FedProx(FedAvg):
    """FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

    The server side is FedAvg; the proximal term ``mu/2 ||w - w_global||^2`` is added by the
    agents, so ``mu`` travels to them through ``task_params()`` as ``proximal_mu``.

    Parameters: ``mu`` (default 0.01), >= 0.
    """

    name: ClassVar[str] = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        super().__init__()
        if not (math.isfinite(mu) and mu >= 0.0):
            raise ValueError(f"fedprox: mu must be a finite number >= 0, got {mu!r}")
        self.mu = float(mu)

    def task_params(self) -> dict[str, float]:
        return {"proximal_mu": self.mu}

    def __repr__(self) -> str:
        return f"FedProx(mu={self.mu})"
