"""Compiled loops for the per-update passes of aggregation (numba), on several threads.

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

Threads: every pass works on chunks of ``CHUNK`` elements, and a pass over an update's
tensors is split into contiguous runs of chunks, one per thread (``set_threads``; default:
the cores this process may run on). The caller takes the first run and a pool of ``nogil``
Python threads the others, so a thread owns its slice of the parameters and no two threads
write the same element. Results do not depend on the thread count: the adds are element by
element, and the norm is summed per chunk, then the chunks' sums in order, whichever thread
computed them. An update below ``MIN_SHARE`` elements a thread is done by the caller alone
(waking the helpers costs tens of microseconds on an idle machine, ~150 us on the 2-core
development VM under load; the default model's 500 parameters take less). Why
not numba's own ``parallel=True``: its workqueue layer aborts the process when two threads
launch at once, and OpenMP, the other layer shipped, is not fork safe and risks a hang next
to torch's OpenMP runtime in the demo's and the tests' processes. Compiled on first use per
argument type and cached on disk (``cache=True``).

Memory (issue 14 §2): numba is imported when a pass first meets an array of ``SMALL``
elements or more, not with this module. Importing it (LLVM, and scipy, which it imports)
costs ~80 MB of resident memory and its first call ~60 MB more (the code generator, the
typing and lowering registries), for nothing on small arrays: below ``SMALL`` elements a
pass is the numpy expression it replaces (the same bits for the adds and the shift; the
norm agrees to rounding, and is always the same for the same array), so a coordinator
whose tensors are all small (the default model's: 500 parameters) never loads numba.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

CHUNK = 1 << 16
"""Elements per chunk (256 kB of float32): the unit of the norm's partial sums and of the
split over threads."""
MIN_SHARE = 1 << 18
"""Fewest elements of an update worth another thread (1 MB of float32; see the module doc)."""
SMALL = 1 << 12
"""Arrays under this many elements (16 kB of float32) take numpy's expressions, not the
compiled loops: there numpy's temporaries cost less than a call, and numba stays unloaded
(see the module doc)."""

# Reassociation lets LLVM vectorise the sum; no nnan/ninf, so NaN and inf still propagate.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

Segment = tuple[int, int, int]
"""(array index, first chunk, chunk after the last) of one thread's run."""


class _Kernel:
    """A loop compiled with ``numba.njit(**options)`` on its first call: numba is imported
    then, not with this module (see the module doc)."""

    _lock = threading.Lock()

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.py_func, self._options = fn, options
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        compiled = self._compiled
        if compiled is None:
            with self._lock:
                if self._compiled is None:
                    import numba

                    self._compiled = numba.njit(**self._options)(self.py_func)
                compiled = self._compiled
        return compiled(*args)


def _njit(**options: Any) -> Callable[[Callable[..., Any]], _Kernel]:
    return lambda fn: _Kernel(fn, options)


@_njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _sum_squares(
    x: np.ndarray, partials: np.ndarray, base: int, c0: int, c1: int
) -> None:  # pragma: no cover - compiled
    for c in range(c0, c1):
        part = x[c * CHUNK : (c + 1) * CHUNK]  # loops from 0 vectorise (no negative index)
        total = 0.0
        for i in range(part.size):
            v = np.float64(part[i])
            total += v * v
        partials[base + c] = total


@_njit(nogil=True, cache=True)
def _ordered_sum(values: np.ndarray) -> float:  # pragma: no cover - compiled
    total = 0.0  # no fastmath: strictly left to right
    for v in values:
        total += v
    return total


@_njit(nogil=True, cache=True)
def _add_scaled(
    acc: np.ndarray, x: np.ndarray, factor: float, c0: int, c1: int
) -> None:  # pragma: no cover - compiled
    a, d = acc[c0 * CHUNK : c1 * CHUNK], x[c0 * CHUNK : c1 * CHUNK]
    for i in range(d.size):
        a[i] += factor * np.float64(d[i])


