"""Build a model's ONNX graph directly from its weights, without torch.

The coordinator publishes every version as ONNX and the agents serve ONNX; building the
graph with the ``onnx`` helper API from the weights means neither needs torch for it (the
coordinator does not need torch at all, and its memory and start-up time show it). The
graph computes exactly what the torch modules compute (``models.regressor`` for
``mlp-v1``, ``models.hybrid`` for ``eaf-hybrid-v1``, formulas in docs/PROTOCOL.md);
``tests/unit/test_onnx_build.py`` checks the two agree for random weights.

Contract (docs/PROTOCOL.md): input ``inputs`` float32 [batch, features] in raw units,
output ``outputs`` float32 [batch, targets] in raw units. Every trainable tensor is an
initializer under its own name (``layers.0.weight``, ``yield_shared``, ``yield_site``,
...), shared and site tensors apart, so a tool can read what a site learned from the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from alchimia.models import hybrid_layout as hl
from alchimia.models.onnx_runtime import INPUT_NAME, OUTPUT_NAME, OnnxPredictor
from alchimia.models.schema import GRADES
from alchimia.models.spec import ModelSpec

OPSET = 17
PRODUCER = "alchimia.models.onnx_build"


class _Graph:
    """Nodes and initializers, with fresh names for intermediate values."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(
        self,
        name: str,
        value: np.ndarray | float | Sequence[Any],
        dtype: type = np.float32,
    ) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, kind: str, *inputs: str, **attrs: Any) -> str:
        self._n += 1
        out = f"{kind.lower()}_{self._n}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def model(self, spec: ModelSpec, output: str) -> bytes:
        self.nodes.append(helper.make_node("Identity", [output], [OUTPUT_NAME]))
        graph = helper.make_graph(
            self.nodes,
            spec.architecture,
            [
                helper.make_tensor_value_info(
                    INPUT_NAME, TensorProto.FLOAT, ["batch", len(spec.features)]
                )
            ],
            [
                helper.make_tensor_value_info(
                    OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(spec.targets)]
                )
            ],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
        )
        model.ir_version = 8  # readable by every ONNX Runtime since 1.10
        onnx.checker.check_model(model, full_check=True)
        return model.SerializeToString()


def build_onnx(
    spec: ModelSpec, shared: Mapping[str, np.ndarray], site: Mapping[str, np.ndarray] | None = None
) -> bytes:
    """Serialized ONNX of ``spec`` with the shared weights and, given, a site's tensors
    (else zeros: the federation's model as such)."""
    weights = _checked(spec, shared, "shared")
    site_shapes = spec.parameter_shapes("site")
    weights.update(
        _checked(spec, site, "site")
        if site is not None
        else {k: np.zeros(s, np.float32) for k, s in site_shapes.items()}
    )
    g = _Graph()
    for name, value in weights.items():
        g.const(name, value)
    build = _hybrid if spec.architecture == "eaf-hybrid-v1" else _mlp
    return g.model(spec, build(g, spec))


def _checked(
    spec: ModelSpec,
    weights: Mapping[str, np.ndarray],
    part: str,
) -> dict[str, np.ndarray]:
    shapes = spec.parameter_shapes(part)  # type: ignore[arg-type]
    if list(weights) != list(shapes):
        raise ValueError(f"{part} weight names {list(weights)} do not match {list(shapes)}")
    out = {}
    for name, shape in shapes.items():
        arr = np.asarray(weights[name], np.float32)
        if arr.shape != shape:
            raise ValueError(f"{name}: shape {arr.shape} != {shape}")
        out[name] = arr
    return out


def _dense(g: _Graph, h: str, layers: list[tuple[str, str]]) -> str:
    """``h @ W.T + b`` for each (weight, bias) name, with ReLU between (not after the
    last)."""
    for i, (weight, bias) in enumerate(layers):
        h = g.op("Gemm", h, weight, bias, transB=1)
        if i < len(layers) - 1:
            h = g.op("Relu", h)
    return h


def _normalised_inputs(g: _Graph, spec: ModelSpec) -> str:
    centre = g.const("x_center", spec.x_center)
    scale = g.const("x_scale", spec.x_scale)
    return g.op("Div", g.op("Sub", INPUT_NAME, centre), scale)


def _mlp(g: _Graph, spec: ModelSpec) -> str:
    # layers.{2i}: the torch Sequential's Linear modules sit at even indices.
    layers = [
        (f"layers.{2 * i}.weight", f"layers.{2 * i}.bias") for i in range(len(spec.hidden) + 1)
    ]
    h = _dense(g, _normalised_inputs(g, spec), layers)
    y = g.op("Mul", h, g.const("y_scale", spec.y_scale))
    return g.op("Add", y, g.const("y_center", spec.y_center))


