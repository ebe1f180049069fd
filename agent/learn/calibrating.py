"""The site's calibration of its serving model, without I/O and without torch: one object
that the agent (``agent.service``) and ``alchimia experiment calibration`` both drive.

:class:`SiteCalibrator` keeps a :class:`models.calibration.Calibration` (split conformal,
equal tails, sliding window) for whatever model the site serves now:

* **held-out heats**: the site's validation heats (never trained on), newest last, with
  their heat counts (1-based, as ``SiteLearner`` counts);
* **reset** when the serving model changes (a new global version, a site re-fit): the
  new model's residuals on the held-out heats of the current regime (the regime the site
  learner runs: since its last drift detection), or on the newest ``min_reset_heats``
  held-out heats when the regime holds fewer; a model is never calibrated on heats it
  trained on, and after a drift the old regime's heats leave the calibration as soon as
  the new regime has enough of its own. While the held-out heats are fewer than the
  window (a young site, a young regime), the newest residuals of the stream fill it up:
  other heats of the current regime as they were predicted before their outcome was
  known, by the models served then (a fifth of the heats are held out, so without them
  a calibration would hold 40 residuals where the stream has 200: intervals from so few
  residuals scatter by several points of coverage);
* **observe**: every new heat's residual, predicted before its outcome was known, joins
  the window; the interval issued for that heat before the outcome is scored
  (empirical coverage per target over the latest ``window`` heats).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from alchimia.models.calibration import DEFAULT_LEVEL, DEFAULT_WINDOW, Calibration

MIN_RESET_HEATS = 40  # held-out heats a reset uses at least (older regimes fill in)


def min_heats(level: float) -> int:
    """Fewest residuals that give a finite equal-tailed interval at ``level`` (the order
    statistics of ``Calibration.interval``, in its floating-point arithmetic)."""
    alpha = 1.0 - level
    n = max(1, math.floor(2.0 / alpha) - 2)
    while not (
        math.ceil((n + 1) * (1 - alpha / 2)) <= n and math.floor((n + 1) * (alpha / 2)) >= 1
    ):
        n += 1
    return n


class Coverage:
    """Did the issued intervals hold the outcomes? Per target, over the latest heats."""

    def __init__(self, targets: Sequence[str], window: int) -> None:
        self.targets = tuple(targets)
        self._hits: deque[np.ndarray] = deque(maxlen=window)
        self.total = 0  # heats scored since the start
        self._total_hits = np.zeros(len(self.targets), np.int64)

    def add(self, actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        """Score one batch ([heats, targets]); heats without a finite interval are skipped."""
        actual, lower, upper = (
            np.atleast_2d(np.asarray(a, np.float64)) for a in (actual, lower, upper)
        )
        bounded = np.isfinite(lower).all(axis=1) & np.isfinite(upper).all(axis=1)
        hits = (actual >= lower) & (actual <= upper)
        for row in hits[bounded]:
            self._hits.append(row)
        self.total += int(bounded.sum())
        self._total_hits += hits[bounded].sum(axis=0)

    @property
    def n(self) -> int:
        return len(self._hits)

    def recent(self) -> np.ndarray:
        """Coverage per target over the latest heats (NaN when none was scored)."""
        if not self._hits:
            return np.full(len(self.targets), np.nan)
        return np.mean(np.stack(self._hits), axis=0)

    def overall(self) -> np.ndarray:
        if self.total == 0:
            return np.full(len(self.targets), np.nan)
        return self._total_hits / self.total


class SiteCalibrator:
    """Calibration of the site's serving model (module doc)."""

    def __init__(
        self,
        targets: Sequence[str],
        level: float = DEFAULT_LEVEL,
        window: int = DEFAULT_WINDOW,
        min_reset_heats: int = MIN_RESET_HEATS,
    ) -> None:
        self.calibration = Calibration(targets, level, window)
        self.targets = self.calibration.targets
        self.level, self.window = level, window
        self.min_reset_heats = max(1, min(min_reset_heats, window))
        self._held_out: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=window)
        self._stream: deque[tuple[int, np.ndarray]] = deque(maxlen=window)  # (count, residual)
        self._count = 0  # count of the latest heat observed
        self.coverage = Coverage(targets, window)
        self.resets = 0
        self.added = 0  # residuals added since the start (savers compare it)

    # -- feeding
    def hold_out(self, count: int, x: np.ndarray, y: np.ndarray) -> None:
        """A validation heat (never trained on): what the next reset calibrates on."""
        self._held_out.append((count, np.asarray(x, np.float32), np.asarray(y, np.float32)))

    @property
    def held_out(self) -> int:
        return len(self._held_out)

    def reset(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        version: int | None = None,
        regime_start: int = 1,
    ) -> int:
        """A new serving model (``predict``: raw inputs to raw outputs): recalibrate on the
        held-out heats (module doc). Returns how many it used."""
        rows = [r for r in self._held_out if r[0] >= regime_start]
        if len(rows) < self.min_reset_heats:
            rows = list(self._held_out)[-self.min_reset_heats :]
        width = len(self.targets)
        if rows:
            x, y = np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])
            pred = np.asarray(predict(x), np.float64)
        else:
            pred = y = np.empty((0, width))
        used = {r[0] for r in rows}
        fill = [r for c, r in self._stream if c >= regime_start and c not in used]
        fill = fill[len(fill) - (self.window - len(rows)) :] if len(rows) < self.window else []
        if fill:  # oldest first: the first to leave the window as new heats come
            stream = np.stack(fill)
            pred = np.concatenate([np.zeros_like(stream), pred])
            y = np.concatenate([stream, y])
        self.calibration.reset(pred, y, version)
        self.resets += 1
        return len(rows)

    def interval(
        self,
        pred: np.ndarray,
        level: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bounds for predictions ``pred`` ([heats, targets]); infinite while too few heats."""
        return self.calibration.interval(pred, level)

    def observe(
        self,
        pred: np.ndarray,
        actual: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        counts: Sequence[int] | None = None,
    ) -> None:
        """New heats' outcomes: score the intervals issued before them, then add their
        residuals (``pred`` was made before the outcome was known). ``counts``: the heats'
        counts (default: the ones after the latest observed)."""
        pred = np.atleast_2d(np.asarray(pred, np.float64))
        actual = np.atleast_2d(np.asarray(actual, np.float64))
        self.coverage.add(actual, lower, upper)
        self.calibration.add(pred, actual)
        if counts is None:
            counts = range(self._count + 1, self._count + 1 + len(pred))
        for c, r in zip(counts, actual - pred, strict=True):
            if np.isfinite(r).all():
                self._stream.append((c, r))
            self._count = max(self._count, c)
        self.added += len(pred)

    # -- reporting
    def values(self) -> dict[str, float]:
        """Figures of the ``calibration`` metrics scope (docs/PROTOCOL.md)."""
        out: dict[str, float] = {
            "level": self.level,
            "n": float(self.calibration.n),
            "heats": float(self.coverage.n),
        }
        recent = self.coverage.recent()
        lo, hi = self.calibration.interval(np.zeros((1, len(self.targets))))
        for j, t in enumerate(self.targets):
            if np.isfinite(recent[j]):
                out[f"coverage_{t}"] = float(recent[j])
            if np.isfinite(lo[0, j]) and np.isfinite(hi[0, j]):
                out[f"width_{t}"] = float(hi[0, j] - lo[0, j])
        return out


__all__ = ["MIN_RESET_HEATS", "Coverage", "SiteCalibrator", "min_heats"]
