"""kill -9 of a coordinator process while updates stream in, over a real Mosquitto: the
group commit (off the event loop, coordinator/group_commit.py) acknowledges an update
only once it is durable, so the restarted coordinator gets every update not yet
acknowledged again, knows every one committed as seen, and the window closes with each
update counted exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from alchimia.broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.helpers import RawClient, wait_for

pytestmark = pytest.mark.integration

FED = "killfed"
UPDATES = 1000


def start_coordinator(mosquitto: Mosquitto, state_dir: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alchimia",
                "coordinator",
                "--broker",
                mosquitto.url,
                "--federation",
                FED,
                "--state-dir",
                str(state_dir),
                "--mode",
                "async",
                "--buffer-k",
                str(UPDATES),
                "--min-agents",
                "1",
                "--rounds",
                "1",
            ],
            env={
                **os.environ,
                "ALCHIMIA_COORDINATOR_RATE_LIMIT_BURST": "100000",
                "ALCHIMIA_COORDINATOR_STALENESS": "constant",
            },
            stdout=out,
            stderr=out,
        )


def committed(state_dir: Path) -> int:
    """Updates the coordinator committed so far, as a restart would find them."""
    try:
        db = sqlite3.connect(state_dir / "coordinator.sqlite", timeout=1)
        try:
            return db.execute("SELECT COUNT(*) FROM seen_messages").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_kill_9_mid_stream_counts_every_update_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topics = Topics(FED)
    state_dir, log = tmp_path / "state", tmp_path / "coordinator.log"
    watcher = RawClient(mosquitto.host, mosquitto.port, f"{FED}-watcher")
    watcher.subscribe(topics.model_current)
    watcher.subscribe(topics.round_current)
    agents = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{FED}-agents")
    agents.max_inflight_messages_set(UPDATES)
    agents.max_queued_messages_set(0)
    agents.connect(mosquitto.host, mosquitto.port)
    agents.loop_start()
    coordinator = start_coordinator(mosquitto, state_dir, log)
    try:
        agents.publish(
            topics.agent_status("a0"),
            message("a0", StatusBody(role="agent", state="online")),
            qos=1,
            retain=True,
        )
        wait_for(lambda: watcher.received(topics.round_current), 60, "the async task")
        task = decode(watcher.received(topics.round_current)[-1], TaskBody).body
        base = decode(watcher.received(topics.model_current)[0], ModelBody).body
        rng = np.random.default_rng(14)
        deltas = [
            {
                k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                for k, v in base.weights.items()
            }
            for _ in range(UPDATES)
        ]
        for i, delta in enumerate(deltas):
            body = UpdateBody(
                round_id=task.round_id, base_version=base.version, num_samples=10, delta=delta
            )
            agents.publish(topics.agent_update(f"a{i + 1}"), message(f"a{i + 1}", body), qos=1)

        def versions() -> set[int]:
            return {
                decode(m, ModelBody).body.version for m in watcher.received(topics.model_current)
            }

        # Killed four times, each once it committed a further tenth of the updates and a
        # little later (a kill right after a commit would find nothing acknowledged and
        # not yet durable, were there such a thing).
        for part, delay in enumerate((0.0, 0.0007, 0.0015, 0.003), start=1):
            deadline = time.monotonic() + 60
            while committed(state_dir) < UPDATES * part // 10 and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(delay)
            os.kill(coordinator.pid, signal.SIGKILL)
            coordinator.wait(10)
            at_kill = committed(state_dir)
            assert at_kill >= UPDATES * part // 10
            if part == 1:
                assert at_kill < UPDATES  # killed mid-stream
            if versions() != {0}:
                break  # done before the kill: the restart has nothing left to do
            coordinator = start_coordinator(mosquitto, state_dir, log)
        wait_for(lambda: 1 in versions(), 120, "version 1, after the restarts")
        final = next(
            body
            for m in watcher.received(topics.model_current)
            if (body := decode(m, ModelBody).body).version == 1
        )
        assert sorted(final.metadata["contributors"]) == sorted(f"a{i + 1}" for i in range(UPDATES))
        for k, w0 in base.weights.items():
            mean = np.mean([d[k].astype(np.float64) for d in deltas], axis=0)
            np.testing.assert_allclose(final.weights[k], w0 + mean, rtol=1e-5, atol=1e-6)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait(10)
        agents.loop_stop()
        watcher.close()
