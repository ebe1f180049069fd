"""The update codecs' names, wire keys and defaults: what settings, schemas and the message
codec need to know of them, without numpy (``alchimia coordinator --help`` loads the
settings). The codecs themselves are in :mod:`broker.compression`; their wire formats in
docs/PROTOCOL.md ("Tensor codecs")."""

from __future__ import annotations

from typing import Literal, get_args

Codec = Literal["raw", "fp16", "int8", "sign", "topk", "topk_int8"]
CODECS: tuple[str, ...] = get_args(Codec)
LOSSY: tuple[str, ...] = tuple(c for c in CODECS if c != "raw")
# The one dtype of ``data`` each codec allows in an update (raw: float32; sign: bytes of
# four 2-bit codes).
CODEC_DTYPES: dict[str, str] = {
    "raw": "f4",
    "fp16": "f2",
    "int8": "i1",
    "sign": "u1",
    "topk": "f4",
    "topk_int8": "i1",
}
# Keys beyond codec, dtype, shape, data.
EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    "raw": (),
    "fp16": (),
    "int8": ("block", "scales"),
    "sign": ("block", "scales"),
    "topk": ("indices",),
    "topk_int8": ("indices", "block", "scales"),
}
# Keys a codec may carry or leave out: the bitmap of the coordinates a top-k update trained.
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    c: ("trained",) if c in ("topk", "topk_int8") else () for c in CODECS
}
MASKED: tuple[str, ...] = tuple(c for c in CODECS if OPTIONAL_KEYS[c])
DEFAULT_TOPK_FRACTION = 0.05
