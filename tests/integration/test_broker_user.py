"""Mosquitto started as root with the provisioned configs (issue 13 section 4, issue 17
item 7): it switches to the configured user before it reads keys, ACL and passwords and
when it writes its persistence file; provisioning as root hands those files to that user,
for the central broker and for a plant broker with its bridge."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from alchimia.broker.embedded import free_port
from alchimia.broker.topics import Topics
from alchimia.deploy.provision import provision
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.helpers import wait_for
from tests.integration.test_bridged_brokers import Bridged
from tests.integration.test_broker_security import WAIT, secure_broker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="only root can start mosquitto as root",
    ),
]

T = Topics("steel")


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A directory the broker's user can reach (pytest's tmp_path is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="alchimia-broker-user-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_root_started_brokers_run_as_the_broker_user(traversable_dir: Path) -> None:
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user on this machine")
    central_port, plant_port = free_port(), free_port()
    config = traversable_dir / "federation.toml"
    config.write_text(f"""
federation = "steel"
admins = ["admin"]
agents = ["plant-1"]

[broker]
hosts = ["localhost", "127.0.0.1"]
tls_port = {central_port}
tls_bind = "127.0.0.1"

[[plant_brokers]]
id = "bridge-north"
hosts = ["localhost", "127.0.0.1"]
tls_port = {plant_port}
tls_bind = "127.0.0.1"
agents = ["plant-1"]
""")
    out = traversable_dir / "out"
    provision(config, out)  # user defaults to "mosquitto", as mosquitto's own default
    plant_dir = out / "plant-brokers/bridge-north"
    central = secure_broker(out, central_port)
    plant = Mosquitto(plant_dir, conf=plant_dir / "mosquitto.conf", port=plant_port)
    central.start()
    plant.start()
    b = Bridged(out, "certificates", central_port, plant_port, [])
    try:
        admin = b.connect("admin", central_port)
        admin.subscribe(T.all_bridge_states)
        wait_for(
            lambda: admin.payloads(T.bridge_state("bridge-north")) == [b"1"],
            WAIT,
            "the bridge, dialling out as the mosquitto user",
        )
        agent = b.connect("plant-1", plant_port)
        agent.publish(T.agent_status("plant-1"), b"online", retain=True)
    finally:
        for c in b.clients:
            c.close()
        plant.stop()
        central.stop()
    for broker, broker_dir in ((central, out / "mosquitto"), (plant, plant_dir)):
        log = broker.log.read_text()
        assert "Error" not in log, log
        # Written at shutdown by the mosquitto user, into the data/ handed to it.
        db = broker_dir / "data" / "mosquitto.db"
        assert db.stat().st_uid == user.pw_uid, broker_dir
