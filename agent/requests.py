"""Requests to an agent, without I/O: request bytes and the serving state in, the topic
and bytes of the response out (docs/PROTOCOL.md, "Requests").

A :class:`Service` is one request/response pair of topics under the agent's subtree,
``agents/{id}/{service}/request`` in and ``agents/{id}/{service}/response/{client_id}``
out, with its request and response bodies and the function that answers. The
:class:`Responder` does everything the services share: size limits, decoding, the check
that a request is for this service, correlation (the response carries the request's
``request_id``), the address (the request envelope's ``sender`` is the client id) and the
error convention: any bad request gets a response with ``error: {code, message}`` and no
result, never silence, and nothing a request holds can raise out of ``handle``. Requests
too broken to name a sender cannot be answered: they are counted and logged.

**Extension point.** A new service (the charge optimiser: ``optimize``) is one more
:class:`Service` in the list given to :class:`Responder` (``Agent.services``): its body
classes derive from ``broker.schemas.RequestBody`` / ``ResponseBody`` (and join
``broker.schemas.BODIES``), its ``answer`` takes the validated request and the
:class:`ServingState` and returns the response body, raising :class:`RequestError` with a
code and a sentence for a request it cannot answer.

No torch here: the agent's serving model is ONNX Runtime.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np

from alchimia.broker.limits import DecodeError, Limits
from alchimia.broker.rejections import RejectionLog
from alchimia.broker.schemas import (
    Envelope,
    ErrorInfo,
    HeatPrediction,
    InferRequestBody,
    InferResponseBody,
    OptimizeRequestBody,
    OptimizeResponseBody,
    RequestBody,
    ResponseBody,
    SchemaError,
    body_of,
    message,
    validate,
)
from alchimia.broker.topics import ID_PATTERN, Topics
from alchimia.models.calibration import Calibration
from alchimia.models.power_on import TARGET as POWER_ON
from alchimia.models.power_on import PowerOnEstimate

log = logging.getLogger("alchimia.agent.requests")

DEFAULT_MAX_HEATS = 1000
DEFAULT_MAX_BYTES = 1024 * 1024
MAX_INPUT = 1e6  # largest input value accepted (t, kg, Nm3, min, degC are all far below)
_ID = re.compile(rf"^{ID_PATTERN}$")


class Predictor(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ServingState:
    """What the site serves, as one immutable snapshot: the agent replaces the whole
    object when anything changes, so a request never sees half of a swap."""

    version: int
    features: tuple[str, ...]
    targets: tuple[str, ...]
    predictor: Predictor
    calibration: Calibration | None = None  # a snapshot (Calibration.copy)
    power_on: PowerOnEstimate | None = None
    level: float = 0.9  # the site's default interval level
    # The site's typical charge (grade -> t: the mean of its recent heats), the reference
    # the optimiser widens its chemistry margins against.
    typical_charge: Mapping[str, float] | None = None


@dataclass(frozen=True)
class RequestLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_heats: int = DEFAULT_MAX_HEATS

    def decoder(self) -> Limits:
        return Limits(
            max_message_bytes=self.max_bytes,
            max_tensors=0,
            max_tensor_elements=0,
            max_total_elements=0,
            max_str_len=4096,
            max_depth=8,
        )


class RequestError(Exception):
    """A request that cannot be answered: ``code`` (docs/PROTOCOL.md) and why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message[:1024]


Answer = Callable[[Any, "ServingState | None", RequestLimits], ResponseBody]


@dataclass(frozen=True)
class Service:
    """One request/response service of the agent (module doc: the extension point)."""

    name: str  # topic level: broker.topics.SERVICES
    request: type[RequestBody]
    response: type[ResponseBody]
    answer: Answer
    # Checks on the raw (unpacked, not yet validated) body before the schema runs, for
    # cheap early refusals such as too many items; raises RequestError.
    precheck: Callable[[Any, RequestLimits], None] | None = None


@dataclass(frozen=True)
class Reply:
    topic: str
    payload: bytes
    error: str | None  # the error code sent, None for an answer


