"""The model's architecture as data: travels in every model message so that an agent can
rebuild the exact network the weights belong to, and an ONNX consumer knows its columns."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alchimia.models.schema import FEATURE_REFERENCE, FEATURES, TARGET_REFERENCE, TARGETS

Architecture = Literal["mlp-v1", "eaf-hybrid-v1"]
ARCHITECTURES: tuple[str, ...] = ("mlp-v1", "eaf-hybrid-v1")
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"mlp-v1": (64, 32), "eaf-hybrid-v1": (16,)}
Part = Literal["shared", "site"]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Architecture = "mlp-v1"
    features: tuple[str, ...] = FEATURES
    targets: tuple[str, ...] = TARGETS
    # mlp-v1: the hidden layers; eaf-hybrid-v1: the residual network's hidden layers.
    # Left out, each architecture's default (DEFAULT_HIDDEN).
    hidden: tuple[int, ...] = Field(default=(64, 32), max_length=8)
    x_center: tuple[float, ...] = tuple(FEATURE_REFERENCE[f][0] for f in FEATURES)
    x_scale: tuple[float, ...] = tuple(FEATURE_REFERENCE[f][1] for f in FEATURES)
    y_center: tuple[float, ...] = tuple(TARGET_REFERENCE[t][0] for t in TARGETS)
    y_scale: tuple[float, ...] = tuple(TARGET_REFERENCE[t][1] for t in TARGETS)

    @model_validator(mode="before")
    @classmethod
    def _default_hidden(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("hidden") is None:
            arch = data.get("architecture", "mlp-v1")
            data = {**data, "hidden": DEFAULT_HIDDEN.get(arch, DEFAULT_HIDDEN["mlp-v1"])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if not (len(self.x_center) == len(self.x_scale) == len(self.features)):
            raise ValueError("x_center/x_scale must have one value per feature")
        if not (len(self.y_center) == len(self.y_scale) == len(self.targets)):
            raise ValueError("y_center/y_scale must have one value per target")
        if any(s <= 0 for s in self.x_scale + self.y_scale):
            raise ValueError("scales must be positive")
        if any(h < 1 or h > 4096 for h in self.hidden):
            raise ValueError("hidden layer sizes must be in 1..4096")
        if self.architecture == "eaf-hybrid-v1" and (self.features, self.targets) != (
            FEATURES,
            TARGETS,
        ):
            raise ValueError(
                "eaf-hybrid-v1 is built on the standard columns of "
                "models.schema (FEATURES, TARGETS) in their order"
            )
        return self

    def tensor_parts(self) -> dict[str, tuple[tuple[int, ...], Part]]:
        """Every trainable tensor: name -> (shape, part), shared ones first, in wire order.

        ``shared`` tensors are aggregated by the coordinator and travel in model messages
        and updates; ``site`` tensors are trained and kept at one site and never sent.
        """
        if self.architecture == "eaf-hybrid-v1":
            from alchimia.models import hybrid_layout  # numpy: not for the settings' import

            table = hybrid_layout.tensor_shapes(len(self.features), self.hidden)
            return {k: (s, p) for k, (s, p) in table.items()}  # type: ignore[misc]
        sizes = (len(self.features), *self.hidden, len(self.targets))
        shapes: dict[str, tuple[tuple[int, ...], Part]] = {}
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            shapes[f"layers.{2 * i}.weight"] = ((fan_out, fan_in), "shared")
            shapes[f"layers.{2 * i}.bias"] = ((fan_out,), "shared")
        return shapes

    def site_prior_scale(self) -> dict[str, float]:
        """Strength of the site prior per site tensor, relative to the trainer's
        ``site_l2`` (1 where absent)."""
        if self.architecture != "eaf-hybrid-v1":
            return {}
        from alchimia.models import hybrid_layout  # numpy: not for the settings' import

        return dict(hybrid_layout.SITE_PRIOR_SCALE)

    def parameter_shapes(self, part: Part = "shared") -> dict[str, tuple[int, ...]]:
        """Names and shapes of one part's tensors, in the stable wire order.

        The shared part is what model messages and updates carry: it lets the coordinator
        and decoders check a delta's shape without torch.
        """
        return {k: s for k, (s, p) in self.tensor_parts().items() if p == part}
