"""A secure round end to end in memory: the coordinator's SecureRound and the agents'
SecaggClients, every message through the codec (docs/PROTOCOL.md, "Secure aggregation")."""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import pytest

from alchimia.agent.secagg_client import Phase as ClientPhase
from alchimia.agent.secagg_client import SecaggClient, SecaggRefused
from alchimia.broker import secagg
from alchimia.broker.schemas import (
    Body,
    IncomingShare,
    OutgoingShare,
    RevealedShare,
    RosterEntry,
    SecaggInboxBody,
    SecaggKeysBody,
    SecaggMaskedBody,
    SecaggRevealBody,
    SecaggRosterBody,
    SecaggSharesBody,
    SecaggUnmaskBody,
    TaskBody,
    decode,
    message,
)
from alchimia.coordinator.hierarchical import merge_partial
from alchimia.coordinator.rounds import Refusal
from alchimia.coordinator.secure_round import (
    Failed,
    Finished,
    Phase,
    PublishInbox,
    PublishRoster,
    PublishUnmask,
    SecureRound,
)
from alchimia.coordinator.strategies.fedavg import FedAvg

ROUND, BASE, TIMEOUT, OPENED, DEADLINE = 7, 3, 10.0, 1000.0, 1100.0
SHAPES = {"layers.0.weight": (6, 4), "layers.0.bias": (6,), "yield_shared": (3,)}


def _wire(sender: str, body: Body) -> Body:
    """What the other side decodes."""
    return decode(message(sender, body), type(body)).body


class Federation:
    """A coordinator and ``n`` agents; the test says who sends what and when."""

    def __init__(self, n: int, *, quorum: int = 1, seed: int = 0, shapes=SHAPES) -> None:
        self.ids = [f"plant-{i:02d}" for i in range(n)]
        self.base = {k: np.linspace(-1, 1, int(np.prod(s))).reshape(s) for k, s in shapes.items()}
        self.base = {k: v.astype(np.float32) for k, v in self.base.items()}
        self.task = TaskBody(
            round_id=ROUND,
            state="open",
            base_version=BASE,
            deadline_ts=DEADLINE,
            selected=self.ids,
            secure_aggregation=True,
        )
        self.round = SecureRound(
            ROUND,
            BASE,
            self.ids,
            quorum,
            self.base,
            phase_timeout_s=TIMEOUT,
            opened_ts=OPENED,
            deadline_ts=DEADLINE,
        )
        rand = random.Random(seed)
        self.clients = {a: SecaggClient(a, self.task, randbytes=rand.randbytes) for a in self.ids}
        rng = np.random.default_rng(seed)
        self.deltas: dict[str, list[np.ndarray]] = {}
        self.weights: dict[str, int] = {}
        for k, a in enumerate(self.ids):
            delta = [(rng.normal(size=s) * 0.01).astype(np.float32) for s in shapes.values()]
            delta[0][rng.random(delta[0].shape) < 0.3] = 0.0  # untrained coordinates
            delta[0][0, 0] = 0.0  # untrained by everyone
            if len(delta) > 2:
                delta[2][k % 3] = 0.0
            self.deltas[a] = delta
            self.weights[a] = int(rng.integers(1, 500))
        self.roster: SecaggRosterBody | None = None
        self.inboxes: dict[str, SecaggInboxBody] = {}
        self.unmask: SecaggUnmaskBody | None = None
        self.result: list = []
        self.now = OPENED

    def answer(self, answer) -> list:
        assert not isinstance(answer, Refusal), answer
        for command in answer:
            if isinstance(command, PublishRoster):
                self.roster = command.body
            elif isinstance(command, PublishInbox):
                self.inboxes[command.agent_id] = command.body
            elif isinstance(command, PublishUnmask):
                self.unmask = command.body
            else:
                self.result.append(command)
        return answer

    def tick(self, now: float) -> list:
        self.now = now
        return self.answer(self.round.tick(now))

    def keys(self, agents: Iterable[str]) -> None:
        for a in agents:
            self.answer(self.round.on_keys(a, _wire(a, self.clients[a].keys), self.now))

    def shares(self, agents: Iterable[str]) -> None:
        assert self.roster is not None
        for a in agents:
            (body,) = self.clients[a].on_roster(_wire("coordinator", self.roster))
            self.answer(self.round.on_shares(a, _wire(a, body), self.now))

    def train(self, agents: Iterable[str]) -> None:
        """Inbox in, delta set: each agent sends its masked input."""
        for a in agents:
            client = self.clients[a]
            if client.phase is ClientPhase.SHARES_SENT:
                assert client.on_inbox(_wire("coordinator", self.inboxes[a])) == []
            (body,) = client.set_delta(self.deltas[a], self.weights[a], {"train_loss": 0.5})
            self.answer(self.round.on_masked(a, _wire(a, body), self.now))

    def reveal(self, agents: Iterable[str]) -> None:
        assert self.unmask is not None
        for a in agents:
            (body,) = self.clients[a].on_unmask(_wire("coordinator", self.unmask))
            self.answer(self.round.on_reveal(a, _wire(a, body), self.now))

    def run(self, agents: list[str] | None = None) -> Finished:
        agents = self.ids if agents is None else agents
        self.keys(agents)
        self.shares(agents)
        self.train(agents)
        self.reveal(agents)
        (done,) = self.result
        assert isinstance(done, Finished), done
        return done

    def fedavg(self, agents: Iterable[str]) -> dict[str, np.ndarray]:
        """The plain round over the same updates."""
        acc = FedAvg().open_round(self.base)
        for a in agents:
            acc.add(dict(zip(self.base, self.deltas[a], strict=True)), self.weights[a])
        return acc.finish()

    def secure(self, done: Finished) -> dict[str, np.ndarray]:
        acc = FedAvg().open_round(self.base)
        merge_partial(acc, self.base, done.partial)
        return acc.finish()

    def tolerance(self, agents: list[str]) -> float:
        """The fixed-point error of a mean: |U3| * 2^-25 / (smallest weight), plus float32
        rounding of the new weights."""
        return len(agents) * 2.0**-25 / min(self.weights[a] for a in agents) + 1e-6


