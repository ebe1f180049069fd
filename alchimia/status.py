"""``alchimia status``: what a running federation is doing, read off the bus.

    alchimia status --config DIR/identities/coordinator/coordinator.toml [--json]
    alchimia status --broker mqtt://127.0.0.1:1883 --federation steel [--wait 2]

It subscribes to the retained and periodic topics (``coordinator/status``,
``model/current``, ``round/current``, ``agents/+/status``, ``agents/+/metrics``) for
``--wait`` seconds and prints the coordinator (up or down, its version), the open round or
async window and every agent (online or offline, last seen, software, heats, versions,
latest validation and prequential errors, drift events, rejected messages). The retained
messages carry all of it (docs/PROTOCOL.md, ``status``); metrics sent during the window
are fresher and win. :class:`FederationView` is that aggregation, without I/O.

Exit status: 0 the coordinator is up, 1 it is down or was not heard of, 2 bad settings
or no connection. Needs neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pydantic_settings import SettingsConfigDict
from rich.console import Console
from rich.table import Table

from alchimia.broker.codec import DecodeError
from alchimia.broker.schemas import (
    Body,
    Envelope,
    MetricsBody,
    ModelBody,
    StatusBody,
    TaskBody,
    body_of,
    decode,
)
from alchimia.broker.settings import NodeSettings
from alchimia.broker.topics import Topics

# The targets the table shows (the demo's two), with their units; --json has every one.
TABLE_TARGETS = {"energy_kwh_t": "kWh/t", "cu_pct": "Cu %"}


class StatusSettings(NodeSettings):
    """The connection ``alchimia status`` uses. It reads any identity's TOML file (keys
    it does not need are ignored): under the provisioned ACL only the coordinator's
    identity may read every topic it shows."""

    model_config = SettingsConfigDict(env_prefix="ALCHIMIA_STATUS_", extra="ignore")


@dataclass
class CoordinatorView:
    coordinator_id: str
    state: str  # online or offline (its last will)
    activity: str | None  # running, paused or stopping (admin commands)
    software: str
    model_version: int | None
    last_seen: float  # the coordinator's clock, Unix seconds
    rejected: dict[str, int]  # messages it rejected, per agent


@dataclass
class ModelView:
    version: int
    parent_version: int | None
    round_id: int | None
    strategy: str | None
    contributors: list[str]
    rollback_of: int | None
    signed: bool
    published: float
    # Differential privacy: the model metadata's ``dp`` (epsilon, delta, noise_multiplier,
    # clip_norm, rounds, ...; docs/PROTOCOL.md, ``model``), None without DP.
    dp: dict[str, Any] | None = None


@dataclass
class RoundView:
    round_id: int
    state: str  # open or closed
    mode: str  # sync (a round) or async (a buffer window)
    base_version: int
    deadline_ts: float | None  # sync only
    selected: list[str]  # empty when selected_all
    selected_all: bool = False  # every agent online when it opened (async: every online one)


@dataclass
class Figures:
    """One agent's metrics of a scope: the latest by the agent's clock."""

    ts: float
    model_version: int | None
    values: dict[str, float]


@dataclass
class AgentView:
    agent_id: str
    state: str | None = None  # online or offline; None: no status heard, only metrics
    last_seen: float | None = None  # its latest message, the agent's clock
    status_ts: float | None = None
    software: str = ""
    heats: int = 0  # training heats held
    new_heats: int | None = None
    model_version: int | None = None  # latest global version adopted
    serving_version: int | None = None  # the version that serves predictions there
    drift_events: int | None = None
    models_rejected: int | None = None  # by the agent: bad signature or older version
    rejected: int = 0  # messages of this agent the coordinator rejected
    metrics: dict[str, Figures] = field(default_factory=dict)  # scope -> latest


@dataclass
class FederationStatus:
    federation: str
    coordinator: CoordinatorView | None
    model: ModelView | None
    round: RoundView | None
    agents: list[AgentView]
    ignored: int  # messages that did not decode, or named another sender

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FederationView:
    """The messages of one federation folded into its status (no I/O): ``feed`` each
    message received on :meth:`subscriptions`, then ask for :meth:`status`."""

    def __init__(self, federation: str) -> None:
        self.topics = Topics(federation)
        self._coordinator: CoordinatorView | None = None
        self._model: ModelView | None = None
        self._round: RoundView | None = None
        self._agents: dict[str, AgentView] = {}
        self._ignored = 0

    def subscriptions(self) -> list[str]:
        t = self.topics
        return [
            t.coordinator_status,
            t.model_current,
            t.round_current,
            t.all_agents("status"),
            t.all_agents("metrics"),
        ]

    def feed(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        t = self.topics
        try:
            if topic == t.coordinator_status:
                self._on_coordinator(decode(payload, StatusBody))
            elif topic == t.model_current:
                self._on_model(decode(payload, ModelBody))
            elif topic == t.round_current:
                task = body_of(decode(payload, TaskBody), TaskBody)
                self._round = RoundView(
                    task.round_id,
                    task.state,
                    task.mode,
                    task.base_version,
                    task.deadline_ts if task.mode == "sync" else None,
                    list(task.selected),
                    task.selected_all,
                )
            else:
                self._on_agent(topic, payload)
        except DecodeError:
            self._ignored += 1

    def _on_coordinator(self, env: Envelope) -> None:
        body = body_of(env, StatusBody)
        if self._coordinator is not None and env.ts < self._coordinator.last_seen:
            return
        self._coordinator = CoordinatorView(
            env.sender,
            body.state,
            body.activity,
            body.software,
            body.model_version,
            env.ts,
            dict(body.rejected or {}),
        )

    def _on_model(self, env: Envelope) -> None:
        body = body_of(env, ModelBody)
        meta = body.metadata
        strategy = meta.get("strategy")
        self._model = ModelView(
            body.version,
            body.parent_version,
            body.round_id,
            strategy if isinstance(strategy, str) else None,
            [str(c) for c in meta.get("contributors") or []],
            meta.get("rollback_of") if isinstance(meta.get("rollback_of"), int) else None,
            body.signature is not None,
            env.ts,
            dict(meta["dp"]) if isinstance(meta.get("dp"), dict) else None,
        )

    def _on_agent(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse_agent_topic(topic)
        expect: dict[str, type[Body]] = {"status": StatusBody, "metrics": MetricsBody}
        if parsed is None or parsed[1] not in expect:
            self._ignored += 1
            return
        agent_id, leaf = parsed
        env = decode(payload, expect[leaf])
        if env.sender != agent_id:
            self._ignored += 1
            return
        agent = self._agents.setdefault(agent_id, AgentView(agent_id))
        agent.last_seen = max(agent.last_seen or env.ts, env.ts)
        if leaf == "metrics":
            body = body_of(env, MetricsBody)
            _keep(agent, body.scope, Figures(env.ts, body.model_version, dict(body.values)))
            return
        status = body_of(env, StatusBody)
        if agent.status_ts is not None and env.ts < agent.status_ts:
            return
        agent.status_ts, agent.state, agent.software = env.ts, status.state, status.software
        agent.heats, agent.new_heats = status.samples, status.new_heats
        agent.model_version, agent.serving_version = status.model_version, status.serving_version
        agent.drift_events, agent.models_rejected = status.drift_events, status.models_rejected
        if status.validation is not None:
            _keep(
                agent, "validation", Figures(env.ts, status.model_version, dict(status.validation))
            )
        if status.prequential is not None:
            _keep(
                agent,
                "prequential",
                Figures(env.ts, status.serving_version, dict(status.prequential)),
            )

    def status(self) -> FederationStatus:
        rejected = self._coordinator.rejected if self._coordinator is not None else {}
        agents = [
            replace(
                self._agents[a], rejected=rejected.get(a, 0), metrics=dict(self._agents[a].metrics)
            )
            for a in sorted(self._agents)
        ]
        return FederationStatus(
            self.topics.federation,
            self._coordinator,
            self._model,
            self._round,
            agents,
            self._ignored,
        )


def _keep(agent: AgentView, scope: str, figures: Figures) -> None:
    old = agent.metrics.get(scope)
    if old is None or figures.ts >= old.ts:
        agent.metrics[scope] = figures


# -- presentation ----------------------------------------------------------------------


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _version(agent: AgentView) -> str:
    if agent.model_version is None:
        return "-"
    if agent.serving_version is None or agent.serving_version == agent.model_version:
        return str(agent.model_version)
    return f"{agent.model_version} (serves {agent.serving_version})"


def _errors(agent: AgentView, scope: str, key: str) -> str:
    figures = agent.metrics.get(scope)
    if figures is None:
        return "-"
    return " / ".join(_num(figures.values.get(f"{key}{t}")) for t in TABLE_TARGETS)


def privacy_line(dp: dict[str, Any]) -> str:
    """The model's differential-privacy budget, as the summary shows it."""
    eps = dp.get("epsilon")
    spent = f"epsilon {eps:.3g}" if isinstance(eps, int | float) else "epsilon unbounded"
    return (
        f"privacy: {spent} at delta {dp.get('delta')} (worst plant, "
        f"{dp.get('rounds')} updates; noise multiplier {dp.get('noise_multiplier')}, "
        f"clip norm {dp.get('clip_norm')}, "
        + (
            "noise distributed under secure aggregation)"
            if dp.get("noise") == "distributed"
            else "DP at the agents)"
        )
    )


