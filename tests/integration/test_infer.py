"""Decision support over a real mosquitto: an agent's calibrated predictions and its
answers to inference requests (docs/PROTOCOL.md, "Requests").

The agent runs in this process on its own thread (``AgentThread``); the model it serves is
the initial model of a new federation, published as the coordinator would publish it
(no rounds: nothing here needs training). Consumers are the project's client
(``alchimia.consumer``), the ``alchimia infer`` command in a process where torch cannot be
imported, and raw MQTT clients for what a hostile or broken client sends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from alchimia.agent.settings import AgentSettings
from alchimia.broker.embedded import free_port
from alchimia.broker.schemas import (
    InferRequestBody,
    InferResponseBody,
    MetricsBody,
    PlannedHeat,
    PredictionBody,
    decode,
    message,
)
from alchimia.broker.signing import load_private_key
from alchimia.broker.tls import client_tls_context
from alchimia.broker.topics import Topics
from alchimia.consumer import Consumer, ConsumerSettings, RequestFailed
from alchimia.coordinator.publishing import initial_weights, model_message
from alchimia.deploy.provision import provision
from alchimia.local import AgentThread
from alchimia.models.served import load_served
from alchimia.models.spec import ModelSpec
from tests.data.plans import PLANNED_HEAT
from tests.integration.helpers import RawClient, wait_for
from tests.integration.test_broker_security import (
    FED,
    Client,
    secure_broker,
    write_federation,
)

pytestmark = pytest.mark.integration

WAIT = 30.0  # seconds before a wait counts as a failure; never a measured figure
HISTORY = 150  # 30 held-out heats: enough for a 90 % interval (20)
SPEC = ModelSpec(architecture="eaf-hybrid-v1")
PLAN = PLANNED_HEAT


def _model(signing_key: Path | None = None) -> bytes:
    key = load_private_key(signing_key) if signing_key is not None else None
    return model_message(
        "coordinator",
        SPEC,
        initial_weights(SPEC, 0),
        version=0,
        parent=None,
        round_id=None,
        metadata={},
        signing_key=key,
    )


def test_agent_publishes_calibrated_predictions_coverage_and_answers(
    mosquitto, tmp_path: Path
) -> None:
    fed = "calib"
    topics = Topics(fed)
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        federation=fed,
        agent_id="plant-1",
        history_heats=HISTORY,
        heat_interval_s=0.02,
        store_sensors=False,
        status_interval_s=0.5,
        state_dir=tmp_path / "agents",
    )
    watcher = RawClient(mosquitto.host, mosquitto.port, f"{fed}-watcher")
    watcher.subscribe(topics.agent_predictions("plant-1"))
    watcher.subscribe(topics.agent_metrics("plant-1"))
    agent = AgentThread(settings)
    try:
        # Before any model: a request is refused, not left unanswered.
        agent.start()
        with Consumer(
            ConsumerSettings(broker=mosquitto.url, federation=fed, consumer_id="hmi-1")
        ) as consumer:
            refused: list[RequestFailed] = []

            def ask_too_early() -> bool:
                try:  # the agent may not have subscribed yet: then no answer, ask again
                    consumer.infer("plant-1", [{"inputs": PLAN}], timeout=0.5)
                except RequestFailed as exc:
                    refused.append(exc)
                except TimeoutError:
                    pass
                return bool(refused)

            wait_for(ask_too_early, WAIT, "an answer before any model")
            assert refused[0].code == "no_model"
            watcher.publish(topics.model_current, _model(), retain=True)

            def bounded() -> list[PredictionBody]:
                bodies = [
                    decode(p, PredictionBody).body
                    for p in watcher.received(topics.agent_predictions("plant-1"))
                ]
                return [b for b in bodies if b.lower is not None]

            wait_for(lambda: len(bounded()) >= 20, WAIT, "predictions with intervals")
            p = bounded()[0]
            assert p.level == 0.9 and set(p.lower) == set(p.upper) == set(SPEC.targets)
            # Equal tails of the residuals: not centred on the prediction (the untrained
            # model's bias moves the interval off it).
            assert all(p.lower[t] < p.upper[t] for t in SPEC.targets)

            def coverage() -> list[MetricsBody]:
                bodies = [
                    decode(m, MetricsBody).body
                    for m in watcher.received(topics.agent_metrics("plant-1"))
                ]
                return [
                    b for b in bodies if b.scope == "calibration" and b.values.get("heats", 0) >= 20
                ]

            wait_for(coverage, WAIT, "calibration metrics")
            values = coverage()[-1].values
            assert values["level"] == 0.9 and values["n"] >= 20
            for t in SPEC.targets:
                assert 0.0 <= values[f"coverage_{t}"] <= 1.0 and values[f"width_{t}"] > 0

            # The serving directory holds the calibration and the power-on estimate.
            served = load_served(settings.state_dir / "plant-1" / "serving")
            assert served.version == 0 and served.calibration.version == 0
            assert served.calibration.n >= 20 and served.power_on.n >= 2

            # The same model answers a request, with an interval and an estimated power-on.
            plan = dict(PLAN)
            del plan["power_on_min"]
            answer = consumer.infer(
                "plant-1", [{"heat_id": "H1", "inputs": plan}], level=0.8, timeout=WAIT
            )
            assert answer.model_version == 0 and answer.level == 0.8
            (pred,) = answer.predictions
            assert pred.heat_id == "H1" and 5 < pred.power_on_min < 120
            assert all(pred.lower[t] < pred.upper[t] for t in SPEC.targets)
        wait_for(
            lambda: any(
                decode(m, MetricsBody).body.scope == "requests"
                for m in watcher.received(topics.agent_metrics("plant-1"))
            ),
            WAIT,
            "request counts in the metrics",
        )
    finally:
        agent.stop()
        watcher.close()
    assert not agent.thread.is_alive()


# -- a provisioned federation: identities, ACLs, mutual TLS -----------------------------


class Secured:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        conf = write_federation(
            root / "federation.toml",
            auth="certificates",
            tls_port=self.port,
            message_size_limit=1024 * 1024,
        )
        self.out = root / "fed"
        provision(conf, self.out)
        self.broker = secure_broker(self.out, self.port)
        self.clients: list[Client] = []

    def ids(self, name: str) -> Path:
        return self.out / "identities" / name

    def online(self, name: str) -> Client:
        b = self.ids(name)
        client = Client(
            self.port,
            f"{FED}-{name}-raw",
            client_tls_context(b / "ca.pem", b / f"{name}.pem", b / f"{name}.key"),
        )
        self.clients.append(client)
        assert client.connected, client.outcome
        return client

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.broker.stop()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    s = Secured(tmp_path)
    s.broker.start()
    try:
        yield s
    finally:
        s.close()


def _no_torch(command: str, *args: str) -> subprocess.CompletedProcess:
    """``alchimia COMMAND`` in a process where ``import torch`` fails."""
    code = (
        "import sys; sys.modules['torch'] = None; "
        "from alchimia.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, command, *args], capture_output=True, text=True, timeout=90
    )


def _no_torch_infer(*args: str) -> subprocess.CompletedProcess:
    return _no_torch("infer", *args)


def test_consumer_identity_gets_answers_others_cannot_read_them_bad_requests_get_errors(
    secured: Secured, tmp_path: Path
) -> None:
    T = Topics(FED)
    coordinator = secured.online("coordinator")
    coordinator.publish(
        T.model_current, _model(secured.out / "signing/model_signing.key"), retain=True
    )
    settings = AgentSettings.load(
        secured.ids("plant-1") / "agent.toml",
        history_heats=HISTORY,
        heat_interval_s=0,
        store_sensors=False,
        max_request_bytes=16 * 1024,
        state_dir=tmp_path / "agents",
    )
    agent = AgentThread(settings).start()
    spy = secured.online("plant-2")  # another agent's identity
    spy.subscribe(
        T.all_agents("infer/response/#"),
        T.all_agents("infer/response/hmi-1"),
        T.all_agents("optimize/response/#"),
        T.coordinator_status,
    )
    try:
        wait_for(lambda: agent.agent.state is not None, WAIT, "the agent to serve version 0")

        # The command line, torch-free, from a CSV: one heat with its power-on time, one
        # to be estimated.
        plan = tmp_path / "plan.csv"
        cols = list(PLAN)
        rows = [
            ",".join(["heat_id", *cols]),
            ",".join(["A", *(str(PLAN[c]) for c in cols)]),
            ",".join(["B", *("" if c == "power_on_min" else str(PLAN[c]) for c in cols)]),
        ]
        plan.write_text("\n".join(rows) + "\n")
        done = _no_torch_infer(
            "--config",
            str(secured.ids("hmi-1") / "consumer.toml"),
            "--agent-id",
            "plant-1",
            str(plan),
            "--json",
            "--timeout",
            "20",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        answer = json.loads(done.stdout)
        assert answer["error"] is None and answer["model_version"] == 0
        a, b = answer["predictions"]
        assert (a["heat_id"], b["heat_id"]) == ("A", "B")
        assert a["power_on_min"] is None and b["power_on_min"] > 0
        assert a["lower"]["cu_pct"] < a["upper"]["cu_pct"]
        table = _no_torch_infer(
            "--config",
            str(secured.ids("hmi-1") / "consumer.toml"),
            "--agent-id",
            "plant-1",
            str(plan),
        )
        assert table.returncode == 0 and "heat B" in table.stdout, table.stdout + table.stderr
        assert "power_on_min estimated" in table.stdout

        # Bad requests from a raw client of the consumer identity: each gets an error.
        hmi = secured.online("hmi-1")
        hmi.subscribe(T.client_responses("infer", "hmi-1"))
        good = InferRequestBody(request_id="ok-1", heats=[PlannedHeat(inputs=PLAN)])
        malformed = msgpack.unpackb(message("hmi-1", good))
        malformed["body"]["heats"] = [{"inputs": {"slag": "lots"}}]
        malformed["body"]["request_id"] = "bad-1"
        big = InferRequestBody(
            request_id="big-1", heats=[PlannedHeat(inputs=PLAN) for _ in range(100)]
        )
        assert 16 * 1024 < len(message("hmi-1", big)) < 1024 * 1024
        for payload in (
            b"\x93garbage",
            msgpack.packb(malformed),
            message("hmi-1", big),
            message("hmi-1", good),
        ):
            hmi.publish(T.agent_request("plant-1", "infer"), payload)
        answers = T.agent_response("plant-1", "infer", "hmi-1")
        wait_for(lambda: len(hmi.payloads(answers)) >= 3, WAIT, "three answers")
        got = {
            b.request_id: b
            for b in (decode(p, InferResponseBody).body for p in hmi.payloads(answers))
        }
        assert got["bad-1"].error.code == "malformed"
        assert got["big-1"].error.code == "oversized"
        assert got["ok-1"].error is None and len(got["ok-1"].predictions) == 1
        assert len(hmi.payloads(answers)) == 3  # the garbage named nobody to answer
        assert agent.thread.is_alive()
        assert agent.agent.responder.counts["unanswerable"] == 1

        # The charge optimiser over the bus, as a plant HMI calls it: torch-free command.
        examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
        hmi_conf = str(secured.ids("hmi-1") / "consumer.toml")
        planned = _no_torch(
            "optimize",
            "--config",
            hmi_conf,
            "--agent-id",
            "plant-1",
            "--order",
            str(examples / "order.toml"),
            "--stock",
            str(examples / "stock.toml"),
            "--risk",
            "0.2",
            "--json",
        )
        assert planned.returncode in (0, 1), planned.stdout + planned.stderr
        plan = json.loads(planned.stdout)
        assert plan["model_version"] == 0 and plan["status"] in ("optimal", "infeasible")
        assert sum(plan["charge"].values()) > 50 and plan["predicted"]["cu_pct"]["hi"]
        # An order it cannot read gets an error answer, and the agent keeps answering.
        with Consumer(ConsumerSettings.load(secured.ids("hmi-1") / "consumer.toml")) as c:
            with pytest.raises(RequestFailed) as refused:
                c.optimize("plant-1", {"tapped_t": -5}, {}, timeout=WAIT)
            assert refused.value.code == "invalid_order"
        assert agent.thread.is_alive()

        # The other agent's identity read none of it (proof by a later sentinel).
        coordinator.publish(T.coordinator_status, b"sentinel")
        wait_for(lambda: spy.payloads(T.coordinator_status), WAIT, "the sentinel")
        assert spy.topics() == [T.coordinator_status]
    finally:
        agent.stop()
    assert not agent.thread.is_alive()