class Responder:
    """Answers the requests of every service on this agent's request topics."""

    def __init__(
        self,
        agent_id: str,
        topics: Topics,
        services: Sequence[Service],
        limits: RequestLimits | None = None,
    ) -> None:
        self.agent_id, self.topics = agent_id, topics
        self.services = {s.name: s for s in services}
        self.limits = limits or RequestLimits()
        self._decoder = self.limits.decoder()
        # Refused requests, counted by "error_{code}" and "unanswerable"; logged bounded.
        self.refusals = RejectionLog(log)
        self._answered = 0

    @property
    def counts(self) -> Counter[str]:
        """Requests since start: ``answered``, ``error_{code}`` per error code sent,
        ``unanswerable`` (no sender to answer)."""
        counts = Counter(self.refusals.snapshot())
        if self._answered:
            counts["answered"] = self._answered
        return counts

    @property
    def request_topics(self) -> list[str]:
        return [self.topics.agent_request(self.agent_id, name) for name in self.services]

    def handle(
        self, topic: str, payload: bytes | bytearray, state: ServingState | None
    ) -> Reply | None:
        """The response to one request message, or None when there is nobody to answer."""
        parsed = self.topics.parse_request_topic(topic)
        service = self.services.get(parsed[1]) if parsed else None
        if parsed is None or service is None or parsed[0] != self.agent_id:
            self.refusals.reject("unanswerable", "request on unexpected topic %s ignored", topic)
            return None
        client, request_id, why = None, None, ""
        try:
            try:
                env = self._decode(service, payload)
                request = body_of(env, RequestBody)
                client, request_id = env.sender, request.request_id
                body = service.answer(request, state, self.limits)
                body = body.model_copy(update={"request_id": request_id})
                code = None
            except RequestError:
                raise
            except Exception as exc:  # a bug or a model failure: answered, never raised
                log.exception(
                    "agent %s: %s request %s failed", self.agent_id, service.name, request_id
                )
                raise RequestError(
                    "internal", f"the agent failed to answer: {type(exc).__name__}"
                ) from exc
        except RequestError as exc:
            if client is None:
                client, request_id = _peek(payload)
            code, why = exc.code, exc.message
            body = service.response(
                request_id=request_id, error=ErrorInfo(code=exc.code, message=exc.message)
            )
            if client is None:
                self.refusals.reject(
                    "unanswerable",
                    "agent %s: unanswerable %s request (no sender): %s: %s",
                    self.agent_id,
                    service.name,
                    code,
                    why,
                )
                return None
        try:
            payload_out = message(self.agent_id, body)
        except Exception as exc:  # an answer that cannot be encoded: say so instead
            log.exception(
                "agent %s: %s answer to %s could not be encoded",
                self.agent_id,
                service.name,
                request_id,
            )
            code, why = "internal", f"the answer could not be encoded: {type(exc).__name__}"
            payload_out = message(
                self.agent_id,
                service.response(request_id=request_id, error=ErrorInfo(code=code, message=why)),
            )
        if code is None:
            self._answered += 1
        else:
            self.refusals.reject(
                f"error_{code}",
                "agent %s: %s request %s from %s refused: %s: %s",
                self.agent_id,
                service.name,
                request_id,
                client,
                code,
                why,
            )
        return Reply(
            self.topics.agent_response(self.agent_id, service.name, client), payload_out, code
        )

    def _decode(self, service: Service, payload: bytes | bytearray) -> Envelope:
        if len(payload) > self.limits.max_bytes:
            raise RequestError(
                "oversized",
                f"request of {len(payload)} bytes exceeds the limit of {self.limits.max_bytes}",
            )
        raw = _unpack(payload, self.limits)
        kind = raw.get("kind")
        if kind != service.request.kind:
            raise RequestError(
                "wrong_kind",
                f"expected a {service.request.kind} message on "
                f"{service.name}/request, got {kind!r}",
            )
        if service.precheck is not None and isinstance(raw.get("body"), Mapping):
            service.precheck(raw["body"], self.limits)
        try:
            return validate(raw, service.request, self._decoder)
        except SchemaError as exc:
            code = "non_finite" if exc.error_type == "finite_number" else "malformed"
            raise RequestError(code, str(exc)) from None
        except DecodeError as exc:
            raise RequestError("malformed", str(exc)) from None


