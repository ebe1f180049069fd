"""Strategy state (momentum, moments, counters) as bytes, for checkpoints beside a version.

Uses the bus's tensor codec so a checkpoint is as safe to load as a message: no pickle.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from alchimia.broker.codec import decode_tensor, encode_tensor, pack, unpack

StateValue = np.ndarray | float | int


def pack_state(state: Mapping[str, StateValue]) -> bytes:
    return pack({k: encode_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()})


def unpack_state(data: bytes) -> dict[str, StateValue]:
    return {
        k: decode_tensor(v).copy() if isinstance(v, dict) else v for k, v in unpack(data).items()
    }
