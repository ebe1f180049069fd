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

Threads: ``--threads 1,2,all`` runs every row with each count of aggregation threads
(``kernels.set_threads``; ``all``: the cores this process may run on, the coordinator's
default) and ends with FedAvg's speed-up over one thread and over Flower. ``flower`` is
Flower's ``aggregate_inplace`` (``flwr.server.strategy.aggregate``, 1.x) rewritten in numpy,
one thread whatever ``--threads`` says: it deserialises each update into fresh arrays (a
copy, as its ``parameters_to_ndarrays`` does), scales them in place by
``num_examples / total`` and adds them into the first update's arrays in float32; it
validates nothing.

Robust strategies (median, trimmed_mean, krum, multikrum) hold all K updates and Krum costs
K^2 P flops, so by default they stop at K <= 100 (``--robust-max-k``); the output says so.

Run: ``.venv/bin/python bench/bench_aggregation.py [--params 1000000] [--k 10,100,1000]
[--strategies fedavg,median,fedavg+clip,flower] [--robust-max-k 100] [--threads 1,2,all]``.
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

from alchimia.broker.schemas import UpdateBody, decode, message
from alchimia.coordinator.strategies import STRATEGIES, Strategy, kernels, make_strategy
from alchimia.coordinator.strategies.base import Weights

CLIP_SUFFIX = "+clip"
FLOWER = "flower"
ROUND_REPEATS = 15
NUM_SAMPLES = 1000  # every update's weight


def layout(params: int) -> dict[str, tuple[int, ...]]:
    """A small MLP-like split of P parameters into tensors (several keys, one big one)."""
    if params < 4096:
        return {"w": (params,)}
    rows = params // 2 // 256
    second = params // 4
    return {
        "layer0.weight": (rows, 256),
        "layer1.weight": (second,),
        "layer2.weight": (params - rows * 256 - second - 256,),
        "layer2.bias": (256,),
    }


