"""Hostile messages on the topics an agent reads never stop it nor replace its model."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np

from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from broker.schemas import ModelBody, TaskBody, decode, message
from broker.topics import Topics
from tests.integration.helpers import RawClient, wait_for


def test_agent_survives_garbage_models_and_tasks(mosquitto, tmp_path: Path) -> None:
    topics = Topics("agentbad")
    fed = LocalFederation(mosquitto.url, "agentbad", 1, tmp_path / "coord",
                          coordinator={"min_agents": 1, "rounds": 1, "epochs": 1},
                          agent={"history_heats": 40, "heat_interval_s": 0,
                                 "signal_period_s": 10.0})
    monitor = Monitor(mosquitto.url, "agentbad", "agentbad-monitor").start()
    evil = RawClient(mosquitto.host, mosquitto.port, "agentbad-evil")
    evil.subscribe(topics.model_current)
    try:
        fed.start_coordinator()
        agent_thread = fed.start_agents()[0]
        agent = agent_thread.agent
        wait_for(lambda: agent.serving_version == 1, 60, "version 1")
        good: ModelBody = decode(evil.received(topics.model_current)[-1], ModelBody).body
        bad_onnx = good.model_copy(update={"version": 9, "onnx": b"not an onnx graph"})
        bad_shape = good.model_copy(update={
            "version": 10, "weights": {k: np.zeros(3, np.float32) for k in good.weights}})
        bad_spec = good.model_copy(update={"version": 11, "spec": {"architecture": "gpt"}})
        for payload in (b"\xc1garbage", msgpack.packb({"kind": "model"}),
                        message("coordinator", bad_onnx), message("coordinator", bad_shape),
                        message("coordinator", bad_spec)):
            evil.publish(topics.model_current, payload)
            evil.publish(topics.round_current, payload)
        evil.publish(topics.round_current, message("coordinator", TaskBody(
            round_id=99, state="open", base_version=42, deadline_ts=0, selected=["plant-1"])))
        wait_for(lambda: agent.link.inbox.empty(), 30, "the agent to work through its inbox")
        assert agent_thread.thread.is_alive()
        assert agent.serving_version == 1 and agent.model_version == 1
    finally:
        fed.stop()
        monitor.stop()
        evil.close()