def _unpack(payload: bytes | bytearray, limits: RequestLimits) -> dict[str, Any]:
    """The request's message map. Requests carry no tensors, so msgpack's C decoder does
    (the project's zero-copy one is pure Python: 5 ms for 100 heats); its limits bound
    every length, ext types and non-string keys are refused, nesting is bounded by its
    stack (and by the schema)."""
    n = len(payload)
    try:
        raw = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_ext_len=0,
            max_str_len=min(n, 4096),
            max_bin_len=min(n, 4096),
            max_array_len=min(n, 100_000),
            max_map_len=min(n, 100_000),
        )
    except Exception as exc:  # every msgpack failure: FormatError, ExtraData, StackError...
        raise RequestError(
            "malformed", f"not a valid msgpack message: {type(exc).__name__}: {exc}"[:300]
        ) from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise RequestError("malformed", "message must be a map with string keys")
    return raw


def _peek(payload: bytes | bytearray) -> tuple[str | None, str | None]:
    """Best effort: the sender and request id of a request that failed to decode, read
    without building the rest of it (so an oversized request can still be answered)."""
    sender = request_id = None
    try:
        u = msgpack.Unpacker(
            raw=False,
            max_buffer_size=max(len(payload), 1),
            max_str_len=256,
            max_bin_len=len(payload),
            max_array_len=len(payload),
            max_map_len=len(payload),
        )
        u.feed(payload)
        for _ in range(min(u.read_map_header(), 16)):
            key = u.unpack()
            if key == "sender":
                value = u.unpack()
                sender = value if isinstance(value, str) and _ID.match(value) else None
            elif key == "body":
                for _ in range(min(u.read_map_header(), 64)):
                    if u.unpack() == "request_id":
                        value = u.unpack()
                        if (
                            isinstance(value, str)
                            and 0 < len(value) <= 64
                            and all("\x21" <= c <= "\x7e" for c in value)
                        ):
                            request_id = value
                    else:
                        u.skip()
            else:
                u.skip()
    except Exception:  # a broken payload: keep what was found before the break
        pass
    return sender, request_id


# -- infer ---------------------------------------------------------------------------


def _precheck_infer(body: Mapping[str, Any], limits: RequestLimits) -> None:
    heats = body.get("heats")
    if isinstance(heats, list) and len(heats) > limits.max_heats:
        raise RequestError(
            "too_many_heats", f"{len(heats)} heats in one request; at most {limits.max_heats}"
        )


def _rows(req: InferRequestBody, state: ServingState) -> np.ndarray:
    """The request's heats as model rows; NaN where power-on time is to be estimated."""
    index = {f: j for j, f in enumerate(state.features)}
    required = {f for f in state.features if not f.startswith("charge_") and f != POWER_ON}
    x = np.zeros((len(req.heats), len(state.features)), np.float64)
    for i, heat in enumerate(req.heats):
        names = heat.inputs.keys()
        unknown, missing = names - index.keys(), required - names
        if unknown or missing:
            where = f"heat {i}" + (f" ({heat.heat_id})" if heat.heat_id else "")
            if unknown:
                raise RequestError(
                    "unknown_feature",
                    f"{where}: unknown feature(s) "
                    f"{', '.join(sorted(unknown)[:5])}; known: "
                    f"{', '.join(state.features)}",
                )
            raise RequestError(
                "missing_feature",
                f"{where}: missing {', '.join(f for f in state.features if f in missing)}",
            )
        x[i, [index[n] for n in names]] = list(heat.inputs.values())
        if POWER_ON in index and POWER_ON not in names:
            x[i, index[POWER_ON]] = np.nan
    bad = (x < 0.0) | (x > MAX_INPUT)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        heat_id = req.heats[i].heat_id
        raise RequestError(
            "out_of_range",
            f"heat {i}"
            + (f" ({heat_id})" if heat_id else "")
            + f": {state.features[j]} = {x[i, j]:g} is outside "
            f"[0, {MAX_INPUT:g}]",
        )
    return x