def make_pool(shapes: dict[str, tuple[int, ...]], n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct update messages, as agents send them."""
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n):
        delta = {k: 0.01 * rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
        body = UpdateBody(round_id=0, base_version=0, num_samples=NUM_SAMPLES, delta=delta)
        pool.append(message(f"plant-{i}", body))
    return pool


def arrivals(pool: list[bytes], k: int) -> Iterator[bytes]:
    """K wire payloads, produced one at a time."""
    for i in range(k):
        yield pool[i % len(pool)]


class FlowerInplace:
    """Flower's ``aggregate_inplace`` as a round: it knows the total weight up front, as
    Flower does (it holds every result before aggregating)."""

    streaming = True

    def __init__(self, total_weight: float) -> None:
        self.total = total_weight
        self.params: list[np.ndarray] = []
        self.names: list[str] = []

    def open_round(self, global_weights: Weights) -> FlowerInplace:
        self.params, self.names = [], list(global_weights)
        return self

    def add(self, delta: Weights, weight: float) -> None:
        scaled = [np.array(delta[name]) for name in self.names]  # parameters_to_ndarrays
        for x in scaled:
            np.multiply(x, weight / self.total, out=x, casting="same_kind")
        if not self.params:
            self.params = scaled
            return
        for acc, x in zip(self.params, scaled, strict=True):
            np.add(acc, x, out=acc)

    def finish(self) -> Weights:
        return dict(zip(self.names, self.params, strict=True))


Aggregator = Strategy | FlowerInplace


def build(spec: str, params: int, k: int = 1) -> Aggregator:
    if spec == FLOWER:
        return FlowerInplace(k * NUM_SAMPLES)
    if spec.endswith(CLIP_SUFFIX):
        # clip at roughly the payloads' norm (0.01 * sqrt(P)) so about half are clipped
        return make_strategy(spec[: -len(CLIP_SUFFIX)], clip_norm=0.01 * params**0.5)
    return make_strategy(spec)


def run_round(
    strategy: Aggregator, global_weights: dict[str, np.ndarray], pool: list[bytes], k: int
) -> dict[str, np.ndarray]:
    acc = strategy.open_round(global_weights)
    for payload in arrivals(pool, k):
        body: UpdateBody = decode(payload, UpdateBody, check_finite=False).body  # type: ignore[assignment]
        acc.add(body.delta, body.num_samples)
    return acc.finish()


def measure(
    spec: str, k: int, params: int, pool: list[bytes], shapes: dict[str, tuple[int, ...]]
) -> tuple[float, float]:
    """(seconds, peak traced bytes) of one round, from separate runs: the median time of up
    to ``ROUND_REPEATS`` rounds (one round at K = 1000, so short rounds are not one noisy
    sample), then one traced round."""
    global_weights = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    times = []
    for _ in range(max(1, min(ROUND_REPEATS, 1000 // k))):
        strategy = build(spec, params, k)
        gc.collect()
        t0 = time.perf_counter()
        out = run_round(strategy, global_weights, pool, k)
        times.append(time.perf_counter() - t0)
        del out
    seconds = statistics.median(times)
    strategy = build(spec, params, k)
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
    parts = np.array_split(arr, kernels.available_cores())
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
    parser.add_argument(
        "--strategies",
        default=default,
        help=f"comma-separated; '<name>{CLIP_SUFFIX}' adds norm bounding",
    )
    parser.add_argument(
        "--robust-max-k",
        type=int,
        default=100,
        help="largest K for non-streaming strategies (0: no cap)",
    )
    parser.add_argument(
        "--threads",
        default="all",
        help="comma-separated aggregation thread counts; 'all': every core "
        "this process may run on (the default)",
    )
    args = parser.parse_args(argv)
    ks = [int(x) for x in args.k.split(",") if x]
    specs = [s for s in args.strategies.split(",") if s]
    for spec in specs:
        base = spec.removesuffix(CLIP_SUFFIX)
        if spec != FLOWER and base not in STRATEGIES:
            parser.error(
                f"unknown strategy {spec!r}; valid: {', '.join(STRATEGIES)} "
                f"(optionally with {CLIP_SUFFIX}), {FLOWER}"
            )
    cores = kernels.available_cores()
    try:
        counts = [cores if t == "all" else int(t) for t in args.threads.split(",") if t]
    except ValueError:
        parser.error(f"--threads takes integers and 'all', got {args.threads!r}")
    if not counts or min(counts) < 1:
        parser.error("--threads needs counts >= 1")
    params = args.params
    shapes = layout(params)
    model_bytes = 4 * params
    pool = make_pool(shapes, min(max(ks), dram_pool_size(model_bytes)))
    print(
        f"P = {params:,} float32 params ({model_bytes / 1e6:.1f} MB) in {len(shapes)} "
        f"tensors; payload pool of {len(pool)} distinct updates, cycled"
    )
    # Other load skews the numbers, BLAS-heavy Krum most (its threads spin on busy cores).
    print(
        f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, "
        f"{cores} available to this process"
    )
    run_round(
        build("fedavg", params), {n: np.zeros(s, np.float32) for n, s in shapes.items()}, pool, 1
    )  # compiles the aggregation kernels outside the timings
    header = (
        f"{'strategy':<18}{'threads':>8}{'K':>6}{'seconds':>10}{'GB/s in':>9}"
        f"{'peak MB':>10}{'x 4P':>8}"
    )
    print(header)
    print("-" * len(header))
    skipped: list[str] = []
    rates: dict[tuple[str, int, int], float] = {}
    for count in counts:
        kernels.set_threads(count)
        for spec in specs:
            if spec == FLOWER and count != counts[0]:
                continue  # numpy on one thread: once is enough
            streaming = build(spec, params).streaming
            for k in ks:
                if not streaming and args.robust_max_k and k > args.robust_max_k:
                    skipped.append(f"{spec} K={k} ({count} threads)")
                    continue
                seconds, peak = measure(spec, k, params, pool, shapes)
                rates[spec, count, k] = rate = k * model_bytes / seconds / 1e9
                shown = 1 if spec == FLOWER else count
                print(
                    f"{spec:<18}{shown:>8}{k:>6}{seconds:>10.3f}{rate:>9.2f}"
                    f"{peak / 1e6:>10.1f}{peak / model_bytes:>8.2f}",
                    flush=True,
                )
    if skipped:
        print(
            f"skipped (non-streaming, K > --robust-max-k {args.robust_max_k}): {', '.join(skipped)}"
        )
    one_core, all_cores = read_bandwidth()
    bound = max(one_core, all_cores)
    print(
        f"\nmemory-read bound over 256 MB: {one_core:.2f} GB/s (numpy sum, one core), "
        f"{all_cores:.2f} GB/s (compiled sum, {cores} threads); bound = {bound:.2f} GB/s"
    )
    print(
        "fedavg reads each delta twice, each thread its own slice of the parameters: the "
        "validating norm pass from memory, the float64 add from the cache it just filled"
    )
    for k in ks:
        for count in counts:
            if (rate := rates.get(("fedavg", count, k))) is None:
                continue
            line = (
                f"fedavg K={k}, {count} thread(s): {rate:.2f} GB/s of input = "
                f"{bound / rate:.2f}x the read bound's time (target <= 2x)"
            )
            if count != counts[0]:
                line += f"; {rate / rates['fedavg', counts[0], k]:.2f}x {counts[0]} thread(s)"
            if (FLOWER, counts[0], k) in rates:
                line += (
                    f"; {rate / rates[FLOWER, counts[0], k]:.2f}x flower's speed (target "
                    ">= 3x with >= 4 cores)"
                )
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
