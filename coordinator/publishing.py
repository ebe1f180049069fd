"""Turn aggregated weights into the ``model/current`` message (the torch side of the
coordinator: ONNX export and the torch/ONNX Runtime parity check)."""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.schemas import ModelBody, message
from broker.signing import sign_model
from models.onnx_export import check_parity, export_onnx
from models.params import Weights, compose, get_weights
from models.regressor import build_model
from models.spec import ModelSpec


def reference_inputs(spec: ModelSpec, n: int = 64, seed: int = 0) -> np.ndarray:
    """Plausible raw inputs around the spec's reference values, for the parity check."""
    rng = np.random.default_rng(seed)
    centre = np.asarray(spec.x_center, np.float32)
    scale = np.asarray(spec.x_scale, np.float32)
    x = centre + scale * rng.standard_normal((n, len(centre)))
    return np.maximum(x, 0.0).astype(np.float32)  # tonnes, minutes, Nm3: never negative


def initial_weights(spec: ModelSpec, seed: int) -> Weights:
    return get_weights(build_model(spec, seed))


def model_message(sender: str, spec: ModelSpec, weights: Weights, *, version: int,
                  parent: int | None, round_id: int | None, metadata: dict[str, Any],
                  signing_key: Ed25519PrivateKey | None = None) -> bytes:
    """The encoded (and, given a key, signed) model message; raises if ONNX Runtime
    disagrees with torch."""
    model = compose(spec, weights)
    onnx_bytes = export_onnx(model)
    check_parity(model, onnx_bytes, reference_inputs(spec))
    body = ModelBody(
        version=version, parent_version=parent, round_id=round_id,
        spec=spec.model_dump(mode="json"), onnx=onnx_bytes, weights=weights,
        metadata=metadata,
    )
    if signing_key is not None:
        body = sign_model(body, signing_key)
    return message(sender, body)