def _assert_fedavg(fed: Federation, done: Finished, agents: list[str]) -> None:
    secure, plain = fed.secure(done), fed.fedavg(agents)
    for name in plain:
        diff = np.abs(secure[name].astype(np.float64) - plain[name]).max()
        assert diff <= fed.tolerance(agents), (name, diff)
        assert not np.array_equal(secure[name], fed.base[name])
    # the coordinate nobody trained keeps its value, exactly
    assert secure["layers.0.weight"][0, 0] == fed.base["layers.0.weight"][0, 0]
    partial = done.partial
    assert partial.contributors == tuple(sorted(agents)) and partial.count == len(agents)
    assert partial.total_weight == sum(fed.weights[a] for a in agents)
    for k, name in enumerate(SHAPES):
        touched = sum(fed.weights[a] * (fed.deltas[a][k] != 0) for a in agents)
        assert np.array_equal(partial.touched[name], touched)  # exact: whole numbers
        exact = sum(fed.weights[a] * fed.deltas[a][k].astype(np.float64) for a in agents)
        np.testing.assert_allclose(partial.sums[name], exact, rtol=0, atol=len(agents) * 2.0**-25)


# -- (a) the result is FedAvg's


def test_a_full_round_equals_plain_fedavg() -> None:
    fed = Federation(6)
    done = fed.run()
    _assert_fedavg(fed, done, fed.ids)
    assert done.dropped == ()
    assert done.metrics == {a: {"train_loss": 0.5} for a in fed.ids}
    assert fed.round.phase is Phase.DONE and fed.round.next_deadline() is None
    assert fed.round.threshold == 4 and fed.roster is not None
    assert [e.id for e in fed.roster.agents] == fed.ids
    assert all(c.phase is ClientPhase.REVEALED for c in fed.clients.values())


