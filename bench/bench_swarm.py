"""Swarm: N lightweight agents speaking docs/PROTOCOL.md against a real Mosquitto and an
``alchimia coordinator`` process (sync FedAvg, quorum = all N, default model).

The agents live in ``--workers`` processes, thousands per process on one asyncio loop
(``bench/swarm_mqtt.py``). Each connects with its offline will, subscribes to
``model/current`` and ``round/current``, publishes a retained online status (``new_heats``
1) and, on each open task that selects it against the model it holds, sends one update (a
small constant delta of the model's shapes). Per N it prints: connect time (every agent's
status acknowledged by the broker; the coordinator's first task, when it had registered
them all), per round the time from the open task to the new model, from the last update
sent to the new model, and to the last agent holding it, accepted updates per second,
coordinator CPU seconds and peak RSS, Mosquitto's peak RSS, and the task's size.

    .venv/bin/python bench/bench_swarm.py [--agents 100,1000] [--rounds 3] [--workers 4]
                                          [--timeout 900]

The coordinator opens rounds back to back (``--min-new-heats 0``); a run that passes
``--timeout`` reports what it completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import queue
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alchimia.broker.codec import Encoded
from alchimia.broker.mosquitto_conf import broker_sizing
from alchimia.broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics
from bench.processes import start_coordinator, start_mosquitto, stop_processes
from bench.swarm_mqtt import PUBACK, PUBLISH, Connection, parse_publish

FED = "swarm"
NUM_SAMPLES = 10
# At most this many connects under way per worker process (Mosquitto's listen backlog).
CONNECTS_IN_FLIGHT = 25
# The default network's model message is ~12-20 kB: its real size, for broker_sizing.
MODEL_MESSAGE_BYTES = 32 * 1024


@dataclass
class RoundTimes:
    """What one worker saw of one round (keyed by base version)."""

    first_sent: float = math.inf
    last_sent: float = -math.inf
    sent: int = 0

    def merge(self, other: RoundTimes) -> None:
        self.first_sent = min(self.first_sent, other.first_sent)
        self.last_sent = max(self.last_sent, other.last_sent)
        self.sent += other.sent


@dataclass
class WorkerReport:
    online_ts: float = math.nan  # every agent of the worker acknowledged online
    rounds: dict[int, RoundTimes] = field(default_factory=dict)
    model_last_ts: dict[int, float] = field(default_factory=dict)  # version -> last agent
    errors: list[str] = field(default_factory=list)


class Decoded:
    """The model and task of the moment, decoded once per process: every agent of a worker
    gets the same bytes."""

    def __init__(self) -> None:
        self._model: tuple[bytes, ModelBody] | None = None
        self._task: tuple[bytes, TaskBody] | None = None
        self.delta: dict[str, np.ndarray | Encoded] | None = None

    def model(self, payload: bytes) -> ModelBody:
        if self._model is None or self._model[0] != payload:
            body = decode(payload, ModelBody).body
            assert isinstance(body, ModelBody)
            self._model = (payload, body)
            if self.delta is None:
                self.delta = {
                    k: np.full(v.shape, 1e-4, np.float32) for k, v in body.weights.items()
                }
        return self._model[1]

    def task(self, payload: bytes) -> TaskBody:
        if self._task is None or self._task[0] != payload:
            body = decode(payload, TaskBody).body
            assert isinstance(body, TaskBody)
            self._task = (payload, body)
        return self._task[1]


async def _agent(
    agent_id: str,
    port: int,
    topics: Topics,
    shared: Decoded,
    report: WorkerReport,
    gate: asyncio.Semaphore,
    online: Callable[[], None],
) -> None:
    will = message(agent_id, StatusBody(role="agent", state="offline"))
    async with gate:
        conn = await Connection.open(
            "127.0.0.1", port, f"{FED}-{agent_id}", topics.agent_status(agent_id), will
        )
        conn.subscribe([topics.model_current, topics.round_current])
        status_pid = conn.publish(
            topics.agent_status(agent_id),
            message(
                agent_id,
                StatusBody(
                    role="agent",
                    state="online",
                    software="swarm/1",
                    samples=NUM_SAMPLES,
                    capabilities=["train"],
                    new_heats=1,
                ),
            ),
            retain=True,
        )
    held: int | None = None
    task: TaskBody | None = None
    answered: set[int] = set()
    try:
        while True:
            kind, flags, body = await conn.read_packet()
            if kind == PUBACK and int.from_bytes(body[:2], "big") == status_pid:
                online()
                continue
            if kind != PUBLISH:
                continue
            pub = parse_publish(flags, body)
            if pub.qos:
                conn.puback(pub.packet_id)
            if not pub.payload:
                continue
            if pub.topic == topics.model_current:
                held = shared.model(pub.payload).version
                report.model_last_ts[held] = time.time()
            elif pub.topic == topics.round_current:
                task = shared.task(pub.payload)
            if (
                task is not None
                and task.state == "open"
                and held == task.base_version
                and task.round_id not in answered
                and task.selects(agent_id)
                and shared.delta is not None
            ):
                answered.add(task.round_id)
                conn.publish(
                    topics.agent_update(agent_id),
                    message(
                        agent_id,
                        UpdateBody(
                            round_id=task.round_id,
                            base_version=task.base_version,
                            num_samples=NUM_SAMPLES,
                            delta=shared.delta,
                        ),
                    ),
                )
                now = time.time()
                times = report.rounds.setdefault(task.base_version, RoundTimes())
                times.merge(RoundTimes(now, now, 1))
    except asyncio.CancelledError:
        await conn.close()
        raise


async def _worker(ids: list[str], port: int, out: mp.Queue, stop: Event) -> None:
    topics, shared, report = Topics(FED), Decoded(), WorkerReport()
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    pending = len(ids)

    def online() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            report.online_ts = time.time()
            out.put(("online", len(ids), report.online_ts))

    tasks = [
        asyncio.create_task(_agent(i, port, topics, shared, report, gate, online)) for i in ids
    ]
    while not stop.is_set():
        await asyncio.sleep(0.2)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                report.errors.append(repr(t.exception()))
        tasks = [t for t in tasks if not t.done()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.put(("report", report))


def worker_main(ids: list[str], port: int, out: mp.Queue, stop: Event) -> None:
    asyncio.run(_worker(ids, port, out, stop))


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit (inherited by Mosquitto) to ``needed`` if the
    hard limit allows; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return max(soft, want)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class Watcher:
    """The bench's own subscriber: when each task and each version reached it."""

    def __init__(self) -> None:
        self.opened: dict[int, float] = {}  # base version -> open task seen
        self.task_bytes = 0
        self.models: dict[int, tuple[float, int]] = {}  # version -> (seen, contributors)

    async def run(self, port: int, topics: Topics) -> None:
        conn = await Connection.open("127.0.0.1", port, f"{FED}-watch", "swarm/watch", b"")
        conn.subscribe([topics.model_current, topics.round_current])
        while True:
            kind, flags, body = await conn.read_packet()
            if kind != PUBLISH:
                continue
            pub = parse_publish(flags, body)
            if pub.qos:
                conn.puback(pub.packet_id)
            now = time.time()
            if pub.topic == topics.model_current and pub.payload:
                model = decode(pub.payload, ModelBody).body
                assert isinstance(model, ModelBody)
                self.models.setdefault(
                    model.version, (now, len(model.metadata.get("contributors", [])))
                )
            elif pub.topic == topics.round_current and pub.payload:
                task = decode(pub.payload, TaskBody).body
                assert isinstance(task, TaskBody)
                if task.state == "open":
                    self.opened.setdefault(task.base_version, now)
                    self.task_bytes = len(pub.payload)


