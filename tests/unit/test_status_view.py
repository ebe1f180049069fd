"""``alchimia status``'s aggregation (FederationView) and its table, without a network:
the messages are the bytes the coordinator and agents publish."""

from __future__ import annotations

import json
import uuid

from rich.console import Console

from alchimia.broker.schemas import Body, Envelope, MetricsBody, StatusBody, TaskBody, encode
from alchimia.broker.topics import Topics
from alchimia.coordinator.publishing import initial_weights, model_message
from alchimia.models.spec import ModelSpec
from alchimia.status import FederationView, render

T = Topics("steel")
NOW = 1_800_000_000.0


def _msg(sender: str, body: Body, ts: float) -> bytes:
    return encode(
        Envelope(kind=body.kind, sender=sender, ts=ts, msg_id=uuid.uuid4().hex, body=body)
    )


def _agent_status(agent_id: str, ts: float, **fields: object) -> tuple[str, bytes]:
    body = StatusBody(
        role="agent", state=fields.pop("state", "online"), software="alchimia-agent/0.1", **fields
    )  # type: ignore[arg-type]
    return T.agent_status(agent_id), _msg(agent_id, body, ts)


def _federation() -> FederationView:
    view = FederationView("steel")
    spec = ModelSpec(architecture="mlp-v1")
    model = model_message(
        "coordinator",
        spec,
        initial_weights(spec, 0),
        version=4,
        parent=3,
        round_id=7,
        metadata={"strategy": "fedavg", "contributors": ["plant-1", "plant-2"]},
    )
    messages = [
        (
            T.coordinator_status,
            _msg(
                "coordinator",
                StatusBody(
                    role="coordinator",
                    state="online",
                    software="alchimia-coordinator/0.1",
                    model_version=4,
                    activity="running",
                    rejected={"plant-2": 3},
                ),
                NOW - 30,
            ),
        ),
        (T.model_current, model),
        (
            T.round_current,
            _msg(
                "coordinator",
                TaskBody(
                    round_id=8,
                    state="open",
                    base_version=4,
                    deadline_ts=NOW + 40,
                    selected=["plant-1", "plant-2"],
                ),
                NOW - 5,
            ),
        ),
        _agent_status(
            "plant-1",
            NOW - 10,
            samples=120,
            new_heats=3,
            model_version=4,
            serving_version=4,
            drift_events=1,
            models_rejected=0,
            validation={"mae_energy_kwh_t": 9.5, "mae_cu_pct": 0.02, "n": 30},
            prequential={"n": 40, "mae_recent_energy_kwh_t": 11.0, "mae_recent_cu_pct": 0.03},
        ),
        # A prequential report after that status is fresher: it wins.
        (
            T.agent_metrics("plant-1"),
            _msg(
                "plant-1",
                MetricsBody(
                    model_version=4,
                    scope="prequential",
                    values={"n": 41, "mae_recent_energy_kwh_t": 10.0},
                ),
                NOW - 2,
            ),
        ),
        _agent_status(
            "plant-2", NOW - 600, state="offline", samples=80, model_version=4, serving_version=3
        ),
        # An older status of plant-1, delivered late, changes nothing.
        _agent_status("plant-1", NOW - 100, state="offline", samples=5),
        # Forged (sender is not the topic's agent), undecodable, and a cleared retained one.
        (T.agent_status("plant-3"), _msg("plant-1", StatusBody(role="agent", state="online"), NOW)),
        (T.agent_metrics("plant-2"), b"\x81\xa1v\x01"),
        (T.agent_status("plant-4"), b""),
    ]
    for topic, payload in messages:
        view.feed(topic, payload)
    return view


def test_messages_fold_into_one_status() -> None:
    status = _federation().status()
    c, m, r = status.coordinator, status.model, status.round
    assert c is not None and c.state == "online" and c.model_version == 4
    assert m is not None and (m.version, m.parent_version, m.round_id) == (4, 3, 7)
    assert m.strategy == "fedavg" and m.contributors == ["plant-1", "plant-2"] and not m.signed
    assert r is not None and (r.round_id, r.state, r.mode, r.deadline_ts) == (
        8,
        "open",
        "sync",
        NOW + 40,
    )
    assert [a.agent_id for a in status.agents] == ["plant-1", "plant-2"]
    p1, p2 = status.agents
    assert (p1.state, p1.heats, p1.new_heats, p1.drift_events) == ("online", 120, 3, 1)
    assert p1.last_seen == NOW - 2  # its latest message, the metrics
    assert p1.metrics["validation"].values["mae_energy_kwh_t"] == 9.5
    assert p1.metrics["validation"].model_version == 4
    assert p1.metrics["prequential"].values == {"n": 41, "mae_recent_energy_kwh_t": 10.0}
    assert (p2.state, p2.serving_version, p2.rejected, p1.rejected) == ("offline", 3, 3, 0)
    assert status.ignored == 2  # the forged status and the undecodable metrics
    json.dumps(status.to_dict())  # --json prints it


def test_the_table_says_what_an_admin_asks() -> None:
    console = Console(record=True, width=250)
    render(_federation().status(), NOW, console)
    text = console.export_text()
    assert "coordinator coordinator: up (alchimia-coordinator/0.1), version 4" in text
    assert "model: version 4 (round 7, fedavg, 2 contributors, unsigned)" in text
    assert "round 8: open, base version 4, 2 selected, deadline in 40 s" in text
    assert "2 message(s) ignored" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("plant-")}
    assert "online" in rows["plant-1"] and "9.5 / 0.02" in rows["plant-1"]
    assert "10 / -" in rows["plant-1"]  # the fresher prequential report, no Cu in it
    assert "offline" in rows["plant-2"] and "10 min ago" in rows["plant-2"]
    assert "4 (serves 3)" in rows["plant-2"]


def test_a_dead_coordinator_and_a_silent_federation_are_said_plainly() -> None:
    view = FederationView("steel")
    console = Console(record=True, width=200)
    render(view.status(), NOW, console)
    text = console.export_text()
    assert "coordinator: not heard of" in text and "agents: none heard of" in text
    view.feed(
        T.coordinator_status,
        _msg("coordinator", StatusBody(role="coordinator", state="offline", model_version=9), NOW),
    )
    view.feed(
        T.round_current,
        _msg(
            "coordinator",
            TaskBody(
                round_id=3,
                state="open",
                mode="async",
                base_version=9,
                deadline_ts=0.0,
                selected=["a"],
            ),
            NOW,
        ),
    )
    console = Console(record=True, width=200)
    render(view.status(), NOW, console)
    text = console.export_text()
    assert "DOWN" in text and "async window 3: open, base version 9" in text
    assert "deadline" not in text  # async windows have none
