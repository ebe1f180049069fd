"""Champion/challenger over a real Mosquitto: a clearly worse global model does not serve
predictions on site, the agent says why, and it still trains from the new version."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alchimia.broker.schemas import MetricsBody, ModelBody, decode
from alchimia.broker.topics import Topics
from alchimia.coordinator.publishing import model_message
from alchimia.local import LocalFederation
from alchimia.models.spec import ModelSpec
from tests.integration.helpers import RawClient, wait_for


def test_worse_challenger_is_not_swapped_in(mosquitto, tmp_path: Path) -> None:
    topics = Topics("cc")
    fed = LocalFederation(
        mosquitto.url,
        "cc",
        1,
        tmp_path / "coord",
        coordinator={"min_agents": 1, "rounds": 1, "epochs": 3},
        agent={
            "history_heats": 80,
            "heat_interval_s": 0.1,
            "signal_period_s": 10.0,
            "challenger_min_heats": 10,
        },
    )
    spy = RawClient(mosquitto.host, mosquitto.port, "cc-spy")
    spy.subscribe(topics.model_current)
    spy.subscribe(topics.agent_metrics("plant-1"))
    try:
        fed.start_coordinator()
        agent = fed.start_agents()[0].agent
        wait_for(
            lambda: agent.serving_version == 1 and len(agent.recent) >= 10,
            120,
            "version 1 serving and 10 new heats",
        )
        v1: ModelBody = decode(spy.received(topics.model_current)[-1], ModelBody).body
        spec = ModelSpec.model_validate(v1.spec)
        bad = {k: v.copy() for k, v in v1.weights.items()}
        last_bias = list(bad)[-1]
        bad[last_bias] = bad[last_bias] + 30.0  # every output off by 30 reference scales
        spy.publish(
            topics.model_current,
            model_message(
                "coordinator", spec, bad, version=7, parent=1, round_id=None, metadata={}
            ),
            retain=True,
        )
        wait_for(lambda: agent.model_version == 7, 30, "the agent to receive version 7")
    finally:
        fed.stop()
        spy.close()
    assert agent.serving_version == 1 and agent.challengers_rejected == 1
    reports = [decode(p, MetricsBody).body for p in spy.received(topics.agent_metrics("plant-1"))]
    rejected = [r for r in reports if r.scope == "challenger_rejected"]
    assert len(rejected) == 1 and rejected[0].model_version == 7
    assert rejected[0].values["challenger_error"] > 10 * rejected[0].values["champion_error"]
    assert np.isfinite(rejected[0].values["champion_error"])
