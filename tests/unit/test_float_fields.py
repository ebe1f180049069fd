"""Every ``float`` field of the protocol accepts a msgpack int (docs/PROTOCOL.md, "Bodies"):
JavaScript encoders write integral numbers as ints."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from alchimia.broker.codec import pack
from alchimia.broker.schemas import (
    BODIES,
    Envelope,
    ErrorInfo,
    HeatPrediction,
    PlannedHeat,
    TaskBody,
    decode,
)

MODELS: list[type[BaseModel]] = [Envelope, *BODIES.values(), PlannedHeat, HeatPrediction, ErrorInfo]
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _has_float(tp: Any) -> bool:
    return tp is float or any(_has_float(a) for a in typing.get_args(tp))


def _with_leaf(tp: Any, leaf: int) -> Any:
    """A value of type ``tp`` whose every float is ``leaf``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is float:
        return leaf
    if origin is Annotated:
        return _with_leaf(args[0], leaf)
    if origin in (Union, types.UnionType):
        return _with_leaf(next(a for a in args if a is not type(None)), leaf)
    if origin is dict:
        return {"x": _with_leaf(args[1], leaf)}
    if origin is list:
        return [_with_leaf(args[0], leaf)]
    raise AssertionError(f"no sample for {tp!r}")


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for x in value.values() for v in _leaves(x)]
    if isinstance(value, list):
        return [v for x in value for v in _leaves(x)]
    return [value]


FLOAT_FIELDS = [
    (m, name) for m in MODELS for name, f in m.model_fields.items() if _has_float(f.annotation)
]


def test_the_float_fields_are_found() -> None:
    found = {f"{m.__name__}.{name}" for m, name in FLOAT_FIELDS}
    assert {
        "Envelope.ts",
        "TaskBody.lr",
        "TaskBody.hyper",
        "UpdateBody.metrics",
        "MetricsBody.values",
        "PlannedHeat.inputs",
        "OptimizeRequestBody.risk",
    } <= found


@pytest.mark.parametrize(
    ("model", "name"), FLOAT_FIELDS, ids=[f"{m.__name__}.{n}" for m, n in FLOAT_FIELDS]
)
def test_each_float_field_takes_an_int(model: type[BaseModel], name: str) -> None:
    field = model.model_fields[name]
    adapter = TypeAdapter(field.rebuild_annotation())  # with its constraints
    refusals = []
    for leaf in (1, 0, 2, 1000):
        try:
            value = adapter.validate_python(_with_leaf(field.annotation, leaf))
        except ValidationError as exc:
            refusals += [e["type"] for e in exc.errors()]
            continue
        assert all(type(v) is float and v == leaf for v in _leaves(value))
        return
    # Only a range with no integer in it (a level in (0, 1)) refuses every int.
    assert refusals and set(refusals) <= RANGE_ERRORS, refusals


def test_an_int_valued_task_decodes_with_floats() -> None:
    wire = {
        "v": 1,
        "kind": "task",
        "sender": "coordinator",
        "ts": 1767225600,
        "msg_id": "ab" * 16,
        "body": {
            "round_id": 3,
            "state": "open",
            "base_version": 2,
            "deadline_ts": 1767225720,
            "selected": ["plant-1"],
            "lr": 1,
            "hyper": {"proximal_mu": 0},
        },
    }
    env = decode(pack(wire), TaskBody)
    assert isinstance(env.body, TaskBody)
    values = [env.ts, env.body.deadline_ts, env.body.lr, env.body.hyper["proximal_mu"]]
    assert [type(v) for v in values] == [float] * 4
    assert values == [1767225600.0, 1767225720.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("model", "name"), FLOAT_FIELDS, ids=[f"{m.__name__}.{n}" for m, n in FLOAT_FIELDS]
)
@pytest.mark.parametrize("leaf", [True, "0.5", "1"])
def test_no_float_field_takes_a_bool_or_a_string(
    model: type[BaseModel], name: str, leaf: Any
) -> None:
    field = model.model_fields[name]
    adapter = TypeAdapter(field.rebuild_annotation())
    with pytest.raises(ValidationError):
        adapter.validate_python(_with_leaf(field.annotation, leaf))
