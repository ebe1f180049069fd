"""Client-level differential privacy at the agent: clip the shared delta, add Gaussian noise.

When the task carries ``dp_clip_norm`` (C) and ``dp_noise_multiplier`` (z), the agent
scales its whole shared delta down to L2 norm at most C (all tensors together: one
plant's update is one record) and adds independent N(0, (z C)^2) noise to every
coordinate, before the codec and its error feedback (``compression.py``): what leaves the
site is already private, and the residual the codec keeps is computed from it
(post-processing).

Local DP: each agent adds the full noise, so the guarantee holds against the coordinator
and the broker too, without trusting anyone. The price: the coordinator's mean of K
updates carries noise of std z C / sqrt(K) per coordinate (sample-weighted: more where
weights are unequal), where central DP (one trusted aggregator) would carry z C / K.
With five plants that is sqrt(5) ~ 2.2 times the noise of central DP for the same
epsilon (docs/FEDERATION.md, "Differential privacy").

Distributed DP, in a secure round (``agent/secagg_client.py``): the same clipping, but
each agent adds only N(0, (z C)^2 / t), t being the round's threshold, with weight 1;
the coordinator sees only the sum of at least t such updates, which carries at least
z C (``privatize``'s ``shares``).

Noise goes on every coordinate, also on those this site did not train (an exact 0 would
say which grades a plant never charges): so with DP every coordinate counts as trained in
the mean-based strategies' submodel averaging.

The noise comes from a numpy Generator seeded from the operating system's entropy; a
fixed seed would make the noise removable by anyone who knows it.
"""

from __future__ import annotations

import math

import numpy as np

from alchimia.models.params import Weights


def l2_norm(delta: Weights) -> float:
    """L2 norm of all tensors of ``delta`` together (in float64)."""
    return math.sqrt(
        sum(
            float(np.dot(v.ravel().astype(np.float64), v.ravel().astype(np.float64)))
            for v in delta.values()
        )
    )


def clip(delta: Weights, clip_norm: float) -> Weights:
    """``delta`` scaled down so that its L2 norm is at most ``clip_norm`` (unchanged when it
    already is)."""
    if not clip_norm > 0:
        raise ValueError(f"clip norm must be positive, got {clip_norm}")
    norm = l2_norm(delta)
    # float32 rounding may leave the scaled norm a hair above the bound: aim just below it.
    scale = 1.0 if norm <= clip_norm else clip_norm / norm * (1 - 1e-6)
    return {k: (v * scale).astype(np.float32) for k, v in delta.items()}


def privatize(
    delta: Weights,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    shares: int = 1,
) -> Weights:
    """The clipped delta plus N(0, (noise_multiplier * clip_norm)^2 / shares) on every
    coordinate. ``shares`` > 1: this agent's part of noise distributed under secure
    aggregation, where the coordinator sees only the sum of at least ``shares`` such
    updates, whose noise together has std at least noise_multiplier * clip_norm
    (``agent/secagg_client.py``; docs/FEDERATION.md, "Differential privacy")."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise multiplier must be positive, got {noise_multiplier}")
    if not shares >= 1:
        raise ValueError(f"the noise is shared among at least 1 agent, not {shares}")
    sigma = noise_multiplier * clip_norm / math.sqrt(shares)
    return {
        k: (v + sigma * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in clip(delta, clip_norm).items()
    }


def entropy_rng() -> np.random.Generator:
    """A Generator seeded from the operating system's entropy (never a fixed seed)."""
    return np.random.default_rng()


class UpdatePrivatizer:
    """What the agent calls on each delta before encoding it: applies the task's DP
    parameters when it has them, else passes the delta through."""

    def __init__(self, rng: np.random.Generator | None = None) -> None:
        self.rng = rng if rng is not None else entropy_rng()

    def apply(
        self, delta: Weights, clip_norm: float | None, noise_multiplier: float | None
    ) -> Weights:
        if clip_norm is None or noise_multiplier is None:
            return delta
        return privatize(delta, clip_norm, noise_multiplier, self.rng)
