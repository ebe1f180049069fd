"""The published signature test vectors (docs/signing-vectors.json) against the documented
recipe (docs/PROTOCOL.md, "Model signature") and against the code: neither can drift."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from alchimia.broker.schemas import ModelBody, decode
from alchimia.broker.signing import SignatureError, model_digest, verify_model
from tests.data.make_signing_vectors import OUT, build_vectors

DOCS = Path(__file__).resolve().parents[2] / "docs"
PUBLISHED: dict[str, Any] = json.loads(OUT.read_text())
VECTORS = PUBLISHED["vectors"]


def _chunk(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def documented_digest(body: dict[str, Any]) -> bytes:
    """The recipe of docs/PROTOCOL.md, step by step, on the plain msgpack map."""
    parts = [b"alchimia/v1/model\x00"]
    parts += [
        struct.pack("<q", -1 if body.get(k) is None else body[k])
        for k in ("version", "parent_version", "round_id")
    ]
    parts += [_chunk(rfc8785.dumps(body["spec"])), _chunk(rfc8785.dumps(body["metadata"]))]
    parts.append(_chunk(hashlib.sha256(body["onnx"]).digest()))
    parts.append(struct.pack("<Q", len(body["weights"])))
    for name, tensor in body["weights"].items():
        parts += [
            _chunk(name.encode()),
            _chunk(tensor["dtype"].encode()),
            _chunk(struct.pack(f"<{len(tensor['shape'])}Q", *tensor["shape"])),
            _chunk(tensor["data"]),
        ]
    return hashlib.sha256(b"".join(parts)).digest()


def _public_key() -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(PUBLISHED["public_key_pem"].encode())
    assert isinstance(key, Ed25519PublicKey)
    return key


def test_the_published_file_is_what_the_script_writes() -> None:
    assert build_vectors() == PUBLISHED, (
        "the model message or its digest changed: if that is intended, say so in "
        "docs/PROTOCOL.md and run .venv/bin/python -m tests.data.make_signing_vectors"
    )


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["description"][:30])
def test_documented_recipe_gives_the_digest_and_the_signature_verifies(
    vector: dict[str, str],
) -> None:
    raw = msgpack.unpackb(bytes.fromhex(vector["message_hex"]), raw=False)
    body = raw["body"]
    assert rfc8785.dumps(body["spec"]).decode() == vector["spec_jcs"]
    assert rfc8785.dumps(body["metadata"]).decode() == vector["metadata_jcs"]
    digest = documented_digest(body)
    assert digest.hex() == vector["digest_hex"]
    _public_key().verify(bytes.fromhex(vector["signature_hex"]), digest)
    assert body["signature"] == bytes.fromhex(vector["signature_hex"])


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["description"][:30])
def test_the_code_verifies_each_vector(vector: dict[str, str]) -> None:
    model = decode(bytes.fromhex(vector["message_hex"]), ModelBody).body
    assert isinstance(model, ModelBody)
    assert model_digest(model).hex() == vector["digest_hex"]
    verify_model(model, _public_key())
    tampered = model.model_copy(update={"metadata": {**model.metadata, "extra": 1}})
    with pytest.raises(SignatureError):
        verify_model(tampered, _public_key())


def test_the_protocol_points_to_the_vectors() -> None:
    assert "docs/signing-vectors.json" in (DOCS / "PROTOCOL.md").read_text()