def test_the_delta_may_come_before_the_inbox() -> None:
    fed = Federation(3)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    a = fed.ids[0]
    assert fed.clients[a].set_delta(fed.deltas[a], fed.weights[a]) == []  # no inbox yet
    (body,) = fed.clients[a].on_inbox(_wire("c", fed.inboxes[a]))
    assert isinstance(body, SecaggMaskedBody)
    fed.answer(fed.round.on_masked(a, _wire(a, body), fed.now))
    fed.train(fed.ids[1:])
    fed.reveal(fed.ids)
    _assert_fedavg(fed, fed.result[0], fed.ids)


def test_a_different_sum_gives_a_different_model() -> None:
    """The comparison above can fail: one agent's delta changed after masking shows."""
    fed = Federation(4)
    done = fed.run()
    fed.deltas[fed.ids[1]][1] += 0.01
    plain = fed.fedavg(fed.ids)
    assert np.abs(fed.secure(done)["layers.0.bias"] - plain["layers.0.bias"]).max() > 1e-3


# -- (b) one masked input tells nothing


def test_a_masked_input_is_uncorrelated_with_its_delta() -> None:
    shapes = {"w": (60, 50)}  # 3,000 coordinates
    fed = Federation(3, shapes=shapes)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    a = fed.ids[0]
    client = fed.clients[a]
    client.on_inbox(_wire("c", fed.inboxes[a]))
    delta = fed.deltas[a][0].reshape(-1).astype(np.float64)
    x = secagg.encode_input(fed.deltas[a], fed.weights[a]).view(np.int64)
    (body,) = client.set_delta(fed.deltas[a], fed.weights[a])
    y = np.frombuffer(body.masked, dtype="<u8").view(np.int64)
    n = delta.size
    seen, touched = y[:n] / 2.0**24, y[n:] / 2.0**24
    # the method works: the unmasked input is the delta itself
    assert np.corrcoef(x[:n] / 2.0**24, delta)[0, 1] > 0.999
    assert abs(np.corrcoef(seen, delta)[0, 1]) < 0.05
    assert abs(np.corrcoef(touched, delta != 0)[0, 1]) < 0.05
    # and the words look uniform: about half have the top bit set
    assert 0.45 < float((y < 0).mean()) < 0.55


# -- (c) dropouts


def test_dropouts_after_sharing_before_masking() -> None:
    fed = Federation(7, seed=1)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    survivors = fed.ids[:2] + fed.ids[4:]  # plant-02 and plant-03 never mask
    fed.train(survivors)
    assert fed.unmask is None
    fed.tick(DEADLINE)
    assert fed.unmask is not None and fed.unmask.survivors == survivors
    fed.reveal(survivors)
    (done,) = fed.result
    assert isinstance(done, Finished)
    assert done.dropped == ("plant-02", "plant-03")
    _assert_fedavg(fed, done, survivors)


def test_dropouts_before_keys_and_before_shares() -> None:
    fed = Federation(7, seed=2)
    fed.keys(fed.ids[1:])  # plant-00 never sends keys
    assert fed.roster is None
    fed.tick(OPENED + TIMEOUT)
    assert fed.roster is not None and [e.id for e in fed.roster.agents] == fed.ids[1:]
    assert fed.roster.threshold == 4
    fed.shares(fed.ids[2:])  # plant-01 sends no shares: not in U2
    assert not fed.inboxes
    fed.tick(OPENED + 2 * TIMEOUT)
    assert sorted(fed.inboxes) == fed.ids[2:]
    assert all(len(box.shares) == 4 for box in fed.inboxes.values())
    fed.train(fed.ids[2:])
    fed.reveal(fed.ids[2:])
    (done,) = fed.result
    _assert_fedavg(fed, done, fed.ids[2:])
    assert done.dropped == ("plant-00", "plant-01")


