"""Secure aggregation end to end (docs/PROTOCOL.md, "Secure aggregation (sync rounds)"):
the real coordinator and agents over a real Mosquitto, the provisioned ACL, and the demo.

What the agents hand their SecaggClient (the trained delta and its weight) is recorded in
process, so each secure version can be checked against plain FedAvg of the same updates."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from alchimia.agent.learn.privacy import clip
from alchimia.agent.secagg_client import Phase, SecaggClient
from alchimia.agent.service import Agent
from alchimia.broker.schemas import Body, ModelBody, SecaggMaskedBody, body_of, decode
from alchimia.coordinator.persistence import CoordinatorDB
from alchimia.coordinator.privacy import epsilon
from alchimia.coordinator.strategies.fedavg import FedAvg
from alchimia.demo import run_demo
from alchimia.local import LocalFederation
from tests.integration.helpers import wait_for
from tests.integration.test_broker_security import WAIT, Federation
from tests.integration.test_broker_security import T as SECURED

pytestmark = pytest.mark.integration

COORDINATOR = {
    "secure_aggregation": True,
    "epochs": 1,
    "round_timeout_s": 60,
    "secagg_phase_timeout_s": 3.0,
}
AGENT = {"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0, "torch_threads": 1}


class Deltas:
    """(round, agent) -> (shared delta in canonical order, weight), as each agent's client
    got it; (round, agent) -> the client itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.given: dict[tuple[int, str], tuple[list[np.ndarray], int]] = {}
        self.clients: dict[tuple[int, str], SecaggClient] = {}

    def of_round(self, round_id: int) -> dict[str, tuple[list[np.ndarray], int]]:
        with self.lock:
            return {a: v for (r, a), v in self.given.items() if r == round_id}


@pytest.fixture
def deltas(monkeypatch: pytest.MonkeyPatch) -> Deltas:
    seen = Deltas()
    set_delta = SecaggClient.set_delta

    def spy(self: SecaggClient, delta, num_samples, metrics=None):  # type: ignore[no-untyped-def]
        with seen.lock:
            seen.given[self.round_id, self.agent_id] = ([np.array(d) for d in delta], num_samples)
            seen.clients[self.round_id, self.agent_id] = self
        return set_delta(self, delta, num_samples, metrics)

    monkeypatch.setattr(SecaggClient, "set_delta", spy)
    return seen


def _versions(state_dir: Path) -> dict[int, tuple[int | None, dict, ModelBody]]:
    """version -> (round, metadata, model), as the coordinator stored them."""
    db = CoordinatorDB(state_dir)
    try:
        return {
            v: (r, meta, body_of(decode(db.load_payload(v), ModelBody), ModelBody))
            for v, r, _ts, meta in db.versions()
        }
    finally:
        db.close()


def _assert_fedavg(base: ModelBody, new: ModelBody, given: dict) -> None:
    """The secure version is plain FedAvg of the same updates, to fixed-point precision
    (|U3| * 2^-25 / the smallest weight) and float32 rounding."""
    acc = FedAvg().open_round(base.weights)
    for delta, weight in given.values():
        acc.add(dict(zip(base.weights, delta, strict=True)), weight)
    plain = acc.finish()
    atol = len(given) * 2.0**-25 / min(w for _, w in given.values())
    moved = False
    for name, expected in plain.items():
        got = np.asarray(new.weights[name], dtype=np.float64)
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=atol, err_msg=name)
        moved |= not np.array_equal(new.weights[name], base.weights[name])
    assert moved, "the secure version is the base model"


