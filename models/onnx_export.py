"""ONNX export of a torch model, and the check that ONNX Runtime agrees with torch."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import torch

from models.onnx_runtime import INPUT_NAME, OUTPUT_NAME, OnnxPredictor
from models.regressor import HeatModel

OPSET = 17
# torch.onnx.export keeps global state: two threads exporting at once (agents and the
# coordinator of a local federation share a process) fail with "in_onnx_export".
_EXPORT_LOCK = threading.Lock()


def export_onnx(model: HeatModel) -> bytes:
    """Serialized ONNX with a dynamic batch axis: float32 [batch, features] -> [batch, targets].

    Uses the TorchScript exporter: it needs no extra packages and handles an MLP exactly;
    the torch.export-based one would add onnxscript to every coordinator install.
    """
    model = model.eval()
    dummy = torch.zeros(1, len(model.spec.features), dtype=torch.float32)
    buf = io.BytesIO()
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
            # No folding: every trainable tensor stays an initializer under its own name
            # (yield_shared, yield_site, ...), so the file says what a site learned and a
            # tool can read a site's scrap characterisation from it.
            do_constant_folding=False,
        )
    return buf.getvalue()


def max_parity_error(model: HeatModel, onnx_bytes: bytes, x: np.ndarray) -> float:
    """Largest relative difference between torch and ONNX Runtime on ``x``."""
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(np.asarray(x, np.float32))).numpy()
    got = OnnxPredictor(onnx_bytes).predict(x)
    scale = np.maximum(np.abs(expected), np.asarray(model.spec.y_scale, np.float32))
    return float(np.max(np.abs(got - expected) / scale))


def check_parity(model: HeatModel, onnx_bytes: bytes, x: np.ndarray,
                 tolerance: float = 1e-3) -> float:
    """Raise if ONNX Runtime disagrees with torch: a model that fails is never published."""
    err = max_parity_error(model, onnx_bytes, x)
    if not err <= tolerance:
        raise RuntimeError(f"ONNX Runtime and torch disagree: relative error {err:.2e}")
    return err
