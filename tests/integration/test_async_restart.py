"""Async mode over a real Mosquitto: a coordinator restart in the middle of a buffer
window loses no update (accepted before, or sent while it was down) and counts none twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from alchimia.broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.local import CoordinatorThread
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.helpers import RawClient, wait_for

FED = "asyncfed"
SAMPLES = {"a1": 10, "a2": 30, "a3": 60}


@dataclass
class AsyncWindow:
    """Three raw agents in front of an open async window (buffer_k = 3, one version).

    A context manager: leaving it stops every coordinator started and closes the clients.
    """

    settings: CoordinatorSettings
    topics: Topics
    agents: dict[str, RawClient]
    watcher: RawClient
    first: CoordinatorThread
    base: ModelBody
    update: Callable[[str], bytes]
    deltas: dict[str, dict[str, np.ndarray]]
    restarted: list[CoordinatorThread] = field(default_factory=list)

    def restart(self) -> CoordinatorThread:
        """A new coordinator on the same settings and state (the first one stopped)."""
        self.restarted.append(CoordinatorThread(self.settings).start())
        return self.restarted[-1]

    def send(self, name: str, payload: bytes | None = None) -> bytes:
        payload = payload or self.update(name)
        self.agents[name].publish(self.topics.agent_update(name), payload)
        return payload

    def check_final_model(self) -> None:
        """Version 1 is the sample-weighted mean of all three deltas, each counted once."""
        final = decode(self.watcher.received(self.topics.model_current)[-1], ModelBody).body
        assert final.version == 1 and final.metadata["contributors"] == ["a1", "a2", "a3"]
        total = sum(SAMPLES.values())
        for k, w0 in self.base.weights.items():
            expected = w0 + sum(SAMPLES[n] * self.deltas[n][k] for n in SAMPLES) / total
            np.testing.assert_allclose(final.weights[k], expected, rtol=1e-5, atol=1e-6)

    def __enter__(self) -> AsyncWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        for coordinator in [self.first, *self.restarted]:
            coordinator.stop()
        for client in [*self.agents.values(), self.watcher]:
            client.close()


def open_window(mosquitto: Mosquitto, tmp_path: Path) -> AsyncWindow:
    topics = Topics(FED)
    settings = CoordinatorSettings.load(
        None,
        broker=mosquitto.url,
        federation=FED,
        state_dir=tmp_path / "state",
        mode="async",
        buffer_k=3,
        min_agents=1,
        rounds=1,
        staleness="constant",
    )
    agents = {name: RawClient(mosquitto.host, mosquitto.port, f"{FED}-{name}") for name in SAMPLES}
    watcher = RawClient(mosquitto.host, mosquitto.port, f"{FED}-watcher")
    watcher.subscribe(topics.model_current)
    watcher.subscribe(topics.round_current)
    for name, client in agents.items():
        client.publish(
            topics.agent_status(name),
            message(name, StatusBody(role="agent", state="online")),
            retain=True,
        )
    first = CoordinatorThread(settings).start()
    wait_for(lambda: watcher.received(topics.round_current), 30, "the async task")
    task: TaskBody = decode(watcher.received(topics.round_current)[-1], TaskBody).body
    assert task.mode == "async" and task.state == "open"
    base: ModelBody = decode(watcher.received(topics.model_current)[0], ModelBody).body
    rng = np.random.default_rng(3)
    deltas = {
        name: {
            k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in base.weights.items()
        }
        for name in agents
    }

    def update(name: str) -> bytes:
        return message(
            name,
            UpdateBody(
                round_id=task.round_id,
                base_version=base.version,
                num_samples=SAMPLES[name],
                delta=deltas[name],
            ),
        )

    return AsyncWindow(settings, topics, agents, watcher, first, base, update, deltas)


def accepted(coordinator: CoordinatorThread, n: int) -> Callable[[], bool]:
    return lambda: (
        coordinator.coordinator is not None
        and coordinator.coordinator.window is not None
        and len(coordinator.coordinator.window.accepted) == n
    )


def test_restart_mid_window_keeps_accepted_updates_exactly_once(mosquitto, tmp_path: Path) -> None:
    with open_window(mosquitto, tmp_path) as w:
        sent_a1 = w.send("a1")
        w.send("a2")
        wait_for(accepted(w.first, 2), 30, "two accepted updates")
        w.first.stop()

        second = w.restart()
        wait_for(accepted(second, 2), 30, "resumed window")
        w.send("a1", sent_a1)  # replay of the same message
        w.send("a1")  # same base, new id
        wait_for(lambda: len(second.coordinator.rejections) >= 2, 30, "two rejections")
        reasons = [r.reason for r in second.coordinator.rejections]
        assert any("replayed" in r for r in reasons) and any("already sent" in r for r in reasons)
        w.send("a3")
        wait_for(lambda: second.done, 60, "the window to aggregate")
    w.check_final_model()


def test_updates_sent_while_the_coordinator_is_down_count_when_it_returns(
    mosquitto, tmp_path: Path
) -> None:
    """The coordinator's MQTT session outlives it, so the broker keeps what agents sent
    meanwhile (an agent does not send an update twice, so that one would be lost)."""
    with open_window(mosquitto, tmp_path) as w:
        w.send("a1")
        wait_for(accepted(w.first, 1), 30, "one accepted update")
        w.first.stop()
        assert w.first.done
        w.send("a2")
        w.send("a3")
        second = w.restart()
        wait_for(lambda: second.done, 30, "the window to aggregate")
        assert not second.coordinator.rejections
    w.check_final_model()


def test_an_update_the_coordinator_could_not_save_is_delivered_again(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acknowledged only once handled: a coordinator that stops on a disk error before
    saving an update gets it from the broker again when it is back."""

    def disk_full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with open_window(mosquitto, tmp_path) as w:
        monkeypatch.setattr(w.first.coordinator.db, "accept_update", disk_full)
        w.send("a1")
        wait_for(lambda: w.first.done, 30, "the coordinator to stop on the disk error")
        assert isinstance(w.first.error, sqlite3.OperationalError)
        second = w.restart()
        wait_for(accepted(second, 1), 30, "the unsaved update, delivered again")
        w.send("a2")
        w.send("a3")
        wait_for(lambda: second.done, 30, "the window to aggregate")
    w.check_final_model()


def test_a_message_the_database_refuses_is_dropped_not_retried_for_ever(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only machine faults stop the coordinator; a refusal caused by the message does not."""
    with open_window(mosquitto, tmp_path) as w:
        db = w.first.coordinator.db
        accept = db.accept_update

        def refuse_once(*args: object, **kwargs: object) -> None:
            monkeypatch.setattr(db, "accept_update", accept)
            raise sqlite3.IntegrityError("UNIQUE constraint failed")

        monkeypatch.setattr(db, "accept_update", refuse_once)
        w.send("a1")
        w.send("a2")
        w.send("a3")
        wait_for(accepted(w.first, 2), 30, "the two other updates")
        assert not w.first.done
