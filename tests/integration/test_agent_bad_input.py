"""Hostile messages on the topics an agent reads never stop it nor replace its model."""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import numpy as np
import pytest

from alchimia.agent.settings import AgentSettings
from alchimia.broker.schemas import ModelBody, TaskBody, decode, message
from alchimia.broker.topics import Topics
from alchimia.local import AgentThread, LocalFederation
from alchimia.models.spec import ModelSpec
from alchimia.monitor import Monitor
from tests.data.models import first_model
from tests.integration.helpers import RawClient, wait_for


def test_agent_survives_garbage_models_and_tasks(mosquitto, tmp_path: Path) -> None:
    topics = Topics("agentbad")
    fed = LocalFederation(
        mosquitto.url,
        "agentbad",
        1,
        tmp_path / "coord",
        coordinator={"min_agents": 1, "rounds": 1, "epochs": 1},
        agent={"history_heats": 40, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
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
        bad_shape = good.model_copy(
            update={"version": 10, "weights": {k: np.zeros(3, np.float32) for k in good.weights}}
        )
        bad_spec = good.model_copy(update={"version": 11, "spec": {"architecture": "gpt"}})
        for payload in (
            b"\xc1garbage",
            msgpack.packb({"kind": "model"}),
            message("coordinator", bad_onnx),
            message("coordinator", bad_shape),
            message("coordinator", bad_spec),
        ):
            evil.publish(topics.model_current, payload)
            evil.publish(topics.round_current, payload)
        evil.publish(
            topics.round_current,
            message(
                "coordinator",
                TaskBody(
                    round_id=99, state="open", base_version=42, deadline_ts=0, selected=["plant-1"]
                ),
            ),
        )
        wait_for(lambda: agent.link.inbox.empty(), 30, "the agent to work through its inbox")
        assert agent_thread.thread.is_alive()
        assert agent.serving_version == 1 and agent.model_version == 1
    finally:
        fed.stop()
        monitor.stop()
        evil.close()


def test_a_flood_of_hostile_messages_is_counted_exactly_in_a_bounded_log(
    mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17 item 5: ~25,000 hostile messages once wrote 21,162 WARNING lines (5.8 MB),
    and a spec key with a newline wrote a fake ERROR line. Now 10,000 of them are all
    counted by reason and cost a few lines, each on one line."""
    topics, spec = Topics("agentflood"), ModelSpec(architecture="eaf-hybrid-v1")
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        federation="agentflood",
        agent_id="plant-1",
        history_heats=30,
        heat_interval_s=0,
        store_sensors=False,
        state_dir=tmp_path / "agents",
    )
    evil = RawClient(mosquitto.host, mosquitto.port, "agentflood-evil")
    agent = AgentThread(settings).start()
    a = agent.agent
    good = first_model(spec)
    body = decode(good, ModelBody).body
    forged = message(
        "coordinator",
        body.model_copy(
            update={
                "version": 9,
                "spec": {"architecture": "mlp-v1", "x\nERROR alchimia.agent: forged line": 1},
            }
        ),
    )
    hostile = [
        (topics.model_current, b"\xc1garbage"),  # malformed
        (topics.round_current, msgpack.packb({"kind": "task", "body": {}})),  # schema
        (topics.model_current, forged),
    ]  # invalid: the spec breaks its schema
    n = 10_000
    try:
        evil.publish(topics.model_current, good, retain=True)
        wait_for(lambda: a.serving_version == 0, 30, "version 0 served")
        caplog.clear()
        with caplog.at_level(logging.INFO, "alchimia.agent"):
            for sent in range(1, n + 1):
                topic, payload = hostile[sent % len(hostile)]
                evil.client.publish(topic, payload, qos=1)
                if sent % 500 == 0:  # never more waiting at the broker than it queues
                    wait_for(lambda s=sent: a.rejections.total >= s, 30, f"{sent} handled")
            wait_for(lambda: a.rejections.total >= n, 30, "every message handled")
        lines = [r for r in caplog.records if r.name == "alchimia.agent"]
        assert a.rejections.counts == {"malformed": 3333, "schema": 3334, "invalid": 3333}
        refused = [r for r in lines if r.getMessage().startswith("rejected message")]
        assert len(refused) <= 3 * 5, [r.getMessage() for r in refused]  # 5 per reason
        assert len(lines) <= len(refused) + 10  # and the agent's own news (a re-calibration)
        assert sum(len(r.getMessage()) for r in lines) < 20_000
        assert all("\n" not in r.getMessage() for r in lines)
        assert any("x\\x0aERROR alchimia.agent: forged line" in r.getMessage() for r in lines)
        assert agent.thread.is_alive() and a.serving_version == 0 and a.model_version == 0
    finally:
        agent.stop()
        evil.close()
