"""Weighted averaging of deltas, streamed: the base of FedAvg, FedProx and the server optimisers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from alchimia.coordinator.strategies import kernels
from alchimia.coordinator.strategies.base import (
    Accumulator,
    Strategy,
    Weights,
    check_global,
    trained_masks,
)


class MeanAccumulator(Accumulator):
    """Running sum of ``weight * delta`` per tensor in float64, plus the total weight.

    Submodel averaging (FedSubAvg: Ding et al. 2022, "Federated Submodel Optimization for
    Hot and Cold Data Features"): a coordinate an update leaves at exactly 0.0 is one that
    site did not train (e.g. the content of a scrap grade it never charges: its gradient is
    0 and Adam's step is exactly 0), so it does not count in that coordinate's mean. The
    accumulator keeps the weight behind each coordinate and, at the end, rescales each sum
    so that ``sums / total`` is that coordinate's mean over the updates that touched it;
    every rule built on the mean (FedAvg, FedProx, FedAvgM, FedAdam, ...) then uses it.
    Without such zeros the rescale factor is exactly 1 and results are bit-identical to
    plain FedAvg. A coordinate no update touched keeps its value. Where an update says
    which coordinates it trained (a top-k delta's ``trained`` bitmap: ``trained_masks``),
    that mask decides instead of ``delta != 0``: a coordinate the site trained but whose
    value error feedback deferred counts, with a zero contribution, in the mean's weight.

    Why float64: with thousands of updates weighted by sample counts in the thousands, the
    rounding of the sum stays ~1e-16 relative, so the result does not depend on arrival
    order in practice (a round is reproducible from its inputs) and cannot overflow. Cost:
    the sums take 8P bytes (2x the float32 model); memory is O(P) whatever the number of
    updates. Adding is one compiled pass over all tensors (``kernels.add_scaled_touched``,
    on the kernels' threads, each owning a slice) with no temporary; validation has just
    read the delta, split over the threads the same way, so at typical model sizes each
    thread's slice comes from the cache.
    """

    def __init__(
        self, global_weights: Weights, apply: Callable[[dict[str, np.ndarray], float], Weights]
    ) -> None:
        super().__init__(global_weights)
        # Sums and weights packed in one buffer each (``kernels.packed``), seen by tensor
        # through views: a small model's tensors take one numpy add per update, not one each.
        shapes = [v.shape for v in global_weights.values()]
        self._packed_sums, sums = kernels.packed(shapes)
        self._packed_touched, touched = kernels.packed(shapes)
        self._sums = dict(zip(global_weights, sums, strict=True))
        self._touched = dict(zip(global_weights, touched, strict=True))
        self._total = 0.0
        self._apply = apply

    @property
    def total_weight(self) -> float:
        return self._total

    def _accept(self, delta: Weights, weight: float, scale: float) -> None:
        masks = trained_masks(delta)
        kernels.add_scaled_touched(
            self._packed_sums,
            self._packed_touched,
            [delta[name] for name in self._sums],
            weight * scale,
            weight,
            [masks.get(name) for name in self._sums] if masks else None,
        )
        self._total += weight

    def _finish(self) -> Weights:
        if not (self._total > 0.0 and math.isfinite(self._total)):
            raise ValueError(f"total weight of the round is {self._total}; need > 0")
        for name, acc in self._sums.items():
            touched = self._touched[name]
            partial = (touched > 0.0) & (touched != self._total)
            if partial.any():
                acc[partial] *= self._total / touched[partial]
        return self._apply(self._sums, self._total)


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
        return MeanAccumulator(
            global_weights, lambda sums, total: self._apply(global_weights, sums, total)
        )

    def _check_state(self, global_weights: Weights) -> None:
        """Stateful subclasses verify their state still fits the model (e.g. after a load)."""

    def _apply(self, global_weights: Weights, sums: dict[str, np.ndarray], total: float) -> Weights:
        """Turn the weighted sums into new weights (the mean delta is ``sums / total``);
        commits state. May consume ``sums``."""
        out = {
            name: kernels.shift_by_mean(g, sums[name], total) for name, g in global_weights.items()
        }
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
