"""Calibrated uncertainty of a serving model, without I/O and without torch.

Split conformal prediction (Vovk et al. 2005; Angelopoulos & Bates 2021): the signed
residuals ``actual - predicted`` of the model on heats it never trained on are a sample of
its error on the next heat, whatever the model. An interval at level ``1 - alpha`` is
``[pred + r_lo, pred + r_hi]`` with ``r_lo`` and ``r_hi`` the residuals' alpha/2 and
1 - alpha/2 order statistics, taken with the finite-sample correction (the
``ceil((n + 1)(1 - alpha/2))``-th smallest): under exchangeability it covers the outcome
with probability at least ``1 - alpha``. Equal tails, not a symmetric ``|r|`` band,
because tap chemistry is skewed (a lot of copper-rich scrap pushes one way only).

A site keeps one :class:`Calibration` per serving model: reset on the held-out heats when
the model changes, then fed every new heat's prequential residual (predicted before it was
learned from), over a sliding window so it follows drift. The optimiser asks it for one
tail: :meth:`Calibration.upper_margin` and :meth:`Calibration.exceed_probability`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_LEVEL = 0.9
DEFAULT_WINDOW = 200


class Calibration:
    """Signed residuals of one serving model per target, newest last (module doc)."""

    def __init__(
        self,
        targets: Sequence[str],
        level: float = DEFAULT_LEVEL,
        window: int = DEFAULT_WINDOW,
        version: int | None = None,
    ) -> None:
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.targets = tuple(targets)
        self.level, self.window, self.version = level, window, version
        self._res = np.empty((0, len(self.targets)), np.float64)

    # -- feeding
    def reset(self, pred: np.ndarray, actual: np.ndarray, version: int | None = None) -> None:
        """A new serving model: its residuals on held-out heats replace the old model's."""
        self._res = np.empty((0, len(self.targets)), np.float64)
        self.version = version
        self.add(pred, actual)

    def add(self, pred: np.ndarray, actual: np.ndarray) -> None:
        """Residuals of heats the serving model predicted before learning from them."""
        r = np.atleast_2d(np.asarray(actual, np.float64) - np.asarray(pred, np.float64))
        if r.shape[1] != len(self.targets):
            raise ValueError(f"expected {len(self.targets)} targets, got {r.shape[1]}")
        r = r[np.isfinite(r).all(axis=1)]
        self._res = np.concatenate([self._res, r])[-self.window :]

    @property
    def n(self) -> int:
        return len(self._res)

    def copy(self) -> Calibration:
        """An independent snapshot (e.g. for another thread to read while this one grows)."""
        cal = Calibration(self.targets, self.level, self.window, self.version)
        cal._res = self._res.copy()
        return cal

    def residuals(self, target: str) -> np.ndarray:
        return self._res[:, self.targets.index(target)].copy()

    # -- asking
    def _order_stat(self, q: float) -> np.ndarray:
        """Per target, the finite-sample-corrected ``q`` quantile of the residuals:
        +inf (q above the sample's reach) or -inf (below) when too few heats."""
        n = self.n
        out = np.full(len(self.targets), math.inf if q >= 0.5 else -math.inf)
        if n == 0:
            return out
        k = math.ceil((n + 1) * q) if q >= 0.5 else math.floor((n + 1) * q)
        if 1 <= k <= n:
            out = np.sort(self._res, axis=0)[k - 1]
        return out

    def interval(
        self,
        pred: np.ndarray,
        level: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds for predictions ``pred`` ([batch, targets]) at ``level``
        (default: this calibration's); infinite where too few heats are held."""
        alpha = 1.0 - (self.level if level is None else level)
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"level must be in (0, 1), got {1.0 - alpha}")
        pred = np.atleast_2d(np.asarray(pred, np.float64))
        return pred + self._order_stat(alpha / 2), pred + self._order_stat(1 - alpha / 2)

    def upper_margin(self, target: str, risk: float) -> float:
        """How far above its prediction ``target`` stays with probability >= 1 - risk:
        the one-sided conformal bound (+inf if too few heats for this risk)."""
        if not 0.0 < risk < 1.0:
            raise ValueError(f"risk must be in (0, 1), got {risk}")
        return float(self._order_stat(1.0 - risk)[self.targets.index(target)])

    def exceed_probability(self, target: str, margin: float) -> float:
        """Conformal estimate of P(actual > predicted + margin): (k + 1) / (n + 1) with k
        the residuals above ``margin``; 1.0 with no residuals."""
        r = self.residuals(target)
        return float((np.count_nonzero(r > margin) + 1) / (len(r) + 1))

    # -- files and messages (plain JSON: any language can read it)
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "level": self.level,
            "window": self.window,
            "targets": list(self.targets),
            "residuals": {t: self._res[:, i].tolist() for i, t in enumerate(self.targets)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        cal = cls(data["targets"], float(data["level"]), int(data["window"]), data["version"])
        cols = [np.asarray(data["residuals"][t], np.float64) for t in cal.targets]
        if len({len(c) for c in cols}) > 1:
            raise ValueError("calibration residuals differ in length between targets")
        cal._res = (
            np.stack(cols, axis=1) if cols and len(cols[0]) else np.empty((0, len(cal.targets)))
        )[-cal.window :]
        return cal
