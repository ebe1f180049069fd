"""Envelope and message bodies, validated with pydantic.

One msgpack map per message: ``{"v", "kind", "sender", "ts", "msg_id", "body"}``. The body
schema is chosen by ``kind``. Tensor fields hold numpy arrays after validation (decoded
zero-copy by ``broker.codec``) and are written back to their wire form on dump.
docs/PROTOCOL.md is the normative description; keep the two in step.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_serializer,
    model_validator,
)

from alchimia.broker.codec import (
    DEFAULT_LIMITS,
    DELTAS,
    WEIGHTS,
    Accepted,
    DecodeError,
    Encoded,
    Limits,
    decode_tensors,
    encode_tensors,
)
from alchimia.broker.codec import pack as _pack
from alchimia.broker.codec import unpack as _unpack
from alchimia.broker.codec_names import DEFAULT_TOPK_FRACTION, Codec
from alchimia.broker.topics import ID_PATTERN

PROTOCOL_VERSION: Final = 1
# Secure aggregation's wire sizes (docs/PROTOCOL.md, "Secure aggregation"), declared here
# because every client decodes messages; broker.secagg (which needs the cryptography
# libraries) re-exports them with its other constants.
#: An X25519 public key.
KEY_BYTES: Final = 32
#: One Shamir share of a 32-byte secret (two 16-byte halves).
SHARE_BYTES: Final = 32
#: A share ciphertext: 12-byte nonce, ChaCha20-Poly1305 of share_s || share_b, 16-byte tag.
CIPHERTEXT_BYTES: Final = 12 + 2 * SHARE_BYTES + 16
#: Most agents in a secure round's roster (16,384 inputs of at most 2^48 cannot wrap 2^63).
MAX_ROSTER: Final = 16_384
#: Bytes of ``secagg_masked.masked`` per shared element: two little-endian uint64 words.
MASKED_BYTES_PER_ELEMENT: Final = 16

Identifier = Annotated[str, Field(pattern=rf"^{ID_PATTERN}$")]
Name = Annotated[str, Field(min_length=1, max_length=128)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
# The decoder hands out bin values as views into the message; small blobs become bytes.
Blob = Annotated[bytes, BeforeValidator(lambda v: bytes(v) if isinstance(v, memoryview) else v)]


def _limits(info: ValidationInfo) -> Limits:
    limits: Limits = (info.context or {}).get("limits", DEFAULT_LIMITS)
    return limits


def _check_finite(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("check_finite", True))


def _tensor_validator(accept: Accepted, built: tuple[type, ...]) -> WrapValidator:
    """Decodes a tensor map from the wire under ``accept``; values of the ``built`` types
    were made in process and pass as they are."""

    def validate(value: Any, handler: Any, info: ValidationInfo) -> dict[str, Any]:
        if isinstance(value, dict) and all(isinstance(v, built) for v in value.values()):
            return value
        try:
            return decode_tensors(
                value, _limits(info), check_finite=_check_finite(info), accept=accept
            )
        except DecodeError as exc:
            raise ValueError(str(exc)) from None

    return WrapValidator(validate)


_SERIALIZER = PlainSerializer(encode_tensors, return_type=dict)
# Model weights: raw float32. Update deltas: float32 under any codec (docs/PROTOCOL.md,
# "Tensor codecs"); a sender may hand in tensors it has already encoded (``Encoded``),
# a receiver always gets arrays.
Tensors = Annotated[dict[str, np.ndarray], _tensor_validator(WEIGHTS, (np.ndarray,)), _SERIALIZER]
Delta = Annotated[
    dict[str, np.ndarray | Encoded], _tensor_validator(DELTAS, (np.ndarray, Encoded)), _SERIALIZER
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)
    kind: ClassVar[str]


class StatusBody(Body):
    """Birth and last will of agents and the coordinator (retained)."""

    kind: ClassVar[str] = "status"
    role: Literal["agent", "coordinator", "consumer"]
    state: Literal["online", "offline"]
    software: Annotated[str, Field(max_length=64)] = ""
    samples: Annotated[int, Field(ge=0)] = 0
    capabilities: Annotated[list[Name], Field(max_length=64)] = []
    model_version: Annotated[int, Field(ge=0)] | None = None
    # Agents: heats learned of since the last update sent (rounds follow the data).
    new_heats: Annotated[int, Field(ge=0)] | None = None
    # Coordinator: what it does now (admins' pause, resume and stop change it).
    activity: Literal["running", "paused", "stopping"] | None = None
    # What `alchimia status` shows without waiting for metrics (docs/PROTOCOL.md, status).
    # Agents: the version serving predictions here, drift events and models refused since
    # the agent started, its latest validation and prequential figures.
    serving_version: Annotated[int, Field(ge=0)] | None = None
    drift_events: Annotated[int, Field(ge=0)] | None = None
    models_rejected: Annotated[int, Field(ge=0)] | None = None
    validation: Values | None = None
    prequential: Values | None = None
    # The coordinator: messages it rejected since it started, per agent it knows.
    rejected: (
        Annotated[dict[Identifier, Annotated[int, Field(ge=0)]], Field(max_length=100_000)] | None
    ) = None


class TaskBody(Body):
    """The open training task on ``round/current`` (retained)."""

    kind: ClassVar[str] = "task"
    round_id: Annotated[int, Field(ge=0)]
    state: Literal["open", "closed"]
    mode: Literal["sync", "async"] = "sync"
    base_version: Annotated[int, Field(ge=0)]
    deadline_ts: FiniteFloat
    selected: Annotated[list[Identifier], Field(max_length=100_000)]
    # Every agent online when the round opened (async: every online agent) is selected;
    # ``selected`` is then empty, so the task does not grow with the federation.
    selected_all: Annotated[bool, Field(strict=True)] = False
    epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    lr: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False, strict=True)] = 1e-3
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 32
    hyper: Annotated[dict[Name, FiniteFloat], Field(max_length=64)] = {}
    # How agents encode their deltas (a coordinator setting; docs/PROTOCOL.md).
    update_codec: Codec = "raw"
    update_topk_fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False, strict=True)] = (
        DEFAULT_TOPK_FRACTION
    )
    # Client-level differential privacy (a coordinator setting; docs/PROTOCOL.md): agents
    # clip the delta's L2 norm to dp_clip_norm and add N(0, (dp_noise_multiplier *
    # dp_clip_norm)^2) per coordinate. Both set or both nil (off).
    dp_clip_norm: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False, strict=True)] | None = (
        None
    )
    dp_noise_multiplier: (
        Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False, strict=True)] | None
    ) = None
    # A secure round (docs/PROTOCOL.md, "Secure aggregation"): sync mode only.
    secure_aggregation: Annotated[bool, Field(strict=True)] = False
    signature: Blob | None = None

    @model_validator(mode="after")
    def _dp_both_or_neither(self) -> TaskBody:
        if (self.dp_clip_norm is None) != (self.dp_noise_multiplier is None):
            raise ValueError("dp_clip_norm and dp_noise_multiplier are set together")
        return self

    @model_validator(mode="after")
    def _all_or_a_list(self) -> TaskBody:
        if self.selected_all and self.selected:
            raise ValueError("selected is empty when selected_all is true")
        return self

    def selects(self, agent_id: str) -> bool:
        """Whether this task asks ``agent_id`` to train."""
        return self.selected_all or agent_id in self.selected

    @model_validator(mode="after")
    def _secure_rounds_are_sync(self) -> TaskBody:
        if self.secure_aggregation and self.mode != "sync":
            raise ValueError("secure aggregation runs in sync mode only")
        return self


class UpdateBody(Body):
    """One agent's weight delta against ``base_version``."""

    kind: ClassVar[str] = "update"
    round_id: Annotated[int, Field(ge=0)]
    base_version: Annotated[int, Field(ge=0)]
    num_samples: Annotated[int, Field(ge=1, le=10**9)]
    delta: Delta
    metrics: Annotated[dict[Name, FiniteFloat], Field(max_length=256)] = {}


