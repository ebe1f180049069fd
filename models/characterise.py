"""Scrap characterisation: what ``eaf-hybrid-v1`` has learned about each scrap grade, with
uncertainty, read from the ONNX file a site serves (numpy + onnx + onnxruntime, no torch).

Per grade (``models.schema.GRADES``):

* ``yield``: metallic yield, t of metal per t charged (``hybrid_layout.grade_yields``);
* ``cu_pct`` .. ``mo_pct``: *effective* content, % of the charged mass: the element per
  tonne charged (wt% in the grade's metal x its yield) times its recovery into the steel
  at the reference oxygen (35 Nm3 per t of metal), ``hybrid_layout.grade_contents``. The
  model learns the product: tap chemistry cannot tell a grade with more copper from a
  furnace that keeps more of it (its ``recovery_o2`` is only the change with oxygen, 1 at
  the reference). For Cu, Sn,
  Ni and Mo, nobler than iron, recovery is ~0.97-0.99 and the effective content is within
  a few % of the wt%; Cr partly oxidises to the slag (recovery ~0.6, falling with oxygen),
  so its effective content is well below the grade's Cr wt%. ``recovery_factor`` says
  how the site's own oxygen practice moves each element's recovery from the reference;
* ``energy_kwh_per_t``: kWh of electrical energy per heat when one tonne of the average
  charge of the heats given is replaced by one tonne of the grade, the process plan held
  and the power-on time re-planned by the site's ``PowerOnEstimate`` (power-on time is a
  model input but, for a heat being planned, an outcome the energy leans on: holding it
  fixed would credit a grade that melts slowly with the time it does not get).

Uncertainty (docs/CHARACTERISATION.md): a Laplace (Gauss-Newton) approximation on the
heats given. Each prediction block is linearised in its parameters: tapped mass in the
yields (with the heel coefficient and the tapped-mass bias as nuisance parameters), each
element's tap content in the log contents (with that element's oxygen slope and log heel
composition), energy in its bias, linear coefficients and the residual network's output
weights. With ``J`` the Jacobian on the heats, ``s2`` the block's residual variance
(inflated for residual autocorrelation, heats being in time order) and ``P`` a documented
prior precision centred on the served values, ``cov = (J^T J / s2 + P)^-1`` at the
posterior mode ``fit`` (what the heats support). The interval is ``fit +- z sd``, widened
to hold the served value when the two disagree (``Estimate.flagged``). A grade never
charged has a zero Jacobian column and keeps its prior width; without heats there is no
uncertainty (NaN bounds).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final

import numpy as np

from alchimia.models import hybrid_layout as hl
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.schema import FEATURE_REFERENCE, FEATURES, GRADES, TARGET_REFERENCE, TARGETS
from alchimia.models.spec import ModelSpec

ARCHITECTURE: Final = hl.ARCHITECTURE
ELEMENTS = hl.ELEMENT_TARGETS  # cu_pct .. mo_pct
PROPERTIES = ("yield", *ELEMENTS, "energy_kwh_per_t")
PROPERTY_LABELS = {
    "yield": "yield t/t",
    "cu_pct": "Cu %",
    "sn_pct": "Sn %",
    "ni_pct": "Ni %",
    "cr_pct": "Cr %",
    "mo_pct": "Mo %",
    "energy_kwh_per_t": "kWh per t",
}
DEFAULT_LEVEL = 0.9

# Prior standard deviations of the Laplace approximation (docs/CHARACTERISATION.md). They
# say how little is known of a grade before any of its heats: what an uncharged grade
# comes out with.
YIELD_PRIOR_SD = 0.05  # EAF.md: metallic yield 85-95 % by grade
LOG_CONTENT_PRIOR_SD = 1.0  # residuals differ from the spec-based prior up to ~x5
ENERGY_COEF_PRIOR_SD = 0.5  # normalised energy coefficient: +-25 kWh/t per 0.15 of share
# Nuisance parameters of each block: weakly informative.
HEEL_COEF_PRIOR_SD = 1.0  # t tapped per t of heel
TAPPED_BIAS_PRIOR_SD_T = 10.0  # t
RECOVERY_O2_PRIOR_SD = 1.0  # d log(recovery) per normalised O2
LOG_HEEL_PRIOR_SD = 1.0
ENERGY_BIAS_PRIOR_SD = 1.0  # normalised (x 50 kWh/t)
SUBSTITUTION_T = 1.0  # tonnes swapped for the energy effect
GN_ITERATIONS = 8  # Gauss-Newton iterations of the (mildly nonlinear) element blocks

_COL = {f: i for i, f in enumerate(FEATURES)}
_OUT = {t: i for i, t in enumerate(TARGETS)}
_GRADE_COLS = [_COL[f"charge_{g}_t"] for g in GRADES]
_TERM_CENTER = np.array([t[1] for t in hl.TERMS])
_TERM_SCALE = np.array([t[2] for t in hl.TERMS])
_O2_TERM = hl.TERM_NAMES.index("oxygen_nm3_t")
_LOG_HEEL_PRIOR = np.log([TARGET_REFERENCE[t][0] for t in ELEMENTS])


def architecture_error(architecture: str) -> ValueError:
    return ValueError(
        f"characterisation needs the physics-structured model {ARCHITECTURE} "
        f"(its grade yields and contents are parameters); this model is "
        f"{architecture}, a network whose weights describe no grade"
    )


# -- reading a model --------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    onnx_bytes: bytes
    spec: ModelSpec
    version: int | None
    power_on: PowerOnEstimate | None
    source: str


def load_model(path: Path) -> LoadedModel:
    """A site's serving directory (``models.served``), an ``.onnx`` file with its
    ``model.json`` beside it, or a bare ``.onnx`` file (the spec read from the graph)."""
    path = Path(path)
    from alchimia.models.served import INFO_FILE, load_served

    directory = path.parent if path.suffix == ".onnx" else path
    if (directory / INFO_FILE).is_file():
        served = load_served(path)
        return LoadedModel(
            served.predictor.onnx_bytes, served.spec, served.version, served.power_on, str(path)
        )
    if path.suffix == ".onnx" and path.is_file():
        data = path.read_bytes()
        return LoadedModel(data, spec_from_onnx(data), None, None, str(path))
    raise FileNotFoundError(
        f"{path}: expected a site's serving directory (model.onnx and model.json) or an .onnx file"
    )


def _initializers(onnx_bytes: bytes) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def spec_from_onnx(onnx_bytes: bytes) -> ModelSpec:
    """The spec of a bare ONNX file (no model.json):
    the architecture and hidden widths from its initializers' names and shapes."""
    inits = _initializers(onnx_bytes)
    if "layers.0.weight" in inits:
        raise architecture_error("mlp-v1")
    if "linear_shared" not in inits and "yield_shared" not in inits:
        raise ValueError(
            "this ONNX file is not a model of this project (no eaf-hybrid-v1 "
            "or mlp-v1 tensors): pass the site's serving directory"
        )
    hidden, i = [], 0
    while f"residual_w{i + 1}" in inits:
        hidden.append(int(inits[f"residual_w{i}"].shape[0]))
        i += 1
    kw: dict[str, Any] = {}
    for name in ("x_center", "x_scale", "y_center", "y_scale"):
        if name in inits:
            kw[name] = tuple(float(v) for v in inits[name])
    return ModelSpec(architecture=ARCHITECTURE, hidden=tuple(hidden), **kw)


