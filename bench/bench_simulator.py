"""How fast the simulator feeds the rest of the system.

Prints heats per second (outcomes only), heats per second with full per-second signals
(as arrays and as iterated rows) and signal samples per second. Run:
    .venv/bin/python bench/bench_simulator.py [--heats N] [--signal-heats N]
"""

from __future__ import annotations

import argparse
import time

from alchimia.agent.sim import SimulatedPlant, default_plants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heats", type=int, default=3000, help="heats for the outcome run")
    parser.add_argument("--signal-heats", type=int, default=100, help="heats with signals")
    args = parser.parse_args(argv)

    profile, seed = default_plants(1)[0]
    plant = SimulatedPlant(profile, seed)
    plant.heats(5)  # warm up imports and caches

    t0 = time.perf_counter()
    heats = plant.heats(args.heats)
    dt = time.perf_counter() - t0
    print(f"outcomes only:        {args.heats / dt:10.0f} heats/s  ({args.heats} heats)")

    subset = heats[: args.signal_heats]
    t0 = time.perf_counter()
    samples = 0
    for h in subset:
        ts, _ = h.signal_arrays()
        samples += ts.size
    dt_arrays = time.perf_counter() - t0
    print(
        f"signal arrays:        {len(subset) / dt_arrays:10.1f} heats/s  "
        f"{samples / dt_arrays:12.0f} samples/s  ({samples / len(subset):.0f} samples/heat)"
    )

    t0 = time.perf_counter()
    rows = 0
    for h in subset:
        for _ in h.signals():
            rows += 1
    dt_rows = time.perf_counter() - t0
    print(
        f"signal rows (dicts):  {len(subset) / dt_rows:10.1f} heats/s  "
        f"{rows / dt_rows:12.0f} samples/s"
    )

    t0 = time.perf_counter()
    fresh = SimulatedPlant(profile, seed + 1).heats(len(subset))
    for h in fresh:
        h.signal_arrays()
    dt_full = time.perf_counter() - t0
    print(f"heat + signal arrays: {len(fresh) / dt_full:10.1f} heats/s")


if __name__ == "__main__":
    main()
