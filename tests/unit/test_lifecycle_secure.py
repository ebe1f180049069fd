"""Secure rounds in the coordinator's lifecycle (coordinator.lifecycle with
coordinator.secure_round), driven without I/O and with a fake clock: the agents are
in-memory SecaggClients that answer what the lifecycle publishes, every message through
the codec (docs/PROTOCOL.md, "Secure aggregation (sync rounds)")."""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import pytest

from alchimia.agent.secagg_client import SecaggClient, SecaggRefused
from alchimia.broker.schemas import (
    AdminBody,
    Body,
    SecaggInboxBody,
    SecaggMaskedBody,
    SecaggRosterBody,
    SecaggUnmaskBody,
    StatusBody,
    TaskBody,
    UpdateBody,
    decode,
    message,
)
from alchimia.coordinator.lifecycle import (
    BuildModel,
    Command,
    DropPending,
    LeftOpen,
    Lifecycle,
    LoadVersion,
    PublishSecagg,
    PublishTask,
    Reject,
    SaveRound,
    SaveUpdate,
    Wake,
)
from alchimia.models.params import Weights
from tests.unit.lifecycle_driver import (
    ROUND_BUILT,
    T0,
    env,
    make_lifecycle,
    of,
    online,
    opened,
    send,
)

# The shared tensors, in the model's order (what the agents mask, tensor after tensor).
WS: Weights = {
    "layers.0.weight": np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4),
    "layers.0.bias": np.zeros(6, np.float32),
    "yield_shared": np.ones(3, np.float32),
}
AGENTS = ("a1", "a2", "a3", "a4", "a5")
TIMEOUT = 10.0  # secagg_phase_timeout_s
DEADLINE = T0 + 60.0  # the round's deadline_ts (round_timeout_s 60)


def _secure(**settings: object) -> Lifecycle:
    return make_lifecycle(
        weights=WS,
        **{
            "min_agents": 3,
            "secure_aggregation": True,
            "secagg_phase_timeout_s": TIMEOUT,
            **settings,
        },
    )


def _deltas(seed: int = 0) -> tuple[dict[str, Weights], dict[str, int]]:
    """Each agent's delta (some coordinates untrained) and weight."""
    rng = np.random.default_rng(seed)
    deltas, weights = {}, {}
    for k, a in enumerate(AGENTS):
        d = {n: (rng.normal(size=w.shape) * 0.01).astype(np.float32) for n, w in WS.items()}
        d["layers.0.weight"][rng.random((6, 4)) < 0.3] = 0.0
        d["layers.0.weight"][0, 0] = 0.0  # untrained by everyone: keeps its value
        d["yield_shared"][k % 3] = 0.0
        deltas[a], weights[a] = d, int(rng.integers(1, 500))
    return deltas, weights


