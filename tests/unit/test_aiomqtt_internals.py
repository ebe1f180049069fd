"""The two aiomqtt internals the coordinator's receiver relies on (``coordinator.service``
``_paho`` and ``_inbox``): aiomqtt 2 has no public API for them, so an aiomqtt release
that renames or changes them must fail here, not slow or break a running federation."""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as mqtt

from alchimia.coordinator.service import _inbox, _paho


def test_the_receiver_finds_aiomqtts_queue_and_paho_client() -> None:
    async def inspect() -> None:
        client = aiomqtt.Client("127.0.0.1", port=1, identifier="internals")
        inbox = _inbox(client)
        assert isinstance(inbox, asyncio.Queue)
        assert isinstance(_paho(client), mqtt.Client)
        # What client.messages yields is what the receiver takes from the queue.
        message = aiomqtt.Message("t", b"x", qos=1, retain=False, mid=7, properties=None)
        inbox.put_nowait(message)
        assert len(client.messages) == 1
        assert await asyncio.wait_for(anext(aiter(client.messages)), 5.0) is message

    asyncio.run(inspect())
