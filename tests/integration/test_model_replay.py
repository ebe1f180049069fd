"""Versions only go forward at an agent: a replayed older model, however genuinely made,
is refused with a reason and the agent keeps the newer one (issue 17, item 2)."""

from __future__ import annotations

from pathlib import Path

from agent.settings import AgentSettings
from alchimia.local import AgentThread
from broker.schemas import MetricsBody, decode
from broker.topics import Topics
from coordinator.publishing import initial_weights, model_message
from models.spec import ModelSpec
from tests.integration.helpers import RawClient, wait_for

SPEC = ModelSpec(architecture="eaf-hybrid-v1")


def _model(version: int) -> bytes:
    return model_message("coordinator", SPEC, initial_weights(SPEC, version), version=version,
                         parent=version - 1 if version else None, round_id=None, metadata={})


def test_an_older_model_is_not_adopted(mosquitto, tmp_path: Path) -> None:
    topics = Topics("replay")
    settings = AgentSettings.load(None, broker=mosquitto.url, federation="replay",
                                  agent_id="plant-1", history_heats=30, heat_interval_s=0,
                                  store_sensors=False, state_dir=tmp_path / "agents")
    coordinator = RawClient(mosquitto.host, mosquitto.port, "replay-coordinator")
    coordinator.subscribe(topics.agent_metrics("plant-1"))
    agent = AgentThread(settings).start()
    try:
        coordinator.publish(topics.model_current, _model(3), retain=True)
        wait_for(lambda: agent.agent.model_version == 3, 30, "version 3 adopted")
        old = _model(2)  # a genuine older version, replayed
        coordinator.publish(topics.model_current, old, retain=True)
        wait_for(lambda: agent.agent.models_rejected == 1, 30, "the replay refused")
        assert agent.agent.model_version == 3 and agent.agent.serving_version == 3

        def reported() -> bool:  # the coordinator's admins hear why
            reports = [decode(p, MetricsBody).body for p in
                       coordinator.received(topics.agent_metrics("plant-1"))]
            return any(r.scope == "model_rejected" and r.model_version == 2 for r in reports)

        wait_for(reported, 30, "the refusal reported")
        coordinator.publish(topics.model_current, _model(4), retain=True)
        wait_for(lambda: agent.agent.model_version == 4, 30, "version 4 adopted")
    finally:
        agent.stop()
        coordinator.close()
