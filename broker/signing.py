"""Ed25519 signatures of model messages.

The signature covers a digest of every field of the model body except the signature
itself, computed from the decoded values in a fixed layout (not from msgpack bytes), so
any implementation can recompute it: see docs/PROTOCOL.md, "Model signature".
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from alchimia.broker.codec import encode_tensor
from alchimia.broker.schemas import ModelBody, TaskBody

DOMAIN = b"alchimia/v1/model\x00"


class SignatureError(ValueError):
    """A model whose signature is missing or does not verify."""


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JSON Canonicalization Scheme) UTF-8 bytes of ``obj``: keys sorted by their
    UTF-16 code units, no whitespace, numbers as ECMAScript writes them (``8.0`` -> ``8``,
    ``1e-05`` -> ``0.00001``), so any language's JCS library gives the same bytes.

    Raises ``rfc8785.CanonicalizationError`` for what JSON cannot hold exactly: NaN or
    infinity, integers beyond +-(2**53 - 1), non-string keys, bytes.
    """
    return rfc8785.dumps(obj)


def _chunk(h: hashlib._Hash, data: bytes) -> None:
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def model_digest(body: ModelBody) -> bytes:
    """SHA-256 over the model's fields in the documented order; raises
    ``rfc8785.CanonicalizationError`` when ``spec`` or ``metadata`` has no JCS form."""
    h = hashlib.sha256(DOMAIN)
    for value in (body.version, body.parent_version, body.round_id):
        h.update(struct.pack("<q", -1 if value is None else value))
    _chunk(h, canonical_json(body.spec))
    _chunk(h, canonical_json(body.metadata))
    _chunk(h, hashlib.sha256(body.onnx).digest())
    h.update(struct.pack("<Q", len(body.weights)))
    for name, arr in body.weights.items():
        wire = encode_tensor(arr)
        _chunk(h, name.encode())
        _chunk(h, wire["dtype"].encode())
        _chunk(h, struct.pack(f"<{len(wire['shape'])}Q", *wire["shape"]))
        _chunk(h, wire["data"])
    return h.digest()


def sign_model(body: ModelBody, key: Ed25519PrivateKey) -> ModelBody:
    """The same body with its ``signature`` set."""
    return body.model_copy(update={"signature": key.sign(model_digest(body))})


def verify_model(body: ModelBody, key: Ed25519PublicKey) -> None:
    if body.signature is None:
        raise SignatureError(f"model version {body.version} is not signed")
    try:
        digest = model_digest(body)
    except rfc8785.CanonicalizationError as exc:
        raise SignatureError(
            f"model version {body.version} cannot be verified: its spec or "
            f"metadata has no canonical JSON form ({exc})"
        ) from None
    try:
        key.verify(body.signature, digest)
    except InvalidSignature:
        raise SignatureError(f"model version {body.version} has an invalid signature") from None


TASK_DOMAIN = b"alchimia/v1/task\x00"


def task_digest(body: TaskBody) -> bytes:
    """SHA-256 of the task domain and the RFC 8785 JSON of every body field but
    ``signature`` (the coordinator sends every field, defaults included)."""
    return hashlib.sha256(
        TASK_DOMAIN + canonical_json(body.model_dump(mode="json", exclude={"signature"}))
    ).digest()


def sign_task(body: TaskBody, key: Ed25519PrivateKey) -> TaskBody:
    """The same task with its ``signature`` set: tasks are authenticated like models."""
    return body.model_copy(update={"signature": key.sign(task_digest(body))})


def verify_task(body: TaskBody, key: Ed25519PublicKey) -> None:
    if body.signature is None:
        raise SignatureError(f"task of round {body.round_id} is not signed")
    try:
        key.verify(body.signature, task_digest(body))
    except (InvalidSignature, rfc8785.CanonicalizationError):
        raise SignatureError(f"task of round {body.round_id} has an invalid signature") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key