def test_dropouts_after_masking_do_not_reveal() -> None:
    fed = Federation(7, seed=3)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids)
    fed.reveal(fed.ids[:5])  # two survivors go silent
    assert not fed.result and fed.round.next_deadline() == fed.now + TIMEOUT
    fed.tick(fed.now + TIMEOUT - 0.1)
    assert not fed.result
    fed.tick(fed.now + 0.1)
    (done,) = fed.result
    assert isinstance(done, Finished)
    _assert_fedavg(fed, done, fed.ids)  # their inputs count: they are in U3


def test_dropouts_at_every_step_at_once() -> None:
    fed = Federation(8, seed=4)
    fed.keys(fed.ids[:7])
    fed.tick(OPENED + TIMEOUT)
    fed.shares(fed.ids[:6])
    fed.tick(fed.now + TIMEOUT)
    fed.train(fed.ids[:5])
    fed.tick(DEADLINE)
    fed.reveal(fed.ids[:4])  # threshold of the 7 in U1
    fed.tick(DEADLINE + TIMEOUT)
    (done,) = fed.result
    assert isinstance(done, Finished)
    _assert_fedavg(fed, done, fed.ids[:5])


# -- (d) too few


def test_fewer_than_threshold_masked_inputs_fail() -> None:
    fed = Federation(7)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids[:3])  # threshold 4
    fed.tick(DEADLINE)
    (failed,) = fed.result
    assert isinstance(failed, Failed) and "3 masked inputs, fewer than 4" in failed.reason
    assert fed.unmask is None and fed.round.next_deadline() is None


def test_fewer_than_threshold_shares_fail() -> None:
    fed = Federation(6)
    fed.keys(fed.ids)
    fed.shares(fed.ids[:3])  # threshold 4
    fed.tick(OPENED + TIMEOUT)
    (failed,) = fed.result
    assert isinstance(failed, Failed) and "under the threshold 4" in failed.reason
    assert not fed.inboxes


def test_fewer_than_threshold_reveals_fail() -> None:
    fed = Federation(5)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids)
    fed.reveal(fed.ids[:2])  # threshold 3
    fed.tick(fed.now + TIMEOUT)
    (failed,) = fed.result
    assert isinstance(failed, Failed) and "2 survivors revealed" in failed.reason


def test_fewer_than_three_keys_fail() -> None:
    fed = Federation(4)
    fed.keys(fed.ids[:2])
    assert fed.tick(OPENED + TIMEOUT - 1) == []
    fed.tick(OPENED + TIMEOUT)
    (failed,) = fed.result
    assert isinstance(failed, Failed) and "2 agents sent keys" in failed.reason
    assert fed.roster is None


def test_the_quorum_is_needed_too() -> None:
    fed = Federation(5, quorum=5)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids[:4])
    fed.tick(DEADLINE)
    (failed,) = fed.result
    assert isinstance(failed, Failed) and "quorum 5" in failed.reason


def test_a_round_needs_three_selected_agents() -> None:
    with pytest.raises(ValueError, match="3 to 16384"):
        SecureRound(
            1, 0, ["a", "b"], 1, {"w": np.zeros(2)}, phase_timeout_s=1, opened_ts=0, deadline_ts=1
        )
    with pytest.raises(ValueError, match="quorum"):
        SecureRound(
            1,
            0,
            ["a", "b", "c"],
            4,
            {"w": np.zeros(2)},
            phase_timeout_s=1,
            opened_ts=0,
            deadline_ts=1,
        )


# -- (e) what an agent refuses


def _masked_federation(n: int = 5) -> Federation:
    fed = Federation(n)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids)
    return fed


