"""The ONNX graph built from weights (no torch) computes what the torch modules compute."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from alchimia.coordinator.publishing import reference_inputs
from alchimia.models.onnx_build import build_onnx, check_runs
from alchimia.models.onnx_runtime import OnnxPredictor
from alchimia.models.params import compose
from alchimia.models.spec import ARCHITECTURES, ModelSpec


def _random(
    spec: ModelSpec,
    part: str,
    rng: np.random.Generator,
    scale: float,
) -> dict[str, np.ndarray]:
    return {
        k: (scale * rng.standard_normal(s)).astype(np.float32)
        for k, s in spec.parameter_shapes(part).items()
    }  # type: ignore[arg-type]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_built_graph_matches_torch(architecture: str) -> None:
    spec = ModelSpec(architecture=architecture)
    rng = np.random.default_rng(3)
    shared, site = _random(spec, "shared", rng, 0.2), _random(spec, "site", rng, 0.1)
    x = reference_inputs(spec, 256, seed=1)
    x[:5] = 0.0  # an empty furnace: the clamps (metal >= 1 t) must agree too
    for part in (None, site):
        with torch.no_grad():
            expected = compose(spec, shared, part)(torch.from_numpy(x)).numpy()
        onnx_bytes = build_onnx(spec, shared, part)
        got = OnnxPredictor(onnx_bytes, spec.features, spec.targets).predict(x)
        scale = np.maximum(np.abs(expected), np.asarray(spec.y_scale, np.float32))
        assert np.max(np.abs(got - expected) / scale) < 1e-5
        check_runs(onnx_bytes, spec, x)


def test_every_tensor_is_a_named_initializer_and_shapes_are_checked() -> None:
    spec = ModelSpec(architecture="eaf-hybrid-v1")
    rng = np.random.default_rng(0)
    shared = _random(spec, "shared", rng, 0.1)
    names = {i.name for i in onnx.load_from_string(build_onnx(spec, shared)).graph.initializer}
    assert set(spec.parameter_shapes("shared")) | set(spec.parameter_shapes("site")) <= names
    bad = dict(shared, yield_shared=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="yield_shared"):
        build_onnx(spec, bad)
    with pytest.raises(ValueError, match="names"):
        build_onnx(spec, {k: v for k, v in shared.items() if k != "heel_coef"})
