"""Benchmark of the coordinator's aggregation strategies on deltas as they come off the wire.

Each update is a complete ``update`` message as an agent publishes it (msgpack envelope,
tensors as raw float32 bin). It is decoded exactly as the coordinator does
(``broker.schemas.decode``: zero-copy views, pydantic validation, the NaN/inf scan left to
the accumulator) and added to the round's accumulator; the round is then finished. Reported
per strategy and K (updates per round): seconds for decode + add (validation included) +
finish, GB/s of input bytes (K x 4P / seconds), and the
peak extra memory traced by tracemalloc (numpy reports its buffers to it) over the round, in
MB and as a multiple of the model size 4P. The peak includes the new global weights (1x 4P)
and any server state; for robust strategies it includes the K stored copies.

Payloads: a pool of distinct random payloads, twice the last-level cache in size (at least
8, at most K), is generated before measuring and the K arrivals cycle through it lazily, so
generating random numbers is not timed, the benchmark itself never holds K payloads, and
every update is read from DRAM as a fresh arrival would be. Timing and memory are separate
runs, so tracemalloc's bookkeeping does not slow the timed run.

The bound: reading 256 MB from DRAM, once with numpy's sum on one core and once split over
every core (one thread each running the compiled sum of squares, which releases the GIL);
the faster is the machine's read bandwidth, and FedAvg is compared with it.

Robust strategies (median, trimmed_mean, krum, multikrum) hold all K updates and Krum costs
K^2 P flops, so by default they stop at K <= 100 (``--robust-max-k``); the output says so.

Run: ``.venv/bin/python bench/bench_aggregation.py [--params 1000000] [--k 10,100,1000]
[--strategies fedavg,median,fedavg+clip] [--robust-max-k 100]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.schemas import UpdateBody, decode, message
from coordinator.strategies import STRATEGIES, Strategy, kernels, make_strategy

CLIP_SUFFIX = "+clip"
ROUND_REPEATS = 15


def layout(params: int) -> dict[str, tuple[int, ...]]:
    """A small MLP-like split of P parameters into tensors (several keys, one big one)."""
    if params < 4096:
        return {"w": (params,)}
    rows = params // 2 // 256
    second = params // 4
    return {"layer0.weight": (rows, 256), "layer1.weight": (second,),
            "layer2.weight": (params - rows * 256 - second - 256,), "layer2.bias": (256,)}


def make_pool(shapes: dict[str, tuple[int, ...]], n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct update messages, as agents send them."""
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n):
        delta = {k: 0.01 * rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
        body = UpdateBody(round_id=0, base_version=0, num_samples=1000, delta=delta)
        pool.append(message(f"plant-{i}", body))
    return pool


def arrivals(pool: list[bytes], k: int) -> Iterator[bytes]:
    """K wire payloads, produced one at a time."""
    for i in range(k):
        yield pool[i % len(pool)]


def build(spec: str, params: int) -> Strategy:
    if spec.endswith(CLIP_SUFFIX):
        # clip at roughly the payloads' norm (0.01 * sqrt(P)) so about half are clipped
        return make_strategy(spec[:-len(CLIP_SUFFIX)], clip_norm=0.01 * params**0.5)
    return make_strategy(spec)


def run_round(strategy: Strategy, global_weights: dict[str, np.ndarray], pool: list[bytes],
              k: int) -> dict[str, np.ndarray]:
    acc = strategy.open_round(global_weights)
    for payload in arrivals(pool, k):
        body: UpdateBody = decode(payload, UpdateBody, check_finite=False).body  # type: ignore[assignment]
        acc.add(body.delta, body.num_samples)
    return acc.finish()


def measure(spec: str, k: int, params: int, pool: list[bytes],
            shapes: dict[str, tuple[int, ...]]) -> tuple[float, float]:
    """(seconds, peak traced bytes) of one round, from separate runs: the median time of up
    to ``ROUND_REPEATS`` rounds (one round at K = 1000, so short rounds are not one noisy
    sample), then one traced round."""
    global_weights = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    times = []
    for _ in range(max(1, min(ROUND_REPEATS, 1000 // k))):
        strategy = build(spec, params)
        gc.collect()
        t0 = time.perf_counter()
        out = run_round(strategy, global_weights, pool, k)
        times.append(time.perf_counter() - t0)
        del out
    seconds = statistics.median(times)
    strategy = build(spec, params)
    gc.collect()
    tracemalloc.start()
    out = run_round(strategy, global_weights, pool, k)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del out
    return seconds, float(peak)


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs); 32 MiB where it cannot be read."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes, default=32 << 20)


def dram_pool_size(update_bytes: int) -> int:
    """Distinct updates to cycle so that each is read from DRAM: twice the cache, >= 8."""
    return max(8, -(-2 * last_level_cache_bytes() // update_bytes))


def read_all_cores(arr: np.ndarray) -> None:
    """Sum of squares of ``arr`` split over one thread per core."""
    parts = np.array_split(arr, os.cpu_count() or 1)
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(kernels.sum_squares, parts))


def read_bandwidth(nbytes: int = 1 << 28) -> tuple[float, float]:
    """GB/s of reading a 256 MB float32 array: numpy's sum (one core) and the compiled
    sum of squares on every core, best of 5 each. The larger is the memory-read bound."""
    arr = np.ones(nbytes // 4, np.float32)
    rates = []
    for read in (np.sum, read_all_cores):
        read(arr)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            read(arr)
            best = min(best, time.perf_counter() - t0)
        rates.append(nbytes / best / 1e9)
    return rates[0], rates[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--k", default="10,100,1000", help="comma-separated update counts")
    default = ",".join([*STRATEGIES, "fedavg" + CLIP_SUFFIX])
    parser.add_argument("--strategies", default=default,
                        help=f"comma-separated; '<name>{CLIP_SUFFIX}' adds norm bounding")
    parser.add_argument("--robust-max-k", type=int, default=100,
                        help="largest K for non-streaming strategies (0: no cap)")
    args = parser.parse_args(argv)
    ks = [int(x) for x in args.k.split(",") if x]
    specs = [s for s in args.strategies.split(",") if s]
    for spec in specs:
        base = spec.removesuffix(CLIP_SUFFIX)
        if base not in STRATEGIES:
            parser.error(f"unknown strategy {spec!r}; valid: {', '.join(STRATEGIES)} "
                         f"(optionally with {CLIP_SUFFIX})")
    params = args.params
    shapes = layout(params)
    model_bytes = 4 * params
    pool = make_pool(shapes, min(max(ks), dram_pool_size(model_bytes)))
    print(f"P = {params:,} float32 params ({model_bytes / 1e6:.1f} MB) in {len(shapes)} "
          f"tensors; payload pool of {len(pool)} distinct updates, cycled")
    # Other load skews the numbers, BLAS-heavy Krum most (its threads spin on busy cores).
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    run_round(build("fedavg", params), {n: np.zeros(s, np.float32) for n, s in shapes.items()},
              pool, 1)  # compiles the aggregation kernels outside the timings
    header = (f"{'strategy':<18}{'K':>6}{'seconds':>10}{'GB/s in':>9}"
              f"{'peak MB':>10}{'x 4P':>8}")
    print(header)
    print("-" * len(header))
    skipped: list[str] = []
    fedavg_rates: dict[int, float] = {}
    for spec in specs:
        streaming = build(spec, params).streaming
        for k in ks:
            if not streaming and args.robust_max_k and k > args.robust_max_k:
                skipped.append(f"{spec} K={k}")
                continue
            seconds, peak = measure(spec, k, params, pool, shapes)
            rate = k * model_bytes / seconds / 1e9
            if spec == "fedavg":
                fedavg_rates[k] = rate
            print(f"{spec:<18}{k:>6}{seconds:>10.3f}{rate:>9.2f}"
                  f"{peak / 1e6:>10.1f}{peak / model_bytes:>8.2f}", flush=True)
    if skipped:
        print(f"skipped (non-streaming, K > --robust-max-k {args.robust_max_k}): "
              f"{', '.join(skipped)}")
    one_core, all_cores = read_bandwidth()
    bound = max(one_core, all_cores)
    print(f"\nmemory-read bound over 256 MB: {one_core:.2f} GB/s (numpy sum, one core), "
          f"{all_cores:.2f} GB/s (compiled sum, {os.cpu_count()} threads); bound = "
          f"{bound:.2f} GB/s")
    print("fedavg runs on one core and reads each delta twice: the validating norm pass from "
          "memory, the float64 add from the cache it just filled")
    for k, rate in fedavg_rates.items():
        print(f"fedavg K={k}: {rate:.2f} GB/s of input = {100 * rate / bound:.0f}% of the read "
              f"bound ({bound / rate:.2f}x its time; target <= 2x; {one_core / rate:.2f}x the "
              f"one-core read's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
