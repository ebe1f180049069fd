"""Compiled loops for the per-update passes of aggregation (numba), serial.

Why compiled: an update is read twice on the coordinator (a validating norm pass, then the
weighted add into the float64 running sum), and the issue sets FedAvg within 2x of reading
every update once from memory. numpy cannot fuse ``acc += w * x`` with the float32 -> float64
conversion (it makes a temporary per step) and its float32 dot is slower; these loops make
no temporaries, and the second read hits the cache the first one filled (see
bench/bench_aggregation.py for the figures).

Semantics match the numpy expressions they replace: ``sum_squares`` is ``sum(float64(x)**2)``
(order of summation differs, so results agree to rounding, and NaN/inf still yield a
non-finite sum, which is how validation detects them), and ``add_scaled`` is
``acc += factor * float64(x)`` element by element, and ``shift_by_mean`` is FedAvg's
``(g + sums / total).astype(g.dtype)`` in one pass instead of three.

Why one core: spreading a call over cores lost every time it was measured at these sizes
(a 4 MB update takes ~0.2 ms a pass). numba's workqueue pool costs tens of microseconds a
launch; a Python thread pool over these ``nogil`` loops ran at half the serial speed (GIL
hand-offs); a worker thread doing the adds while the caller decodes gained nothing (the two
share the last-level cache); and OpenMP, the fast pool, risks a hang next to torch's own
OpenMP runtime in the demo's and the tests' processes. Compiled on first use per argument
type and cached on disk (``cache=True``); ``nogil`` so the coordinator's other threads run
meanwhile.
"""

from __future__ import annotations

import numba
import numpy as np

# Reassociation lets LLVM vectorise the sum; no nnan/ninf, so NaN and inf still propagate.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _sum_squares(x: np.ndarray) -> float:  # pragma: no cover - compiled
    total = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        total += v * v
    return total


@numba.njit(nogil=True, cache=True)
def _add_scaled(acc: np.ndarray, x: np.ndarray, factor: float) -> None:  # pragma: no cover
    for i in range(x.size):
        acc[i] += factor * np.float64(x[i])


@numba.njit(nogil=True, cache=True)
def _add_scaled_touched(acc: np.ndarray, touched: np.ndarray, x: np.ndarray, factor: float,
                        weight: float) -> None:  # pragma: no cover - compiled
    for i in range(x.size):
        v = np.float64(x[i])
        acc[i] += factor * v
        if v != 0.0:
            touched[i] += weight


@numba.njit(nogil=True, cache=True)
def _shift_by_mean(out: np.ndarray, g: np.ndarray, sums: np.ndarray,
                   total: float) -> None:  # pragma: no cover - compiled
    for i in range(out.size):
        out[i] = g[i] + sums[i] / total


def sum_squares(x: np.ndarray) -> float:
    """Sum of squares in float64; non-finite iff ``x`` holds NaN/inf (or float64 overflow)."""
    return float(_sum_squares(x.reshape(-1)))


def add_scaled(acc: np.ndarray, x: np.ndarray, factor: float) -> None:
    """``acc += factor * x`` in place; ``acc`` is a float64 array of the same size as ``x``."""
    if acc.dtype != np.float64 or acc.size != x.size:
        raise ValueError(f"accumulator must be float64 of {x.size} elements, "
                         f"got {acc.dtype} of {acc.size}")
    flat = acc.reshape(-1)
    if not np.shares_memory(flat, acc):
        raise ValueError("accumulator must be contiguous")
    _add_scaled(flat, x.reshape(-1), float(factor))


def add_scaled_touched(acc: np.ndarray, touched: np.ndarray, x: np.ndarray, factor: float,
                       weight: float) -> None:
    """``add_scaled`` plus ``touched += weight`` where ``x != 0``, in the same pass: the
    weight behind each coordinate's sum, for submodel averaging (``MeanAccumulator``)."""
    for arr in (acc, touched):
        if arr.dtype != np.float64 or arr.size != x.size:
            raise ValueError(f"accumulators must be float64 of {x.size} elements, "
                             f"got {arr.dtype} of {arr.size}")
        if not np.shares_memory(arr.reshape(-1), arr):
            raise ValueError("accumulators must be contiguous")
    _add_scaled_touched(acc.reshape(-1), touched.reshape(-1), x.reshape(-1), float(factor),
                        float(weight))


def shift_by_mean(g: np.ndarray, sums: np.ndarray, total: float) -> np.ndarray:
    """``(g + sums / total).astype(g.dtype)`` in one pass and one allocation (bit-identical:
    the same float64 operations in the same order, then the same rounding to ``g.dtype``)."""
    if sums.dtype != np.float64 or sums.shape != g.shape:
        raise ValueError(f"sums must be float64 of shape {g.shape}, got {sums.dtype} of "
                         f"{sums.shape}")
    out = np.empty(g.shape, g.dtype)
    _shift_by_mean(out.reshape(-1), g.reshape(-1), sums.reshape(-1), float(total))
    return out
