"""The agent's side of a secure round (docs/PROTOCOL.md, "Secure aggregation"), driven in
process: real Agents (simulated heats, no broker: what they publish is recorded) and the
coordinator's SecureRound in memory, every message through the codec."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import alchimia.agent.service as service
from alchimia.agent.secagg_client import Phase as ClientPhase
from alchimia.agent.secagg_client import SecaggClient
from alchimia.agent.service import Agent
from alchimia.broker.schemas import (
    Body,
    IncomingShare,
    SecaggInboxBody,
    SecaggKeysBody,
    SecaggMaskedBody,
    SecaggRevealBody,
    SecaggRosterBody,
    SecaggSharesBody,
    SecaggUnmaskBody,
    StatusBody,
    TaskBody,
    UpdateBody,
    decode,
    message,
)
from alchimia.coordinator.rounds import Refusal
from alchimia.coordinator.secure_round import (
    Finished,
    PublishInbox,
    PublishRoster,
    PublishUnmask,
    SecureRound,
)
from alchimia.models.spec import ModelSpec
from tests.data.models import first_model_envelope
from tests.unit.agent_driver import offline_agent

IDS = ("plant-1", "plant-2", "plant-3")
ROUND, VERSION = 4, 1


def _task(round_id: int = ROUND, secure: bool = True, **change) -> TaskBody:
    fields = {
        "round_id": round_id,
        "state": "open",
        "base_version": VERSION,
        "deadline_ts": 2e9,
        "selected": list(IDS),
        "secure_aggregation": secure,
        **change,
    }
    return TaskBody(**fields)


class Recorder:
    """What an agent publishes, decoded: (topic, body)."""

    def __init__(self, agent: Agent) -> None:
        self.sent: list[tuple[str, Body]] = []
        self.agent = agent
        agent.link.publish = self.publish  # type: ignore[method-assign]

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, decode(payload).body))

    def take(self, kind: type[Body] | None = None) -> list[Body]:
        """The bodies sent on the agent's secagg topic since the last take (of ``kind``)."""
        topic = self.agent.topics.agent_secagg(self.agent.id)
        out = [b for t, b in self.sent if t == topic and (kind is None or isinstance(b, kind))]
        self.sent = [(t, b) for t, b in self.sent if t != topic]
        return out

    def kinds(self) -> list[str]:
        return [b.kind for _, b in self.sent]


def _agent(tmp_path: Path, agent_id: str) -> tuple[Agent, Recorder]:
    agent = offline_agent(tmp_path, agent_id)
    recorder = Recorder(agent)
    agent._on_model(first_model_envelope(ModelSpec(), VERSION))
    assert agent.table is not None and agent.table.n_train > 0
    recorder.sent.clear()
    return agent, recorder


@pytest.fixture
def agents(tmp_path: Path) -> dict[str, tuple[Agent, Recorder]]:
    return {a: _agent(tmp_path, a) for a in IDS}


@pytest.fixture
def deltas(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[list[np.ndarray], int]]:
    """Each agent's delta and weight as given to its client (spied)."""
    seen: dict[str, tuple[list[np.ndarray], int]] = {}
    set_delta = SecaggClient.set_delta

    def spy(self: SecaggClient, delta, num_samples, metrics=None):  # type: ignore[no-untyped-def]
        seen[self.agent_id] = ([np.array(d) for d in delta], num_samples)
        return set_delta(self, delta, num_samples, metrics)

    monkeypatch.setattr(SecaggClient, "set_delta", spy)
    return seen


def _wire(sender: str, body: Body) -> bytes:
    return message(sender, body)


def _answer(round_: SecureRound, answer) -> list:  # type: ignore[no-untyped-def]
    assert not isinstance(answer, Refusal), answer
    return list(answer)


