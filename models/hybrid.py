"""``eaf-hybrid-v1`` in torch: mass and energy balances with learned coefficients.

The structure and the shared/site partition are described in ``models.hybrid_layout``;
this module only computes it. Raw engineering units in and out, like ``mlp-v1``, so the
exported ONNX graph has the same contract and consumers need nothing new.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from alchimia.models import hybrid_layout as hl
from alchimia.models.schema import FEATURES, GRADES, TARGET_REFERENCE, TARGETS
from alchimia.models.spec import ModelSpec

_COL = {f: i for i, f in enumerate(FEATURES)}
_OUT = {t: i for i, t in enumerate(TARGETS)}


_content_prior = hl.content_prior  # the numpy formulas live in models.hybrid_layout


class EafHybrid(nn.Module):
    # Registered by name in __init__ (buffers, then the spec's parameters): declared here
    # for the type checker, which types nn.Module attributes as "Tensor | Module".
    x_center: torch.Tensor
    x_scale: torch.Tensor
    y_center: torch.Tensor
    y_scale: torch.Tensor
    grade_cols: torch.Tensor
    yield_prior: torch.Tensor
    log_content_prior: torch.Tensor
    log_heel_prior: torch.Tensor
    term_center: torch.Tensor
    term_scale: torch.Tensor
    yield_shared: torch.Tensor
    yield_site: torch.Tensor
    content_shared: torch.Tensor
    content_site: torch.Tensor
    bias_shared: torch.Tensor
    bias_site: torch.Tensor
    linear_shared: torch.Tensor
    linear_site: torch.Tensor
    heel_coef: torch.Tensor
    heel_pct_shared: torch.Tensor
    heel_pct_site: torch.Tensor
    recovery_o2: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        f = torch.float32
        self.register_buffer("x_center", torch.tensor(spec.x_center, dtype=f))
        self.register_buffer("x_scale", torch.tensor(spec.x_scale, dtype=f))
        self.register_buffer("y_center", torch.tensor(spec.y_center, dtype=f))
        self.register_buffer("y_scale", torch.tensor(spec.y_scale, dtype=f))
        self.register_buffer("grade_cols", torch.tensor([_COL[f"charge_{g}_t"] for g in GRADES]))
        self.register_buffer(
            "yield_prior", torch.tensor([hl.YIELD_PRIOR[g] for g in GRADES], dtype=f)
        )
        self.register_buffer("log_content_prior", torch.tensor(np.log(_content_prior()), dtype=f))
        self.register_buffer(
            "log_heel_prior",
            torch.tensor(np.log([TARGET_REFERENCE[t][0] for t in hl.ELEMENT_TARGETS]), dtype=f),
        )
        self.register_buffer("term_center", torch.tensor([t[1] for t in hl.TERMS], dtype=f))
        self.register_buffer("term_scale", torch.tensor([t[2] for t in hl.TERMS], dtype=f))
        self.n_residual = len(spec.hidden) + 1
        for name, (shape, _part) in spec.tensor_parts().items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
        # The residual network's hidden layers start random, its output layer at zero:
        # the model starts as pure physics and learns only what the balances miss.
        for i in range(self.n_residual - 1):
            w = getattr(self, f"residual_w{i}")
            nn.init.kaiming_uniform_(w, a=5**0.5)
            bound = 1 / w.shape[1] ** 0.5
            nn.init.uniform_(getattr(self, f"residual_b{i}"), -bound, bound)

    def _yields(self) -> torch.Tensor:
        """Metallic yield per grade: the prior, the federation's offset, this site's
        (``hybrid_layout.grade_yields`` in torch)."""
        return self.yield_prior + hl.YIELD_STEP * (self.yield_shared + self.yield_site)

    def _content(self) -> torch.Tensor:
        """Effective content per grade and element, % of the charged mass: wt% x recovery
        at the reference O2 (``hybrid_layout.grade_contents`` in torch)."""
        return torch.exp(self.log_content_prior + self.content_shared + self.content_site)

    def _col(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x[:, _COL[name]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        charges = x[:, self.grade_cols].clamp(min=0.0)  # [B, G] t
        heel = self._col(x, "hot_heel_t").clamp(min=0.0)
        yields = self._yields()
        metal = (charges * yields).sum(dim=1).clamp(min=1.0)  # M, t
        # Yields are identified by the weighed tapped mass alone: the per-tonne terms and
        # the chemistry's denominator use M without passing gradients back into the
        # yields, or the (far more numerous) chemistry errors would bend them.
        per_t = metal.detach()
        charged = charges.sum(dim=1).clamp(min=1.0)  # G_E, t

        terms = torch.cat(
            [
                charges / charged[:, None],
                torch.stack(
                    [
                        charged / per_t - 1.0,
                        1e3 * self._col(x, "lime_t") / per_t,
                        self._col(x, "carbon_kg") / per_t,
                        self._col(x, "oxygen_nm3") / per_t,
                        self._col(x, "gas_nm3") / per_t,
                        heel / per_t,
                        self._col(x, "power_on_min"),
                        self._col(x, "power_off_min"),
                        self._col(x, "tap_temp_aim_c") - 1600.0,
                        self._col(x, "power_on_min") / per_t,
                    ],
                    dim=1,
                ),
            ],
            dim=1,
        )
        terms = (terms - self.term_center) / self.term_scale  # [B, K]

        # Energy and temperature: linear balance + residual network (normalised units).
        h = (x - self.x_center) / self.x_scale
        for i in range(self.n_residual):
            h = h @ getattr(self, f"residual_w{i}").T + getattr(self, f"residual_b{i}")
            if i < self.n_residual - 1:
                h = torch.relu(h)
        bias = self.bias_shared + self.bias_site  # [C]: energy, tapped, temperature
        linear = terms @ (self.linear_shared + self.linear_site).T + h  # [B, 2]
        e, t = _OUT["energy_kwh_t"], _OUT["tap_temp_c"]
        energy = self.y_center[e] + self.y_scale[e] * (bias[0] + linear[:, 0])
        temp = self._col(x, "tap_temp_aim_c") + self.y_scale[t] * (bias[2] + linear[:, 1])

        # Mass balance: tapped steel and tap chemistry.
        tapped = (
            metal
            + self.heel_coef * (heel - hl.HEEL_REFERENCE_T)
            + self.y_scale[_OUT["tapped_t"]] * bias[1]
        )
        oxygen = terms[:, hl.TERM_NAMES.index("oxygen_nm3_t")]
        recovery = torch.exp(oxygen[:, None] * self.recovery_o2)  # [B, E]
        content = self._content()
        heel_pct = torch.exp(self.log_heel_prior + self.heel_pct_shared + self.heel_pct_site)
        elements = (recovery * (charges @ content) + heel[:, None] * heel_pct) / (per_t + heel)[
            :, None
        ]

        columns = {"energy_kwh_t": energy, "tapped_t": tapped, "tap_temp_c": temp}
        columns.update({name: elements[:, j] for j, name in enumerate(hl.ELEMENT_TARGETS)})
        return torch.stack([columns[name] for name in TARGETS], dim=1)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Output in normalised target units: what the training loss compares."""
        return self.normalize_targets(self.forward(x))

    def normalize_targets(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_center) / self.y_scale

    def grade_properties(self) -> dict[str, np.ndarray]:
        """The learned scrap characterisation of the site's serving model: metallic yield
        per grade and effective content (% of the charged mass: wt% x recovery at the
        reference O2) per grade and element, with this site's offsets applied. Computed
        by the numpy formulas of ``models.hybrid_layout`` (``models.characterise`` adds
        the uncertainty and the energy effect)."""
        weights = {name: p.detach().cpu().numpy() for name, p in self.named_parameters()}
        return {"yield": hl.grade_yields(weights), "content_pct": hl.grade_contents(weights)}
