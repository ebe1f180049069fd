"""The swarm benchmark's MQTT 3.1.1 packets (bench/swarm_mqtt.py), checked against the
byte layouts of the MQTT 3.1.1 specification (sections 2.2.3, 3.1, 3.3, 3.4, 3.8, 3.14)."""

from __future__ import annotations

import pytest

from bench.swarm_mqtt import (
    DISCONNECT_PACKET,
    PUBLISH,
    connect_packet,
    encode_length,
    parse_publish,
    puback_packet,
    publish_packet,
    subscribe_packet,
)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_examples_of_the_specification(n: int, encoded: bytes) -> None:
    assert encode_length(n) == encoded


def test_remaining_length_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_length(268_435_456)


def test_connect_clean_session_retained_qos1_will_keepalive_0() -> None:
    pkt = connect_packet("f-a1", "t/w", b"\x01\x02")
    body = (
        b"\x00\x04MQTT\x04"
        + bytes([0x2E])
        + b"\x00\x00"
        + b"\x00\x04f-a1"
        + b"\x00\x03t/w"
        + b"\x00\x02\x01\x02"
    )
    assert pkt == b"\x10" + bytes([len(body)]) + body


def test_subscribe_puback_disconnect() -> None:
    assert (
        subscribe_packet(7, ["a/b", "c"])
        == b"\x82\x0c\x00\x07" + b"\x00\x03a/b\x01" + b"\x00\x01c\x01"
    )
    assert puback_packet(0x1234) == b"\x40\x02\x12\x34"
    assert DISCONNECT_PACKET == b"\xe0\x00"


@pytest.mark.parametrize(("qos", "retain"), [(0, False), (1, False), (1, True)])
def test_publish_round_trip(qos: int, retain: bool) -> None:
    payload = bytes(range(256)) * 600  # a multi-byte remaining length
    pkt = publish_packet("x/y/update", payload, qos=qos, packet_id=513 if qos else 0, retain=retain)
    assert pkt[0] >> 4 == PUBLISH
    length, shift, pos = 0, 0, 1
    while True:
        length |= (pkt[pos] & 0x7F) << shift
        pos += 1
        if not pkt[pos - 1] & 0x80:
            break
        shift += 7
    assert length == len(pkt) - pos
    got = parse_publish(pkt[0] & 0x0F, pkt[pos:])
    assert (got.topic, got.payload, got.qos, got.retain) == ("x/y/update", payload, qos, retain)
    assert got.packet_id == (513 if qos else 0)


def test_qos2_is_refused() -> None:
    with pytest.raises(ValueError):
        publish_packet("t", b"", qos=2)
    with pytest.raises(ValueError):
        parse_publish(0x04, b"\x00\x01t\x00\x01")
