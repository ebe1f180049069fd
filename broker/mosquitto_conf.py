"""Generated Mosquitto 2.x configuration: the project's broker settings in one place."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from alchimia.broker.topics import SERVICES, Topics, check_id

# Largest message a plain (test, demo) broker accepts: far above any model message, while
# stopping floods of huge payloads. Provisioned brokers are sized instead (broker_sizing).
DEFAULT_MESSAGE_SIZE_LIMIT = 64 * 1024 * 1024
# Nagle's algorithm on the broker's sockets (with delayed ACKs on the clients') holds small
# messages back ~40 ms per hop: a request/response over a local broker took ~90 ms
# instead of ~0.5 ms (bench/bench_infer.py). Clients set TCP_NODELAY on their side too.
NODELAY = "set_tcp_nodelay true"


def plain_config(
    port: int,
    data_dir: Path,
    *,
    bind: str = "127.0.0.1",
    message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT,
    persistence: bool = True,
    sizing: BrokerSizing | None = None,
) -> str:
    """A loopback listener without authentication: for tests and single-host demos.

    ``sizing`` (e.g. ``broker_sizing(10_000)`` for a swarm) replaces ``message_size_limit``
    and mosquitto's default queue limits."""
    limits = (
        sizing.lines()
        if sizing is not None
        else [
            f"max_packet_size {message_size_limit + PACKET_HEADROOM}",
            f"message_size_limit {message_size_limit}",
        ]
    )
    lines = [
        f"listener {port} {bind}",
        "allow_anonymous true",
        *limits,
        NODELAY,
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {data_dir}/",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    return "\n".join(lines) + "\n"


# Room for the fixed header, topic and properties above the largest payload. The payload
# limit (``message_size_limit``) drops one message and PUBACKs it; ``max_packet_size``
# disconnects the client, and a QoS 1 client resends the same packet after reconnecting,
# so the packet ceiling must lie above the payload limit or such a client loops forever.
PACKET_HEADROOM = 65536
# MQTT's largest packet (remaining length) is 268,435,455 bytes.
MAX_MESSAGE_SIZE_LIMIT = 268_435_455 - PACKET_HEADROOM

# Broker sizing (docs/SCALE.md). Mosquitto's own max_queued_messages, kept as the floor so
# a small federation runs with mosquitto's defaults.
MOSQUITTO_MAX_QUEUED_MESSAGES = 1000
# What one agent may have waiting for the coordinator at once: its update and three more
# (a status, a metrics message, or in async mode a second update).
MESSAGES_PER_AGENT = 4
# Upper bound of a status or metrics message (an envelope and a few dozen figures).
SMALL_MESSAGE_BYTES = 4096
# Floor of the derived message_size_limit; the limit is twice the model message above it.
MIN_MESSAGE_SIZE_LIMIT = 1024 * 1024
# The default network's model message is 12-32 kB (docs/SCALE.md): 8x room.
DEFAULT_MODEL_MESSAGE_BYTES = 256 * 1024


@dataclass(frozen=True)
class BrokerSizing:
    """The broker options that depend on the federation's size (docs/SCALE.md)."""

    message_size_limit: int
    max_queued_messages: int
    max_queued_bytes: int

    def lines(self) -> list[str]:
        return [
            f"max_packet_size {self.message_size_limit + PACKET_HEADROOM}",
            f"message_size_limit {self.message_size_limit}",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_queued_bytes {self.max_queued_bytes}",
        ]


def broker_sizing(
    agents: int,
    model_message_bytes: int = DEFAULT_MODEL_MESSAGE_BYTES,
    *,
    message_size_limit: int | None = None,
) -> BrokerSizing:
    """Queue and message limits of a broker that ``agents`` agents reach (directly, or
    through a bridge for the central broker).

    The coordinator receives one update per agent per round (more in async mode), plus
    statuses and metrics, and mosquitto drops what exceeds a client's queue (QoS 0 at
    once, QoS 1 beyond ``max_queued_messages`` above the 20 in flight), acknowledged to
    the agent, which never resends. So every client's queue holds ``MESSAGES_PER_AGENT``
    messages per agent; its bytes are bounded by as many messages, each update no larger
    than a model message (deltas of the shared tensors, without the ONNX graph). The
    largest message is the model: ``message_size_limit`` is twice it (rounded up to
    64 KiB, at least 1 MiB) unless given.
    """
    if agents < 0 or model_message_bytes < 1:
        raise ValueError("agents must be >= 0 and model_message_bytes >= 1")
    if message_size_limit is None:
        message_size_limit = min(
            MAX_MESSAGE_SIZE_LIMIT,
            max(MIN_MESSAGE_SIZE_LIMIT, math.ceil(2 * model_message_bytes / 65536) * 65536),
        )
    sized = max(agents, MOSQUITTO_MAX_QUEUED_MESSAGES // MESSAGES_PER_AGENT)
    update_bytes = min(model_message_bytes, message_size_limit)
    per_agent = update_bytes + (MESSAGES_PER_AGENT - 1) * SMALL_MESSAGE_BYTES
    return BrokerSizing(
        message_size_limit=message_size_limit,
        max_queued_messages=sized * MESSAGES_PER_AGENT,
        max_queued_bytes=sized * per_agent,
    )


def _conf_path(path: Path) -> str:
    text = str(path)
    if any(c.isspace() for c in text) or not path.is_absolute():
        # mosquitto splits option lines on whitespace and resolves relative paths against
        # its own working directory, so both would break `mosquitto -c` from elsewhere.
        raise ValueError(f"mosquitto config paths must be absolute, without spaces: {text!r}")
    return text


def secure_config(
    *,
    tls_port: int,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    acl_file: Path,
    data_dir: Path,
    require_certificate: bool,
    crl_file: Path | None = None,
    password_file: Path | None = None,
    tls_bind: str | None = None,
    plain_port: int | None = None,
    sizing: BrokerSizing,
    user: str | None = None,
) -> str:
    """A production listener: TLS, no anonymous clients, ACLs for every identity.

    ``require_certificate`` selects mutual TLS with the certificate CN as the username
    (the CRL then applies); otherwise clients log in with a password over server-only TLS.
    The optional plain listener is bound to 127.0.0.1 and authenticates with the password
    file, which mosquitto needs for it to accept anyone at all. ``user`` None leaves the
    line out: mosquitto started as root then switches to ``mosquitto``.
    """
    if plain_port is not None and password_file is None:
        raise ValueError(
            "a plain listener needs a password file: without one mosquitto "
            "refuses every client on it"
        )
    if not require_certificate and password_file is None:
        raise ValueError("without client certificates a password file is required")
    lines = [
        "# Generated by `alchimia provision`; edit the federation file and re-run instead.",
        # One set of security options (ACL, passwords) for all listeners: simpler to audit.
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {_conf_path(acl_file)}",
    ]
    if password_file is not None:
        lines.append(f"password_file {_conf_path(password_file)}")
    if user is not None:
        lines.append(f"user {user}")
    lines += [
        *sizing.lines(),
        NODELAY,
        "persistence true",
        f"persistence_location {_conf_path(data_dir)}/",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "",
        f"listener {tls_port}" + (f" {tls_bind}" if tls_bind else ""),
        f"cafile {_conf_path(ca_file)}",
        f"certfile {_conf_path(cert_file)}",
        f"keyfile {_conf_path(key_file)}",
        f"require_certificate {'true' if require_certificate else 'false'}",
        f"use_identity_as_username {'true' if require_certificate else 'false'}",
    ]
    if require_certificate and crl_file is not None:
        lines.append(f"crlfile {_conf_path(crl_file)}")
    if plain_port is not None:
        lines += ["", f"listener {plain_port} 127.0.0.1"]
    return "\n".join(lines) + "\n"


def agent_rules(topics: Topics, agent_id: str) -> list[tuple[str, str]]:
    """``(access, topic)`` of one agent: its ACL block, and what the bridge of its plant
    broker carries for it (what it reads comes in, what it writes goes out)."""
    return [
        ("read", topics.model_current),
        ("read", topics.round_current),
        ("read", topics.coordinator_status),
        ("read", topics.round_secagg),
        ("read", topics.round_secagg_inbox(agent_id)),
        *(("read", topics.agent_request(agent_id, s)) for s in SERVICES),
        ("write", topics.agent_status(agent_id)),
        ("write", topics.agent_update(agent_id)),
        ("write", topics.agent_metrics(agent_id)),
        ("write", topics.agent_predictions(agent_id)),
        ("write", topics.agent_secagg(agent_id)),
        *(("write", topics.agent_responses(agent_id, s)) for s in SERVICES),
    ]


def _bridged_rules(topics: Topics, agents: Sequence[str]) -> list[tuple[str, str]]:
    """The union of the agents' rules, each once, in a stable order."""
    return list(dict.fromkeys(r for aid in sorted(agents) for r in agent_rules(topics, aid)))


def acl_text(
    federation: str,
    *,
    coordinators: Sequence[str] = (),
    agents: Sequence[str] = (),
    consumers: Sequence[str] = (),
    admins: Sequence[str] = (),
    bridges: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Mosquitto ACL file binding each identity (its username) to its topics.

    Only ``user`` blocks: a ``pattern`` line applies to every user, so ``agents/%u/#``
    would also let a consumer or the coordinator publish as an agent of its own name.
    Anything not granted is denied, including ``$SYS`` and other federations.
    ``bridges`` maps a plant broker's bridge identity to the agents behind it: it may
    do what those agents may, and publish its own connection state.
    """
    topics = Topics(federation)
    lines = [
        f"# Generated by `alchimia provision`: one block per identity of federation {federation}.",
        "# Anything not granted here is denied.",
    ]

    def block(user: str, role: str, rules: list[tuple[str, str]]) -> None:
        check_id(user, f"{role} id")
        lines.extend(["", f"# {role}", f"user {user}"])
        lines.extend(f"topic {access} {topic}" for access, topic in rules)

    for cid in sorted(coordinators):
        block(
            cid,
            "coordinator",
            [
                ("read", topics.all_agents("status")),
                ("read", topics.all_agents("update")),
                ("read", topics.all_agents("metrics")),
                ("read", topics.all_agents("secagg")),
                ("read", topics.coordinator_admin),
                # readwrite: a restarted coordinator may read back what it retained.
                ("readwrite", topics.coordinator_status),
                ("readwrite", topics.model_current),
                ("readwrite", topics.round_current),
                ("write", topics.round_secagg),
                ("write", topics.all_secagg_inboxes),
            ],
        )
    for uid in sorted(admins):
        # Commands to the coordinator, what it publishes, and the agents' statuses and
        # metrics (versions, error figures, counts: what `alchimia status` shows); never
        # an agent's updates or predictions, which carry the plant's data.
        block(
            uid,
            "admin",
            [
                ("write", topics.coordinator_admin),
                ("read", topics.coordinator_status),
                ("read", topics.model_current),
                ("read", topics.round_current),
                ("read", topics.all_bridge_states),
                ("read", topics.all_agents("status")),
                ("read", topics.all_agents("metrics")),
            ],
        )
    for aid in sorted(agents):
        block(aid, "agent", agent_rules(topics, aid))
    for bid, behind in sorted((bridges or {}).items()):
        block(bid, "bridge", [*_bridged_rules(topics, behind), ("write", topics.bridge_state(bid))])
    for uid in sorted(consumers):
        block(
            uid,
            "consumer",
            [
                ("read", topics.model_current),
                ("read", topics.coordinator_status),
                ("read", topics.all_agents("predictions")),
                *(
                    rule
                    for s in SERVICES
                    for rule in (
                        ("write", topics.all_agents(f"{s}/request")),
                        ("read", topics.client_responses(s, uid)),
                    )
                ),
            ],
        )
    return "\n".join(lines) + "\n"


def bridge_config(
    federation: str,
    *,
    bridge_id: str,
    agents: Sequence[str],
    host: str,
    port: int,
    ca_file: Path,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    password: str | None = None,
) -> str:
    """The ``connection`` section of a plant broker bridged to the central broker.

    Mutual TLS with the bridge identity's certificate (``cert_file``/``key_file``), or
    server-only TLS with ``bridge_id`` and ``password``. The agents' writes go out and
    their reads come in, each topic under the same prefix on both brokers; QoS 1 and a
    persistent session on both sides, so what was sent while the link was down is
    delivered when it returns (within ``max_queued_messages``).
    """
    if (cert_file is None or key_file is None) and password is None:
        raise ValueError("a bridge needs a client certificate and key, or a password")
    if password is not None and any(c.isspace() or c == "#" for c in password):
        raise ValueError("a bridge password must not contain whitespace or '#'")
    topics = Topics(federation)
    check_id(bridge_id, "bridge id")
    prefix = topics.root + "/"
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        "# Bridge to the central broker (docs/SCALE.md): the agents' topics go out, the",
        "# model, the task and the coordinator's status come in.",
        "connection central",
        f"address {address}",
        f"remote_clientid {bridge_id}",
        "bridge_protocol_version mqttv311",
        "try_private true",
        "cleansession false",
        "notifications true",
        f"notification_topic {topics.bridge_state(bridge_id)}",
        f"bridge_cafile {_conf_path(ca_file)}",
    ]
    if cert_file is not None and key_file is not None:
        lines += [
            f"bridge_certfile {_conf_path(cert_file)}",
            f"bridge_keyfile {_conf_path(key_file)}",
        ]
    if password is not None:
        lines += [f"remote_username {bridge_id}", f"remote_password {password}"]
    for access, topic in _bridged_rules(topics, agents):
        direction = "in" if access == "read" else "out"
        lines.append(f"topic {topic.removeprefix(prefix)} {direction} 1 {prefix} {prefix}")
    return "\n".join(lines) + "\n"
