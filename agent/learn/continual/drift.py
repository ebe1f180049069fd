"""Drift detectors, sans-I/O: feed values, get a verdict; no clocks, threads or logging.

Two kinds, because a plant's model goes stale in two ways (EAF.md, "Why models drift"):

* the **error stream** rises: the relation from inputs to outcomes changed (a supplier
  change leaves the charge plan as it was but moves Cu and yield). ``PageHinkley`` watches
  one scalar stream; ``ErrorDriftMonitor`` runs one per target.
* the **inputs** move: a new mix, HBI share or practice. ``InputDriftMonitor`` compares a
  reference window with a recent window per feature (population stability index). It
  needs no outcomes, so it can warn before the first chemistry comes back, but it is
  blind to drift that leaves the inputs alone.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np


class StreamDetector(Protocol):
    def update(self, value: float) -> bool: ...

    def reset(self) -> None: ...


class PageHinkley:
    """Page-Hinkley test for an increase of the mean, in units of the stream's own spread.

    Each value is standardised with the running mean and standard deviation since the last
    reset, so the defaults hold for any error scale. ``delta`` is the allowance: increases
    smaller than ``delta`` standard deviations are ignored (0.5 tunes the test to shifts of
    about one standard deviation, the CUSUM rule k = shift / 2). ``threshold`` bounds the
    cumulative excess: at 20, stationary half-normal, exponential and lognormal (sigma 0.7)
    streams (absolute errors are right-skewed) raised no alarm in 5 x 20,000 values, while
    a one-sigma step is caught after a median 48 values and a three-sigma step after 8
    (threshold 15 fires about twice as fast, and once per ~10,000 lognormal values). The
    first ``min_instances`` values only estimate mean and spread. After a detection the
    test resets; ``change_lag`` then says how many values back the increase most likely
    began (the argmin of the cumulative sum, the classic change-point estimate).
    """

    def __init__(
        self, delta: float = 0.5, threshold: float = 20.0, min_instances: int = 30
    ) -> None:
        if delta < 0 or threshold <= 0 or min_instances < 2:
            raise ValueError("need delta >= 0, threshold > 0 and min_instances >= 2")
        self.delta, self.threshold, self.min_instances = delta, threshold, min_instances
        self.change_lag: int | None = None
        self.detections = 0
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._cum = 0.0
        self._cum_min = 0.0
        self._argmin = 0

    @property
    def statistic(self) -> float:
        """Current cumulative excess over its minimum; fires above ``threshold``."""
        return self._cum - self._cum_min

    def update(self, value: float) -> bool:
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"value must be finite, got {value!r}")
        self.n += 1
        d = x - self._mean
        self._mean += d / self.n
        self._m2 += d * (x - self._mean)
        if self.n < self.min_instances:
            self._argmin = self.n
            return False
        sd = math.sqrt(self._m2 / (self.n - 1))
        z = (x - self._mean) / sd if sd > 0 else 0.0
        self._cum += z - self.delta
        if self._cum < self._cum_min:
            self._cum_min, self._argmin = self._cum, self.n
        if self._cum - self._cum_min > self.threshold:
            self.change_lag = self.n - self._argmin
            self.detections += 1
            self.reset()
            return True
        return False


class ErrorDriftMonitor:
    """One stream detector per target on its absolute error in normalised units.

    ``update`` returns the targets whose error rose, or None. A detection resets every
    target's detector: the caller adapts the model, so all the old baselines are stale.
    """

    def __init__(
        self,
        targets: Sequence[str],
        scale: Sequence[float] | None = None,
        make: Callable[[], StreamDetector] = PageHinkley,
    ) -> None:
        self.targets = tuple(targets)
        self.scale = np.ones(len(self.targets)) if scale is None else np.asarray(scale, float)
        if self.scale.shape != (len(self.targets),) or (self.scale <= 0).any():
            raise ValueError("scale needs one positive value per target")
        self.detectors = [make() for _ in self.targets]

    def update(
        self,
        pred: Mapping[str, float] | Sequence[float] | np.ndarray,
        actual: Mapping[str, float] | Sequence[float] | np.ndarray,
    ) -> list[str] | None:
        p, a = (
            np.array([v[t] for t in self.targets], float)
            if isinstance(v, Mapping)
            else np.asarray(v, float).reshape(-1)
            for v in (pred, actual)
        )
        err = np.abs(p - a) / self.scale
        fired = [
            t
            for t, d, e in zip(self.targets, self.detectors, err, strict=True)
            if d.update(float(e))
        ]
        if not fired:
            return None
        for d in self.detectors:
            d.reset()
        return fired


# -- input drift -----------------------------------------------------------------------


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``recent`` against ``reference``.

    Bins are the reference's deciles, each closed on the right, so a feature that was
    constant (an unused scrap grade at 0 t) still shows any value above it. Counts get
    half a row of smoothing so an empty bin costs a finite amount.
    """
    ref, rec = np.asarray(reference, float), np.asarray(recent, float)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    k = len(edges) + 1
    p = (np.bincount(np.searchsorted(edges, ref, "left"), minlength=k) + 0.5) / (len(ref) + 0.5 * k)
    q = (np.bincount(np.searchsorted(edges, rec, "left"), minlength=k) + 0.5) / (len(rec) + 0.5 * k)
    return float(np.sum((q - p) * np.log(q / p)))