def _deliver(agents, commands) -> None:  # type: ignore[no-untyped-def]
    """The coordinator's publications, handed to the agents as the link would."""
    for command in commands:
        if isinstance(command, PublishRoster | PublishUnmask):
            for agent, _ in agents.values():
                agent.handle_secagg(agent.topics.round_secagg, _wire("coordinator", command.body))
        elif isinstance(command, PublishInbox):
            agent = agents[command.agent_id][0]
            agent.handle_secagg(
                agent.topics.round_secagg_inbox(agent.id), _wire("coordinator", command.body)
            )


def _round(agent: Agent) -> SecureRound:
    assert agent.base_weights is not None
    return SecureRound(
        ROUND,
        VERSION,
        IDS,
        1,
        agent.base_weights,
        phase_timeout_s=30.0,
        opened_ts=0.0,
        deadline_ts=2e9,
    )


def _forward(round_: SecureRound, agents, kind: type[Body]) -> list:  # type: ignore[no-untyped-def]
    """What the agents sent of ``kind``, to the coordinator (through the codec)."""
    handler = {
        SecaggKeysBody: round_.on_keys,
        SecaggSharesBody: round_.on_shares,
        SecaggMaskedBody: round_.on_masked,
        SecaggRevealBody: round_.on_reveal,
    }[kind]
    commands: list = []
    for a, (_, recorder) in agents.items():
        for body in recorder.take(kind):
            wired = decode(_wire(a, body), kind).body
            commands += _answer(round_, handler(a, wired, 1.0))
    return commands


def test_a_secure_round_sends_keys_at_once_then_a_masked_input_not_an_update(
    agents, deltas
) -> None:
    for agent, recorder in agents.values():
        agent._on_task(_task())
        agent._step()  # keys, then training: the delta waits for the inbox
        kinds = recorder.kinds()
        assert kinds[0] == "secagg_keys" and "update" not in kinds, kinds
        assert agent.rounds_done == {ROUND} and agent.new_heats == 0 and agent.updates_sent == 1
        status = [b for _, b in recorder.sent if isinstance(b, StatusBody)]
        assert status and status[-1].new_heats == 0  # the coordinator sees it is done
        assert agent.secagg is not None and agent.secagg.phase is ClientPhase.KEYS_SENT
    round_ = _round(agents[IDS[0]][0])
    roster = _forward(round_, agents, SecaggKeysBody)
    assert [type(c) for c in roster] == [PublishRoster]
    _deliver(agents, roster)
    inboxes = _forward(round_, agents, SecaggSharesBody)
    assert [type(c) for c in inboxes] == [PublishInbox] * 3
    _deliver(agents, inboxes)  # the delta is in: each sends its masked input now
    unmask = _forward(round_, agents, SecaggMaskedBody)
    assert [type(c) for c in unmask] == [PublishUnmask]
    _deliver(agents, unmask)
    (done,) = _forward(round_, agents, SecaggRevealBody)
    assert isinstance(done, Finished) and done.partial.contributors == IDS
    # the coordinator's sum is the agents' weighted deltas, to fixed-point precision
    names = list(agents[IDS[0]][0].base_weights or {})
    assert set(deltas) == set(IDS)
    assert done.partial.total_weight == sum(w for _, w in deltas.values())
    for k, name in enumerate(names):
        exact = sum(w * d[k].astype(np.float64) for d, w in deltas.values())
        np.testing.assert_allclose(done.partial.sums[name], exact, rtol=0, atol=3 * 2.0**-25)
    for agent, recorder in agents.values():
        assert not agent.rejections.counts and not agent.step_failures.counts
        assert "update" not in recorder.kinds()
        assert agent.secagg is not None and agent.secagg.phase is ClientPhase.REVEALED


