"""Signed models over a real Mosquitto: a forged model never replaces the serving one,
and the federation goes on."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alchimia.broker.schemas import ModelBody, TaskBody, message
from alchimia.broker.signing import sign_model, sign_task
from alchimia.broker.topics import Topics
from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from tests.integration.helpers import RawClient, wait_for


def _write_keys(tmp: Path) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private, public = tmp / "signing.key", tmp / "signing.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def test_forged_models_are_rejected_and_rounds_continue(mosquitto, tmp_path: Path) -> None:
    private, public = _write_keys(tmp_path)
    fed = LocalFederation(
        mosquitto.url,
        "signed",
        2,
        tmp_path / "coord",
        coordinator={"min_agents": 2, "rounds": 3, "epochs": 1, "model_signing_key": private},
        agent={"history_heats": 60, "heat_interval_s": 0, "model_public_key": public},
    )
    monitor = Monitor(mosquitto.url, "signed", "signed-monitor").start()
    attacker = RawClient(mosquitto.host, mosquitto.port, "signed-attacker")
    topics = Topics("signed")
    try:
        fed.start_coordinator()
        fed.start_agents()
        assert monitor.wait_validation(1, {"plant-1", "plant-2"}, 60)
        genuine = monitor.model
        assert genuine is not None and genuine.signature is not None
        evil_weights = {k: np.zeros_like(v) for k, v in genuine.weights.items()}
        unsigned = genuine.model_copy(
            update={"version": 50, "weights": evil_weights, "signature": None}
        )
        foreign = sign_model(
            unsigned.model_copy(update={"version": 51}), Ed25519PrivateKey.generate()
        )
        for forged in (unsigned, foreign):
            attacker.publish(topics.model_current, message("coordinator", forged), retain=True)
        wait_for(
            lambda: all(a.agent.models_rejected >= 2 for a in fed.agents),
            30,
            "both agents to reject both forgeries",
        )
        assert all(
            a.agent.model_version is not None and a.agent.model_version < 50 for a in fed.agents
        )
        # Tasks are authenticated like models: a forged task naming a far round is refused.
        task = TaskBody(
            round_id=999,
            state="open",
            base_version=genuine.version,
            deadline_ts=time.time() + 60,
            selected=["plant-1", "plant-2"],
        )
        for forged_task in (task, sign_task(task, Ed25519PrivateKey.generate())):
            attacker.publish(topics.round_current, message("coordinator", forged_task), retain=True)
        time.sleep(1.0)  # the agents read both forgeries (a refusal changes nothing to see)
        assert monitor.wait_validation(3, {"plant-1", "plant-2"}, 120)
        assert all(a.agent.model_version == 3 for a in fed.agents)
        assert all(a.agent.task is not None and a.agent.task.round_id < 999 for a in fed.agents)
    finally:
        fed.stop()
        monitor.stop()
        attacker.close()
    assert isinstance(monitor.model, ModelBody) and monitor.model.version == 3
