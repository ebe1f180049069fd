"""The agent's request handler without a network: request bytes and a serving state in,
the response's topic and bytes out (agent.requests)."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from alchimia.agent.requests import (
    INFER,
    OPTIMIZE,
    RequestError,
    RequestLimits,
    Responder,
    Service,
    ServingState,
)
from alchimia.broker.schemas import (
    InferRequestBody,
    InferResponseBody,
    OptimizeRequestBody,
    OptimizeResponseBody,
    PlannedHeat,
    decode,
    message,
)
from alchimia.broker.topics import Topics
from alchimia.models.calibration import Calibration
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.schema import FEATURES, TARGETS
from tests.data.plans import PLANNED_HEAT

T = Topics("steel")
REQUEST = T.agent_request("plant-1", "infer")


class Linear:
    """A stand-in serving model: a fixed linear map of the inputs (no ONNX needed)."""

    features, targets = FEATURES, TARGETS  # the columns, as OnnxPredictor has them

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.w = rng.uniform(0.0, 1.0, (len(FEATURES), len(TARGETS)))
        self.calls = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert x.dtype == np.float32 and not np.isnan(x).any()
        return (np.asarray(x, np.float64) @ self.w).astype(np.float32)


def planned(**over: float) -> dict[str, float]:
    """A plausible planned heat: a few grades charged, the process plan, power-on time."""
    inputs = {**PLANNED_HEAT}
    inputs.update(over)
    return inputs


def state(*, residuals: int = 200, power_on: bool = True) -> ServingState:
    rng = np.random.default_rng(1)
    cal = Calibration(TARGETS, 0.9, 200, version=7)
    cal.reset(np.zeros((residuals, len(TARGETS))), rng.standard_normal((residuals, len(TARGETS))))
    est = None
    if power_on:
        x = rng.uniform(1.0, 50.0, (60, len(FEATURES)))
        est = PowerOnEstimate.fit(x, FEATURES)
    return ServingState(7, FEATURES, TARGETS, Linear(), cal, est, 0.9)


def request(
    heats: list[dict], *, request_id: str = "r-1", level: float | None = None, sender: str = "hmi-1"
) -> bytes:
    body = InferRequestBody(
        request_id=request_id,
        level=level,
        heats=[PlannedHeat(heat_id=h.pop("heat_id", None), inputs=h) for h in heats],
    )
    return message(sender, body)


def ask(
    payload: bytes,
    st: ServingState | None = None,
    **limits: int,
) -> tuple[str, InferResponseBody]:
    responder = Responder("plant-1", T, [INFER], RequestLimits(**limits))
    reply = responder.handle(REQUEST, payload, st if st is not None else state())
    assert reply is not None
    env = decode(reply.payload, InferResponseBody)
    assert env.sender == "plant-1"
    body: InferResponseBody = env.body  # type: ignore[assignment]
    assert reply.error == (body.error.code if body.error else None)
    expected = "answered" if body.error is None else f"error_{body.error.code}"
    assert responder.counts == {expected: 1}
    return reply.topic, body


def test_one_heat_is_predicted_with_its_interval() -> None:
    st = state()
    topic, body = ask(request([planned()]), st)
    assert topic == T.agent_response("plant-1", "infer", "hmi-1")
    assert body.error is None and body.request_id == "r-1"
    assert body.model_version == 7 and body.level == 0.9 and body.calibration_heats == 200
    (p,) = body.predictions
    x = np.array([[planned().get(f, 0.0) for f in FEATURES]], np.float32)
    expected = st.predictor.predict(x)[0]
    lo, hi = st.calibration.interval(expected[None, :].astype(np.float64))
    for j, t in enumerate(TARGETS):
        assert p.outputs[t] == pytest.approx(float(expected[j]), rel=1e-6)
        assert p.lower[t] == pytest.approx(lo[0, j]) and p.upper[t] == pytest.approx(hi[0, j])
        assert p.lower[t] < p.outputs[t] < p.upper[t]
    assert p.power_on_min is None  # given, not estimated


def test_a_batch_keeps_order_and_ids_and_a_lower_level_is_narrower() -> None:
    heats = [{**planned(charge_E3_t=float(10 * i)), "heat_id": f"H{i}"} for i in range(5)]
    _, wide = ask(request([dict(h) for h in heats]))
    _, narrow = ask(request([dict(h) for h in heats], level=0.5))
    assert [p.heat_id for p in wide.predictions] == [f"H{i}" for i in range(5)]
    assert len({p.outputs["energy_kwh_t"] for p in wide.predictions}) == 5
    assert narrow.level == 0.5
    for w, n in zip(wide.predictions, narrow.predictions, strict=True):
        assert n.outputs == w.outputs
        assert n.upper["cu_pct"] - n.lower["cu_pct"] < w.upper["cu_pct"] - w.lower["cu_pct"]


def test_missing_power_on_time_is_the_sites_estimate() -> None:
    st = state()
    without = planned()
    del without["power_on_min"]
    _, body = ask(request([dict(without), planned()]), st)
    estimated, given = body.predictions
    expected = float(st.power_on.estimate(np.array([[without.get(f, 0.0) for f in FEATURES]]))[0])
    assert estimated.power_on_min == pytest.approx(expected)
    assert given.power_on_min is None
    _, explicit = ask(request([planned(power_on_min=expected)]), st)
    assert explicit.predictions[0].outputs == pytest.approx(estimated.outputs)
    # Charges not named are not charged (0 t); every other input must be there.
    _, body = ask(request([planned()]), st)
    assert body.error is None


def test_no_interval_while_too_few_heats_for_the_level() -> None:
    _, body = ask(request([planned()], level=0.99), state(residuals=100))
    assert body.error is None and body.calibration_heats == 100
    assert body.predictions[0].lower is None and body.predictions[0].upper is None


def _error(payload: bytes, st: ServingState | None = None, **limits: int) -> tuple[str, str]:
    _, body = ask(payload, st, **limits)
    assert body.error is not None and body.predictions == [] and body.model_version is None
    return body.error.code, body.error.message


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"slag_t": 3.0}, "unknown_feature", "slag_t"),
        ({"lime_t": None}, "missing_feature", "lime_t"),
        ({"charge_E3_t": -5.0}, "out_of_range", "charge_E3_t"),
        ({"carbon_kg": 1e9}, "out_of_range", "carbon_kg"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(change: dict, code: str, words: str) -> None:
    heat = planned()
    for k, v in change.items():
        if v is None:
            del heat[k]
        else:
            heat[k] = v
    got, text = _error(request([planned(), {**heat, "heat_id": "H2"}], request_id="bad"))
    assert got == code and words in text and "heat 1 (H2)" in text


def test_non_finite_input_is_refused() -> None:
    raw = msgpack.unpackb(request([planned()]))
    raw["body"]["heats"][0]["inputs"]["lime_t"] = math.nan
    code, text = _error(msgpack.packb(raw))
    assert code == "non_finite" and "lime_t" in text


def test_malformed_body_is_answered_to_its_sender_with_its_request_id() -> None:
    raw = msgpack.unpackb(request([planned()], request_id="r-77", sender="hmi-2"))
    raw["body"]["heats"] = "all of them"
    topic, body = ask(msgpack.packb(raw))
    assert topic == T.agent_response("plant-1", "infer", "hmi-2")
    assert body.request_id == "r-77" and body.error.code == "malformed"
    raw["body"] = {"request_id": "r-78", "heats": [{"inputs": {}}], "surprise": 1}
    _, body = ask(msgpack.packb(raw))
    assert body.request_id == "r-78" and body.error.code == "malformed"


def test_oversized_and_too_many_heats() -> None:
    big = request([planned() for _ in range(50)], request_id="big")
    code, text = _error(big, max_bytes=len(big) - 1)
    assert code == "oversized" and str(len(big)) in text
    _, body = ask(big, max_bytes=len(big) - 1)
    assert body.request_id == "big"  # read without decoding the whole request
    code, text = _error(big, max_heats=49)
    assert code == "too_many_heats" and "50" in text
    assert ask(big, max_heats=50)[1].error is None


def test_no_model_yet_and_no_power_on_estimate() -> None:
    responder = Responder("plant-1", T, [INFER])
    reply = responder.handle(REQUEST, request([planned()]), None)
    body = decode(reply.payload, InferResponseBody).body
    assert body.error.code == "no_model" and body.request_id == "r-1"
    heat = planned()
    del heat["power_on_min"]
    code, text = _error(request([heat]), state(power_on=False))
    assert code == "missing_feature" and "power_on_min" in text


def test_wrong_kind_on_the_request_topic() -> None:
    wrong = message("hmi-1", InferResponseBody(request_id="x"))
    code, _ = _error(wrong)
    assert code == "wrong_kind"


def test_unreadable_requests_are_counted_not_answered() -> None:
    responder = Responder("plant-1", T, [INFER])
    for payload in (
        b"",
        b"\xc1\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"kind": 1}),
        msgpack.packb({"sender": "bad id!", "kind": "infer_request"}),
    ):
        assert responder.handle(REQUEST, payload, state()) is None
    # Requests for another agent or on another topic are not this agent's to answer.
    assert (
        responder.handle(T.agent_request("plant-2", "infer"), request([planned()]), state()) is None
    )
    assert responder.handle(T.model_current, request([planned()]), state()) is None
    assert responder.counts == {"unanswerable": 7}


def test_a_failing_model_gives_an_internal_error_not_an_exception() -> None:
    class Broken:
        def predict(self, x: np.ndarray) -> np.ndarray:
            raise RuntimeError("onnx session lost")

    st = state()
    broken = ServingState(
        st.version, st.features, st.targets, Broken(), st.calibration, st.power_on, st.level
    )
    code, text = _error(request([planned()]), broken)
    assert code == "internal" and "RuntimeError" in text

    class Nan(Linear):
        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.full((len(x), len(TARGETS)), np.nan, np.float32)

    nan = ServingState(st.version, st.features, st.targets, Nan(), None, st.power_on, 0.9)
    assert _error(request([planned()]), nan)[0] == "internal"


def test_another_service_plugs_in_with_the_same_envelope() -> None:
    """The extension point: a service is a body pair and an answer function."""

    def answer(
        req: InferRequestBody,
        st: ServingState | None,
        _l: RequestLimits,
    ) -> InferResponseBody:
        if len(req.heats) > 1:
            raise RequestError("infeasible", "one heat at a time")
        return InferResponseBody(request_id=req.request_id, model_version=st.version)

    service = Service("optimize", InferRequestBody, InferResponseBody, answer)
    responder = Responder("plant-1", T, [INFER, service])
    assert responder.request_topics == [REQUEST, T.agent_request("plant-1", "optimize")]
    reply = responder.handle(
        T.agent_request("plant-1", "optimize"), request([planned(), planned()]), state()
    )
    assert reply.topic == T.agent_response("plant-1", "optimize", "hmi-1")
    body = decode(reply.payload, InferResponseBody).body
    assert body.error.code == "infeasible" and body.request_id == "r-1"


def test_request_and_response_topics() -> None:
    assert REQUEST == "alchimia/v1/steel/agents/plant-1/infer/request"
    assert T.parse_request_topic(REQUEST) == ("plant-1", "infer")
    response = T.agent_response("plant-1", "optimize", "hmi-1")
    assert response == "alchimia/v1/steel/agents/plant-1/optimize/response/hmi-1"
    assert T.parse_response_topic(response) == ("plant-1", "optimize", "hmi-1")
    assert T.client_responses("infer", "hmi-1") == "alchimia/v1/steel/agents/+/infer/response/hmi-1"
    for bad in (T.agent_predictions("plant-1"), REQUEST + "/x", f"{T.root}/agents/a/chat/request"):
        assert T.parse_request_topic(bad) is None
    assert T.parse_response_topic(REQUEST) is None
    with pytest.raises(ValueError):
        T.agent_response("plant-1", "infer", "hmi/1")
    with pytest.raises(ValueError):
        T.agent_request("plant-1", "chat")


# -- optimize ---------------------------------------------------------------------------


class Planning(Linear):
    """The stand-in as the optimiser calls it (rows in float64, like OnnxPredictor takes)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) @ self.w).astype(np.float32)