def summary(status: FederationStatus, now: float) -> list[str]:
    """The lines above the agents' table."""
    c, m, r = status.coordinator, status.model, status.round
    if c is None:
        head = "coordinator: not heard of (never started, or no right to read its status)"
    else:
        up = "up" if c.state == "online" else "DOWN"
        if c.state == "online" and c.activity not in (None, "running"):
            up += f", {c.activity}"
        head = (
            f"coordinator {c.coordinator_id}: {up} ({c.software or 'unknown software'}), "
            f"version {_num(c.model_version)}, status {_age(c.last_seen, now)}"
        )
    lines = [f"federation {status.federation}", head]
    if m is not None:
        how = [
            f"round {m.round_id}" if m.round_id is not None else "",
            f"rollback of version {m.rollback_of}" if m.rollback_of is not None else "",
            m.strategy or "",
            f"{len(m.contributors)} contributors" if m.contributors else "",
            "signed" if m.signed else "unsigned",
        ]
        lines.append(
            f"model: version {m.version} ({', '.join(h for h in how if h)}), "
            f"published {_age(m.published, now)}"
        )
        if m.dp is not None:
            lines.append(privacy_line(m.dp))
    if r is not None:
        what = "round" if r.mode == "sync" else "async window"
        line = (
            f"{what} {r.round_id}: {r.state}, base version {r.base_version}, "
            f"{'every online agent' if r.selected_all else len(r.selected)} selected"
        )
        if r.state == "open" and r.deadline_ts is not None:
            line += f", deadline in {max(0.0, r.deadline_ts - now):.0f} s"
        lines.append(line)
    if not status.agents:
        lines.append(
            "agents: none heard of (none connected yet, or this identity may not "
            "read agents/+/status: use the coordinator's identity)"
        )
    if status.ignored:
        lines.append(f"{status.ignored} message(s) ignored: undecodable or a wrong sender")
    return lines


