"""Throughput of the agent's data path: a simulated plant's history through the store
(SQLite and a local influxd) and back out as assembled heats.

    .venv/bin/python bench/bench_ingest.py [--heats 300] [--periods 1,5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures

from alchimia.agent.ingest.simulated import simulated_pipeline
from alchimia.agent.store import InfluxStore, SQLiteStore
from tests.fixtures.influxd import start_influxd


def measure(label: str, store: object, heats: int, period: float) -> None:
    pipe = simulated_pipeline(1, 0, heats, 0.0, store, period_s=period)  # type: ignore[arg-type]
    start = time.perf_counter()
    got = pipe.history()
    wall = time.perf_counter() - start
    assert len(got) == heats, f"assembled {len(got)} of {heats} heats"
    print(
        f"{label:8s} period {period:4.1f} s: {pipe.points_written:8d} points in {wall:6.1f} s "
        f"= {pipe.points_written / wall:8.0f} points/s, {heats / wall:6.1f} heats/s "
        f"(ingest + assembly)",
        flush=True,
    )
    pipe.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heats", type=int, default=300)
    parser.add_argument("--periods", default="1,5")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    server = start_influxd(tmp / "influxd")
    try:
        for i, period in enumerate(float(p) for p in args.periods.split(",")):
            measure("SQLite", SQLiteStore(tmp / f"s{i}.sqlite3"), args.heats, period)
            measure(
                "influxd",
                InfluxStore(server.url, f"bench{i}", tmp / f"spool{i}"),
                args.heats,
                period,
            )
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
