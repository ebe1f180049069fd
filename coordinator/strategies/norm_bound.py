"""Norm bounding in front of any strategy: one agent cannot move the model arbitrarily far."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

from alchimia.coordinator.strategies.base import (
    Accumulator,
    StateDict,
    StateValue,
    Strategy,
    Weights,
)


class _ClippingAccumulator(Accumulator):
    def __init__(self, inner: Accumulator, global_weights: Weights, max_norm: float) -> None:
        super().__init__(global_weights)
        self._inner = inner
        self._max_norm = max_norm
        self.clipped = 0  # how many deltas of this round were scaled down

    def _ingest(self, delta: Weights, weight: float, sq: float) -> None:
        norm = math.sqrt(sq)
        scale = self._max_norm / norm if norm > self._max_norm else 1.0
        # The scale is folded into the inner accumulator's own pass: no clipped copy.
        self._inner._admit(delta, weight, scale)
        self._count += 1
        if scale < 1.0:
            self.clipped += 1

    def _accept(self, delta: Weights, weight: float, scale: float) -> None:
        raise AssertionError("unreachable: _ingest forwards to the inner accumulator")

    def _finish(self) -> Weights:
        return self._inner.finish()


class NormBound(Strategy):
    """Norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated Learning?"): each
    delta is scaled by ``min(1, max_norm / ||delta||)``, the L2 norm taken over all tensors
    together, before the wrapped strategy sees it.

    Parameters: ``inner`` (any strategy), ``max_norm`` (> 0). Also reachable as
    ``make_strategy(name, clip_norm=...)``. ``streaming``, ``task_params`` and the state are
    the inner strategy's. The norm comes from delta validation, and the scale is applied
    inside the inner accumulator's own pass, so clipping costs no extra pass or copy.
    """

    name: ClassVar[str] = "norm_bound"

    def __init__(self, inner: Strategy, max_norm: float) -> None:
        super().__init__()
        if not isinstance(inner, Strategy):
            raise ValueError(f"norm_bound: inner must be a Strategy, got {type(inner).__name__}")
        if not (math.isfinite(max_norm) and max_norm > 0.0):
            raise ValueError(f"norm_bound: max_norm must be a finite number > 0, got {max_norm!r}")
        self.inner = inner
        self.max_norm = float(max_norm)

    @property  # per instance: it is the wrapped strategy's (the base declares a ClassVar)
    def streaming(self) -> bool:  # type: ignore[override]
        return self.inner.streaming

    @property
    def rounds(self) -> int:
        return self.inner.rounds

    def open_round(self, global_weights: Weights) -> Accumulator:
        return _ClippingAccumulator(
            self.inner.open_round(global_weights), global_weights, self.max_norm
        )

    def task_params(self) -> dict[str, float]:
        return self.inner.task_params()

    def state_dict(self) -> StateDict:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        self.inner.load_state_dict(state)

    def __repr__(self) -> str:
        return f"NormBound({self.inner!r}, max_norm={self.max_norm})"