def answer_infer(
    req: InferRequestBody, state: ServingState | None, limits: RequestLimits
) -> InferResponseBody:
    """Predictions of the serving model with the site's calibrated intervals."""
    if state is None:
        raise RequestError("no_model", "this agent serves no model yet")
    x = _rows(req, state)
    estimated, col = np.zeros(len(x), bool), -1
    if POWER_ON in state.features:
        col = state.features.index(POWER_ON)
        estimated = np.isnan(x[:, col])
        if estimated.any():
            if state.power_on is None:
                raise RequestError(
                    "missing_feature",
                    f"{POWER_ON} omitted and this site has no power-on estimate yet: give it",
                )
            x = state.power_on.fill(x)
            if not np.isfinite(x[:, col]).all():
                raise RequestError("internal", f"the {POWER_ON} estimate is not finite")
    pred = np.asarray(state.predictor.predict(x.astype(np.float32)), np.float64)
    if not np.isfinite(pred).all():
        bad = int(np.flatnonzero(~np.isfinite(pred).all(axis=1))[0])
        raise RequestError("internal", f"the model gave a non-finite prediction for heat {bad}")
    level = state.level if req.level is None else req.level
    held, lower, upper = 0, None, None
    if state.calibration is not None:
        held = state.calibration.n
        lo, hi = state.calibration.interval(pred, level)
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            lower, upper = lo.tolist(), hi.tolist()
    targets, outputs, power_on = state.targets, pred.tolist(), x[:, col].tolist()
    # Every value here is checked finite and every name is the model's: no validation.
    out = [
        HeatPrediction.model_construct(
            heat_id=heat.heat_id,
            outputs=dict(zip(targets, outputs[i], strict=True)),
            lower=dict(zip(targets, lower[i], strict=True)) if lower is not None else None,
            upper=dict(zip(targets, upper[i], strict=True)) if upper is not None else None,
            power_on_min=power_on[i] if estimated[i] else None,
        )
        for i, heat in enumerate(req.heats)
    ]
    return InferResponseBody(
        request_id=req.request_id,
        model_version=state.version,
        level=level,
        calibration_heats=held,
        predictions=out,
    )


INFER = Service("infer", InferRequestBody, InferResponseBody, answer_infer, _precheck_infer)
# -- optimize --------------------------------------------------------------------------


def answer_optimize(
    req: OptimizeRequestBody, state: ServingState | None, limits: RequestLimits
) -> OptimizeResponseBody:
    """The cheapest charge for the request's order and stock on the serving model
    (``models.charge``, docs/DECISIONS.md); an order that cannot be met is an answer too."""
    if state is None:
        raise RequestError("no_model", "this agent serves no model yet")
    from alchimia.models.charge import InfeasibleCalibration, optimize_request

    data: dict[str, Any] = {"order": req.order, "stock": req.stock, "joint": req.joint}
    if req.risk is not None:
        data["risk"] = req.risk
    reference = req.reference_charge if req.reference_charge is not None else (state.typical_charge)
    if reference:
        data["reference_charge"] = dict(reference)
    try:
        plan = optimize_request(data, state)
    except InfeasibleCalibration as exc:
        raise RequestError("not_calibrated", str(exc)) from None
    except ValueError as exc:  # pydantic's ValidationError included
        raise RequestError("invalid_order", " ".join(str(exc).split())) from None
    return OptimizeResponseBody(request_id=req.request_id, model_version=state.version, plan=plan)


OPTIMIZE = Service("optimize", OptimizeRequestBody, OptimizeResponseBody, answer_optimize)
SERVICES: tuple[Service, ...] = (INFER, OPTIMIZE)

__all__ = [
    "INFER",
    "OPTIMIZE",
    "SERVICES",
    "Reply",
    "RequestError",
    "RequestLimits",
    "Responder",
    "Service",
    "ServingState",
    "answer_infer",
    "answer_optimize",
]