async def _drain(out: mp.Queue, want: str, count: int, deadline: float, sink: list[Any]) -> bool:
    """Collect ``count`` items tagged ``want`` from the workers' queue before ``deadline``."""
    while len([m for m in sink if m[0] == want]) < count:
        if time.time() > deadline:
            return False
        try:
            sink.append(out.get_nowait())
        except queue.Empty:
            await asyncio.sleep(0.05)
    return True


async def run(
    n: int, rounds: int, workers: int, timeout: float, round_timeout: float
) -> dict[str, Any]:
    fds = raise_fd_limit(n + 1024)
    if fds < n + 64:
        raise SystemExit(f"open-file limit {fds} is too low for {n} agents")
    topics = Topics(FED)
    result: dict[str, Any] = {"agents": n, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, port = start_mosquitto(work, sizing=broker_sizing(n, MODEL_MESSAGE_BYTES), log=True)
        coord = start_coordinator(
            port,
            work,
            FED,
            "--mode",
            "sync",
            "--min-agents",
            str(n),
            "--round-timeout",
            str(round_timeout),
            "--min-new-heats",
            "0",
        )
        coord_ps, broker_ps = psutil.Process(coord.pid), psutil.Process(broker.pid)
        watcher = Watcher()
        watch_task = asyncio.create_task(watcher.run(port, topics))
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        stop = ctx.Event()
        ids = [f"s{i:05d}" for i in range(n)]
        procs = [
            ctx.Process(target=worker_main, args=(ids[w::workers], port, out, stop))
            for w in range(min(workers, n))
        ]
        deadline = time.time() + timeout
        msgs: list[Any] = []
        try:
            while not watcher.models:  # the coordinator is up: version 0 is retained
                if time.time() > deadline or coord.poll() is not None:
                    raise RuntimeError("the coordinator did not publish a model")
                await asyncio.sleep(0.05)
            started = time.time()
            cpu0 = cpu_s(coord_ps)
            for p in procs:
                p.start()
            if await _drain(out, "online", len(procs), deadline, msgs):
                result["connect_s"] = max(m[2] for m in msgs if m[0] == "online") - started
            while 0 not in watcher.opened and time.time() < deadline:
                await asyncio.sleep(0.05)
            if 0 in watcher.opened:
                result["registered_s"] = watcher.opened[0] - started
            cpu1 = cpu_s(coord_ps)
            result["coordinator_cpu_connect_s"] = cpu1 - cpu0
            while rounds not in watcher.models and time.time() < deadline:
                if coord.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            result["timed_out"] = rounds not in watcher.models
            if coord.poll() is None:
                result["coordinator_cpu_rounds_s"] = cpu_s(coord_ps) - cpu1
                result["coordinator_peak_rss_mb"] = peak_rss_mb(coord.pid)
                result["coordinator_rss_mb"] = coord_ps.memory_info().rss / 2**20
            result["broker_peak_rss_mb"] = peak_rss_mb(broker.pid)
            result["broker_rss_mb"] = broker_ps.memory_info().rss / 2**20
            result["task_bytes"] = watcher.task_bytes
        finally:
            stop.set()
            await _drain(
                out, "report", len([p for p in procs if p.pid is not None]), time.time() + 60, msgs
            )
            for p in procs:
                if p.pid is not None:
                    p.join(10)
                    if p.is_alive():
                        p.kill()
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await watch_task
            stop_processes(coord, broker)
            result["coordinator_log_tail"] = (
                (work / "coordinator.log").read_text(errors="replace").splitlines()[-5:]
            )
        reports: list[WorkerReport] = [m[1] for m in msgs if m[0] == "report"]
    merged: dict[int, RoundTimes] = {}
    for rep in reports:
        for base, times in rep.rounds.items():
            merged.setdefault(base, RoundTimes()).merge(times)
    result["errors"] = [e for rep in reports for e in rep.errors][:5]
    for base in sorted(merged):
        if base + 1 not in watcher.models:
            continue
        seen, contributors = watcher.models[base + 1]
        times = merged[base]
        last_agent = max(
            (rep.model_last_ts.get(base + 1, -math.inf) for rep in reports), default=math.nan
        )
        result["rounds"].append(
            {
                "round": base + 1,
                "sent": times.sent,
                "accepted": contributors,
                "open_to_model_s": seen - watcher.opened.get(base, math.nan),
                "last_update_to_model_s": seen - times.last_sent,
                "model_to_last_agent_s": last_agent - seen,
                "accepted_per_s": contributors / (seen - times.first_sent),
            }
        )
    return result


def _print(r: dict[str, Any]) -> None:
    n = r["agents"]
    print(
        f"== {n} agents: connect (all statuses acknowledged) "
        f"{r.get('connect_s', math.nan):.1f} s, first task (coordinator registered all) "
        f"{r.get('registered_s', math.nan):.1f} s, task message {r.get('task_bytes', 0):,} B"
    )
    for rd in r["rounds"]:
        print(
            f"   round {rd['round']}: {rd['sent']} sent, {rd['accepted']} accepted; open -> "
            f"model {rd['open_to_model_s']:.2f} s, last update -> model "
            f"{rd['last_update_to_model_s']:.2f} s, model -> last agent "
            f"{rd['model_to_last_agent_s']:.2f} s; {rd['accepted_per_s']:.0f} accepted "
            f"updates/s"
        )
    print(
        f"   coordinator CPU: {r.get('coordinator_cpu_connect_s', math.nan):.1f} s while "
        f"agents connected, {r.get('coordinator_cpu_rounds_s', math.nan):.1f} s for the "
        f"rounds; RSS peak {r.get('coordinator_peak_rss_mb', math.nan):.0f} MB "
        f"(now {r.get('coordinator_rss_mb', math.nan):.0f} MB); mosquitto RSS peak "
        f"{r.get('broker_peak_rss_mb', math.nan):.0f} MB (now "
        f"{r.get('broker_rss_mb', math.nan):.0f} MB)"
    )
    if r.get("timed_out"):
        print(f"   NOT COMPLETE: {len(r['rounds'])} round(s) within the time limit")
    for e in r["errors"]:
        print(f"   agent error: {e}")
    if r.get("timed_out") or r["errors"]:
        for line in r["coordinator_log_tail"]:
            print(f"   coordinator log: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--agents", default="100,1000", help="comma-separated swarm sizes, run one after the other"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="agent processes")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds a swarm size may take, start to last round",
    )
    parser.add_argument(
        "--round-timeout", type=float, default=600.0, help="the coordinator's round deadline"
    )
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.workers} agent "
        f"processes; sync FedAvg, quorum = all, eaf-hybrid-v1"
    )
    for n in (int(x) for x in args.agents.split(",")):
        _print(asyncio.run(run(n, args.rounds, args.workers, args.timeout, args.round_timeout)))


if __name__ == "__main__":
    main()
