"""The zero-copy msgpack decoder: same objects as msgpack-python, views for bin, hostile input."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alchimia.broker.codec import decode_tensors, encode_tensors, pack
from alchimia.broker.limits import DecodeError, Limits
from alchimia.broker.unpacker import unpack_views

LIMITS = Limits()

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=300)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=40,
)


def as_plain(obj: Any) -> Any:
    """memoryviews to bytes, recursively, to compare with msgpack-python's output."""
    if isinstance(obj, memoryview):
        return obj.tobytes()
    if isinstance(obj, list):
        return [as_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: as_plain(v) for k, v in obj.items()}
    return obj


@settings(max_examples=400, deadline=None)
@given(values)
def test_decodes_what_msgpack_encodes(value: Any) -> None:
    payload = msgpack.packb(value, use_bin_type=True)
    assert as_plain(unpack_views(payload, LIMITS)) == msgpack.unpackb(payload, raw=False)


def test_float32_and_every_width_decode() -> None:
    payload = b"\xca" + struct.pack(">f", 1.5)
    assert unpack_views(payload, LIMITS) == 1.5
    for n in (0, 1, 31, 32, 255, 256, 65535, 65536):
        text, blob = "x" * n, b"y" * n
        assert unpack_views(pack([text, blob]), LIMITS)[0] == text
        assert bytes(unpack_views(pack(blob), LIMITS)) == blob
    for n in (15, 16, 65535, 65536):
        assert unpack_views(pack(list(range(n))), LIMITS) == list(range(n))
        assert len(unpack_views(pack({str(i): i for i in range(n)}), LIMITS)) == n


def test_bin_is_a_read_only_view_into_the_payload() -> None:
    arr = np.arange(1000, dtype=np.float32)
    payload = pack({"t": encode_tensors({"w": arr})})
    obj = unpack_views(payload, LIMITS)
    data = obj["t"]["w"]["data"]
    assert isinstance(data, memoryview) and data.readonly
    assert data.obj is payload  # no copy was made
    out = decode_tensors(obj["t"])["w"]
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable
    assert np.shares_memory(out, np.frombuffer(payload, np.uint8))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "truncated"),
        (b"\xc1", "invalid msgpack type byte 0xc1"),
        (b"\x92\x01", "truncated"),
        (b"\xc6\xff\xff\xff\xff", "truncated"),  # a bin claiming 4 GB
        (b"\xdd\xff\xff\xff\xff", "exceeds the limit"),  # an array claiming 4 billion entries
        (b"\xdc\x00\x10\x01", "truncated"),  # 16 entries declared, 1 byte left
        (b"\xd4\x01\x00", "ext types"),
        (b"\xc7\x01\x01x", "ext types"),
        (b"\x81\x01\x02", "keys must be strings"),
        (b"\xa2\xff\xfe", "not valid UTF-8"),
        (b"\x01\x02", "1 trailing bytes"),
        (b"\x91" * 40 + b"\x01", "nested deeper than 32"),
    ],
)
def test_hostile_input_gets_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        unpack_views(payload, LIMITS)


def test_limits_apply_to_strings_and_containers() -> None:
    tight = Limits(max_str_len=4, max_container_len=3)
    with pytest.raises(DecodeError, match="string of 5 bytes"):
        unpack_views(pack("hello"), tight)
    with pytest.raises(DecodeError, match="4 entries"):
        unpack_views(pack([1, 2, 3, 4]), tight)
    assert unpack_views(pack([1, 2, 3]), tight) == [1, 2, 3]


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_mutated_payloads_never_escape_decode_error(value: Any, data: st.DataObject) -> None:
    """Flip, cut or extend a valid payload: the result is an object or a DecodeError."""
    payload = bytearray(msgpack.packb(value, use_bin_type=True))
    op = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if op == "flip":
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    elif op == "cut":
        del payload[data.draw(st.integers(0, len(payload) - 1)) :]
    else:
        payload += data.draw(st.binary(min_size=1, max_size=8))
    try:
        got = unpack_views(bytes(payload), LIMITS)
    except DecodeError:
        return
    # When it decodes, msgpack-python agrees (NaN from a flipped float compares by identity).
    want = msgpack.unpackb(bytes(payload), raw=False, strict_map_key=False)
    assert repr(as_plain(got)) == repr(want) or (isinstance(want, float) and math.isnan(want))


def test_mutable_payload_is_refused() -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        unpack_views(bytearray(b"\x01"), LIMITS)  # type: ignore[arg-type]
