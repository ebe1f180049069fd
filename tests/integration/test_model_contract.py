"""A model whose columns the site's data does not have is refused with a reason, and the
agent keeps serving and learning from every heat (issue 17, item 4): before, a fuzzed
model with one feature renamed was adopted and every heat then failed and was lost."""

from __future__ import annotations

from pathlib import Path

from alchimia.agent.settings import AgentSettings
from alchimia.broker.schemas import MetricsBody, decode
from alchimia.broker.topics import Topics
from alchimia.local import AgentThread
from alchimia.models.schema import FEATURES
from alchimia.models.spec import ModelSpec
from tests.data.models import first_model
from tests.integration.helpers import RawClient, wait_for

GOOD = ModelSpec(architecture="eaf-hybrid-v1")
RENAMED = ModelSpec(features=(*FEATURES[:-1], "tap_temp_aim_k"))  # unsigned: the default


def test_a_model_with_a_renamed_feature_is_refused_and_no_heat_is_lost(
    mosquitto, tmp_path: Path
) -> None:
    topics = Topics("contract")
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        federation="contract",
        agent_id="plant-1",
        history_heats=30,
        heat_interval_s=0.05,
        store_sensors=False,
        state_dir=tmp_path / "agents",
    )
    coordinator = RawClient(mosquitto.host, mosquitto.port, "contract-coordinator")
    coordinator.subscribe(topics.agent_metrics("plant-1"))
    coordinator.subscribe(topics.agent_predictions("plant-1"))
    agent = AgentThread(settings).start()
    a = agent.agent
    try:
        coordinator.publish(topics.model_current, first_model(GOOD, 1), retain=True)
        wait_for(lambda: a.serving_version == 1, 30, "version 1 served")
        coordinator.publish(topics.model_current, first_model(RENAMED, 2), retain=True)
        wait_for(lambda: a.models_rejected == 1, 30, "the renamed model refused")
        assert a.model_version == 1 and a.serving_version == 1
        assert a.rejections.counts["model_contract"] == 1

        def reported() -> bool:
            reports = [
                decode(p, MetricsBody).body
                for p in coordinator.received(topics.agent_metrics("plant-1"))
            ]
            return any(r.scope == "model_rejected" and r.model_version == 2 for r in reports)

        wait_for(reported, 30, "the refusal reported")
        # Heats keep coming in: each predicted and learned from, none dropped.
        assert a.table is not None
        seen = a.table.seen
        wait_for(lambda: a.table.seen >= seen + 20, 30, "20 more heats learned")
        live = a.table.seen - 30  # every live heat is predicted before it is learned
        wait_for(
            lambda: len(coordinator.received(topics.agent_predictions("plant-1"))) >= live,
            30,
            "a prediction for every live heat",
        )
        assert not a.step_failures.counts
        coordinator.publish(topics.model_current, first_model(GOOD, 3), retain=True)
        wait_for(lambda: a.serving_version == 3, 30, "version 3 served")
    finally:
        agent.stop()
        coordinator.close()
