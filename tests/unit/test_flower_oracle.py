"""coordinator.strategies against recorded outputs of Flower 1.42's strategies
(tests/data/flower_oracle.json, written by tests/data/make_flower_oracle.py): the same
deltas, K = 10 agents, three rounds. The Flower-compatible variants agree to float64
rounding; the defaults that differ differ exactly as their docstrings say."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alchimia.coordinator.strategies import make_strategy

ORACLE: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "flower_oracle.json").read_text()
)
SHAPES = {k: tuple(s) for k, s in ORACLE["shapes"].items()}

# Oracle case -> our strategy and parameters (as --strategy-param passes them: floats).
COMPATIBLE: dict[str, tuple[str, dict[str, float]]] = {
    "fedavg": ("fedavg", {}),
    "fedprox": ("fedprox", {"mu": 0.01}),
    "fedavgm": ("fedavgm", {"server_lr": 1.0, "beta": 0.9}),
    "fedadagrad": ("fedadagrad", {}),
    "fedadam": ("fedadam", {"flower": 1.0}),
    "fedyogi": ("fedyogi", {"flower": 1.0}),
    "median": ("median", {}),
    "trimmed_mean": ("trimmed_mean", {"beta": 0.1}),
    "trimmed_mean_k5": ("trimmed_mean", {"beta": 0.1, "flower": 1.0}),
    "krum": ("krum", {"f": 2.0}),
    "multikrum": ("multikrum", {"f": 2.0, "m": 5.0, "flower": 1.0}),
}


def _tensors(flat: dict[str, list[float]] | list[list[float]]) -> dict[str, np.ndarray]:
    values = flat.values() if isinstance(flat, dict) else flat
    return {
        k: np.asarray(v, np.float64).reshape(s)
        for (k, s), v in zip(SHAPES.items(), values, strict=True)
    }


def _updates(rnd: dict[str, Any], k: int) -> list[tuple[dict[str, np.ndarray], float]]:
    return [
        (_tensors(d), float(n))
        for d, n in zip(rnd["deltas"][:k], rnd["num_samples"][:k], strict=True)
    ]


def _vector(w: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in w.values()])


def ours(case: str, name: str, params: dict[str, float]) -> list[np.ndarray]:
    """Our strategy's global weights after each round, flattened."""
    strategy, k = make_strategy(name, **params), ORACLE["cases"][case]["agents"]
    weights, out = _tensors(ORACLE["initial"]), []
    for rnd in ORACLE["rounds"]:
        weights = strategy.aggregate(weights, _updates(rnd, k))
        out.append(_vector(weights))
    return out


def flower(case: str) -> list[np.ndarray]:
    return [_vector(_tensors(r)) for r in ORACLE["cases"][case]["outputs"]]


def steps(path: list[np.ndarray]) -> list[np.ndarray]:
    start = _vector(_tensors(ORACLE["initial"]))
    return [b - a for a, b in zip([start, *path[:-1]], path, strict=True)]


def test_the_oracle_is_flower_1_42_with_ten_agents_and_three_rounds() -> None:
    assert ORACLE["flwr_version"].startswith("1.42.")
    assert len(ORACLE["rounds"]) == 3 and all(len(r["deltas"]) == 10 for r in ORACLE["rounds"])
    assert set(ORACLE["cases"]) == set(COMPATIBLE)


@pytest.mark.parametrize("case", sorted(COMPATIBLE))
def test_flower_compatible_variant_agrees(case: str) -> None:
    name, params = COMPATIBLE[case]
    for mine, theirs in zip(ours(case, name, params), flower(case), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-13)


def test_fedadam_default_steps_are_flowers_without_its_bias_correction() -> None:
    mine, theirs = steps(ours("fedadam", "fedadam", {})), steps(flower("fedadam"))
    ratios = [m / t for m, t in zip(mine, theirs, strict=True)]
    for r, expected in zip(ratios, (1.3469, 1.5725, 1.7325), strict=True):
        np.testing.assert_allclose(r, expected, rtol=1e-4)


def test_fedyogi_default_first_step_is_smaller_by_the_documented_factor() -> None:
    rnd = ORACLE["rounds"][0]
    d = np.average(
        [_vector(_tensors(x)) for x in rnd["deltas"]], axis=0, weights=rnd["num_samples"]
    )
    tau = 1e-3
    factor = (0.1 * np.abs(d) + tau) / (np.sqrt(tau * tau + 0.01 * d * d) + tau)
    first = steps(ours("fedyogi", "fedyogi", {}))[0] / steps(flower("fedyogi"))[0]
    np.testing.assert_allclose(first, factor, rtol=1e-9)
    assert (first < 1.0).all() and first.min() < 0.9


@pytest.mark.parametrize(
    ("case", "name", "params"),
    [
        ("trimmed_mean_k5", "trimmed_mean", {"beta": 0.1}),  # trims one per side; Flower none
        ("multikrum", "multikrum", {"f": 2.0, "m": 5.0}),  # unweighted; Flower by samples
    ],
)
def test_robust_defaults_differ_from_flower(case: str, name: str, params: dict[str, float]) -> None:
    gaps = [
        np.abs(m - t).max() for m, t in zip(ours(case, name, params), flower(case), strict=True)
    ]
    assert min(gaps) > 1e-4


def test_fedadam_flower_step_size_by_hand() -> None:
    """Round t of Flower's FedAdam steps with eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))."""
    ours_ = make_strategy("fedadam", flower=True)
    g = {"p": np.zeros(1)}
    for t in (1, 2):
        new = ours_.aggregate(g, [({"p": np.full(1, 0.01)}, 1.0)])
        m = 0.01 * (1 - 0.9**t)  # m and v of a constant delta, both from 0
        v = 0.0001 * (1 - 0.99**t)
        eta_t = 0.1 * math.sqrt(1 - 0.99 ** (t + 1)) / (1 - 0.9 ** (t + 1))
        np.testing.assert_allclose(new["p"] - g["p"], eta_t * m / (math.sqrt(v) + 1e-9), rtol=1e-12)
        g = new