def test_the_inbox_may_come_before_the_delta(agents, deltas) -> None:
    """Shares are exchanged while agents train: the masked input leaves with the delta."""
    for agent, _ in agents.values():
        agent._on_task(_task())
        agent._join_secure_round()  # keys only: training has not finished yet
    round_ = _round(agents[IDS[0]][0])
    _deliver(agents, _forward(round_, agents, SecaggKeysBody))
    _deliver(agents, _forward(round_, agents, SecaggSharesBody))
    for agent, recorder in agents.values():
        assert agent.secagg is not None and agent.secagg.phase is ClientPhase.INBOX
        assert recorder.take() == []
        agent._step()  # trains: the masked input goes at once
        (masked,) = recorder.take()
        assert isinstance(masked, SecaggMaskedBody) and masked.round_id == ROUND
        assert masked.num_samples == deltas[agent.id][1] and "train_loss" in masked.metrics


def test_a_plain_task_still_sends_an_update(agents) -> None:
    agent, recorder = agents[IDS[0]]
    agent._on_task(_task(secure=False))
    agent._step()
    assert agent.secagg is None and "update" in recorder.kinds() and recorder.take() == []
    (update,) = [b for _, b in recorder.sent if isinstance(b, UpdateBody)]
    assert update.round_id == ROUND


def test_no_keys_for_a_task_the_agent_will_not_train_for(agents) -> None:
    agent, recorder = agents[IDS[0]]
    for task in (
        _task(selected=list(IDS[1:])),  # not selected
        _task(base_version=VERSION + 1),  # a version it does not hold
        _task(state="closed"),
    ):
        agent._on_task(task)
        agent._step()
        assert agent.secagg is None and recorder.take() == []
        assert "update" not in recorder.kinds()


def test_keys_once_per_round_and_a_new_task_drops_the_client(agents) -> None:
    agent, recorder = agents[IDS[0]]
    agent._on_task(_task())
    agent._join_secure_round()
    first = agent.secagg
    agent._on_task(_task())  # the retained task again (a reconnect): same round, same keys
    agent._join_secure_round()
    assert agent.secagg is first and len(recorder.take(SecaggKeysBody)) == 1
    agent._on_task(_task(ROUND + 1, selected=list(IDS[1:])))  # next round, not selected
    assert agent.secagg is None
    agent._on_task(_task(ROUND + 2))
    agent._join_secure_round()
    assert agent.secagg is not None and agent.secagg.round_id == ROUND + 2
    (keys,) = recorder.take(SecaggKeysBody)
    assert keys.round_id == ROUND + 2 and keys.c_pk != first.keys.c_pk  # fresh keys


def _roster_of(agents, round_id: int = ROUND) -> SecaggRosterBody:  # type: ignore[no-untyped-def]
    round_ = _round(agents[IDS[0]][0])
    for agent, _ in agents.values():
        agent._on_task(_task())
        agent._join_secure_round()
    (roster,) = _forward(round_, agents, SecaggKeysBody)
    return roster.body.model_copy(update={"round_id": round_id})


def test_messages_of_another_round_are_invalid_and_others_ignored(agents) -> None:
    agent, recorder = agents[IDS[0]]
    topic = agent.topics.round_secagg
    roster = _roster_of(agents)
    agent.handle_secagg(topic, _wire("coordinator", roster.model_copy(update={"round_id": 3})))
    assert agent.rejections.counts == {"invalid": 1} and recorder.take() == []
    # a newer round: its task is not in yet (or does not select this agent): not counted
    agent.handle_secagg(topic, _wire("coordinator", roster.model_copy(update={"round_id": 9})))
    assert agent.rejections.counts == {"invalid": 1}
    # an unmask before the masked input, a second roster after the first
    unmask = SecaggUnmaskBody(round_id=ROUND, survivors=list(IDS))
    agent.handle_secagg(topic, _wire("coordinator", unmask))
    agent.handle_secagg(topic, _wire("coordinator", roster))
    assert len(recorder.take(SecaggSharesBody)) == 1
    agent.handle_secagg(topic, _wire("coordinator", roster))
    assert agent.rejections.counts == {"invalid": 3} and recorder.take() == []
    # not a secagg message; not a message; an inbox on the broadcast topic
    agent.handle_secagg(topic, _wire("coordinator", _task()))
    agent.handle_secagg(topic, b"\x00garbage")
    agent.handle_secagg(agent.topics.round_secagg_inbox(agent.id), _wire("coordinator", unmask))
    assert agent.rejections.counts == {"invalid": 3, "malformed": 3}
    # without a client (no secure round for this agent): nothing counted, nothing sent
    agent._on_task(_task(ROUND + 1, secure=False))
    agent.handle_secagg(topic, _wire("coordinator", unmask))
    assert agent.rejections.counts == {"invalid": 3, "malformed": 3} and recorder.take() == []


