"""Champion/challenger on site, without I/O: may a new global model serve predictions?

A new global version (the challenger) is scored against the serving model (the champion)
on the plant's latest heats before it serves. One clearly worse is kept out: it still
becomes the base of the next local training (the federation goes on), but this site
keeps predicting with its champion until a better version arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Verdict:
    swap: bool
    reason: str
    champion_error: float | None = None
    challenger_error: float | None = None


def scaled_error(pred: np.ndarray, actual: np.ndarray, y_scale: np.ndarray) -> float:
    """Mean over targets of MAE / reference scale: one number across different units."""
    return float((np.abs(pred - actual).mean(axis=0) / y_scale).mean())


def judge(
    champion: np.ndarray,
    challenger: np.ndarray,
    actual: np.ndarray,
    y_scale: np.ndarray,
    tolerance: float,
    min_heats: int,
) -> Verdict:
    """Swap unless the challenger's error exceeds the champion's by more than ``tolerance``
    (a fraction) on at least ``min_heats`` recent heats."""
    if len(actual) < min_heats:
        return Verdict(True, f"only {len(actual)} recent heats (< {min_heats}) to judge on")
    old = scaled_error(champion, actual, y_scale)
    new = scaled_error(challenger, actual, y_scale)
    if new > old * (1 + tolerance):
        return Verdict(
            False,
            f"error {new:.4f} vs serving {old:.4f} on {len(actual)} heats "
            f"exceeds the tolerance of {tolerance:.0%}",
            old,
            new,
        )
    return Verdict(True, f"error {new:.4f} vs serving {old:.4f}", old, new)
