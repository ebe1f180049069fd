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
from alchimia.broker.unpacker import (
    SMALL_MESSAGE_BYTES,
    _unpack_small,
    _unpack_walk,
    unpack_views,
)

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
    arr = np.arange(SMALL_MESSAGE_BYTES // 4 + 1, dtype=np.float32)  # past the fast path
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


# The fast path (msgpack's C decoder, small messages) against the walk: for every input,
# the same acceptance and equal objects of the same types.


def typed(obj: Any) -> Any:
    """``obj`` with every value tagged by its exact type, floats by their bits (NaN too)."""
    if isinstance(obj, memoryview):
        return ("bin", obj.readonly, obj.format, obj.tobytes())
    if isinstance(obj, list):
        return ("list", [typed(x) for x in obj])
    if isinstance(obj, dict):
        return ("map", [(typed(k), typed(v)) for k, v in obj.items()])
    if isinstance(obj, float):
        return ("float", struct.pack(">d", obj))
    return (type(obj).__name__, obj)


def outcome(decoder: Any, payload: bytes, limits: Limits) -> Any:
    try:
        return ("ok", typed(decoder(payload, limits)))
    except DecodeError as exc:
        return ("refused", str(exc))


def check_paths_agree(payload: bytes, limits: Limits) -> Any:
    """The walk's outcome, after checking that the fast path never accepts what the walk
    refuses nor decodes to anything else, and that ``unpack_views`` gives the same."""
    walk = outcome(_unpack_walk, payload, limits)
    try:
        fast = ("ok", typed(_unpack_small(payload, limits)))
    except Exception:  # refused: unpack_views falls back to the walk
        fast = None
    if fast is not None:
        assert fast == walk, payload
    assert outcome(unpack_views, payload, limits) == walk
    return walk


def _item(head: int, width: int, n: int) -> bytes:
    return bytes([head]) + n.to_bytes(width, "big")


def _sized(fix: int | None, fix_max: int, wide: list[tuple[int, int]], n: int, form: int) -> bytes:
    """The header of a str/bin/array/map of ``n``: fix form when it fits, else one of the
    wider forms that can hold ``n`` (``form`` picks), as a hostile sender may choose."""
    forms = [bytes([fix | n])] if fix is not None and n <= fix_max else []
    forms += [_item(h, w, n) for h, w in wide if n < 256**w]
    return forms[form % len(forms)]


def _str(raw: bytes, form: int) -> bytes:
    return _sized(0xA0, 31, [(0xD9, 1), (0xDA, 2), (0xDB, 4)], len(raw), form) + raw


def _bin(raw: bytes, form: int) -> bytes:
    return _sized(None, 0, [(0xC4, 1), (0xC5, 2), (0xC6, 4)], len(raw), form) + raw


def _ext(code: int, data: bytes, form: int) -> bytes:
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if len(data) in fixed and form % 2:
        return bytes([fixed[len(data)], code & 0xFF]) + data
    return (
        _sized(None, 0, [(0xC7, 1), (0xC8, 2), (0xC9, 4)], len(data), form)
        + bytes([code & 0xFF])
        + data
    )


utf8ish = st.text(max_size=6).map(str.encode) | st.sampled_from(
    [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80", b"\xe2\x82"]
)
leaves = st.one_of(
    st.builds(
        lambda v: msgpack.packb(v, use_bin_type=True),
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(),
    ),
    st.builds(lambda f: b"\xca" + struct.pack(">f", f), st.floats(width=32)),
    st.builds(_str, utf8ish, st.integers(0, 3)),
    st.builds(_bin, st.binary(max_size=12), st.integers(0, 3)),
    # Never accepted: ext values (a valid timestamp, ext -1, among them), type byte 0xc1.
    st.one_of(
        st.builds(_ext, st.integers(-128, 127), st.binary(max_size=16), st.integers(0, 5)),
        st.builds(lambda s: b"\xd6\xff" + s.to_bytes(4, "big"), st.integers(0, 2**32 - 1)),
        st.sampled_from([b"\xc1", b"\xc7\x00\xff", b"\xc7\x00\x05", b"\xd4\xff\x00"]),
    ),
)


def _array(items: list[bytes], form: int, skew: int) -> bytes:
    return _sized(0x90, 15, [(0xDC, 2), (0xDD, 4)], max(len(items) + skew, 0), form) + b"".join(
        items
    )


def _map(pairs: list[tuple[bytes, bytes]], form: int, skew: int) -> bytes:
    n = max(len(pairs) + skew, 0)
    return _sized(0x80, 15, [(0xDE, 2), (0xDF, 4)], n, form) + b"".join(k + v for k, v in pairs)


keys = st.builds(_str, st.text(max_size=6).map(str.encode), st.integers(0, 3)) | leaves
# Raw msgpack items, hostile: any key type, ext, bad UTF-8, headers that miscount.
items = st.recursive(
    leaves,
    lambda inner: (
        st.builds(
            _array,
            st.lists(inner, max_size=5),
            st.integers(0, 2),
            st.sampled_from([0] * 8 + [-1, 1]),
        )
        | st.builds(
            _map,
            st.lists(st.tuples(keys | inner, inner), max_size=4),
            st.integers(0, 2),
            st.sampled_from([0] * 8 + [-1, 1]),
        )
    ),
    max_leaves=30,
)
limits_under_test = st.just(LIMITS) | st.builds(
    Limits,
    max_str_len=st.integers(0, 8),
    max_container_len=st.integers(0, 6),
    max_depth=st.integers(0, 5),
)


@settings(max_examples=1000, deadline=None)
@given(items, limits_under_test, st.sampled_from(["as is", "cut", "trailing", "random"]), st.data())
def test_fast_path_agrees_with_the_walk_on_hostile_input(
    item: bytes, limits: Limits, op: str, data: st.DataObject
) -> None:
    payload = item
    if op == "cut" and payload:
        payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
    elif op == "trailing":
        payload += data.draw(st.binary(min_size=1, max_size=4))
    elif op == "random":
        payload = data.draw(st.binary(max_size=40))
    check_paths_agree(payload, limits)


@settings(max_examples=400, deadline=None)
@given(values)
def test_fast_path_takes_valid_messages(value: Any) -> None:
    """What msgpack-python packs (arrays of at most 256 items) the fast path decodes."""
    payload = msgpack.packb(value, use_bin_type=True)
    assert check_paths_agree(payload, LIMITS)[0] == "ok"
    assert typed(_unpack_small(payload, LIMITS)) == typed(_unpack_walk(payload, LIMITS))


def _nested(depth: int, kind: str) -> bytes:
    head = b"\x91" if kind == "array" else b"\x81\xa1k"
    return head * depth + b"\x01"


@pytest.mark.parametrize("kind", ["array", "map"])
@pytest.mark.parametrize("depth", [0, 1, 31, 32, 33, 1023, 1024, 1025, 3000])
def test_nesting_around_the_limits_of_both_decoders(depth: int, kind: str) -> None:
    """Our limit (32) and msgpack's stack (1024): refused alike, with the walk's reason."""
    result = check_paths_agree(_nested(depth, kind), LIMITS)
    assert (result[0] == "ok") == (depth <= 32)
    if depth > 32:
        assert "nested deeper than 32" in result[1]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x81\xc4\x01k\x01", "keys must be strings, got memoryview"),  # bin key
        (b"\x81\xc0\x01", "keys must be strings, got NoneType"),
        (b"\x81\x91\x01\x01", "keys must be strings, got list"),
        (b"\xd6\xff\x00\x00\x00\x01", "ext types"),  # a valid timestamp
        (b"\xc7\x00\x05", "ext types"),  # an empty ext value
        (b"\x91\xc7\x00\xff", "ext types"),  # an empty timestamp
        (b"\x81\xa2\xff\xfe\x01", "not valid UTF-8"),  # in a key
        (b"\xa3\xed\xa0\x80", "not valid UTF-8"),  # a surrogate
        (b"\x90\x00", "1 trailing bytes"),
        (b"\xc4\x05abc", "truncated"),
        (b"\xdc\x01\x01" + b"\x00" * 257, "ok"),  # longer than the fast path's arrays
        (b"\xdc\x00\x10", "truncated"),
    ],
)
def test_what_msgpack_would_take_gets_the_walks_reason(payload: bytes, reason: str) -> None:
    result = check_paths_agree(payload, LIMITS)
    assert result[0] == "ok" if reason == "ok" else reason in result[1]