class InputDriftMonitor:
    """Per-feature comparison of a fixed reference window with a sliding recent window.

    The first ``reference_size`` rows (after start or a detection) are the reference; then
    each row enters a window of the last ``window_size`` rows, and once that is full every
    ``check_every``-th row compares the two. A feature whose PSI exceeds ``threshold``
    (default 0.25, the usual "major shift" line; with 500 vs 200 rows and 10 bins the
    no-drift PSI is about 0.06 +- 0.03, so a false flag needs a chi-square tail of about
    4e-5 per feature) has drifted. After a detection the monitor starts a new reference,
    so the new regime becomes the baseline.
    """

    def __init__(
        self,
        features: Sequence[str],
        reference_size: int = 500,
        window_size: int = 200,
        threshold: float = 0.25,
        bins: int = 10,
        check_every: int = 1,
    ) -> None:
        if reference_size < 2 or window_size < 2 or bins < 2 or check_every < 1:
            raise ValueError("need reference_size, window_size, bins >= 2, check_every >= 1")
        self.features = tuple(features)
        self.reference_size, self.window_size = reference_size, window_size
        self.bins, self.check_every, self.threshold = bins, check_every, threshold
        self.last_scores: dict[str, float] = {}
        self.detections = 0
        self.reset()

    def reset(self) -> None:
        self._reference: list[np.ndarray] = []
        self._ref: np.ndarray | None = None
        self._recent: deque[np.ndarray] = deque(maxlen=self.window_size)
        self._since_check = 0

    def _row(self, x_row: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
        if isinstance(x_row, Mapping):
            return np.array([x_row[f] for f in self.features], float)
        row = np.asarray(x_row, float).reshape(-1)
        if row.shape != (len(self.features),):
            raise ValueError(f"expected {len(self.features)} values, got shape {row.shape}")
        return row

    def update(
        self,
        x_row: Mapping[str, float] | Sequence[float] | np.ndarray,
    ) -> list[str] | None:
        row = self._row(x_row)
        if self._ref is None:
            self._reference.append(row)
            if len(self._reference) == self.reference_size:
                self._ref = np.stack(self._reference)
                self._reference = []
            return None
        self._recent.append(row)
        self._since_check += 1
        if len(self._recent) < self.window_size or self._since_check < self.check_every:
            return None
        self._since_check = 0
        recent = np.stack(self._recent)
        scores = [psi(self._ref[:, j], recent[:, j], self.bins) for j in range(len(self.features))]
        drifted = [f for f, s in zip(self.features, scores, strict=True) if s > self.threshold]
        self.last_scores = dict(zip(self.features, scores, strict=True))
        if not drifted:
            return None
        self.detections += 1
        self.reset()
        return drifted
