"""Test-then-train bookkeeping of one site, without I/O: prequential error, drift
detection on errors and inputs, and the replay buffer that local training mixes in.

The agent feeds it every new heat (its features, its outcome, and the prediction the
serving model made before the outcome was known) and acts on what it reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.continual import ErrorDriftMonitor, InputDriftMonitor, Prequential, RegimeReplayBuffer


@dataclass(frozen=True)
class DriftEvent:
    error_targets: tuple[str, ...]  # targets whose prediction error rose (Page-Hinkley)
    input_features: tuple[str, ...]  # features whose distribution moved (PSI)

    def values(self) -> dict[str, float]:
        """Figures for the ``drift`` metrics message."""
        out = {f"error_{t}": 1.0 for t in self.error_targets}
        out.update({f"input_{f}": 1.0 for f in self.input_features})
        return out


class SiteLearner:
    def __init__(self, features: Sequence[str], targets: Sequence[str],
                 y_scale: Sequence[float], *, window: int = 50, replay_capacity: int = 500,
                 input_reference: int = 500, input_window: int = 200, seed: int = 0) -> None:
        self.prequential = Prequential(targets, window)
        self.errors = ErrorDriftMonitor(targets, y_scale)
        self.inputs = InputDriftMonitor(features, input_reference, input_window)
        self.replay = RegimeReplayBuffer(replay_capacity, seed)
        self.observed = 0
        self.drift_at: list[int] = []  # heat counts (1-based) at which drift was detected

    def observe(self, x: np.ndarray, y: np.ndarray, pred: np.ndarray | None, *,
                learn: bool = True) -> DriftEvent | None:
        """Score the prediction made before the outcome, then remember the heat for replay
        unless ``learn`` is False (a validation heat: scored, watched, never trained on)."""
        self.observed += 1
        fired_errors = None
        if pred is not None:
            self.prequential.update(pred, y)
            fired_errors = self.errors.update(pred, y)
        fired_inputs = self.inputs.update(x)
        if learn:
            self.replay.add(x, y)
        if not fired_errors and not fired_inputs:
            return None
        self.drift_at.append(self.observed)
        self.replay.new_regime()  # keep the old regime's rows apart, with their share
        return DriftEvent(tuple(fired_errors or ()), tuple(fired_inputs or ()))

    @property
    def drift_events(self) -> int:
        return len(self.drift_at)

    def replay_rows(self, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows of earlier regimes to train on beside the recent heats (None if empty)."""
        if len(self.replay) == 0:
            return None
        return self.replay.sample(n)