def test_an_agent_answers_one_unmask_only() -> None:
    fed = _masked_federation()
    a = fed.ids[0]
    assert fed.unmask is not None
    (reveal,) = fed.clients[a].on_unmask(fed.unmask)
    assert isinstance(reveal, SecaggRevealBody)
    owners = [s.of for s in reveal.shares]
    assert sorted(owners) == fed.ids and len(set(owners)) == len(owners)  # one secret each
    assert {s.secret for s in reveal.shares} == {"b"}
    other = SecaggUnmaskBody(round_id=ROUND, survivors=fed.ids[:3])  # would ask for s keys
    for body in (fed.unmask, other):
        with pytest.raises(SecaggRefused, match="second unmask") as err:
            fed.clients[a].on_unmask(body)
        assert err.value.code == "invalid"


def test_a_reveal_gives_s_shares_of_dropouts_and_b_shares_of_survivors() -> None:
    fed = _masked_federation()
    unmask = SecaggUnmaskBody(round_id=ROUND, survivors=fed.ids[:3])
    (reveal,) = fed.clients[fed.ids[0]].on_unmask(unmask)
    kinds = {s.of: s.secret for s in reveal.shares}
    assert kinds == {a: "b" if a in fed.ids[:3] else "s" for a in fed.ids}


@pytest.mark.parametrize(
    ("survivors", "match"),
    [
        (["plant-00", "plant-01", "plant-09"], "outside U2"),
        (["plant-00", "plant-01"], "under the threshold 3"),
        (["plant-01", "plant-02", "plant-03"], "without plant-00"),
        (["plant-01", "plant-00", "plant-02"], "not sorted"),
        (["plant-00", "plant-00", "plant-01"], "not sorted"),
    ],
)
def test_an_agent_refuses_a_bad_survivor_list(survivors: list[str], match: str) -> None:
    fed = _masked_federation()
    client = fed.clients["plant-00"]
    with pytest.raises(SecaggRefused, match=match):
        client.on_unmask(SecaggUnmaskBody(round_id=ROUND, survivors=survivors))
    (reveal,) = client.on_unmask(fed.unmask)  # a refused one was not an answer
    assert len(reveal.shares) == 5


def test_survivors_outside_u2_are_refused() -> None:
    """plant-00 sent no shares, so it is not in U2: a survivor list naming it is refused."""
    fed = Federation(5)
    fed.keys(fed.ids)
    fed.shares(fed.ids[1:])
    fed.tick(fed.now + TIMEOUT)
    fed.train(fed.ids[1:])
    client = fed.clients["plant-01"]
    with pytest.raises(SecaggRefused, match=r"outside U2: \['plant-00'\]"):
        client.on_unmask(SecaggUnmaskBody(round_id=ROUND, survivors=fed.ids[:4]))
    fed.reveal(fed.ids[1:])
    assert isinstance(fed.result[0], Finished)


def test_an_agent_sends_nothing_before_its_masked_input() -> None:
    fed = Federation(4)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids[1:])
    client = fed.clients["plant-00"]
    client.on_inbox(_wire("c", fed.inboxes["plant-00"]))
    unmask = SecaggUnmaskBody(round_id=ROUND, survivors=fed.ids)
    with pytest.raises(SecaggRefused, match="phase inbox"):
        client.on_unmask(unmask)


def _roster(fed: Federation, **change) -> SecaggRosterBody:
    assert fed.roster is not None
    return fed.roster.model_copy(update=change)


