"""Accepted updates per second of a coordinator process, durability on, over a real
Mosquitto: N agents' updates of a small model land in one async buffer window
(``buffer_k = N``), published as fast as one client can; the figure is N over the time
from the first publish to the version they make.

    .venv/bin/python bench/bench_coordinator_ingest.py [--updates 4000] [--architecture ...]
        [--unpacker fast,walk] [--repeat 3] [--breakdown] [--profile coordinator.prof]

``--unpacker walk`` runs the coordinator with ``broker.unpacker``'s fast path for small
messages turned off (every message through the zero-copy walk), to compare the two in one
session: ``--unpacker fast,walk --repeat 3`` alternates them, 3 runs each, and prints the
load average before each run (the machine's other jobs move the figure). ``--profile``
runs the coordinator under cProfile and writes its statistics (of the event loop's thread)
to that file, one per run (``.fast.1``, ...), read with ``python -m pstats``.
``--breakdown`` times a few of the coordinator's functions (handle, decode, unpack,
on_update, row staging, a commit on the event loop, the group commit's writer thread)
from its first update handled to its last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from alchimia.broker.mosquitto_conf import DEFAULT_MESSAGE_SIZE_LIMIT, BrokerSizing
from alchimia.broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for bench.processes
from bench.processes import start_mosquitto

FED = "ingest"
# The coordinator's command line, run by this bootstrap: the unpacker's fast path off for
# BENCH_UNPACKER=walk; cProfile around it when BENCH_PROFILE names a file; with
# BENCH_BREAKDOWN, the time spent in a few functions, written there as JSON at exit;
# BENCH_GROUP_COMMIT_S (an experiment) replaces the group commit's wait.
_BOOT = """
import json, os, sys, time
import alchimia.broker.unpacker as unpacker
if os.environ["BENCH_UNPACKER"] == "walk":
    unpacker.SMALL_MESSAGE_BYTES = -1
from alchimia.cli import main
if os.environ.get("BENCH_GROUP_COMMIT_S"):
    import alchimia.coordinator.group_commit as group_commit
    group_commit.GROUP_COMMIT_S = float(os.environ["BENCH_GROUP_COMMIT_S"])
totals = {}
def timed(owner, name, key):
    fn = getattr(owner, name)
    totals[key] = [0, 0.0]
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = totals[key]
            entry[0] += 1
            entry[1] += time.perf_counter() - t0
    setattr(owner, name, wrapper)
window = {}
breakdown = os.environ.get("BENCH_BREAKDOWN")
if breakdown:
    import alchimia.broker.codec as codec
    import alchimia.coordinator.lifecycle as lifecycle
    import alchimia.coordinator.persistence as persistence
    import alchimia.coordinator.service as service
    timed(service.Coordinator, "handle", "handle")
    timed(service, "decode", "decode")
    timed(codec, "unpack_views", "unpack")
    timed(lifecycle.Lifecycle, "on_update", "on_update")
    timed(persistence.CoordinatorDB, "accept_update", "stage_rows")
    timed(persistence.CoordinatorDB, "commit", "commit")
    if hasattr(persistence.CoordinatorDB, "_write_batch"):  # the group commit's writer thread
        timed(persistence.CoordinatorDB, "_write_batch", "writer_thread")
    handle = service.Coordinator.handle
    def first_and_last(self, topic, payload):
        if topic.endswith("/update"):
            window.setdefault("first", (time.perf_counter(), time.process_time()))
        try:
            return handle(self, topic, payload)
        finally:
            if topic.endswith("/update"):
                window["last"] = (time.perf_counter(), time.process_time())
    service.Coordinator.handle = first_and_last
path = os.environ.get("BENCH_PROFILE")
try:
    if path:
        import cProfile
        profile = cProfile.Profile()
        try:
            code = profile.runcall(main, sys.argv[1:])
        finally:
            profile.dump_stats(path)
    else:
        code = main(sys.argv[1:])
