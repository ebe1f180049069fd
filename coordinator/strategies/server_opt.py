"""Server-side optimisers on the FedAvg pseudo-gradient: FedAvgM and FedAdagrad/FedAdam/FedYogi.

Each treats the weighted mean delta of a round as a (negated) gradient and keeps per-tensor
float64 state (momentum, moments). float64 so that repeated rounds do not accumulate
rounding and a checkpoint round trip continues bit-identically; the state is 8P bytes per
slot, small for furnace models. State is replaced (never mutated) in ``finish``, so an
abandoned round leaves it untouched.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from alchimia.coordinator.strategies.base import (
    StateDict,
    StateValue,
    Weights,
    check_flag,
    read_rounds,
)
from alchimia.coordinator.strategies.fedavg import FedAvg

TensorState = dict[str, dict[str, np.ndarray]]  # slot -> parameter name -> float64 array


def _check_real(
    strategy: str,
    pname: str,
    value: float,
    lo: float,
    hi: float,
    lo_open: bool = False,
    hi_open: bool = True,
) -> float:
    """Range check of a hyper-parameter with a message naming strategy and parameter."""
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{strategy}: {pname} must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return v


class _StatefulAvg(FedAvg):
    """FedAvg whose server step keeps named per-tensor slots (``slots``) across rounds."""

    slots: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        super().__init__()
        self._state: TensorState | None = None  # None until the first finished round

    def _check_state(self, global_weights: Weights) -> None:
        """A loaded state must cover exactly the model's tensors; adopt the model's order."""
        if self._state is None:
            return
        for slot, arrays in self._state.items():
            if set(arrays) != set(global_weights):
                raise ValueError(
                    f"{self.name}: state {slot!r} has parameters {sorted(arrays)} "
                    f"but the global weights have {sorted(global_weights)}"
                )
            for name, arr in arrays.items():
                if arr.shape != global_weights[name].shape:
                    raise ValueError(
                        f"{self.name}: state {slot}/{name} has shape {arr.shape} "
                        f"but the global weights have {global_weights[name].shape}"
                    )
        self._state = {
            slot: {name: arrays[name] for name in global_weights}
            for slot, arrays in self._state.items()
        }

    def _apply(self, global_weights: Weights, sums: dict[str, np.ndarray], total: float) -> Weights:
        avg = sums
        for arr in avg.values():
            arr /= total  # in place: the sums become the weighted mean delta
        new_state: TensorState = {slot: {} for slot in self.slots}
        out: Weights = {}
        for name, g in global_weights.items():
            old = None if self._state is None else {s: self._state[s][name] for s in self.slots}
            step, slots = self._step(avg[name], old)
            for slot, arr in slots.items():
                new_state[slot][name] = np.asarray(arr, np.float64)  # 0-d math gives scalars
            out[name] = np.asarray(step + g, dtype=g.dtype)
        self._state = new_state
        self._commit_round()
        return out

    @abstractmethod
    def _step(
        self,
        delta: np.ndarray,
        old: dict[str, np.ndarray] | None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return (float64 change to the global tensor, new slot arrays) for one tensor."""

    def state_dict(self) -> StateDict:
        out: StateDict = {"rounds": self._rounds}
        if self._state is not None:
            for slot, arrays in self._state.items():
                for name, arr in arrays.items():
                    out[f"{slot}/{name}"] = arr.copy()
        return out

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        rounds = read_rounds(state)
        parsed: TensorState = {slot: {} for slot in self.slots}
        for key, value in state.items():
            if key == "rounds":
                continue
            slot, sep, name = key.partition("/")
            if not sep or slot not in parsed or not name:
                raise ValueError(
                    f"{self.name}: unexpected state key {key!r} "
                    f"(expected 'rounds' or '<slot>/<param>', slots {self.slots})"
                )
            arr = np.array(value, dtype=np.float64)  # copy: the caller keeps its own
            if not np.isfinite(arr).all():
                raise ValueError(f"{self.name}: state {key!r} contains NaN or infinite values")
            parsed[slot][name] = arr
        names = [set(arrays) for arrays in parsed.values()]
        if any(n != names[0] for n in names):
            raise ValueError(f"{self.name}: state slots {self.slots} cover different parameters")
        # Shapes and order are checked against the model at the next open_round.
        self._state = parsed if names[0] else None
        self._rounds = rounds


