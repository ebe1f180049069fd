"""The model's architecture as data: travels in every model message so that an agent can
rebuild the exact network the weights belong to, and an ONNX consumer knows its columns."""

from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.schema import FEATURE_REFERENCE, FEATURES, TARGET_REFERENCE, TARGETS


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str = "mlp-v1"
    features: tuple[str, ...] = FEATURES
    targets: tuple[str, ...] = TARGETS
    hidden: tuple[int, ...] = Field(default=(64, 32), max_length=8)
    x_center: tuple[float, ...] = tuple(FEATURE_REFERENCE[f][0] for f in FEATURES)
    x_scale: tuple[float, ...] = tuple(FEATURE_REFERENCE[f][1] for f in FEATURES)
    y_center: tuple[float, ...] = tuple(TARGET_REFERENCE[t][0] for t in TARGETS)
    y_scale: tuple[float, ...] = tuple(TARGET_REFERENCE[t][1] for t in TARGETS)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.architecture != "mlp-v1":
            raise ValueError(f"unknown architecture {self.architecture!r}")
        if not (len(self.x_center) == len(self.x_scale) == len(self.features)):
            raise ValueError("x_center/x_scale must have one value per feature")
        if not (len(self.y_center) == len(self.y_scale) == len(self.targets)):
            raise ValueError("y_center/y_scale must have one value per target")
        if any(s <= 0 for s in self.x_scale + self.y_scale):
            raise ValueError("scales must be positive")
        if any(h < 1 or h > 4096 for h in self.hidden):
            raise ValueError("hidden layer sizes must be in 1..4096")
        return self

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the trainable tensors, in the stable wire order.

        Lets the coordinator and decoders check a delta's shape without torch.
        """
        sizes = (len(self.features), *self.hidden, len(self.targets))
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            shapes[f"layers.{2 * i}.weight"] = (fan_out, fan_in)
            shapes[f"layers.{2 * i}.bias"] = (fan_out,)
        return shapes
