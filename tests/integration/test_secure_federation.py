"""The documented secure set-up end to end: ``alchimia provision`` output, mosquitto with
the generated config (mutual TLS, ACLs), coordinator and agents started from their
identity bundles' config files; models are signed and verified."""

from __future__ import annotations

from pathlib import Path

import pytest

from alchimia.agent.settings import AgentSettings
from alchimia.broker.embedded import free_port
from alchimia.coordinator.persistence import CoordinatorDB
from alchimia.deploy.provision import provision
from tests.integration.helpers import alchimia, run_until_coordinator_exits
from tests.integration.test_broker_security import secure_broker, write_federation


@pytest.fixture
def secured(tmp_path: Path):
    port = free_port()
    conf = write_federation(
        tmp_path / "federation.toml",
        auth="certificates",
        tls_port=port,
        message_size_limit=1024 * 1024,
    )
    out = tmp_path / "fed"
    provision(conf, out)
    broker = secure_broker(out, port)
    broker.start()
    try:
        yield out
    finally:
        broker.stop()


def test_provisioned_federation_runs_over_mutual_tls_with_signed_models(
    secured: Path, tmp_path: Path
) -> None:
    ids = secured / "identities"
    coordinator = alchimia(
        "coordinator",
        "--config",
        str(ids / "coordinator/coordinator.toml"),
        "--state-dir",
        str(tmp_path / "state"),
        "--rounds",
        "2",
        "--min-agents",
        "2",
        "--epochs",
        "1",
    )
    agents = [
        alchimia(
            "agent",
            "--config",
            str(ids / f"plant-{i}/agent.toml"),
            "--plant",
            str(i),
            "--history-heats",
            "40",
            "--heat-interval",
            "0",
            "--signal-period",
            "10",
            "--state-dir",
            str(tmp_path / "agents"),
        )
        for i in (1, 2)
    ]
    code, out, logs = run_until_coordinator_exits(coordinator, agents)
    assert code == 0, out
    assert "round 2 closed" in out, out
    for log in logs:
        assert "sent update for round 2" in log and "rejected model" not in log, log
    db = CoordinatorDB(tmp_path / "state")
    try:
        assert db.latest_version() == 2
    finally:
        db.close()


def test_a_foreign_identity_gets_a_message_that_says_what_to_fix(
    secured: Path, tmp_path: Path
) -> None:
    other_port = free_port()
    other = tmp_path / "other"
    provision(
        write_federation(tmp_path / "other.toml", auth="certificates", tls_port=other_port), other
    )
    good = AgentSettings.load(secured / "identities/plant-1/agent.toml")
    foreign = good.model_copy(
        update={
            "cert_file": other / "identities/plant-1/plant-1.pem",
            "key_file": other / "identities/plant-1/plant-1.key",
        }
    )
    assert "accepted" in good.diagnose_connection()
    message = foreign.diagnose_connection()
    assert "another CA" in message or "not trust" in message, message
