"""Weights as named numpy arrays in a stable order: the unit of aggregation and transport.

Only trainable parameters travel; normalisation buffers are fixed by the spec.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from models.regressor import HeatRegressor

Weights = dict[str, np.ndarray]


def get_weights(model: HeatRegressor) -> Weights:
    """Copies of the parameters as float32 arrays, in registration order."""
    return {
        name: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, p in model.named_parameters()
    }


def set_weights(model: HeatRegressor, weights: Mapping[str, np.ndarray]) -> None:
    """Load weights; names and shapes must match the model exactly."""
    params = dict(model.named_parameters())
    if list(weights) != list(params):
        raise ValueError(f"weight names {list(weights)} do not match model {list(params)}")
    with torch.no_grad():
        for name, p in params.items():
            arr = np.asarray(weights[name], dtype=np.float32)
            if arr.shape != tuple(p.shape):
                raise ValueError(f"{name}: shape {arr.shape} != {tuple(p.shape)}")
            p.copy_(torch.from_numpy(arr.copy()))


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Weights:
    return {k: (a[k] - b[k]).astype(np.float32) for k in a}