class Plants:
    """The agents of one secure round: each SecaggClient answers what the lifecycle
    publishes, at once, through the codec. ``silent``: agent -> the first kind of message
    it no longer answers (``secagg_inbox``: it sent its shares, then dropped out, so the
    others masked against it; ``secagg_unmask``: it masked, then does not reveal)."""

    ORDER = ("secagg_roster", "secagg_inbox", "secagg_unmask")

    def __init__(
        self,
        lc: Lifecycle,
        task: TaskBody,
        deltas: dict[str, Weights],
        weights: dict[str, int],
        seed: int = 0,
        silent: dict[str, str] | None = None,
    ) -> None:
        rand = random.Random(seed)
        self.lc, self.deltas, self.weights = lc, deltas, weights
        self.clients = {
            a: SecaggClient(a, task, randbytes=rand.randbytes) for a in AGENTS if task.selects(a)
        }
        self.silent = silent or {}
        self.rejects: list[Reject] = []
        self.now = T0

    def say(self, agent: str, bodies: Iterable[Body]) -> None:
        for body in bodies:
            out = self.lc.on_secagg(env(agent, body), self.now)
            self.rejects += of(Reject, out)
            assert set(map(type, out)) <= {Reject, Wake}, out  # all else comes from tick

    def start(self) -> None:
        """Keys sent, then trained: each masked input goes out with its inbox."""
        for a, client in self.clients.items():
            self.say(a, [client.keys])
            delta = [self.deltas[a][name] for name in WS]
            assert client.set_delta(delta, self.weights[a], {"train_loss": 0.5}) == []

    def _hears(self, agent: str, kind: str) -> bool:
        silent = self.silent.get(agent)
        return silent is None or self.ORDER.index(kind) < self.ORDER.index(silent)

    def hear(self, commands: Iterable[Command]) -> None:
        for command in of(PublishSecagg, commands):
            body = decode(message("coordinator", command.body), type(command.body)).body
            for a in [command.agent_id] if command.agent_id else sorted(self.clients):
                if not self._hears(a, body.kind):
                    continue
                client = self.clients[a]
                if isinstance(body, SecaggRosterBody):
                    self.say(a, client.on_roster(body))
                elif isinstance(body, SecaggInboxBody):
                    self.say(a, client.on_inbox(body))
                elif a in body.survivors:
                    self.say(a, client.on_unmask(body))
                else:  # a dropout refuses an unmask without itself
                    with pytest.raises(SecaggRefused):
                        client.on_unmask(body)

    def run(self, now: float) -> list[Command]:
        """Tick at ``now`` and let the agents answer until the lifecycle publishes no more;
        everything the ticks answered."""
        self.now, out = now, []
        while True:
            answered = self.lc.tick(now)
            out += answered
            if not of(PublishSecagg, answered):
                return out
            self.hear(answered)


def _open(lc: Lifecycle, agents: Iterable[str] = AGENTS, now: float = T0) -> TaskBody:
    online(lc, *agents)
    [task] = of(PublishTask, opened(lc, now))
    return task.task


def _plain_round(deltas: dict[str, Weights], weights: dict[str, int], agents: list[str]):
    """The same deltas through a plain FedAvg round: its new weights."""
    lc = make_lifecycle(weights=WS, min_agents=len(agents))
    _open(lc, agents)
    for a in agents:
        body = UpdateBody(round_id=1, base_version=0, num_samples=weights[a], delta=deltas[a])
        payload = message(a, body)
        for command in lc.on_update(decode(payload, UpdateBody), payload, replayed=False):
            assert isinstance(command, SaveUpdate), command
            lc.update_saved(command)
    [build] = of(BuildModel, lc.tick(T0 + 1))
    return build.weights


def _assert_fedavg(build: BuildModel, deltas, weights, agents: list[str]) -> None:
    """Equal to plain FedAvg within the fixed point's 24 fractional bits: a mean is exact to
    |U3| * 2^-25 / (its weight), plus float32 rounding of the new weights."""
    plain = _plain_round(deltas, weights, agents)
    tolerance = len(agents) * 2.0**-25 / min(weights[a] for a in agents) + 1e-6
    for name, w in plain.items():
        assert np.abs(build.weights[name].astype(np.float64) - w).max() <= tolerance, name
        assert not np.array_equal(build.weights[name], WS[name])  # it moved
    assert build.weights["layers.0.weight"][0, 0] == WS["layers.0.weight"][0, 0]


def test_a_secure_round_gives_plain_fedavgs_weights() -> None:
    lc = _secure()
    task = _open(lc)
    assert task.secure_aggregation and task.selected_all
    deltas, weights = _deltas()
    plants = Plants(lc, task, deltas, weights)
    assert lc.next_deadline() == T0 + TIMEOUT  # the keys phase, before the round's deadline
    plants.start()
    out = plants.run(T0 + 1)
    # roster, five inboxes, unmask; then the sum, built as any round's
    assert [p.agent_id for p in of(PublishSecagg, out)] == [None, *AGENTS, None]
    assert not plants.rejects
    [build] = of(BuildModel, out)
    assert build.metadata["secure_aggregation"] is True
    assert (build.metadata["contributors"], build.metadata["stragglers"]) == (list(AGENTS), [])
    _assert_fedavg(build, deltas, weights, list(AGENTS))
    out = lc.on_built(build, b"v1", T0 + 2)
    assert [type(c) for c in out] == ROUND_BUILT
    row, closed = of(SaveRound, out)[0], of(PublishTask, out)[0].task
    assert row.state == "closed" and row.accepted == list(AGENTS)
    assert closed.state == "closed" and closed.secure_aggregation
    assert lc.version == 1 and lc.stats.updates_accepted == len(AGENTS)
    # the next round is secure too, against the new version
    task = of(PublishTask, opened(lc, T0 + 3))[0].task
    assert (task.round_id, task.base_version, task.secure_aggregation) == (2, 1, True)


