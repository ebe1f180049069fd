"""The admin role of a provisioned federation (issue 17 item 6): mosquitto running the
generated config, the coordinator started from its bundle's config, and a rollback sent
with the admin bundle's ``admin.toml``; an agent's identity cannot send commands, and the
admin reads none of the agents' topics.

Absence is proven with a later sentinel, as in test_broker_security: mosquitto routes a
QoS 1 message before it acknowledges it, and delivers one subscriber's messages in order.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alchimia.broker.embedded import free_port
from alchimia.broker.schemas import AdminBody, ModelBody, decode, message
from alchimia.broker.tls import client_tls_context
from alchimia.broker.topics import Topics
from alchimia.deploy.provision import provision
from tests.integration.helpers import alchimia, wait_for
from tests.integration.test_broker_security import WAIT, Client, secure_broker

pytestmark = pytest.mark.integration

T = Topics("steel")


@pytest.fixture(params=["certificates", "passwords"])
def federation(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    config = tmp_path / "federation.toml"
    config.write_text(f"""
federation = "steel"
auth = "{request.param}"
coordinator = "coordinator"
admins = ["ops-admin"]
agents = ["plant-1"]

[broker]
hosts = ["127.0.0.1", "localhost"]
tls_port = {port}
tls_bind = "127.0.0.1"
user = "{getpass.getuser()}"
""")
    out = tmp_path / "out"
    provision(config, out)
    broker = secure_broker(out, port)
    broker.start()
    try:
        yield out, port
    finally:
        broker.stop()


def _client(out: Path, name: str, port: int) -> Client:
    bundle = out / "identities" / name
    password = bundle / "password"
    kw = {"username": name, "password": password.read_text().strip()} if password.exists() else {}
    client = Client(
        port,
        f"test-{name}",
        client_tls_context(bundle / "ca.pem", bundle / f"{name}.pem", bundle / f"{name}.key"),
        **kw,
    )
    assert client.connected, client.outcome
    return client


def test_the_provisioned_admin_rolls_back_and_an_agent_cannot(
    federation: tuple[Path, int], tmp_path: Path
) -> None:
    out, port = federation
    ids = out / "identities"
    coordinator = alchimia(
        "coordinator",
        "--config",
        str(ids / "coordinator/coordinator.toml"),
        "--state-dir",
        str(tmp_path / "state"),
        "--min-agents",
        "1",
    )
    clients: list[Client] = []
    try:
        admin = _client(out, "ops-admin", port)
        clients.append(admin)
        admin.subscribe(f"{T.root}/#")
        wait_for(lambda: admin.payloads(T.model_current), 60, "the coordinator's model v0")
        # A second connection of the coordinator's identity sees what reaches the
        # coordinator on its command topic.
        listener = _client(out, "coordinator", port)
        clients.append(listener)
        listener.subscribe(T.coordinator_admin)

        agent = _client(out, "plant-1", port)
        clients.append(agent)
        agent.publish(
            T.coordinator_admin, message("plant-1", AdminBody(action="rollback", version=0))
        )
        agent.publish(T.agent_update("plant-1"), b"delta")
        agent.publish(T.agent_status("plant-1"), b"status", retain=True)

        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "alchimia",
                "coordinator",
                "--config",
                str(ids / "ops-admin/admin.toml"),
                "rollback",
                "0",
                "--admin-id",
                "ops-admin",
                "--timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "rolled back to version 0, published as version 1" in done.stdout, done.stdout

        def rolled_back() -> bool:
            models = [decode(p, ModelBody).body for p in admin.payloads(T.model_current)]
            return any(
                m.version == 1 and m.metadata.get("rollback_of") == 0  # type: ignore[attr-defined]
                for m in models
            )

        wait_for(rolled_back, WAIT, "version 1 at the admin")
        # Only the admin's command reached the coordinator's topic; the agent's was dropped.
        wait_for(lambda: listener.payloads(T.coordinator_admin), WAIT, "the admin's command")
        senders = [decode(p, AdminBody).sender for p in listener.payloads(T.coordinator_admin)]
        assert senders == ["ops-admin"]
        # And the admin read no agent's update (statuses and metrics it may read).
        assert not [t for t in admin.topics() if t.endswith("/update")], admin.topics()
    finally:
        for c in clients:
            c.close()
        coordinator.terminate()
        log, _ = coordinator.communicate(timeout=30)
    assert "rolled back to version 0, published as version 1" in log, log
