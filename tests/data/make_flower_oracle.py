"""Record what Flower's strategies compute for fixed inputs: tests/data/flower_oracle.json.

Run with Flower in a throwaway environment (never the project's: Flower is not one of our
dependencies), from the repository root:

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install "flwr==1.42.*"
    /tmp/flwr-venv/bin/python tests/data/make_flower_oracle.py

Inputs: K = 10 agents, three rounds, two float64 tensors; each agent's delta is drawn
once per round (about 1e-2, furnace delta size; agent 9 sends ten times more, so the
robust rules have something to reject) with a sample count. Every strategy starts from
the same global weights and is given, each round, its own previous output plus the deltas
(Flower aggregates parameters, not deltas). tests/unit/test_flower_oracle.py feeds the
same deltas to coordinator.strategies and compares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flwr
import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import strategy as fl

OUT = Path(__file__).with_name("flower_oracle.json")
SHAPES = {"w": (3, 4), "b": (4,)}
K, ROUNDS = 10, 3


def _inputs() -> dict[str, Any]:
    rng = np.random.default_rng(20251)
    rounds = []
    for _ in range(ROUNDS):
        deltas = [
            {
                k: 0.01 * rng.standard_normal(s) * (10.0 if i == K - 1 else 1.0)
                for k, s in SHAPES.items()
            }
            for i in range(K)
        ]
        rounds.append({"deltas": deltas, "num_samples": rng.integers(20, 400, K).tolist()})
    initial = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    return {"initial": initial, "rounds": rounds}


# Case name -> (agents per round, the Flower strategy: class and keyword arguments;
# "initial_parameters" is filled in for the server optimisers).
CASES: dict[str, tuple[int, str, dict[str, Any]]] = {
    "fedavg": (K, "FedAvg", {}),
    "fedprox": (K, "FedProx", {"proximal_mu": 0.01}),
    "fedavgm": (K, "FedAvgM", {"server_learning_rate": 1.0, "server_momentum": 0.9}),
    "fedadagrad": (K, "FedAdagrad", {}),
    "fedadam": (K, "FedAdam", {}),
    "fedyogi": (K, "FedYogi", {}),
    "median": (K, "FedMedian", {}),
    "trimmed_mean": (K, "FedTrimmedAvg", {"beta": 0.1}),
    "trimmed_mean_k5": (5, "FedTrimmedAvg", {"beta": 0.1}),
    "krum": (K, "Krum", {"num_malicious_clients": 2}),
    "multikrum": (K, "Krum", {"num_malicious_clients": 2, "num_clients_to_keep": 5}),
}
SERVER_OPT = {"FedAvgM", "FedAdagrad", "FedAdam", "FedYogi"}


def _strategy(cls: str, kwargs: dict[str, Any], initial: list[np.ndarray]) -> Any:
    if cls in SERVER_OPT:
        kwargs = {**kwargs, "initial_parameters": ndarrays_to_parameters(initial)}
    return getattr(fl, cls)(**kwargs)


def _fit_res(params: list[np.ndarray], n: int) -> FitRes:
    return FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters(params),
        num_examples=n,
        metrics={},
    )


def _run(k: int, strategy: Any, inputs: dict[str, Any]) -> list[list[list[float]]]:
    current = [inputs["initial"][name] for name in SHAPES]
    outputs = []
    for server_round, rnd in enumerate(inputs["rounds"], start=1):
        results = [
            (None, _fit_res([g + d[name] for g, name in zip(current, SHAPES, strict=True)], n))
            for d, n in zip(rnd["deltas"][:k], rnd["num_samples"][:k], strict=True)
        ]
        params, _ = strategy.aggregate_fit(server_round, results, [])
        current = parameters_to_ndarrays(params)
        outputs.append([arr.ravel().tolist() for arr in current])
    return outputs


def main() -> None:
    inputs = _inputs()
    initial = [inputs["initial"][name] for name in SHAPES]
    record = {
        "flwr_version": flwr.__version__,
        "about": "Written by tests/data/make_flower_oracle.py; float64 throughout. outputs: "
        "per case, per round, the new global tensors (flattened, in 'shapes' "
        "order) that Flower's strategy returned.",
        "shapes": {k: list(s) for k, s in SHAPES.items()},
        "initial": {k: v.ravel().tolist() for k, v in inputs["initial"].items()},
        "rounds": [
            {
                "num_samples": r["num_samples"],
                "deltas": [{k: v.ravel().tolist() for k, v in d.items()} for d in r["deltas"]],
            }
            for r in inputs["rounds"]
        ],
        "cases": {
            name: {
                "agents": k,
                "flower": {"class": cls, "kwargs": kwargs},
                "outputs": _run(k, _strategy(cls, kwargs, initial), inputs),
            }
            for name, (k, cls, kwargs) in CASES.items()
        },
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT} with flwr {flwr.__version__}")


if __name__ == "__main__":
    main()
