"""A read-only federation watcher: global model versions and each agent's validation error.

It is an ordinary MQTT consumer (it needs only the bus contract and onnxruntime), which is
how a dashboard or a plant HMI would follow a federation.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

import paho.mqtt.client as mqtt

from alchimia.broker.codec import DecodeError
from alchimia.broker.schemas import MetricsBody, ModelBody, body_of, decode
from alchimia.broker.settings import parse_broker_url
from alchimia.broker.topics import Topics

log = logging.getLogger("alchimia.monitor")


class Monitor:
    def __init__(self, broker_url: str, federation: str, client_id: str) -> None:
        self.topics = Topics(federation)
        self.host, self.port, _ = parse_broker_url(broker_url)
        self.cond = threading.Condition()
        self.model: ModelBody | None = None
        # version -> agent id -> validation figures
        self.validation: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def start(self) -> Monitor:
        self.client.connect_async(self.host, self.port)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe([(self.topics.model_current, 1), (self.topics.all_agents("metrics"), 1)])

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.topics.model_current:
                model = body_of(decode(msg.payload, ModelBody), ModelBody)
                with self.cond:
                    self.model = model
                    self.cond.notify_all()
                return
            env = decode(msg.payload, MetricsBody)
            body = body_of(env, MetricsBody)
            if body.scope == "validation" and body.model_version is not None:
                with self.cond:
                    self.validation[body.model_version][env.sender] = dict(body.values)
                    self.cond.notify_all()
        except DecodeError as exc:
            log.warning("monitor ignored a message on %s: %s", msg.topic, exc)

    def wait_validation(self, version: int, agents: set[str], timeout: float) -> bool:
        """Block until every agent in ``agents`` reported on ``version``."""
        with self.cond:
            return self.cond.wait_for(lambda: agents <= set(self.validation[version]), timeout)
