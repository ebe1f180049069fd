"""msgpack framing and the tensor codec.

Tensors travel as raw little-endian bytes with dtype and shape and are decoded with
``np.frombuffer`` (zero-copy, read-only views into the received message). Nothing here
can execute code from the wire: no pickle, no msgpack ext types, and every size is
bounded before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from broker.limits import DEFAULT_LIMITS, DecodeError, Limits
from broker.unpacker import unpack_views

# Wire dtype names -> numpy dtypes. Explicitly little-endian: the wire never depends on
# the host's byte order.
DTYPES: dict[str, np.dtype] = {
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
    "i4": np.dtype("<i4"),
    "i8": np.dtype("<i8"),
}
# Codec field of a tensor: only "raw" today; compressed codecs join here later.
RAW = "raw"
MAX_DIMS = 8


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """Wire form of one array (copied to contiguous little-endian if needed)."""
    arr = np.asarray(array)
    name = next((k for k, dt in DTYPES.items() if dt == arr.dtype.newbyteorder("<")), None)
    if name is None:
        raise ValueError(f"dtype {arr.dtype} cannot travel; use one of {sorted(DTYPES)}")
    arr = np.ascontiguousarray(arr, dtype=DTYPES[name])
    return {"codec": RAW, "dtype": name, "shape": list(arr.shape), "data": arr.tobytes()}


def decode_tensor(obj: Any, limits: Limits = DEFAULT_LIMITS, *, check_finite: bool = True,
                  ) -> np.ndarray:
    """Array from its wire form; raises DecodeError for anything malformed or non-finite.

    ``check_finite=False`` skips the NaN/inf scan (a full pass over the data) for callers
    that validate the values anyway, as the coordinator's accumulators do.
    """
    if not isinstance(obj, Mapping):
        raise DecodeError(f"tensor must be a map, got {type(obj).__name__}")
    if set(obj) != {"codec", "dtype", "shape", "data"}:
        raise DecodeError(f"tensor keys must be codec, dtype, shape, data; got {sorted(obj)}")
    if obj["codec"] != RAW:
        raise DecodeError(f"unknown tensor codec {obj['codec']!r}")
    dtype = DTYPES.get(obj["dtype"]) if isinstance(obj["dtype"], str) else None
    if dtype is None:
        raise DecodeError(f"unknown tensor dtype {obj['dtype']!r}")
    shape = obj["shape"]
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise DecodeError(f"tensor shape must be at most {MAX_DIMS} non-negative ints: {shape!r}")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise DecodeError(f"tensor of {count} elements exceeds {limits.max_tensor_elements}")
    data = obj["data"]
    if not isinstance(data, bytes | memoryview):
        raise DecodeError("tensor data must be binary")
    if len(data) != count * dtype.itemsize:
        raise DecodeError(
            f"tensor data has {len(data)} bytes, shape {shape} x {dtype.itemsize} needs "
            f"{count * dtype.itemsize}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if check_finite and dtype.kind == "f" and not np.isfinite(arr).all():
        raise DecodeError("tensor holds NaN or infinity")
    return arr


def encode_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {name: encode_tensor(a) for name, a in arrays.items()}


def decode_tensors(obj: Any, limits: Limits = DEFAULT_LIMITS, *, check_finite: bool = True,
                   ) -> dict[str, np.ndarray]:
    """Named arrays in wire order, with the per-message count and element limits."""
    if not isinstance(obj, Mapping):
        raise DecodeError(f"tensor map must be a map, got {type(obj).__name__}")
    if len(obj) > limits.max_tensors:
        raise DecodeError(f"{len(obj)} tensors exceed the limit of {limits.max_tensors}")
    out: dict[str, np.ndarray] = {}
    total = 0
    for name, value in obj.items():
        if not isinstance(name, str):
            raise DecodeError("tensor names must be strings")
        try:
            arr = decode_tensor(value, limits, check_finite=check_finite)
        except DecodeError as exc:
            raise DecodeError(f"tensor {name!r}: {exc}") from None
        total += arr.size
        if total > limits.max_total_elements:
            raise DecodeError(f"tensors exceed {limits.max_total_elements} elements in total")
        out[name] = arr
    return out


def pack(obj: Any) -> bytes:
    """msgpack bytes of a message map (bin type for bytes, str for text)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
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
