"""Drift detectors, sans-I/O: feed values, get a verdict; no clocks, threads or logging.

Two kinds, because a plant's model goes stale in two ways (EAF.md, "Why models drift"):

* the **error stream** rises: the relation from inputs to outcomes changed (a supplier
  change leaves the charge plan as it was but moves Cu and yield). ``PageHinkley`` and
  ``Adwin`` watch one scalar stream; ``ErrorDriftMonitor`` runs one per target.
* the **inputs** move: a new mix, HBI share or practice. ``InputDriftMonitor`` compares a
  reference window with a recent window per feature (population stability index, or the
  two-sample Kolmogorov-Smirnov test). It needs no outcomes, so it can warn before the
  first chemistry comes back, but it is blind to drift that leaves the inputs alone.
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

    def __init__(self, delta: float = 0.5, threshold: float = 20.0,
                 min_instances: int = 30) -> None:
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


class Adwin:
    """ADWIN (Bifet & Gavaldà, 2007): an adaptive window cut where its two ends differ.

    This is the exact O(window) form of the paper (every split is tested, not the
    exponential-histogram approximation), bounded by ``max_window`` and run every ``clock``
    values, which costs a few numpy passes over at most 1,000 floats. The cut bound is the
    paper's Bernstein form; its range term uses ``value_range``, by default the range seen
    in the window (absolute errors have no a-priori bound). ``delta`` = 0.002 is the paper's
    and River's default confidence; the ``ln(2n/delta)`` term pays the union bound over
    splits. ADWIN needs no warm-up and no scale, but it is conservative: on a half-normal
    stream it takes about 160 values to cut at a one-sigma step and 35 at three sigma
    (Page-Hinkley: 48 and 8), and it also cuts when the mean falls (a model that got
    better); ``increased`` says which way the last cut went.
    """

    def __init__(self, delta: float = 0.002, max_window: int = 1000, min_side: int = 10,
                 clock: int = 4, value_range: float | None = None) -> None:
        if not 0 < delta < 1 or max_window < 2 * min_side or min_side < 1 or clock < 1:
            raise ValueError("need 0 < delta < 1, min_side >= 1, max_window >= 2 min_side")
        self.delta, self.min_side, self.clock = delta, min_side, clock
        self.value_range = value_range
        self._window: deque[float] = deque(maxlen=max_window)
        self._ticks = 0
        self.increased = False
        self.detections = 0

    def reset(self) -> None:
        self._window.clear()
        self._ticks = 0

    @property
    def width(self) -> int:
        return len(self._window)

    @property
    def mean(self) -> float:
        return float(np.mean(self._window)) if self._window else math.nan

    def _cut(self, w: np.ndarray) -> int | None:
        """Oldest split whose two sides differ beyond the bound, or None."""
        n = len(w)
        if n < 2 * self.min_side:
            return None
        csum = np.cumsum(w)
        n0 = np.arange(self.min_side, n - self.min_side + 1)
        n1 = n - n0
        mean0 = csum[n0 - 1] / n0
        mean1 = (csum[-1] - csum[n0 - 1]) / n1
        inv_m = 1.0 / n0 + 1.0 / n1
        log_term = math.log(2.0 * n / self.delta)
        span = self.value_range if self.value_range is not None else float(w.max() - w.min())
        eps = (np.sqrt(2.0 * float(np.var(w)) * log_term * inv_m)
               + 2.0 / 3.0 * span * log_term * inv_m)
        hits = np.flatnonzero(np.abs(mean1 - mean0) > eps)
        if not len(hits):
            return None
        i = int(hits[0])
        self.increased = bool(mean1[i] > mean0[i])
        return int(n0[i])

    def update(self, value: float) -> bool:
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"value must be finite, got {value!r}")
        self._window.append(x)
        self._ticks += 1
        if self._ticks % self.clock:
            return False
        w = np.fromiter(self._window, float, len(self._window))
        fired = False
        while (cut := self._cut(w)) is not None:
            w, fired = w[cut:], True
        if fired:
            self._window = deque(w.tolist(), maxlen=self._window.maxlen)
            self.detections += 1
        return fired


class ErrorDriftMonitor:
    """One stream detector per target on its absolute error in normalised units.

    ``update`` returns the targets whose error rose, or None. A detection resets every
    target's detector: the caller adapts the model, so all the old baselines are stale.
    """

    def __init__(self, targets: Sequence[str], scale: Sequence[float] | None = None,
                 make: Callable[[], StreamDetector] = PageHinkley) -> None:
        self.targets = tuple(targets)
        self.scale = np.ones(len(self.targets)) if scale is None else np.asarray(scale, float)
        if self.scale.shape != (len(self.targets),) or (self.scale <= 0).any():
            raise ValueError("scale needs one positive value per target")
        self.detectors = [make() for _ in self.targets]

    def update(self, pred: Mapping[str, float] | Sequence[float] | np.ndarray,
               actual: Mapping[str, float] | Sequence[float] | np.ndarray) -> list[str] | None:
        p, a = (np.array([v[t] for t in self.targets], float) if isinstance(v, Mapping)
                else np.asarray(v, float).reshape(-1) for v in (pred, actual))
        err = np.abs(p - a) / self.scale
        fired = [t for t, d, e in zip(self.targets, self.detectors, err, strict=True)
                 if d.update(float(e)) and getattr(d, "increased", True)]
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
    p = (np.bincount(np.searchsorted(edges, ref, "left"), minlength=k) + 0.5) / (len(ref)
                                                                                 + 0.5 * k)
    q = (np.bincount(np.searchsorted(edges, rec, "left"), minlength=k) + 0.5) / (len(rec)
                                                                                 + 0.5 * k)
    return float(np.sum((q - p) * np.log(q / p)))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution (alternating series, converges fast)."""
    if lam < 0.2:
        return 1.0  # the series converges slowly here and the value is 1 to 1e-6
    total, sign = 0.0, 1.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * lam * lam)
        total += sign * term
        if term < 1e-12:
            break
        sign = -sign
    return min(max(2.0 * total, 0.0), 1.0)


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value (two-sided).

    Ties are handled exactly (both empirical CDFs evaluated at every observed value); the
    p-value uses Stephens' small-sample correction of the asymptotic distribution, good
    to a few per cent from about 20 rows per side.
    """
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if not len(x) or not len(y):
        raise ValueError("both samples need at least one value")
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, "right") / len(x)
                            - np.searchsorted(y, grid, "right") / len(y))))
    en = math.sqrt(len(x) * len(y) / (len(x) + len(y)))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


class InputDriftMonitor:
    """Per-feature comparison of a fixed reference window with a sliding recent window.

    The first ``reference_size`` rows (after start or a detection) are the reference; then
    each row enters a window of the last ``window_size`` rows, and once that is full every
    ``check_every``-th row compares the two. ``method="psi"`` flags a feature whose PSI
    exceeds ``threshold`` (default 0.25, the usual "major shift" line; with 500 vs 200
    rows and 10 bins the no-drift PSI is about 0.06 +- 0.03, so a false flag needs a
    chi-square tail of about 4e-5 per feature). ``method="ks"`` flags a p-value below
    ``threshold`` (default 1e-4, which leaves about the same false-alarm rate over ~20
    features and overlapping windows). After a detection the monitor starts a new
    reference, so the new regime becomes the baseline.
    """

    def __init__(self, features: Sequence[str], reference_size: int = 500,
                 window_size: int = 200, threshold: float | None = None,
                 method: str = "psi", bins: int = 10, check_every: int = 1) -> None:
        if method not in ("psi", "ks"):
            raise ValueError(f"method must be 'psi' or 'ks', got {method!r}")
        if reference_size < 2 or window_size < 2 or bins < 2 or check_every < 1:
            raise ValueError("need reference_size, window_size, bins >= 2, check_every >= 1")
        self.features = tuple(features)
        self.reference_size, self.window_size = reference_size, window_size
        self.method, self.bins, self.check_every = method, bins, check_every
        self.threshold = threshold if threshold is not None else (0.25 if method == "psi"
                                                                  else 1e-4)
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

    def update(self, x_row: Mapping[str, float] | Sequence[float] | np.ndarray,
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
        if self.method == "psi":
            scores = [psi(self._ref[:, j], recent[:, j], self.bins)
                      for j in range(len(self.features))]
            drifted = [f for f, s in zip(self.features, scores, strict=True)
                       if s > self.threshold]
        else:
            scores = [ks_2samp(self._ref[:, j], recent[:, j])[1]
                      for j in range(len(self.features))]
            drifted = [f for f, s in zip(self.features, scores, strict=True)
                       if s < self.threshold]
        self.last_scores = dict(zip(self.features, scores, strict=True))
        if not drifted:
            return None
        self.detections += 1
        self.reset()
        return drifted
