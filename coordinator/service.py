"""The coordinator process: MQTT I/O around the lifecycle state machine.

``coordinator.lifecycle`` decides everything about rounds, windows and versions without
I/O; this module keeps aiomqtt, the acknowledgements and the execution of the lifecycle's
commands, in order. One asyncio task receives messages, another drives rounds (ticks the
lifecycle at its next deadline or when a message changed something). Every message is
decoded and checked before it touches state; a bad one is logged with its reason and
dropped, so no input can stop the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Literal

import aiomqtt
import paho.mqtt.client as mqtt

from alchimia.broker.codec import DecodeError, Limits, unpack
from alchimia.broker.metrics_http import serve_metrics
from alchimia.broker.rejections import RejectionLog
from alchimia.broker.schemas import (
    MASKED_BYTES_PER_ELEMENT,
    AdminBody,
    Body,
    Envelope,
    MetricsBody,
    ModelBody,
    SchemaError,
    SecaggKeysBody,
    SecaggMaskedBody,
    SecaggRevealBody,
    SecaggSharesBody,
    StatusBody,
    UpdateBody,
    body_of,
    decode,
    message,
    validate,
)
from alchimia.broker.signing import load_private_key, sign_task
from alchimia.broker.topics import Topics
from alchimia.coordinator.group_commit import GroupCommit
from alchimia.coordinator.lifecycle import (
    BuildModel,
    Checkpoint,
    Command,
    DropPending,
    LeftOpen,
    Lifecycle,
    LoadVersion,
    PublishModel,
    PublishSecagg,
    PublishStatus,
    PublishTask,
    Reject,
    SaveAgent,
    SaveDrift,
    SavePaused,
    SaveRound,
    SaveUpdate,
    SaveValidation,
    SaveVersion,
    Stop,
    Store,
    Wake,
    strategy_from,
)
from alchimia.coordinator.metrics import CoordinatorCollector, CoordinatorStats
from alchimia.coordinator.persistence import CoordinatorDB
from alchimia.coordinator.privacy import PrivacyLedger
from alchimia.coordinator.publishing import initial_weights, model_message
from alchimia.coordinator.ratelimit import RateLimiter
from alchimia.coordinator.registry import Registry
from alchimia.coordinator.rounds import Window
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.coordinator.strategies import kernels
from alchimia.coordinator.strategy_state import unpack_state
from alchimia.coordinator.trigger import ValidationProgress
from alchimia.coordinator.web import serve_web
from alchimia.models.params import Weights
from alchimia.models.spec import ModelSpec

log = logging.getLogger("alchimia.coordinator")
SOFTWARE = "alchimia-coordinator/0.1"
# Messages of each kind (update, status, metrics) an agent may send in answer to one task
# or model the coordinator publishes (an update, statuses, validation and champion/
# challenger figures, the prequential report of the agent's next step), credited on top
# of its rate limit for that kind: they come as fast as rounds.
ANSWER_CREDIT = 5
# Room beside a secure round's masked input (16 bytes per shared element) in its message:
# the envelope, the other fields and up to 256 train metrics.
SECAGG_HEADROOM_BYTES = 64 * 1024
# Messages already received that the receiver handles after the one it awaited, before it
# lets the event loop run anything else (the round driver, the group commit): at ~0.2 ms
# each, a few ms.
RECEIVE_BATCH = 32


@dataclass(frozen=True)
class Rejection:
    sender: str
    topic: str
    reason: str
    code: str  # what it is counted under: Coordinator.rejection_log.counts


def _decode_code(exc: DecodeError) -> str:
    """``schema`` for a message that unpacked but breaks its schema, else ``malformed``."""
    return "schema" if isinstance(exc, SchemaError) else "malformed"


def _paho(client: aiomqtt.Client) -> mqtt.Client:
    """aiomqtt's paho client, for acknowledgements after handling: aiomqtt 2 has no API
    for them yet (its issue #345 gives this as the workaround; paho >= 2.0 has it)."""
    return client._client


def _inbox(client: aiomqtt.Client) -> asyncio.Queue[aiomqtt.Message]:
    """aiomqtt's queue of received messages, to take the ones already there at once:
    ``client.messages`` starts a task and an ``asyncio.wait`` for each message, a round
    trip through the event loop that cost more than handling a small update (aiomqtt 2
    has no API to take what is queued)."""
    return client._queue


def _read_one(paho: mqtt.Client) -> None:
    """Read what the socket holds now, one packet at most, as aiomqtt's reader does once
    per wake-up of the event loop (a message goes to ``_inbox``). A connection lost while
    reading is reported as by that reader: an ``MqttError``."""
    try:
        paho.loop_read()
    except Exception as exc:
        raise aiomqtt.MqttError(f"reading from the broker failed: {exc}") from exc


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
        self.signing_key = (
            load_private_key(settings.model_signing_key) if settings.model_signing_key else None
        )
        self.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        registry = Registry()
        for info in self.db.agents():
            info.online = False  # retained births re-announce who is online
            registry.update(info)
        self.changed = asyncio.Event()
        self.rejections: list[Rejection] = []
        # Every rejection counted by reason code (docs/PROTOCOL.md, "Rejections").
        self.rejection_log = RejectionLog(log)
        self._rejected_by_sender: dict[str, int] = {}
        self._client: aiomqtt.Client | None = None
        self._stop = asyncio.Event()  # run's
        # Commands the round driver has yet to execute, in order; one a reconnect
        # interrupted (a publication, a model being built) is executed again first.
        self._outbox: deque[Command] = deque()
        self._driver_waits = False  # the round driver awaits an event or its deadline
        self._driver_deadline: float | None = None  # the deadline it waits for then
        current = self._restore_or_initialise()
        self.lifecycle = Lifecycle(
            settings,
            current,
            registry=registry,
            progress=ValidationProgress(
                self.spec.targets, self.spec.y_scale, settings.min_improvement
            ),
            # Differential privacy: updates each agent sent, from the stored versions.
            privacy=PrivacyLedger.replay(
                settings.dp_delta, (md for _, _, _, md in self.db.versions())
            ),
            next_round_id=(self.db.last_round_id() or 0) + 1,
            paused=self.db.flag("paused") is not None,
            now=time.time(),
        )
        for command in self.lifecycle.resume(self._left_open(), time.time()):
            self._store(command, "")
        # An update carries the shared part: it may decode to no more (a top-k tensor's
        # bytes do not bound the shape it declares).
        sizes = [math.prod(s) for s in self.spec.parameter_shapes("shared").values()]
        self.limits = Limits(
            max_message_bytes=settings.max_update_bytes,
            max_tensor_elements=max(sizes),
            max_total_elements=sum(sizes),
        )
        # A secure round's masked input is 16 bytes a shared element, four times a raw
        # update: its messages may be that much larger (and never less than any other).
        self.secagg_limits = Limits(
            max_message_bytes=max(
                settings.max_update_bytes,
                MASKED_BYTES_PER_ELEMENT * sum(sizes) + SECAGG_HEADROOM_BYTES,
            ),
            max_tensor_elements=max(sizes),
            max_total_elements=sum(sizes),
        )

    # -- state
    def _restore_or_initialise(self) -> Checkpoint:
        strategy = strategy_from(self.settings)
        latest = self.db.latest_version()
        if latest is None:
            self.spec = ModelSpec(
                architecture=self.settings.architecture,
                # None: the architecture's default (ModelSpec validates)
                hidden=self.settings.hidden,  # type: ignore[arg-type]
            )
            weights = initial_weights(self.spec, self.settings.seed)
            payload = self._model_payload(weights, 0, None, None, {"initial": True})
            self.db.save_version(0, payload, round_id=None, parent=None, metadata={"initial": True})
            log.info("initialised model version 0 in %s", self.settings.state_dir)
            return Checkpoint(0, weights, payload, strategy)
        payload = self.db.load_payload(latest)
        body = body_of(decode(payload, ModelBody), ModelBody)
        self.spec = ModelSpec.model_validate(body.spec)
        state = self.db.load_strategy_state(latest)
        if state is not None:
            strategy.load_state_dict(unpack_state(state))
        log.info("resumed at model version %d from %s", latest, self.settings.state_dir)
        return Checkpoint(latest, {k: v.copy() for k, v in body.weights.items()}, payload, strategy)

    def _left_open(self) -> LeftOpen | None:
        """The round a restart interrupted, as the database has it."""
        left = self.db.open_round()
        if left is None:
            return None
        round_id, mode, base, selected, opened, deadline = left
        aggregated = self.db.version_of_round(round_id) is not None
        return LeftOpen(
            round_id,
            mode,
            base,
            selected,
            opened,
            deadline,
            aggregated,
            [] if aggregated else self.db.pending_updates(round_id),
        )

    def _model_payload(
        self,
        weights: Weights,
        version: int,
        parent: int | None,
        round_id: int | None,
        metadata: dict,
    ) -> bytes:
        return model_message(
            self.settings.coordinator_id,
            self.spec,
            weights,
            version=version,
            parent=parent,
            round_id=round_id,
            metadata=metadata,
            signing_key=self.signing_key,
        )

    # What the web page, the metrics and tests read: the lifecycle's.
    @property
    def version(self) -> int:
        return self.lifecycle.version

    @property
    def weights(self) -> Weights:
        return self.lifecycle.weights

    @property
    def window(self) -> Window | None:
        return self.lifecycle.window

    @property
    def registry(self) -> Registry:
        return self.lifecycle.registry

    @property
    def stats(self) -> CoordinatorStats:
        return self.lifecycle.stats

    @property
    def privacy(self) -> PrivacyLedger:
        return self.lifecycle.privacy

    @property
    def paused(self) -> bool:
        return self.lifecycle.paused

    @property
    def next_round_id(self) -> int:
        return self.lifecycle.next_round_id

    @property
    def activity(self) -> Literal["running", "paused", "stopping"]:
        return self.lifecycle.activity

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        # Messages rejected per known agent: `alchimia status` shows them.
        rejected = {
            a.agent_id: n
            for a in self.registry.all()
            if (n := self._rejected_by_sender.get(a.agent_id))
        }
        return message(
            self.settings.coordinator_id,
            StatusBody(
                role="coordinator",
                state=state,
                software=SOFTWARE,
                model_version=self.version,
                rejected=rejected,
                activity=self.activity,
            ),
        )

    # -- I/O
    @property
    def _client_id(self) -> str:
        return f"{self.settings.federation}-{self.settings.coordinator_id}"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set or the configured number of rounds is done (and
        Prometheus metrics and the admin web page meanwhile, if ``metrics_port`` and
        ``web_port`` are set)."""
        stop = self._stop = stop or asyncio.Event()
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
            will = aiomqtt.Will(
                self.topics.coordinator_status, self._status("offline"), qos=1, retain=True
            )
            try:
                # A persistent session (clean_session=False) and acknowledgements sent only
                # after a message is handled: while the coordinator is down or restarting
                # the broker keeps the updates sent to it, and one it received but had not
                # handled (and saved) yet is delivered again. An agent sends each update
                # once, so otherwise a restart would lose it.
                client = aiomqtt.Client(
                    host,
                    port,
                    identifier=self._client_id,
                    clean_session=False,
                    username=self.settings.username,
                    password=self.settings.password,
                    keepalive=self.settings.keepalive,
                    will=will,
                    tls_context=self.settings.tls_context(),
                )
                _paho(client).manual_ack_set(True)
                async with client:
                    self._client = client
                    self._client_never_connected = False
                    delay = 1.0
                    await self._announce(client)
                    await self._serve(client, stop)
                    await client.publish(
                        self.topics.coordinator_status, self._status("offline"), qos=1, retain=True
                    )
            except aiomqtt.MqttError as exc:
                if stop.is_set():
                    break
                why = (
                    await asyncio.to_thread(self.settings.diagnose_connection)
                    if self._client_never_connected
                    else str(exc)
                )
                log.warning("broker connection failed (%s); retrying in %.0f s", why, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                self._client = None

    async def _announce(self, client: aiomqtt.Client) -> None:
        # QoS 1 only where the broker should keep messages while the coordinator is away
        # (updates, admin commands): queued statuses and metrics would only crowd the
        # session's queue, and the retained statuses come again with every subscribe.
        granted = await client.subscribe(
            [
                (self.topics.all_agents("update"), 1),
                (self.topics.coordinator_admin, 1),
                # Secure rounds: kept while away and acknowledged after handling, as updates.
                (self.topics.all_agents("secagg"), 1),
                (self.topics.all_agents("status"), 0),
                (self.topics.all_agents("metrics"), 0),
            ]
        )
        if not granted or not 1 <= _qos(granted[0]) <= 2:
            log.warning(
                "the broker granted QoS %s, not 1, for agents' updates: updates sent "
                "while the coordinator is away will be lost",
                granted[:1],
            )
        # Status, model and open task; then what a lost connection left unexecuted.
        await self._execute(self.lifecycle.announce())
        log.info(
            "coordinator %s online, federation %s, model version %d",
            self.settings.coordinator_id,
            self.settings.federation,
            self.version,
        )

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        acks = GroupCommit(self.db, _paho(client))
        tasks = [
            asyncio.create_task(self._receive(client, acks)),
            asyncio.create_task(acks.run()),
            asyncio.create_task(self._drive_rounds()),
        ]
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
        """Handle each message in the order received; after each one awaited, those that
        already arrived, up to ``RECEIVE_BATCH``, in the same step of this task: one event
        loop round trip, one round driver's tick and one group commit's wake-up for the
        batch, not for each message."""
        paho, inbox = _paho(client), _inbox(client)
        async for msg in client.messages:
            self._receive_one(msg, acks)
            for _ in range(RECEIVE_BATCH):
                if not self._tick_between():
                    break
                if inbox.empty():
                    _read_one(paho)
                    if inbox.empty():
                        break
                self._receive_one(inbox.get_nowait(), acks)
            self.rejection_log.tick()  # a flood that stopped is summed up

    def _tick_between(self) -> bool:
        """Between two messages of a batch, what the round driver would do between them:
        if a message changed something while the driver waits, tick the lifecycle in its
        stead (a full async window is aggregated before the next update, as when each
        message took its own step). Whether the batch may go on: not if the tick answered
        commands, which the driver executes (from the outbox) before the next message."""
        if not (self.changed.is_set() and self._driver_waits):
            return True
        self.changed.clear()
        commands = self.lifecycle.tick(time.time())
        if commands:
            self._outbox.extend(commands)
        elif self.lifecycle.next_deadline() == self._driver_deadline:
            return True
        # Commands to execute, or a deadline other than the one the driver waits for (a
        # status showed an agent behind, say): the driver must wake and look again.
        self.changed.set()
        return False

    def _receive_one(self, msg: aiomqtt.Message, acks: GroupCommit) -> None:
        """Handle one message and hand it to ``acks`` (acknowledged once durable)."""
        topic = msg.topic.value
        try:
            self.handle(topic, bytes(msg.payload))
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
            self._reject(
                agent_id, topic, "unread_topic", f"the coordinator does not read {leaf} messages"
            )
            return
        expect = self._EXPECT[leaf]
        try:
            if isinstance(expect, tuple):
                env = self._decode_one_of(payload, expect, self.secagg_limits)
            else:
                # NaN/inf in deltas are caught by the accumulator's norm pass: no second scan.
                env = decode(payload, expect, self.limits, check_finite=False)
        except DecodeError as exc:
            self._reject(agent_id, topic, _decode_code(exc), str(exc))
            return
        if env.sender != agent_id:
            self._reject(
                agent_id, topic, "wrong_sender", f"sender {env.sender!r} does not match topic"
            )
            return
        now = time.time()
        if leaf == "status":
            commands = self.lifecycle.on_status(env, now)
        elif leaf == "metrics":
            commands = self.lifecycle.on_metrics(env, now)
        elif leaf == "secagg":
            commands = self.lifecycle.on_secagg(env, now)
        else:
            commands = self.lifecycle.on_update(env, payload, self.db.seen(env.msg_id))
        for command in commands:
            self._store(command, topic)

    # The kinds read on each agent leaf; the leaves are those credited for answers
    # (ANSWER_CREDIT: a secure round's four secagg messages answer its task).
    _EXPECT: ClassVar[dict[str, type[Body] | tuple[type[Body], ...]]] = {
        "status": StatusBody,
        "update": UpdateBody,
        "metrics": MetricsBody,
        "secagg": (SecaggKeysBody, SecaggSharesBody, SecaggMaskedBody, SecaggRevealBody),
    }

    @staticmethod
    def _decode_one_of(payload: bytes, kinds: tuple[type[Body], ...], limits: Limits) -> Envelope:
        """``decode`` for a leaf that carries several kinds: the kind is checked before its
        body is validated."""
        raw = unpack(payload, limits)
        kind = raw.get("kind")
        expect = next((k for k in kinds if k.kind == kind), None)
        if expect is None:
            raise DecodeError(
                f"expected a {', '.join(k.kind for k in kinds)} message, got {kind!r}"
            )
        return validate(raw, expect, limits)

    def _on_admin(self, topic: str, payload: bytes) -> None:
        try:
            env = decode(payload, AdminBody, self.limits)
        except DecodeError as exc:
            self._reject("admin", topic, _decode_code(exc), str(exc))
            return
        body = body_of(env, AdminBody)
        exists = body.version is not None and self.db.model_path(body.version).exists()
        for command in self.lifecycle.on_admin(env, exists):
            self._store(command, topic)

    def _reject(self, sender: str, topic: str, code: str, reason: str) -> None:
        """Count a dropped message under ``code`` and log why (``broker.rejections``: a
        flood gets a few escaped lines per reason and a summary a minute, not thousands)."""
        count = self._rejected_by_sender[sender] = self._rejected_by_sender.get(sender, 0) + 1
        self.rejection_log.reject(
            code,
            "rejected message from %s on %s: %s: %s (%d from this sender)",
            sender,
            topic,
            code,
            reason,
            count,
        )
        self.rejections.append(Rejection(sender, topic, reason, code))
        self.stats.message_rejected(topic, code)
        del self.rejections[:-1000]  # keep the recent ones for admins and tests
        if len(self._rejected_by_sender) > 100_000:
            self._rejected_by_sender.clear()

    # -- executing the lifecycle's commands
    def _store(self, command: Store, topic: str) -> None:
        """Execute a command answered to a message (no awaits: before its acknowledgement)."""
        db = self.db
        match command:
            case SaveUpdate():
                db.accept_update(
                    command.msg_id,
                    command.agent_id,
                    command.round_id,
                    command.base_version,
                    command.weight,
                    command.payload,
                )
                for follow in self.lifecycle.update_saved(command):
                    self._store(follow, topic)
            case SaveAgent(info):
                db.save_agent(info)
            case SaveValidation(version, agent_id, ts, values):
                db.save_validation(version, agent_id, ts, values)
            case SaveDrift(ts, agent_id, version, values):
                db.save_drift(ts, agent_id, version, values)
            case SavePaused(paused):
                db.set_flag("paused", "1" if paused else None)
            case SaveRound():
                db.save_round(
                    command.round_id,
                    command.mode,
                    command.base_version,
                    command.state,
                    command.selected,
                    command.opened_ts,
                    command.deadline_ts,
                    command.closed_ts,
                    command.accepted,
                )
            case DropPending(round_id):
                db.drop_pending(round_id)
            case SaveVersion():
                db.save_version(
                    command.version,
                    command.payload,
                    round_id=command.round_id,
                    parent=command.parent,
                    metadata=command.metadata,
                    strategy_state=command.strategy_state,
                )
            case Reject(sender, code, reason):
                self._reject(sender, topic, code, reason)
            case Wake():
                self.changed.set()

    async def _execute(self, commands: list[Command]) -> None:
        """Execute ``commands`` in order, then any left by an interrupted run; what a command
        answers comes before the rest. A command is done once it returned: one a
        cancellation interrupts stays first in the outbox, for the next connection."""
        self._outbox.extendleft(reversed(commands))
        while self._outbox:
            command = self._outbox[0]
            follow: list[Command] = []
            match command:
                case PublishModel(payload):
                    await self._publish(self.topics.model_current, payload, retain=True)
                case PublishStatus():
                    await self._publish(
                        self.topics.coordinator_status, self._status("online"), retain=True
                    )
                case PublishSecagg(body, agent_id):
                    await self._publish(
                        self.topics.round_secagg
                        if agent_id is None
                        else self.topics.round_secagg_inbox(agent_id),
                        message(self.settings.coordinator_id, body),
                    )
                case PublishTask(task):
                    if self.signing_key is not None:
                        task = sign_task(task, self.signing_key)
                    await self._publish(
                        self.topics.round_current,
                        message(self.settings.coordinator_id, task),
                        retain=True,
                    )
                case BuildModel():
                    payload = await asyncio.to_thread(
                        self._model_payload,
                        command.weights,
                        command.version,
                        command.parent,
                        command.round_id,
                        command.metadata,
                    )
                    follow = self.lifecycle.on_built(command, payload, time.time())
                case LoadVersion(version):
                    follow = self.lifecycle.on_loaded(
                        version,
                        self.db.load_payload(version),
                        self.db.load_strategy_state(version),
                        time.time(),
                    )
                case Stop():
                    self._stop.set()
                case _:
                    self._store(command, "")
            self._outbox.popleft()
            self._outbox.extendleft(reversed(follow))

    async def _drive_rounds(self) -> None:
        """Tick the lifecycle and execute what it answers; between ticks, wait for an event
        (a message that changed something) or its next deadline: nothing polls."""
        while not self._stop.is_set():
            # On Python 3.11 asyncio.wait_for swallows a cancellation that arrives as its
            # awaitable completes (aiomqtt's publish awaits its PUBACK that way): the round
            # driver then outlived its session and a stop hung. A task being cancelled
            # stops here whatever swallowed the CancelledError on the way.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            # Cleared before the tick: an event during the commands wakes the next wait.
            self.changed.clear()
            # Commands the receiver's tick left (``_tick_between``) come first, untouched.
            commands = [] if self._outbox else self.lifecycle.tick(time.time())
            if commands or self._outbox:
                await self._execute(commands)
                continue
            deadline = self._driver_deadline = self.lifecycle.next_deadline()
            self._driver_waits = True
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(
                        None if deadline is None else max(0.0, deadline - time.time())
                    ):
                        await self.changed.wait()
            finally:
                self._driver_waits = False

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self._client is None:
            raise aiomqtt.MqttError("not connected")
        if topic in (self.topics.model_current, self.topics.round_current):
            now = time.monotonic()
            for agent_id in self.registry.online():
                for leaf in self._EXPECT:
                    self.rate_limiter.credit(f"{agent_id}/{leaf}", ANSWER_CREDIT, now)
        await self._client.publish(topic, payload, qos=1, retain=retain)
