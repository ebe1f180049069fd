"""Lossy update codecs (broker.compression) through the real decoder, and hostile payloads."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest

from alchimia.agent.learn.compression import UpdateCompressor
from alchimia.broker.codec import (
    DEFAULT_LIMITS,
    DELTAS,
    DecodeError,
    Encoded,
    Limits,
    decode_tensors,
    pack,
)
from alchimia.broker.codec_names import LOSSY, MASKED
from alchimia.broker.compression import compress
from alchimia.broker.schemas import ModelBody, UpdateBody, decode, message
from alchimia.coordinator.strategies import make_strategy

SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 0, 3), (130,), (4, 33)]


def _received(wire: dict) -> dict:
    """A tensor map as a receiver unpacks it from msgpack bytes."""
    return msgpack.unpackb(pack({"t": wire}))


def _wire_round_trip(wire: dict, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Through msgpack bytes and the decoder the coordinator uses."""
    return decode_tensors(_received(wire), limits, accept=DELTAS)["t"]


def _array(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [1, 5, 64, 127])
def test_int8_error_is_within_half_a_step_of_each_block(shape, block: int) -> None:
    a = _array(shape)
    back = _wire_round_trip(compress(a, "int8", block=block))
    assert back.shape == a.shape and back.dtype == np.float32
    flat, err = a.reshape(-1), np.abs(back - a).reshape(-1)
    for start in range(0, flat.size, block):
        step = np.abs(flat[start : start + block]).max() / 127
        assert err[start : start + block].max() <= step / 2 * (1 + 1e-5) + 1e-12


@pytest.mark.parametrize("shape", SHAPES)
def test_fp16_keeps_eleven_significant_bits(shape) -> None:
    a = _array(shape)
    back = _wire_round_trip(compress(a, "fp16"))
    assert back.shape == a.shape and back.dtype == np.float32
    np.testing.assert_allclose(back, a, rtol=2.0**-11, atol=6e-8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [1, 5, 64])
