"""Turn aggregated weights into the ``model/current`` message: the ONNX graph built from
the weights (``models.onnx_build``, no torch), checked in ONNX Runtime, signed."""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alchimia.broker.schemas import ModelBody, message
from alchimia.broker.signing import sign_model
from alchimia.models.initial import initial_weights
from alchimia.models.onnx_build import build_onnx, check_runs
from alchimia.models.params import Weights
from alchimia.models.spec import ModelSpec

__all__ = ["initial_weights", "model_message", "reference_inputs"]


def reference_inputs(spec: ModelSpec, n: int = 64, seed: int = 0) -> np.ndarray:
    """Plausible raw inputs around the spec's reference values, for the parity check."""
    rng = np.random.default_rng(seed)
    centre = np.asarray(spec.x_center, np.float32)
    scale = np.asarray(spec.x_scale, np.float32)
    x = centre + scale * rng.standard_normal((n, len(centre)))
    return np.maximum(x, 0.0).astype(np.float32)  # tonnes, minutes, Nm3: never negative


def model_message(
    sender: str,
    spec: ModelSpec,
    weights: Weights,
    *,
    version: int,
    parent: int | None,
    round_id: int | None,
    metadata: dict[str, Any],
    signing_key: Ed25519PrivateKey | None = None,
) -> bytes:
    """The encoded (and, given a key, signed) model message; raises if ONNX Runtime
    cannot run the built graph."""
    onnx_bytes = build_onnx(spec, weights)
    check_runs(onnx_bytes, spec, reference_inputs(spec))
    body = ModelBody(
        version=version,
        parent_version=parent,
        round_id=round_id,
        spec=spec.model_dump(mode="json"),
        onnx=onnx_bytes,
        weights=weights,
        metadata=metadata,
    )
    if signing_key is not None:
        body = sign_model(body, signing_key)
    return message(sender, body)
