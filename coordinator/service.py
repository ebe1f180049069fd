"""The coordinator process: MQTT I/O around the round state machine and a strategy.

One asyncio task receives messages, another drives rounds. Every message is decoded and
checked before it touches state; a bad one is logged with its reason and dropped, so no
input can stop the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sqlite3
import time
from dataclasses import dataclass
from typing import ClassVar, Literal, cast

import aiomqtt
import paho.mqtt.client as mqtt

from broker.codec import DecodeError, Limits
from broker.metrics_http import serve_metrics
from broker.rejections import RejectionLog
from broker.schemas import (
    AdminBody,
    Body,
    Envelope,
    MetricsBody,
    ModelBody,
    SchemaError,
    StatusBody,
    TaskBody,
    UpdateBody,
    body_of,
    decode,
    message,
)
from broker.signing import load_private_key, sign_task
from broker.topics import Topics
from coordinator.fedbuff import AsyncWindow
from coordinator.group_commit import GroupCommit
from coordinator.metrics import CoordinatorCollector, CoordinatorStats
from coordinator.persistence import CoordinatorDB
from coordinator.privacy import PrivacyLedger
from coordinator.publishing import initial_weights, model_message
from coordinator.ratelimit import RateLimiter
from coordinator.registry import AgentInfo, Registry
from coordinator.rounds import Refusal, RoundState, Selection, SyncRound
from coordinator.settings import CoordinatorSettings
from coordinator.staleness import make_staleness
from coordinator.strategies import Accumulator, Strategy, kernels, make_strategy
from coordinator.strategy_state import pack_state, unpack_state
from coordinator.trigger import RoundTrigger, ValidationProgress
from coordinator.web import serve_web
from models.params import Weights
from models.spec import ModelSpec

log = logging.getLogger("alchimia.coordinator")
SOFTWARE = "alchimia-coordinator/0.1"
# Messages of each kind (update, status, metrics) an agent may send in answer to one task
# or model the coordinator publishes (an update, statuses, validation and champion/
# challenger figures, the prequential report of the agent's next step), credited on top
# of its rate limit for that kind: they come as fast as rounds.
ANSWER_CREDIT = 5
Window = SyncRound | AsyncWindow


@dataclass(frozen=True)
class Rejection:
    sender: str
    topic: str
    reason: str
    code: str  # what it is counted under: Coordinator.rejection_log.counts


def _decode_code(exc: DecodeError) -> str:
    """``schema`` for a message that unpacked but breaks its schema, else ``malformed``."""
    return "schema" if isinstance(exc, SchemaError) else "malformed"


def _received(body: UpdateBody) -> Weights:
    """The delta of a decoded update: decoding makes every tensor an array (``Encoded``
    values exist only on the sending side, before encoding)."""
    return cast(Weights, body.delta)


def _paho(client: aiomqtt.Client) -> mqtt.Client:
    """aiomqtt's paho client, for acknowledgements after handling: aiomqtt 2 has no API
    for them yet (its issue #345 gives this as the workaround; paho >= 2.0 has it)."""
    return client._client


def _qos(granted: int | object) -> int:
    """Granted QoS from a SUBACK entry (an int in MQTT 3.1.1, a reason code in 5)."""
    value = getattr(granted, "value", granted)
    return value if isinstance(value, int) else -1


def _machine_fault(exc: BaseException) -> bool:
    """A disk, file-system or database-file problem, not something a message caused."""
    return isinstance(exc, OSError | sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.federation)
        self.db = CoordinatorDB(settings.state_dir, settings.keep_versions)
        kernels.set_threads(settings.aggregation_threads)
        self.strategy = self._make_strategy()
        self.staleness = make_staleness(settings.staleness, **settings.staleness_params)
        self.selection = Selection(
            fraction=settings.fraction, min_agents=settings.min_agents,
            max_agents=settings.max_agents,
        )
        self.trigger = RoundTrigger(settings.min_new_heats, settings.round_schedule_s)
        self.signing_key = (load_private_key(settings.model_signing_key)
                            if settings.model_signing_key else None)
        self.registry = Registry()
        self.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        for info in self.db.agents():
            info.online = False  # retained births re-announce who is online
            self.registry.update(info)
        self.rng = random.Random(settings.seed)
        self.changed = asyncio.Event()
        self.rejections: list[Rejection] = []
        # Every rejection counted by reason code (docs/PROTOCOL.md, "Rejections").
        self.rejection_log = RejectionLog(log)
        self._rejected_by_sender: dict[str, int] = {}
        self.rounds_completed = 0
        self.stats = CoordinatorStats()  # for Prometheus (coordinator.metrics)
        self.window: Window | None = None
        self._accumulator: Accumulator | None = None
        self._rollback_to: int | None = None
        self._early_round_for: str | None = None
        self._last_opened = time.time()  # the schedule counts from here, then each round
        self._wait_s: float | None = None  # until the schedule is due, while waiting
        self._waiting_why = ""
        self._client: aiomqtt.Client | None = None
        # Agents left on an older version than ours (one that joined while the broker held
        # a replayed model), or a replay reported: republish, at most every 5 s.
        self._replay_reported = False
        self._published_at = self._republished = self._stale_checked = float("-inf")
        # Admins' pause (kept across restarts) and stop after the current round.
        self.paused = self.db.flag("paused") is not None
        self._stop_requested = False
        self._status_due = False
        self._restore_or_initialise()
        # Differential privacy: updates each agent sent, from the stored versions.
        self.privacy = PrivacyLedger.replay(settings.dp_delta,
                                            (md for _, _, _, md in self.db.versions()))
        # An update carries the shared part: it may decode to no more (a top-k tensor's
        # bytes do not bound the shape it declares).
        sizes = [math.prod(s) for s in self.spec.parameter_shapes("shared").values()]
        self.limits = Limits(max_message_bytes=settings.max_update_bytes,
                             max_tensor_elements=max(sizes), max_total_elements=sum(sizes))
        self.progress = ValidationProgress(self.spec.targets, self.spec.y_scale,
                                           settings.min_improvement)

    # -- state
    def _make_strategy(self) -> Strategy:
        params = dict(self.settings.strategy_params)
        if self.settings.clip_norm is not None:
            params["clip_norm"] = self.settings.clip_norm
        return make_strategy(self.settings.strategy, **params)

    def _restore_or_initialise(self) -> None:
        latest = self.db.latest_version()
        if latest is None:
            self.spec = ModelSpec(architecture=self.settings.architecture,
                                  # None: the architecture's default (ModelSpec validates)
                                  hidden=self.settings.hidden)  # type: ignore[arg-type]
            self.weights: Weights = initial_weights(self.spec, self.settings.seed)
            self.version = 0
            payload = self._model_payload(self.weights, 0, None, None, {"initial": True})
            self.db.save_version(0, payload, round_id=None, parent=None,
                                 metadata={"initial": True})
            log.info("initialised model version 0 in %s", self.settings.state_dir)
        else:
            body = body_of(decode(self.db.load_payload(latest), ModelBody), ModelBody)
            self.spec = ModelSpec.model_validate(body.spec)
            self.weights = {k: v.copy() for k, v in body.weights.items()}
            self.version = latest
            state = self.db.load_strategy_state(latest)
            if state is not None:
                self.strategy.load_state_dict(unpack_state(state))
            log.info("resumed at model version %d from %s", latest, self.settings.state_dir)
        self.next_round_id = (self.db.last_round_id() or 0) + 1
        self.model_payload = self.db.load_payload(self.version)

    def _model_payload(self, weights: Weights, version: int, parent: int | None,
                       round_id: int | None, metadata: dict) -> bytes:
        return model_message(self.settings.coordinator_id, self.spec, weights, version=version,
                             parent=parent, round_id=round_id, metadata=metadata,
                             signing_key=self.signing_key)

    @property
    def activity(self) -> Literal["running", "paused", "stopping"]:
        return "stopping" if self._stop_requested else "paused" if self.paused else "running"

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        # Messages rejected per known agent: `alchimia status` shows them.
        rejected = {a.agent_id: n for a in self.registry.all()
                    if (n := self._rejected_by_sender.get(a.agent_id))}
        return message(self.settings.coordinator_id, StatusBody(
            role="coordinator", state=state, software=SOFTWARE, model_version=self.version,
            rejected=rejected, activity=self.activity))

    # -- I/O
    @property
    def _client_id(self) -> str:
        return f"{self.settings.federation}-{self.settings.coordinator_id}"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set or the configured number of rounds is done (and
        Prometheus metrics and the admin web page meanwhile, if ``metrics_port`` and
        ``web_port`` are set)."""
        stop = stop or asyncio.Event()
        metrics = serve_metrics(CoordinatorCollector(self), self.settings)
        web = None
        try:
            web = serve_web(self)
            await self._run_connected(stop)
        finally:
            for server in (web, metrics):
                if server is not None:
                    server.close()

    async def _run_connected(self, stop: asyncio.Event) -> None:
        """Reconnects with backoff when the broker goes away; state lives on in memory and
        on disk, so a reconnect republishes the retained status, model and task."""
        host, port, _tls = self.settings.host_port_tls
        self._client_never_connected = True
        delay = 1.0
        while not stop.is_set():
            will = aiomqtt.Will(self.topics.coordinator_status, self._status("offline"),
                                qos=1, retain=True)
            try:
                # A persistent session (clean_session=False) and acknowledgements sent only
                # after a message is handled: while the coordinator is down or restarting
                # the broker keeps the updates sent to it, and one it received but had not
                # handled (and saved) yet is delivered again. An agent sends each update
                # once, so otherwise a restart would lose it.
                client = aiomqtt.Client(
                    host, port, identifier=self._client_id, clean_session=False,
                    username=self.settings.username, password=self.settings.password,
                    keepalive=self.settings.keepalive, will=will,
                    tls_context=self.settings.tls_context(),
                )
                _paho(client).manual_ack_set(True)
                async with client:
                    self._client = client
                    self._client_never_connected = False
                    delay = 1.0
                    await self._announce(client)
                    await self._serve(client, stop)
                    await client.publish(self.topics.coordinator_status,
                                         self._status("offline"), qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                if stop.is_set():
                    break
                why = (await asyncio.to_thread(self.settings.diagnose_connection)
                       if self._client_never_connected else str(exc))
                log.warning("broker connection failed (%s); retrying in %.0f s", why, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                self._client = None

    async def _announce(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topics.coordinator_status, self._status("online"), qos=1,
                             retain=True)
        await client.publish(self.topics.model_current, self.model_payload, qos=1, retain=True)
        # QoS 1 only where the broker should keep messages while the coordinator is away
        # (updates, admin commands): queued statuses and metrics would only crowd the
        # session's queue, and the retained statuses come again with every subscribe.
        granted = await client.subscribe([(self.topics.all_agents("update"), 1),
                                          (self.topics.coordinator_admin, 1),
                                          (self.topics.all_agents("status"), 0),
                                          (self.topics.all_agents("metrics"), 0)])
        if not granted or not 1 <= _qos(granted[0]) <= 2:
            log.warning("the broker granted QoS %s, not 1, for agents' updates: updates sent "
                        "while the coordinator is away will be lost", granted[:1])
        if self.window is not None and not self.window.closed:
            await self._publish_task(self.window, "open")
        log.info("coordinator %s online, federation %s, model version %d",
                 self.settings.coordinator_id, self.settings.federation, self.version)

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        acks = GroupCommit(self.db, _paho(client))
        tasks = [asyncio.create_task(self._receive(client, acks)), asyncio.create_task(acks.run()),
                 asyncio.create_task(self._drive_rounds(stop))]
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and (exc := task.exception()) is not None:
                    raise exc
        finally:
            # Cancel every task before awaiting any: awaiting the receiver first would
            # re-raise its MqttError and leave the round driver running beside the one
            # the reconnect starts (two drivers, two open rounds).
            for task in (*tasks, stopper):
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            if acks.pending:
                # What was handled is kept and acknowledged (a machine fault that stops the
                # coordinator happened in a message not among them).
                with contextlib.suppress(sqlite3.Error, OSError, aiomqtt.MqttError):
                    acks.commit()

    async def _receive(self, client: aiomqtt.Client, acks: GroupCommit) -> None:
        async for msg in client.messages:
            topic = msg.topic.value
            try:
                self.handle(topic, bytes(msg.payload))
                self.rejection_log.tick()  # a flood that stopped is summed up
            except Exception as exc:
                if _machine_fault(exc):
                    # The state on disk is the truth: stop rather than count unsaved
                    # updates. Not acknowledged, so the broker delivers it again.
                    raise
                # A bug, or a row the database refuses: this message would fail again, and
                # it must not stop the federation. Logged loudly, acknowledged, dropped.
                log.exception("unexpected error handling a message on %s; dropped", topic)
            if msg.qos > 0:
                acks.handled(msg.mid, msg.qos)

    # -- message handling (no awaits: runs to completion between network reads)
    def handle(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.coordinator_admin:
            self._on_admin(topic, payload)
            return
        parsed = self.topics.parse_agent_topic(topic)
        if parsed is None:
            self._reject("?", topic, "not_agent_topic", "not an agent topic")
            return
        agent_id, leaf = parsed
        # One budget per agent and kind of message: a flood of metrics (or of anything
        # forged on an open broker) never uses up the budget of its status or its update.
        if not self.rate_limiter.allow(f"{agent_id}/{leaf}", time.monotonic()):
            self._reject(agent_id, topic, "rate_limited", "rate limit exceeded")
            return
        if not payload and leaf == "status":
            return  # a cleared retained status
        if leaf not in self._EXPECT:
            self._reject(agent_id, topic, "unread_topic",
                         f"the coordinator does not read {leaf} messages")
            return
        expect = self._EXPECT[leaf]
        try:
            # NaN/inf in deltas are caught by the accumulator's norm pass: no second scan.
            env = decode(payload, expect, self.limits, check_finite=False)
        except DecodeError as exc:
            self._reject(agent_id, topic, _decode_code(exc), str(exc))
            return
        if env.sender != agent_id:
            self._reject(agent_id, topic, "wrong_sender",
                         f"sender {env.sender!r} does not match topic")
            return
        if leaf == "status":
            self._on_status(env)
        elif leaf == "metrics":
            self._on_metrics(env)
        else:
            self._on_update(env, topic, payload)

    _EXPECT: ClassVar[dict[str, type[Body]]] = {
        "status": StatusBody, "update": UpdateBody, "metrics": MetricsBody}

    def _on_metrics(self, env: Envelope) -> None:
        """Validation figures and drift reports are kept (the web page); a drift report
        asks for an early round (sync mode; async windows never pause)."""
        body = body_of(env, MetricsBody)
        if body.scope == "validation" and body.model_version is not None:
            self.progress.report(body.model_version, env.sender, body.values)
            if body.model_version <= self.version:  # kept for the web page, per version
                self.db.save_validation(body.model_version, env.sender, time.time(),
                                        dict(body.values))
            self.changed.set()  # may decide the next round (trigger.py)
        if body.scope == "model_rejected" and (body.model_version or 0) < self.version:
            # Someone replayed an older model on model/current: retained, it would be
            # the first thing every agent that connects from now on is handed.
            self._replay_reported = True
        if body.scope == "drift":
            log.warning("agent %s reports drift: %s", env.sender, dict(body.values))
            self.db.save_drift(time.time(), env.sender, body.model_version, dict(body.values))
            self._early_round_for = env.sender
            self.changed.set()

    def _on_admin(self, topic: str, payload: bytes) -> None:
        try:
            env = decode(payload, AdminBody, self.limits)
        except DecodeError as exc:
            self._reject("admin", topic, _decode_code(exc), str(exc))
            return
        body = body_of(env, AdminBody)
        if body.action == "rollback":
            assert body.version is not None  # the schema requires it
            if not self.db.model_path(body.version).exists():
                self._reject(env.sender, topic, "unknown_version",
                             f"no model version {body.version} to roll back to")
                return
            log.warning("admin %s asked to roll back to version %d", env.sender, body.version)
            self._rollback_to = body.version
        else:
            log.warning("admin %s asked the coordinator to %s", env.sender, body.action)
            if body.action in ("pause", "resume"):
                self.paused = body.action == "pause"
                self.db.set_flag("paused", "1" if self.paused else None)
            else:
                self._stop_requested = True
            self._status_due = True  # the admin's confirmation
        self.changed.set()

    def _on_status(self, env: Envelope) -> None:
        body = body_of(env, StatusBody)
        if body.role != "agent":
            return
        info = AgentInfo(env.sender, body.state == "online", body.samples, body.software,
                         time.time(), body.new_heats, env.ts, body.model_version)
        if self.registry.update(info):
            log.info("agent %s is %s", env.sender, body.state)
        self.db.save_agent(info)
        self.changed.set()

    def _on_update(self, env: Envelope, topic: str, payload: bytes) -> None:
        body = body_of(env, UpdateBody)
        if self.db.seen(env.msg_id):
            self._reject(env.sender, topic, "replayed", f"message {env.msg_id} replayed")
            return
        # Sent means learned, accepted or not: the agent counts its new heats from here.
        self.registry.update_sent(env.sender, env.ts)
        window, acc = self.window, self._accumulator
        if window is None or acc is None:
            self._reject(env.sender, topic, "no_round", "no round is open")
            return
        reason = window.check(env.sender, body.round_id, body.base_version)
        weight = window.weight(body.base_version, body.num_samples)
        if reason is None:
            try:
                acc.add(_received(body), weight)
            except ValueError as exc:
                reason = Refusal("bad_delta", str(exc))
        if reason is not None:
            self._reject(env.sender, topic, reason.code, reason)
            return
        self.db.accept_update(env.msg_id, env.sender, window.window_id, body.base_version,
                              weight, payload)
        window.accept(env.sender, env.msg_id, body.base_version)
        self.stats.update_accepted()
        log.debug("accepted update from %s for round %d (weight %.1f)", env.sender,
                  window.window_id, weight)
        self.changed.set()

    def _reject(self, sender: str, topic: str, code: str, reason: str) -> None:
        """Count a dropped message under ``code`` and log why (``broker.rejections``: a
        flood gets a few escaped lines per reason and a summary a minute, not thousands)."""
        count = self._rejected_by_sender[sender] = self._rejected_by_sender.get(sender, 0) + 1
        self.rejection_log.reject(code, "rejected message from %s on %s: %s: %s (%d from this "
                                  "sender)", sender, topic, code, reason, count)
        self.rejections.append(Rejection(sender, topic, reason, code))
        self.stats.message_rejected(topic, code)
        del self.rejections[:-1000]  # keep the recent ones for admins and tests
        if len(self._rejected_by_sender) > 100_000:
            self._rejected_by_sender.clear()

    # -- rounds
    async def _wait_changed(self, timeout: float | None = None) -> None:
        # On Python 3.11 asyncio.wait_for swallows a cancellation that arrives as its
        # awaitable completes (aiomqtt's publish awaits its PUBACK that way): the round
        # driver then outlived its session and a stop hung. A task being cancelled stops
        # here whatever swallowed the CancelledError on the way.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        self.changed.clear()
        # At least every second: the housekeeping below runs on this loop's turns.
        timeout = 1.0 if timeout is None else min(timeout, 1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        if self._status_due:
            self._status_due = False
            await self._publish(self.topics.coordinator_status, self._status("online"),
                                retain=True)
        await self._bring_back_stale_agents()

    async def _bring_back_stale_agents(self) -> None:
        """Republish the current model (and the open task) when an agent reported a replay,
        or is still on an older version 10 s after the current one was published (agents
        adopt within a second), so nothing stalls whatever was replayed; looked at once a
        second, republished at most every 5 s."""
        now = time.monotonic()
        if now - self._stale_checked < 1.0 or now - self._republished < 5.0:
            return
        self._stale_checked = now
        behind = [] if now - self._published_at < 10.0 else [
            a.agent_id for a in self.registry.all() if a.online
            and a.model_version is not None and a.model_version < self.version]
        if not behind and not self._replay_reported:
            return
        log.warning("republishing version %d: %s", self.version,
                    f"agents on an older version ({','.join(behind)})" if behind
                    else "an agent reported a replayed older model")
        self._replay_reported = False
        self._republished = now
        await self._publish_model()
        if self.window is not None and not self.window.closed:
            await self._publish_task(self.window, "open")

    async def _drive_rounds(self, stop: asyncio.Event) -> None:
        resumed = self._resume_window()
        while not stop.is_set():
            if self._rollback_to is not None:
                await self._rollback(self._rollback_to)
                continue
            if self._stop_requested:
                log.warning("stopping as an admin asked, after %d rounds",
                            self.rounds_completed)
                stop.set()
                return
            if self.settings.rounds and self.rounds_completed >= self.settings.rounds:
                log.info("completed %d rounds; stopping", self.rounds_completed)
                stop.set()
                return
            window, resumed = resumed or self._new_window(), None
            if window is None:
                # Statuses (births, new heats), drift reports and rollbacks set the event;
                # the timeout is the schedule, so nothing here polls in a loop.
                await self._wait_changed(min(self._wait_s or 60.0, 60.0))
                continue
            await self._run_window(window)
            await self._pause_between_rounds(stop)

    async def _pause_between_rounds(self, stop: asyncio.Event) -> None:
        if self.settings.mode != "sync":
            return
        # A drift reported during the round just closed still cuts the pause short; the
        # next round clears the request when it opens (_new_window).
        deadline = time.monotonic() + self.settings.round_interval_s
        while (not stop.is_set() and self._early_round_for is None and not self._stop_requested
               and self._rollback_to is None and (left := deadline - time.monotonic()) > 0):
            await self._wait_changed(left)
        if self._early_round_for is not None:
            log.info("opening the next round early: drift reported by %s",
                     self._early_round_for)

    def _new_window(self) -> Window | None:
        """The next round (sync) or buffer window (async), once enough agents are online
        and have new heats (or the schedule or a drift report says so); see trigger.py."""
        s = self.settings
        if self.paused:
            self._wait_s = None
            if self._waiting_why != "paused by an admin":
                log.info("next round waits: paused by an admin")
                self._waiting_why = "paused by an admin"
            return None
        now = time.time()
        online = self.registry.new_heats()
        decision = self.trigger.decide(
            online, min_agents=s.min_agents, now=now, last_opened=self._last_opened,
            early=self._early_round_for if s.mode == "sync" else None,
            improving=self.progress.improving(self.version, self.version - 1))
        selected = (self.selection.choose(online, self.rng, prefer=decision.fresh)
                    if decision.open else None)
        if selected is None:
            self._wait_s = decision.wait_s
            if decision.reason != self._waiting_why:
                log.info("next round waits: %s", decision.reason)
                self._waiting_why = decision.reason
            return None
        self._waiting_why, self._wait_s = "", None
        self._last_opened, self._early_round_for = now, None
        window_id, self.next_round_id = self.next_round_id, self.next_round_id + 1
        log.info("opening round %d: %s; selected %s", window_id, decision.reason,
                 ",".join(selected))
        window = self._make_window(s.mode, window_id, self.version, selected,
                                   time.time() + s.round_timeout_s)
        self.db.save_round(window_id, s.mode, self.version, "open", selected, time.time(),
                           self._deadline(window))
        return window

    def _resume_window(self) -> Window | None:
        """Reopen the round a restart interrupted, with the updates it had accepted."""
        left = self.db.open_round()
        if left is None:
            return None
        window_id, mode, base, selected, opened, deadline = left
        if self.db.version_of_round(window_id) is not None:  # aggregated, not yet marked
            self.db.save_round(window_id, mode, base, "closed", selected, opened, deadline,
                               time.time())
            return None
        if mode != self.settings.mode or (mode == "sync" and base != self.version):
            log.warning("round %d cannot be resumed (mode %s, base %d); abandoned",
                        window_id, mode, base)
            self.db.drop_pending(window_id)
            self.db.save_round(window_id, mode, base, "abandoned", selected, opened, deadline,
                               time.time())
            return None
        window = self._make_window(mode, window_id, base, selected, deadline)
        acc = self.strategy.open_round(self.weights)
        pending = self.db.pending_updates(window_id)
        for msg_id, agent, base_version, weight, payload in pending:
            update = body_of(decode(payload, UpdateBody, check_finite=False), UpdateBody)
            acc.add(_received(update), weight)
            window.accept(agent, msg_id, base_version)
        self.window, self._accumulator = window, acc
        log.info("resumed round %d with %d accepted updates", window_id, len(pending))
        return window

    def _make_window(self, mode: str, window_id: int, base: int, selected: list[str],
                     deadline: float) -> Window:
        s = self.settings
        if mode == "async":
            return AsyncWindow(window_id, base, s.buffer_k, s.max_staleness, self.staleness,
                               frozenset(selected))
        return SyncRound(window_id, base, frozenset(selected), min(s.min_agents, len(selected)),
                         deadline)

    @staticmethod
    def _deadline(window: Window) -> float:
        return window.deadline_ts if isinstance(window, SyncRound) else 0.0

    async def _run_window(self, window: Window) -> None:
        opened = time.time()
        if self.window is not window or self._accumulator is None:
            self._accumulator = self.strategy.open_round(self.weights)
        self.window = window
        await self._publish_task(window, "open")
        while (state := window.state(time.time())) is RoundState.OPEN:
            if self._rollback_to is not None:
                await self._abandon(window, opened, "a rollback was requested")
                return
            if isinstance(window, SyncRound):
                await self._wait_changed(max(0.0, window.deadline_ts - time.time()))
            else:
                await self._wait_changed(5.0)
                await self._refresh_async_selection(window)
        window.close()
        mode, selected = self.settings.mode, sorted(window.selected)
        if state is RoundState.FAILED:
            assert isinstance(window, SyncRound)
            log.warning("round %d failed: %d of quorum %d updates by the deadline; missing %s",
                        window.window_id, len(window.accepted), window.quorum, window.missing)
            self.db.drop_pending(window.window_id)
            self.db.save_round(window.window_id, mode, window.base_version, "failed", selected,
                               opened, self._deadline(window), time.time(),
                               window.contributors)
            self.stats.round_finished("failed", time.time() - opened)
            await self._publish_task(window, "closed")
            return
        await self._aggregate(window, opened)

    async def _abandon(self, window: Window, opened: float, why: str) -> None:
        """Close a window without aggregating; its accepted updates are forgotten."""
        window.close()
        log.warning("round %d abandoned: %s", window.window_id, why)
        self.db.drop_pending(window.window_id)
        self.db.save_round(window.window_id, self.settings.mode, window.base_version,
                           "abandoned", sorted(window.selected), opened,
                           self._deadline(window), time.time(), window.contributors)
        self.stats.round_finished("abandoned", time.time() - opened)
        await self._publish_task(window, "closed")

    async def _rollback(self, target: int) -> None:
        """Publish version ``target``'s weights as a new version, so every agent follows.

        Versions only ever increase: agents and consumers need no special case, and the
        history keeps both the bad version and the rollback.
        """
        self._rollback_to = None
        body = body_of(decode(self.db.load_payload(target), ModelBody), ModelBody)
        weights = {k: v.copy() for k, v in body.weights.items()}
        strategy = self._make_strategy()
        state = self.db.load_strategy_state(target)
        if state is not None:
            strategy.load_state_dict(unpack_state(state))
        version = self.version + 1
        metadata = {"strategy": strategy.name, "rollback_of": target}
        payload = await asyncio.to_thread(self._model_payload, weights, version, self.version,
                                          None, metadata)
        self.db.save_version(version, payload, round_id=None, parent=self.version,
                             metadata=metadata, strategy_state=pack_state(strategy.state_dict()))
        self.strategy, self.weights, self.version = strategy, weights, version
        self.model_payload = payload
        await self._publish_model()
        log.warning("rolled back to version %d, published as version %d", target, version)

    async def _publish_model(self) -> None:
        """The current version on ``model/current``, and the retained coordinator status
        that names it (admins and consumers read the version there)."""
        await self._publish(self.topics.model_current, self.model_payload, retain=True)
        self._published_at = time.monotonic()
        await self._publish(self.topics.coordinator_status, self._status("online"),
                            retain=True)

    async def _refresh_async_selection(self, window: AsyncWindow) -> None:
        """Async windows invite every online agent, including those that joined late."""
        online = frozenset(self.registry.online())
        if online and online != window.selected:
            window.selected = online
            await self._publish_task(window, "open")

    async def _aggregate(self, window: Window, opened: float) -> None:
        started = time.perf_counter()
        assert self._accumulator is not None
        new_weights = self._accumulator.finish()
        version = self.version + 1
        metadata: dict[str, object] = {
                    "strategy": self.strategy.name, "mode": self.settings.mode,
                    "contributors": window.contributors,
                    "stragglers": window.missing if isinstance(window, SyncRound) else []}
        if (self.settings.dp_clip_norm is not None
                and self.settings.dp_noise_multiplier is not None):
            self.privacy.record(window.contributors, self.settings.dp_noise_multiplier)
            metadata["dp"] = self.privacy.metadata(self.settings.dp_clip_norm,
                                                   self.settings.dp_noise_multiplier)
        payload = await asyncio.to_thread(self._model_payload, new_weights, version,
                                          self.version, window.window_id, metadata)
        self.db.save_version(version, payload, round_id=window.window_id, parent=self.version,
                             metadata=metadata,
                             strategy_state=pack_state(self.strategy.state_dict()))
        self.weights, self.version, self.model_payload = new_weights, version, payload
        self.db.save_round(window.window_id, self.settings.mode, window.base_version, "closed",
                           sorted(window.selected), opened, self._deadline(window), time.time(),
                           window.contributors)
        await self._publish_model()
        if isinstance(window, SyncRound):
            await self._publish_task(window, "closed")
        self.rounds_completed += 1
        self.stats.round_finished("closed", time.time() - opened)
        log.info(
            "round %d closed: %d updates from %s, version %d -> %d, %.1f s open, %.3f s to "
            "aggregate and publish, %d bytes", window.window_id, len(window.accepted),
            ",".join(window.contributors), version - 1, version, time.time() - opened,
            time.perf_counter() - started, len(payload))

    async def _publish_task(self, window: Window, state: Literal["open", "closed"]) -> None:
        s = self.settings
        body = TaskBody(
            round_id=window.window_id, state=state, mode=s.mode,
            base_version=window.base_version, deadline_ts=self._deadline(window),
            selected=sorted(window.selected), epochs=s.epochs, lr=s.lr,
            batch_size=s.batch_size, hyper=self.strategy.task_params(),
            update_codec=s.update_codec, update_topk_fraction=s.update_topk_fraction,
            dp_clip_norm=s.dp_clip_norm, dp_noise_multiplier=s.dp_noise_multiplier,
        )
        if self.signing_key is not None:
            body = sign_task(body, self.signing_key)
        await self._publish(self.topics.round_current, message(s.coordinator_id, body),
                            retain=True)
        if state == "open":  # with fresh rejection counts for `alchimia status`
            await self._publish(self.topics.coordinator_status, self._status("online"),
                                retain=True)

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self._client is None:
            raise aiomqtt.MqttError("not connected")
        if topic in (self.topics.model_current, self.topics.round_current):
            now = time.monotonic()
            for agent_id in self.registry.online():
                for leaf in self._EXPECT:
                    self.rate_limiter.credit(f"{agent_id}/{leaf}", ANSWER_CREDIT, now)
        await self._client.publish(topic, payload, qos=1, retain=retain)
