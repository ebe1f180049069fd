"""The coordinator's round and window lifecycle as a state machine without I/O, as h11 is
for HTTP.

:class:`Lifecycle` takes events (an agent's status, metrics or update, an admin command,
``tick(now)``, the result of a command it asked for) and answers with commands
(:data:`Command`): what to save, publish or build, in the order to do it. It never reads a
clock, a file or the network; ``coordinator.service`` receives the messages, feeds them
in and executes the commands in order. Tests drive it with a fake clock.

Commands of the :data:`Store` kind are answered to message events and are executed at once,
before the message is acknowledged; an accepted update's :class:`SaveUpdate` is answered by
``update_saved`` once it is staged, and only then does the window count it. ``tick`` may
answer any command: a :class:`BuildModel` (ONNX export, checked and signed: heavy) is
answered by ``on_built``, a :class:`LoadVersion` (a rollback's target) by ``on_loaded``.
``next_deadline`` says when ``tick`` has something to do without a new event.

Secure rounds (``secure_aggregation``; docs/PROTOCOL.md, "Secure aggregation (sync
rounds)"): each sync round gets a ``coordinator.secure_round.SecureRound`` and its task says
``secure_aggregation: true``. ``on_secagg`` hands the agents' ``secagg_*`` messages to it
(a refusal is a :class:`Reject`); what it publishes comes out of ``tick`` as
:class:`PublishSecagg`, and its sum is merged into the round's accumulator
(``coordinator.hierarchical.merge_partial``) and built as any round's. Durability: nothing
of a secure round but its row is saved. Its masked inputs are not staged as updates are:
they are useless without the reveals and the session's keys, which live in memory only,
so a restart cannot finish the round anyway; ``resume`` closes a secure round a restart
interrupted as failed, and the next round opens as usual.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from alchimia.broker.schemas import (
    MAX_ROSTER,
    AdminBody,
    Envelope,
    MetricsBody,
    ModelBody,
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
    body_of,
    decode,
)
from alchimia.coordinator.fedbuff import AsyncWindow
from alchimia.coordinator.metrics import CoordinatorStats
from alchimia.coordinator.privacy import PrivacyLedger
from alchimia.coordinator.registry import AgentInfo, Registry
from alchimia.coordinator.rounds import Refusal, RoundState, Selection, SyncRound, Window
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.coordinator.staleness import make_staleness
from alchimia.coordinator.strategies import Accumulator, Strategy, make_strategy
from alchimia.coordinator.strategy_state import pack_state, unpack_state
from alchimia.coordinator.trigger import RoundTrigger, ValidationProgress
from alchimia.models.params import Weights

if TYPE_CHECKING:  # imported when a secure round opens (the cryptography libraries)
    from alchimia.coordinator.secure_round import SecureCommand, SecureRound

log = logging.getLogger("alchimia.coordinator")
# Agents left on an older version than ours are looked at this long after a version was
# published (agents adopt within a second); the model is republished at most this often.
BEHIND_AFTER_S = 10.0
REPUBLISH_EVERY_S = 5.0


def _received(body: UpdateBody) -> Weights:
    """The delta of a decoded update: decoding makes every tensor an array (``Encoded``
    values exist only on the sending side, before encoding)."""
    return cast(Weights, body.delta)


# -- commands executed in order by the service, at once (Store) ...
@dataclass(frozen=True)
class SaveUpdate:
    """Stage an accepted update (``CoordinatorDB.accept_update``); then ``update_saved``."""

    msg_id: str
    agent_id: str
    round_id: int
    base_version: int
    weight: float
    payload: bytes


@dataclass(frozen=True)
class SaveAgent:
    info: AgentInfo


@dataclass(frozen=True)
class SaveValidation:
    version: int
    agent_id: str
    ts: float
    values: dict[str, float]


@dataclass(frozen=True)
class SaveDrift:
    ts: float
    agent_id: str
    version: int | None
    values: dict[str, float]


@dataclass(frozen=True)
class SavePaused:
    """Keep an admin's pause (or its end) across restarts."""

    paused: bool


@dataclass(frozen=True)
class SaveRound:
    """A round's row (``CoordinatorDB.save_round``)."""

    round_id: int
    mode: str
    base_version: int
    state: str
    selected: list[str]
    opened_ts: float
    deadline_ts: float
    closed_ts: float | None = None
    accepted: list[str] | None = None


