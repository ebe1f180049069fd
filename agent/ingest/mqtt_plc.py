"""A PLC gateway's sensor topics over MQTT (paho-mqtt 2.x) as store points.

Topics (docs/SENSORS.md), one JSON object per message::

    [{prefix}/]plant/{plant}/eaf/{furnace}/signal   {"ts": ..., "heat": "...", "values": {...}}
    [{prefix}/]plant/{plant}/eaf/{furnace}/charge   (same shape, charge fields)
    [{prefix}/]plant/{plant}/eaf/{furnace}/tap      (same shape, tap fields)

Parsing is the pure function :func:`parse_message` (no I/O, never raises), so every
malformed case is unit-tested without a broker. The network side only queues raw
messages from paho's thread; :meth:`MqttPlcSource.poll` parses them on the caller's
thread, so a flood of bad input costs the agent parsing time but never stops ingestion.
"""

from __future__ import annotations

import json
import logging
import queue
import threading

import paho.mqtt.client as mqtt

from alchimia.agent.ingest.base import (
    CHARGE_FIELDS,
    CHARGE_MEASUREMENT,
    SIGNAL_FIELDS,
    SIGNAL_MEASUREMENT,
    TAP_FIELDS,
    TAP_MEASUREMENT,
    IngestStats,
    Reason,
    Rejected,
    check_id,
    parse_number,
    parse_ts,
)
from alchimia.agent.store import Point
from alchimia.broker.settings import parse_broker_url

log = logging.getLogger(__name__)

#: Largest accepted payload: one sample is ~0.5 kB; anything far bigger is not ours.
MAX_PAYLOAD_BYTES = 16 * 1024
#: Messages held between two polls before new ones are dropped (counted as overflow).
MAX_INBOX = 1_000_000

#: Topic kind -> (measurement, fields the payload's "values" may hold).
KINDS: dict[str, tuple[str, frozenset[str]]] = {
    "signal": (SIGNAL_MEASUREMENT, frozenset(SIGNAL_FIELDS)),
    "charge": (CHARGE_MEASUREMENT, frozenset(CHARGE_FIELDS)),
    "tap": (TAP_MEASUREMENT, frozenset(TAP_FIELDS)),
}
_PAYLOAD_KEYS = frozenset(("ts", "heat", "values"))


def topic_filter(prefix: str = "", plant: str = "+", furnace: str = "+") -> str:
    """The subscription for the record kinds of one plant/furnace (``+``: all)."""
    return f"{_prefix(prefix)}plant/{plant}/eaf/{furnace}/+"


def _prefix(prefix: str) -> str:
    return prefix.strip("/") + "/" if prefix.strip("/") else ""


def parse_topic(topic: str, prefix: str = "") -> tuple[str, str, str] | Rejected:
    """``(plant, furnace, kind)`` of a sensor topic."""
    pre = _prefix(prefix)
    if not topic.startswith(pre):
        return Rejected(Reason.BAD_TOPIC, f"{topic[:120]!r} is not under {pre!r}")
    levels = topic[len(pre) :].split("/")
    if len(levels) != 5 or levels[0] != "plant" or levels[2] != "eaf":
        return Rejected(
            Reason.BAD_TOPIC, f"{topic[:120]!r} is not plant/{{plant}}/eaf/{{furnace}}/{{kind}}"
        )
    plant, furnace, kind = levels[1], levels[3], levels[4]
    if check_id(plant) is None or check_id(furnace) is None:
        return Rejected(Reason.BAD_TOPIC, f"bad plant or furnace id in {topic[:120]!r}")
    if kind not in KINDS:
        return Rejected(Reason.BAD_TOPIC, f"unknown record kind {kind[:40]!r}")
    return plant, furnace, kind


