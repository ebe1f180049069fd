"""Versions only go forward at an agent: a replayed older model, however genuinely made,
is refused with a reason and the agent keeps the newer one (issue 17, item 2)."""

from __future__ import annotations

from pathlib import Path

from alchimia.agent.settings import AgentSettings
from alchimia.broker.schemas import MetricsBody, ModelBody, decode
from alchimia.broker.topics import Topics
from alchimia.local import AgentThread, LocalFederation
from alchimia.models.spec import ModelSpec
from tests.data.models import first_model
from tests.integration.helpers import RawClient, wait_for

SPEC = ModelSpec(architecture="eaf-hybrid-v1")


def test_an_older_model_is_not_adopted(mosquitto, tmp_path: Path) -> None:
    topics = Topics("replay")
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        federation="replay",
        agent_id="plant-1",
        history_heats=30,
        heat_interval_s=0,
        store_sensors=False,
        state_dir=tmp_path / "agents",
    )
    coordinator = RawClient(mosquitto.host, mosquitto.port, "replay-coordinator")
    coordinator.subscribe(topics.agent_metrics("plant-1"))
    agent = AgentThread(settings).start()
    try:
        coordinator.publish(topics.model_current, first_model(SPEC, 3), retain=True)
        wait_for(lambda: agent.agent.model_version == 3, 30, "version 3 adopted")
        old = first_model(SPEC, 2)  # a genuine older version, replayed
        coordinator.publish(topics.model_current, old, retain=True)
        wait_for(lambda: agent.agent.models_rejected == 1, 30, "the replay refused")
        assert agent.agent.model_version == 3 and agent.agent.serving_version == 3

        def reported() -> bool:  # the coordinator's admins hear why
            reports = [
                decode(p, MetricsBody).body
                for p in coordinator.received(topics.agent_metrics("plant-1"))
            ]
            return any(r.scope == "model_rejected" and r.model_version == 2 for r in reports)

        wait_for(reported, 30, "the refusal reported")
        coordinator.publish(topics.model_current, first_model(SPEC, 4), retain=True)
        wait_for(lambda: agent.agent.model_version == 4, 30, "version 4 adopted")
    finally:
        agent.stop()
        coordinator.close()


def test_the_coordinator_undoes_a_replayed_model(mosquitto, tmp_path: Path) -> None:
    """A genuine older model replayed (retained) on ``model/current``: running agents
    refuse it, a new agent adopts it, and the coordinator, seeing both, republishes the
    current version; the new agent catches up and rounds go on."""
    topics = Topics("undo")
    fed = LocalFederation(
        mosquitto.url,
        "undo",
        2,
        tmp_path / "coord",
        coordinator={"min_agents": 2, "rounds": 0, "epochs": 1},
        agent={"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    attacker = RawClient(mosquitto.host, mosquitto.port, "undo-replayer")
    late: AgentThread | None = None
    try:
        coordinator = fed.start_coordinator().coordinator
        fed.start_agents()
        wait_for(lambda: coordinator.version >= 2, 120, "version 2")
        attacker.publish(topics.model_current, coordinator.db.load_payload(0), retain=True)
        late = AgentThread(
            AgentSettings.load(
                None,
                broker=mosquitto.url,
                federation="undo",
                agent_id="plant-9",
                history_heats=30,
                heat_interval_s=0,
                store_sensors=False,
                state_dir=tmp_path / "late",
            )
        ).start()
        replayed_at = coordinator.version
        wait_for(
            lambda: (late.agent.model_version or 0) >= replayed_at,
            60,
            "the late agent brought to the current version",
        )
        wait_for(lambda: coordinator.version > replayed_at + 1, 120, "rounds going on")
        assert all((a.agent.model_version or 0) >= replayed_at for a in fed.agents)
    finally:
        if late is not None:
            late.stop()
        fed.stop()
        attacker.close()
    retained = RawClient(mosquitto.host, mosquitto.port, "undo-reader")
    try:
        retained.subscribe(topics.model_current)
        wait_for(lambda: retained.received(topics.model_current), 10, "the retained model")
        body = decode(retained.received(topics.model_current)[-1], ModelBody).body
        assert body.version >= replayed_at
    finally:
        retained.close()