@dataclass(frozen=True)
class DropPending:
    """Forget the staged updates of a round that will never be aggregated."""

    round_id: int


@dataclass(frozen=True)
class SaveVersion:
    """A new model version, durable before it is published."""

    version: int
    payload: bytes
    round_id: int | None
    parent: int
    metadata: dict
    strategy_state: bytes


@dataclass(frozen=True)
class Reject:
    """Count and log a dropped message (the service knows its topic)."""

    sender: str
    code: str
    reason: str


@dataclass(frozen=True)
class Wake:
    """Something changed that ``tick`` may act on: tick soon."""


Store = (
    SaveUpdate
    | SaveAgent
    | SaveValidation
    | SaveDrift
    | SavePaused
    | SaveRound
    | DropPending
    | SaveVersion
    | Reject
    | Wake
)


# -- ... and those only ``tick`` and command results answer (they may await)
@dataclass(frozen=True)
class PublishModel:
    """The current version on ``model/current`` (retained)."""

    payload: bytes


@dataclass(frozen=True)
class PublishStatus:
    """The coordinator's retained ``online`` status, as it is now."""


@dataclass(frozen=True)
class PublishTask:
    """A task on ``round/current`` (retained), for the service to sign and send."""

    task: TaskBody


@dataclass(frozen=True)
class PublishSecagg:
    """A secure round's message to its agents, QoS 1, not retained: on ``round/secagg``
    (``agent_id`` None: the roster, the unmask) or on ``round/secagg/{agent_id}`` (an
    inbox, for that agent only)."""

    body: SecaggRosterBody | SecaggInboxBody | SecaggUnmaskBody
    agent_id: str | None = None


@dataclass(frozen=True)
class BuildModel:
    """Turn weights into the model message (ONNX, checked, signed); then ``on_built``."""

    weights: Weights
    version: int
    parent: int
    round_id: int | None
    metadata: dict


@dataclass(frozen=True)
class LoadVersion:
    """Read a stored version and its strategy state; then ``on_loaded``."""

    version: int


@dataclass(frozen=True)
class Stop:
    """Stop serving: the configured rounds are done, or an admin asked."""


Command = (
    Store
    | PublishModel
    | PublishStatus
    | PublishTask
    | PublishSecagg
    | BuildModel
    | LoadVersion
    | Stop
)


def strategy_from(settings: CoordinatorSettings) -> Strategy:
    params = dict(settings.strategy_params)
    if settings.clip_norm is not None:
        params["clip_norm"] = settings.clip_norm
    return make_strategy(settings.strategy, **params)


@dataclass(frozen=True)
class Checkpoint:
    """The current model version: what the coordinator starts from and publishes."""

    version: int
    weights: Weights
    payload: bytes
    strategy: Strategy


@dataclass(frozen=True)
class LeftOpen:
    """A round a restart interrupted, as the database has it, with its staged updates
    ``(msg_id, agent, base_version, weight, payload)``."""

    round_id: int
    mode: str
    base_version: int
    selected: list[str]
    opened_ts: float
    deadline_ts: float
    aggregated: bool  # its version exists: only its row was not closed yet
    pending: list[tuple[str, str, int, float, bytes]]

    def row(self, state: str, closed_ts: float) -> SaveRound:
        """Its row, left ``state`` at ``closed_ts``."""
        return SaveRound(
            self.round_id,
            self.mode,
            self.base_version,
            state,
            self.selected,
            self.opened_ts,
            self.deadline_ts,
            closed_ts,
        )


@dataclass
class _Building:
    """A version being built: what becomes current once its payload is back."""

    weights: Weights
    strategy: Strategy
    version: int
    window: Window | None  # None: a rollback
    started: float


