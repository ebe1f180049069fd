"""A Python client of the agents' request services: what a furnace HMI or the scrap-yard
planning runs to ask a site's serving model (paho-mqtt and pydantic; no torch, no ONNX).

    with Consumer(ConsumerSettings.load(Path("consumer.toml"))) as c:
        answer = c.infer("plant-1", [{"heat_id": "H1", "inputs": {...}}], level=0.9)

Requests go to ``agents/{agent_id}/{service}/request``; the agent answers on
``agents/{agent_id}/{service}/response/{consumer_id}``, which only this identity may read
(the broker's ACL), correlated by ``request_id`` (docs/PROTOCOL.md, "Requests"). Several
processes may share one identity: each gets its own MQTT client id, and each keeps only
the answers to its own request ids.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from alchimia.broker.limits import DecodeError, Limits
from alchimia.broker.rejections import RejectionLog
from alchimia.broker.schemas import (
    InferRequestBody,
    InferResponseBody,
    OptimizeRequestBody,
    OptimizeResponseBody,
    PlannedHeat,
    RequestBody,
    ResponseBody,
    body_of,
    decode,
    message,
)
from alchimia.broker.settings import NodeSettings
from alchimia.broker.topics import Topics, check_id
from alchimia.models.schema import GRADES

log = logging.getLogger("alchimia.consumer")
RESPONSE_LIMITS = Limits(max_message_bytes=64 * 1024 * 1024)
_RESPONSES: dict[str, type[ResponseBody]] = {
    "infer": InferResponseBody,
    "optimize": OptimizeResponseBody,
}


class ConsumerSettings(NodeSettings):
    """A consumer identity (``consumer.toml`` of ``alchimia provision``)."""

    model_config = SettingsConfigDict(env_prefix="ALCHIMIA_CONSUMER_", extra="forbid")

    consumer_id: str = Field(
        default="consumer",
        description="this identity: the broker "
        "username (or certificate CN) and the last level of its "
        "response topics",
    )
    model_public_key: Path | None = Field(
        default=None,
        description="federation's model signing key (read from consumer.toml; "
        "requests do not need it)",
    )

    @field_validator("consumer_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "consumer id")


class RequestFailed(Exception):
    """The agent answered with an error (``code``, ``message``: docs/PROTOCOL.md)."""

    def __init__(self, response: ResponseBody) -> None:
        assert response.error is not None
        self.response = response
        self.code, self.message = response.error.code, response.error.message
        super().__init__(f"{self.code}: {self.message}")


def register_service(service: str, response: type[ResponseBody]) -> None:
    """Teach the client another service's response body (e.g. ``optimize``)."""
    _RESPONSES[service] = response