def test_an_agent_refuses_a_bad_roster() -> None:
    fed = Federation(4)
    fed.keys(fed.ids)
    client = fed.clients["plant-00"]
    agents = fed.roster.agents
    evil = RosterEntry(id="plant-99", c_pk=bytes(32), s_pk=secagg.public_key(bytes(32)))
    cases = [
        (_roster(fed, round_id=ROUND + 1), "of round 8"),
        (_roster(fed, agents=agents[1:]), "without plant-00's keys"),
        (_roster(fed, agents=agents[:2], threshold=2), "fewer than 3"),
        (_roster(fed, threshold=2), "not the majority"),
        (_roster(fed, threshold=4), "not the majority"),
        (_roster(fed, agents=[agents[1], agents[0], *agents[2:]]), "not sorted"),
        (_roster(fed, agents=[*agents, evil]), "small order"),
        (
            _roster(
                fed,
                agents=[*agents[:3], agents[3].model_copy(update={"s_pk": agents[2].s_pk})],
            ),
            "repeated",
        ),
        (
            _roster(
                fed, agents=[agents[0].model_copy(update={"s_pk": agents[1].s_pk}), *agents[1:]]
            ),
            "without plant-00's keys",
        ),
    ]
    for roster, match in cases:
        with pytest.raises(SecaggRefused, match=match):
            client.on_roster(roster)
        assert client.phase is ClientPhase.KEYS_SENT
    client.on_roster(fed.roster)
    with pytest.raises(SecaggRefused, match="phase shares_sent"):
        client.on_roster(fed.roster)


def test_an_agent_refuses_a_bad_inbox() -> None:
    fed = Federation(5)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    client = fed.clients["plant-00"]
    good = fed.inboxes["plant-00"]
    ct = good.shares[0].ct
    cases = [
        (good.model_copy(update={"round_id": 1}), "of round 1"),
        (SecaggInboxBody(round_id=ROUND, shares=[*good.shares, good.shares[0]]), "repeated"),
        (
            SecaggInboxBody(
                round_id=ROUND, shares=[*good.shares, IncomingShare.of("plant-00", ct)]
            ),
            "from this agent",
        ),
        (
            SecaggInboxBody(round_id=ROUND, shares=[*good.shares, IncomingShare.of("x", ct)]),
            "outside the roster",
        ),
        (SecaggInboxBody(round_id=ROUND, shares=good.shares[:1]), "under the threshold 3"),
    ]
    for inbox, match in cases:
        with pytest.raises(SecaggRefused, match=match):
            client.on_inbox(inbox)
    assert client.phase is ClientPhase.SHARES_SENT
    client.on_inbox(good)
    with pytest.raises(SecaggRefused, match="phase inbox"):
        client.on_inbox(good)


def test_a_client_is_made_for_an_open_secure_task_that_selects_it() -> None:
    fed = Federation(3)
    with pytest.raises(ValueError, match="not selected"):
        SecaggClient("plant-77", fed.task)
    for change in ({"secure_aggregation": False}, {"state": "closed"}):
        with pytest.raises(ValueError, match="not an open secure round"):
            SecaggClient("plant-00", fed.task.model_copy(update=change))
    keys = SecaggClient("plant-00", fed.task).keys
    assert keys.round_id == ROUND and keys.c_pk != keys.s_pk
    assert keys.c_pk != fed.clients["plant-00"].keys.c_pk  # fresh each time


def test_a_delta_that_does_not_fit_sends_nothing() -> None:
    fed = Federation(3)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    client = fed.clients["plant-00"]
    client.on_inbox(_wire("c", fed.inboxes["plant-00"]))
    too_big = [d * 0 + 2.0**20 for d in fed.deltas["plant-00"]]
    with pytest.raises(secagg.EncodingError, match="fixed-point range"):
        client.set_delta(too_big, 100)
    assert client.phase is ClientPhase.OUT
    with pytest.raises(ValueError, match="already set"):
        client.set_delta(fed.deltas["plant-00"], 1)


# -- (f) what the coordinator refuses


def _refused(answer, code: str, match: str) -> None:
    assert isinstance(answer, Refusal), answer
    assert answer.code == code and match in answer, answer


