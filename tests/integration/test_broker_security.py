"""A real mosquitto with the configuration ``alchimia provision`` generates: TLS, auth, ACLs.

Absence of a message is proven without sleeping: mosquitto routes one message at a time
and PUBACKs a QoS 1 publish after routing it, and a subscriber's messages leave in the
order they were queued. So once a later "sentinel" that the subscriber may read has
arrived, a forbidden message published (and acknowledged) before it would have arrived too.
"""

from __future__ import annotations

import getpass
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from alchimia.broker.embedded import free_port
from alchimia.broker.tls import client_tls_context, explain_tls_error, tls_probe
from alchimia.broker.topics import Topics
from alchimia.deploy import pki
from alchimia.deploy.provision import provision
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

FED = "steel"
T = Topics(FED)
LIMIT = 4096
WAIT = 10.0  # seconds before a wait counts as a failure; never a measured figure


def write_federation(
    path: Path,
    *,
    auth: str,
    tls_port: int,
    plain_port: int | None = None,
    agents: list[str] | None = None,
    revoked: list[str] | None = None,
    message_size_limit: int = LIMIT,
) -> Path:
    agents = ["plant-1", "plant-2"] if agents is None else agents
    lines = [
        f'federation = "{FED}"',
        f'auth = "{auth}"',
        f"message_size_limit = {message_size_limit}",
        'coordinator = "coordinator"',
        "agents = [" + ", ".join(f'"{a}"' for a in agents) + "]",
        'consumers = ["hmi-1", "hmi-2"]',
        "revoked = [" + ", ".join(f'"{r}"' for r in revoked or []) + "]",
        "",
        "[broker]",
        'hosts = ["127.0.0.1", "localhost"]',
        f"tls_port = {tls_port}",
        'tls_bind = "127.0.0.1"',
        # Started by this (possibly root) user: stay that user to read the 0600 files.
        f'user = "{getpass.getuser()}"',
    ]
    if plain_port is not None:
        lines.append(f"plain_port = {plain_port}")
    path.write_text("\n".join(lines) + "\n")
    return path


def secure_broker(out: Path, port: int) -> Mosquitto:
    """Mosquitto running the config ``alchimia provision`` wrote into ``out``."""
    return Mosquitto(out, conf=out / "mosquitto" / "mosquitto.conf", port=port)


class Refused(Exception):
    pass


class Client:
    """A paho 2.x client over TLS that records messages and waits for acknowledgements."""

    def __init__(
        self,
        port: int,
        client_id: str,
        context: ssl.SSLContext | None,
        *,
        username: str | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._answer = threading.Event()
        self._subacks: dict[int, threading.Event] = {}
        self.outcome: str | None = None
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if context is not None:
            self.c.tls_set_context(context)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        try:
            self.c.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            self.outcome = f"connect failed: {exc}"
            return
        self.c.loop_start()
        if not self._answer.wait(WAIT):
            self.outcome = "no answer"
        if self.outcome != "Success":
            self.close()

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object
    ) -> None:
        if self.outcome is None:
            self.outcome = str(rc)
        self._answer.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object
    ) -> None:
        if self.outcome is None:
            self.outcome = f"disconnected: {rc}"
        self._answer.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, _rc: object, _p: object) -> None:
        self._subacks.setdefault(mid, threading.Event()).set()

    @property
    def connected(self) -> bool:
        return self.outcome == "Success"

    def subscribe(self, *filters: str) -> None:
        for f in filters:
            _rc, mid = self.c.subscribe(f, qos=1)
            assert self._subacks.setdefault(mid, threading.Event()).wait(WAIT), f

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"no PUBACK for {topic}"

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.messages]

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Federation:
    """A provisioned federation in a temporary directory, with its broker running."""

    def __init__(self, root: Path, auth: str, *, plain: bool = False) -> None:
        self.root, self.auth = root, auth
        self.out = root / "out"
        self.tls_port = free_port()
        self.plain_port = free_port() if plain else None
        self.config = write_federation(
            root / "federation.toml", auth=auth, tls_port=self.tls_port, plain_port=self.plain_port
        )
        self.report = provision(self.config, self.out)
        self.broker = secure_broker(self.out, self.tls_port)
        self.clients: list[Client] = []

    def bundle(self, name: str) -> Path:
        return self.out / "identities" / name

    def context(self, name: str) -> ssl.SSLContext:
        b = self.bundle(name)
        return client_tls_context(b / "ca.pem", b / f"{name}.pem", b / f"{name}.key")

    def password(self, name: str) -> str:
        return (self.bundle(name) / "password").read_text().strip()

    def connect(self, name: str, **kw: object) -> Client:
        if self.auth == "passwords":
            kw.setdefault("username", name)
            kw.setdefault("password", self.password(name))
        client = Client(self.tls_port, f"{FED}-{name}", self.context(name), **kw)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def online(self, name: str) -> Client:
        client = self.connect(name)
        assert client.connected, f"{name} was refused: {client.outcome}\n{self.log()}"
        return client

    def log(self) -> str:
        return self.broker.log.read_text() if self.broker.log.exists() else ""

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.broker.stop()


