"""Where FedAvg's time per update goes, and whether a second core helps.

Prints, per 4P-byte update read from DRAM (a payload pool twice the last-level cache):
the envelope decode, the validating norm pass, the float64 add, all three in one thread,
the same work split over two threads (each adding every other update into its own
sums, so they share nothing but the memory system), and all three with each pass split over
every core's thread as the coordinator does (``kernels.set_threads``). The last lines are the
speed-ups over one thread: near 1 means the passes are bound by memory traffic the cores
share, not by one core's speed.

Run: ``.venv/bin/python bench/bench_aggregation_passes.py [--params 1000000] [--updates 500]``.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alchimia.broker.schemas import UpdateBody, decode
from alchimia.coordinator.strategies import kernels
from bench.bench_aggregation import dram_pool_size, layout, make_pool

Delta = dict[str, np.ndarray]


def per_update_ms(run: Callable[[int], None], n: int) -> float:
    run(min(n, 10))  # warm: kernels compiled, pages touched
    t0 = time.perf_counter()
    run(n)
    return (time.perf_counter() - t0) / n * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=500)
    args = parser.parse_args(argv)
    shapes = layout(args.params)
    nbytes = 4 * args.params
    pool = make_pool(shapes, dram_pool_size(nbytes))
    deltas = [decode(p, UpdateBody, check_finite=False).body.delta for p in pool]  # type: ignore[union-attr]

    def sums() -> Delta:
        return {k: np.zeros(s) for k, s in shapes.items()}

    def fold(acc: Delta, delta: Delta) -> None:
        for a in delta.values():
            kernels.sum_squares(a)
        for k, a in delta.items():
            kernels.add_scaled(acc[k], a, 2.0)

    def decode_only(n: int) -> None:
        for i in range(n):
            decode(pool[i % len(pool)], UpdateBody, check_finite=False)

    def norm_only(n: int) -> None:
        for i in range(n):
            for a in deltas[i % len(deltas)].values():
                kernels.sum_squares(a)

    acc = sums()

    def add_only(n: int) -> None:
        for i in range(n):
            for k, a in deltas[i % len(deltas)].items():
                kernels.add_scaled(acc[k], a, 2.0)

    def one_thread(n: int) -> None:
        mine = sums()
        for i in range(n):
            fold(mine, decode(pool[i % len(pool)], UpdateBody, check_finite=False).body.delta)  # type: ignore[union-attr]

    def two_threads(n: int) -> None:
        inboxes: list[queue.SimpleQueue[Delta | None]] = [queue.SimpleQueue() for _ in range(2)]

        def work(inbox: queue.SimpleQueue[Delta | None]) -> None:
            mine = sums()
            while (delta := inbox.get()) is not None:
                fold(mine, delta)

        workers = [threading.Thread(target=work, args=(q,)) for q in inboxes]
        for w in workers:
            w.start()
        for i in range(n):
            inboxes[i % 2].put(
                decode(pool[i % len(pool)], UpdateBody, check_finite=False).body.delta
            )  # type: ignore[union-attr]
        for q in inboxes:
            q.put(None)
        for w in workers:
            w.join()

    cores = kernels.available_cores()
    print(
        f"P = {args.params:,} float32 params, {len(pool)} distinct updates cycled, "
        f"{args.updates} per measurement"
    )
    rows = [
        ("decode (envelope, zero-copy)", decode_only),
        ("validating norm pass", norm_only),
        ("float64 add", add_only),
        ("all three, one thread", one_thread),
        ("all three, two threads", two_threads),
        (f"all three, passes on {cores} threads", one_thread),
    ]
    times = {}
    for name, run in rows:
        kernels.set_threads(cores if name.endswith(f"{cores} threads") else 1)
        times[name] = ms = per_update_ms(run, args.updates)
        print(f"{name:<34} {ms:7.3f} ms per update  {nbytes / ms / 1e6:6.2f} GB/s of input")
    one = times["all three, one thread"]
    print(
        f"second thread's speed-up: {one / times['all three, two threads']:.2f}x; "
        f"passes split over {cores} threads: {one / times[rows[-1][0]]:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