class Consumer:
    """One MQTT connection of a consumer identity; ``call`` is thread-safe."""

    def __init__(self, settings: ConsumerSettings, *, connect_timeout: float = 10.0) -> None:
        self.settings, self.id = settings, settings.consumer_id
        self.topics = Topics(settings.federation)
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[threading.Event, list[ResponseBody]]] = {}
        self._subscribed: dict[str, threading.Event] = {}  # service -> SUBACK
        self._suback: dict[int, threading.Event] = {}
        self._connected = threading.Event()
        self._refused: str | None = None
        self.rejections = RejectionLog(log)  # responses ignored, by reason: logged bounded
        host, port, _ = settings.host_port_tls
        self.client = settings.paho_client(
            f"{settings.federation}-{self.id}-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        try:
            self.client.connect(host, port, keepalive=settings.keepalive)
        except OSError as exc:
            raise ConnectionError(
                f"cannot connect to {settings.broker}: {settings.diagnose_connection()} ({exc})"
            ) from None
        self.client.loop_start()
        if not self._connected.wait(connect_timeout) or self._refused:
            self.close()
            why = self._refused or settings.diagnose_connection()
            raise ConnectionError(f"cannot connect to {settings.broker}: {why}")

    # -- paho callbacks (network thread)
    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object
    ) -> None:
        if rc.is_failure:
            self._refused = f"the broker refused the login: {rc}"
        self._connected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, _rc: object, _p: object) -> None:
        with self._lock:
            self._suback.setdefault(mid, threading.Event()).set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parsed = self.topics.parse_response_topic(msg.topic)
        if parsed is None or parsed[2] != self.id or parsed[1] not in _RESPONSES:
            return
        agent_id, service, _ = parsed
        try:
            env = decode(msg.payload, _RESPONSES[service], RESPONSE_LIMITS)
        except DecodeError as exc:
            self.rejections.reject("malformed", "ignored a response on %s: %s", msg.topic, exc)
            return
        if env.sender != agent_id:
            self.rejections.reject(
                "wrong_sender", "ignored a response on %s sent by %s", msg.topic, env.sender
            )
            return
        body = body_of(env, ResponseBody)
        with self._lock:
            waiting = self._pending.get(body.request_id or "")
        if waiting is not None:
            waiting[1].append(body)
            waiting[0].set()

    # -- requests
    def _subscribe(self, service: str, timeout: float) -> None:
        with self._lock:
            done = self._subscribed.get(service)
            first = done is None
            if first:
                done = self._subscribed[service] = threading.Event()
        assert done is not None
        if first:
            _rc, mid = self.client.subscribe(self.topics.client_responses(service, self.id), qos=1)
            with self._lock:
                ack = self._suback.setdefault(mid, threading.Event())
            if not ack.wait(timeout):
                with self._lock:
                    del self._subscribed[service]
                raise TimeoutError(
                    f"the broker did not acknowledge the subscription to "
                    f"{service} responses within {timeout:g} s"
                )
            done.set()
        elif not done.wait(timeout):
            raise TimeoutError(f"subscription to {service} responses not acknowledged")

    def call(
        self, agent_id: str, service: str, body: RequestBody, timeout: float = 5.0
    ) -> ResponseBody:
        """Send one request and wait for its response (errors included, not raised).
        Raises TimeoutError when no answer comes within ``timeout`` seconds."""
        check_id(agent_id, "agent id")
        if service not in _RESPONSES:
            raise ValueError(f"unknown service {service!r}")
        self._subscribe(service, timeout)
        event, box = threading.Event(), list[ResponseBody]()
        with self._lock:
            if body.request_id in self._pending:
                raise ValueError(f"request id {body.request_id!r} is already waiting")
            self._pending[body.request_id] = (event, box)
        try:
            self.client.publish(
                self.topics.agent_request(agent_id, service), message(self.id, body), qos=1
            )
            if not event.wait(timeout):
                raise TimeoutError(
                    f"no answer from agent {agent_id} within {timeout:g} s "
                    f"(is it running, and is {self.id} allowed to ask it?)"
                )
            return box[0]
        finally:
            with self._lock:
                del self._pending[body.request_id]

    def infer(
        self,
        agent_id: str,
        heats: Iterable[PlannedHeat | Mapping[str, Any]],
        *,
        level: float | None = None,
        timeout: float = 5.0,
        request_id: str | None = None,
    ) -> InferResponseBody:
        """Predictions with intervals for planned heats; raises RequestFailed if the agent
        answers with an error, TimeoutError if it does not answer."""
        req = InferRequestBody(
            request_id=request_id or uuid.uuid4().hex,
            heats=[planned_heat(h) for h in heats],
            level=level,
        )
        answer = self.call(agent_id, "infer", req, timeout)
        if answer.error is not None:
            raise RequestFailed(answer)
        return cast(InferResponseBody, answer)  # decoded as _RESPONSES["infer"]

    def optimize(
        self,
        agent_id: str,
        order: Mapping[str, Any],
        stock: Mapping[str, Any],
        *,
        risk: float | None = None,
        joint: bool = True,
        reference_charge: Mapping[str, float] | None = None,
        timeout: float = 30.0,
        request_id: str | None = None,
    ) -> OptimizeResponseBody:
        """The cheapest charge for ``order`` from ``stock`` (the maps of the TOML files,
        docs/DECISIONS.md) on the agent's serving model; the plan says ``infeasible`` and
        why when the order cannot be met. Raises RequestFailed if the agent answers with an
        error, TimeoutError if it does not answer."""
        req = OptimizeRequestBody(
            request_id=request_id or uuid.uuid4().hex,
            order=dict(order),
            stock=dict(stock),
            risk=risk,
            joint=joint,
            reference_charge=dict(reference_charge) if reference_charge else None,
        )
        answer = self.call(agent_id, "optimize", req, timeout)
        if answer.error is not None:
            raise RequestFailed(answer)
        return cast(OptimizeResponseBody, answer)  # decoded as _RESPONSES["optimize"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- planned heats from files ----------------------------------------------------------