@pytest.fixture(params=["certificates", "passwords"])
def fed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Federation]:
    f = Federation(tmp_path, request.param)
    f.broker.start()
    try:
        yield f
    finally:
        f.close()


# -- authorisation --------------------------------------------------------------------


def test_agent_cannot_read_another_agents_update(fed: Federation) -> None:
    a, b, coord = fed.online("plant-1"), fed.online("plant-2"), fed.online("coordinator")
    a.subscribe(T.agent_update("plant-2"), T.all_agents("update"), f"{T.root}/#", T.model_current)
    coord.subscribe(T.all_agents("update"))
    b.publish(T.agent_update("plant-2"), b"delta of plant-2")
    coord.publish(T.model_current, b"sentinel")
    wait_for(lambda: a.payloads(T.model_current), WAIT, "the sentinel at plant-1")
    wait_for(
        lambda: coord.payloads(T.agent_update("plant-2")),
        WAIT,
        "plant-2's update at the coordinator",
    )
    assert a.payloads(T.agent_update("plant-2")) == []
    assert coord.payloads(T.agent_update("plant-2")) == [b"delta of plant-2"]


def test_agent_cannot_publish_as_coordinator_or_as_another_agent(fed: Federation) -> None:
    a, coord = fed.online("plant-1"), fed.online("coordinator")
    coord.subscribe(
        T.model_current,
        T.round_current,
        T.coordinator_status,
        T.all_agents("status"),
        T.all_agents("update"),
    )
    for topic in (
        T.model_current,
        T.round_current,
        T.coordinator_status,
        T.agent_status("plant-2"),
        T.agent_update("plant-2"),
    ):
        a.publish(topic, b"forged", retain=topic != T.agent_update("plant-2"))
    a.publish(T.agent_status("plant-1"), b"sentinel", retain=True)
    wait_for(lambda: coord.payloads(T.agent_status("plant-1")), WAIT, "plant-1's status")
    assert coord.topics() == [T.agent_status("plant-1")]


def test_consumer_reads_predictions_and_only_its_own_responses(fed: Federation) -> None:
    agent, hmi = fed.online("plant-1"), fed.online("hmi-1")
    hmi.subscribe(
        T.all_agents("update"),
        T.all_agents("metrics"),
        T.all_agents("predictions"),
        T.all_agents("infer/response/#"),
        T.all_agents("infer/response/hmi-1"),
    )
    agent.publish(T.agent_update("plant-1"), b"delta")
    agent.publish(T.agent_metrics("plant-1"), b"metrics")
    agent.publish(T.agent("plant-1", "infer/response/hmi-2"), b"for hmi-2")
    agent.publish(T.agent("plant-1", "infer/response/hmi-1"), b"for hmi-1")
    agent.publish(T.agent_predictions("plant-1"), b"prediction")
    wait_for(lambda: hmi.payloads(T.agent_predictions("plant-1")), WAIT, "the prediction")
    assert hmi.topics() == [
        T.agent("plant-1", "infer/response/hmi-1"),
        T.agent_predictions("plant-1"),
    ]


