"""The smallest MQTT 3.1.1 client the swarm benchmark needs (``bench/bench_swarm.py``).

Thousands of agents per process on one asyncio loop: one paho client (with its own loop
thread) per agent does not scale to 10,000 on two cores. Only what an agent of
docs/PROTOCOL.md uses: CONNECT with a clean session and a retained QoS 1 will, SUBSCRIBE at
QoS 1, PUBLISH at QoS 0/1 with PUBACK both ways, DISCONNECT; no keepalive pings (keepalive
0), no QoS 2, no resends (agents send each update once, as the protocol says).

The packet codec (``connect_packet``, ``publish_packet``, ``parse_publish``, ...) is pure and
unit-tested (tests/unit/test_swarm_mqtt.py); ``Connection`` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
DISCONNECT = 14
_MAX_REMAINING = 268_435_455


def encode_length(n: int) -> bytes:
    """MQTT's variable-length "remaining length": 7 bits a byte, low bits first."""
    if not 0 <= n <= _MAX_REMAINING:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_length(len(body)) + body


def connect_packet(client_id: str, will_topic: str, will_payload: bytes) -> bytes:
    """Clean session, keepalive 0, will at QoS 1 and retained (an agent's offline status)."""
    flags = 0x02 | 0x04 | (1 << 3) | 0x20
    body = (
        _string("MQTT")
        + bytes([4, flags])
        + struct.pack("!H", 0)
        + _string(client_id)
        + _string(will_topic)
        + _string(will_payload)
    )
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, topics: Sequence[str], qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_string(t) + bytes([qos]) for t in topics)
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def publish_packet(
    topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0, retain: bool = False
) -> bytes:
    if qos not in (0, 1):
        raise ValueError("QoS 0 or 1 only")
    head = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return _packet((PUBLISH << 4) | (qos << 1) | int(retain), head + payload)


def puback_packet(packet_id: int) -> bytes:
    return _packet(PUBACK << 4, struct.pack("!H", packet_id))


DISCONNECT_PACKET = _packet(DISCONNECT << 4, b"")


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int
    retain: bool


def parse_publish(flags: int, body: bytes) -> Publish:
    """A received PUBLISH from its fixed header's low four bits and its body."""
    qos = (flags >> 1) & 0x03
    if qos > 1:
        raise ValueError("QoS 2 is not used on this bus")
    (n,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + n].decode()
    pos = 2 + n
    packet_id = 0
    if qos:
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    return Publish(topic, body[pos:], qos, packet_id, bool(flags & 0x01))


class Connection:
    """One client connection; ``read_packet`` returns (type, flags, body)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._next_id = 0

    @classmethod
    async def open(
        cls, host: str, port: int, client_id: str, will_topic: str, will_payload: bytes
    ) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=4 * 1024 * 1024)
        conn = cls(reader, writer)
        writer.write(connect_packet(client_id, will_topic, will_payload))
        kind, _, body = await conn.read_packet()
        if kind != CONNACK or body[1] != 0:
            raise ConnectionError(f"CONNACK refused: packet {kind}, code {body[1:2].hex()}")
        return conn

    def packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def read_packet(self) -> tuple[int, int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        body = await self.reader.readexactly(length) if length else b""
        return first >> 4, first & 0x0F, body

    def subscribe(self, topics: Sequence[str]) -> None:
        self.writer.write(subscribe_packet(self.packet_id(), topics))

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Queue a PUBLISH; returns its packet id (0 at QoS 0)."""
        pid = self.packet_id() if qos else 0
        self.writer.write(publish_packet(topic, payload, qos=qos, packet_id=pid, retain=retain))
        return pid

    def puback(self, packet_id: int) -> None:
        self.writer.write(puback_packet(packet_id))

    async def close(self) -> None:
        self.writer.write(DISCONNECT_PACKET)
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):  # the broker may close first
            await self.writer.wait_closed()