def test_sign_keeps_signs_and_zeros_and_the_mean_magnitude_of_each_block(shape, block) -> None:
    a = _array(shape)
    a.reshape(-1)[::3] = 0.0  # untrained coordinates must stay exactly 0
    wire = compress(a, "sign", block=block)
    assert len(wire["data"]) == -(-a.size // 4)
    back = _wire_round_trip(wire)
    assert back.shape == a.shape and back.dtype == np.float32
    np.testing.assert_array_equal(np.sign(back), np.sign(a))
    flat, out = a.reshape(-1), np.abs(back).reshape(-1)
    for start in range(0, flat.size, block):
        part = np.abs(flat[start : start + block])
        if part.any():
            np.testing.assert_allclose(
                out[start : start + block][part > 0], part[part > 0].mean(), rtol=1e-6
            )


def test_fp16_saturates_instead_of_sending_infinity() -> None:
    back = _wire_round_trip(compress(np.array([1e6, -1e6, 1.0], np.float32), "fp16"))
    np.testing.assert_array_equal(back, [65504.0, -65504.0, 1.0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fraction", [0.01, 0.2, 1.0])
def test_topk_sends_the_largest_entries_exactly_and_zero_elsewhere(shape, fraction) -> None:
    a = _array(shape)
    wire = compress(a, "topk", topk_fraction=fraction)
    back = _wire_round_trip(wire)
    assert back.shape == a.shape
    kept = back != 0
    k = min(a.size, max(1, int(np.ceil(fraction * a.size)))) if a.size else 0
    assert kept.sum() == k == len(wire["indices"]) // 4
    np.testing.assert_array_equal(back[kept], a[kept])
    if 0 < k < a.size:
        assert np.abs(a[kept]).min() >= np.abs(a[~kept]).max()


def test_topk_leaves_out_exact_zeros() -> None:
    a = np.array([0.0, 0.0, 3.0, 0.0], np.float32)
    wire = compress(a, "topk", topk_fraction=1.0)
    assert len(wire["indices"]) == 4
    np.testing.assert_array_equal(_wire_round_trip(wire), a)


@pytest.mark.parametrize("shape", SHAPES)
def test_topk_int8_quantises_the_kept_entries(shape) -> None:
    a = _array(shape, seed=3)
    back = _wire_round_trip(compress(a, "topk_int8", topk_fraction=0.3, block=5))
    exact = _wire_round_trip(compress(a, "topk", topk_fraction=0.3))
    assert back.shape == a.shape
    np.testing.assert_array_equal(back != 0, exact != 0)
    assert np.abs(back - exact).max(initial=0) <= np.abs(a).max(initial=0) / 127 / 2 * 1.0001


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("codec", MASKED)
def test_a_trained_bitmap_round_trips_beside_the_values(shape, codec: str) -> None:
    a = _array(shape, seed=5)
    trained = np.random.default_rng(6).random(shape) < 0.5
    trained.reshape(-1)[:1] = False  # not every element (when there is one): a bitmap
    wire = compress(a, codec, topk_fraction=0.3, trained=trained)
    assert wire["trained"] is True if a.size == 0 else len(wire["trained"]) == -(-a.size // 8)
    got = decode_tensors(_received(wire), accept=DELTAS)
    plain = _wire_round_trip(compress(a, codec, topk_fraction=0.3))
    np.testing.assert_array_equal(got["t"], plain)  # the values are those without a bitmap
    sent = np.zeros(a.size, bool)
    sent[np.frombuffer(wire["indices"], "<u4")] = True
    mask = got.trained["t"]
    assert mask.dtype == np.bool_ and mask.shape == a.shape
    # what the sender trained, and every entry it sent (the two may differ here)
    np.testing.assert_array_equal(mask, trained | sent.reshape(shape))


@pytest.mark.parametrize("codec", MASKED)
def test_a_dense_update_says_true_instead_of_a_bitmap(codec: str) -> None:
    a = _array((3, 7))
    wire = compress(a, codec, topk_fraction=0.1, trained=np.ones((3, 7), bool))
    assert wire["trained"] is True
    got = decode_tensors(_received(wire), accept=DELTAS)
    np.testing.assert_array_equal(got.trained["t"], np.ones((3, 7), bool))
    np.testing.assert_array_equal(got["t"], _wire_round_trip(compress(a, codec, topk_fraction=0.1)))


def test_the_bitmap_is_little_endian_within_each_byte() -> None:
    a = np.zeros(11, np.float32)
    a[[0, 9]] = [1.0, 2.0]
    wire = compress(a, "topk", topk_fraction=0.1, trained=np.arange(11) % 3 == 0)
    # elements 0, 3, 6, 9 trained: bits 0, 3, 6 of byte 0, bit 1 of byte 1
    assert wire["trained"] == bytes([0b01001001, 0b00000010])


def test_without_a_bitmap_a_tensor_reads_as_today() -> None:
    """No ``trained`` key: no mask, the wire map has today's keys."""
    wire = compress(_array((30,)), "topk", topk_fraction=0.2)
    assert "trained" not in wire
    assert decode_tensors(_received(wire), accept=DELTAS).trained == {}


def test_compress_takes_a_bitmap_only_for_top_k_and_of_the_array_size() -> None:
    with pytest.raises(ValueError, match="trained bitmap, not int8"):
        compress(np.ones(3, np.float32), "int8", trained=np.ones(3, bool))
    with pytest.raises(ValueError, match="trained has 2 elements"):
        compress(np.ones(3, np.float32), "topk", trained=np.ones(2, bool))


def test_lossy_codecs_shrink_a_large_tensor() -> None:
    a = _array((1000,))
    sizes = {c: len(pack(compress(a, c))) / a.nbytes for c in LOSSY}
    assert sizes["fp16"] < 0.52 and sizes["int8"] < 0.28 and sizes["sign"] < 0.1
    assert sizes["topk"] < 0.12 and sizes["topk_int8"] < 0.09


@pytest.mark.parametrize("codec", LOSSY)
def test_compress_refuses_what_it_cannot_encode(codec: str) -> None:
    with pytest.raises(ValueError, match="NaN"):
        compress(np.array([1.0, np.inf], np.float32), codec)
    with pytest.raises(ValueError, match="float"):
        compress(np.arange(3), codec)
    with pytest.raises(ValueError, match="topk_fraction"):
        compress(np.ones(3, np.float32), codec, topk_fraction=0.0)
    with pytest.raises(ValueError, match="block"):
        compress(np.ones(3, np.float32), codec, block=0)
    with pytest.raises(ValueError, match="unknown lossy codec"):
        compress(np.ones(3, np.float32), "raw")


# -- hostile payloads: each rejected with its reason, before any large allocation


def _int8(**changes) -> dict:
    return {**compress(np.linspace(-1, 1, 10, dtype=np.float32), "int8", block=4), **changes}


def _sign(**changes) -> dict:
    return {**compress(np.linspace(-1, 1, 10, dtype=np.float32), "sign", block=4), **changes}


def _topk(**changes) -> dict:
    return {
        **compress(np.linspace(-1, 1, 10, dtype=np.float32), "topk", topk_fraction=0.3),
        **changes,
    }


def _masked(codec: str = "topk", **changes) -> dict:
    """10 elements, 3 sent (7, 8, 9), trained 2..9: bitmap bytes 0b11111100, 0b00000011."""
    a = np.linspace(0, 1, 10, dtype=np.float32)
    wire = compress(a, codec, topk_fraction=0.3, block=4, trained=np.arange(10) >= 2)
    assert wire["trained"] == bytes([0b11111100, 0b00000011])
    return {**wire, **changes}


def _f4(values: list[float]) -> bytes:
    return np.array(values, "<f4").tobytes()


def _u4(values: list[int]) -> bytes:
    return np.array(values, "<u4").tobytes()


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (_int8(shape=[11]), "data has 10 bytes, expected 11"),
        (_int8(scales=_f4([1.0, 1.0])), "scales has 8 bytes, expected 12"),
        (_int8(scales=_f4([1.0, np.nan, 1.0])), "scales must be finite"),
        (_int8(scales=_f4([1.0, -1.0, 1.0])), "scales must be finite and in"),
        (_int8(scales=_f4([1.0, 1e38, 1.0])), "scales must be finite and in"),
        (_int8(block=0), "block must be an int"),
        (_int8(block=True), "block must be an int"),
        (_int8(block=2**20), "block must be an int"),
        (_int8(block="4"), "block must be an int"),
        (_int8(scales="text"), "scales must be binary"),
        (_int8(dtype="f4"), "int8 tensors here carry dtype i1, not 'f4'"),
        ({k: v for k, v in _int8().items() if k != "scales"}, "keys must be"),
        (_topk(block=4), "keys must be"),
        (_sign(data=b"\x03\0\0"), "sign codes must be 0, 1"),
        (_sign(data=b"\0\0\x10"), "0 after the last element"),
        (_sign(data=b"\0\0"), "data has 2 bytes, expected 3"),
        (_sign(scales=_f4([1.0, np.inf, 1.0])), "scales must be finite"),
        (_sign(dtype="i1"), "sign tensors here carry dtype u1"),
        (_topk(indices=_u4([0, 5, 5])), "increase strictly"),
        (_topk(indices=_u4([9, 0, 5])), "increase strictly"),
        (_topk(indices=_u4([0, 5, 10])), "stay below 10"),
        (_topk(indices=b"\0\0\0"), "4 bytes each"),
        (_topk(indices=_u4(list(range(11))), data=_f4([1.0] * 11)), "11 entries of a tensor of 10"),
        (_topk(data=_f4([1.0, 2.0])), "data has 8 bytes, expected 12"),
        (_topk(data=_f4([1.0, np.nan, 2.0])), "NaN or infinity"),
        (_topk(dtype="f2"), "topk tensors here carry dtype f4"),
        (_masked(trained=b"\xfc"), "trained has 1 bytes, expected 2"),
        (_masked(trained=b"\xfc\x03\x00"), "trained has 3 bytes, expected 2"),
        (_masked(trained=b""), "trained has 0 bytes, expected 2"),
        (_masked(trained=b"\xfc\x07"), "after the last element must be 0"),
        (_masked(trained=b"\xfc\x83"), "after the last element must be 0"),
        (_masked(trained=b"\xfc\x01"), "every index top-k sends must be marked"),
        (_masked(trained=b"\x00\x00"), "every index top-k sends must be marked"),
        (_masked("topk_int8", trained=b"\x7c\x03"), "every index top-k sends must be marked"),
        (_masked(trained="text"), "trained must be binary or true"),
        (_masked(trained=False), "trained must be binary or true"),
        (_masked(trained=1), "trained must be binary or true"),
        (_int8(trained=b"\xff\x03"), "keys must be"),
        (_sign(trained=b"\xff\x03"), "keys must be"),
        ({**compress(np.ones(4, np.float32), "fp16"), "data": b"\0\x7c" * 4}, "NaN or infinity"),
        ({**compress(np.ones(4, np.float32), "fp16"), "shape": [5]}, "expected 10"),
        ({**compress(np.ones(4, np.float32), "fp16"), "codec": "zstd"}, "unknown tensor codec"),
    ],
)
def test_hostile_compressed_tensors_are_rejected_with_a_reason(wire: dict, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        _wire_round_trip(wire)


@contextlib.contextmanager
def _allocates_less_than(limit: int) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak allocation {peak} bytes"


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_dense_codecs_check_the_declared_shape_against_the_bytes(codec: str) -> None:
    huge = _received({**compress(np.ones(4, np.float32), codec), "shape": [50_000_000]})
    with _allocates_less_than(100_000), pytest.raises(DecodeError, match="bytes, expected"):
        decode_tensors(huge, accept=DELTAS)


@pytest.mark.parametrize("codec", LOSSY)
def test_shapes_past_the_limits_are_refused_before_allocating(codec: str) -> None:
    """A top-k tensor of a few bytes may declare any shape: the receiver's limits (the
    coordinator's are its model's size) bound what it expands to."""
    small = compress(np.ones(4, np.float32), codec, topk_fraction=0.5)
    past_tensor_limit = _received({**small, "shape": [2**20, 2**20]})
    past_total_limit = _received({**small, "shape": [50_000_000]})
    with _allocates_less_than(100_000):
        with pytest.raises(DecodeError, match="exceeds 67108864"):
            decode_tensors(past_tensor_limit, accept=DELTAS)
        with pytest.raises(DecodeError, match="1000 elements in total"):
            decode_tensors(past_total_limit, Limits(max_total_elements=1000), accept=DELTAS)


@pytest.mark.parametrize("codec", MASKED)
def test_a_bitmap_is_checked_against_the_shape_before_allocating(codec: str) -> None:
    a = np.ones(16, np.float32)
    a[0] = 2.0  # top-k sends element 0 alone
    small = compress(a, codec, trained=np.arange(16) < 8)
    huge = _received({**small, "shape": [50_000_000]})  # within the limits, 2 bitmap bytes
    with _allocates_less_than(100_000), pytest.raises(DecodeError, match="trained has 2 bytes"):
        decode_tensors(huge, accept=DELTAS)


def test_the_total_limit_is_checked_before_a_sparse_tensor_is_expanded() -> None:
    one = compress(np.ones(100_000, np.float32), "topk", topk_fraction=0.001)
    obj = msgpack.unpackb(pack({"a": one, "b": one}))
    with _allocates_less_than(600_000), pytest.raises(DecodeError, match="in total"):
        decode_tensors(obj, Limits(max_total_elements=150_000), accept=DELTAS)


# -- what an update and a model may carry (docs/PROTOCOL.md, "Tensor codecs")


def _update_payload(delta: dict) -> bytes:
    return message("plant-1", UpdateBody(round_id=1, base_version=0, num_samples=5, delta=delta))


@pytest.mark.parametrize("codec", LOSSY)
def test_an_update_carries_any_codec_and_decodes_to_float32(codec: str) -> None:
    a = _array((4, 5))
    body = decode(_update_payload({"w": Encoded(compress(a, codec)), "b": a[0]}), UpdateBody).body
    assert body.delta["w"].dtype == np.float32 and body.delta["w"].shape == (4, 5)
    np.testing.assert_array_equal(body.delta["b"], a[0])


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64])
def test_an_update_must_be_float32(dtype) -> None:
    payload = _update_payload({"w": np.ones(3, dtype)})
    with pytest.raises(DecodeError, match="raw tensors here carry dtype f4"):
        decode(payload, UpdateBody)


def test_a_model_carries_raw_float32_only() -> None:
    weights = {"w": Encoded(compress(np.ones(3, np.float32), "int8"))}
    raw = msgpack.unpackb(
        message(
            "coordinator",
            ModelBody(version=1, spec={}, onnx=b"", weights={"w": np.ones(3, np.float32)}),
        )
    )
    raw["body"]["weights"] = {"w": weights["w"].wire}
    with pytest.raises(DecodeError, match="codec 'int8' is not accepted here; use raw"):
        decode(pack(raw), ModelBody)
    raw["body"]["weights"] = {
        "w": {"codec": "raw", "dtype": "f8", "shape": [1], "data": np.ones(1).tobytes()}
    }
    with pytest.raises(DecodeError, match="dtype f4, not 'f8'"):
        decode(pack(raw), ModelBody)


def test_a_delta_in_reverse_order_aggregates_as_in_model_order() -> None:
    """Names match, not order (docs/PROTOCOL.md, "Tensor"): a client whose maps do not
    keep insertion order is aggregated exactly like one that does."""
    glob = {"w": np.zeros((4, 5), np.float32), "b": np.zeros(5, np.float32)}
    delta = {"w": _array((4, 5)), "b": _array((5,), seed=1)}
    in_order = decode(_update_payload(delta), UpdateBody).body.delta
    reverse = decode(_update_payload(dict(reversed(delta.items()))), UpdateBody).body.delta
    assert list(reverse) == ["b", "w"]
    a = make_strategy("fedavg").aggregate(glob, [(in_order, 3.0)])
    b = make_strategy("fedavg").aggregate(glob, [(reverse, 3.0)])
    for k in glob:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_deferred_coordinate_counts_in_the_mean_through_the_real_message() -> None:
    """The agent's top-k encoder sends what it trained; the coordinator's FedAvg counts a
    trained but deferred coordinate with a zero contribution, and leaves out one a plant
    never trained (issue 15 section 3)."""
    glob = {"w": np.zeros(8, np.float32)}
    # Plant A trains 0..5 (never 6, 7) and sends one entry; plant B trains and sends all.
    a = np.array([9, 1, 1, 1, 1, 1, 0, 0], np.float32)
    b = np.full(8, 2.0, np.float32)
    received = []
    for delta, fraction in ((a, 0.125), (b, 1.0)):
        wire = UpdateCompressor().encode({"w": delta}, "topk", topk_fraction=fraction)
        received.append(decode(_update_payload(wire), UpdateBody).body.delta)
    np.testing.assert_array_equal(received[0]["w"], [9, 0, 0, 0, 0, 0, 0, 0])
    new = make_strategy("fedavg").aggregate(glob, [(received[0], 1.0), (received[1], 3.0)])
    # 0: (9 + 3 * 2) / 4; 1..5: (0 + 3 * 2) / 4 (A deferred them); 6, 7: B alone.
    np.testing.assert_allclose(new["w"], [3.75, *[1.5] * 5, 2.0, 2.0], rtol=1e-6)
