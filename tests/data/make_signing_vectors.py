"""Write docs/signing-vectors.json: signed model messages for implementers of the protocol.

Run from the repository root: ``.venv/bin/python -m tests.data.make_signing_vectors``.
Everything is deterministic (fixed key seed, timestamps and message ids; Ed25519
signatures are deterministic), so tests/unit/test_signing_vectors.py checks both that the
file is what this script writes and that the digest follows docs/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alchimia.broker.schemas import Envelope, ModelBody, encode
from alchimia.broker.signing import canonical_json, model_digest, sign_model

OUT = Path(__file__).resolve().parents[2] / "docs" / "signing-vectors.json"
# A published key: for these vectors only, never for a federation.
SEED = hashlib.sha256(b"alchimia signing test vectors: never use this key").digest()

_SPEC = {  # a small mlp-v1 contract (two features, one target, one hidden layer of 2)
    "architecture": "mlp-v1",
    "features": ["charge_E3_t", "hot_heel_t"],
    "targets": ["energy_kwh_t"],
    "hidden": [2],
    "x_center": [40.0, 15.0],
    "x_scale": [20.0, 8.0],
    "y_center": [420.0],
    "y_scale": [50.0],
}


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {
        "layers.0.weight": (2, 2),
        "layers.0.bias": (2,),
        "layers.2.weight": (1, 2),
        "layers.2.bias": (1,),
    }
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _cases() -> list[tuple[str, ModelBody]]:
    onnx = b"ONNX bytes of the model (a placeholder: the digest only hashes them)"
    return [
        (
            "initial model: version 0, no parent or round, metadata.initial",
            ModelBody(
                version=0, spec=_SPEC, onnx=onnx, weights=_weights(0), metadata={"initial": True}
            ),
        ),
        (
            "aggregated model of a sync round",
            ModelBody(
                version=7,
                parent_version=6,
                round_id=9,
                spec=_SPEC,
                onnx=onnx,
                weights=_weights(7),
                metadata={
                    "strategy": "fedadam",
                    "mode": "sync",
                    "contributors": ["plant-1", "plant-3"],
                    "stragglers": ["plant-2"],
                },
            ),
        ),
        (
            "number formatting and key order of RFC 8785: integral floats, exponents, -0.0, "
            "the largest exact integer; keys sorted by UTF-16 code units (U+1F600 before "
            "U+E000)",
            ModelBody(
                version=12,
                parent_version=3,
                spec={**_SPEC, "x_scale": [8.0, 1e-05]},
                onnx=onnx,
                weights=_weights(12),
                metadata={
                    "strategy": "fedavg",
                    "rollback_of": 3,
                    "numbers": [8.0, 0.1, 1e-7, 1e21, 123456789.125, -0.0, 2**53 - 1, 5e-324],
                    "\ue000": "private use",
                    "\U0001f600": "astral",
                    "é": ["ü", None, False],
                },
            ),
        ),
    ]


def build_vectors() -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    vectors = []
    for i, (what, body) in enumerate(_cases()):
        signed = sign_model(body, key)
        env = Envelope(
            kind="model",
            sender="coordinator",
            ts=1767225600.0 + i,
            msg_id=f"{i + 1:032x}",
            body=signed,
        )
        assert signed.signature is not None
        vectors.append(
            {
                "description": what,
                "message_hex": encode(env).hex(),
                "spec_jcs": canonical_json(body.spec).decode(),
                "metadata_jcs": canonical_json(body.metadata).decode(),
                "onnx_sha256_hex": hashlib.sha256(body.onnx).hexdigest(),
                "digest_hex": model_digest(body).hex(),
                "signature_hex": signed.signature.hex(),
            }
        )
    return {
        "about": "Signed model messages (docs/PROTOCOL.md, 'Model signature'). message_hex "
        "is the whole msgpack payload of model/current; decode it, compute the "
        "digest and verify signature_hex over it with public_key_pem. spec_jcs, "
        "metadata_jcs and onnx_sha256_hex are intermediate values of the digest. "
        "Written by tests/data/make_signing_vectors.py.",
        "private_key_seed_hex": SEED.hex(),
        "public_key_pem": public_pem,
        "vectors": vectors,
    }


def main() -> None:
    OUT.write_text(json.dumps(build_vectors(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
