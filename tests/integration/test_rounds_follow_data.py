"""Rounds follow the data, over a real Mosquitto with two raw agents: no round opens while
they report no new heats, one opens once enough of them do, and an update sent counts
the agent's heats as learned, so the next round waits for new heats again."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from alchimia.broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.local import CoordinatorThread
from tests.integration.helpers import RawClient, wait_for

FED = "followdata"
AGENTS = ("p1", "p2")


def test_rounds_open_only_on_new_heats(mosquitto, tmp_path: Path) -> None:
    topics = Topics(FED)
    settings = CoordinatorSettings.load(
        None,
        broker=mosquitto.url,
        federation=FED,
        state_dir=tmp_path / "state",
        min_agents=2,
        min_new_heats=3,
        round_timeout_s=60,
    )
    agents = {a: RawClient(mosquitto.host, mosquitto.port, f"{FED}-{a}") for a in AGENTS}
    watcher = RawClient(mosquitto.host, mosquitto.port, f"{FED}-watcher")
    watcher.subscribe(topics.model_current)
    watcher.subscribe(topics.round_current)
    coordinator = CoordinatorThread(settings).start()
    c = coordinator.coordinator
    assert c is not None

    def status(agent: str, new_heats: int) -> None:
        agents[agent].publish(
            topics.agent_status(agent),
            message(
                agent, StatusBody(role="agent", state="online", samples=100, new_heats=new_heats)
            ),
            retain=True,
        )

    def tasks() -> list[TaskBody]:
        return [decode(p, TaskBody).body for p in watcher.received(topics.round_current)]

    def reported(expected: dict[str, int]) -> bool:
        return c.registry.new_heats() == expected

    try:
        wait_for(lambda: watcher.received(topics.model_current), 30, "the initial model")
        base: ModelBody = decode(watcher.received(topics.model_current)[0], ModelBody).body
        for a in AGENTS:
            status(a, 0)
        wait_for(lambda: reported({"p1": 0, "p2": 0}), 30, "both agents registered")
        status("p1", 5)  # one agent with new heats is not enough for min_agents = 2
        status("p2", 2)  # ... and two heats are fewer than min_new_heats = 3
        wait_for(lambda: reported({"p1": 5, "p2": 2}), 30, "the new heats")
        time.sleep(1.5)
        assert tasks() == [] and c.version == 0 and c.next_round_id == 1

        status("p2", 3)
        wait_for(lambda: tasks() and tasks()[-1].state == "open", 30, "round 1")
        task = tasks()[-1]
        assert task.round_id == 1 and all(task.selects(a) for a in AGENTS)
        for a in AGENTS:
            delta = {k: np.full(v.shape, 0.01, np.float32) for k, v in base.weights.items()}
            agents[a].publish(
                topics.agent_update(a),
                message(
                    a,
                    UpdateBody(
                        round_id=task.round_id,
                        base_version=task.base_version,
                        num_samples=10,
                        delta=delta,
                    ),
                ),
            )
        wait_for(lambda: c.version == 1 and tasks()[-1].state == "closed", 30, "version 1")

        # The updates consumed the heats: nothing new, no round 2, however long we wait.
        assert reported({"p1": 0, "p2": 0})
        time.sleep(1.5)
        assert c.version == 1 and c.next_round_id == 2 and len(tasks()) == 2
        for a in AGENTS:
            status(a, 4)
        wait_for(
            lambda: tasks()[-1].state == "open" and tasks()[-1].round_id == 2,
            30,
            "round 2 on new heats",
        )
        assert tasks()[-1].base_version == 1
        assert coordinator.error is None and not c.rejections
    finally:
        coordinator.stop()
        for client in [*agents.values(), watcher]:
            client.close()
