"""Elastic weight consolidation (Kirkpatrick et al., 2017), diagonal form.

Training on new heats moves every weight; EWC charges for moving the weights that the old
heats depend on, and lets the others go. The price of weight i is its Fisher information
F_i on old (replay) rows: penalty = lambda / 2 * sum_i F_i (w_i - w*_i)^2, with w* the
weights the old knowledge lives in (the base model of the round).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap

from alchimia.models.params import Weights, set_weights
from alchimia.models.regressor import HeatModel, build_model
from alchimia.models.spec import ModelSpec


def fisher_diagonal(
    spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray, chunk: int = 256
) -> Weights:
    """Diagonal Fisher of the training loss at ``weights``, averaged over the rows of ``x``.

    For the Gaussian likelihood behind the MSE loss it is the Gauss-Newton matrix,
    (2 / n_targets) * sum_k (d f_k / d w)^2 with f in normalised target units: exactly the
    curvature of ``train_delta``'s per-row loss, so lambda = 1 makes the anchor weigh as
    much as one training set of new rows. It needs no outcomes.
    """
    if len(x) == 0:
        raise ValueError("no rows to estimate the Fisher information from")
    model = build_model(spec)
    set_weights(model, weights)
    named = dict(model.named_parameters())
    params = {k: named[k].detach() for k in spec.parameter_shapes()}  # the shared part
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    y_scale = model.y_scale

    def out(p: dict[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
        raw = functional_call(model, (p, buffers), (row[None],))[0]
        return raw / y_scale  # d(normalised output) = d(raw output) / scale

    per_row = vmap(jacrev(out), in_dims=(None, 0))
    xs = torch.from_numpy(np.asarray(x, np.float32))
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    with torch.no_grad():
        for lo in range(0, len(xs), chunk):
            jac = per_row(params, xs[lo : lo + chunk])  # name -> [rows, targets, *shape]
            for k, j in jac.items():
                total[k] += (j**2).sum(dim=(0, 1))
    scale = 2.0 / (len(spec.targets) * len(xs))
    return {k: (v * scale).numpy().astype(np.float32) for k, v in total.items()}


class EwcPenalty:
    """lambda / 2 * sum F (w - w*)^2 over every trainable tensor."""

    def __init__(
        self, anchor: Mapping[str, np.ndarray], fisher: Mapping[str, np.ndarray], lam: float
    ) -> None:
        if list(anchor) != list(fisher):
            raise ValueError("anchor and Fisher must name the same tensors in the same order")
        if lam < 0 or not np.isfinite(lam):
            raise ValueError(f"lambda must be finite and >= 0, got {lam!r}")
        self.lam = float(lam)
        self.anchor = {k: np.asarray(v, np.float32) for k, v in anchor.items()}
        self.fisher = {k: np.asarray(v, np.float32) for k, v in fisher.items()}
        self._t_anchor = [torch.from_numpy(v.copy()) for v in self.anchor.values()]
        self._t_fisher = [torch.from_numpy(v.copy()) for v in self.fisher.values()]

    def value(self, weights: Mapping[str, np.ndarray]) -> float:
        """The penalty of plain weights (for checks and metrics)."""
        if list(weights) != list(self.anchor):
            raise ValueError("weights do not match the anchor")
        total = sum(
            float((f * (np.asarray(weights[k], np.float64) - a) ** 2).sum())
            for (k, a), f in zip(self.anchor.items(), self.fisher.values(), strict=True)
        )
        return 0.5 * self.lam * total

    def __call__(self, model: HeatModel) -> torch.Tensor:
        """The penalty of a model's parameters, differentiable."""
        params = dict(model.named_parameters())
        terms = [
            (f * (params[k] - a) ** 2).sum()
            for k, a, f in zip(self.anchor, self._t_anchor, self._t_fisher, strict=True)
        ]
        return 0.5 * self.lam * torch.stack(terms).sum()