def _run_rounds(
    mosquitto, tmp_path: Path, name: str, n: int, what: str, rounds: int, **coordinator
) -> tuple[LocalFederation, dict[int, tuple[int | None, dict, ModelBody]], list[str]]:
    """``n`` agents and the coordinator through ``rounds`` secure rounds, to the end: the
    federation (stopped), its versions (0 to ``rounds``, checked) and the agents' ids."""
    fed = LocalFederation(
        mosquitto.url,
        name,
        n,
        tmp_path / "coord",
        coordinator={**COORDINATOR, "min_agents": n, "rounds": rounds, **coordinator},
        agent=AGENT,
    )
    # Histories of different lengths: the agents' weights differ, so a sum that were
    # not weighted right would not pass for FedAvg.
    fed.agent_settings = [
        s.model_copy(update={"history_heats": 40 + 15 * k})
        for k, s in enumerate(fed.agent_settings)
    ]
    try:
        service = fed.start_coordinator()
        fed.start_agents()
        wait_for(lambda: service.done, 90, what)
        assert service.error is None, service.error
    finally:
        fed.stop()
    versions = _versions(fed.coordinator_settings.state_dir)
    assert sorted(versions) == list(range(rounds + 1))
    return fed, versions, [s.agent_id for s in fed.agent_settings]


def test_secure_rounds_complete_and_equal_plain_fedavg(
    mosquitto, tmp_path: Path, deltas: Deltas
) -> None:
    fed, versions, ids = _run_rounds(mosquitto, tmp_path, "sa-rounds", 3, "two secure rounds", 2)
    for version in (1, 2):
        round_id, meta, model = versions[version]
        assert round_id is not None and meta["secure_aggregation"] is True, meta
        assert meta["contributors"] == ids and meta["stragglers"] == []
        given = deltas.of_round(round_id)
        assert sorted(given) == ids
        _assert_fedavg(versions[version - 1][2], model, given)
    for a in fed.agents:
        agent: Agent = a.agent
        assert agent.updates_sent == 2
        assert not agent.rejections.counts, agent.rejections.counts
        assert not agent.step_failures.counts, agent.step_failures.counts
    assert not fed.coordinator.coordinator.rejection_log.counts  # type: ignore[union-attr]


