"""The torch heat-outcome models (agent training and coordinator export only): the MLP
``mlp-v1`` here, the physics-structured ``eaf-hybrid-v1`` in ``models.hybrid``."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from alchimia.models.hybrid import EafHybrid
from alchimia.models.initial import initial_weights
from alchimia.models.params import set_weights
from alchimia.models.spec import ModelSpec


class HeatRegressor(nn.Module):
    """MLP from raw engineering units to raw engineering units.

    Normalisation constants are buffers, so the exported ONNX graph takes and returns
    physical values and a consumer needs no preprocessing code.
    """

    # Buffers registered in __init__, declared for the type checker.
    x_center: torch.Tensor
    x_scale: torch.Tensor
    y_center: torch.Tensor
    y_scale: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("x_center", torch.tensor(spec.x_center, dtype=torch.float32))
        self.register_buffer("x_scale", torch.tensor(spec.x_scale, dtype=torch.float32))
        self.register_buffer("y_center", torch.tensor(spec.y_center, dtype=torch.float32))
        self.register_buffer("y_scale", torch.tensor(spec.y_scale, dtype=torch.float32))
        sizes = (len(spec.features), *spec.hidden, len(spec.targets))
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.layers = nn.Sequential(*layers[:-1])

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Output in normalised target units: what the training loss compares."""
        return self.layers((x - self.x_center) / self.x_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalized(x) * self.y_scale + self.y_center

    def normalize_targets(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_center) / self.y_scale


HeatModel = HeatRegressor | EafHybrid


def build_model(spec: ModelSpec, seed: int = 0) -> HeatModel:
    """A model of the spec's architecture holding ``models.initial.initial_weights(spec,
    seed)``: the values a coordinator starts a federation from, the same everywhere.
    Site tensors start at zero (the federation's physics)."""
    gen_state = torch.random.get_rng_state()  # module constructors draw from it
    try:
        model = EafHybrid(spec) if spec.architecture == "eaf-hybrid-v1" else HeatRegressor(spec)
    finally:
        torch.random.set_rng_state(gen_state)
    set_weights(model, initial_weights(spec, seed))
    set_weights(model, initial_weights(spec, seed, "site"), "site")
    return model
