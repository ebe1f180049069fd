"""The coordinator process: MQTT I/O around the round state machine and a strategy.

One asyncio task receives messages, another drives rounds. Every message is decoded and
checked before it touches state; a bad one is logged with its reason and dropped, so no
input can stop the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

import aiomqtt

from broker.codec import DecodeError, Limits
from broker.schemas import (
    Envelope,
    ModelBody,
    StatusBody,
    TaskBody,
    UpdateBody,
    decode,
    message,
)
from broker.topics import Topics
from coordinator.persistence import CoordinatorDB
from coordinator.publishing import initial_weights, model_message
from coordinator.registry import AgentInfo, Registry
from coordinator.rounds import RoundState, Selection, SyncRound
from coordinator.settings import CoordinatorSettings
from coordinator.strategies import make_strategy
from models.params import Weights
from models.spec import ModelSpec

log = logging.getLogger("alchimia.coordinator")
SOFTWARE = "alchimia-coordinator/0.1"


@dataclass(frozen=True)
class Rejection:
    sender: str
    topic: str
    reason: str


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.federation)
        self.db = CoordinatorDB(settings.state_dir)
        self.strategy = make_strategy(settings.strategy)
        self.selection = Selection(
            fraction=settings.fraction, min_agents=settings.min_agents,
            max_agents=settings.max_agents,
        )
        self.limits = Limits(max_message_bytes=settings.max_update_bytes)
        self.registry = Registry()
        for info in self.db.agents():
            info.online = False  # retained births re-announce who is online
            self.registry.update(info)
        self.rng = random.Random(settings.seed)
        self.changed = asyncio.Event()
        self.rejections: list[Rejection] = []
        self.rounds_completed = 0
        self.round: SyncRound | None = None
        self._accumulator = None
        self._client: aiomqtt.Client | None = None
        self._restore_or_initialise()

    # -- state
    def _restore_or_initialise(self) -> None:
        latest = self.db.latest_version()
        if latest is None:
            self.spec = ModelSpec(hidden=self.settings.hidden)
            self.weights: Weights = initial_weights(self.spec, self.settings.seed)
            self.version = 0
            payload = self._model_payload(self.weights, 0, None, None, {"initial": True})
            self.db.save_version(0, payload, round_id=None, parent=None,
                                 metadata={"initial": True})
            log.info("initialised model version 0 in %s", self.settings.state_dir)
        else:
            env = decode(self.db.load_payload(latest), ModelBody)
            body: ModelBody = env.body  # type: ignore[assignment]
            self.spec = ModelSpec.model_validate(body.spec)
            self.weights = {k: v.copy() for k, v in body.weights.items()}
            self.version = latest
            log.info("resumed at model version %d from %s", latest, self.settings.state_dir)
        self.next_round_id = (self.db.last_round_id() or 0) + 1
        for round_id, state in self.db.round_states():
            if state == "open":  # interrupted by a crash: its updates were never aggregated
                log.warning("round %d was open at shutdown; abandoned", round_id)
        self.model_payload = self.db.load_payload(self.version)

    def _model_payload(self, weights: Weights, version: int, parent: int | None,
                       round_id: int | None, metadata: dict) -> bytes:
        return model_message(self.settings.coordinator_id, self.spec, weights, version=version,
                             parent=parent, round_id=round_id, metadata=metadata)

    def _status(self, state: str) -> bytes:
        return message(self.settings.coordinator_id, StatusBody(
            role="coordinator", state=state, software=SOFTWARE, model_version=self.version))

    # -- I/O
    @property
    def _client_id(self) -> str:
        return f"{self.settings.federation}-{self.settings.coordinator_id}"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set or the configured number of rounds is done.

        Reconnects with backoff when the broker goes away; state lives on in memory and
        on disk, so a reconnect republishes the retained status, model and task.
        """
        stop = stop or asyncio.Event()
        host, port, _tls = self.settings.host_port_tls
        delay = 1.0
        while not stop.is_set():
            will = aiomqtt.Will(self.topics.coordinator_status, self._status("offline"),
                                qos=1, retain=True)
            try:
                async with aiomqtt.Client(
                    host, port, identifier=self._client_id,
                    username=self.settings.username, password=self.settings.password,
                    keepalive=self.settings.keepalive, will=will,
                ) as client:
                    self._client = client
                    delay = 1.0
                    await self._announce(client)
                    await self._serve(client, stop)
                    await client.publish(self.topics.coordinator_status,
                                         self._status("offline"), qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                if stop.is_set():
                    break
                log.warning("broker connection lost (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                self._client = None

    async def _announce(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topics.coordinator_status, self._status("online"), qos=1,
                             retain=True)
        await client.publish(self.topics.model_current, self.model_payload, qos=1, retain=True)
        await client.subscribe([(self.topics.all_agents("status"), 1),
                                (self.topics.all_agents("update"), 1)])
        if self.round is not None and not self.round.closed:
            await self._publish_task(self.round, "open")
        log.info("coordinator %s online, federation %s, model version %d",
                 self.settings.coordinator_id, self.settings.federation, self.version)

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        receiver = asyncio.create_task(self._receive(client))
        rounds = asyncio.create_task(self._drive_rounds(stop))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({receiver, rounds, stopper},
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (receiver, rounds, stopper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            topic = msg.topic.value
            try:
                self.handle(topic, bytes(msg.payload))  # type: ignore[arg-type]
            except Exception:  # a bug must not stop the federation; log it loudly
                log.exception("unexpected error handling a message on %s", topic)

    # -- message handling (no awaits: runs to completion between network reads)
    def handle(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse_agent_topic(topic)
        if parsed is None:
            self._reject("?", topic, "not an agent topic")
            return
        agent_id, leaf = parsed
        if not payload and leaf == "status":
            return  # a cleared retained status
        expect = StatusBody if leaf == "status" else UpdateBody
        try:
            env = decode(payload, expect, self.limits)
        except DecodeError as exc:
            self._reject(agent_id, topic, str(exc))
            return
        if env.sender != agent_id:
            self._reject(agent_id, topic, f"sender {env.sender!r} does not match topic")
            return
        if leaf == "status":
            self._on_status(env)
        else:
            self._on_update(env, topic)

    def _on_status(self, env: Envelope) -> None:
        body: StatusBody = env.body  # type: ignore[assignment]
        if body.role != "agent":
            return
        info = AgentInfo(env.sender, body.state == "online", body.samples, body.software,
                         time.time())
        if self.registry.update(info):
            log.info("agent %s is %s", env.sender, body.state)
        self.db.save_agent(info)
        self.changed.set()

    def _on_update(self, env: Envelope, topic: str) -> None:
        body: UpdateBody = env.body  # type: ignore[assignment]
        if self.db.seen(env.msg_id):
            self._reject(env.sender, topic, f"message {env.msg_id} replayed")
            return
        if self.round is None or self._accumulator is None:
            self._reject(env.sender, topic, "no round is open")
            return
        reason = self.round.check(env.sender, body.round_id, body.base_version)
        if reason is None:
            try:
                self._accumulator.add(body.delta, float(body.num_samples))
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            self._reject(env.sender, topic, reason)
            return
        self.round.accept(env.sender, env.msg_id)
        self.db.mark_seen(env.msg_id, env.sender, body.round_id)
        log.debug("accepted update from %s for round %d (%d samples)", env.sender,
                  body.round_id, body.num_samples)
        self.changed.set()

    def _reject(self, sender: str, topic: str, reason: str) -> None:
        log.warning("rejected message from %s on %s: %s", sender, topic, reason)
        self.rejections.append(Rejection(sender, topic, reason))
        del self.rejections[:-1000]  # keep the recent ones for admins and tests

    # -- rounds
    async def _wait_changed(self, timeout: float | None = None) -> None:
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    async def _drive_rounds(self, stop: asyncio.Event) -> None:
        s = self.settings
        while not stop.is_set():
            if s.rounds and self.rounds_completed >= s.rounds:
                log.info("completed %d rounds; stopping", self.rounds_completed)
                stop.set()
                return
            selected = self.selection.choose(self.registry.online(), self.rng)
            if selected is None:
                await self._wait_changed(5.0)
                continue
            rnd = SyncRound(
                round_id=self.next_round_id, base_version=self.version,
                selected=frozenset(selected), quorum=min(s.min_agents, len(selected)),
                deadline_ts=time.time() + s.round_timeout_s,
            )
            self.next_round_id += 1
            await self._run_round(rnd)

    async def _run_round(self, rnd: SyncRound) -> None:
        opened = time.time()
        self.round, self._accumulator = rnd, self.strategy.open_round(self.weights)
        self.db.save_round(rnd.round_id, rnd.base_version, "open", sorted(rnd.selected), {},
                           opened)
        await self._publish_task(rnd, "open")
        while (state := rnd.state(time.time())) is RoundState.OPEN:
            await self._wait_changed(max(0.0, rnd.deadline_ts - time.time()))
        rnd.close()
        if state is RoundState.FAILED:
            log.warning("round %d failed: %d of quorum %d updates by the deadline; missing %s",
                        rnd.round_id, len(rnd.accepted), rnd.quorum, rnd.missing)
            self.db.save_round(rnd.round_id, rnd.base_version, "failed", sorted(rnd.selected),
                               rnd.accepted, opened, time.time())
            await self._publish_task(rnd, "closed")
            return
        started = time.perf_counter()
        new_weights = self._accumulator.finish()
        version = self.version + 1
        metadata = {"strategy": self.strategy.name, "contributors": sorted(rnd.accepted),
                    "stragglers": rnd.missing}
        payload = await asyncio.to_thread(self._model_payload, new_weights, version,
                                          self.version, rnd.round_id, metadata)
        self.db.save_version(version, payload, round_id=rnd.round_id, parent=self.version,
                             metadata=metadata)
        self.weights, self.version, self.model_payload = new_weights, version, payload
        self.db.save_round(rnd.round_id, rnd.base_version, "closed", sorted(rnd.selected),
                           rnd.accepted, opened, time.time())
        await self._publish(self.topics.model_current, payload, retain=True)
        await self._publish_task(rnd, "closed")
        self.rounds_completed += 1
        log.info(
            "round %d closed: %d/%d updates, version %d -> %d, %.1f s open, %.3f s to "
            "aggregate and publish, %d bytes", rnd.round_id, len(rnd.accepted),
            len(rnd.selected), version - 1, version, time.time() - opened,
            time.perf_counter() - started, len(payload))

    async def _publish_task(self, rnd: SyncRound, state: str) -> None:
        s = self.settings
        body = TaskBody(
            round_id=rnd.round_id, state=state, base_version=rnd.base_version,  # type: ignore[arg-type]
            deadline_ts=rnd.deadline_ts, selected=sorted(rnd.selected), epochs=s.epochs,
            lr=s.lr, batch_size=s.batch_size, hyper=self.strategy.task_params(),
        )
        await self._publish(self.topics.round_current, message(s.coordinator_id, body),
                            retain=True)

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self._client is None:
            raise aiomqtt.MqttError("not connected")
        await self._client.publish(topic, payload, qos=1, retain=retain)
