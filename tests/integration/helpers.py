"""Small MQTT helpers for integration tests (a raw client, retained-message fetch)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt


class RawClient:
    """A plain paho client: what an outsider (or an attacker) on the broker can do."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alchimia(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The ``alchimia`` command as a separate process, output captured as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "alchimia", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_until_coordinator_exits(
    coordinator: subprocess.Popen, agents: list[subprocess.Popen], timeout: float = 180
) -> tuple[int, str, list[str]]:
    """Wait for a coordinator started with ``--rounds``; stop the agents; return
    (coordinator exit code, coordinator output, agent outputs)."""
    try:
        out, _ = coordinator.communicate(timeout=timeout)
    finally:
        for a in agents:
            a.terminate()
        logs = [a.communicate(timeout=30)[0] for a in agents]
    return coordinator.returncode, out, logs
