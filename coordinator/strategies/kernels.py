"""Compiled loops for the per-update passes of aggregation (numba).

Why compiled: an update is read twice on the coordinator (a validating norm pass, then the
weighted add into the float64 running sum), and the issue sets FedAvg within 2x of reading
every update once from memory. numpy cannot fuse ``acc += w * x`` with the float32 -> float64
conversion (it makes a temporary per step) and its float32 dot is single threaded; these loops
run on all cores with no temporaries, so the second read hits the cache the first one filled
(see bench/bench_aggregation.py for the figures).

Semantics match the numpy expressions they replace: ``sum_squares`` is ``sum(float64(x)**2)``
(order of summation differs, so results agree to rounding, and NaN/inf still yield a
non-finite sum, which is how validation detects them), and ``add_scaled`` is
``acc += factor * float64(x)`` element by element, deterministic whatever the thread count.

Compiled on first use per argument type and cached on disk (``cache=True``). The thread
pool is numba's own ``workqueue``, not OpenMP: the demo and the tests run agents (torch, with
its own OpenMP runtime) in the coordinator's process, and a second OpenMP runtime there is
a hang risk. workqueue must not be entered from two threads at once, hence the lock.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

# Elements per parallel task: 64 KiB of float32, so a task's slice stays in L2.
_BLOCK = 1 << 14
# Reassociation lets LLVM vectorise the sum; no nnan/ninf, so NaN and inf still propagate.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_lock = threading.Lock()
numba.config.THREADING_LAYER = "workqueue"


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=_FASTMATH)
def _sum_squares(x: np.ndarray) -> float:  # pragma: no cover - compiled
    n = x.size
    blocks = (n + _BLOCK - 1) // _BLOCK
    total = 0.0
    for b in numba.prange(blocks):
        part = 0.0
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            v = np.float64(x[i])
            part += v * v
        total += part
    return total


@numba.njit(parallel=True, nogil=True, cache=True)
def _add_scaled(acc: np.ndarray, x: np.ndarray, factor: float) -> None:  # pragma: no cover
    for i in numba.prange(x.size):
        acc[i] += factor * np.float64(x[i])


def sum_squares(x: np.ndarray) -> float:
    """Sum of squares in float64; non-finite iff ``x`` holds NaN/inf (or float64 overflow)."""
    flat = x.reshape(-1)
    with _lock:
        return float(_sum_squares(flat))


def add_scaled(acc: np.ndarray, x: np.ndarray, factor: float) -> None:
    """``acc += factor * x`` in place; ``acc`` is a float64 array of the same size as ``x``."""
    if acc.dtype != np.float64 or acc.size != x.size:
        raise ValueError(f"accumulator must be float64 of {x.size} elements, "
                         f"got {acc.dtype} of {acc.size}")
    flat = acc.reshape(-1)
    if not np.shares_memory(flat, acc):
        raise ValueError("accumulator must be contiguous")
    with _lock:
        _add_scaled(flat, x.reshape(-1), float(factor))
