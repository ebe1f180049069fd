"""A new federation's first weights, from a seed, without torch.

The coordinator starts every federation from these (it has no torch); the torch modules
(``models.regressor.build_model``) load the same values, so an experiment and a live
federation start alike. Dense layers follow torch's ``nn.Linear`` default (uniform in
+-1/sqrt(fan_in) for weights and biases); the hybrid's tensors start at zero (pure physics
from its priors) except the residual network's hidden layers, whose output layer is zero
so the residual starts at nothing.
"""

from __future__ import annotations

import numpy as np

from alchimia.models.spec import ModelSpec, Part


def initial_weights(
    spec: ModelSpec,
    seed: int = 0,
    part: Part = "shared",
) -> dict[str, np.ndarray]:
    """One part's initial tensors, in the spec's order; the same seed, the same values."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A17]))
    parts = spec.tensor_parts()
    values = {name: np.zeros(shape, np.float32) for name, (shape, _) in parts.items()}
    n = len(spec.hidden)
    random_layers = (
        [(f"residual_w{i}", f"residual_b{i}") for i in range(n)]
        if spec.architecture == "eaf-hybrid-v1"
        else [(f"layers.{2 * i}.weight", f"layers.{2 * i}.bias") for i in range(n + 1)]
    )
    for weight, bias in random_layers:
        bound = 1.0 / np.sqrt(values[weight].shape[1])
        for name in (weight, bias):
            values[name] = rng.uniform(-bound, bound, values[name].shape).astype(np.float32)
    return {name: v for name, v in values.items() if parts[name][1] == part}
