"""The planned power-on time of a heat that has not been melted yet, without torch.

``power_on_min`` is a model input, but for a heat being planned (an optimised charge, a
what-if from the HMI) it is an outcome: the arc runs until the charge is melted, so
power-on time = electrical energy needed / furnace power. The heat model cannot supply it
(its energy prediction leans on power-on time: asking it would go round in a circle), so
a site estimates it the way its melt shop plans it, from its own heats: a least-squares
line in the tonnes charged per grade (each grade's melting energy over the furnace's
power) and the process plan. ``fill`` puts the estimate into planned rows whose
power-on time is unknown (NaN).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TARGET = "power_on_min"
RIDGE = 1e-6  # relative: only keeps the solve defined when a grade is never charged


class PowerOnEstimate:
    """``power_on_min ~ b0 + sum_f b_f x_f`` over every other input column."""

    def __init__(
        self,
        features: Sequence[str],
        coef: Sequence[float] | np.ndarray,
        intercept: float,
        rmse: float,
        n: int,
    ) -> None:
        self.features = tuple(features)
        if TARGET not in self.features:
            raise ValueError(f"the model's inputs have no {TARGET} column")
        self.coef = np.asarray(coef, np.float64)
        if self.coef.shape != (len(self.features),):
            raise ValueError("one coefficient per feature needed")
        self.intercept, self.rmse, self.n = float(intercept), float(rmse), int(n)
        self.col = self.features.index(TARGET)

    @classmethod
    def fit(cls, x: np.ndarray, features: Sequence[str]) -> PowerOnEstimate:
        """Least squares on a site's heats ``x`` ([heats, features], raw units)."""
        features = tuple(features)
        x = np.asarray(x, np.float64)
        if len(x) < 2:
            raise ValueError("need at least 2 heats to estimate power-on time")
        col = features.index(TARGET)
        y = x[:, col]
        a = np.delete(x, col, axis=1)
        mean, scale = a.mean(axis=0), a.std(axis=0)
        scale[scale == 0] = 1.0
        z = (a - mean) / scale
        lhs = z.T @ z + RIDGE * len(z) * np.eye(z.shape[1])
        beta = np.linalg.solve(lhs, z.T @ (y - y.mean()))
        coef_other = beta / scale
        intercept = float(y.mean() - mean @ coef_other)
        coef = np.insert(coef_other, col, 0.0)
        rmse = float(np.sqrt(np.mean((a @ coef_other + intercept - y) ** 2)))
        return cls(features, coef, intercept, rmse, len(x))

    def estimate(self, x: np.ndarray) -> np.ndarray:
        """Planned power-on minutes for rows ``x`` (their own power-on column ignored)."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        other = x.copy()
        other[:, self.col] = 0.0
        return other @ self.coef + self.intercept

    def fill(self, x: np.ndarray) -> np.ndarray:
        """``x`` with every NaN power-on time replaced by the estimate (a copy)."""
        x = np.array(x, np.float64, ndmin=2)
        missing = np.isnan(x[:, self.col])
        if missing.any():
            x[missing, self.col] = self.estimate(x[missing])
        return x

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "rmse": self.rmse,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PowerOnEstimate:
        return cls(data["features"], data["coef"], data["intercept"], data["rmse"], data["n"])