class Lifecycle:
    def __init__(
        self,
        settings: CoordinatorSettings,
        current: Checkpoint,
        *,
        registry: Registry,
        progress: ValidationProgress,
        next_round_id: int,
        paused: bool,
        now: float,
        privacy: PrivacyLedger | None = None,
    ) -> None:
        s = self.settings = settings
        self.registry, self.progress = registry, progress
        # Differential privacy: updates each agent sent (the service replays the stored
        # versions' metadata; none: a ledger from nothing).
        self.privacy = PrivacyLedger(s.dp_delta) if privacy is None else privacy
        self.version, self.weights = current.version, current.weights
        self.model_payload, self.strategy = current.payload, current.strategy
        self.next_round_id = next_round_id
        self.paused = paused
        self.stats = CoordinatorStats()  # for Prometheus (coordinator.metrics)
        self.rounds_completed = 0
        max_agents = s.max_agents
        if s.secure_aggregation:  # a roster holds at most MAX_ROSTER agents
            max_agents = min(max_agents or MAX_ROSTER, MAX_ROSTER)
        self.selection = Selection(
            fraction=s.fraction, min_agents=s.min_agents, max_agents=max_agents
        )
        self.trigger = RoundTrigger(s.min_new_heats, s.round_schedule_s)
        self.staleness: Callable[[int], float] = make_staleness(s.staleness, **s.staleness_params)
        self.rng = random.Random(s.seed)
        self.window: Window | None = None
        self._accumulator: Accumulator | None = None
        # The open window's secure session (secure_aggregation), and what its events
        # answered for the next tick to publish (or finish).
        self._secure: SecureRound | None = None
        self._secure_out: list[SecureCommand] = []
        # A secure round a restart interrupted, failed by ``resume``: ``announce`` closes
        # its task until the next round opens.
        self._failed_on_resume: Window | None = None
        self._opened = now  # when the window opened
        # Every online agent was selected for the open round: its task says selected_all
        # instead of listing them (70 kB at 10,000 agents, sent to each of them).
        self._all_selected = False
        self._building: _Building | None = None  # a BuildModel is out
        self._loading = False  # a LoadVersion is out
        self._pause_until: float | None = None  # sync: the pause between rounds
        self._rollback_to: int | None = None
        self._early_round_for: str | None = None
        self._last_opened = now  # the schedule counts from here, then each round
        self._due: float | None = None  # when the schedule is due, while waiting for it
        self._waiting_why = ""
        self._stop_requested = self._stopped = False
        self._status_due = False
        # Agents left on an older version than ours (one that joined while the broker held
        # a replayed model), or a replay reported: republish.
        self._replay_reported = False
        self._published_at = self._republished = float("-inf")
        # The online agents on an older version than ours, kept as statuses arrive and
        # recounted at each publish: next_deadline runs after every message, so it must
        # not scan every agent.
        self._behind: set[str] = set()

    @property
    def activity(self) -> Literal["running", "paused", "stopping"]:
        return "stopping" if self._stop_requested else "paused" if self.paused else "running"

    @property
    def open_window(self) -> Window | None:
        return self.window if self.window is not None and not self.window.closed else None

    # -- start and (re)connection
    def resume(self, left: LeftOpen | None, now: float) -> list[Store]:
        """Reopen the round a restart interrupted, with the updates it had accepted; a
        secure round is closed as failed instead (its secrets were in memory only)."""
        if left is None:
            return []
        if left.aggregated:
            return [left.row("closed", now)]
        if self.settings.secure_aggregation and left.mode == "sync":
            # The rounds table does not say whether a round was secure: with secure
            # aggregation on, every sync round is (rounds opened before it was turned
            # on included: failing one costs a round, resuming it in the clear could
            # not be told apart from a secure one).
            log.warning(
                "round %d was a secure round: its keys and shares were in memory only, "
                "so it cannot be resumed; closed as failed",
                left.round_id,
            )
            self._failed_on_resume = self._make_window(
                left.round_id, left.base_version, left.selected, left.deadline_ts
            )
            return [DropPending(left.round_id), left.row("failed", now)]
        if left.mode != self.settings.mode or (
            left.mode == "sync" and left.base_version != self.version
        ):
            log.warning(
                "round %d cannot be resumed (mode %s, base %d); abandoned",
                left.round_id,
                left.mode,
                left.base_version,
            )
            return [DropPending(left.round_id), left.row("abandoned", now)]
        window = self._make_window(
            left.round_id, left.base_version, left.selected, left.deadline_ts
        )
        acc = self.strategy.open_round(self.weights)
        for msg_id, agent, base_version, weight, payload in left.pending:
            update = body_of(decode(payload, UpdateBody, check_finite=False), UpdateBody)
            acc.add(_received(update), weight)
            window.accept(agent, msg_id, base_version)
        self.window, self._accumulator, self._opened = window, acc, now
        log.info("resumed round %d with %d accepted updates", left.round_id, len(left.pending))
        return []

    def announce(self) -> list[Command]:
        """What a (re)connection publishes: status, model, and the open task."""
        out: list[Command] = [PublishStatus(), PublishModel(self.model_payload)]
        if (window := self.open_window) is not None:
            out += self._task(window, "open")
        elif self._failed_on_resume is not None:  # its agents stop waiting for it
            out += self._task(self._failed_on_resume, "closed")
        return out

    # -- message events
    def on_status(self, env: Envelope, now: float) -> list[Store]:
        body = body_of(env, StatusBody)
        if body.role != "agent":
            return []
        info = AgentInfo(
            env.sender,
            body.state == "online",
            body.samples,
            body.software,
            now,
            body.new_heats,
            env.ts,
            body.model_version,
        )
        if self.registry.update(info):
            log.info("agent %s is %s", env.sender, body.state)
        if info.online and info.model_version is not None and info.model_version < self.version:
            self._behind.add(info.agent_id)
        else:
            self._behind.discard(info.agent_id)
        return [SaveAgent(info), Wake()]

    def on_metrics(self, env: Envelope, now: float) -> list[Store]:
        """Validation figures and drift reports are kept (the web page); a drift report
        asks for an early round (sync mode; async windows never pause)."""
        body = body_of(env, MetricsBody)
        out: list[Store] = []
        if body.scope == "validation" and body.model_version is not None:
            self.progress.report(body.model_version, env.sender, body.values)
            if body.model_version <= self.version:  # kept for the web page, per version
                out.append(SaveValidation(body.model_version, env.sender, now, dict(body.values)))
            out.append(Wake())  # may decide the next round (trigger.py)
        if body.scope == "model_rejected" and (body.model_version or 0) < self.version:
            # Someone replayed an older model on model/current: retained, it would be
            # the first thing every agent that connects from now on is handed.
            self._replay_reported = True
            out.append(Wake())
        if body.scope == "drift":
            log.warning("agent %s reports drift: %s", env.sender, dict(body.values))
            self._early_round_for = env.sender
            out += [SaveDrift(now, env.sender, body.model_version, dict(body.values)), Wake()]
        return out

    def on_admin(self, env: Envelope, version_exists: bool) -> list[Store]:
        """``version_exists``: whether a rollback's target can be loaded."""
        body = body_of(env, AdminBody)
        out: list[Store] = []
        if body.action == "rollback":
            assert body.version is not None  # the schema requires it
            if not version_exists:
                return [
                    Reject(
                        env.sender,
                        "unknown_version",
                        f"no model version {body.version} to roll back to",
                    )
                ]
            log.warning("admin %s asked to roll back to version %d", env.sender, body.version)
            self._rollback_to = body.version
        else:
            log.warning("admin %s asked the coordinator to %s", env.sender, body.action)
            if body.action in ("pause", "resume"):
                self.paused = body.action == "pause"
                out.append(SavePaused(self.paused))
            else:
                self._stop_requested = True
            self._status_due = True  # the admin's confirmation
        return [*out, Wake()]

    def on_update(self, env: Envelope, payload: bytes, replayed: bool) -> list[Store]:
        """``replayed``: an update with this message id was accepted before."""
        body = body_of(env, UpdateBody)
        if replayed:
            return [Reject(env.sender, "replayed", f"message {env.msg_id} replayed")]
        # Sent means learned, accepted or not: the agent counts its new heats from here.
        self.registry.update_sent(env.sender, env.ts)
        window, acc = self.window, self._accumulator
        if window is None or acc is None:
            return [Reject(env.sender, "no_round", "no round is open")]
        if self._secure is not None and body.round_id == self._secure.round_id:
            return [
                Reject(
                    env.sender,
                    "secagg_unexpected",
                    f"round {body.round_id} is a secure round: an update comes as "
                    "secagg_masked, not in the clear",
                )
            ]
        reason = window.check(env.sender, body.round_id, body.base_version)
        weight = window.weight(body.base_version, body.num_samples)
        if reason is None:
            try:
                acc.add(_received(body), weight)
            except ValueError as exc:
                reason = Refusal("bad_delta", str(exc))
        if reason is not None:
            return [Reject(env.sender, reason.code, reason)]
        return [
            SaveUpdate(env.msg_id, env.sender, window.window_id, body.base_version, weight, payload)
        ]

    def on_secagg(self, env: Envelope, now: float) -> list[Store]:
        """An agent's ``secagg_*`` message (keys, shares, masked input, reveal) for the open
        secure round's session: a :class:`Reject` if it refuses it (``secagg_unexpected``,
        ``bad_masked``); what it answers (publications, the sum) waits for ``tick``
        (``Wake``). A masked input counts the agent's heats as learned, taken or not, as
        an update does; a taken one counts as the round's update from that agent."""
        body, sender = env.body, env.sender
        if isinstance(body, SecaggMaskedBody):
            self.registry.update_sent(sender, env.ts)
        session = self._secure
        if session is None:
            return [Reject(sender, "secagg_unexpected", f"{env.kind}: no secure round is open")]
        if isinstance(body, SecaggKeysBody):
            answer = session.on_keys(sender, body, now)
        elif isinstance(body, SecaggSharesBody):
            answer = session.on_shares(sender, body, now)
        elif isinstance(body, SecaggMaskedBody):
            answer = session.on_masked(sender, body, now)
        elif isinstance(body, SecaggRevealBody):
            answer = session.on_reveal(sender, body, now)
        else:
            raise TypeError(f"not an agent's secagg message: {env.kind}")
        if isinstance(answer, Refusal):
            return [Reject(sender, answer.code, answer)]
        if isinstance(body, SecaggMaskedBody) and self.window is not None:
            # The window shows it (web page, the round's row); the session decides when
            # the round ends, not the window's state.
            self.window.accept(sender, env.msg_id, body.base_version)
            self.stats.update_accepted()
        if not answer:
            return []
        self._secure_out += answer
        return [Wake()]

    def update_saved(self, saved: SaveUpdate) -> list[Store]:
        """The update ``on_update`` accepted is staged: the window counts it."""
        assert self.window is not None and self.window.window_id == saved.round_id
        self.window.accept(saved.agent_id, saved.msg_id, saved.base_version)
        self.stats.update_accepted()
        log.debug(
            "accepted update from %s for round %d (weight %.1f)",
            saved.agent_id,
            saved.round_id,
            saved.weight,
        )
        return [Wake()]

    # -- the clock and command results
    def next_deadline(self) -> float | None:
        """When ``tick`` has something to do unless an event comes first (None: only an
        event can change anything)."""
        if self._stopped:
            return None
        due = [t for t in (self._due, self._pause_until) if t is not None]
        if isinstance(window := self.open_window, SyncRound):
            if self._secure is None:
                due.append(window.deadline_ts)
            elif (secure_due := self._secure.next_deadline()) is not None:
                due.append(secure_due)  # the masked phase ends at the round's deadline
        if self._replay_reported:
            due.append(self._republished + REPUBLISH_EVERY_S)
        elif self._behind:
            due.append(
                max(self._published_at + BEHIND_AFTER_S, self._republished + REPUBLISH_EVERY_S)
            )
        return min(due, default=None)

    def tick(self, now: float) -> list[Command]:
        """Everything due at ``now``: at once ``[]`` again if nothing happened since."""
        out: list[Command] = []
        if self._stopped:
            return out
        if self._status_due:
            self._status_due = False
            out.append(PublishStatus())
        self._bring_back_stale_agents(now, out)
        while not (self._busy or self._stopped) and self._step(now, out):
            pass
        return out

    @property
    def _busy(self) -> bool:
        """A BuildModel or LoadVersion is out: the driver waits for its answer."""
        return self._building is not None or self._loading

    def on_loaded(
        self, version: int, payload: bytes, strategy_state: bytes | None, now: float
    ) -> list[Command]:
        """A rollback's target, read: publish its weights as a new version, so every agent
        follows. Versions only ever increase: agents and consumers need no special case,
        and the history keeps both the bad version and the rollback."""
        assert self._loading
        self._loading = False
        body = body_of(decode(payload, ModelBody), ModelBody)
        weights = {k: v.copy() for k, v in body.weights.items()}
        strategy = strategy_from(self.settings)
        if strategy_state is not None:
            strategy.load_state_dict(unpack_state(strategy_state))
        self._building = _Building(weights, strategy, self.version + 1, None, now)
        return [
            BuildModel(
                weights,
                self.version + 1,
                self.version,
                None,
                {"strategy": strategy.name, "rollback_of": version},
            )
        ]

    def on_built(self, build: BuildModel, payload: bytes, now: float) -> list[Command]:
        """The new version's message: save it, make it current, publish it."""
        b = self._building
        assert b is not None and b.version == build.version
        self._building = None
        out: list[Command] = [
            SaveVersion(
                build.version,
                payload,
                build.round_id,
                build.parent,
                build.metadata,
                pack_state(b.strategy.state_dict()),
            )
        ]
        self.strategy, self.weights, self.version = b.strategy, b.weights, b.version
        self.model_payload = payload
        window = b.window
        if window is None:
            out += self._publish_model(now)
            log.warning(
                "rolled back to version %d, published as version %d",
                build.metadata["rollback_of"],
                build.version,
            )
            return out
        out.append(self._round_row(window, "closed", now))
        out += self._publish_model(now)
        if isinstance(window, SyncRound):
            out += self._task(window, "closed")
        self.rounds_completed += 1
        self.stats.round_finished("closed", now - self._opened)
        self._end_window(now)
        log.info(
            "round %d closed: %d updates from %s, version %d -> %d, %.1f s open, %.3f s "
            "to aggregate and build, %d bytes",
            window.window_id,
            len(window.accepted),
            ",".join(window.contributors),
            b.version - 1,
            b.version,
            now - self._opened,
            now - b.started,
            len(payload),
        )
        return out

    # -- the driver
    def _step(self, now: float, out: list[Command]) -> bool:
        """One step of the round driver; False once it waits (for time or an event)."""
        if (window := self.open_window) is not None:
            return self._drive_window(window, now, out)
        if self._pause_until is not None:
            if (
                now < self._pause_until
                and self._early_round_for is None
                and not self._stop_requested
                and self._rollback_to is None
            ):
                return False
            self._pause_until = None
            if self._early_round_for is not None:
                log.info(
                    "opening the next round early: drift reported by %s", self._early_round_for
                )
        if self._rollback_to is not None:
            target, self._rollback_to = self._rollback_to, None
            self._loading = True
            out.append(LoadVersion(target))
            return False
        if self._stop_requested or (
            self.settings.rounds and self.rounds_completed >= self.settings.rounds
        ):
            if self._stop_requested:
                log.warning("stopping as an admin asked, after %d rounds", self.rounds_completed)
            else:
                log.info("completed %d rounds; stopping", self.rounds_completed)
            self._stopped = True
            out.append(Stop())
            return False
        window = self._new_window(now, out)
        if window is None:
            return False
        self.window, self._opened = window, now
        self._accumulator = self.strategy.open_round(self.weights)
        self._failed_on_resume = None
        if self.settings.secure_aggregation:
            assert isinstance(window, SyncRound)  # the settings allow sync mode only
            self._secure = self._secure_session(window, now)
        out += self._task(window, "open")
        return True

    def _secure_session(self, window: SyncRound, now: float) -> SecureRound:
        from alchimia.coordinator.secure_round import SecureRound

        return SecureRound(
            window.window_id,
            window.base_version,
            window.selected,
            window.quorum,
            self.weights,  # the shared tensors, in the model's order
            phase_timeout_s=self.settings.secagg_phase_timeout_s,
            opened_ts=now,
            deadline_ts=window.deadline_ts,
            unit_weights=self.settings.dp_clip_norm is not None,  # distributed DP
        )

    def _drive_window(self, window: Window, now: float, out: list[Command]) -> bool:
        if self._rollback_to is not None:
            log.warning("round %d abandoned: a rollback was requested", window.window_id)
            self._finish_unaggregated(window, "abandoned", now, out)
            return True
        if isinstance(window, AsyncWindow):  # invites every online agent, even late ones
            online = frozenset(self.registry.online())
            if online:  # the task says so (selected_all): nothing to republish
                window.selected = online
        if self._secure is not None:
            return self._drive_secure(window, self._secure, now, out)
        state = window.state(now)
        if state is RoundState.OPEN:
            return False
        window.close()
        if state is RoundState.FAILED:
            assert isinstance(window, SyncRound)
            log.warning(
                "round %d failed: %d of quorum %d updates by the deadline; missing %s",
                window.window_id,
                len(window.accepted),
                window.quorum,
                window.missing,
            )
            self._finish_unaggregated(window, "failed", now, out)
            return True
        self._aggregate(window, now, out, window.contributors, window.missing)
        return False

    def _aggregate(
        self,
        window: Window,
        now: float,
        out: list[Command],
        contributors: list[str],
        stragglers: list[str],
        **extra: object,
    ) -> None:
        """Finish the closed window's accumulator and ask for the new version's build."""
        assert self._accumulator is not None
        weights = self._accumulator.finish()
        version = self.version + 1
        metadata: dict[str, object] = {
            "strategy": self.strategy.name,
            "mode": self.settings.mode,
            "contributors": contributors,
            "stragglers": stragglers,
            **extra,
        }
        s = self.settings
        if s.dp_clip_norm is not None and s.dp_noise_multiplier is not None:
            self.privacy.record(contributors, s.dp_noise_multiplier)
            metadata["dp"] = self.privacy.metadata(
                s.dp_clip_norm,
                s.dp_noise_multiplier,
                distributed=bool(extra.get("secure_aggregation")),
            )
        self._building = _Building(weights, self.strategy, version, window, now)
        out.append(BuildModel(weights, version, self.version, window.window_id, metadata))

    def _drive_secure(
        self, window: Window, session: SecureRound, now: float, out: list[Command]
    ) -> bool:
        """The secure round's publications, due or answered to its events; at its end, its
        sum built as any round's (or the round failed)."""
        from alchimia.coordinator.hierarchical import merge_partial
        from alchimia.coordinator.secure_round import (
            Failed,
            Finished,
            PublishInbox,
            PublishRoster,
            PublishUnmask,
        )

        commands, self._secure_out = [*self._secure_out, *session.tick(now)], []
        for command in commands:
            if isinstance(command, PublishRoster | PublishUnmask):
                out.append(PublishSecagg(command.body))
            elif isinstance(command, PublishInbox):
                out.append(PublishSecagg(command.body, command.agent_id))
            elif isinstance(command, Failed):
                log.warning(
                    "round %d failed: secure aggregation could not finish (%s)",
                    window.window_id,
                    command.reason,
                )
                self._finish_unaggregated(window, "failed", now, out)
                return True
            else:
                assert isinstance(command, Finished)
                assert self._accumulator is not None
                try:
                    merge_partial(self._accumulator, self.weights, command.partial)
                except ValueError as exc:  # the session checked it: a bug if it happens
                    log.error(
                        "round %d failed: its secure sum was refused: %s", window.window_id, exc
                    )
                    self._finish_unaggregated(window, "failed", now, out)
                    return True
                window.close()
                self._aggregate(
                    window,
                    now,
                    out,
                    sorted(command.partial.contributors),
                    sorted(command.dropped),
                    secure_aggregation=True,
                )
                return False
        return False

    def _finish_unaggregated(
        self, window: Window, result: str, now: float, out: list[Command]
    ) -> None:
        """Close a window without a new version; its accepted updates are forgotten."""
        window.close()
        out += [DropPending(window.window_id), self._round_row(window, result, now)]
        self.stats.round_finished(result, now - self._opened)
        out += self._task(window, "closed")
        self._end_window(now)

    def _end_window(self, now: float) -> None:
        self._secure, self._secure_out = None, []  # a secure session ends with its window
        if self.settings.mode == "sync":
            # A drift reported during the round just closed still cuts the pause short;
            # the next round clears the request when it opens (_new_window).
            self._pause_until = now + self.settings.round_interval_s

    def _new_window(self, now: float, out: list[Command]) -> Window | None:
        """The next round (sync) or buffer window (async), once enough agents are online
        and have new heats (or the schedule or a drift report says so); see trigger.py."""
        s = self.settings
        if self.paused:
            self._due = None
            self._waiting("paused by an admin")
            return None
        online = self.registry.new_heats()
        decision = self.trigger.decide(
            online,
            min_agents=s.min_agents,
            now=now,
            last_opened=self._last_opened,
            early=self._early_round_for if s.mode == "sync" else None,
            improving=self.progress.improving(self.version, self.version - 1),
        )
        selected = (
            self.selection.choose(online, self.rng, prefer=decision.fresh)
            if decision.open
            else None
        )
        if selected is None:
            self._due = None if decision.wait_s is None else now + decision.wait_s
            self._waiting(decision.reason)
            return None
        self._waiting_why, self._due = "", None
        self._last_opened, self._early_round_for = now, None
        self._all_selected = len(selected) == len(online)
        window_id, self.next_round_id = self.next_round_id, self.next_round_id + 1
        log.info(
            "opening round %d: %s; selected %s", window_id, decision.reason, ",".join(selected)
        )
        window = self._make_window(window_id, self.version, selected, now + s.round_timeout_s)
        out.append(
            SaveRound(window_id, s.mode, self.version, "open", selected, now, window.deadline_ts)
        )
        return window

    def _waiting(self, why: str) -> None:
        if why != self._waiting_why:
            log.info("next round waits: %s", why)
            self._waiting_why = why

    def _make_window(
        self, window_id: int, base: int, selected: list[str], deadline: float
    ) -> Window:
        s = self.settings
        if s.mode == "async":
            return AsyncWindow(
                window_id, base, s.buffer_k, s.max_staleness, self.staleness, frozenset(selected)
            )
        return SyncRound(
            window_id, base, frozenset(selected), min(s.min_agents, len(selected)), deadline
        )

    def _round_row(self, window: Window, state: str, now: float) -> SaveRound:
        return SaveRound(
            window.window_id,
            self.settings.mode,
            window.base_version,
            state,
            sorted(window.selected),
            self._opened,
            window.deadline_ts,
            now,
            window.contributors,
        )

    # -- publications
    def _task(self, window: Window, state: Literal["open", "closed"]) -> list[Command]:
        """The task; an open one with the status (fresh rejection counts for `alchimia
        status`)."""
        s = self.settings
        everyone = isinstance(window, AsyncWindow) or self._all_selected
        task = PublishTask(
            TaskBody(
                round_id=window.window_id,
                state=state,
                mode=s.mode,
                base_version=window.base_version,
                deadline_ts=window.deadline_ts,
                selected=[] if everyone else sorted(window.selected),
                selected_all=everyone,
                epochs=s.epochs,
                lr=s.lr,
                batch_size=s.batch_size,
                hyper=self.strategy.task_params(),
                update_codec=s.update_codec,
                update_topk_fraction=s.update_topk_fraction,
                dp_clip_norm=s.dp_clip_norm,
                dp_noise_multiplier=s.dp_noise_multiplier,
                # every round is secure then (resume fails one left open)
                secure_aggregation=s.secure_aggregation,
            )
        )
        return [task, PublishStatus()] if state == "open" else [task]

    def _publish_model(self, now: float) -> list[Command]:
        """The current version, and the retained coordinator status that names it (admins
        and consumers read the version there)."""
        self._published_at = now
        self._behind = {
            a.agent_id
            for a in self.registry.all()
            if a.online and a.model_version is not None and a.model_version < self.version
        }
        return [PublishModel(self.model_payload), PublishStatus()]

    def _bring_back_stale_agents(self, now: float, out: list[Command]) -> None:
        """Republish the current model (and the open task) when an agent reported a replay,
        or is still on an older version ``BEHIND_AFTER_S`` after the current one was
        published, so nothing stalls whatever was replayed; at most every
        ``REPUBLISH_EVERY_S``."""
        if now - self._republished < REPUBLISH_EVERY_S:
            return
        behind = [] if now - self._published_at < BEHIND_AFTER_S else sorted(self._behind)
        if not behind and not self._replay_reported:
            return
        log.warning(
            "republishing version %d: %s",
            self.version,
            f"agents on an older version ({','.join(behind)})"
            if behind
            else "an agent reported a replayed older model",
        )
        self._replay_reported = False
        self._republished = now
        out += self._publish_model(now)
        if (window := self.open_window) is not None:
            out += self._task(window, "open")
