"""Weights as named numpy arrays in a stable order: the unit of aggregation and transport.

Only trainable parameters travel, and of those only the ``shared`` part (the spec says
which tensors are shared and which stay at the site); normalisation buffers are fixed by
the spec.

Torch-free to import (the coordinator and consumers use ``Weights``, ``add`` and
``subtract``); the functions that move weights in and out of a torch module import torch
when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from alchimia.models.spec import ModelSpec, Part

if TYPE_CHECKING:
    from alchimia.models.regressor import HeatModel

Weights = dict[str, np.ndarray]


def get_weights(model: HeatModel, part: Part = "shared") -> Weights:
    """Copies of one part's parameters as float32 arrays, in the spec's order."""
    params = dict(model.named_parameters())
    return {
        name: params[name].detach().cpu().numpy().astype(np.float32, copy=True)
        for name in model.spec.parameter_shapes(part)
    }


def set_weights(model: HeatModel, weights: Mapping[str, np.ndarray], part: Part = "shared") -> None:
    """Load one part's weights; names and shapes must match the spec exactly."""
    shapes = model.spec.parameter_shapes(part)
    if list(weights) != list(shapes):
        raise ValueError(f"{part} weight names {list(weights)} do not match model {list(shapes)}")
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, shape in shapes.items():
            arr = np.asarray(weights[name], dtype=np.float32)
            if arr.shape != shape:
                raise ValueError(f"{name}: shape {arr.shape} != {shape}")
            params[name].copy_(torch.from_numpy(arr.copy()))


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Weights:
    return {k: (a[k] - b[k]).astype(np.float32) for k in a}


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Weights:
    return {k: (a[k] + b[k]).astype(np.float32) for k in a}


def compose(
    spec: ModelSpec, shared: Mapping[str, np.ndarray], site: Mapping[str, np.ndarray] | None = None
) -> HeatModel:
    """A model of ``spec`` holding the shared weights and, given, a site's own tensors
    (else the site part's initial zeros: the federation's model as such)."""
    from alchimia.models.regressor import build_model

    model = build_model(spec)
    set_weights(model, shared)
    if site is not None:
        set_weights(model, site, "site")
    return model.eval()