def test_a_masked_input_counts_the_heats_as_learned() -> None:
    lc = _secure()
    for a in AGENTS:
        status = StatusBody(role="agent", state="online", new_heats=7)
        lc.on_status(env(a, status), T0)
    task = of(PublishTask, opened(lc))[0].task
    deltas, weights = _deltas()
    plants = Plants(lc, task, deltas, weights)
    plants.start()
    plants.run(T0 + 1)
    assert {lc.registry.get(a).new_heats for a in AGENTS} == {0}


def test_dropouts_after_masking_still_give_a_version() -> None:
    lc = _secure()
    task = _open(lc)
    deltas, weights = _deltas(1)
    # a5 sent its shares and the others masked against it, then it dropped out; a1 masked,
    # then never answers the unmask (its input counts, the others' reveals suffice)
    plants = Plants(
        lc, task, deltas, weights, seed=1, silent={"a5": "secagg_inbox", "a1": "secagg_unmask"}
    )
    plants.start()
    out = plants.run(T0 + 1)
    assert not of(BuildModel, out) and len(of(PublishSecagg, out)) == 6  # roster, inboxes
    assert lc.next_deadline() == DEADLINE  # the masked inputs wait until the deadline
    assert lc.tick(DEADLINE - 0.1) == []
    out = plants.run(DEADLINE)
    [unmask] = [p.body for p in of(PublishSecagg, out)]
    assert isinstance(unmask, SecaggUnmaskBody) and unmask.survivors == list(AGENTS[:4])
    assert not of(BuildModel, out) and lc.next_deadline() == DEADLINE + TIMEOUT
    out = plants.run(DEADLINE + TIMEOUT)  # 3 reveals of 4 survivors: the threshold
    [build] = of(BuildModel, out)
    assert build.metadata["contributors"] == list(AGENTS[:4])
    assert build.metadata["stragglers"] == ["a5"]
    _assert_fedavg(build, deltas, weights, list(AGENTS[:4]))  # a5's pairwise masks removed
    out = lc.on_built(build, b"v1", DEADLINE + TIMEOUT + 1)
    assert lc.version == 1 and of(SaveRound, out)[0].accepted == list(AGENTS[:4])
    assert not plants.rejects


def test_too_few_survivors_fail_the_round_and_the_next_one_opens() -> None:
    lc = _secure()
    task = _open(lc)
    deltas, weights = _deltas()
    silent = dict.fromkeys(AGENTS[2:], "secagg_inbox")  # 2 masked inputs, threshold 3
    plants = Plants(lc, task, deltas, weights, silent=silent)
    plants.start()
    plants.run(T0 + 1)
    out = plants.run(DEADLINE)
    failed = of(SaveRound, out)[0]
    assert (failed.round_id, failed.state, failed.accepted) == (1, "failed", ["a1", "a2"])
    assert DropPending(1) in out and not of(PublishSecagg, out)  # no unmask
    assert [t.task.state for t in of(PublishTask, out)] == ["closed", "open"]
    assert not of(BuildModel, out) and lc.version == 0 and lc.stats.rounds["failed"] == 1
    task = of(PublishTask, out)[1].task
    assert (task.round_id, task.secure_aggregation) == (2, True)
    assert lc.next_deadline() == DEADLINE + TIMEOUT  # the new round's keys phase
    # a late message of the failed round is refused, and counted
    late = plants.clients["a3"].keys
    [reject] = lc.on_secagg(env("a3", late), DEADLINE + 1)
    assert isinstance(reject, Reject) and reject.code == "secagg_unexpected"