@_njit(nogil=True, cache=True)
def _add_scaled_touched(
    acc: np.ndarray,
    touched: np.ndarray,
    x: np.ndarray,
    factor: float,
    weight: float,
    c0: int,
    c1: int,
) -> None:  # pragma: no cover - compiled
    a, t, d = (
        acc[c0 * CHUNK : c1 * CHUNK],
        touched[c0 * CHUNK : c1 * CHUNK],
        x[c0 * CHUNK : c1 * CHUNK],
    )
    for i in range(d.size):
        v = np.float64(d[i])
        a[i] += factor * v
        if v != 0.0:
            t[i] += weight


@_njit(nogil=True, cache=True)
def _add_scaled_masked(
    acc: np.ndarray,
    touched: np.ndarray,
    x: np.ndarray,
    mask: np.ndarray,
    factor: float,
    weight: float,
    c0: int,
    c1: int,
) -> None:  # pragma: no cover - compiled
    a, t, d, m = (
        acc[c0 * CHUNK : c1 * CHUNK],
        touched[c0 * CHUNK : c1 * CHUNK],
        x[c0 * CHUNK : c1 * CHUNK],
        mask[c0 * CHUNK : c1 * CHUNK],
    )
    for i in range(d.size):
        v = np.float64(d[i])
        a[i] += factor * v
        if m[i] or v != 0.0:
            t[i] += weight


@_njit(nogil=True, cache=True)
def _shift_by_mean(
    out: np.ndarray, g: np.ndarray, sums: np.ndarray, total: float, c0: int, c1: int
) -> None:  # pragma: no cover - compiled
    o, a, b = (
        out[c0 * CHUNK : c1 * CHUNK],
        g[c0 * CHUNK : c1 * CHUNK],
        sums[c0 * CHUNK : c1 * CHUNK],
    )
    for i in range(o.size):
        o[i] = a[i] + b[i] / total


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


_threads = available_cores()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def set_threads(count: int | None) -> int:
    """Threads each pass may use from now on (None: ``available_cores()``); returns it.
    For start-up: a pass already running keeps the pool it started with."""
    global _threads, _pool
    n = available_cores() if count is None else count
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"aggregation threads must be an integer >= 1, got {count!r}")
    with _pool_lock:
        if n != _threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _threads, _pool = n, None
    return n


def threads() -> int:
    return _threads