def _probe_rows(n: int = 48, seed: int = 0) -> np.ndarray:
    """Plausible raw inputs with every grade charged: they tell any two weight sets apart."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, len(FEATURES)))
    for j, f in enumerate(FEATURES):
        center, scale = FEATURE_REFERENCE[f]
        x[:, j] = np.abs(center + scale * rng.uniform(-1.0, 1.0, n))
    return x


def read_weights(
    onnx_bytes: bytes,
    spec: ModelSpec,
    tolerance: float = 1e-3,
) -> dict[str, np.ndarray]:
    """Every trainable tensor of an ``eaf-hybrid-v1`` ONNX file (shared and site), float64.

    ``models.onnx_build`` writes each tensor as an initializer under its own name. The
    numpy forward (:func:`forward`) with them must reproduce ONNX Runtime on probe rows,
    so the numpy formulas here can never drift from the graph.
    """
    if spec.architecture != ARCHITECTURE:
        raise architecture_error(spec.architecture)
    from alchimia.models.onnx_runtime import OnnxPredictor

    inits = _initializers(onnx_bytes)
    weights: dict[str, np.ndarray] = {}
    for name, (shape, _part) in spec.tensor_parts().items():
        if name not in inits:
            raise ValueError(
                f"{name} is missing from the ONNX file: not a model built by "
                "this project's models.onnx_build (a serving file from before "
                "it is rewritten at the agent's next model swap)"
            )
        if tuple(inits[name].shape) != shape:
            raise ValueError(
                f"{name}: shape {inits[name].shape} in the ONNX file, {shape} in the spec"
            )
        weights[name] = inits[name].astype(np.float64)
    x = _probe_rows()
    expected = OnnxPredictor(onnx_bytes).predict(x).astype(np.float64)
    scale = np.maximum(np.abs(expected), np.asarray(spec.y_scale))
    err = float(np.max(np.abs(forward(weights, spec, x) - expected) / scale))
    if not err <= tolerance:
        raise ValueError(
            f"the ONNX graph does not compute {ARCHITECTURE} as documented "
            f"(docs/PROTOCOL.md): numpy and ONNX Runtime differ by {err:.1e}"
        )
    return weights


# -- the model in numpy -----------------------------------------------------------------


def _w(weights: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    value = weights.get(name)
    return np.zeros(shape) if value is None else np.asarray(value, np.float64)


@dataclass(frozen=True)
class _Balance:
    charges: np.ndarray  # [n, G] t
    heel: np.ndarray  # [n] t
    metal: np.ndarray  # [n] M, t
    tn: np.ndarray  # [n, K] normalised energy-balance terms


def _balance(weights: Mapping[str, np.ndarray], x: np.ndarray) -> _Balance:
    x = np.atleast_2d(np.asarray(x, np.float64))
    charges = np.clip(x[:, _GRADE_COLS], 0.0, None)
    heel = np.clip(x[:, _COL["hot_heel_t"]], 0.0, None)
    metal = np.maximum(charges @ hl.grade_yields(weights), 1.0)
    charged = np.maximum(charges.sum(axis=1), 1.0)

    def col(name: str) -> np.ndarray:
        return x[:, _COL[name]]

    terms = np.column_stack(
        [
            charges / charged[:, None],
            charged / metal - 1.0,
            1e3 * col("lime_t") / metal,
            col("carbon_kg") / metal,
            col("oxygen_nm3") / metal,
            col("gas_nm3") / metal,
            heel / metal,
            col("power_on_min"),
            col("power_off_min"),
            col("tap_temp_aim_c") - 1600.0,
            col("power_on_min") / metal,
        ]
    )
    return _Balance(charges, heel, metal, (terms - _TERM_CENTER) / _TERM_SCALE)


def _heel_pct(weights: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.exp(
        _LOG_HEEL_PRIOR
        + _w(weights, "heel_pct_shared", (hl.E,))
        + _w(weights, "heel_pct_site", (hl.E,))
    )


def _last_hidden(
    weights: Mapping[str, np.ndarray],
    spec: ModelSpec,
    x: np.ndarray,
) -> np.ndarray:
    """The residual network's last hidden layer (its output layer's input) on ``x``."""
    h = (x - np.asarray(spec.x_center)) / np.asarray(spec.x_scale)
    for i in range(len(spec.hidden)):
        h = np.maximum(
            h @ np.asarray(weights[f"residual_w{i}"], np.float64).T + weights[f"residual_b{i}"], 0.0
        )
    return h


def forward(weights: Mapping[str, np.ndarray], spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """``eaf-hybrid-v1`` in numpy (docs/PROTOCOL.md): raw inputs [n, features] -> raw
    outputs [n, targets]. Site tensors left out count as zero (the federation's model)."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    b = _balance(weights, x)
    last = len(spec.hidden)
    h = (
        _last_hidden(weights, spec, x) @ np.asarray(weights[f"residual_w{last}"]).T
        + weights[f"residual_b{last}"]
    )
    bias = _w(weights, "bias_shared", (hl.C,)) + _w(weights, "bias_site", (hl.C,))
    linear = _w(weights, "linear_shared", (hl.L, hl.K)) + _w(weights, "linear_site", (hl.L, hl.K))
    lin = b.tn @ linear.T + h
    yc, ys = np.asarray(spec.y_center), np.asarray(spec.y_scale)
    e, t = _OUT["energy_kwh_t"], _OUT["tap_temp_c"]
    out = np.empty((len(x), len(TARGETS)))
    out[:, e] = yc[e] + ys[e] * (bias[0] + lin[:, 0])
    out[:, t] = x[:, _COL["tap_temp_aim_c"]] + ys[t] * (bias[2] + lin[:, 1])
    out[:, _OUT["tapped_t"]] = (
        b.metal
        + _w(weights, "heel_coef", (1,))[0] * (b.heel - hl.HEEL_REFERENCE_T)
        + ys[_OUT["tapped_t"]] * bias[1]
    )
    recovery = np.exp(b.tn[:, _O2_TERM, None] * _w(weights, "recovery_o2", (hl.E,)))
    elements = (
        recovery * (b.charges @ hl.grade_contents(weights)) + b.heel[:, None] * _heel_pct(weights)
    ) / (b.metal + b.heel)[:, None]
    for j, name in enumerate(ELEMENTS):
        out[:, _OUT[name]] = elements[:, j]
    return out


def scope_weights(
    weights: Mapping[str, np.ndarray],
    spec: ModelSpec,
    scope: str,
) -> dict[str, np.ndarray]:
    """``site``: the weights as served; ``global``: the site tensors set to zero (the
    federation's model, what a site that has learned nothing of its own would serve)."""
    if scope not in ("site", "global"):
        raise ValueError(f"scope must be 'site' or 'global', got {scope!r}")
    out = dict(weights)
    if scope == "global":
        for name, shape in spec.parameter_shapes("site").items():
            out[name] = np.zeros(shape)
    return out


# -- heats ------------------------------------------------------------------------------


def read_heat_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A heat table CSV: one row per heat in time order, one column per model feature and
    target (``models.schema``; ``charge_<grade>_t`` may be absent or empty = 0 t). Other
    columns (``heat``, ``plant``, ``furnace``, ``charge_ts``, ``tap_ts``: the CSV replay's
    heats.csv) are ignored. Rows with an empty or non-numeric required cell are skipped."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        optional = {f"charge_{g}_t" for g in GRADES}
        missing = [c for c in (*FEATURES, *TARGETS) if c not in header and c not in optional]
        if missing:
            raise ValueError(
                f"{path}: missing columns {missing}. The heat table needs every model "
                f"input and outcome: the CSV replay's heats.csv plus what heat assembly "
                f"computes from signals.csv (carbon_kg, oxygen_nm3, gas_nm3, power_on_min, "
                f"power_off_min, energy_kwh_t); docs/CHARACTERISATION.md"
            )
        xs, ys = [], []
        for raw in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            try:
                x = [float(row.get(c) or 0.0) if c in optional else float(row[c]) for c in FEATURES]
                y = [float(row[c]) for c in TARGETS]
            except (KeyError, ValueError):
                continue
            if all(math.isfinite(v) for v in (*x, *y)):
                xs.append(x)
                ys.append(y)
    if not xs:
        raise ValueError(f"{path}: no complete heat rows")
    return np.array(xs), np.array(ys)


def write_heat_table(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """The inverse of :func:`read_heat_table` (tests, the experiment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*FEATURES, *TARGETS])
        for xr, yr in zip(np.asarray(x), np.asarray(y), strict=True):
            w.writerow([repr(float(v)) for v in (*xr, *yr)])
    return path


# -- the Laplace approximation -----------------------------------------------------------


def _autocorrelation_factor(r: np.ndarray) -> float:
    """Variance inflation for AR(1)-correlated residuals, ``(1 + rho) / (1 - rho)`` with
    ``rho`` the lag-1 autocorrelation in heat order (>= 1; capped at 10)."""
    r = r - r.mean()
    denom = float(r @ r)
    if len(r) < 3 or denom <= 0:
        return 1.0
    rho = float(np.clip(r[1:] @ r[:-1] / denom, 0.0, 0.82))
    return (1 + rho) / (1 - rho)


@dataclass(frozen=True)
class _Block:
    fit: np.ndarray  # posterior mode: the parameters the heats support
    cov: np.ndarray  # posterior covariance at the mode
    sigma: float  # residual sd of the block's target at the mode
    inflation: float


def _laplace(
    theta: np.ndarray,
    resid_jac: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    prior_sd: np.ndarray,
    iterations: int = 1,
) -> _Block:
    """Gaussian posterior of one block's parameters given the heats (module doc).

    The prior is centred on the model's values ``theta`` with ``prior_sd``; the likelihood
    is Gaussian with the residual variance ``s2`` over the degrees of freedom left,
    inflated by the residuals' autocorrelation ``k``. Gauss-Newton finds the mode (one
    step is exact for a block linear in its parameters); the covariance is
    ``(J^T J / (s2 k) + diag(prior_sd^-2))^-1`` there.
    """
    prior_prec = 1.0 / np.asarray(prior_sd, np.float64) ** 2
    fit = np.asarray(theta, np.float64).copy()
    for _ in range(max(iterations, 1)):
        resid, jac = resid_jac(fit)
        n = len(jac)
        informed = int(np.count_nonzero(np.abs(jac).max(axis=0) > 0))
        s2 = max(float(resid @ resid) / max(n - informed, 1), 1e-18)
        k = _autocorrelation_factor(resid)
        precision = jac.T @ jac / (s2 * k) + np.diag(prior_prec)
        grad = jac.T @ resid / (s2 * k) - prior_prec * (fit - theta)
        fit = fit + np.linalg.solve(precision, grad)
    resid, jac = resid_jac(fit)
    informed = int(np.count_nonzero(np.abs(jac).max(axis=0) > 0))
    s2 = max(float(resid @ resid) / max(len(jac) - informed, 1), 1e-18)
    k = _autocorrelation_factor(resid)
    cov = np.linalg.inv(jac.T @ jac / (s2 * k) + np.diag(prior_prec))
    return _Block(fit, (cov + cov.T) / 2, math.sqrt(s2), k)


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """One learned property (module doc): ``value`` is what the model serves; ``fit`` and
    ``sd`` the Laplace posterior's mode and standard deviation given the heats;
    ``lo``, ``hi`` the interval at the characterisation's level: the posterior's, widened
    to contain ``value`` where the heats disagree with it (``flagged``)."""

    value: float
    lo: float = math.nan
    hi: float = math.nan
    sd: float = math.nan
    fit: float = math.nan
    flagged: bool = False  # the served value lies outside the heats' own interval

    def to_dict(self) -> dict[str, float | bool | None]:
        out: dict[str, float | bool | None] = {
            k: (None if math.isnan(v) else v)
            for k, v in (
                ("value", self.value),
                ("lo", self.lo),
                ("hi", self.hi),
                ("sd", self.sd),
                ("fit", self.fit),
            )
        }
        out["flagged"] = self.flagged
        return out

    @classmethod
    def normal(cls, value: float, fit: float, sd: float, z: float) -> Estimate:
        """Interval ``fit +- z sd``, widened to contain ``value``."""
        lo, hi = fit - z * sd, fit + z * sd
        return cls(value, min(lo, value), max(hi, value), sd, fit, not lo <= value <= hi)

    @classmethod
    def lognormal(cls, value: float, fit: float, sd_log: float, z: float) -> Estimate:
        """Interval ``fit exp(+-z sd_log)``, widened to contain ``value``; ``sd`` in the
        property's units (of the lognormal)."""
        lo, hi = fit * math.exp(-z * sd_log), fit * math.exp(z * sd_log)
        return cls(
            value,
            min(lo, value),
            max(hi, value),
            fit * math.exp(sd_log**2 / 2) * math.sqrt(math.expm1(sd_log**2)),
            fit,
            not lo <= value <= hi,
        )


@dataclass(frozen=True)
class GradeCharacterisation:
    grade: str
    mean_charge_t: float  # per heat in the heats given (nan without heats)
    heats_charged: int  # heats with this grade in the charge
    properties: dict[str, Estimate]


@dataclass
class Characterisation:
    scope: str  # "site" | "global"
    level: float
    grades: list[GradeCharacterisation]
    n_heats: int = 0
    version: int | None = None
    source: str = ""
    residual_sd: dict[str, float] = field(default_factory=dict)
    inflation: dict[str, float] = field(default_factory=dict)
    recovery_factor: dict[str, float] = field(default_factory=dict)
    power_on: str = ""  # where the planned power-on time came from
    notes: list[str] = field(default_factory=list)

    def grade(self, name: str) -> GradeCharacterisation:
        return self.grades[GRADES.index(name)]

    def values(self, prop: str) -> np.ndarray:
        return np.array([g.properties[prop].value for g in self.grades])

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "scope": self.scope,
            "level": self.level,
            "version": self.version,
            "source": self.source,
            "n_heats": self.n_heats,
            "units": {
                "yield": "t metal per t charged",
                **{e: "% of the charged mass: wt% x recovery at 35 Nm3 O2 per t" for e in ELEMENTS},
                "energy_kwh_per_t": "kWh per heat per t of the grade replacing 1 t of "
                "the average charge (power-on time re-planned)",
            },
            "residual_sd": self.residual_sd,
            "autocorrelation_inflation": self.inflation,
            "recovery_factor_at_site_o2": self.recovery_factor,
            "power_on": self.power_on,
            "notes": self.notes,
            "grades": [
                {
                    "grade": g.grade,
                    "mean_charge_t": num(g.mean_charge_t),
                    "heats_charged": g.heats_charged,
                    **{p: e.to_dict() for p, e in g.properties.items()},
                }
                for g in self.grades
            ],
        }

    def write_json(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def csv_header(self) -> list[str]:
        cols = ["scope", "grade", "mean_charge_t", "heats_charged"]
        for p in PROPERTIES:
            cols += [p, f"{p}_lo", f"{p}_hi", f"{p}_sd", f"{p}_fit", f"{p}_flagged"]
        return cols

    def write_csv(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def cell(v: float | int) -> str:
            return "" if isinstance(v, float) and math.isnan(v) else repr(v)

        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.csv_header())
            for g in self.grades:
                row = [self.scope, g.grade, cell(g.mean_charge_t), g.heats_charged]
                for p in PROPERTIES:
                    e = g.properties[p]
                    row += [
                        cell(e.value),
                        cell(e.lo),
                        cell(e.hi),
                        cell(e.sd),
                        cell(e.fit),
                        int(e.flagged),
                    ]
                w.writerow(row)
        return path

    def table(self) -> str:
        """Plain text, two blocks of one row per grade (yield, energy, Cu; then Sn, Ni,
        Cr, Mo): each property as ``value (lo..hi)``; ``!`` marks a property whose served
        value lies outside the heats' own interval (:attr:`Estimate.flagged`)."""
        fmt = {
            "yield": "{:.3f}",
            "energy_kwh_per_t": "{:+.0f}",
            **dict.fromkeys(ELEMENTS, "{:.3g}"),
        }
        bound = {
            "yield": "{:.3f}",
            "energy_kwh_per_t": "{:+.0f}",
            **dict.fromkeys(ELEMENTS, "{:.3g}"),
        }

        def cell(p: str, e: Estimate) -> str:
            if math.isnan(e.value):
                return "-"
            text = fmt[p].format(e.value)
            if not math.isnan(e.lo):
                text += f" ({bound[p].format(e.lo)}..{bound[p].format(e.hi)})"
            return text + ("!" if e.flagged else "")

        blocks = []
        for props in (
            ("yield", "energy_kwh_per_t", "cu_pct"),
            ("sn_pct", "ni_pct", "cr_pct", "mo_pct"),
        ):
            head = ["grade", "t/heat", "heats", *(PROPERTY_LABELS[p] for p in props)]
            rows = [
                [
                    g.grade,
                    "" if math.isnan(g.mean_charge_t) else f"{g.mean_charge_t:.1f}",
                    str(g.heats_charged),
                    *(cell(p, g.properties[p]) for p in props),
                ]
                for g in self.grades
            ]
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
            blocks.append(
                "\n".join(
                    "  ".join(c.rjust(wd) for c, wd in zip(r, widths, strict=True))
                    for r in [head, *rows]
                )
            )
        return "\n\n".join(blocks)


# -- characterisation -------------------------------------------------------------------


def substituted(x0: np.ndarray, grade: int, tonnes: float) -> np.ndarray:
    """``x0`` with ``tonnes`` of its average charge replaced by as much of ``grade``."""
    x = x0.copy()
    charges = np.clip(x[_GRADE_COLS], 0.0, None)
    total = charges.sum()
    x[_GRADE_COLS] = charges - tonnes * charges / total
    x[_GRADE_COLS[grade]] += tonnes
    return x


def characterise(  # noqa: C901
    onnx_bytes: bytes,
    spec: ModelSpec,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    power_on: PowerOnEstimate | None = None,
    scope: str = "site",
    level: float = DEFAULT_LEVEL,
    weights: Mapping[str, np.ndarray] | None = None,
) -> Characterisation:
    """The learned properties of every grade (module doc) of the model ``onnx_bytes``.

    ``scope`` ``site``: the model as served (shared + site tensors); ``global``: the
    shared tensors alone. ``x``, ``y``: heats of the site in time order (raw inputs and
    outcomes), for the uncertainty and the energy effects; without them the yields and
    contents come without uncertainty and there is no energy effect. ``power_on``: the
    site's planned power-on estimate (fitted on ``x`` when absent). ``weights`` skips
    reading the ONNX file (already read by :func:`read_weights`).
    """
    if spec.architecture != ARCHITECTURE:
        raise architecture_error(spec.architecture)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    w = scope_weights(
        weights if weights is not None else read_weights(onnx_bytes, spec), spec, scope
    )
    yields, contents = hl.grade_yields(w), hl.grade_contents(w)
    nan = math.nan
    result = Characterisation(scope, level, [])
    if x is None or y is None or len(x) == 0:
        result.notes.append("no heats given: no uncertainty and no energy effect")
        for k, g in enumerate(GRADES):
            props = {"yield": Estimate(float(yields[k]))}
            props.update({e: Estimate(float(contents[k, j])) for j, e in enumerate(ELEMENTS)})
            props["energy_kwh_per_t"] = Estimate(nan)
            result.grades.append(GradeCharacterisation(g, nan, 0, props))
        return result

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape[1:] != (len(FEATURES),) or y.shape != (len(x), len(TARGETS)):
        raise ValueError(
            f"heats must be [n, {len(FEATURES)}] inputs and [n, {len(TARGETS)}] outcomes"
        )
    keep = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        raise ValueError("need at least 2 complete heats")
    result.n_heats = len(x)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    pred = forward(w, spec, x)
    resid = y - pred
    b = _balance(w, x)
    n_grades = len(GRADES)

    # Tapped mass, linear in the yields, the heel coefficient and the bias (t).
    t_col = _OUT["tapped_t"]
    jac_t = np.column_stack([b.charges, b.heel - hl.HEEL_REFERENCE_T, np.ones(len(x))])
    theta = np.r_[yields, 0.0, 0.0]  # heel coefficient and bias as offsets

    def tapped_rj(th: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return resid[:, t_col] - jac_t @ (th - theta), jac_t

    blk = _laplace(
        theta,
        tapped_rj,
        np.r_[np.full(n_grades, YIELD_PRIOR_SD), HEEL_COEF_PRIOR_SD, TAPPED_BIAS_PRIOR_SD_T],
    )
    yield_fit, yield_sd = blk.fit[:n_grades], np.sqrt(np.diag(blk.cov)[:n_grades])
    result.residual_sd["tapped_t"] = blk.sigma
    result.inflation["tapped_t"] = blk.inflation

    # Each element, log-linear in the log contents, the oxygen slope, the log heel.
    log_fit = np.empty((n_grades, len(ELEMENTS)))
    log_sd = np.empty((n_grades, len(ELEMENTS)))
    rec_o2 = _w(w, "recovery_o2", (hl.E,))
    heel_pct = _heel_pct(w)
    denom = b.metal + b.heel
    o2 = b.tn[:, _O2_TERM]
    for j, name in enumerate(ELEMENTS):
        target = y[:, _OUT[name]]

        def element_rj(
            th: np.ndarray,
            target: np.ndarray = target,
        ) -> tuple[np.ndarray, np.ndarray]:
            per_grade = (
                np.exp(o2 * th[n_grades])[:, None]
                * b.charges
                * np.exp(th[:n_grades])[None, :]
                / denom[:, None]
            )
            heel_part = b.heel * np.exp(th[n_grades + 1]) / denom
            pred = per_grade.sum(axis=1) + heel_part
            jac = np.column_stack([per_grade, o2 * per_grade.sum(axis=1), heel_part])
            return target - pred, jac

        theta = np.r_[np.log(contents[:, j]), rec_o2[j], np.log(heel_pct[j])]
        blk = _laplace(
            theta,
            element_rj,
            np.r_[np.full(n_grades, LOG_CONTENT_PRIOR_SD), RECOVERY_O2_PRIOR_SD, LOG_HEEL_PRIOR_SD],
            GN_ITERATIONS,
        )
        log_fit[:, j] = blk.fit[:n_grades]
        log_sd[:, j] = np.sqrt(np.diag(blk.cov)[:n_grades])
        result.residual_sd[name] = blk.sigma
        result.inflation[name] = blk.inflation
        result.recovery_factor[name] = float(np.exp(o2.mean() * rec_o2[j]))

    # Energy, linear in its bias, its linear coefficients and the residual network's
    # output weights (normalised units; a last-layer Laplace), the hidden layers held.
    ys_e = spec.y_scale[_OUT["energy_kwh_t"]]

    def energy_jac(bal: _Balance, rows: np.ndarray) -> np.ndarray:
        return ys_e * np.column_stack([np.ones(len(rows)), bal.tn, _last_hidden(w, spec, rows)])

    jac_e = energy_jac(b, x)
    e_col = _OUT["energy_kwh_t"]

    def energy_rj(th: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return resid[:, e_col] - jac_e @ th, jac_e

    n_hidden = jac_e.shape[1] - 1 - hl.K
    energy = _laplace(
        np.zeros(jac_e.shape[1]),
        energy_rj,
        np.r_[ENERGY_BIAS_PRIOR_SD, np.full(hl.K + n_hidden, ENERGY_COEF_PRIOR_SD)],
    )
    result.residual_sd["energy_kwh_t"] = energy.sigma
    result.inflation["energy_kwh_t"] = energy.inflation

    if power_on is None:
        power_on = PowerOnEstimate.fit(x, FEATURES)
        result.power_on = f"fitted on the {len(x)} heats given"
    else:
        result.power_on = f"the site's estimate ({power_on.n} heats)"
    x0 = x.mean(axis=0)
    rows = np.array([x0] + [substituted(x0, k, SUBSTITUTION_T) for k in range(n_grades)])
    rows[:, _COL["power_on_min"]] = power_on.estimate(rows)
    out = forward(w, spec, rows)
    tapped = out[:, _OUT["tapped_t"]]
    kwh = out[:, e_col] * tapped
    grad_rows = tapped[:, None] * energy_jac(_balance(w, rows), rows)

    charged = b.charges > 0
    for k, g in enumerate(GRADES):
        props = {
            "yield": Estimate.normal(float(yields[k]), float(yield_fit[k]), float(yield_sd[k]), z)
        }
        for j, name in enumerate(ELEMENTS):
            props[name] = Estimate.lognormal(
                float(contents[k, j]), float(np.exp(log_fit[k, j])), float(log_sd[k, j]), z
            )
        effect = float(kwh[k + 1] - kwh[0]) / SUBSTITUTION_T
        grad = (grad_rows[k + 1] - grad_rows[0]) / SUBSTITUTION_T
        sd = math.sqrt(max(float(grad @ energy.cov @ grad), 0.0))
        props["energy_kwh_per_t"] = Estimate.normal(
            effect, effect + float(grad @ energy.fit), sd, z
        )
        result.grades.append(
            GradeCharacterisation(g, float(b.charges[:, k].mean()), int(charged[:, k].sum()), props)
        )
    absent = [g.grade for g in result.grades if g.heats_charged == 0]
    if absent:
        result.notes.append(
            f"never charged in these heats: {', '.join(absent)}: their "
            f"intervals are the prior's (the estimate is the "
            f"federation's, or the prior)"
        )
    return result


def characterise_path(
    path: Path, heats: Path | None = None, scope: str = "site", level: float = DEFAULT_LEVEL
) -> Characterisation:
    """:func:`characterise` on a serving directory or ONNX file (:func:`load_model`) and an
    optional heat table CSV (:func:`read_heat_table`)."""
    model = load_model(path)
    if model.spec.architecture != ARCHITECTURE:
        raise architecture_error(model.spec.architecture)
    x = y = None
    if heats is not None:
        x, y = read_heat_table(heats)
    result = characterise(model.onnx_bytes, model.spec, x, y, model.power_on, scope, level)
    result.version, result.source = model.version, model.source
    return result
