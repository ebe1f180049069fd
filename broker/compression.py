"""Lossy codecs for weight deltas: float16, blockwise int8, scaled sign, top-k, top-k of int8.

Pure functions (no I/O): ``compress`` turns a float array into a tensor's wire map under a
codec; ``decompress`` validates such a map and returns float32. Wire formats are in
docs/PROTOCOL.md ("Tensor codecs"). Every declared size (shape, block, number of kept
entries, number of scales) is checked against the byte lengths actually received and
against ``broker.limits.Limits`` before anything is allocated; the only allocations a
decoder makes are the float32 result (``product(shape)`` elements, which the caller has
already bounded), a top-k tensor's ``trained`` mask (one byte per element) and
temporaries of the size of the received data.

Error feedback (what a lossy codec drops is added to the sender's next update) lives with
the sender, in ``agent.learn.compression``: these functions keep no state.

Top-k tensors may carry ``trained``, a bitmap (one bit per element; or ``True``: every
element) of the coordinates the sender trained, which may be more than those it sends
(error feedback defers the rest). The mean-based strategies read it instead of "non-zero
means trained" (submodel averaging, docs/FEDERATION.md "Compressed updates");
``decompress_trained`` returns it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from alchimia.broker.codec_names import CODEC_DTYPES, DEFAULT_TOPK_FRACTION, LOSSY, MASKED
from alchimia.broker.limits import DecodeError

BLOCK = 64  # elements per scale (int8, sign), as the reference encoder writes them
MAX_BLOCK = 65536
# Largest scale whose product with any code (|code| <= 128) is a finite float32.
MAX_SCALE = float(np.finfo(np.float32).max) / 128
_F2_MAX = float(np.finfo(np.float16).max)
_SIGNS = np.array([0.0, 1.0, -1.0], np.float32)  # sign codes 0, 1, 2
_INT8 = np.dtype("i1")
_U1 = np.dtype("u1")
_F2 = np.dtype("<f2")
_F4 = np.dtype("<f4")
_U4 = np.dtype("<u4")


def compress(
    array: np.ndarray,
    codec: str,
    *,
    topk_fraction: float = DEFAULT_TOPK_FRACTION,
    block: int = BLOCK,
    trained: np.ndarray | None = None,
) -> dict[str, Any]:
    """The wire map of a finite float array under a lossy ``codec``.

    ``topk_fraction``: top-k keeps ``ceil(fraction * size)`` entries (at least 1) of
    largest magnitude, leaving out exact zeros; ``block``: int8 and sign elements per
    scale. fp16 saturates at +-65504 (error feedback carries the rest); sign sends each
    element's sign (exact zeros stay 0) and, per block, the mean magnitude of its non-zero
    elements (Bernstein et al. 2018; with error feedback, Karimireddy et al. 2019).
    ``trained`` (top-k codecs only): a boolean array of the array's size, the coordinates
    the sender trained; the map then carries the ``trained`` bitmap of those and of every
    sent entry (a sent entry is always one the update speaks for), or ``True`` when that
    is every element (a dense update: no bitmap to pay for).
    """
    if codec not in LOSSY:
        raise ValueError(f"unknown lossy codec {codec!r}; choose from {', '.join(LOSSY)}")
    if trained is not None and codec not in MASKED:
        raise ValueError(f"only {' and '.join(MASKED)} carry a trained bitmap, not {codec}")
    if not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction!r}")
    if not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"block must be in [1, {MAX_BLOCK}], got {block!r}")
    arr = np.asarray(array)
    if arr.dtype.kind != "f":
        raise ValueError(f"only float arrays are compressed, got {arr.dtype}")
    flat = np.ascontiguousarray(arr, dtype=_F4).reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError("cannot compress NaN or infinity")
    wire: dict[str, Any] = {"codec": codec, "dtype": CODEC_DTYPES[codec], "shape": list(arr.shape)}
    if codec == "fp16":
        wire["data"] = np.clip(flat, -_F2_MAX, _F2_MAX).astype(_F2).tobytes()
        return wire
    if codec in MASKED:
        idx = _top_k(flat, topk_fraction)
        wire["indices"] = idx.astype(_U4).tobytes()
        if trained is not None:
            mask = np.asarray(trained, dtype=bool).reshape(-1)
            if mask.size != flat.size:
                raise ValueError(f"trained has {mask.size} elements, the array {flat.size}")
            if mask.all():
                wire["trained"] = True
            else:
                mask = mask.copy()
                mask[idx] = True
                wire["trained"] = np.packbits(mask, bitorder="little").tobytes()
        flat = flat[idx]
    if codec == "topk":
        wire["data"] = flat.tobytes()
        return wire
    codes, scales = (_sign if codec == "sign" else _quantise)(flat, block)
    wire.update(data=codes.tobytes(), block=block, scales=scales.tobytes())
    return wire


def decompress(obj: Mapping[str, Any], count: int) -> np.ndarray:
    """Flat float32 values (``count`` of them) of a lossy tensor whose codec, dtype and
    shape the caller has checked; raises DecodeError for anything inconsistent (a
    ``trained`` bitmap included, which is checked and then left out)."""
    return decompress_trained(obj, count)[0]


def decompress_trained(obj: Mapping[str, Any], count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``decompress``, and the flat boolean mask of the coordinates the sender trained
    when the tensor carries ``trained`` (None otherwise: read "non-zero")."""
    codec = obj["codec"]
    data = _binary(obj, "data")
    if codec == "fp16":
        _length("data", data, count * _F2.itemsize)
        return np.frombuffer(data, _F2).astype(_F4), None
    if codec == "sign":
        _length("data", data, -(-count // 4))
        return _scaled(
            _unpack_signs(np.frombuffer(data, _U1), count), obj["block"], _binary(obj, "scales")
        ), None
    idx, bits, every = None, None, False
    if codec in MASKED:
        idx = _indices(_binary(obj, "indices"), count)
        if "trained" in obj:
            every = obj["trained"] is True
            bits = None if every else _bitmap(_binary(obj, "trained"), count)
    n = count if idx is None else len(idx)
    if codec == "topk":
        _length("data", data, n * _F4.itemsize)
        values = np.frombuffer(data, _F4)
    else:
        _length("data", data, n)
        values = _scaled(
            np.frombuffer(data, _INT8).astype(_F4), obj["block"], _binary(obj, "scales")
        )
    if idx is None:
        return values, None
    trained = None  # allocated, like the result, once every size is checked
    if every:
        trained = np.ones(count, bool)
    elif bits is not None:
        trained = np.unpackbits(bits, count=count, bitorder="little").view(bool)
        if not trained[idx].all():
            raise DecodeError("every index top-k sends must be marked in trained")
    out = np.zeros(count, _F4)
    out[idx] = values
    return out, trained


def _top_k(flat: np.ndarray, fraction: float) -> np.ndarray:
    """Ascending indices of the ``ceil(fraction * n)`` largest magnitudes, zeros left out."""
    n = flat.size
    k = min(n, max(1, math.ceil(fraction * n)))
    if k == 0:
        return np.zeros(0, np.int64)
    mag = np.abs(flat)
    idx = np.argpartition(mag, n - k)[n - k :] if k < n else np.arange(n)
    return np.sort(idx[mag[idx] > 0])


def _blocks(flat: np.ndarray, block: int) -> np.ndarray:
    """``flat`` padded with zeros to whole blocks, one row per block."""
    nblocks = -(-flat.size // block)
    padded = np.zeros(nblocks * block, _F4)
    padded[: flat.size] = flat
    return padded.reshape(nblocks, block)


def _quantise(flat: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes in [-127, 127] and one float32 scale (absmax / 127) per block."""
    blocks = _blocks(flat, block)
    scales = (np.abs(blocks).max(axis=1, initial=0.0) / 127).astype(_F4)
    divisor = np.where(scales > 0, scales, 1)[:, None]
    codes = np.clip(np.rint(blocks / divisor), -127, 127).astype(_INT8)
    return codes.reshape(-1)[: flat.size], scales


def _sign(flat: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Packed 2-bit sign codes (0: zero, 1: +, 2: -; four per byte, the first element in
    the lowest bits) and one float32 scale per block: the mean magnitude of its non-zero
    elements."""
    blocks = np.abs(_blocks(flat, block))
    scales = (blocks.sum(axis=1) / np.maximum((blocks > 0).sum(axis=1), 1)).astype(_F4)
    codes = np.zeros(-(-flat.size // 4) * 4, _U1)
    codes[: flat.size] = (flat > 0) + 2 * (flat < 0)
    quads = codes.reshape(-1, 4)
    return quads[:, 0] | quads[:, 1] << 2 | quads[:, 2] << 4 | quads[:, 3] << 6, scales


def _unpack_signs(packed: np.ndarray, count: int) -> np.ndarray:
    """+1, -1 or 0 per element (float32) from packed 2-bit codes."""
    codes = ((packed[:, None] >> np.array([0, 2, 4, 6], _U1)) & 3).reshape(-1)
    if (codes == 3).any() or codes[count:].any():
        raise DecodeError("sign codes must be 0, 1 (+) or 2 (-), and 0 after the last element")
    signs: np.ndarray = _SIGNS[codes[:count]]
    return signs


def _scaled(values: np.ndarray, block: Any, scale_bytes: bytes | memoryview) -> np.ndarray:
    """``values`` (float32, owned) times the scale of their block, in place."""
    if not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= MAX_BLOCK:
        raise DecodeError(f"block must be an int in [1, {MAX_BLOCK}], got {block!r}")
    nblocks = -(-values.size // block)
    _length("scales", scale_bytes, nblocks * _F4.itemsize)
    scales = np.frombuffer(scale_bytes, _F4)
    if not (np.isfinite(scales).all() and (scales >= 0).all() and (scales <= MAX_SCALE).all()):
        raise DecodeError(f"scales must be finite and in [0, {MAX_SCALE:.3g}]")
    full = values.size // block
    whole = values[: full * block].reshape(full, block)
    whole *= scales[:full, None]
    if full < nblocks:
        values[full * block :] *= scales[full]
    return values


def _indices(raw: bytes | memoryview, count: int) -> np.ndarray:
    if len(raw) % _U4.itemsize:
        raise DecodeError(f"top-k indices take 4 bytes each, got {len(raw)} bytes")
    k = len(raw) // _U4.itemsize
    if k > count:
        raise DecodeError(f"top-k sends {k} entries of a tensor of {count} elements")
    idx = np.frombuffer(raw, _U4)
    if k and (int(idx[-1]) >= count or (k > 1 and not (idx[1:] > idx[:-1]).all())):
        raise DecodeError(f"top-k indices must increase strictly and stay below {count}")
    return idx


def _bitmap(raw: bytes | memoryview, count: int) -> np.ndarray:
    """The bytes (a view, nothing allocated) of a bitmap of ``count`` elements: exactly
    ``ceil(count / 8)`` of them, element ``i`` in bit ``i mod 8`` of byte ``i div 8``, and
    the bits after the last element 0."""
    _length("trained", raw, -(-count // 8))
    packed = np.frombuffer(raw, _U1)
    if count % 8 and int(packed[-1]) >> (count % 8):
        raise DecodeError("trained bits after the last element must be 0")
    return packed


def _binary(obj: Mapping[str, Any], key: str) -> bytes | memoryview:
    value = obj[key]
    if not isinstance(value, bytes | memoryview):
        also = " or true" if key == "trained" else ""
        raise DecodeError(f"tensor {key} must be binary{also}")
    return value


def _length(key: str, value: bytes | memoryview, expected: int) -> None:
    if len(value) != expected:
        raise DecodeError(f"tensor {key} has {len(value)} bytes, expected {expected}")