def table(status: FederationStatus, now: float) -> Table:
    units = " / ".join(TABLE_TARGETS.values())
    t = Table(show_edge=False, pad_edge=False)
    longest = max((len(a.agent_id) for a in status.agents), default=5)
    t.add_column("agent", no_wrap=True, min_width=longest)  # never cut an id
    t.add_column("state", no_wrap=True, min_width=7)
    for column in (
        "last seen",
        "software",
        "heats",
        "new",
        "version",
        f"validation MAE\n{units}",
        f"recent MAE\n{units}",
        "drift",
        "rejected",
        "models\nrefused",
    ):
        t.add_column(column, justify="left" if column == "software" else "right")
    for a in status.agents:
        t.add_row(
            a.agent_id,
            a.state or "?",
            _age(a.last_seen, now),
            a.software or "-",
            str(a.heats),
            _num(a.new_heats),
            _version(a),
            _errors(a, "validation", "mae_"),
            _errors(a, "prequential", "mae_recent_"),
            _num(a.drift_events),
            str(a.rejected),
            _num(a.models_rejected),
        )
    return t


def render(status: FederationStatus, now: float, console: Console) -> None:
    for line in summary(status, now):
        console.print(line, highlight=False, markup=False)
    if status.agents:
        console.print(table(status, now))


# -- the command -----------------------------------------------------------------------


def collect(
    settings: NodeSettings,
    wait: float,
    connect_timeout: float = 10.0,
) -> FederationStatus:
    """Listen to the federation's status topics for ``wait`` seconds after connecting."""
    view = FederationView(settings.federation)
    lock, connected = threading.Lock(), threading.Event()
    refused: list[str] = []
    client = settings.paho_client(f"{settings.federation}-status-{uuid.uuid4().hex[:8]}")

    def on_connect(c: Any, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            refused.append(f"the broker refused the login: {rc}")
        else:
            c.subscribe([(topic, 1) for topic in view.subscriptions()])
        connected.set()

    def on_message(_c: Any, _u: object, msg: Any) -> None:
        with lock:
            view.feed(msg.topic, msg.payload)

    client.on_connect, client.on_message = on_connect, on_message
    host, port, _ = settings.host_port_tls
    try:
        client.connect(host, port, keepalive=settings.keepalive)
    except OSError as exc:
        raise ConnectionError(
            f"cannot connect to {settings.broker}: {settings.diagnose_connection()} ({exc})"
        ) from None
    client.loop_start()
    try:
        if not connected.wait(connect_timeout) or refused:
            why = refused[0] if refused else settings.diagnose_connection()
            raise ConnectionError(f"cannot connect to {settings.broker}: {why}")
        time.sleep(wait)  # retained messages come at once; periodic ones within the window
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return view.status()


def run(args: argparse.Namespace) -> int:
    overrides = {
        k: getattr(args, k, None) for k in ("broker", "federation", "username", "password")
    }
    settings = StatusSettings.load(args.config, **overrides)
    if not args.wait >= 0:
        raise ValueError(f"--wait must be >= 0, got {args.wait}")
    try:
        status = collect(settings, args.wait)
    except ConnectionError as exc:
        print(f"alchimia status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"now": time.time(), **status.to_dict()}, indent=1))
    else:
        # Wide enough not to wrap when piped (a file, a mail); a terminal's own width.
        render(status, time.time(), Console(width=None if sys.stdout.isatty() else 200))
    up = status.coordinator is not None and status.coordinator.state == "online"
    return 0 if up else 1
