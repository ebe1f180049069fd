"""The strategy/accumulator contract shared by every aggregation rule.

A round is ``open_round`` -> ``add`` per arriving delta -> ``finish``. Splitting it this way
lets streaming rules fold each update into O(P) memory as it arrives from the broker, and it
makes an abandoned round (coordinator crash, quorum never reached) free of side effects:
strategy state (momentum, Adam moments, round counter) is committed only by ``finish``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from alchimia.broker.codec import TensorMap
from alchimia.coordinator.strategies import kernels

Weights = dict[str, np.ndarray]
StateValue = np.ndarray | float | int
StateDict = dict[str, StateValue]


def check_weight(weight: float) -> float:
    """An update's weight must be a finite number >= 0 (sample count times staleness)."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"weight must be a number, got {weight!r}") from None
    if isinstance(weight, bool) or not math.isfinite(w) or w < 0.0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    return w


def check_flag(strategy: str, pname: str, value: object) -> bool:
    """A yes/no parameter: a bool, or 0 or 1 (``--strategy-param flower=1`` gives 1.0)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{strategy}: {pname} must be true/false or 0/1, got {value!r}")


def check_global(global_weights: Mapping[str, np.ndarray]) -> None:
    """Cheap structural check of the weights a round starts from (no full data pass)."""
    if not global_weights:
        raise ValueError("global weights are empty")
    for name, arr in global_weights.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise ValueError(f"global weights[{name!r}] must be a floating numpy array")


def trained_masks(delta: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """The per-tensor masks of the coordinates an update trained, where its tensors carried
    one (a decoded top-k delta's ``trained`` bitmap, ``broker.codec.TensorMap``); empty for
    any other mapping. A tensor without a mask was trained where it is non-zero."""
    return delta.trained if isinstance(delta, TensorMap) else {}


def validate_delta(
    global_weights: Mapping[str, np.ndarray],
    delta: Mapping[str, np.ndarray],
) -> float:
    """Reject a malformed delta before it touches any accumulator; return its squared norm.

    Keys must match the global weights exactly (order free), shapes must match, dtypes must
    be floating and every value finite; a ``trained`` mask (``trained_masks``) must be a
    boolean array of its tensor's shape.
    """
    if not isinstance(delta, Mapping):
        raise ValueError(
            f"delta must be a mapping of parameter name to array, got {type(delta).__name__}"
        )
    missing = [k for k in global_weights if k not in delta]
    if missing:
        raise ValueError(f"delta is missing parameter(s) {missing}")
    extra = [k for k in delta if k not in global_weights]
    if extra:
        raise ValueError(f"delta has unknown parameter(s) {extra}")
    for name, ref in global_weights.items():
        arr = delta[name]
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"delta[{name!r}] is {type(arr).__name__}, not a numpy array")
        if arr.dtype.kind != "f":
            raise ValueError(f"delta[{name!r}] has dtype {arr.dtype}; a float dtype is required")
        if arr.shape != ref.shape:
            raise ValueError(
                f"delta[{name!r}] has shape {arr.shape} but the global weights have {ref.shape}"
            )
    for name, mask in trained_masks(delta).items():
        tensor = global_weights.get(name)
        if tensor is None or not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            raise ValueError(f"trained[{name!r}] must be a boolean array of a delta tensor")
        if mask.shape != tensor.shape:
            raise ValueError(f"trained[{name!r}] has shape {mask.shape}, not {tensor.shape}")
    # One pass over every tensor, on the kernels' threads. Non-finite iff the array holds
    # NaN/inf or float64 squares overflow (float32 ones cannot): the NaN check rides on the
    # norm pass, no P-byte boolean temporary.
    total = 0.0
    squares = kernels.sum_squares_each([delta[name] for name in global_weights])
    for name, sq in zip(global_weights, squares, strict=True):
        if not math.isfinite(sq):
            if not np.isfinite(delta[name]).all():
                raise ValueError(f"delta[{name!r}] contains NaN or infinite values")
            raise ValueError(f"delta[{name!r}] is too large (its squared norm overflows)")
        total += sq
    return total


class Accumulator(ABC):
    """Collects one round's deltas; ``finish`` yields the new global weights.

    Subclasses implement ``_accept`` (store or fold one already validated delta, scaled by
    ``scale``, which is how ``NormBound`` clips without copying) and ``_finish``. An
    accumulator is single use: ``add`` or ``finish`` after ``finish`` raise RuntimeError.
    The global weights are referenced, not copied; callers must not mutate them mid-round.
    """

    def __init__(self, global_weights: Weights) -> None:
        self._global = global_weights
        self._count = 0
        self._finished = False

    @property
    def count(self) -> int:
        return self._count

    def add(self, delta: Weights, weight: float) -> None:
        """Validate, then fold in; on ValueError the accumulator is unchanged."""
        self._check_open()
        w = check_weight(weight)
        sq = validate_delta(self._global, delta)
        self._ingest(delta, w, sq)

    def finish(self) -> Weights:
        self._check_open()
        if self._count == 0:
            raise ValueError("cannot finish a round without updates")
        result = self._finish()
        self._finished = True
        return result

    def _ingest(self, delta: Weights, weight: float, sq: float) -> None:
        """Hook for wrappers that need the squared norm computed during validation."""
        self._admit(delta, weight, 1.0)

    def _admit(self, delta: Weights, weight: float, scale: float) -> None:
        """Entry point for already validated deltas (used by wrapping accumulators)."""
        self._check_open()
        self._accept(delta, weight, scale)
        self._count += 1

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("this round's accumulator is already finished")

    @abstractmethod
    def _accept(self, delta: Weights, weight: float, scale: float) -> None: ...

    @abstractmethod
    def _finish(self) -> Weights: ...


class Strategy(ABC):
    """An aggregation rule plus its server-side state (committed only at round finish)."""

    name: ClassVar[str]
    streaming: ClassVar[bool]

    def __init__(self) -> None:
        self._rounds = 0

    @property
    def rounds(self) -> int:
        """Rounds finished so far (part of ``state_dict``)."""
        return self._rounds

    @abstractmethod
    def open_round(self, global_weights: Weights) -> Accumulator: ...

    def aggregate(
        self,
        global_weights: Weights,
        updates: Sequence[tuple[Weights, float]],
    ) -> Weights:
        """Convenience: open_round, add each (delta, weight), finish.

        weight = sample count (times any staleness factor).
        """
        acc = self.open_round(global_weights)
        for delta, weight in updates:
            acc.add(delta, weight)
        return acc.finish()

    def task_params(self) -> dict[str, float]:
        """Hyper-parameters agents need for local training (e.g. FedProx's mu)."""
        return {}

    def state_dict(self) -> StateDict:
        """Flat, msgpack/npz-friendly copy of the server state."""
        return {"rounds": self._rounds}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Restore ``state_dict`` output; unknown keys are an error, not silently dropped."""
        extra = sorted(set(state) - {"rounds"})
        if extra:
            raise ValueError(f"{self.name}: unexpected state keys {extra}")
        self._rounds = read_rounds(state)

    def _commit_round(self) -> None:
        self._rounds += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def read_rounds(state: Mapping[str, StateValue]) -> int:
    value = state.get("rounds", 0)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()  # npz round trips scalars as 0-d arrays
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"state 'rounds' must be an integer >= 0, got {value!r}")
    if not math.isfinite(value) or int(value) != value or value < 0:
        raise ValueError(f"state 'rounds' must be an integer >= 0, got {value!r}")
    return int(value)