def test_an_undecryptable_share_is_counted_bad_share(agents) -> None:
    roster = _roster_of(agents)
    for agent, _ in agents.values():
        agent.handle_secagg(agent.topics.round_secagg, _wire("coordinator", roster))
    agent = agents[IDS[0]][0]
    shares = {
        a: next(s for s in r.take(SecaggSharesBody)[0].shares if s.to == agent.id)  # type: ignore[attr-defined]
        for a, (_, r) in agents.items()
        if a != agent.id
    }
    forged = bytearray(shares[IDS[1]].ct)
    forged[-1] ^= 1
    inbox = SecaggInboxBody(
        round_id=ROUND,
        shares=[
            IncomingShare.of(IDS[1], bytes(forged)),
            IncomingShare.of(IDS[2], shares[IDS[2]].ct),
        ],
    )
    agent.handle_secagg(agent.topics.round_secagg_inbox(agent.id), _wire("coordinator", inbox))
    assert agent.rejections.counts == {"bad_share": 1}
    assert agent.secagg is not None and agent.secagg.phase is ClientPhase.INBOX


def test_a_delta_that_does_not_fit_skips_the_round(agents, monkeypatch) -> None:
    train_delta = service.train_delta

    def huge(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = train_delta(*args, **kwargs)
        for v in result.delta.values():
            v += 1e12  # w * d beyond 2^24
        return result

    monkeypatch.setattr(service, "train_delta", huge)
    agent, recorder = agents[IDS[0]]
    new_heats = agent.new_heats
    agent._on_task(_task())
    agent._step()
    assert [b.kind for b in recorder.take()] == ["secagg_keys"]
    assert "update" not in recorder.kinds() and not agent.step_failures.counts
    assert agent.rounds_done == {ROUND} and agent.updates_sent == 0
    assert agent.new_heats == new_heats  # still to be learned from
    assert agent.secagg is not None and agent.secagg.phase is ClientPhase.OUT
    agent._step()  # not trained again
    assert recorder.take() == []


def test_the_link_hands_secagg_messages_over_on_its_own_thread(agents) -> None:
    """Not through the work loop's inbox: the roster is answered while the loop trains."""
    agent, recorder = agents[IDS[0]]
    roster = _roster_of(agents)
    answered = threading.Event()
    handle = agent.handle_secagg

    def on_paho_thread(topic: str, payload: bytes) -> None:
        handle(topic, payload)
        answered.set()

    agent.link._direct[agent.topics.round_secagg] = on_paho_thread
    with agent._secagg_lock:  # the work loop is giving the client its delta
        paho = threading.Thread(
            target=agent.link._on_message,
            args=(
                None,
                None,
                SimpleNamespace(
                    topic=agent.topics.round_secagg, payload=_wire("coordinator", roster)
                ),
            ),
        )
        paho.start()
        assert not answered.wait(0.2)
    paho.join(5)
    assert answered.is_set() and agent.link.inbox.empty()
    assert len(recorder.take(SecaggSharesBody)) == 1
    # a handler that raises does not stop the thread: logged only
    agent.link._direct[agent.topics.round_secagg] = lambda t, p: 1 / 0
    agent.link._on_message(
        None, None, SimpleNamespace(topic=agent.topics.round_secagg, payload=b"x")
    )
    assert agent.topics.round_secagg in agent.link._subscriptions
    assert agent.topics.round_secagg_inbox(agent.id) in agent.link._subscriptions
    assert agent.topics.round_secagg_inbox(IDS[1]) not in agent.link._subscriptions