def _workers() -> ThreadPoolExecutor:
    """The pool of ``threads() - 1`` helpers, made anew in a forked child (threads do not
    survive ``fork``)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(_threads - 1, thread_name_prefix="aggregation")
            _pool_pid = os.getpid()
        return _pool


def chunks(size: int) -> int:
    return -(-size // CHUNK)


def shares(sizes: Sequence[int], n: int) -> list[list[Segment]]:
    """Split the chunks of arrays of ``sizes`` elements, taken in order, into ``n``
    contiguous runs of (nearly) equal chunk counts; each run lists its segments."""
    counts = [chunks(s) for s in sizes]
    total = sum(counts)
    bounds = [total * k // n for k in range(n + 1)]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        run, start = [], 0
        for i, count in enumerate(counts):
            c0, c1 = max(lo - start, 0), min(hi - start, count)
            if c0 < c1:
                run.append((i, c0, c1))
            start += count
        out.append(run)
    return out


def _for_chunks(sizes: Sequence[int], job: Callable[[int, int, int], None]) -> None:
    """``job(i, c0, c1)`` over every chunk of every array once: by the caller alone below
    ``MIN_SHARE`` elements a thread, else one contiguous run per thread."""
    n = min(_threads, sum(sizes) // MIN_SHARE)
    if n <= 1:
        for i, size in enumerate(sizes):
            if size:  # an empty array (or one a caller did itself) has no chunk to run
                job(i, 0, chunks(size))
        return

    def run(segments: list[Segment]) -> None:
        for segment in segments:
            job(*segment)

    first, *rest = shares(sizes, n)
    futures = [_workers().submit(run, segments) for segments in rest]
    try:
        run(first)
    finally:
        wait(futures)  # never return while a helper still writes the caller's arrays
    for future in futures:
        future.result()


def sum_squares_each(xs: Sequence[np.ndarray]) -> list[float]:
    """Sum of squares in float64 of each array, in one pass over them all; non-finite iff
    the array holds NaN/inf (or float64 overflows). The same for any thread count."""
    flats = [x.reshape(-1) for x in xs]
    sizes = [x.size for x in flats]
    out = [0.0] * len(flats)
    big = [i for i, s in enumerate(sizes) if s >= SMALL]
    if big:  # the compiled pass; the small ones count 0 there: numpy, below
        bases = list(itertools.accumulate((chunks(sizes[i]) for i in big), initial=0))
        partials = np.empty(bases[-1])  # the big arrays' chunk sums, one after the other
        _for_chunks(
            [sizes[i] for i in big],
            lambda j, c0, c1: _sum_squares(flats[big[j]], partials, bases[j], c0, c1),
        )
        values = partials.tolist()
        for i, (lo, hi) in zip(big, itertools.pairwise(bases), strict=True):
            out[i] = values[lo] if hi - lo == 1 else float(_ordered_sum(partials[lo:hi]))
    small = [i for i, s in enumerate(sizes) if 0 < s < SMALL]
    if small:  # one buffer for them all: numpy's cost there is per call, not per element
        squares = np.concatenate([flats[i] for i in small], dtype=np.float64)
        starts = list(itertools.accumulate((sizes[i] for i in small[:-1]), initial=0))
        with np.errstate(over="ignore", invalid="ignore"):  # silent, as the compiled loops
            np.square(squares, out=squares)
            sums = np.add.reduceat(squares, starts).tolist()
        for i, value in zip(small, sums, strict=True):
            out[i] = value
    return out


def sum_squares(x: np.ndarray) -> float:
    """``sum_squares_each`` of one array."""
    return sum_squares_each([x])[0]


def add_scaled(acc: np.ndarray, x: np.ndarray, factor: float) -> None:
    """``acc += factor * x`` in place; ``acc`` is a float64 array of the same size as ``x``."""
    if acc.dtype != np.float64 or acc.size != x.size:
        raise ValueError(
            f"accumulator must be float64 of {x.size} elements, got {acc.dtype} of {acc.size}"
        )
    if not acc.flags.c_contiguous:  # else a flat view of it would be a copy
        raise ValueError("accumulator must be contiguous")
    flat = acc.reshape(-1)
    flat_x, f = x.reshape(-1), float(factor)
    if x.size < SMALL:
        with np.errstate(over="ignore", invalid="ignore"):  # silent, as the compiled loops
            flat += f * flat_x.astype(np.float64)
        return
    _for_chunks([x.size], lambda _, c0, c1: _add_scaled(flat, flat_x, f, c0, c1))


def add_scaled_touched(
    acc: np.ndarray,
    touched: np.ndarray,
    xs: Sequence[np.ndarray],
    factor: float,
    weight: float,
    masks: Sequence[np.ndarray | None] | None = None,
) -> None:
    """``add_scaled`` plus ``touched += weight`` where ``x != 0``, in the same pass, for
    every array of ``xs`` in one pass over them all: the weight behind each coordinate's
    sum, for submodel averaging (``MeanAccumulator``). ``acc`` and ``touched`` are flat
    float64 buffers holding the arrays' elements one array after the other (``packed``),
    so that the small arrays, packed together, take one numpy add for all of them.
    ``masks``: per array, None or a boolean array of its size; where given,
    ``touched += weight`` where ``mask | (x != 0)`` (the coordinates the update says it
    trained, a top-k delta's ``trained`` bitmap)."""
    d = [x.reshape(-1) for x in xs]
    sizes = [x.size for x in d]
    ms = [None] * len(d) if masks is None else list(masks)
    if len(ms) != len(d):
        raise ValueError("as many masks as arrays are needed")
    for mask, size in zip(ms, sizes, strict=True):
        if mask is not None and (mask.dtype != np.bool_ or mask.size != size):
            raise ValueError(f"a mask must be boolean of {size} elements")
    offsets = list(itertools.accumulate(sizes, initial=0))
    for arr in (acc, touched):
        if arr.dtype != np.float64 or arr.ndim != 1 or arr.size != offsets[-1]:
            raise ValueError(
                f"accumulators must be flat float64 of {offsets[-1]} elements, "
                f"got {arr.dtype} of shape {arr.shape}"
            )
        if not arr.flags.c_contiguous:
            raise ValueError("accumulators must be contiguous")
    m = [None if mask is None else np.ascontiguousarray(mask).reshape(-1) for mask in ms]
    f, w = float(factor), float(weight)
    small = [i for i, size in enumerate(sizes) if 0 < size < SMALL]
    if small:  # one buffer for them all, as in sum_squares_each
        scaled = np.concatenate([d[i] for i in small], dtype=np.float64)
        counts = scaled != 0.0
        if masks is not None:
            lo = 0
            for i in small:
                if (mi := m[i]) is not None:
                    counts[lo : lo + sizes[i]] |= mi
                lo += sizes[i]
        adds = counts * w  # w or +0.0: t + 0.0 is t (w is finite, t never -0.0)
        with np.errstate(over="ignore", invalid="ignore"):  # silent, as the compiled loops
            scaled *= f
            lo = 0
            for start, end in _runs(small, offsets):  # one add per run of packed arrays
                acc[start:end] += scaled[lo : lo + end - start]
                touched[start:end] += adds[lo : lo + end - start]
                lo += end - start

    def job(i: int, c0: int, c1: int) -> None:
        a, t, mi = acc[offsets[i] : offsets[i + 1]], touched[offsets[i] : offsets[i + 1]], m[i]
        if mi is None:
            _add_scaled_touched(a, t, d[i], f, w, c0, c1)
        else:
            _add_scaled_masked(a, t, d[i], mi, f, w, c0, c1)

    _for_chunks([size if size >= SMALL else 0 for size in sizes], job)  # small ones: above


def _runs(indices: list[int], offsets: list[int]) -> list[tuple[int, int]]:
    """The (start, end) ranges of a packed buffer that the arrays ``indices`` (ascending)
    cover, adjacent arrays merged: arrays ``i`` lies at ``offsets[i]:offsets[i + 1]``."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == offsets[i]:
            runs[-1] = (runs[-1][0], offsets[i + 1])
        else:
            runs.append((offsets[i], offsets[i + 1]))
    return runs


def packed(shapes: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A zeroed flat float64 buffer for arrays of ``shapes``, one after the other (as
    ``add_scaled_touched`` takes them), and a view of each array's part, of its shape."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = np.zeros(sum(sizes), np.float64)
    offsets = itertools.pairwise(itertools.accumulate(sizes, initial=0))
    views = [flat[lo:hi].reshape(shape) for (lo, hi), shape in zip(offsets, shapes, strict=True)]
    return flat, views


def shift_by_mean(g: np.ndarray, sums: np.ndarray, total: float) -> np.ndarray:
    """``(g + sums / total).astype(g.dtype)`` in one pass and one allocation (bit-identical:
    the same float64 operations in the same order, then the same rounding to ``g.dtype``)."""
    if sums.dtype != np.float64 or sums.shape != g.shape:
        raise ValueError(
            f"sums must be float64 of shape {g.shape}, got {sums.dtype} of {sums.shape}"
        )
    out = np.empty(g.shape, g.dtype)
    flat_out, flat_g, flat_sums, t = out.reshape(-1), g.reshape(-1), sums.reshape(-1), float(total)
    if out.size < SMALL:
        with np.errstate(over="ignore", invalid="ignore"):  # silent, as the compiled loops
            flat_out[...] = flat_g + flat_sums / t
        return out
    _for_chunks(
        [out.size], lambda _, c0, c1: _shift_by_mean(flat_out, flat_g, flat_sums, t, c0, c1)
    )
    return out