def _hybrid(g: _Graph, spec: ModelSpec) -> str:
    col = {f: i for i, f in enumerate(spec.features)}
    out = {t: i for i, t in enumerate(spec.targets)}

    def column(name: str) -> str:  # [B, 1]
        return g.op("Gather", INPUT_NAME, g.const(f"col_{name}", [col[name]], np.int64), axis=1)

    def per_t(value: str) -> str:
        return g.op("Div", value, metal)

    one = g.const("one", 1.0)
    zero = g.const("zero", 0.0)
    axis1 = g.const("axis1", [1], np.int64)
    charges = g.op(
        "Relu",
        g.op(
            "Gather",
            INPUT_NAME,
            g.const("grade_cols", [col[f"charge_{gr}_t"] for gr in GRADES], np.int64),
            axis=1,
        ),
    )
    heel = g.op("Max", column("hot_heel_t"), zero)
    # Yields and contents: prior + federation's offset + site's (hybrid_layout formulas).
    yields = g.op(
        "Add",
        g.const("yield_prior", hl.yield_prior()),
        g.op(
            "Mul", g.const("yield_step", hl.YIELD_STEP), g.op("Add", "yield_shared", "yield_site")
        ),
    )
    metal = g.op("Max", g.op("ReduceSum", g.op("Mul", charges, yields), axis1, keepdims=1), one)
    charged = g.op("Max", g.op("ReduceSum", charges, axis1, keepdims=1), one)
    on_min = column("power_on_min")
    aim = column("tap_temp_aim_c")
    terms = g.op(
        "Concat",
        g.op("Div", charges, charged),
        g.op("Sub", per_t(charged), one),
        per_t(g.op("Mul", column("lime_t"), g.const("kg_per_t", 1e3))),
        per_t(column("carbon_kg")),
        per_t(column("oxygen_nm3")),
        per_t(column("gas_nm3")),
        per_t(heel),
        on_min,
        column("power_off_min"),
        g.op("Sub", aim, g.const("c1600", 1600.0)),
        per_t(on_min),
        axis=1,
    )
    terms = g.op(
        "Div",
        g.op("Sub", terms, g.const("term_center", [t[1] for t in hl.TERMS])),
        g.const("term_scale", [t[2] for t in hl.TERMS]),
    )

    # Energy and temperature: linear balance + residual network (normalised units).
    residual = _dense(
        g,
        _normalised_inputs(g, spec),
        [(f"residual_w{i}", f"residual_b{i}") for i in range(len(spec.hidden) + 1)],
    )
    coef = g.op("Add", "linear_shared", "linear_site")
    linear = g.op(
        "Add", g.op("MatMul", terms, g.op("Transpose", coef, perm=[1, 0])), residual
    )  # [B, 2]: energy, temperature
    bias = g.op("Add", "bias_shared", "bias_site")  # [3]: energy, tapped, temperature
    e, t = out["energy_kwh_t"], out["tap_temp_c"]
    scaled = g.op(
        "Mul",
        g.op("Add", linear, g.op("Gather", bias, g.const("bias_energy_temp", [0, 2], np.int64))),
        g.const("scale_energy_temp", [spec.y_scale[e], spec.y_scale[t]]),
    )
    energy = g.op(
        "Add",
        g.op("Gather", scaled, g.const("first", [0], np.int64), axis=1),
        g.const("energy_center", spec.y_center[e]),
    )
    temp = g.op("Add", g.op("Gather", scaled, g.const("second", [1], np.int64), axis=1), aim)

    # Mass balance: tapped steel and tap chemistry.
    tapped = g.op(
        "Add",
        g.op(
            "Add",
            metal,
            g.op(
                "Mul",
                "heel_coef",
                g.op("Sub", heel, g.const("heel_reference", hl.HEEL_REFERENCE_T)),
            ),
        ),
        g.op(
            "Mul",
            g.op("Gather", bias, g.const("bias_tapped", [1], np.int64)),
            g.const("scale_tapped", spec.y_scale[out["tapped_t"]]),
        ),
    )
    oxygen = g.op(
        "Gather",
        terms,
        g.const("term_oxygen", [hl.TERM_NAMES.index("oxygen_nm3_t")], np.int64),
        axis=1,
    )
    recovery = g.op("Exp", g.op("Mul", oxygen, "recovery_o2"))  # [B, E]
    content = g.op(
        "Mul",
        g.const("content_prior", hl.content_prior()),
        g.op("Exp", g.op("Add", "content_shared", "content_site")),
    )
    heel_pct = g.op(
        "Exp",
        g.op(
            "Add",
            g.const("log_heel_prior", np.log([spec.y_center[out[t]] for t in hl.ELEMENT_TARGETS])),
            g.op("Add", "heel_pct_shared", "heel_pct_site"),
        ),
    )
    elements = g.op(
        "Div",
        g.op(
            "Add",
            g.op("Mul", recovery, g.op("MatMul", charges, content)),
            g.op("Mul", heel, heel_pct),
        ),
        g.op("Add", metal, heel),
    )
    columns = {"energy_kwh_t": energy, "tapped_t": tapped, "tap_temp_c": temp}
    for j, name in enumerate(hl.ELEMENT_TARGETS):
        columns[name] = g.op("Gather", elements, g.const(f"element_{j}", [j], np.int64), axis=1)
    return g.op("Concat", *(columns[name] for name in spec.targets), axis=1)


def check_runs(onnx_bytes: bytes, spec: ModelSpec, x: np.ndarray) -> None:
    """Raise unless ONNX Runtime loads the graph and gives finite outputs of the spec's
    shape on ``x``: a model that fails is never published."""
    out = OnnxPredictor(onnx_bytes, spec.features, spec.targets).predict(x)
    if out.shape != (len(x), len(spec.targets)) or not np.isfinite(out).all():
        raise RuntimeError(
            f"the built ONNX model gives {out.shape} outputs, finite: "
            f"{bool(np.isfinite(out).all())}"
        )
