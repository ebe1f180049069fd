"""Client-level differential privacy over a real Mosquitto (issue 15 §2): the signed task
carries the DP parameters, agents send clipped and noised deltas, rounds complete, each
model's metadata carries the accountant's epsilon, and a restarted coordinator picks the
budget up from its stored versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alchimia.broker.schemas import TaskBody, UpdateBody, decode
from alchimia.broker.signing import verify_task
from alchimia.broker.topics import Topics
from alchimia.coordinator.privacy import epsilon
from alchimia.coordinator.service import Coordinator
from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from tests.integration.helpers import RawClient

pytestmark = pytest.mark.integration

FED = "private"
CLIP, Z, DELTA = 0.05, 2.0, 1e-6


def test_rounds_with_dp_complete_and_the_model_carries_epsilon(mosquitto, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "model-signing.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    topics = Topics(FED)
    coordinator_cfg = {
        "min_agents": 2,
        "rounds": 2,
        "round_timeout_s": 120,
        "epochs": 1,
        "dp_clip_norm": CLIP,
        "dp_noise_multiplier": Z,
        "dp_delta": DELTA,
        "model_signing_key": key_file,
    }
    fed = LocalFederation(
        mosquitto.url,
        FED,
        2,
        tmp_path / "coord",
        coordinator=coordinator_cfg,
        agent={"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    spy = RawClient(mosquitto.host, mosquitto.port, f"{FED}-spy")
    for topic in (topics.all_agents("update"), topics.round_current):
        spy.subscribe(topic)
    monitor = Monitor(mosquitto.url, FED, f"{FED}-monitor").start()
    try:
        coordinator = fed.start_coordinator()
        fed.start_agents()
        assert monitor.wait_validation(2, {"plant-1", "plant-2"}, 120)
        assert coordinator.error is None
        model = monitor.model
        assert model is not None and model.version == 2
        dp = model.metadata["dp"]
        assert dp["epsilon"] == pytest.approx(epsilon(((Z, 2),), DELTA))
        assert dp["epsilon"] > epsilon(((Z, 1),), DELTA)  # version 1 spent less
        assert (dp["delta"], dp["noise_multiplier"], dp["clip_norm"], dp["rounds"]) == (
            DELTA,
            Z,
            CLIP,
            2,
        )
        # The signed task told the agents.
        task = decode(spy.received(topics.round_current)[-1], TaskBody).body
        assert isinstance(task, TaskBody)
        assert (task.dp_clip_norm, task.dp_noise_multiplier) == (CLIP, Z)
        verify_task(task, key.public_key())
        # What left the sites is clipped and noised: the noise (std Z * CLIP = 0.1 per
        # value) swamps a clipped delta of norm <= 0.05.
        sent = spy.received(topics.agent_update("plant-1"))
        assert len(sent) >= 2
        for payload in sent:
            body = decode(payload, UpdateBody).body
            assert isinstance(body, UpdateBody)
            values = np.concatenate([np.asarray(v).ravel() for v in body.delta.values()])
            assert np.count_nonzero(values) == values.size
            assert 0.9 * Z * CLIP < values.std() < 1.1 * Z * CLIP
    finally:
        fed.stop()
        monitor.stop()
        spy.close()
    # A restarted coordinator rebuilds the ledger from the versions it stored.
    again = Coordinator(fed.coordinator_settings)
    try:
        assert again.privacy.worst() == (pytest.approx(dp["epsilon"]), 2)
    finally:
        again.db.close()
