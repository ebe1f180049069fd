"""Async mode over a real Mosquitto: a coordinator restart in the middle of a buffer
window loses no accepted update and counts none twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alchimia.local import CoordinatorThread
from broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message
from broker.topics import Topics
from coordinator.settings import CoordinatorSettings
from tests.integration.helpers import RawClient, wait_for

FED = "asyncfed"


def test_restart_mid_window_keeps_accepted_updates_exactly_once(mosquitto,
                                                                tmp_path: Path) -> None:
    topics = Topics(FED)
    settings = CoordinatorSettings.load(
        None, broker=mosquitto.url, federation=FED, state_dir=tmp_path / "state",
        mode="async", buffer_k=3, min_agents=1, rounds=1, staleness="constant")
    agents = {name: RawClient(mosquitto.host, mosquitto.port, f"{FED}-{name}")
              for name in ("a1", "a2", "a3")}
    watcher = RawClient(mosquitto.host, mosquitto.port, f"{FED}-watcher")
    watcher.subscribe(topics.model_current)
    watcher.subscribe(topics.round_current)
    for name, client in agents.items():
        client.publish(topics.agent_status(name),
                       message(name, StatusBody(role="agent", state="online")), retain=True)
    first = CoordinatorThread(settings).start()
    second: CoordinatorThread | None = None
    try:
        wait_for(lambda: watcher.received(topics.round_current), 30, "the async task")
        task: TaskBody = decode(watcher.received(topics.round_current)[-1], TaskBody).body
        assert task.mode == "async" and task.state == "open"
        base: ModelBody = decode(watcher.received(topics.model_current)[0], ModelBody).body
        rng = np.random.default_rng(3)
        deltas = {name: {k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                         for k, v in base.weights.items()} for name in agents}
        samples = {"a1": 10, "a2": 30, "a3": 60}

        def update(name: str) -> bytes:
            return message(name, UpdateBody(round_id=task.round_id, base_version=base.version,
                                            num_samples=samples[name], delta=deltas[name]))

        sent_a1 = update("a1")
        agents["a1"].publish(topics.agent_update("a1"), sent_a1)
        agents["a2"].publish(topics.agent_update("a2"), update("a2"))
        wait_for(lambda: first.coordinator.window is not None
                 and len(first.coordinator.window.accepted) == 2, 30, "two accepted updates")
        first.stop()

        second = CoordinatorThread(settings).start()
        wait_for(lambda: second.coordinator.window is not None
                 and len(second.coordinator.window.accepted) == 2, 30, "resumed window")
        agents["a1"].publish(topics.agent_update("a1"), sent_a1)  # replay of the same message
        agents["a1"].publish(topics.agent_update("a1"), update("a1"))  # same base, new id
        wait_for(lambda: len(second.coordinator.rejections) >= 2, 30, "two rejections")
        reasons = [r.reason for r in second.coordinator.rejections]
        assert any("replayed" in r for r in reasons) and any("already sent" in r for r in reasons)
        agents["a3"].publish(topics.agent_update("a3"), update("a3"))
        wait_for(lambda: second.done, 60, "the window to aggregate")
    finally:
        first.stop()
        if second is not None:
            second.stop()
        for client in agents.values():
            client.close()
    final = decode(watcher.received(topics.model_current)[-1], ModelBody).body
    assert final.version == 1 and final.metadata["contributors"] == ["a1", "a2", "a3"]
    total = sum(samples.values())
    for k, w0 in base.weights.items():
        expected = w0 + sum(samples[n] * deltas[n][k] for n in agents) / total
        np.testing.assert_allclose(final.weights[k], expected, rtol=1e-5, atol=1e-6)
    watcher.close()
