"""``alchimia experiment federation --dp-epsilon 1,4,16``: the accuracy cost of
client-level differential privacy.

Runs the federated hybrid arm of the federation experiment (the product's code: see
``experiment_federation``) once without DP and once per target epsilon. Each plant sends
one update per round, so for ``rounds`` rounds the noise multiplier z is the smallest
whose ``rounds`` updates cost at most the target epsilon at ``delta``
(``coordinator.privacy.noise_for_epsilon``, the coordinator's accountant); every delta is
clipped to ``clip_norm`` and noised as the agent does it (``agent.learn.privacy``), before
the codec. The noise here comes from a Generator seeded with ``noise_seed`` so that a
figure can be reproduced; the product never fixes it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from alchimia.agent.learn.privacy import l2_norm, privatize
from alchimia.coordinator.privacy import PrivacyLedger, noise_for_epsilon
from alchimia.experiment_federation import (
    SHOWN,
    Channel,
    FederationConfig,
    _mae,
    _predict,
    federate,
    simulate,
)
from alchimia.models.params import Weights
from alchimia.models.spec import ModelSpec


@dataclass
class PrivacyResult:
    config: FederationConfig
    plants: list[str]
    clip_norm: float
    delta: float
    noise_seed: int
    # epsilon target (None: no DP) -> (noise multiplier, epsilon the accountant reports,
    # plant -> target -> test MAE, share of deltas the clipping shrank)
    runs: dict[
        float | None, tuple[float | None, float | None, dict[str, dict[str, float]], float]
    ] = field(default_factory=dict)
    median_norm: float = 0.0  # of the deltas without DP, before clipping
    # a run whose training diverged (a non-finite delta, which no coordinator accepts)
    # has NaN errors: the table says "diverged"
    wall_s: float = 0.0

    def table(self, target: str) -> str:
        """Markdown: one row per epsilon, test MAE of ``target`` per plant, and the mean
        change over the plants and shown targets against no DP."""
        unit = next(u for t, u, _ in SHOWN if t == target)
        fmt = next(f for t, _, f in SHOWN if t == target)
        head = [
            "epsilon",
            "z",
            "clipped",
            *(f"{p} {unit}" for p in self.plants),
            "mean change (4 targets)",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        base = self.runs[None][2]
        for eps, (z, reported, mae, clipped) in self.runs.items():
            change = float(
                np.mean([mae[p][t] / base[p][t] - 1 for p in self.plants for t, _, _ in SHOWN])
            )
            cells = [
                "no DP" if eps is None else f"{eps:g} ({reported:.2f})",
                "" if z is None else f"{z:.3g}",
                "" if eps is None else f"{clipped:.0%}",
                *(fmt.format(mae[p][target]) for p in self.plants),
                "" if eps is None else "diverged" if math.isnan(change) else f"{change:+.1%}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def run_privacy_experiment(
    cfg: FederationConfig,
    epsilons: tuple[float, ...],
    clip_norm: float,
    delta: float = 1e-5,
    noise_seed: int = 0,
) -> PrivacyResult:
    """The federated hybrid arm without DP and at each target epsilon."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plants = simulate(cfg)
        names = [p.name for p in plants]
        spec = ModelSpec(architecture="eaf-hybrid-v1")
        result = PrivacyResult(cfg, names, clip_norm, delta, noise_seed)
        for eps in (None, *epsilons):
            z = None if eps is None else noise_for_epsilon(eps, delta, cfg.rounds)
            rng = np.random.default_rng(noise_seed)
            norms: list[float] = []

            def hook(
                d: Weights,
                z: float | None = z,
                rng: np.random.Generator = rng,
                norms: list[float] = norms,
            ) -> Weights:
                norms.append(l2_norm(d))
                return d if z is None else privatize(d, clip_norm, z, rng)

            channel = Channel("raw", cfg.update_topk_fraction, names, privatize=hook)
            try:
                shared, sites = federate(spec, cfg, plants, channel)
                mae = {
                    p.name: _mae(_predict(spec, shared, site or None, p.x_test), p.y_test)
                    for p, site in zip(plants, sites, strict=True)
                }
            except ValueError:  # a non-finite delta (no one sends it): training diverged
                mae = {p.name: {t: math.nan for t, _, _ in SHOWN} for p in plants}
            reported = None
            if z is not None:  # what the coordinator would put in the last version
                ledger = PrivacyLedger(delta)
                for _ in range(cfg.rounds):
                    ledger.record(names, z)
                reported = ledger.worst()[0]
            else:
                result.median_norm = float(np.median(norms))
            clipped = float(np.mean([n > clip_norm for n in norms]))
            result.runs[eps] = (z, reported, mae, clipped)
    finally:
        torch.set_num_threads(threads)
    result.wall_s = time.perf_counter() - started
    return result


def report(result: PrivacyResult) -> str:
    cfg = result.config
    lines = [
        f"differential privacy at the plants (local DP, user level: one plant = one "
        f"user), federated hybrid arm, seed {cfg.seed}, {cfg.rounds} rounds (one "
        f"update per plant per round); clip norm {result.clip_norm:g} (median delta "
        f"norm without DP {result.median_norm:.3g}), delta {result.delta:g}, noise "
        f"seed {result.noise_seed}; epsilon: target (reported by the accountant)"
    ]
    for target in ("energy_kwh_t", "cu_pct"):
        lines += ["", result.table(target)]
    lines.append(f"wall time: {result.wall_s:.1f} s")
    return "\n".join(lines)
