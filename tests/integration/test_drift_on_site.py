"""Drift on site over a real Mosquitto: a supplier change at the plant is detected from
the agent's own test-then-train errors, reported, adapted to locally at once, and it
opens the federation's next round early."""

from __future__ import annotations

from pathlib import Path

from alchimia.broker.schemas import MetricsBody, decode
from alchimia.broker.topics import Topics
from alchimia.local import LocalFederation
from tests.integration.helpers import RawClient, wait_for


def test_supplier_change_is_detected_adapted_to_and_reported(mosquitto, tmp_path: Path) -> None:
    topics = Topics("sitedrift")
    fed = LocalFederation(
        mosquitto.url,
        "sitedrift",
        1,
        tmp_path / "coord",
        coordinator={
            "min_agents": 1,
            "rounds": 0,
            "epochs": 5,
            "lr": 5e-3,
            "round_interval_s": 3600,
        },
        agent={
            "history_heats": 300,
            "heat_interval_s": 0.02,
            "signal_period_s": 30.0,
            "store_sensors": False,
            "drift": ["supplier_change@330:cu_factor=3.0"],
        },
    )
    spy = RawClient(mosquitto.host, mosquitto.port, "sitedrift-spy")
    spy.subscribe(topics.agent_metrics("plant-1"))
    try:
        coordinator = fed.start_coordinator()
        agent = fed.start_agents()[0].agent
        wait_for(
            lambda: agent.learner is not None and agent.learner.drift_events >= 1,
            120,
            "a drift detection",
        )
        # The site learner re-fits the site part (eaf-hybrid-v1) on the new regime at once.
        wait_for(
            lambda: agent.learner is not None and agent.learner.refits >= 1,
            60,
            "a re-fit of the site part",
        )
        wait_for(
            lambda: coordinator.coordinator.version >= 2,
            60,
            "the early round the drift report asked for",
        )
    finally:
        fed.stop()
        spy.close()
    reports = [decode(p, MetricsBody).body for p in spy.received(topics.agent_metrics("plant-1"))]
    drift = [r for r in reports if r.scope == "drift"]
    assert drift and any(k.startswith(("error_", "input_")) for k in drift[0].values)
    prequential = [r for r in reports if r.scope == "prequential"]
    assert prequential and prequential[-1].values["n"] >= 30
    # Heats 1-330 come before the change: the first detection must come after it.
    assert agent.learner.drift_at[0] > 330, agent.learner.drift_at  # type: ignore[union-attr]
