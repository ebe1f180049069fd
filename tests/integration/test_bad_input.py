"""Hostile and malformed updates over a real Mosquitto: each is rejected with a reason,
the coordinator keeps running and the round completes with the good updates."""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import numpy as np
import pytest

from alchimia.broker.schemas import StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics
from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from tests.integration.helpers import RawClient, wait_for

FED = "hostile"
FORGED = "x\nERROR alchimia.coordinator: forged"  # a key whose name starts a fake log line


def test_bad_updates_are_rejected_and_the_round_completes(mosquitto, tmp_path: Path) -> None:
    topics = Topics(FED)
    fed = LocalFederation(
        mosquitto.url,
        FED,
        2,
        tmp_path / "coord",
        coordinator={
            "min_agents": 3,
            "rounds": 1,
            "round_timeout_s": 120,
            "epochs": 1,
            "max_update_bytes": 1024 * 1024,
        },
        agent={"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    # The attacker registers as a third agent, so the round waits for it.
    evil = RawClient(mosquitto.host, mosquitto.port, f"{FED}-plant-3")
    evil.subscribe(topics.all_agents("update"))
    evil.subscribe(topics.round_current)
    evil.subscribe(topics.model_current)
    evil.publish(
        topics.agent_status("plant-3"),
        message("plant-3", StatusBody(role="agent", state="online")),
        retain=True,
    )
    monitor = Monitor(mosquitto.url, FED, f"{FED}-monitor").start()
    try:
        coordinator = fed.start_coordinator()
        fed.start_agents()
        honest_topics = [topics.agent_update("plant-1"), topics.agent_update("plant-2")]
        wait_for(lambda: all(evil.received(t) for t in honest_topics), 60, "honest updates")
        task: TaskBody = decode(evil.received(topics.round_current)[-1], TaskBody).body
        assert task.state == "open" and task.selects("plant-3")
        honest = decode(evil.received(honest_topics[0])[0], UpdateBody).body
        shapes = {k: v.shape for k, v in honest.delta.items()}

        def update(sender: str = "plant-3", **changes) -> bytes:
            fields = {
                "round_id": task.round_id,
                "base_version": task.base_version,
                "num_samples": 50,
                "delta": {k: np.zeros(s, np.float32) for k, s in shapes.items()},
            }
            return message(sender, UpdateBody(**{**fields, **changes}))

        mine = topics.agent_update("plant-3")
        first_key = next(iter(shapes))
        nan_delta = {k: np.full(s, np.nan, np.float32) for k, s in shapes.items()}
        bad_shape = {
            **{k: np.zeros(s, np.float32) for k, s in shapes.items()},
            first_key: np.zeros((2, 2), np.float32),
        }
        huge = msgpack.packb({"pad": b"\0" * (2 * 1024 * 1024)}, use_bin_type=True)
        attacks = [
            (mine, b"\x00garbage\xff", "not a valid msgpack"),
            (mine, huge, "exceeds the limit"),
            (mine, update(delta=nan_delta), "NaN"),
            (mine, update(delta=bad_shape), first_key),
            (mine, update(sender="plant-1"), "does not match topic"),
            (mine, update(round_id=task.round_id + 5), "open round is"),
            (mine, update(base_version=task.base_version + 1), "round base is"),
            (honest_topics[0], evil.received(honest_topics[0])[0], "replayed"),
            (topics.agent_status("plant-3"), b"\x81\xa1k\x01", "unknown message kind"),
        ]
        for topic, payload, _reason in attacks:
            evil.publish(topic, payload)
        evil.publish(mine, update())  # finally an honest-looking update: the round can close
        evil.publish(mine, update())  # ... and a second one for the same round
        assert monitor.wait_validation(1, {"plant-1", "plant-2"}, 60)
        wait_for(
            lambda: len(coordinator.coordinator.rejections) >= len(attacks) + 1,
            30,
            "all rejections logged",
        )
        reasons = [r.reason for r in coordinator.coordinator.rejections]
        for _topic, _payload, expected in attacks:
            assert any(expected in r for r in reasons), (expected, reasons)
        assert any("already sent" in r or "is closed" in r for r in reasons), reasons
        assert coordinator.error is None
        model = monitor.model
        assert model is not None and model.version == 1
        assert sorted(model.metadata["contributors"]) == ["plant-1", "plant-2", "plant-3"]
        assert all(np.isfinite(w).all() for w in model.weights.values())
    finally:
        fed.stop()
        monitor.stop()
        evil.close()


def test_a_flood_is_counted_exactly_in_a_bounded_log_and_a_round_still_completes(
    mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17 item 5 and issue 16 item 5: 10,000 hostile updates from 10 forged agents
    are each counted under a reason, the log grows by a few lines, and a normal round then
    completes within its timeout without restarting anything."""
    topics = Topics("flood")
    fed = LocalFederation(
        mosquitto.url,
        "flood",
        2,
        tmp_path / "coord",
        coordinator={"min_agents": 2, "rounds": 1, "epochs": 1, "round_timeout_s": 60},
        agent={"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    evil = RawClient(mosquitto.host, mosquitto.port, "flood-evil")
    monitor = Monitor(mosquitto.url, "flood", "flood-monitor").start()
    n = 10_000
    try:
        with caplog.at_level(logging.INFO, "alchimia.coordinator"):
            coordinator = fed.start_coordinator().coordinator
            assert coordinator is not None
            log = coordinator.rejection_log
            wait_for(
                lambda: any("online, federation" in r.getMessage() for r in caplog.records),
                30,
                "the coordinator subscribed",
            )
            caplog.clear()
            for sent in range(1, n + 1):
                agent = f"fuzz-{sent % 10}"
                payload = msgpack.packb(
                    {
                        "v": 1,
                        "kind": "update",
                        "sender": agent,
                        "ts": 1.0,
                        "msg_id": f"{sent:032x}",
                        "body": {
                            "round_id": 1,
                            "base_version": 0,
                            "num_samples": 1,
                            "delta": {},
                            FORGED: 1,
                        },
                    }
                )
                evil.client.publish(topics.agent_update(agent), payload, qos=1)
                if sent % 500 == 0:  # never more waiting at the broker than it queues
                    wait_for(lambda s=sent: log.total >= s, 30, f"{sent} handled")
        lines = [r.getMessage() for r in caplog.records if r.name == "alchimia.coordinator"]
        # A forged agent's burst (200) and refill decoded and refused, the rest rate limited.
        assert set(log.counts) == {"schema", "rate_limited"}
        assert log.total == n and log.counts["schema"] >= 10 * 200
        assert len(lines) <= 2 * 5, lines
        assert all("\n" not in m for m in lines)
        assert any("x\\x0aERROR alchimia.coordinator: forged" in m for m in lines), lines
        fed.start_agents()
        assert monitor.wait_validation(1, {"plant-1", "plant-2"}, 60)
        assert fed.coordinator is not None and fed.coordinator.error is None
    finally:
        fed.stop()
        monitor.stop()
        evil.close()
