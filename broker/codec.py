"""msgpack framing and the tensor codec.

Tensors travel as little-endian bytes with a codec, dtype and shape. ``raw`` tensors are
decoded with ``np.frombuffer`` (zero-copy, read-only views into the received message);
update deltas may also use the lossy codecs of ``broker.compression`` (decoded to
float32; a top-k tensor's ``trained`` bitmap lands in ``TensorMap.trained``). Nothing
here can execute code from the wire: no pickle, no msgpack ext types, and every size is
bounded before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from alchimia.broker.codec_names import CODEC_DTYPES, CODECS, EXTRA_KEYS, OPTIONAL_KEYS
from alchimia.broker.compression import decompress_trained
from alchimia.broker.limits import DEFAULT_LIMITS as DEFAULT_LIMITS  # re-exported ("X as X")
from alchimia.broker.limits import DecodeError as DecodeError
from alchimia.broker.limits import Limits as Limits
from alchimia.broker.unpacker import unpack_views

# Wire dtype names -> numpy dtypes. Explicitly little-endian: the wire never depends on
# the host's byte order.
DTYPES: dict[str, np.dtype] = {
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
    "i4": np.dtype("<i4"),
    "i8": np.dtype("<i8"),
}
RAW = "raw"
MAX_DIMS = 8
_BASE_KEYS = ("codec", "dtype", "shape", "data")


@dataclass(frozen=True)
class Accepted:
    """The codecs a tensor field takes, and the dtypes its ``raw`` tensors may have (a
    lossy codec has exactly one dtype, ``broker.codec_names.CODEC_DTYPES``)."""

    codecs: frozenset[str]
    raw_dtypes: frozenset[str]


ANY_RAW = Accepted(frozenset({RAW}), frozenset(DTYPES))  # checkpoints on disk
WEIGHTS = Accepted(frozenset({RAW}), frozenset({"f4"}))  # model weights on the bus
DELTAS = Accepted(frozenset(CODECS), frozenset({"f4"}))  # update deltas on the bus


class TensorMap(dict[str, np.ndarray]):
    """Decoded tensors by name (what ``decode_tensors`` returns), plus ``trained``: for each
    tensor whose wire form carried a ``trained`` bitmap (top-k deltas), a boolean array of
    its shape, True where the sender trained the coordinate. A tensor without one reads as
    "trained where non-zero" (docs/PROTOCOL.md, ``update``), and so does a plain copy of
    the map, which drops ``trained``: the mean-based strategies read it
    (``coordinator.strategies.base.trained_masks``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trained: dict[str, np.ndarray] = {}


@dataclass(frozen=True)
class Encoded:
    """A tensor already in its wire form (``broker.compression.compress``), sent as is."""

    wire: Mapping[str, Any]


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """Wire form of one array (copied to contiguous little-endian if needed)."""
    arr = np.asarray(array)
    name = next((k for k, dt in DTYPES.items() if dt == arr.dtype.newbyteorder("<")), None)
    if name is None:
        raise ValueError(f"dtype {arr.dtype} cannot travel; use one of {sorted(DTYPES)}")
    arr = np.ascontiguousarray(arr, dtype=DTYPES[name])
    return {"codec": RAW, "dtype": name, "shape": list(arr.shape), "data": arr.tobytes()}


# Per codec: the keys a tensor's wire map must have, and those it may have.
_REQUIRED_KEYS = {c: frozenset((*_BASE_KEYS, *EXTRA_KEYS[c])) for c in CODECS}
_ALLOWED_KEYS = {c: _REQUIRED_KEYS[c] | frozenset(OPTIONAL_KEYS[c]) for c in CODECS}


def _header(obj: Any, limits: Limits, accept: Accepted) -> tuple[str, list[int], int]:
    """Codec, shape and element count of a tensor's wire map, checked against ``accept``
    and the per-tensor limits before anything is allocated."""
    if type(obj) is not dict and not isinstance(obj, Mapping):
        raise DecodeError(f"tensor must be a map, got {type(obj).__name__}")
    codec = obj.get("codec")
    if codec not in CODECS:
        raise DecodeError(f"unknown tensor codec {codec!r}")
    if codec not in accept.codecs:
        raise DecodeError(
            f"tensor codec {codec!r} is not accepted here; use {', '.join(sorted(accept.codecs))}"
        )
    keys = obj.keys()
    if not _REQUIRED_KEYS[codec] <= keys <= _ALLOWED_KEYS[codec]:
        optional = OPTIONAL_KEYS[codec]
        also = f" (and optionally {', '.join(optional)})" if optional else ""
        raise DecodeError(
            f"{codec} tensor keys must be {', '.join((*_BASE_KEYS, *EXTRA_KEYS[codec]))}{also}; "
            f"got {sorted(obj)}"
        )
    dtype = obj["dtype"]
    if codec == RAW:
        if not (isinstance(dtype, str) and dtype in DTYPES):
            raise DecodeError(f"unknown tensor dtype {dtype!r}")
        if dtype not in accept.raw_dtypes:
            allowed = " or ".join(sorted(accept.raw_dtypes))
            raise DecodeError(f"{codec} tensors here carry dtype {allowed}, not {dtype!r}")
    elif dtype != CODEC_DTYPES[codec]:
        raise DecodeError(f"{codec} tensors here carry dtype {CODEC_DTYPES[codec]}, not {dtype!r}")
    shape = obj["shape"]
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_DIMS
        or not all(type(d) is int or _dimension(d) for d in shape)
        or (shape and min(shape) < 0)
    ):
        raise DecodeError(f"tensor shape must be at most {MAX_DIMS} non-negative ints: {shape!r}")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise DecodeError(f"tensor of {count} elements exceeds {limits.max_tensor_elements}")
    return codec, list(shape), count


