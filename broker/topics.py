"""The MQTT topic tree of one federation (DESIGN.md, "The bus").

Every topic hangs under ``alchimia/v1/{federation}`` so several federations can share a
broker and a later protocol version can live beside this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROTOCOL_PREFIX = "alchimia/v1"
# Identifiers become topic levels: no wildcards, no separators, bounded length.
ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
_ID_RE = re.compile(rf"^{ID_PATTERN}$")

AGENT_LEAVES = ("status", "update", "metrics", "predictions", "secagg")
# Request/response services an agent answers: ``agents/{id}/{service}/request`` in,
# ``agents/{id}/{service}/response/{client_id}`` out (docs/PROTOCOL.md).
SERVICES = ("infer", "optimize")


def check_id(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it is safe as a topic level, else raise ValueError saying why."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-64 characters from A-Z a-z 0-9 _ . -")
    return value


@dataclass(frozen=True)
class Topics:
    """Topic names for one federation; the only place topic strings are built."""

    federation: str

    def __post_init__(self) -> None:
        check_id(self.federation, "federation name")

    @property
    def root(self) -> str:
        return f"{PROTOCOL_PREFIX}/{self.federation}"

    @property
    def coordinator_status(self) -> str:
        return f"{self.root}/coordinator/status"

    @property
    def coordinator_admin(self) -> str:
        """Admin commands to the coordinator (the broker's ACL lets only admins write)."""
        return f"{self.root}/coordinator/admin"

    def bridge_state(self, bridge_id: str) -> str:
        """A plant broker's bridge to this broker: ``1`` while connected, ``0`` after (its
        will); plain text, retained, published by mosquitto itself (docs/SCALE.md)."""
        return f"{self.root}/bridges/{check_id(bridge_id, 'bridge id')}/state"

    @property
    def all_bridge_states(self) -> str:
        return f"{self.root}/bridges/+/state"

    @property
    def model_current(self) -> str:
        return f"{self.root}/model/current"

    @property
    def round_current(self) -> str:
        return f"{self.root}/round/current"

    @property
    def round_secagg(self) -> str:
        """Secure aggregation broadcasts to a round's agents (roster, unmask)."""
        return f"{self.root}/round/secagg"

    def round_secagg_inbox(self, agent_id: str) -> str:
        """What the coordinator relays to one agent in a secure round (its inbox)."""
        return f"{self.round_secagg}/{check_id(agent_id, 'agent id')}"

    @property
    def all_secagg_inboxes(self) -> str:
        return f"{self.round_secagg}/+"

    def agent(self, agent_id: str, leaf: str) -> str:
        check_id(agent_id, "agent id")
        return f"{self.root}/agents/{agent_id}/{leaf}"

    def agent_status(self, agent_id: str) -> str:
        return self.agent(agent_id, "status")

    def agent_update(self, agent_id: str) -> str:
        return self.agent(agent_id, "update")

    def agent_metrics(self, agent_id: str) -> str:
        return self.agent(agent_id, "metrics")

    def agent_predictions(self, agent_id: str) -> str:
        return self.agent(agent_id, "predictions")

    def agent_secagg(self, agent_id: str) -> str:
        """An agent's secure aggregation messages to the coordinator."""
        return self.agent(agent_id, "secagg")

    def agent_request(self, agent_id: str, service: str) -> str:
        """Where consumers send ``service`` requests to one agent (e.g. ``infer``)."""
        return self.agent(agent_id, f"{_service(service)}/request")

    def agent_response(self, agent_id: str, service: str, client_id: str) -> str:
        """Where the agent answers the client ``client_id``'s ``service`` requests."""
        check_id(client_id, "client id")
        return self.agent(agent_id, f"{_service(service)}/response/{client_id}")

    def agent_responses(self, agent_id: str, service: str) -> str:
        """Filter of every client's responses of one agent (the agent's ACL grant)."""
        return self.agent(agent_id, f"{_service(service)}/response/#")

    def client_responses(self, service: str, client_id: str) -> str:
        """Filter of one client's responses from every agent (what a consumer reads)."""
        check_id(client_id, "client id")
        return self.all_agents(f"{_service(service)}/response/{client_id}")

    def parse_request_topic(self, topic: str) -> tuple[str, str] | None:
        """``(agent_id, service)`` for an ``agents/{id}/{service}/request`` topic, else None."""
        head = f"{self.root}/agents/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if (
            len(parts) != 3
            or not _ID_RE.match(parts[0])
            or parts[1] not in SERVICES
            or parts[2] != "request"
        ):
            return None
        return parts[0], parts[1]

    def parse_response_topic(self, topic: str) -> tuple[str, str, str] | None:
        """``(agent_id, service, client_id)`` for a response topic, else None."""
        head = f"{self.root}/agents/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if (
            len(parts) != 4
            or not _ID_RE.match(parts[0])
            or parts[1] not in SERVICES
            or parts[2] != "response"
            or not _ID_RE.match(parts[3])
        ):
            return None
        return parts[0], parts[1], parts[3]

    def all_agents(self, leaf: str) -> str:
        """Subscription filter for one leaf of every agent, e.g. ``agents/+/update``."""
        return f"{self.root}/agents/+/{leaf}"

    def parse_agent_topic(self, topic: str) -> tuple[str, str] | None:
        """``(agent_id, leaf)`` for a topic under ``agents/``, None for anything else."""
        head = f"{self.root}/agents/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or not _ID_RE.match(parts[0]) or parts[1] not in AGENT_LEAVES:
            return None
        return parts[0], parts[1]


def _service(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    return service