def test_the_coordinator_refuses_bad_keys() -> None:
    fed = Federation(4)
    r = fed.round
    a, b = fed.ids[0], fed.ids[1]
    keys = fed.clients[a].keys
    _refused(r.on_keys("plant-99", keys, 0), "secagg_unexpected", "not in the keys")
    _refused(
        r.on_keys(a, keys.model_copy(update={"round_id": 8}), 0), "secagg_unexpected", "round 8"
    )
    small = SecaggKeysBody(round_id=ROUND, c_pk=bytes(32), s_pk=keys.s_pk)
    _refused(r.on_keys(a, small, 0), "secagg_unexpected", "small order")
    same = SecaggKeysBody(round_id=ROUND, c_pk=keys.c_pk, s_pk=keys.c_pk)
    _refused(r.on_keys(a, same, 0), "secagg_unexpected", "already in the round")
    assert r.on_keys(a, keys, 0) == []
    _refused(r.on_keys(a, keys, 0), "secagg_unexpected", "second keys")
    _refused(r.on_keys(b, keys, 0), "secagg_unexpected", "already in the round")  # copied
    _refused(
        r.on_shares(a, SecaggSharesBody(round_id=ROUND, shares=[]), 0),
        "secagg_unexpected",
        "in the keys phase",
    )


def test_the_coordinator_refuses_bad_shares() -> None:
    fed = Federation(4)
    fed.keys(fed.ids)
    r = fed.round
    a = fed.ids[0]
    (good,) = fed.clients[a].on_roster(fed.roster)
    ct = good.shares[0].ct
    cases = [
        (good.shares[:-1], "not one for each other agent"),
        ([*good.shares, good.shares[0]], "not one for each other agent"),
        ([*good.shares, OutgoingShare(to="plant-99", ct=ct)], "1 outside it"),
        ([*good.shares[:-1], OutgoingShare(to=a, ct=ct)], "1 outside it"),
    ]
    for shares, match in cases:
        body = SecaggSharesBody(round_id=ROUND, shares=shares)
        _refused(r.on_shares(a, body, 0), "secagg_unexpected", match)
    _refused(r.on_shares("plant-99", good, 0), "secagg_unexpected", "not in the shares")
    assert r.on_shares(a, good, 0) == []
    _refused(r.on_shares(a, good, 0), "secagg_unexpected", "second shares")
    _refused(r.on_keys(a, fed.clients[a].keys, 0), "secagg_unexpected", "in the shares phase")


def test_the_coordinator_refuses_bad_masked_inputs() -> None:
    fed = Federation(4)
    fed.keys(fed.ids)
    fed.shares(fed.ids[1:])
    fed.tick(fed.now + TIMEOUT)  # plant-00 is not in U2
    a = fed.ids[1]
    fed.clients[a].on_inbox(fed.inboxes[a])
    (good,) = fed.clients[a].set_delta(fed.deltas[a], fed.weights[a])
    r = fed.round
    _refused(
        r.on_masked(a, good.model_copy(update={"base_version": 2}), 0), "bad_masked", "version 2"
    )
    _refused(
        r.on_masked(a, good.model_copy(update={"masked": good.masked[:-16]}), 0),
        "bad_masked",
        "bytes",
    )
    _refused(
        r.on_masked(a, good.model_copy(update={"num_samples": 2**24 + 1}), 0),
        "bad_masked",
        "cannot be encoded",
    )
    _refused(r.on_masked("plant-00", good, 0), "secagg_unexpected", "not in the masked")
    _refused(
        r.on_masked(a, good.model_copy(update={"round_id": 6}), 0), "secagg_unexpected", "round 6"
    )
    assert r.on_masked(a, good, 0) == []
    _refused(r.on_masked(a, good, 0), "secagg_unexpected", "second masked")
    # refused inputs left the sum alone: the round still gives FedAvg
    fed.train(fed.ids[2:])
    fed.reveal(fed.ids[1:])
    _assert_fedavg(fed, fed.result[0], fed.ids[1:])


