"""Prequential (test-then-train) error: every heat is scored before it is learned from.

On a stream no row is ever both training and test data, so the running error is an honest
estimate of what a plant sees in production, and the recent-window error shows a drift
that the all-time average would dilute.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np


def _as_row(
    values: Mapping[str, float] | Sequence[float] | np.ndarray, targets: tuple[str, ...]
) -> np.ndarray:
    if isinstance(values, Mapping):
        return np.array([values[t] for t in targets], np.float64)
    row = np.asarray(values, np.float64).reshape(-1)
    if row.shape != (len(targets),):
        raise ValueError(f"expected {len(targets)} values, got shape {row.shape}")
    return row


class Prequential:
    """Mean absolute error per target, overall and over the last ``window`` heats."""

    def __init__(self, targets: Sequence[str], window: int = 50) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.targets = tuple(targets)
        self.window = window
        self.n = 0
        self._sum = np.zeros(len(self.targets))
        self._recent: deque[np.ndarray] = deque(maxlen=window)

    def update(
        self,
        pred: Mapping[str, float] | Sequence[float] | np.ndarray,
        actual: Mapping[str, float] | Sequence[float] | np.ndarray,
    ) -> None:
        """Score one heat; mappings are read by target name, arrays in target order."""
        err = np.abs(_as_row(pred, self.targets) - _as_row(actual, self.targets))
        if not np.isfinite(err).all():
            raise ValueError("prediction and outcome must be finite")
        self.n += 1
        self._sum += err
        self._recent.append(err)

    def snapshot(self) -> dict[str, float]:
        """``n``, ``mae_{target}`` (all heats) and ``mae_recent_{target}`` (last window).

        NaN for the error figures before the first heat.
        """
        out: dict[str, float] = {"n": float(self.n)}
        overall = self._sum / self.n if self.n else np.full(len(self.targets), np.nan)
        recent = (
            np.mean(self._recent, axis=0) if self._recent else np.full(len(self.targets), np.nan)
        )
        for t, a, r in zip(self.targets, overall, recent, strict=True):
            out[f"mae_{t}"] = float(a)
            out[f"mae_recent_{t}"] = float(r)
        return out
