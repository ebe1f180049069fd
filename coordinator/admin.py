"""Admin commands sent to a running coordinator over the bus, each confirmed by what the
coordinator publishes once the command took effect."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt

from alchimia.broker.codec import DecodeError
from alchimia.broker.schemas import AdminBody, Body, ModelBody, StatusBody, decode, message
from alchimia.broker.settings import NodeSettings
from alchimia.broker.topics import Topics

# What the coordinator's status says once each command took effect.
_ACTIVITY = {"pause": "paused", "resume": "running", "stop": "stopping"}


def confirmation(command: AdminBody, reply: Body) -> str | None:
    """The line confirming ``command`` if ``reply`` (a message on ``model/current`` or
    ``coordinator/status``) shows it took effect; None otherwise.

    A rollback is confirmed by the model whose ``rollback_of`` names its version (durable
    and broadcast); pause, resume and stop by the coordinator's status ``activity``.
    """
    if command.action == "rollback":
        if isinstance(reply, ModelBody) and reply.metadata.get("rollback_of") == command.version:
            return f"rolled back to version {command.version}, published as version {reply.version}"
        return None
    if not isinstance(reply, StatusBody) or reply.role != "coordinator":
        return None
    if command.action == "stop" and reply.state == "offline":
        return "the coordinator is offline"
    if reply.state == "online" and reply.activity == _ACTIVITY[command.action]:
        return {
            "pause": "paused: no new round opens until resume (the open one finishes)",
            "resume": "running: rounds open again",
            "stop": "stopping after the current round",
        }[command.action]
    return None


async def send_admin(
    settings: NodeSettings, command: AdminBody, admin_id: str = "admin", timeout: float = 60.0
) -> str:
    """Send ``command`` on ``coordinator/admin`` and wait for its confirmation (raises
    TimeoutError without one)."""
    topics = Topics(settings.federation)
    host, port, _tls = settings.host_port_tls
    async with aiomqtt.Client(
        host,
        port,
        identifier=f"{admin_id}-{uuid.uuid4().hex[:8]}",
        username=settings.username,
        password=settings.password,
        tls_context=settings.tls_context(),
    ) as client:
        await client.subscribe(topics.model_current, qos=1)
        await client.subscribe(topics.coordinator_status, qos=1)
        # A retained status that already shows the asked state confirms it at once: the
        # command is then in effect, which is what the admin asked for.
        await client.publish(topics.coordinator_admin, message(admin_id, command), qos=1)
        async with asyncio.timeout(timeout):
            async for msg in client.messages:
                try:
                    reply = decode(bytes(msg.payload)).body
                except DecodeError:
                    continue
                if (line := confirmation(command, reply)) is not None:
                    return line
    raise TimeoutError("unreachable")  # asyncio.timeout raises first