def _planning(residuals: int) -> ServingState:
    st = state(residuals=residuals)
    return ServingState(
        st.version, st.features, st.targets, Planning(), st.calibration, st.power_on, st.level
    )


def _optimize(body: dict, st: ServingState | None) -> OptimizeResponseBody:
    import tomllib
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    order = tomllib.loads((examples / "order.toml").read_text())
    stock = tomllib.loads((examples / "stock.toml").read_text())
    req = OptimizeRequestBody(request_id="o-1", **{"order": order, "stock": stock, **body})
    responder = Responder("plant-1", T, [OPTIMIZE])
    reply = responder.handle(T.agent_request("plant-1", "optimize"), message("hmi-1", req), st)
    assert reply is not None and reply.topic == T.agent_response("plant-1", "optimize", "hmi-1")
    return decode(reply.payload, OptimizeResponseBody).body  # type: ignore[return-value]


def test_optimize_answers_a_plan_or_says_why_not() -> None:
    st = _planning(200)
    answer = _optimize({"risk": 0.2}, st)
    assert answer.error is None and answer.request_id == "o-1" and answer.model_version == 7
    assert answer.plan is not None and answer.plan["status"] in ("optimal", "infeasible")
    assert set(answer.plan["charge"]) <= {
        f[len("charge_") : -2] for f in FEATURES if f.startswith("charge_")
    }
    assert _optimize({}, None).error.code == "no_model"  # type: ignore[union-attr]
    bad = _optimize({"order": {"tapped_t": -5}}, st)
    assert bad.error is not None and bad.error.code == "invalid_order" and bad.plan is None
    few = _optimize({"risk": 0.01}, _planning(30))  # 30 residuals: no 99 % bound
    assert few.error is not None and few.error.code == "not_calibrated"