finally:
    if breakdown and "first" in window:
        (w0, c0), (w1, c1) = window["first"], window["last"]
        out = {"wall_s": w1 - w0, "cpu_s": c1 - c0, "calls": totals}
        with open(breakdown, "w") as f:
            json.dump(out, f)
raise SystemExit(code)
"""


def _cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watcher:
    def __init__(self, port: int, topics: Topics) -> None:
        self.topics, self.models, self.tasks = topics, [], []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ingest-watch")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(topics.model_current, 1), (topics.round_current, 1)])
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            if msg.topic == self.topics.model_current:
                self.models.append(decode(msg.payload, ModelBody).body)
            else:
                self.tasks.append(decode(msg.payload, TaskBody).body)
            self.cond.notify_all()

    def wait(self, what: str, pred: object, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(pred, timeout):  # type: ignore[arg-type]
                raise TimeoutError(f"no {what} within {timeout} s")


def run(
    n: int,
    architecture: str,
    unpacker: str = "fast",
    profile: str = "",
    breakdown: bool = False,
    group_commit_s: float | None = None,
) -> dict[str, Any]:
    topics = Topics(FED)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # No queue limit towards the coordinator: this measures the coordinator, not drops.
        unlimited = BrokerSizing(DEFAULT_MESSAGE_SIZE_LIMIT, 0, 0)
        broker, port = start_mosquitto(work, persistence=True, sizing=unlimited)
        coord = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BOOT,
                "coordinator",
                "--broker",
                f"mqtt://127.0.0.1:{port}",
                "--federation",
                FED,
                "--state-dir",
                str(work / "state"),
                "--mode",
                "async",
                "--buffer-k",
                str(n),
                "--min-agents",
                "1",
                "--rounds",
                "1",
                "--architecture",
                architecture,
            ],
            env={
                **os.environ,
                "ALCHIMIA_COORDINATOR_RATE_LIMIT_BURST": "100000",
                "ALCHIMIA_COORDINATOR_STALENESS": "constant",
                "BENCH_UNPACKER": unpacker,
                **({"BENCH_PROFILE": profile} if profile else {}),
                **({"BENCH_BREAKDOWN": str(work / "breakdown.json")} if breakdown else {}),
                **(
                    {"BENCH_GROUP_COMMIT_S": str(group_commit_s)}
                    if group_commit_s is not None
                    else {}
                ),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        watcher = Watcher(port, topics)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ingest-agents")
        pub.max_inflight_messages_set(1000)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        made = False  # the version was made: the coordinator is stopping by itself
        try:
            pub.publish(
                topics.agent_status("a0"),
                message("a0", StatusBody(role="agent", state="online")),
                qos=1,
                retain=True,
            )
            watcher.wait("async task", lambda: watcher.tasks and watcher.models, 60)
            task, base = watcher.tasks[-1], watcher.models[-1]
            rng = np.random.default_rng(0)
            delta = {
                k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                for k, v in base.weights.items()
            }
            payloads = [
                message(
                    f"a{i}",
                    UpdateBody(
                        round_id=task.round_id,
                        base_version=base.version,
                        num_samples=10,
                        delta=delta,
                    ),
                )
                for i in range(n)
            ]
            cpu_before = _cpu_s(coord.pid)
            started = time.perf_counter()
            for i, payload in enumerate(payloads):
                pub.publish(topics.agent_update(f"a{i}"), payload, qos=1)
            published = time.perf_counter() - started
            watcher.wait("new version", lambda: any(m.version == 1 for m in watcher.models), 600)
            elapsed = time.perf_counter() - started
            cpu = _cpu_s(coord.pid) - cpu_before
            made = True
        finally:
            pub.loop_stop()
            try:
                # Done with its one round, it stops by itself: a SIGTERM while it writes its
                # profile or breakdown (after its event loop ended) would leave them empty.
                _, err = coord.communicate(timeout=60 if made else 0.1)
            except subprocess.TimeoutExpired:
                coord.terminate()
                _, err = coord.communicate(timeout=30)
            if coord.returncode not in (0, -15):
                print(err.decode(errors="replace")[-3000:], file=sys.stderr)
            watcher.client.loop_stop()
            broker.terminate()
            broker.wait(10)
        size = len(payloads[0])
        times = work / "breakdown.json"
        spent = json.loads(times.read_text()) if breakdown and times.exists() else None
    return {
        "updates": n,
        "bytes_per_update": size,
        "publish_s": published,
        "total_s": elapsed,
        "accepted_per_s": n / elapsed,
        "cpu_s_per_update": cpu / n,
        "breakdown": spent,
    }


def _breakdown(spent: dict[str, Any]) -> str:
    """Where the coordinator's time went, from its first update handled to its last."""
    wall, calls = spent["wall_s"], spent["calls"]
    per = {k: (c, t) for k, (c, t) in calls.items()}
    n = per["handle"][0] or 1
    # ``commit`` blocks the event loop; ``writer_thread`` (the group commit's inserts and
    # commit, since it left the event loop) runs beside it.
    handle, commit = per["handle"][1], per["commit"][1]
    parts = [
        f"{wall:.2f} s from first update handled to last, {spent['cpu_s']:.2f} s of CPU time "
        f"meanwhile, all threads ({spent['cpu_s'] / n * 1e6:.0f} us/update)",
        *(
            f"{k} {t:.2f} s ({t / n * 1e6:.0f} us/update, {c} calls"
            + (", beside the event loop)" if k == "writer_thread" else ")")
            for k, (c, t) in per.items()
            if c
        ),
        f"on the event loop outside handle and commit (paho/aiomqtt, asyncio, the group "
        f"commit's acknowledgements, waiting for a core) "
        f"{wall - handle - commit:.2f} s ({(wall - handle - commit) / n * 1e6:.0f} us/update)",
    ]
    return "\n    ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=4000)
    parser.add_argument("--architecture", default="eaf-hybrid-v1")
    parser.add_argument(
        "--unpacker",
        default="fast",
        help="comma-separated: fast (the default path), walk (fast path off)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each --unpacker")
    parser.add_argument("--profile", default="", help="cProfile the coordinator into this file")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="time the coordinator's handle, decode, unpack, on_update, row staging and commit",
    )
    parser.add_argument(
        "--group-commit-s",
        type=float,
        default=None,
        help="experiment: the coordinator's group commit waits this long (default its own)",
    )
    args = parser.parse_args()
    modes = args.unpacker.split(",")
    if not set(modes) <= {"fast", "walk"}:
        parser.error("--unpacker takes fast and/or walk")
    results: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(1, args.repeat + 1):
        for mode in modes:
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            profile = f"{args.profile}.{mode}.{i}" if args.profile else ""
            r = run(
                args.updates, args.architecture, mode, profile, args.breakdown, args.group_commit_s
            )
            results[mode].append(r["accepted_per_s"])
            cpus[mode].append(r["cpu_s_per_update"] * 1e3)
            print(
                f"[{mode}, run {i}, load {load}] {r['updates']} updates of "
                f"{r['bytes_per_update']} B ({args.architecture}): published in "
                f"{r['publish_s']:.2f} s, version made after {r['total_s']:.2f} s: "
                f"{r['accepted_per_s']:.0f} accepted updates/s (durable, group commit), "
                f"coordinator CPU {r['cpu_s_per_update'] * 1e3:.3f} ms/update (all threads)",
                flush=True,
            )
            if r["breakdown"]:
                print("    " + _breakdown(r["breakdown"]), flush=True)
    if args.repeat > 1 or len(modes) > 1:
        for mode, rates in results.items():
            print(
                f"{mode}: {', '.join(f'{r:.0f}' for r in rates)} accepted updates/s "
                f"(min {min(rates):.0f}, median {statistics.median(rates):.0f}, "
                f"max {max(rates):.0f}); "
                f"CPU {', '.join(f'{c:.3f}' for c in cpus[mode])} ms/update "
                f"(median {statistics.median(cpus[mode]):.3f})"
            )


if __name__ == "__main__":
    main()
