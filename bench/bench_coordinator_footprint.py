"""Footprint of the coordinator process (issue 14 §2): its resident memory idle after start
and after a few rounds, beside the time ``alchimia --help`` takes.

Starts a real Mosquitto and ``alchimia coordinator`` (sync FedAvg, ``eaf-hybrid-v1``, quorum
= ``--agents``, rounds back to back), waits for version 0 and ``--settle`` seconds, and
reads the process's RSS ("idle after start"); then ``--agents`` agents (one paho client in
this process) answer ``--rounds`` tasks with a small delta, and it reads RSS and peak RSS
again ("after the rounds"). Each time it lists which heavy native libraries the process has
mapped (``/proc/PID/maps``): LLVM (numba's JIT), ONNX Runtime, onnx, scipy. Then it runs
``alchimia --help`` and ``alchimia coordinator --help`` ``--repeat`` times each: median
wall time and peak RSS (the console script's code, run as ``python -c``, reads its own).

    .venv/bin/python bench/bench_coordinator_footprint.py [--agents 3] [--rounds 2]
                                                          [--settle 5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alchimia.broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics
from bench.processes import start_coordinator, start_mosquitto, stop_processes

FED = "footprint"
# Native libraries worth naming: a substring of the mapped file's path -> what it is.
HEAVY = {
    "libllvmlite": "LLVM (numba)",
    "onnxruntime_pybind11_state": "onnxruntime",
    "onnx_cpp2py_export": "onnx",
    "/scipy/": "scipy",
    "torch": "torch",
}


def proc_memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of a live process, MB."""
    kb = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            kb[line[:5]] = int(line.split()[1])
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024


def heavy_libraries(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for key, name in HEAVY.items() if key in maps]


class Agents:
    """``n`` agents on one paho client: online statuses, then one update per open task."""

    def __init__(self, port: int, topics: Topics, n: int) -> None:
        self.topics, self.ids = topics, [f"a{i}" for i in range(n)]
        self.model: ModelBody | None = None
        self.versions: list[int] = []
        self.answered: set[int] = set()
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{FED}-agents")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(topics.model_current, 1), (topics.round_current, 1)])
        self.client.loop_start()

    def go_online(self) -> None:
        for agent in self.ids:
            body = StatusBody(
                role="agent", state="online", samples=10, capabilities=["train"], new_heats=1
            )
            self.client.publish(
                self.topics.agent_status(agent), message(agent, body), qos=1, retain=True
            )

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        with self.cond:
            if msg.topic == self.topics.model_current:
                model = decode(msg.payload, ModelBody).body
                assert isinstance(model, ModelBody)
                self.model = model
                self.versions.append(model.version)
                self.cond.notify_all()
                return
            task = decode(msg.payload, TaskBody).body
            assert isinstance(task, TaskBody)
            model = self.model
            if (
                task.state != "open"
                or task.round_id in self.answered
                or model is None
                or model.version != task.base_version
            ):
                return
            self.answered.add(task.round_id)
            delta = {k: np.full(v.shape, 1e-4, np.float32) for k, v in model.weights.items()}
        for agent in (a for a in self.ids if task.selects(a)):
            body = UpdateBody(
                round_id=task.round_id,
                base_version=task.base_version,
                num_samples=10,
                delta=delta,
            )
            self.client.publish(self.topics.agent_update(agent), message(agent, body), qos=1)

    def wait_version(self, version: int, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: version in self.versions, timeout):
                raise TimeoutError(f"no model version {version} within {timeout} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Footprint:
    start_s: float  # process start -> version 0 retained
    idle: tuple[float, float]  # (RSS, peak RSS) MB, idle after start
    idle_libs: list[str]
    after: tuple[float, float]  # after the rounds
    after_libs: list[str]


def coordinator_footprint(agents: int, rounds: int, settle: float) -> Footprint:
    topics = Topics(FED)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, port = start_mosquitto(work)
        started = time.perf_counter()
        coord = start_coordinator(
            port, work, FED, "--mode", "sync", "--min-agents", str(agents), "--min-new-heats", "0"
        )
        swarm = Agents(port, topics, agents)
        try:
            swarm.wait_version(0, 120)
            start_s = time.perf_counter() - started
            time.sleep(settle)
            idle, idle_libs = proc_memory(coord.pid), heavy_libraries(coord.pid)
            swarm.go_online()
            swarm.wait_version(rounds, 300)
            time.sleep(settle)
            out = Footprint(
                start_s, idle, idle_libs, proc_memory(coord.pid), heavy_libraries(coord.pid)
            )
        except TimeoutError:
            print((work / "coordinator.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            swarm.close()
            stop_processes(coord, broker)
    return out


HELP = """import sys
from alchimia.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
        print(int(line.split()[1]) / 1024, file=sys.stderr)
"""
"""What the ``alchimia`` console script runs, then its own peak RSS on stderr (the
process's, after exec: ``ru_maxrss`` of a child counts the parent it was forked from)."""


def help_cost(args: list[str], repeat: int) -> tuple[float, float]:
    """(median wall seconds, peak RSS MB) of ``alchimia ARGS`` run ``repeat`` times."""
    walls, peaks = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", HELP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"alchimia {' '.join(args)}: {done.stderr.decode()[-500:]}")
        peaks.append(float(done.stderr.split()[-1]))
    return statistics.median(walls), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before reading")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each --help")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; eaf-hybrid-v1, sync FedAvg")
    fp = coordinator_footprint(args.agents, args.rounds, args.settle)
    top = [("alchimia --help", ["--help"]), ("alchimia coordinator --help", ["coordinator", "-h"])]
    helps = [(name, *help_cost(cmd, args.repeat)) for name, cmd in top]
    print(f"{'what':<44} {'RSS':>8} {'peak RSS':>9} {'time':>8}  heavy libraries mapped")
    rows = [
        ("coordinator idle after start", fp.idle, fp.idle_libs, f"{fp.start_s:6.2f} s"),
        (
            f"coordinator after {args.rounds} rounds of {args.agents} agents",
            fp.after,
            fp.after_libs,
            "",
        ),
    ]
    for name, (rss, peak), libs, when in rows:
        print(f"{name:<44} {rss:5.0f} MB {peak:6.0f} MB {when:>8}  {', '.join(libs) or '-'}")
    for name, wall, peak in helps:
        print(f"{name:<44} {'':>8} {peak:6.0f} MB {wall:6.2f} s  (median of {args.repeat})")
    print("(time: coordinator start to version 0 published; --help: wall time of the process)")


if __name__ == "__main__":
    main()
