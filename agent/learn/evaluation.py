"""Error figures of a model on local heats, in engineering units."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mae_by_target(pred: np.ndarray, actual: np.ndarray, targets: Sequence[str]) -> dict[str, float]:
    """Mean absolute error per target column."""
    err = np.abs(np.asarray(pred, np.float64) - np.asarray(actual, np.float64)).mean(axis=0)
    return {f"mae_{t}": float(e) for t, e in zip(targets, err, strict=True)}
