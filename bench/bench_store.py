"""Benchmark of the agent's sensor store: throughput into influxd and agent CPU per point.

Why CPU and not wall time: the agent shares an edge gateway with the furnace's other
software, so what matters is the CPU it spends per point (encoding, spooling with fsync,
gzip, HTTP), measured with ``getrusage`` of this process only (influxd is a child and not
counted) minus the main thread's CPU spent making the synthetic points. Wall-clock
throughput is printed too, as a figure, never asserted.

Run: ``.venv/bin/python bench/bench_store.py [--points 1000000]``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures

from agent.store import InfluxStore, Point, SQLiteStore, Store
from agent.store.points import LineEncoder
from agent.store.spool import Spool
from tests.fixtures.influxd import start_influxd

T0 = 1_700_000_000_000_000_000
CHANNELS = ("power_mw", "current_ka", "voltage_v", "electrode_mm", "temp_c", "o2_nm3h",
            "carbon_kgmin", "pf", "thd", "noise_db")


def sensor_chunk(start: int, n: int, fields: int, full_precision: bool) -> list[Point]:
    """``n`` points at 1 kHz; a new heat every 3,000,000 points, like one furnace's day.

    Sensor values have a few decimals (what a PLC reports); ``full_precision`` uses random
    17-digit floats, the worst case for float formatting.
    """
    out = []
    rnd = random.Random(start)
    for i in range(start, start + n):
        tags = _tags(i // 3_000_000)
        if full_precision:
            values = {CHANNELS[k]: rnd.random() * 1000 for k in range(fields)}
        else:
            values = {CHANNELS[k]: round(500 + 400 * math.sin(i / 997 + k), 3)
                      for k in range(fields)}
        out.append(Point("eaf", tags, values, T0 + i * 1_000_000))
    return out


_TAG_CACHE: dict[int, dict[str, str]] = {}


def _tags(heat: int) -> dict[str, str]:
    # One tags dict per heat, as a real source keeps it.
    if heat not in _TAG_CACHE:
        _TAG_CACHE[heat] = {"plant": "plant-a", "furnace": "eaf-1", "heat": f"H{heat:05d}"}
    return _TAG_CACHE[heat]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all our threads, not influxd
    return r.ru_utime + r.ru_stime


def chunks(total: int, chunk: int, fields: int, full: bool) -> Iterator[tuple[list[Point], float]]:
    """Yield chunks of points with the main-thread CPU it took to make them."""
    for start in range(0, total, chunk):
        t = time.thread_time()
        pts = sensor_chunk(start, min(chunk, total - start), fields, full)
        yield pts, time.thread_time() - t


def thread_cpu_seconds(native_id: int) -> float:
    """CPU of one of our threads (Linux /proc), to split the caller's from the sender's."""
    with open(f"/proc/self/task/{native_id}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def sender_native_id() -> int | None:
    for t in threading.enumerate():
        if t.name.startswith("alchimia-store-sender") and t.native_id is not None:
            return t.native_id
    return None


def run_store(label: str, store: Store, total: int, chunk: int, fields: int, full: bool,
              flush: Callable[[], None]) -> tuple[float, float]:
    gen_cpu = 0.0
    sender = sender_native_id()
    sender0 = thread_cpu_seconds(sender) if sender else 0.0
    main0 = time.thread_time()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    for pts, made in chunks(total, chunk, fields, full):
        gen_cpu += made
        store.write(pts)
    write_path = time.thread_time() - main0 - gen_cpu
    flush()
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds() - cpu0 - gen_cpu
    if sender:
        sent = thread_cpu_seconds(sender) - sender0
        print(f"  {label.strip()}: write path (encode + spool + fsync, caller's thread) "
              f"{write_path / total * 1e6:.2f} ms, sender thread (read spool + gzip + HTTP) "
              f"{sent / total * 1e6:.2f} ms per 1,000 points")
    rate = total / wall
    per_k = cpu / total * 1000 * 1000
    print(f"{label}: {total:,} points x {fields} fields in {wall:.1f} s wall = "
          f"{rate:,.0f} points/s sustained; agent CPU {cpu:.2f} s = {per_k:.2f} ms per 1,000 "
          f"points ({per_k / fields:.2f} ms per 1,000 field values); "
          f"{cpu / wall * 100:.0f}% of one core at that rate, "
          f"{per_k / 10:.2f}% of a core at 1,000 points/s")
    return rate, per_k


def breakdown(fields: int, chunk: int) -> None:
    """Where the agent's CPU goes, per 1,000 points (median of 5 runs: the VM is noisy)."""
    n = 50_000
    for full in (False, True):
        pts = sensor_chunk(0, n, fields, full)
        enc_t, gz_t, sp_t = [], [], []
        for _ in range(5):
            enc = LineEncoder()
            t = time.process_time()
            data = enc.encode(pts)
            enc_t.append(time.process_time() - t)
            t = time.process_time()
            for i in range(0, len(data), 1 << 20):
                c = zlib.compressobj(1, zlib.DEFLATED, 31)
                c.compress(data[i : i + (1 << 20)])
                c.flush()
            gz_t.append(time.process_time() - t)
            with tempfile.TemporaryDirectory() as d:
                spool = Spool(Path(d), max_bytes=1 << 32)
                per = len(data) // (n // chunk)
                recs = [(data[i : i + per], chunk) for i in range(0, len(data), per)]
                t = time.process_time()
                for rec in recs:
                    spool.append([rec])
                sp_t.append(time.process_time() - t)
                spool.close()

        def ms(xs: list[float]) -> float:
            return sorted(xs)[2] / n * 1e6

        kind = "full-precision floats" if full else "sensor values"
        print(f"  breakdown, {kind}: encode {ms(enc_t):.2f} ms, gzip-1 {ms(gz_t):.2f} ms, "
              f"spool append+fsync {ms(sp_t):.2f} ms per 1,000 points "
              f"({len(data) / n:.0f} bytes of line protocol a point)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--fields", type=int, default=10, choices=range(1, len(CHANNELS) + 1))
    ap.add_argument("--chunk", type=int, default=1000, help="points per write() call")
    ap.add_argument("--full-precision", action="store_true",
                    help="random 17-digit floats instead of sensor-like values")
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    args = ap.parse_args()
    fsync = not args.no_fsync
    print(f"store benchmark: {args.points:,} points, {args.fields} fields each, "
          f"{args.chunk} points per write(), fsync={fsync}, "
          f"{'full-precision' if args.full_precision else 'sensor'} values")
    with tempfile.TemporaryDirectory(prefix="alchimia-bench-") as tmp:
        root = Path(tmp)
        server = start_influxd(root / "influxd")
        try:
            store = InfluxStore(server.url, "bench", root / "spool", fsync=fsync,
                                flush_timeout=3600)
            run_store("InfluxDB store", store, args.points, args.chunk, args.fields,
                      args.full_precision, store.flush)
            check = sum(row[1] for s in store.http.query('SELECT COUNT("power_mw") FROM "eaf"')
                        for row in s["values"])
            print(f"  influxd holds {check:,} points (expected {args.points:,}); "
                  f"stats {store.stats}")
            store.close()
        finally:
            server.stop()
        if not args.skip_sqlite:
            sqlite = SQLiteStore(root / "bench.sqlite3", fsync=fsync)
            run_store("SQLite store  ", sqlite, args.points, args.chunk, args.fields,
                      args.full_precision, sqlite.flush)
            print(f"  SQLite holds {sqlite.count('eaf', {}):,} points")
            sqlite.close()
    breakdown(args.fields, args.chunk)


if __name__ == "__main__":
    main()
