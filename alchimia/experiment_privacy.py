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

``--secure-aggregation``: distributed DP instead. Every round is a secure round run in
memory by the product's code (:class:`SecureChannel`): each plant's ``SecaggClient``
(the agent's) clips its delta, adds its part of the noise, N(0, (z C)^2 / t) with t the
roster's threshold (3 of 5 plants), and masks it with weight 1; the coordinator's
``SecureRound`` sums them, every message through the codec, and the strategy finishes
the sum as the coordinator does (``merge_partial``). The clients draw that noise from the
same seeded Generator (an argument only experiments and tests pass). The row without DP
runs secure rounds too, weighted by heats as the product does without DP.

An epsilon of ``inf`` is a row with the clipping (and, secure, the weight 1) but no
noise: what the clipping and the uniform weighting cost by themselves.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alchimia.agent.learn.privacy import clip, l2_norm, privatize
from alchimia.agent.secagg_client import SecaggClient
from alchimia.broker import secagg
from alchimia.broker.schemas import Body, SecaggMaskedBody, TaskBody, decode, message
from alchimia.coordinator.hierarchical import merge_partial
from alchimia.coordinator.privacy import PrivacyLedger, noise_for_epsilon
from alchimia.coordinator.rounds import Refusal
from alchimia.coordinator.secure_round import (
    Finished,
    PublishInbox,
    PublishRoster,
    PublishUnmask,
    SecureRound,
)
from alchimia.coordinator.strategies import Strategy
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


def _wire(sender: str, body: Body) -> Any:
    """``body`` as the other side decodes it."""
    return decode(message(sender, body), type(body)).body


def _taken(answer: Refusal | list) -> list:
    if isinstance(answer, Refusal):
        raise RuntimeError(f"the secure round refused a message: {answer}")
    return answer


@dataclass
class SecureChannel(Channel):
    """Secure rounds as the product runs them, in memory: the agents' ``SecaggClient``
    and the coordinator's ``SecureRound``, every message through the codec, no dropout.
    ``dp``: (C, z) as the task carries them (the clients clip, weigh 1 and add their part
    of the noise, from ``rng``); ``unit_weights``: weight 1 without noise (epsilon
    ``inf``). ``send`` only passes the delta to the ``privatize`` hook, which observes
    (or clips, for ``inf``): no codec, the masked input is its own encoding."""

    dp: tuple[float, float] | None = None
    rng: np.random.Generator | None = None
    unit_weights: bool = False

    def send(
        self, k: int, round_id: int, base_version: int, delta: Weights, num_samples: int
    ) -> Weights:
        return delta if self.privatize is None else self.privatize(delta)

    def aggregate(
        self,
        strategy: Strategy,
        shared: Weights,
        updates: list[tuple[Weights, float]],
        round_id: int,
        base_version: int,
    ) -> Weights:
        names, coordinator = self.plants, "coordinator"
        clip_norm, z = (None, None) if self.dp is None else self.dp
        task = TaskBody(
            round_id=round_id,
            state="open",
            base_version=base_version,
            deadline_ts=2e9,
            selected=names,
            secure_aggregation=True,
            dp_clip_norm=clip_norm,
            dp_noise_multiplier=z,
        )
        session = SecureRound(
            round_id,
            base_version,
            names,
            len(names),
            shared,
            phase_timeout_s=30.0,
            opened_ts=0.0,
            deadline_ts=1.0,
            unit_weights=self.dp is not None,
        )
        clients = {a: SecaggClient(a, task, rng=self.rng) for a in names}
        out: list = []
        for a in names:
            out += _taken(session.on_keys(a, _wire(a, clients[a].keys), 0.0))
        (roster,) = out
        assert isinstance(roster, PublishRoster)
        out = []
        for a in names:
            (shares,) = clients[a].on_roster(_wire(coordinator, roster.body))
            out += _taken(session.on_shares(a, _wire(a, shares), 0.0))
        for inbox in out:
            assert isinstance(inbox, PublishInbox)
            assert clients[inbox.agent_id].on_inbox(_wire(coordinator, inbox.body)) == []
        out = []
        for a, (delta, weight) in zip(names, updates, strict=True):
            w = 1 if self.unit_weights else int(weight)
            (masked,) = clients[a].set_delta([delta[n] for n in shared], w)
            assert isinstance(masked, SecaggMaskedBody)
            self.sent_bytes.append(len(message(a, masked)))
            out += _taken(session.on_masked(a, _wire(a, masked), 0.0))
        (unmask,) = out
        assert isinstance(unmask, PublishUnmask)
        out = []
        for a in names:
            (reveal,) = clients[a].on_unmask(_wire(coordinator, unmask.body))
            out += _taken(session.on_reveal(a, _wire(a, reveal), 0.0))
        (done,) = out
        assert isinstance(done, Finished), done
        acc = strategy.open_round(shared)
        merge_partial(acc, shared, done.partial)
        return acc.finish()


@dataclass
class PrivacyResult:
    config: FederationConfig
    plants: list[str]
    clip_norm: float
    delta: float
    noise_seed: int
    secure: bool = False  # distributed DP under secure aggregation
    # epsilon target (None: no DP; inf: clipping without noise) -> (noise multiplier,
    # epsilon the accountant reports, plant -> target -> test MAE, share of deltas the
    # clipping shrank)
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
                "no DP"
                if eps is None
                else "inf (no noise)"
                if math.isinf(eps)
                else f"{eps:g} ({reported:.2f})",
                "0" if eps is not None and math.isinf(eps) else "" if z is None else f"{z:.3g}",
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
    secure: bool = False,
) -> PrivacyResult:
    """The federated hybrid arm without DP and at each target epsilon (``inf``: clipping
    only); ``secure``: in secure rounds, the noise distributed among the plants."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plants = simulate(cfg)
        names = [p.name for p in plants]
        spec = ModelSpec(architecture="eaf-hybrid-v1")
        result = PrivacyResult(cfg, names, clip_norm, delta, noise_seed, secure)
        for eps in (None, *epsilons):
            clip_only = eps is not None and math.isinf(eps)
            z = None if eps is None or clip_only else noise_for_epsilon(eps, delta, cfg.rounds)
            rng = np.random.default_rng(noise_seed)
            norms: list[float] = []

            def hook(
                d: Weights,
                z: float | None = z,
                clip_only: bool = clip_only,
                rng: np.random.Generator = rng,
                norms: list[float] = norms,
            ) -> Weights:
                norms.append(l2_norm(d))
                if clip_only:
                    return clip(d, clip_norm)
                if z is None or secure:  # secure: the plants' clients noise it
                    return d
                return privatize(d, clip_norm, z, rng)

            channel: Channel
            if secure:
                channel = SecureChannel(
                    "raw",
                    cfg.update_topk_fraction,
                    names,
                    privatize=hook,
                    dp=None if z is None else (clip_norm, z),
                    rng=rng,
                    unit_weights=eps is not None,
                )
            else:
                channel = Channel("raw", cfg.update_topk_fraction, names, privatize=hook)
            try:
                shared, sites = federate(spec, cfg, plants, channel)
                mae = {
                    p.name: _mae(_predict(spec, shared, site or None, p.x_test), p.y_test)
                    for p, site in zip(plants, sites, strict=True)
                }
            except ValueError:  # a non-finite delta (no one sends it): training diverged
                mae = {p.name: {t: math.nan for t, _, _ in SHOWN} for p in plants}
            reported = math.inf if clip_only else None
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
    how = (
        "distributed DP under secure aggregation (each plant adds N(0, (z C)^2 / t), t "
        f"the threshold, {secagg.threshold_for(len(result.plants))} of "
        f"{len(result.plants)}; weight 1)"
        if result.secure
        else "differential privacy at the plants (local DP)"
    )
    lines = [
        f"{how}, user level: one plant = one "
        f"user, federated hybrid arm, seed {cfg.seed}, {cfg.rounds} rounds (one "
        f"update per plant per round); clip norm {result.clip_norm:g} (median delta "
        f"norm without DP {result.median_norm:.3g}), delta {result.delta:g}, noise "
        f"seed {result.noise_seed}; epsilon: target (reported by the accountant)"
    ]
    for target in ("energy_kwh_t", "cu_pct"):
        lines += ["", result.table(target)]
    lines.append(f"wall time: {result.wall_s:.1f} s")
    return "\n".join(lines)