def test_limits_bind_the_fast_path_as_the_walk() -> None:
    for limits, payload in [
        (Limits(max_str_len=3), pack({"abcd": 1})),  # a key over the string limit
        (Limits(max_str_len=3), pack(["abcd"])),
        (Limits(max_container_len=2), pack({"a": 1, "b": 2, "c": 3})),
        (Limits(max_container_len=2), pack([[1, 2, 3]])),
        (Limits(max_depth=2), pack({"a": {"b": {}}})),
        (Limits(max_depth=0), pack([])),
    ]:
        assert check_paths_agree(payload, limits)[0] == "refused", (limits, payload)
    assert check_paths_agree(pack({"a": {"b": 1}}), Limits(max_depth=2))[0] == "ok"


def test_small_messages_also_give_read_only_views() -> None:
    arr = np.arange(100, dtype=np.float32)
    payload = pack({"t": encode_tensors({"w": arr}), "blobs": [b"x", b""]})
    assert len(payload) <= SMALL_MESSAGE_BYTES
    obj = unpack_views(payload, LIMITS)
    for data in (obj["t"]["w"]["data"], *obj["blobs"]):
        assert isinstance(data, memoryview) and data.readonly
    out = decode_tensors(obj["t"])["w"]
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable
    assert isinstance(unpack_views(pack(b"top"), LIMITS), memoryview)


def test_fast_path_refuses_long_arrays_without_allocating_them() -> None:
    """1024 nested headers claiming 65535 items each: msgpack would allocate 512 MB of
    lists before it failed; the fast path's array bound leaves it to the walk."""
    payload = b"\xdc\xff\xff" * 1024
    payload += b"\x00" * (SMALL_MESSAGE_BYTES - len(payload))
    with pytest.raises(ValueError, match="exceeds max_array_len"):
        _unpack_small(payload, LIMITS)
    with pytest.raises(DecodeError, match="truncated: 65535 bytes needed at offset 3"):
        unpack_views(payload, LIMITS)  # the walk checks the bytes left first
