"""An in-process MQTT broker (amqtt) so the demo runs with nothing installed.

It runs on its own event loop in a daemon thread, listening on loopback only. It speaks
MQTT 3.1.1, which is all the protocol needs; production uses Mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from amqtt.broker import Broker


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="embedded-broker"
        )
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        # amqtt logs every connection at INFO and benign PUBACK races at WARNING; the
        # demo's own output is what matters.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        self._thread.start()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

        async def start() -> None:
            self._broker = Broker(config)
            await self._broker.start()

        self._call(start())
        return self

    def stop(self) -> None:
        if self._broker is not None:
            self._call(self._broker.shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        fut: Future[None] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        fut.result(timeout=30)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
