"""End to end over a real Mosquitto: coordinator + 3 agents on simulated plants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.broker.schemas import ModelBody, PredictionBody, StatusBody, decode
from alchimia.broker.topics import Topics
from alchimia.coordinator.persistence import CoordinatorDB
from alchimia.local import CoordinatorThread, LocalFederation
from alchimia.models.onnx_runtime import OnnxPredictor
from alchimia.models.params import set_weights
from alchimia.models.regressor import build_model
from alchimia.models.spec import ModelSpec
from alchimia.monitor import Monitor
from tests.integration.helpers import RawClient, wait_for

FAST_COORDINATOR = {"min_agents": 3, "epochs": 5, "lr": 5e-3, "round_timeout_s": 60}
FAST_AGENT = {"history_heats": 200, "heat_interval_s": 0, "signal_period_s": 10.0}


def _mean_energy_mae(monitor: Monitor, version: int) -> float:
    return float(np.mean([v["mae_energy_kwh_t"] for v in monitor.validation[version].values()]))


def _retained_status(mosquitto) -> StatusBody:
    admin = RawClient(mosquitto.host, mosquitto.port, "e2e-admin")
    try:
        admin.subscribe(Topics("e2e").coordinator_status)
        wait_for(lambda: admin.received(Topics("e2e").coordinator_status), 10, "status")
        return decode(admin.received(Topics("e2e").coordinator_status)[0], StatusBody).body
    finally:
        admin.close()


def test_three_rounds_improve_the_model_and_the_retained_onnx_matches_torch(
    mosquitto, tmp_path: Path
) -> None:
    fed = LocalFederation(
        mosquitto.url,
        "e2e",
        3,
        tmp_path / "coord",
        coordinator={**FAST_COORDINATOR, "rounds": 3},
        agent={**FAST_AGENT, "heat_interval_s": 0.2},
    )
    monitor = Monitor(mosquitto.url, "e2e", "e2e-monitor").start()
    consumer = RawClient(mosquitto.host, mosquitto.port, "e2e-consumer")
    consumer.subscribe(Topics("e2e").all_agents("predictions"))
    ids = {s.agent_id for s in fed.agent_settings}
    try:
        fed.start_coordinator()
        fed.start_agents()
        for version in range(4):
            assert monitor.wait_validation(version, ids, 120), f"no figures for v{version}"
            if version == 1:  # two more rounds to go: the coordinator is up
                # Its retained status names the current version, not the first.
                status = _retained_status(mosquitto)
                assert status.state == "online" and status.model_version >= 1
        wait_for(
            lambda: consumer.received(Topics("e2e").agent_predictions("plant-1")),
            30,
            "a prediction",
        )
    finally:
        fed.stop()
        monitor.stop()
        consumer.close()
    assert _mean_energy_mae(monitor, 3) < _mean_energy_mae(monitor, 1)
    assert all(a.agent.updates_sent == 3 for a in fed.agents)
    # One prediction per new heat (history heats are learned from, never predicted).
    preds = [
        decode(p, PredictionBody)
        for p in consumer.received(Topics("e2e").agent_predictions("plant-1"))
    ]
    heat_ids = [p.body.heat_id for p in preds]
    assert len(heat_ids) == len(set(heat_ids)) and all(p.sender == "plant-1" for p in preds)
    assert int(heat_ids[0].split("-")[1]) >= FAST_AGENT["history_heats"]
    assert set(preds[0].body.outputs) == set(ModelSpec().targets)

    # A newcomer gets the retained model, and ONNX Runtime agrees with torch on it.
    late = RawClient(mosquitto.host, mosquitto.port, "late-consumer")
    try:
        late.subscribe(Topics("e2e").model_current)
        wait_for(lambda: late.received(Topics("e2e").model_current), 10, "retained model")
        body: ModelBody = decode(late.received(Topics("e2e").model_current)[0], ModelBody).body
    finally:
        late.close()
    assert body.version == 3 and body.parent_version == 2
    assert sorted(body.metadata["contributors"]) == sorted(ids)
    spec = ModelSpec.model_validate(body.spec)
    profile, seed = default_plants(1)[0]
    x = np.stack(
        [
            fed.agents[0].agent.table.row(h.inputs)
            for h in SimulatedPlant(profile, seed + 1).heats(16)
        ]
    )
    torch_model = build_model(spec)
    set_weights(torch_model, body.weights)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got = OnnxPredictor(body.onnx).predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_coordinator_restart_resumes_at_the_persisted_version(mosquitto, tmp_path: Path) -> None:
    fed = LocalFederation(
        mosquitto.url,
        "restart",
        2,
        tmp_path / "coord",
        coordinator={**FAST_COORDINATOR, "min_agents": 2, "rounds": 0},
        # New heats keep coming, so rounds go on after the history is
        # learned (they wait for new data once its error levels off).
        agent={**FAST_AGENT, "heat_interval_s": 0.2},
    )
    monitor = Monitor(mosquitto.url, "restart", "restart-monitor").start()
    try:
        first = fed.start_coordinator()
        fed.start_agents()
        wait_for(lambda: monitor.model is not None and monitor.model.version >= 2, 120, "version 2")
        first.stop()
        assert first.done
        db = CoordinatorDB(fed.coordinator_settings.state_dir)
        persisted = db.latest_version()
        db.close()
        assert persisted is not None and persisted >= 2

        second = CoordinatorThread(fed.coordinator_settings).start()
        fed.coordinator = second
        assert second.coordinator.version == persisted  # type: ignore[union-attr]
        wait_for(
            lambda: monitor.model is not None and monitor.model.version > persisted + 1,
            120,
            "two more versions after the restart",
        )
        assert monitor.model.parent_version == monitor.model.version - 1
    finally:
        fed.stop()
        monitor.stop()