def _dimension(d: object) -> bool:
    """Whether ``d``, not a plain int, is an int all the same (a subclass other than bool)."""
    return isinstance(d, int) and not isinstance(d, bool)


def _values(
    obj: Mapping[str, Any], codec: str, shape: list[int], count: int, check_finite: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The array of a tensor whose header ``_header`` accepted, and its ``trained`` mask
    (of the same shape) if it carries one."""
    trained = None
    if codec == RAW:
        dtype = DTYPES[obj["dtype"]]
        data = obj["data"]
        if not isinstance(data, memoryview | bytes):
            raise DecodeError("tensor data must be binary")
        if len(data) != count * dtype.itemsize:
            raise DecodeError(
                f"tensor data has {len(data)} bytes, shape {shape} x {dtype.itemsize} needs "
                f"{count * dtype.itemsize}"
            )
        arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    else:
        flat, mask = decompress_trained(obj, count)
        arr = flat.reshape(shape)
        trained = None if mask is None else mask.reshape(shape)
    if check_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DecodeError("tensor holds NaN or infinity")
    return arr, trained


def decode_tensor(
    obj: Any,
    limits: Limits = DEFAULT_LIMITS,
    *,
    check_finite: bool = True,
    accept: Accepted = ANY_RAW,
) -> np.ndarray:
    """Array from its wire form; raises DecodeError for anything malformed, non-finite or
    not in ``accept`` (default: ``raw`` of any dtype). A ``trained`` bitmap is checked and
    left out (``decode_tensors`` keeps it).

    ``check_finite=False`` skips the NaN/inf scan (a full pass over the data) for callers
    that validate the values anyway, as the coordinator's accumulators do.
    """
    codec, shape, count = _header(obj, limits, accept)
    return _values(obj, codec, shape, count, check_finite)[0]


def encode_tensors(arrays: Mapping[str, np.ndarray | Encoded]) -> dict[str, Any]:
    return {
        name: dict(a.wire) if isinstance(a, Encoded) else encode_tensor(a)
        for name, a in arrays.items()
    }


def decode_tensors(
    obj: Any,
    limits: Limits = DEFAULT_LIMITS,
    *,
    check_finite: bool = True,
    accept: Accepted = ANY_RAW,
) -> TensorMap:
    """Named arrays in wire order, with the per-message count and element limits (the
    total is checked before each tensor is decoded: a sparse codec allocates its shape);
    ``trained`` holds the masks of the tensors that carry one."""
    if not isinstance(obj, Mapping):
        raise DecodeError(f"tensor map must be a map, got {type(obj).__name__}")
    if len(obj) > limits.max_tensors:
        raise DecodeError(f"{len(obj)} tensors exceed the limit of {limits.max_tensors}")
    out = TensorMap()
    total = 0
    for name, value in obj.items():
        if not isinstance(name, str):
            raise DecodeError("tensor names must be strings")
        try:
            codec, shape, count = _header(value, limits, accept)
            total += count
            if total > limits.max_total_elements:
                raise DecodeError(f"tensors exceed {limits.max_total_elements} elements in total")
            out[name], trained = _values(value, codec, shape, count, check_finite)
            if trained is not None:
                out.trained[name] = trained
        except DecodeError as exc:
            raise DecodeError(f"tensor {name!r}: {exc}") from None
    return out


def pack(obj: Any) -> bytes:
    """msgpack bytes of a message map (bin type for bytes, str for text)."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(payload: bytes | bytearray, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The message map of a payload, bin values as views into it (see ``broker.unpacker``).

    Raises DecodeError before allocating past the limits.
    """
    if len(payload) > limits.max_message_bytes:
        raise DecodeError(
            f"message of {len(payload)} bytes exceeds the limit of {limits.max_message_bytes}"
        )
    try:
        obj = unpack_views(bytes(payload), limits)  # bytes(): no copy when it already is bytes
    except DecodeError as exc:
        raise DecodeError(f"not a valid msgpack message: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"message must be a map, got {type(obj).__name__}")
    return obj
