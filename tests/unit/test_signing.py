"""Model signatures: any change to a signed field breaks verification."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alchimia.broker.schemas import ModelBody, decode, message
from alchimia.broker.signing import SignatureError, sign_model, verify_model


def _body() -> ModelBody:
    return ModelBody(
        version=4,
        parent_version=3,
        round_id=7,
        spec={"hidden": [2]},
        onnx=b"onnx-bytes",
        weights={"w": np.arange(4, dtype=np.float32)},
        metadata={"contributors": ["a", "b"]},
    )


def test_signed_model_verifies_after_a_trip_over_the_wire() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_model(_body(), key)
    received = decode(message("coordinator", signed), ModelBody).body
    verify_model(received, key.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"version": 5},
        {"parent_version": None},
        {"round_id": 8},
        {"spec": {"hidden": [3]}},
        {"onnx": b"onnx-bytez"},
        {"metadata": {"contributors": ["a"]}},
        {"weights": {"w": np.array([0, 1, 2, 3.5], np.float32)}},
        {"weights": {"v": np.arange(4, dtype=np.float32)}},
    ],
)
def test_any_tampering_is_detected(change: dict) -> None:
    key = Ed25519PrivateKey.generate()
    forged = sign_model(_body(), key).model_copy(update=change)
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_model(forged, key.public_key())


def test_unsigned_and_foreign_signatures_rejected() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="not signed"):
        verify_model(_body(), key.public_key())
    foreign = sign_model(_body(), Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_model(foreign, key.public_key())


def test_a_javascript_encoder_writing_integral_floats_as_ints_verifies() -> None:
    """RFC 8785 writes 8.0 and 8 alike: a client whose msgpack encoder sends integral
    numbers as ints (JavaScript) computes the same digest."""
    key = Ed25519PrivateKey.generate()
    body = _body().model_copy(
        update={"spec": {"x_scale": [8.0, 1e-05, 0.5]}, "metadata": {"lr": 2.0}}
    )
    signed = sign_model(body, key)
    as_javascript = signed.model_copy(
        update={"spec": {"x_scale": [8, 0.00001, 0.5]}, "metadata": {"lr": 2}}
    )
    verify_model(as_javascript, key.public_key())


@pytest.mark.parametrize("metadata", [{"big": 2**53}, {"blob": b"\x00"}])
def test_metadata_without_a_canonical_form_is_rejected_not_raised(metadata: dict) -> None:
    key = Ed25519PrivateKey.generate()
    forged = sign_model(_body(), key).model_copy(update={"metadata": metadata})
    with pytest.raises(SignatureError, match="no canonical JSON form"):
        verify_model(forged, key.public_key())
