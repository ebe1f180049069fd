"""The msgpack envelope and tensor codec: round trips, limits and malformed input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from alchimia.broker.codec import DecodeError, Limits, decode_tensor, encode_tensor, pack, unpack
from alchimia.broker.schemas import ModelBody, StatusBody, TaskBody, UpdateBody, decode, message


def _update(**delta: np.ndarray) -> bytes:
    body = UpdateBody(
        round_id=3,
        base_version=2,
        num_samples=40,
        delta=delta or {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        metrics={"train_loss": 0.5},
    )
    return message("plant-1", body)


def _mutate(payload: bytes, fn) -> bytes:
    raw = msgpack.unpackb(payload)
    fn(raw)
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<i4", "<i8"])
def test_tensor_round_trip_keeps_dtype_shape_and_values(dtype: str) -> None:
    arr = (np.arange(24) - 7).astype(dtype).reshape(2, 3, 4)
    back = decode_tensor(msgpack.unpackb(pack(encode_tensor(arr))))
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, arr)


def test_big_endian_input_travels_little_endian() -> None:
    arr = np.array([1.5, -2.25], dtype=">f4")
    wire = encode_tensor(arr)
    assert wire["data"] == np.array([1.5, -2.25], "<f4").tobytes()


def test_decode_is_zero_copy_view_of_the_message() -> None:
    env = decode(_update())
    w = env.body.delta["w"]
    assert not w.flags.owndata and not w.flags.writeable
    np.testing.assert_array_equal(w, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_envelope_round_trip() -> None:
    env = decode(_update(), UpdateBody)
    assert (env.kind, env.sender, env.v) == ("update", "plant-1", 1)
    assert len(env.msg_id) == 32 and env.body.num_samples == 40
    assert env.body.metrics == {"train_loss": 0.5}


def test_every_kind_round_trips() -> None:
    for body in (
        StatusBody(role="agent", state="online", samples=3),
        TaskBody(round_id=1, state="open", base_version=0, deadline_ts=1e9, selected=["a"]),
    ):
        assert decode(message("coordinator", body)).body == body
    model = ModelBody(
        version=1, spec={"x": 1}, onnx=b"\x08\x01", weights={"b": np.arange(3, dtype=np.float32)}
    )
    back = decode(message("coordinator", model), ModelBody).body
    assert (back.version, back.spec, back.onnx) == (1, {"x": 1}, b"\x08\x01")
    np.testing.assert_array_equal(back.weights["b"], [0, 1, 2])


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        (lambda m: m["body"]["delta"]["w"].update(shape=[3, 3]), "needs 36"),
        (lambda m: m["body"]["delta"]["w"].update(dtype="O"), "unknown tensor dtype"),
        (lambda m: m["body"]["delta"]["w"].update(codec="pickle"), "unknown tensor codec"),
        (lambda m: m["body"]["delta"]["w"].update(shape=[-1, 6]), "non-negative"),
        (lambda m: m["body"]["delta"]["w"].update(data="text"), "binary"),
        (lambda m: m["body"].update(num_samples=0), "num_samples"),
        (lambda m: m["body"].update(evil=1), "evil"),
        (lambda m: m.update(sender="a/+/#"), "sender"),
        (lambda m: m.update(kind="rm -rf"), "unknown message kind"),
        (lambda m: m.update(msg_id="x"), "msg_id"),
        (lambda m: m.update(v=2), "v"),
        (lambda m: m.update(ts=float("nan")), "ts"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(mutation, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(_mutate(_update(), mutation))


def test_non_finite_tensor_rejected() -> None:
    with pytest.raises(DecodeError, match="NaN"):
        decode(_update(w=np.array([1.0, np.nan], np.float32)))


def test_wrong_kind_for_topic_rejected() -> None:
    with pytest.raises(DecodeError, match="expected a model message"):
        decode(_update(), ModelBody)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        b"\x92\x01",
        b"not msgpack at all",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({1: 2}),
        b"\xdd\xff\xff\xff\xff",
    ],
)
def test_garbage_is_rejected(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload)


def test_size_limits_apply_before_decoding() -> None:
    payload = _update(w=np.zeros(1000, np.float32))
    with pytest.raises(DecodeError, match="exceeds the limit"):
        unpack(payload, Limits(max_message_bytes=len(payload) - 1))
    with pytest.raises(DecodeError, match="1000 elements exceeds 999"):
        decode(payload, limits=Limits(max_tensor_elements=999))
    many = {f"t{i}": np.zeros(1, np.float32) for i in range(5)}
    with pytest.raises(DecodeError, match="5 tensors exceed"):
        decode(_update(**many), limits=Limits(max_tensors=4))
    with pytest.raises(DecodeError, match="in total"):
        decode(
            _update(a=np.zeros(6, np.float32), b=np.zeros(6, np.float32)),
            limits=Limits(max_total_elements=10),
        )


def test_msgpack_ext_types_are_refused() -> None:
    payload = msgpack.packb({"kind": msgpack.ExtType(1, b"x")}, use_bin_type=True)
    with pytest.raises(DecodeError):
        decode(payload)