class FedAvgM(_StatefulAvg):
    """FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification"): server momentum on the mean delta.

    ``v = beta * v + mean_delta``; ``new = global + server_lr * v`` (v starts at 0, so round 1
    equals FedAvg scaled by server_lr).

    Parameters: ``server_lr`` (default 1.0, > 0), ``beta`` (momentum, default 0.9, in [0, 1)).
    Flower's FedAvgM defaults to momentum 0; 0.9 is the value Hsu et al. found best.
    State: ``rounds``, ``momentum/<param>``.
    """

    name: ClassVar[str] = "fedavgm"
    slots: ClassVar[tuple[str, ...]] = ("momentum",)

    def __init__(self, server_lr: float = 1.0, beta: float = 0.9) -> None:
        super().__init__()
        self.server_lr = _check_real(self.name, "server_lr", server_lr, 0.0, math.inf, lo_open=True)
        self.beta = _check_real(self.name, "beta", beta, 0.0, 1.0)

    def _step(
        self,
        delta: np.ndarray,
        old: dict[str, np.ndarray] | None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        v = delta.copy() if old is None else self.beta * old["momentum"] + delta
        return self.server_lr * v, {"momentum": v}

    def __repr__(self) -> str:
        return f"FedAvgM(server_lr={self.server_lr}, beta={self.beta})"


class _FedOpt(_StatefulAvg):
    """Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR), Algorithm 2.

    With Delta the weighted mean delta: ``m = beta_1 m + (1 - beta_1) Delta``, ``v`` per
    variant, ``x = x + eta m / (sqrt(v) + tau)``, no bias correction, as in the paper's
    Algorithm 2. ``m`` starts at 0 and ``v`` at ``tau**2`` (the paper requires
    ``v_{-1} >= tau**2``).

    ``flower=True`` follows Flower 1.42 (``flwr.server.strategy``) instead, which differs
    in two ways (docs/FEDERATION.md, "Strategies and Flower"): ``v`` starts at 0, and
    FedAdam's step is bias-corrected. Checked against recorded Flower outputs
    (tests/data/flower_oracle.json).
    State: ``rounds``, ``m/<param>``, ``v/<param>``.
    """

    slots: ClassVar[tuple[str, ...]] = ("m", "v")

    def __init__(
        self, eta: float, beta_1: float, beta_2: float, tau: float, flower: bool = False
    ) -> None:
        super().__init__()
        self.eta = _check_real(self.name, "eta", eta, 0.0, math.inf, lo_open=True)
        self.beta_1 = _check_real(self.name, "beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _check_real(self.name, "beta_2", beta_2, 0.0, 1.0)
        self.tau = _check_real(self.name, "tau", tau, 0.0, math.inf, lo_open=True)
        self.flower = check_flag(self.name, "flower", flower)

    def _step(
        self,
        delta: np.ndarray,
        old: dict[str, np.ndarray] | None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if old is None:
            m0 = np.zeros_like(delta)
            v0 = np.full_like(delta, 0.0 if self.flower else self.tau * self.tau)
        else:
            m0, v0 = old["m"], old["v"]
        m = self.beta_1 * m0 + (1.0 - self.beta_1) * delta
        v = self._second_moment(v0, delta * delta)
        return self._step_size() * m / (np.sqrt(v) + self.tau), {"m": m, "v": v}

    def _step_size(self) -> float:
        """The server learning rate of the round being finished."""
        return self.eta

    @abstractmethod
    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray: ...

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eta={self.eta}, beta_1={self.beta_1}, "
            f"beta_2={self.beta_2}, tau={self.tau}, flower={self.flower})"
        )


class FedAdagrad(_FedOpt):
    """FedAdagrad (Reddi et al. 2021, Algorithm 2): ``v = v + Delta**2``.

    Parameters (defaults as Flower's FedAdagrad): ``eta`` 0.1, ``tau`` 1e-9, ``beta_1`` 0.0
    (Flower fixes beta_1 = 0, i.e. no server momentum; the paper's Algorithm 2 allows
    momentum, set ``beta_1=0.9`` for that). ``beta_2`` is unused by Adagrad, kept at 0 for a
    uniform signature. ``flower`` (default False): ``v`` starts at 0 as in Flower, which
    at the default ``tau`` changes nothing measurable. See ``_FedOpt``.
    """

    name: ClassVar[str] = "fedadagrad"

    def __init__(
        self,
        eta: float = 1e-1,
        beta_1: float = 0.0,
        beta_2: float = 0.0,
        tau: float = 1e-9,
        flower: bool = False,
    ) -> None:
        super().__init__(eta, beta_1, beta_2, tau, flower)

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        out: np.ndarray = v + d2
        return out


class FedAdam(_FedOpt):
    """FedAdam (Reddi et al. 2021, Algorithm 2): ``v = beta_2 v + (1 - beta_2) Delta**2``.

    Parameters (defaults as Flower's FedAdam): ``eta`` 0.1, ``beta_1`` 0.9, ``beta_2`` 0.99,
    ``tau`` 1e-9, ``flower`` (default False). See ``_FedOpt``.

    ``flower=True`` is Flower's FedAdam: ``v`` starts at 0 and round ``t`` (1, 2, ...)
    steps with the bias-corrected ``eta * sqrt(1 - beta_2**(t + 1)) / (1 - beta_1**(t + 1))``
    (Kingma & Ba's correction with the exponent one round ahead). At the defaults that is
    0.74, 0.64, 0.58 x ``eta`` in rounds 1-3, so the paper's steps, ours by default, are
    1.35x, 1.57x, 1.73x Flower's; the two converge as ``t`` grows.
    """

    name: ClassVar[str] = "fedadam"

    def __init__(
        self,
        eta: float = 1e-1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-9,
        flower: bool = False,
    ) -> None:
        super().__init__(eta, beta_1, beta_2, tau, flower)

    def _step_size(self) -> float:
        if not self.flower:
            return self.eta
        power = self._rounds + 2  # Flower's server_round + 1; _rounds counts finished rounds
        return self.eta * math.sqrt(1.0 - self.beta_2**power) / (1.0 - self.beta_1**power)

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1.0 - self.beta_2) * d2


class FedYogi(_FedOpt):
    """FedYogi (Reddi et al. 2021, Algorithm 2):
    ``v = v - (1 - beta_2) Delta**2 sign(v - Delta**2)``.

    Parameters (defaults as Flower's FedYogi, which differ from its FedAdam): ``eta`` 0.01,
    ``beta_1`` 0.9, ``beta_2`` 0.99, ``tau`` 1e-3, ``flower`` (default False). See
    ``_FedOpt``.

    ``flower=True`` starts ``v`` at 0 as Flower does, not at ``tau**2``. With ``tau`` 1e-3
    that is not negligible at furnace delta sizes: at the defaults, the first step of a
    coordinate whose mean delta is ``d`` (``|d| > tau``) is, by default,
    ``(0.1 |d| + tau) / (sqrt(tau**2 + 0.01 d**2) + tau)`` times Flower's: 0.83 at
    ``|d|`` = 0.01, 0.93 at 0.02, 0.98 at 0.05.
    """

    name: ClassVar[str] = "fedyogi"

    def __init__(
        self,
        eta: float = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        flower: bool = False,
    ) -> None:
        super().__init__(eta, beta_1, beta_2, tau, flower)

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        out: np.ndarray = v - (1.0 - self.beta_2) * d2 * np.sign(v - d2)
        return out
