"""The agent's local table of finished heats, split into training and validation rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class HeatTable:
    """Growing arrays of heat inputs and outcomes in the model's column order.

    Every ``val_every``-th heat goes to validation, so both sets cover the same period
    and drift shows in both.
    """

    def __init__(
        self,
        features: Sequence[str],
        targets: Sequence[str],
        val_every: int = 5,
        max_val: int = 500,
    ) -> None:
        self.features, self.targets = tuple(features), tuple(targets)
        self.val_every, self.max_val = val_every, max_val
        self._train_x: list[np.ndarray] = []
        self._train_y: list[np.ndarray] = []
        self._val_x: list[np.ndarray] = []
        self._val_y: list[np.ndarray] = []
        self.seen = 0

    def row(self, inputs: Mapping[str, float]) -> np.ndarray:
        return np.array([inputs[f] for f in self.features], np.float32)

    def outcome_row(self, outcome: Mapping[str, float]) -> np.ndarray:
        return np.array([outcome[t] for t in self.targets], np.float32)

    def add(self, inputs: Mapping[str, float], outcome: Mapping[str, float]) -> bool:
        """File one heat; True if it became a training row, False if a validation row."""
        x = self.row(inputs)
        y = self.outcome_row(outcome)
        self.seen += 1
        if self.seen % self.val_every == 0:
            self._val_x.append(x)
            self._val_y.append(y)
            del self._val_x[: -self.max_val], self._val_y[: -self.max_val]
            return False
        self._train_x.append(x)
        self._train_y.append(y)
        return True

    @staticmethod
    def _stack(rows: list[np.ndarray], width: int) -> np.ndarray:
        return np.stack(rows) if rows else np.empty((0, width), np.float32)

    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self._stack(self._train_x, len(self.features)),
            self._stack(self._train_y, len(self.targets)),
        )

    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self._stack(self._val_x, len(self.features)),
            self._stack(self._val_y, len(self.targets)),
        )

    @property
    def n_train(self) -> int:
        return len(self._train_x)