def parse_payload(
    plant: str,
    furnace: str,
    kind: str,
    payload: bytes | bytearray,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> Point | Rejected:
    """One message body of a known topic -> a Point; never raises."""
    if len(payload) > max_bytes:
        return Rejected(Reason.OVERSIZED, f"{len(payload)} bytes > {max_bytes}")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return Rejected(Reason.BAD_JSON, str(exc)[:120])
    if not isinstance(doc, dict):
        return Rejected(Reason.BAD_TYPE, f"payload must be a JSON object, got {type(doc).__name__}")
    extra = doc.keys() - _PAYLOAD_KEYS
    if extra:
        return Rejected(Reason.UNKNOWN_FIELD, f"unknown keys {sorted(extra)[:5]}")
    if "heat" not in doc or doc["heat"] is None:
        return Rejected(Reason.MISSING_HEAT)
    heat = check_id(doc["heat"])
    if heat is None:
        return Rejected(Reason.BAD_HEAT, f"heat id {str(doc['heat'])[:80]!r}")
    if "ts" not in doc or doc["ts"] is None:
        return Rejected(Reason.MISSING_TS)
    ts = parse_ts(doc["ts"])
    if isinstance(ts, Rejected):
        return ts
    measurement, allowed = KINDS[kind]
    values = parse_values(doc.get("values"), allowed)
    if isinstance(values, Rejected):
        return values
    return Point(measurement, {"plant": plant, "furnace": furnace, "heat": heat}, values, ts)


def parse_values(values: object, allowed: frozenset[str]) -> dict[str, float] | Rejected:
    """The ``values`` object: known fields only, each a finite JSON number (not a text)."""
    if values is None:
        return Rejected(Reason.NO_VALUES)
    if not isinstance(values, dict):
        return Rejected(Reason.BAD_TYPE, f"values must be an object, got {type(values).__name__}")
    if not values:
        return Rejected(Reason.NO_VALUES)
    unknown = values.keys() - allowed
    if unknown:
        return Rejected(Reason.UNKNOWN_FIELD, f"{sorted(unknown)[:5]}")
    out: dict[str, float] = {}
    for key, raw in values.items():
        if type(raw) not in (int, float):
            return Rejected(Reason.BAD_TYPE, f"{key} must be a number, got {type(raw).__name__}")
        number = parse_number(raw)
        if isinstance(number, Rejected):
            return Rejected(number.reason, f"{key}: {number.detail}")
        out[key] = number  # always float: InfluxDB refuses a field's type changing
    return out


def parse_message(
    topic: str, payload: bytes | bytearray, *, prefix: str = "", max_bytes: int = MAX_PAYLOAD_BYTES
) -> Point | Rejected:
    """A sensor message -> a Point, or the reason it is refused; never raises."""
    try:
        where = parse_topic(topic, prefix)
        if isinstance(where, Rejected):
            return where
        return parse_payload(*where, payload, max_bytes)
    except Exception as exc:  # a bug must not stop ingestion; counted apart to be found
        return Rejected(Reason.INTERNAL, f"{type(exc).__name__}: {exc}"[:200])


class MqttPlcSource:
    """Subscribes to a PLC gateway's sensor topics; ``poll()`` returns the parsed points.

    A persistent session (``clean_session=False``, fixed ``client_id``) with QoS 1 makes the
    broker keep the gateway's messages while the agent is briefly away. paho reconnects
    and subscribes again by itself.
    """

    def __init__(
        self,
        broker: str,
        *,
        plant: str = "+",
        furnace: str = "+",
        prefix: str = "",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        qos: int = 1,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        max_inbox: int = MAX_INBOX,
        max_points: int = 100_000,
        keepalive: int = 30,
    ) -> None:
        self.host, self.port, tls = parse_broker_url(broker)
        for name, value in (("plant", plant), ("furnace", furnace)):
            if value != "+" and check_id(value) is None:
                raise ValueError(f"{name} {value!r} is not a valid id")
        self.prefix = prefix
        self.topic = topic_filter(prefix, plant, furnace)
        self.qos = qos
        self.max_bytes = max_bytes
        self.max_points = max_points
        self.keepalive = keepalive
        self.stats = IngestStats(log)
        self.volatile = True  # paho acknowledged each message on receipt
        self._inbox: queue.Queue[tuple[str, bytes | bytearray, int]] = queue.Queue(
            maxsize=max_inbox
        )
        self._subscribed = threading.Event()
        self._closing = False
        persistent = client_id is not None
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or "",
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.connect_async(self.host, self.port, keepalive)
        self.client.loop_start()

    @property
    def caught_up(self) -> bool:
        """A live feed has no backlog to wait for."""
        return True

    @property
    def queued(self) -> int:
        """Messages received and not polled yet."""
        return self._inbox.qsize()

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """True once the broker acknowledged the subscription (after each reconnect)."""
        return self._subscribed.wait(timeout)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason: mqtt.ReasonCode,
        _props: object,
    ) -> None:
        if reason.is_failure:
            log.error(
                "broker %s:%d refused the sensor connection: %s", self.host, self.port, reason
            )
            return
        log.info(
            "sensor feed connected to %s:%d, subscribing to %s", self.host, self.port, self.topic
        )
        client.subscribe(self.topic, qos=self.qos)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reasons: list[mqtt.ReasonCode],
        _props: object,
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused the subscription to %s: %s", self.topic, reasons)
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason: mqtt.ReasonCode,
        _props: object,
    ) -> None:
        self._subscribed.clear()
        if not self._closing:
            log.warning(
                "sensor feed disconnected from %s:%d (%s); reconnecting",
                self.host,
                self.port,
                reason,
            )

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        size = len(msg.payload)
        # An oversized payload is refused at once rather than held in the inbox.
        payload = msg.payload if size <= self.max_bytes else b""
        try:
            self._inbox.put_nowait((msg.topic, payload, size))
        except queue.Full:
            self.stats.reject(
                Reason.OVERFLOW,
                "sensor inbox full (%d messages): message on %s dropped; poll more often",
                self._inbox.maxsize,
                msg.topic,
            )

    def poll(self) -> list[Point]:
        out: list[Point] = []
        while len(out) < self.max_points:
            try:
                topic, payload, size = self._inbox.get_nowait()
            except queue.Empty:
                break
            if size > self.max_bytes:
                result: Point | Rejected = Rejected(
                    Reason.OVERSIZED, f"{size} bytes > {self.max_bytes}"
                )
            else:
                result = parse_message(topic, payload, prefix=self.prefix, max_bytes=self.max_bytes)
            if isinstance(result, Rejected):
                self.stats.reject(
                    result.reason,
                    "sensor message on %s rejected (%s): %s",
                    topic,
                    result.reason,
                    result.detail,
                )
            else:
                out.append(result)
        self.stats.accept(len(out))
        return out

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
