"""ONNX Runtime inference: all an inference consumer needs (no torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"


class OnnxPredictor:
    """One ONNX Runtime session over a model's bytes, with named columns."""

    def __init__(
        self, onnx_bytes: bytes, features: Sequence[str] = (), targets: Sequence[str] = ()
    ) -> None:
        opts = ort.SessionOptions()
        # A gateway shares its cores with data collection; one thread is plenty for an MLP.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.onnx_bytes = onnx_bytes
        self.features = tuple(features)
        self.targets = tuple(targets)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw engineering units in, raw engineering units out; x is [batch, features]."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def predict_one(self, inputs: Mapping[str, float]) -> dict[str, float]:
        """Prediction for one heat given by column name; missing columns raise KeyError."""
        row = np.array([[inputs[f] for f in self.features]], dtype=np.float32)
        return dict(zip(self.targets, map(float, self.predict(row)[0]), strict=True))
