"""Aggregation strategies of the coordinator: pure numpy, no I/O.

``make_strategy(name, **params)`` is the entry point for configuration; ``clip_norm=...``
puts ``NormBound`` in front of any of them.
"""

from __future__ import annotations

import inspect
from typing import Any

from alchimia.coordinator.strategies.base import (
    Accumulator,
    StateDict,
    StateValue,
    Strategy,
    Weights,
    validate_delta,
)
from alchimia.coordinator.strategies.fedavg import FedAvg, FedProx
from alchimia.coordinator.strategies.norm_bound import NormBound
from alchimia.coordinator.strategies.robust import Krum, Median, MultiKrum, TrimmedMean
from alchimia.coordinator.strategies.server_opt import FedAdagrad, FedAdam, FedAvgM, FedYogi

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedAvgM,
        FedProx,
        FedAdagrad,
        FedAdam,
        FedYogi,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
    )
}


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a strategy by registry name; ``clip_norm`` (if not None) wraps it in NormBound.

    Unknown names and unknown parameters raise ValueError listing the valid ones, so a typo
    in the coordinator's settings fails at start-up rather than silently using defaults.
    """
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; valid names: {', '.join(sorted(STRATEGIES))}")
    clip_norm = params.pop("clip_norm", None)
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"strategy {name!r} got unknown parameter(s) {unknown}; "
            f"it accepts {[*accepted, 'clip_norm']}"
        )
    strategy = cls(**params)
    return strategy if clip_norm is None else NormBound(strategy, clip_norm)


__all__ = [
    "STRATEGIES",
    "Accumulator",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "MultiKrum",
    "NormBound",
    "StateDict",
    "StateValue",
    "Strategy",
    "TrimmedMean",
    "Weights",
    "make_strategy",
    "validate_delta",
]