class ModelBody(Body):
    """A global model version on ``model/current`` (retained)."""

    kind: ClassVar[str] = "model"
    version: Annotated[int, Field(ge=0)]
    parent_version: Annotated[int, Field(ge=0)] | None = None
    round_id: Annotated[int, Field(ge=0)] | None = None
    spec: dict[str, Any]
    onnx: Blob
    weights: Tensors
    metadata: dict[str, Any] = {}
    signature: Blob | None = None


Level = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False, strict=True)]
Values = Annotated[dict[Name, FiniteFloat], Field(max_length=256)]


class PredictionBody(Body):
    """One prediction per heat, made before the outcome is known; with the site's
    calibrated interval at ``level`` once the site holds enough heats for one."""

    kind: ClassVar[str] = "prediction"
    heat_id: Name
    model_version: Annotated[int, Field(ge=0)]
    outputs: Values
    level: Level | None = None
    lower: Values | None = None
    upper: Values | None = None


class MetricsBody(Body):
    """Evaluation figures of an agent, e.g. validation error of a model version."""

    kind: ClassVar[str] = "metrics"
    model_version: Annotated[int, Field(ge=0)] | None = None
    scope: Name = "validation"
    values: Annotated[dict[Name, FiniteFloat], Field(max_length=256)]


class AdminBody(Body):
    """An admin's command to the coordinator on ``coordinator/admin``."""

    kind: ClassVar[str] = "admin"
    action: Literal["rollback", "pause", "resume", "stop"]
    version: Annotated[int, Field(ge=0)] | None = None  # rollback: the version to go back to

    @model_validator(mode="after")
    def _rollback_names_a_version(self) -> AdminBody:
        if self.action == "rollback" and self.version is None:
            raise ValueError("a rollback names the version to roll back to")
        return self