def planned_heat(obj: PlannedHeat | Mapping[str, Any]) -> PlannedHeat:
    """A planned heat from any of the forms a file may hold:

    * ``{"heat_id": ..., "inputs": {feature: value}}`` (the wire form);
    * ``{"heat_id": ..., "charge": {grade: t}, "process": {feature: value}}``;
    * ``{"heat_id": ..., feature: value, ...}`` (flat, as a CSV row).
    """
    if isinstance(obj, PlannedHeat):
        return obj
    if not isinstance(obj, Mapping):
        raise ValueError(f"a heat must be a JSON object, got {type(obj).__name__}")
    data = dict(obj)
    heat_id = data.pop("heat_id", None)
    if "inputs" in data:
        inputs = data.pop("inputs")
        if data:
            raise ValueError(f"heat {heat_id}: unexpected keys beside inputs: {sorted(data)}")
    elif "charge" in data or "process" in data:
        charge, process = data.pop("charge", {}) or {}, data.pop("process", {}) or {}
        if data:
            raise ValueError(
                f"heat {heat_id}: unexpected keys beside charge and process: {sorted(data)}"
            )
        unknown = [g for g in charge if g not in GRADES]
        if unknown:
            raise ValueError(
                f"heat {heat_id}: unknown grade(s) {unknown}; known: {', '.join(GRADES)}"
            )
        inputs = {**{f"charge_{g}_t": t for g, t in charge.items()}, **process}
    else:
        inputs = data
    return PlannedHeat(heat_id=None if heat_id is None else str(heat_id), inputs=inputs)


def load_heats(path: Path) -> tuple[list[PlannedHeat], float | None]:
    """Planned heats from a ``.json`` file (one heat, a list, or ``{"heats": [...],
    "level": ...}``) or a ``.csv`` file (a header of feature names and an optional
    ``heat_id`` column; empty cells are left out, e.g. ``power_on_min`` to be estimated).
    Returns the heats and the file's level, if any."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        heats = []
        for n, row in enumerate(rows, start=2):
            data: dict[str, Any] = {}
            for key, cell in row.items():
                if key is None:
                    raise ValueError(f"{path}:{n}: more cells than header columns")
                key, cell = key.strip(), (cell or "").strip()
                if not cell:
                    continue
                if key == "heat_id":
                    data[key] = cell
                    continue
                try:
                    data[key] = float(cell)
                except ValueError:
                    raise ValueError(f"{path}:{n}: {key} = {cell!r} is not a number") from None
            heats.append(planned_heat(data))
        if not heats:
            raise ValueError(f"{path} holds no heats")
        return heats, None
    if path.suffix.lower() != ".json":
        raise ValueError(f"{path}: expected a .json or .csv file")
    doc = json.loads(path.read_text())
    level = None
    if isinstance(doc, dict) and "heats" in doc:
        level = doc.get("level")
        doc = doc["heats"]
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise ValueError(f"{path} holds no heats")
    return [planned_heat(h) for h in items], level


__all__ = [
    "Consumer",
    "ConsumerSettings",
    "RequestFailed",
    "load_heats",
    "planned_heat",
    "register_service",
]