def test_inference_requests_reach_only_the_addressed_agent(fed: Federation) -> None:
    a, b, hmi, coord = (fed.online(n) for n in ("plant-1", "plant-2", "hmi-1", "coordinator"))
    a.subscribe(T.agent("plant-1", "infer/request"))
    b.subscribe(T.agent("plant-1", "infer/request"), T.model_current)
    hmi.publish(T.agent("plant-1", "infer/request"), b"request")
    coord.publish(T.model_current, b"sentinel")
    wait_for(lambda: a.payloads(T.agent("plant-1", "infer/request")), WAIT, "the request")
    wait_for(lambda: b.payloads(T.model_current), WAIT, "the sentinel at plant-2")
    assert b.topics() == [T.model_current]


def test_message_over_the_size_limit_is_not_delivered(fed: Federation) -> None:
    agent, hmi = fed.online("plant-1"), fed.online("hmi-1")
    hmi.subscribe(T.all_agents("predictions"))
    agent.publish(T.agent_predictions("plant-1"), b"x" * (LIMIT + 1))
    agent.publish(T.agent_predictions("plant-1"), b"y" * LIMIT)
    wait_for(lambda: hmi.payloads(T.agent_predictions("plant-1")), WAIT, "the prediction")
    assert hmi.payloads(T.agent_predictions("plant-1")) == [b"y" * LIMIT]
    assert agent.connected  # dropped, not disconnected: paho would resend it forever


# -- authentication -------------------------------------------------------------------


def test_client_without_credentials_is_refused(fed: Federation) -> None:
    ca_only = client_tls_context(fed.bundle("plant-1") / "ca.pem")
    anonymous = Client(fed.tls_port, "anonymous", ca_only)
    assert not anonymous.connected, anonymous.outcome
    if fed.auth == "certificates":
        with pytest.raises(ssl.SSLError) as err:
            tls_probe("127.0.0.1", fed.tls_port, ca_only)
        assert "client certificate" in explain_tls_error(err.value)
        # A password does not replace the certificate.
        with_password = Client(fed.tls_port, "pw", ca_only, username="plant-1", password="anything")
        assert not with_password.connected
    else:
        assert tls_probe("127.0.0.1", fed.tls_port, ca_only) == 5
        wrong = Client(fed.tls_port, "wrong", ca_only, username="plant-1", password="nope")
        assert not wrong.connected, wrong.outcome
        right = Client(
            fed.tls_port, "right", ca_only, username="plant-1", password=fed.password("plant-1")
        )
        assert right.connected, right.outcome
        right.close()
    assert fed.online("plant-1").connected


def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    fed = Federation(tmp_path, "certificates")
    fed.broker.start()
    try:
        rogue_ca = pki.CertificateAuthority.create(FED, 30)
        key = pki.new_key()
        pki.write_private(tmp_path / "rogue.key", pki.key_pem(key))
        pki.write_public(
            tmp_path / "rogue.pem", pki.cert_pem(rogue_ca.issue("plant-1", key, days=30))
        )
        ctx = client_tls_context(
            fed.bundle("plant-1") / "ca.pem", tmp_path / "rogue.pem", tmp_path / "rogue.key"
        )
        rogue = Client(fed.tls_port, "rogue", ctx)
        assert not rogue.connected, rogue.outcome
        with pytest.raises(ssl.SSLError) as err:
            tls_probe("127.0.0.1", fed.tls_port, ctx)
        assert "another CA" in explain_tls_error(err.value)
        # And the other way round: a client trusting another CA refuses the broker.
        pki.write_public(tmp_path / "rogue-ca.pem", pki.cert_pem(rogue_ca.cert))
        b = fed.bundle("plant-1")
        wrong_trust = client_tls_context(
            tmp_path / "rogue-ca.pem", b / "plant-1.pem", b / "plant-1.key"
        )
        with pytest.raises(ssl.SSLCertVerificationError) as err2:
            tls_probe("127.0.0.1", fed.tls_port, wrong_trust)
        assert "ca_file" in explain_tls_error(err2.value)
        assert fed.online("plant-1").connected
    finally:
        fed.close()