# -- request/response services (``agents/{id}/{service}/request`` -> ``.../response/{client}``)
# Every request body derives from RequestBody and every response body from ResponseBody:
# one correlation and error convention for all services (docs/PROTOCOL.md, "Requests").

RequestId = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,64}$")]
ErrorCode = Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,31}$")]


class ErrorInfo(BaseModel):
    """Why a request got no answer: a machine-readable code and a sentence for people."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    code: ErrorCode
    message: Annotated[str, Field(max_length=1024)]


class RequestBody(Body):
    """Base of every request body: ``request_id`` is echoed in the response."""

    request_id: RequestId


class ResponseBody(Body):
    """Base of every response body: the request's id (nil if the request could not be
    read far enough to find it) and, on failure, ``error`` (then nothing else is set)."""

    request_id: RequestId | None = None
    error: ErrorInfo | None = None


class PlannedHeat(BaseModel):
    """A heat not melted yet: model inputs by feature name (models/schema.py FEATURES)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    heat_id: Name | None = None
    inputs: Values


class InferRequestBody(RequestBody):
    """Predict planned heats with the agent's serving model (``infer/request``)."""

    kind: ClassVar[str] = "infer_request"
    heats: Annotated[list[PlannedHeat], Field(min_length=1)]
    level: Level | None = None  # interval level; nil: the agent's default


class HeatPrediction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    heat_id: Name | None = None
    outputs: Values
    lower: Values | None = None
    upper: Values | None = None
    power_on_min: FiniteFloat | None = None  # the site's estimate, when the request had none


class InferResponseBody(ResponseBody):
    """The answer to an ``infer_request`` (``infer/response/{client_id}``)."""

    kind: ClassVar[str] = "infer_response"
    model_version: Annotated[int, Field(ge=0)] | None = None
    level: Level | None = None
    calibration_heats: Annotated[int, Field(ge=0)] = 0
    predictions: list[HeatPrediction] = []


class OptimizeRequestBody(RequestBody):
    """Plan the cheapest charge for an order on the agent's serving model
    (``optimize/request``). ``order`` and ``stock`` are the maps of
    ``deploy/examples/order.toml`` and ``stock.toml`` (docs/DECISIONS.md; validated by the
    agent); ``risk``: the probability allowed for the heat to end over a chemistry maximum
    (nil: 0.05); ``joint``: ``risk`` bounds any element (true) or each one;
    ``reference_charge``: grade -> t (nil: the site's typical charge)."""

    kind: ClassVar[str] = "optimize_request"
    order: Annotated[dict[Name, Any], Field(max_length=64)]
    stock: Annotated[dict[Name, Any], Field(max_length=64)]
    risk: Annotated[float, Field(gt=0.0, lt=0.5, allow_inf_nan=False, strict=True)] | None = None
    joint: bool = True
    reference_charge: Annotated[dict[Name, FiniteFloat], Field(max_length=64)] | None = None


class OptimizeResponseBody(ResponseBody):
    """The answer to an ``optimize_request`` (``optimize/response/{client_id}``): the plan
    (docs/DECISIONS.md, "Output"), also when the order cannot be met (its ``status`` is
    then ``infeasible`` and ``infeasible`` says which constraint fails and by how much)."""

    kind: ClassVar[str] = "optimize_response"
    model_version: Annotated[int, Field(ge=0)] | None = None
    plan: dict[str, Any] | None = None


