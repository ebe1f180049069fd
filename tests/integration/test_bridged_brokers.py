"""A plant broker bridged to the central one, both real mosquitto processes running the
configs ``alchimia provision`` wrote (docs/SCALE.md, "Past one broker"): the plant's
agents' topics reach the centre, the model and the task reach the plant, over TLS with
the bridge's own identity.

As in test_broker_security, absence is proven with a later sentinel, never a sleep: the
bridge forwards one connection's messages in order.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alchimia.broker.embedded import free_port
from alchimia.broker.tls import client_tls_context
from alchimia.broker.topics import Topics
from alchimia.deploy.provision import provision
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.helpers import wait_for
from tests.integration.test_broker_security import WAIT, Client, secure_broker

pytestmark = pytest.mark.integration

T = Topics("steel")


@dataclass
class Bridged:
    out: Path
    auth: str
    central_port: int
    plant_port: int
    clients: list[Client]

    def connect(self, name: str, port: int) -> Client:
        bundle = self.out / "identities" / name
        kw: dict[str, str] = {}
        if self.auth == "passwords":
            kw = {"username": name, "password": (bundle / "password").read_text().strip()}
        ctx = client_tls_context(bundle / "ca.pem", bundle / f"{name}.pem", bundle / f"{name}.key")
        client = Client(port, f"{name}-{len(self.clients)}", ctx, **kw)
        self.clients.append(client)
        assert client.connected, f"{name} refused on port {port}: {client.outcome}"
        return client


@pytest.fixture(params=["certificates", "passwords"])
def bridged(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bridged]:
    central_port, plant_port = free_port(), free_port()
    config = tmp_path / "federation.toml"
    # The bridge dials the central broker's first host and checks it against the
    # broker's certificate, as every client does.
    config.write_text(f"""
federation = "steel"
auth = "{request.param}"
coordinator = "coordinator"
admins = ["admin"]
agents = ["plant-1", "plant-2"]
consumers = ["hmi-1"]

[broker]
hosts = ["localhost", "127.0.0.1"]
tls_port = {central_port}
tls_bind = "127.0.0.1"
user = "{getpass.getuser()}"

[[plant_brokers]]
id = "bridge-north"
hosts = ["localhost", "127.0.0.1"]
tls_port = {plant_port}
tls_bind = "127.0.0.1"
agents = ["plant-1"]
""")
    out = tmp_path / "out"
    provision(config, out)
    central = secure_broker(out, central_port)
    plant_dir = out / "plant-brokers" / "bridge-north"
    plant = Mosquitto(plant_dir, conf=plant_dir / "mosquitto.conf", port=plant_port)
    central.start()
    plant.start()
    state = Bridged(out, request.param, central_port, plant_port, [])
    try:
        yield state
    finally:
        for c in state.clients:
            c.close()
        plant.stop()
        central.stop()


def test_agent_topics_go_up_and_the_model_comes_down(bridged: Bridged) -> None:
    b = bridged
    admin = b.connect("admin", b.central_port)
    admin.subscribe(T.all_bridge_states)
    # The bridge logs in with its own identity and announces itself (retained, will "0").
    wait_for(
        lambda: admin.payloads(T.bridge_state("bridge-north")) == [b"1"],
        WAIT,
        "the bridge's state at the centre",
    )

    coordinator = b.connect("coordinator", b.central_port)
    coordinator.subscribe(T.all_agents("status"), T.all_agents("update"), T.all_agents("metrics"))
    agent = b.connect("plant-1", b.plant_port)
    agent.subscribe(T.model_current, T.round_current)
    agent.publish(T.agent_status("plant-1"), b"online", retain=True)
    agent.publish(T.agent_update("plant-1"), b"delta of plant-1")
    wait_for(
        lambda: coordinator.payloads(T.agent_update("plant-1")),
        WAIT,
        "plant-1's update at the coordinator",
    )
    assert coordinator.payloads(T.agent_status("plant-1")) == [b"online"]
    assert coordinator.payloads(T.agent_update("plant-1")) == [b"delta of plant-1"]
    # Retained at the centre too: a coordinator that (re)subscribes reads the status.
    late = b.connect("coordinator", b.central_port)
    late.subscribe(T.all_agents("status"))
    wait_for(lambda: late.payloads(T.agent_status("plant-1")), WAIT, "the retained status")

    coordinator.publish(T.model_current, b"model v1", retain=True)
    coordinator.publish(T.round_current, b"task 1", retain=True)
    wait_for(lambda: agent.payloads(T.round_current), WAIT, "the task at plant-1")
    assert agent.payloads(T.model_current) == [b"model v1"]
    # Retained at the plant: an agent that connects later picks the model up there.
    later = b.connect("plant-1", b.plant_port)
    later.subscribe(T.model_current)
    wait_for(
        lambda: later.payloads(T.model_current) == [b"model v1"],
        WAIT,
        "the retained model at the plant broker",
    )
    # The admin's reads at the centre stayed on the coordinator's topics and the bridge.
    assert set(admin.topics()) == {T.bridge_state("bridge-north")}


def test_consumers_at_the_centre_reach_an_agent_behind_the_bridge(bridged: Bridged) -> None:
    b = bridged
    agent = b.connect("plant-1", b.plant_port)
    agent.subscribe(T.agent_request("plant-1", "infer"))
    hmi = b.connect("hmi-1", b.central_port)
    hmi.subscribe(T.client_responses("infer", "hmi-1"))
    admin = b.connect("admin", b.central_port)
    admin.subscribe(T.all_bridge_states)
    wait_for(lambda: admin.payloads(T.bridge_state("bridge-north")) == [b"1"], WAIT, "the bridge")
    hmi.publish(T.agent_request("plant-1", "infer"), b"request")
    wait_for(
        lambda: agent.payloads(T.agent_request("plant-1", "infer")), WAIT, "the request at plant-1"
    )
    agent.publish(T.agent_response("plant-1", "infer", "hmi-1"), b"response")
    wait_for(
        lambda: hmi.payloads(T.agent_response("plant-1", "infer", "hmi-1")),
        WAIT,
        "the response at the consumer",
    )


def test_the_bridge_carries_only_its_own_agents(bridged: Bridged) -> None:
    b = bridged
    coordinator = b.connect("coordinator", b.central_port)
    coordinator.subscribe(T.all_agents("update"), T.all_agents("status"))
    # plant-2 belongs to the central broker: the plant broker refuses its identity, and
    # what plant-1 forges in another agent's name is refused by the plant broker's ACL.
    bundle = b.out / "identities/plant-2"
    stray = Client(
        b.plant_port,
        "plant-2-stray",
        client_tls_context(bundle / "ca.pem", bundle / "plant-2.pem", bundle / "plant-2.key"),
        **(
            {"username": "plant-2", "password": (bundle / "password").read_text().strip()}
            if b.auth == "passwords"
            else {}
        ),
    )
    b.clients.append(stray)
    if stray.connected:  # certificate mode: the same CA, but no ACL rights there
        stray.publish(T.agent_update("plant-2"), b"stray")
    agent = b.connect("plant-1", b.plant_port)
    agent.publish(T.agent_update("plant-2"), b"forged")
    agent.publish(T.agent_status("plant-1"), b"sentinel")
    wait_for(lambda: coordinator.payloads(T.agent_status("plant-1")), WAIT, "the sentinel")
    assert coordinator.topics() == [T.agent_status("plant-1")]
