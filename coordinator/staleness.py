"""Staleness discounts for asynchronous / buffered aggregation.

An update computed on model version ``v`` and aggregated into version ``t`` has staleness
``s = t - v``. Its aggregation weight is ``sample_count * factor(s)``, the FedBuff recipe
(Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation", AISTATS,
which uses ``1 / sqrt(1 + s)``); the polynomial and hinge families are from Xie et al. 2019,
"Asynchronous Federated Optimization". Factors are in (0, 1] and non-increasing in ``s``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

StalenessFn = Callable[[int], float]


def _check_staleness(s: int) -> int:
    if isinstance(s, bool) or not isinstance(s, int | np.integer):
        raise ValueError(f"staleness must be an integer, got {s!r}")
    if s < 0:
        raise ValueError(f"staleness must be >= 0, got {s}")
    return int(s)


def _check_param(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"staleness parameter {name} must be a finite number >= 0, got {value!r}")
    return v


def _positive(x: float) -> float:
    """Never exactly 0 (underflow), so a very stale update is discounted, not dropped."""
    return max(x, sys.float_info.min)


@dataclass(frozen=True)
class Constant:
    """``1``: staleness ignored (synchronous rounds)."""

    def __call__(self, s: int) -> float:
        _check_staleness(s)
        return 1.0


@dataclass(frozen=True)
class Polynomial:
    """``(1 + s) ** -a`` (Xie et al. 2019); ``a = 0.5`` is FedBuff's choice."""

    a: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", _check_param("a", self.a))

    def __call__(self, s: int) -> float:
        return _positive((1.0 + _check_staleness(s)) ** -self.a)


@dataclass(frozen=True)
class Hinge:
    """``1`` if ``s <= b`` else ``1 / (a (s - b) + 1)`` (Xie et al. 2019): full weight for
    updates up to ``b`` versions old, then hyperbolic decay."""

    a: float = 10.0
    b: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", _check_param("a", self.a))
        object.__setattr__(self, "b", _check_param("b", self.b))

    def __call__(self, s: int) -> float:
        s = _check_staleness(s)
        if s <= self.b:
            return 1.0
        return _positive(1.0 / (self.a * (s - self.b) + 1.0))


def constant() -> Constant:
    return Constant()


def polynomial(a: float = 0.5) -> Polynomial:
    return Polynomial(a)


def hinge(a: float = 10.0, b: float = 4.0) -> Hinge:
    return Hinge(a, b)


STALENESS: dict[str, Callable[..., StalenessFn]] = {
    "constant": constant,
    "polynomial": polynomial,
    "hinge": hinge,
}


def make_staleness(name: str, **params: Any) -> StalenessFn:
    """Build a staleness factor by name; unknown names or parameters raise ValueError."""
    factory = STALENESS.get(name)
    if factory is None:
        raise ValueError(
            f"unknown staleness function {name!r}; valid names: {', '.join(sorted(STALENESS))}"
        )
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"staleness {name!r}: {exc}") from None