# -- secure aggregation (docs/PROTOCOL.md, "Secure aggregation (sync rounds)"): agents send
# on ``agents/{id}/secagg``, the coordinator on ``round/secagg`` and ``round/secagg/{id}``.


def _bin(value: Any) -> Any:
    """A ``bin`` decoded as a view into the message becomes bytes (a copy)."""
    return bytes(value) if isinstance(value, memoryview) else value


# Exactly so many bytes, and a msgpack ``bin``: a str is refused (strict).
PublicKey = Annotated[
    bytes, BeforeValidator(_bin), Field(strict=True, min_length=KEY_BYTES, max_length=KEY_BYTES)
]
Share = Annotated[
    bytes,
    BeforeValidator(_bin),
    Field(strict=True, min_length=SHARE_BYTES, max_length=SHARE_BYTES),
]
Ciphertext = Annotated[
    bytes,
    BeforeValidator(_bin),
    Field(strict=True, min_length=CIPHERTEXT_BYTES, max_length=CIPHERTEXT_BYTES),
]
RoundId = Annotated[int, Field(ge=0)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RosterEntry(_Entry):
    """One agent of a secure round's roster and its public keys."""

    id: Identifier
    c_pk: PublicKey
    s_pk: PublicKey


class OutgoingShare(_Entry):
    """A share ciphertext an agent addresses to another agent of the roster."""

    to: Identifier
    ct: Ciphertext


class IncomingShare(_Entry):
    """A share ciphertext relayed to its recipient; ``from`` on the wire (a Python
    keyword): build one with ``IncomingShare.of(sender, ct)``."""

    sender: Identifier = Field(alias="from")
    ct: Ciphertext

    @classmethod
    def of(cls, sender: str, ct: bytes) -> IncomingShare:
        return cls.model_validate({"from": sender, "ct": ct})

    @model_serializer(mode="wrap")
    def _wire(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)  # "sender", or "from" when dumped by alias
        sender = out.pop("sender") if "sender" in out else out.pop("from")
        return {"from": sender, **out}


class RevealedShare(_Entry):
    """A survivor's share of another agent's self-mask seed (``b``) or ``s`` private key."""

    of: Identifier
    secret: Literal["b", "s"]
    share: Share


class SecaggKeysBody(Body):
    """An agent's two X25519 public keys for a secure round."""

    kind: ClassVar[str] = "secagg_keys"
    round_id: RoundId
    c_pk: PublicKey
    s_pk: PublicKey


class SecaggRosterBody(Body):
    """U1, sorted by id, with the share threshold (a majority)."""

    kind: ClassVar[str] = "secagg_roster"
    round_id: RoundId
    threshold: Annotated[int, Field(ge=1, le=MAX_ROSTER)]
    agents: Annotated[list[RosterEntry], Field(max_length=MAX_ROSTER)]


class SecaggSharesBody(Body):
    """An agent's encrypted shares, one per other agent of the roster."""

    kind: ClassVar[str] = "secagg_shares"
    round_id: RoundId
    shares: Annotated[list[OutgoingShare], Field(max_length=MAX_ROSTER)]


class SecaggInboxBody(Body):
    """The ciphertexts addressed to one agent by the other agents of U2."""

    kind: ClassVar[str] = "secagg_inbox"
    round_id: RoundId
    shares: Annotated[list[IncomingShare], Field(max_length=MAX_ROSTER)]


class SecaggMaskedBody(Body):
    """An agent's masked input y: 2P little-endian uint64 words."""

    kind: ClassVar[str] = "secagg_masked"
    round_id: RoundId
    base_version: Annotated[int, Field(ge=0)]
    num_samples: Annotated[int, Field(ge=1, le=10**9)]
    masked: Annotated[
        bytes, BeforeValidator(_bin), Field(strict=True, min_length=MASKED_BYTES_PER_ELEMENT)
    ]
    metrics: Annotated[dict[Name, FiniteFloat], Field(max_length=256)] = {}

    @field_validator("masked")
    @classmethod
    def _whole_elements(cls, value: bytes) -> bytes:
        if len(value) % MASKED_BYTES_PER_ELEMENT:
            raise ValueError(f"masked holds {MASKED_BYTES_PER_ELEMENT} bytes per element")
        return value


class SecaggUnmaskBody(Body):
    """U3, sorted: the agents whose masked input the coordinator took."""

    kind: ClassVar[str] = "secagg_unmask"
    round_id: RoundId
    survivors: Annotated[list[Identifier], Field(max_length=MAX_ROSTER)]


class SecaggRevealBody(Body):
    """A survivor's shares: b of each survivor, s of each agent of U2 that dropped out."""

    kind: ClassVar[str] = "secagg_reveal"
    round_id: RoundId
    shares: Annotated[list[RevealedShare], Field(max_length=MAX_ROSTER)]


BODIES: dict[str, type[Body]] = {
    b.kind: b
    for b in (
        StatusBody,
        TaskBody,
        UpdateBody,
        ModelBody,
        PredictionBody,
        MetricsBody,
        AdminBody,
        InferRequestBody,
        InferResponseBody,
        OptimizeRequestBody,
        OptimizeResponseBody,
        SecaggKeysBody,
        SecaggRosterBody,
        SecaggSharesBody,
        SecaggInboxBody,
        SecaggMaskedBody,
        SecaggUnmaskBody,
        SecaggRevealBody,
    )
}


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    v: Literal[1] = PROTOCOL_VERSION
    kind: str
    sender: Identifier
    ts: FiniteFloat
    msg_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    body: Body

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in BODIES:
            raise ValueError(f"unknown kind {value!r}")
        return value

    @classmethod
    def wrap(cls, sender: str, body: Body) -> Envelope:
        """A new envelope with a fresh message id and the current time."""
        return cls(
            kind=body.kind, sender=sender, ts=time.time(), msg_id=uuid.uuid4().hex, body=body
        )


B = TypeVar("B", bound=Body)


def body_of(env: Envelope, kind: type[B]) -> B:
    """``env.body`` typed as ``kind``: for envelopes decoded with ``expect=kind`` (or whose
    kind was checked), so that callers need no cast. Raises TypeError on any other body."""
    body = env.body
    if not isinstance(body, kind):
        raise TypeError(f"expected a {kind.__name__}, got {type(body).__name__}")
    return body


def encode(env: Envelope) -> bytes:
    """msgpack bytes of an envelope."""
    wire = env.model_dump(mode="python", exclude={"body"})
    wire["body"] = env.body.model_dump(mode="python")
    return _pack(wire)


def message(sender: str, body: Body) -> bytes:
    """Encode ``body`` in a fresh envelope: what senders call."""
    return encode(Envelope.wrap(sender, body))


def decode(
    payload: bytes | bytearray,
    expect: type[Body] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    *,
    check_finite: bool = True,
) -> Envelope:
    """A validated envelope; raises DecodeError with a one-line reason otherwise.

    Tensors are read-only views into ``payload``. ``check_finite=False`` leaves the NaN/inf
    scan of float tensors to the caller (the coordinator's accumulators do it in the same
    pass as the norm), saving one full read of every tensor.
    """
    return validate(_unpack(payload, limits), expect, limits, check_finite=check_finite)


class SchemaError(DecodeError):
    """A message that unpacked but breaks its schema; ``error_type`` is pydantic's error
    type of the first problem (e.g. ``finite_number``), ``where`` its dotted location."""

    def __init__(self, text: str, error_type: str, where: str) -> None:
        super().__init__(text)
        self.error_type, self.where = error_type, where


def validate(
    raw: dict[str, Any],
    expect: type[Body] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    *,
    check_finite: bool = True,
) -> Envelope:
    """The envelope of an unpacked message map (``decode`` without the unpacking)."""
    kind = raw.get("kind")
    body_cls = BODIES.get(kind) if isinstance(kind, str) else None
    if body_cls is None:
        raise DecodeError(f"unknown message kind {kind!r}")
    if expect is not None and body_cls is not expect:
        raise DecodeError(f"expected a {expect.kind} message, got {kind!r}")
    ctx = {"limits": limits, "check_finite": check_finite}
    try:
        body = body_cls.model_validate(raw.get("body"), context=ctx)
        return Envelope.model_validate({**raw, "body": body}, context=ctx)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise SchemaError(
            f"{kind} message invalid at {where}: {first['msg']}", first["type"], where
        ) from None