def test_the_coordinator_refuses_bad_reveals() -> None:
    fed = Federation(5)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids[:4])
    fed.tick(DEADLINE)  # plant-04 dropped
    r = fed.round
    a = fed.ids[0]
    (good,) = fed.clients[a].on_unmask(fed.unmask)
    shares = good.shares
    assert {s.of: s.secret for s in shares}["plant-04"] == "s"
    flipped = [
        RevealedShare(of=s.of, secret="b", share=s.share) if s.of == "plant-04" else s
        for s in shares
    ]
    leak = [*shares[:-1], RevealedShare(of="plant-00", secret="s", share=shares[0].share)]
    cases = [
        (flipped, "the b share of plant-04, who dropped out"),
        (leak, "not one per agent"),
        ([*shares, RevealedShare(of="plant-99", secret="s", share=shares[0].share)], "plant-99"),
    ]
    for bad, match in cases:
        _refused(
            r.on_reveal(a, SecaggRevealBody(round_id=ROUND, shares=bad), 0),
            "secagg_unexpected",
            match,
        )
    _refused(r.on_reveal("plant-04", good, 0), "secagg_unexpected", "not in the reveal")
    assert r.on_reveal(a, good, 0) == []
    _refused(r.on_reveal(a, good, 0), "secagg_unexpected", "second reveal")
    fed.reveal(fed.ids[1:4])
    _assert_fedavg(fed, fed.result[0], fed.ids[:4])
    _refused(r.on_reveal(a, good, 0), "secagg_unexpected", "done phase")


def test_an_undecryptable_share_is_counted_and_the_round_goes_on() -> None:
    fed = Federation(5)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    a = "plant-00"
    box = fed.inboxes[a]
    bad = bytearray(box.shares[1].ct)
    bad[40] ^= 0xFF
    fed.inboxes[a] = SecaggInboxBody(
        round_id=ROUND,
        shares=[box.shares[0], IncomingShare.of(box.shares[1].sender, bytes(bad)), *box.shares[2:]],
    )
    fed.train(fed.ids)
    assert fed.clients[a].bad_shares == 1
    (reveal,) = fed.clients[a].on_unmask(fed.unmask)
    assert box.shares[1].sender not in {s.of for s in reveal.shares}
    fed.answer(fed.round.on_reveal(a, reveal, fed.now))
    fed.reveal(fed.ids[1:])
    _assert_fedavg(fed, fed.result[0], fed.ids)


# -- (g) forged reveals


def _forge(reveal: SecaggRevealBody, of: str) -> SecaggRevealBody:
    shares = [
        s.model_copy(update={"share": bytes(b ^ 1 for b in s.share)}) if s.of == of else s
        for s in reveal.shares
    ]
    return SecaggRevealBody(round_id=reveal.round_id, shares=shares)


def test_a_forged_s_share_fails_the_round() -> None:
    fed = Federation(5)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids[:4])
    fed.tick(DEADLINE)
    (reveal,) = fed.clients["plant-00"].on_unmask(fed.unmask)
    fed.answer(fed.round.on_reveal("plant-00", _forge(reveal, "plant-04"), fed.now))
    fed.reveal(fed.ids[1:4])
    (failed,) = fed.result
    assert isinstance(failed, Failed)
    assert "s key of plant-04" in failed.reason and "does not match" in failed.reason


def test_a_forged_b_share_fails_the_round() -> None:
    fed = Federation(5)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids)
    (reveal,) = fed.clients["plant-00"].on_unmask(fed.unmask)
    fed.answer(fed.round.on_reveal("plant-00", _forge(reveal, "plant-03"), fed.now))
    fed.reveal(fed.ids[1:])
    (failed,) = fed.result
    assert isinstance(failed, Failed) and "mask was left in" in failed.reason


def test_a_forged_share_beyond_the_threshold_is_not_used() -> None:
    """The coordinator rebuilds from the first ``threshold`` indices: a forged share of a
    later revealer changes nothing (and the round is still right)."""
    fed = Federation(5)
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(fed.ids)
    fed.reveal(fed.ids[:4])
    (reveal,) = fed.clients["plant-04"].on_unmask(fed.unmask)
    fed.answer(fed.round.on_reveal("plant-04", _forge(reveal, "plant-01"), fed.now))
    _assert_fedavg(fed, fed.result[0], fed.ids)
