"""The agent's MQTT connection (paho-mqtt 2.x, threaded network loop).

paho's background thread reconnects by itself; on every (re)connect this link publishes
the retained birth and subscribes again, so the broker hands it the retained model and
task each time. Incoming messages go to a queue that the agent's work loop drains, so
training never blocks the network thread and vice versa. Requests from consumers
(``request_topics``) go to a queue of their own, ``requests``, so that a thread answering
them never waits behind training. Messages on ``direct`` topics are handed to their
handler on paho's network thread itself (the secure aggregation exchange, which must go on
while the work loop trains); a handler that raises is logged, never fatal to the thread.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Mapping, Sequence

import paho.mqtt.client as mqtt

from alchimia.broker.rejections import RejectionLog
from alchimia.broker.settings import NodeSettings

log = logging.getLogger("alchimia.agent.mqtt")
REQUEST_QUEUE = 256  # requests waiting to be answered; more are dropped (and counted)


class MqttLink:
    def __init__(
        self,
        settings: NodeSettings,
        client_id: str,
        *,
        will: tuple[str, bytes],
        birth: Callable[[], tuple[str, bytes]],
        subscriptions: Sequence[str],
        request_topics: Sequence[str] = (),
        direct: Mapping[str, Callable[[str, bytes | bytearray], None]] | None = None,
    ) -> None:
        # (topic, payload): paho's payloads are typed bytes | bytearray.
        self.inbox: queue.Queue[tuple[str, bytes | bytearray]] = queue.Queue()
        self.requests: queue.Queue[tuple[str, bytes | bytearray]] = queue.Queue(
            maxsize=REQUEST_QUEUE
        )
        self.dropped = RejectionLog(log)  # requests dropped because too many wait
        self._birth = birth
        self._request_topics = frozenset(request_topics)
        self._direct = dict(direct or {})
        self._subscriptions = (
            list(subscriptions) + sorted(self._direct) + sorted(self._request_topics)
        )
        self.settings = settings
        self.host, self.port, _tls = settings.host_port_tls
        self.keepalive = settings.keepalive
        self.client = settings.paho_client(client_id)
        self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_connect_fail = self._on_connect_fail
        self.connected = False
        self._explained = False

    @property
    def requests_dropped(self) -> int:
        return self.dropped.total

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()

    def stop(self, last: tuple[str, bytes] | None = None) -> None:
        """Publish ``last`` (e.g. a retained offline status) if connected, then disconnect."""
        if last is not None and self.connected:
            info = self.client.publish(last[0], last[1], qos=1, retain=True)
            info.wait_for_publish(timeout=5)
        self.connected = False  # a requested disconnect is not worth a warning
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; paho sends it now or after the next reconnect."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason: mqtt.ReasonCode,
        _props: object,
    ) -> None:
        if reason.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self._explained = False
        self.connected = True
        log.info("connected to %s:%d", self.host, self.port)
        topic, payload = self._birth()
        client.publish(topic, payload, qos=1, retain=True)
        client.subscribe([(t, 1) for t in self._subscriptions])

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        """paho retries forever; say once, in plain words, what is wrong."""
        if not self._explained:
            self._explained = True
            log.error(
                "cannot connect to %s:%d: %s (retrying)",
                self.host,
                self.port,
                self.settings.diagnose_connection(),
            )

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason: mqtt.ReasonCode,
        _props: object,
    ) -> None:
        if self.connected:
            log.warning("disconnected from %s:%d (%s); reconnecting", self.host, self.port, reason)
        self.connected = False

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        handler = self._direct.get(msg.topic)
        if handler is not None:
            try:
                handler(msg.topic, msg.payload)
            except Exception:  # an exception here would stop paho's network thread
                log.exception("handling a message on %s failed", msg.topic)
            return
        if msg.topic not in self._request_topics:
            self.inbox.put((msg.topic, msg.payload))
            return
        try:
            self.requests.put_nowait((msg.topic, msg.payload))
        except queue.Full:
            self.dropped.reject(
                "queue_full", "request dropped: %d already wait to be answered", REQUEST_QUEUE
            )