def test_an_agent_that_drops_after_its_masked_input_does_not_stop_the_round(
    mosquitto, tmp_path: Path, deltas: Deltas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """plant-4 disconnects as soon as its masked input is out: it never reveals. The
    others' shares of its self mask recover its input, which the sum keeps."""
    dropped = threading.Event()
    publish = Agent._publish_secagg

    def then_drop(self: Agent, bodies: list[Body]) -> None:
        if self.id == "plant-4" and dropped.is_set():
            return  # gone (a disconnected agent sends nothing)
        publish(self, bodies)
        if self.id == "plant-4" and any(isinstance(b, SecaggMaskedBody) for b in bodies):
            dropped.set()
            self.link.client.disconnect()  # after the masked input, which is queued first

    monkeypatch.setattr(Agent, "_publish_secagg", then_drop)
    _, versions, ids = _run_rounds(mosquitto, tmp_path, "sa-dropout", 4, "the secure round", 1)
    assert dropped.is_set()
    round_id, meta, model = versions[1]
    assert meta["secure_aggregation"] is True and meta["contributors"] == ids, meta
    given = deltas.of_round(round_id)  # type: ignore[arg-type]
    assert sorted(given) == ids
    _assert_fedavg(versions[0][2], model, given)
    # plant-4 never answered the unmask; the other three did, once
    phases = {a: c.phase for (r, a), c in deltas.clients.items() if r == round_id}
    assert phases == {
        "plant-1": Phase.REVEALED,
        "plant-2": Phase.REVEALED,
        "plant-3": Phase.REVEALED,
        "plant-4": Phase.MASKED_SENT,
    }


def test_a_secure_round_with_dp_distributes_the_noise_and_reports_epsilon(
    mosquitto, tmp_path: Path, deltas: Deltas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distributed DP: each agent clips, sends weight 1 and adds N(0, (z C)^2 / t); the
    version says so and carries the accountant's epsilon; the new model is the mean of the
    clipped deltas plus noise of std about z C sqrt(3 / t) / 3 (t = 2 of 3)."""
    clip_norm, z, dp_delta = 0.05, 2.0, 1e-6
    masked: list[SecaggMaskedBody] = []
    publish = Agent._publish_secagg

    def record(self: Agent, bodies: list[Body]) -> None:
        masked.extend(b for b in bodies if isinstance(b, SecaggMaskedBody))
        publish(self, bodies)

    monkeypatch.setattr(Agent, "_publish_secagg", record)
    _, versions, ids = _run_rounds(
        mosquitto,
        tmp_path,
        "sa-dp",
        3,
        "the secure round with DP",
        1,
        dp_clip_norm=clip_norm,
        dp_noise_multiplier=z,
        dp_delta=dp_delta,
    )
    round_id, meta, model = versions[1]
    assert meta["secure_aggregation"] is True and meta["contributors"] == ids, meta
    dp = meta["dp"]
    assert dp["noise"] == "distributed" and dp["rounds"] == 1
    assert dp["epsilon"] == pytest.approx(epsilon(((z, 1),), dp_delta))
    assert model.metadata["dp"] == dp  # the published model says it too
    # weight 1 whatever the heats (which differ between the agents)
    assert sorted(b.num_samples for b in masked) == [1, 1, 1]
    given = deltas.of_round(round_id)  # type: ignore[arg-type]
    assert len({w for _, w in given.values()}) == 3
    base = versions[0][2].weights
    clipped = [clip(dict(zip(base, d, strict=True)), clip_norm) for d, _ in given.values()]
    noise = np.concatenate(
        [
            (np.asarray(model.weights[n], np.float64) - base[n]).ravel()
            - sum(c[n].astype(np.float64) for c in clipped).ravel() / 3
            for n in base
        ]
    )
    expected = z * clip_norm * np.sqrt(3 / 2) / 3
    assert noise.size > 300 and 0.8 < noise.std() / expected < 1.2, (noise.std(), expected)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path, "certificates")
    fed.broker.start()
    try:
        yield fed
    finally:
        fed.close()


def test_an_agent_reads_only_its_own_inbox_and_writes_only_its_own_secagg(
    secured: Federation,
) -> None:
    a, b, coord = (secured.online(n) for n in ("plant-1", "plant-2", "coordinator"))
    a.subscribe(
        SECURED.round_secagg_inbox("plant-2"),
        SECURED.all_secagg_inboxes,
        f"{SECURED.root}/#",
        SECURED.round_secagg,
    )
    b.subscribe(SECURED.round_secagg_inbox("plant-2"))
    coord.subscribe(SECURED.all_agents("secagg"))
    # the coordinator relays plant-2's inbox, then a roster everyone may read
    coord.publish(SECURED.round_secagg_inbox("plant-2"), b"shares for plant-2")
    coord.publish(SECURED.round_secagg, b"sentinel")
    wait_for(lambda: a.payloads(SECURED.round_secagg), WAIT, "the roster at plant-1")
    wait_for(lambda: b.payloads(SECURED.round_secagg_inbox("plant-2")), WAIT, "plant-2's inbox")
    assert a.topics() == [SECURED.round_secagg]
    # plant-1 cannot speak for plant-2, nor relay as the coordinator
    a.publish(SECURED.agent_secagg("plant-2"), b"forged")
    a.publish(SECURED.round_secagg_inbox("plant-2"), b"forged inbox")
    a.publish(SECURED.round_secagg, b"forged roster")
    a.publish(SECURED.agent_secagg("plant-1"), b"keys of plant-1")
    wait_for(lambda: coord.payloads(SECURED.agent_secagg("plant-1")), WAIT, "plant-1's keys")
    b.subscribe(SECURED.round_current)
    coord.publish(SECURED.round_current, b"sentinel 2")
    wait_for(lambda: b.payloads(SECURED.round_current), WAIT, "the sentinel at plant-2")
    assert coord.topics() == [SECURED.agent_secagg("plant-1")]
    assert b.payloads(SECURED.round_secagg_inbox("plant-2")) == [b"shares for plant-2"]
    assert a.payloads(SECURED.round_secagg) == [b"sentinel"]


def test_the_demo_runs_with_secure_aggregation(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run_demo(
        agents=3,
        rounds=2,
        secure_aggregation=True,
        out_dir=tmp_path,
        console=Console(file=out, width=120),
    )
    assert "(sync, secure aggregation)" in " ".join(out.getvalue().split())
    assert result.onnx_path.is_file() and sorted(result.validation) == [0, 1, 2]
    versions = _versions(tmp_path / result.federation / "coordinator")
    assert all(versions[v][1]["secure_aggregation"] is True for v in (1, 2))
