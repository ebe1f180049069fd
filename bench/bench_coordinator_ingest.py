"""Accepted updates per second of a coordinator process, durability on, over a real
Mosquitto: N agents' updates of a small model land in one async buffer window
(``buffer_k = N``), published as fast as one client can; the figure is N over the time
from the first publish to the version they make. Also the coordinator's peak memory.

    .venv/bin/python bench/bench_coordinator_ingest.py [--updates 4000] [--architecture ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from alchimia.broker.embedded import free_port
from alchimia.broker.mosquitto_conf import plain_config
from alchimia.broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics

FED = "ingest"


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # No queue limit towards the coordinator: this measures the coordinator, not drops.
    conf.write_text(plain_config(port, workdir) + "max_queued_messages 0\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


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


def run(n: int, architecture: str) -> dict[str, float]:
    topics = Topics(FED)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, port = _start_mosquitto(work)
        coord = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alchimia",
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
            started = time.perf_counter()
            for i, payload in enumerate(payloads):
                pub.publish(topics.agent_update(f"a{i}"), payload, qos=1)
            published = time.perf_counter() - started
            watcher.wait("new version", lambda: any(m.version == 1 for m in watcher.models), 600)
            elapsed = time.perf_counter() - started
        finally:
            pub.loop_stop()
            coord.terminate()
            _, err = coord.communicate(timeout=30)
            if coord.returncode not in (0, -15):
                print(err.decode(errors="replace")[-3000:], file=sys.stderr)
            watcher.client.loop_stop()
            broker.terminate()
            broker.wait(10)
        size = len(payloads[0])
    return {
        "updates": n,
        "bytes_per_update": size,
        "publish_s": published,
        "total_s": elapsed,
        "accepted_per_s": n / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=4000)
    parser.add_argument("--architecture", default="eaf-hybrid-v1")
    args = parser.parse_args()
    r = run(args.updates, args.architecture)
    print(
        f"{r['updates']} updates of {r['bytes_per_update']} B ({args.architecture}): "
        f"published in {r['publish_s']:.2f} s, version made after {r['total_s']:.2f} s: "
        f"{r['accepted_per_s']:.0f} accepted updates/s (durable, group commit)"
    )


if __name__ == "__main__":
    main()
