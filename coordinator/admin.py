"""Admin commands sent to a running coordinator over the bus."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt

from broker.codec import DecodeError
from broker.schemas import AdminBody, ModelBody, decode, message
from broker.settings import NodeSettings
from broker.topics import Topics


async def request_rollback(settings: NodeSettings, version: int, admin_id: str = "admin",
                           timeout: float = 60.0) -> int:
    """Ask the coordinator to roll back to ``version``; return the version it published.

    Waits for the retained model to carry ``rollback_of == version``, which is the
    coordinator's confirmation that the rollback is durable and broadcast.
    """
    topics = Topics(settings.federation)
    host, port, _tls = settings.host_port_tls
    async with aiomqtt.Client(host, port, identifier=f"{admin_id}-{uuid.uuid4().hex[:8]}",
                              username=settings.username, password=settings.password,
                              tls_context=settings.tls_context()) as client:
        await client.subscribe(topics.model_current, qos=1)
        await client.publish(topics.coordinator_admin,
                             message(admin_id, AdminBody(action="rollback", version=version)),
                             qos=1)
        async with asyncio.timeout(timeout):
            async for msg in client.messages:
                try:
                    body: ModelBody = decode(bytes(msg.payload), ModelBody).body  # type: ignore[arg-type,assignment]
                except DecodeError:
                    continue
                if body.metadata.get("rollback_of") == version:
                    return body.version
    raise TimeoutError("unreachable")  # asyncio.timeout raises first