@pytest.mark.parametrize("auth", ["certificates", "passwords"])
def test_revoked_identity_is_refused_after_reprovisioning(tmp_path: Path, auth: str) -> None:
    fed = Federation(tmp_path, auth)
    try:
        fed.broker.start()
        assert fed.online("plant-2").connected
        fed.close()
        fed.clients.clear()
        keep = {
            p: p.read_bytes()
            for p in (
                fed.out / "ca/ca.pem",
                fed.out / "ca/ca.key",
                fed.out / "mosquitto/server.pem",
                fed.bundle("plant-1") / "plant-1.pem",
                fed.bundle("plant-1") / "plant-1.key",
            )
        }
        write_federation(fed.config, auth=auth, tls_port=fed.tls_port, revoked=["plant-2"])
        report = provision(fed.config, fed.out)
        assert report.revoked == ["plant-2"]
        assert {p: p.read_bytes() for p in keep} == keep
        fed.broker.start()
        refused = fed.connect("plant-2")
        assert not refused.connected, refused.outcome
        if auth == "certificates":
            with pytest.raises(ssl.SSLError) as err:
                tls_probe("127.0.0.1", fed.tls_port, fed.context("plant-2"))
            assert "revoked" in explain_tls_error(err.value)
        else:
            assert (
                tls_probe(
                    "127.0.0.1",
                    fed.tls_port,
                    fed.context("plant-2"),
                    username="plant-2",
                    password=fed.password("plant-2"),
                )
                == 5
            )
        assert fed.online("plant-1").connected
    finally:
        fed.close()


def test_plain_loopback_listener_needs_a_password(tmp_path: Path) -> None:
    fed = Federation(tmp_path, "certificates", plain=True)
    assert fed.plain_port is not None
    fed.broker.start()
    try:
        anonymous = Client(fed.plain_port, "anonymous", None)
        assert not anonymous.connected, anonymous.outcome
        local = Client(
            fed.plain_port,
            "local",
            None,
            username="coordinator",
            password=fed.password("coordinator"),
        )
        assert local.connected, local.outcome
        fed.clients.append(local)
        # ACLs apply there too.
        a = fed.online("plant-1")
        a.subscribe(T.model_current)
        local.publish(T.model_current, b"from loopback")
        wait_for(lambda: a.payloads(T.model_current), WAIT, "the model at plant-1")
    finally:
        fed.close()


def test_broker_name_in_url_is_checked(tmp_path: Path) -> None:
    fed = Federation(tmp_path, "certificates")
    fed.broker.start()
    try:
        by_name = Client(fed.tls_port, "by-name", fed.context("plant-1"), host="localhost")
        fed.clients.append(by_name)
        assert by_name.connected, by_name.outcome
        ctx = fed.context("plant-1")
        with (
            socket.create_connection(("127.0.0.1", fed.tls_port), timeout=WAIT) as raw,
            pytest.raises(ssl.SSLCertVerificationError) as err,
        ):
            ctx.wrap_socket(raw, server_hostname="broker.elsewhere.example")
        assert "does not name the host" in explain_tls_error(err.value)
    finally:
        fed.close()


def test_a_sighup_makes_mosquitto_refuse_a_certificate_revoked_since(tmp_path: Path) -> None:
    """What docs/SECURITY.md says of a revocation without a restart, measured: after
    re-provisioning, a SIGHUP alone makes the running mosquitto re-read the CRL."""
    fed = Federation(tmp_path, "certificates")
    try:
        fed.broker.start()
        assert fed.online("plant-2").connected
        write_federation(
            fed.config, auth="certificates", tls_port=fed.tls_port, revoked=["plant-2"]
        )
        assert provision(fed.config, fed.out).revoked == ["plant-2"]
        assert fed.broker.proc is not None
        fed.broker.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: not fed.connect("plant-2").connected, 20, "plant-2 refused")
        assert fed.online("plant-1").connected
    finally:
        fed.close()