def test_the_quorum_counts_masked_inputs() -> None:
    lc = _secure(min_agents=4)  # quorum 4, threshold 3
    task = _open(lc)
    deltas, weights = _deltas()
    silent = dict.fromkeys(AGENTS[3:], "secagg_inbox")
    plants = Plants(lc, task, deltas, weights, silent=silent)
    plants.start()
    plants.run(T0 + 1)
    out = plants.run(DEADLINE)
    assert of(SaveRound, out)[0].state == "failed" and not of(BuildModel, out)


def test_a_plain_update_in_a_secure_round_is_refused() -> None:
    lc = _secure()
    _open(lc)
    [reject] = send(lc, "a1", 1.0)
    assert isinstance(reject, Reject) and reject.code == "secagg_unexpected"
    assert "secure round" in reject.reason
    assert lc.window is not None and lc.window.accepted == {}
    assert of(Reject, send(lc, "a1", 1.0, round_id=7))[0].code == "wrong_round"


def test_secagg_messages_without_a_secure_round_are_refused() -> None:
    plain = make_lifecycle(weights=WS, min_agents=3)
    task = _open(plain)
    assert not task.secure_aggregation
    client = SecaggClient("a1", task.model_copy(update={"secure_aggregation": True}))
    [reject] = plain.on_secagg(env("a1", client.keys), T0)
    assert isinstance(reject, Reject) and reject.code == "secagg_unexpected"


def test_a_masked_input_that_does_not_fit_is_refused_with_its_code() -> None:
    lc = _secure()
    task = _open(lc)
    deltas, weights = _deltas()
    plants = Plants(lc, task, deltas, weights, silent={"a1": "secagg_inbox"})
    plants.start()
    plants.run(T0 + 1)
    words = 2 * sum(w.size for w in WS.values())
    for base, size in ((0, 8 * words - 16), (3, 8 * words)):
        body = SecaggMaskedBody(round_id=1, base_version=base, num_samples=5, masked=bytes(size))
        [reject] = lc.on_secagg(env("a1", body), T0 + 2)
        assert isinstance(reject, Reject) and reject.code == "bad_masked"
    assert lc.window is not None and "a1" not in lc.window.contributors


def test_a_rollback_abandons_a_secure_round_and_its_session() -> None:
    lc = _secure(version=4)
    task = _open(lc)
    deltas, weights = _deltas()
    plants = Plants(lc, task, deltas, weights)
    lc.on_secagg(env("a1", plants.clients["a1"].keys), T0)
    lc.on_admin(env("admin", AdminBody(action="rollback", version=2)), version_exists=True)
    out = lc.tick(T0 + 1)
    assert of(SaveRound, out)[0].state == "abandoned" and out[-1] == LoadVersion(2)
    assert lc.next_deadline() is None  # the session's deadlines went with it
    [reject] = lc.on_secagg(env("a2", plants.clients["a2"].keys), T0 + 2)
    assert reject.code == "secagg_unexpected"


def test_a_secure_round_left_open_by_a_restart_fails_and_a_new_one_opens() -> None:
    left = LeftOpen(1, "sync", 0, list(AGENTS), T0, DEADLINE, False, [])
    lc = _secure()
    out = lc.resume(left, T0 + 30)
    assert out[0] == DropPending(1) and out[1].state == "failed" and lc.window is None
    # the reconnection closes its task, so that its agents stop waiting for it
    [closed] = of(PublishTask, lc.announce())
    assert (closed.task.round_id, closed.task.state) == (1, "closed")
    assert closed.task.secure_aggregation
    lc.next_round_id = 2  # as the service counts from the rounds table
    online(lc, *AGENTS)
    task = of(PublishTask, opened(lc, T0 + 31))[0].task
    assert (task.round_id, task.state, task.secure_aggregation) == (2, "open", True)
    assert [t.task.state for t in of(PublishTask, lc.announce())] == ["open"]
    # one whose version exists only had its row left open: closed as usual
    aggregated = LeftOpen(1, "sync", 0, list(AGENTS), T0, DEADLINE, True, [])
    [row] = _secure().resume(aggregated, T0 + 30)
    assert row.state == "closed"
