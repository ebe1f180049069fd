"""The charge optimiser: tonnes per grade for an order, on a site's heat model.

Sequential linear programming with a trust region on an exact L1 penalty merit
(Fletcher & Sainz de la Maza 1989; the classical way to optimise a blend through a
nonlinear process model), the LPs solved by HiGHS through ``scipy.optimize.linprog``; no
hand-written solver. docs/DECISIONS.md gives
the formulation exactly; in short, with x the tonnes per grade, W the ordered tapped
tonnes and the model's predictions e(x) (kWh/t), m(x) (tapped t), mu_el(x) (wt%):

    min   [ c.x + p_E e(x) m(x) + p_CO2 (k.x + f_E e(x) m(x) / 1000) ] / m(x)
    s.t.  |m(x) - W| <= tol
          mu_el(x) + q_el(risk) <= U_el      (chance constraint: split-conformal margin)
          mu_el(x) + q'_el(risk) >= L_el     (where a minimum is ordered)
          sum_j x_j / rho_j <= V             (basket volume)
          min_j <= x_j <= S_j                (stock)

Every candidate charge is a full model input row: the process plan scales with the
charge (lime, carbon, oxygen, gas per tonne charged, plus each grade's own lime and
oxygen), and power-on time, an *outcome* of the charge, is set by the site's
:class:`models.power_on.PowerOnEstimate`, never held fixed.

Each iteration linearises the model's outputs by central finite differences (one batched
``predict`` call holds the trial point and its stencil), solves the elastic LP (one slack
per constraint, penalised), and accepts or shrinks the trust region by the true merit
(cost + penalty x violations) re-predicted at the trial point. An order that cannot be
met is answered with the constraints that stay violated at the least-violating charge the
model can find, and by how much.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy.optimize import linprog

from alchimia.models.charge.inputs import Order, Stock

POWER_ON = "power_on_min"
PLAN_FEATURES = (
    "hot_heel_t",
    "lime_t",
    "carbon_kg",
    "oxygen_nm3",
    "gas_nm3",
    POWER_ON,
    "power_off_min",
    "tap_temp_aim_c",
)
ENERGY, TAPPED = "energy_kwh_t", "tapped_t"
VOLUME_WEIGHT = 100.0


class Predictor(Protocol):
    """Anything that maps model input rows to outputs: ``OnnxPredictor`` or a toy."""

    features: Sequence[str]
    targets: Sequence[str]

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class Calibrated(Protocol):
    """What the optimiser asks of ``models.calibration.Calibration``."""

    level: float

    def upper_margin(self, target: str, risk: float) -> float: ...

    def exceed_probability(self, target: str, margin: float) -> float: ...

    def residuals(self, target: str) -> np.ndarray: ...

    def interval(
        self,
        pred: np.ndarray,
        level: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...


class PowerOn(Protocol):
    """What the optimiser asks of ``models.power_on.PowerOnEstimate``."""

    def fill(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Options:
    fd_step_t: float = 0.5  # finite-difference half step, t
    trust_t: float | None = None  # first trust-region half width, t (default W / 10)
    min_trust_t: float = 1e-3
    max_iter: int = 80
    penalty: float = 1e4  # per unit of relative violation, in cost per tonne
    tol: float = 1e-4  # stop when the LP promises less than this (cost per t) of merit
    feasible_tol: float = 1e-3  # relative violation still counted as met
    binding_tol: float = 2e-3  # relative slack under which a constraint is binding
    backoff: float = 1e-5  # relative: chemistry limits are met by this much
    max_joint_solves: int = 4  # solves to share the risk between the elements (joint)
    joint_rtol: float = 0.05  # stop sharing when an element's risk moves less than this


class InfeasibleCalibration(ValueError):
    """The calibration holds too few heats to bound an element at the asked risk."""


@dataclass
class ChargePlan:
    """The optimiser's answer; :meth:`to_dict` is the JSON of ``--json`` and of the bus."""

    status: str  # "optimal" or "infeasible"
    charge: dict[str, float]
    inputs: dict[str, float]  # the full model input row (power-on time planned)
    predicted: dict[str, dict[str, float | None]]
    level: float | None  # of the lo/hi intervals (None: no calibration)
    cost: dict[str, float]
    co2_t: dict[str, float]
    risk: dict[str, float | None]
    binding: list[dict[str, Any]]
    infeasible: list[dict[str, Any]]
    model_version: int | None
    order: str
    risk_asked: float
    risk_per_element: float
    margins: dict[str, float]  # per chemistry constraint, % at the solution
    baskets: list[dict[str, float]] | None = None
    warnings: list[str] = field(default_factory=list)
    solver: dict[str, Any] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.status == "optimal"

    @property
    def risk_any(self) -> float | None:
        """Union bound on the probability of any element over its maximum."""
        values = list(self.risk.values())
        if any(v is None for v in values):
            return None
        return min(1.0, sum(values))  # type: ignore[arg-type]

    @property
    def message(self) -> str:
        if self.feasible:
            per_t = self.cost["per_t"]
            return f"optimal charge for {self.order}: {per_t:.2f} per tonne tapped"
        return "; ".join(v["message"] for v in self.infeasible)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "message": self.message,
            "order": self.order,
            "charge": self.charge,
            "predicted": self.predicted,
            "level": self.level,
            "cost": self.cost,
            "co2_t": self.co2_t,
            "risk": self.risk,
            "risk_asked": self.risk_asked,
            "risk_per_element": self.risk_per_element,
            "risk_any": self.risk_any,
            "margins": self.margins,
            "binding": self.binding,
            "infeasible": self.infeasible,
            "inputs": self.inputs,
            "model_version": self.model_version,
            "warnings": self.warnings,
            "solver": self.solver,
        }
        if self.baskets is not None:
            out["baskets"] = self.baskets
        return out


# -- the problem as arrays -------------------------------------------------------------


@dataclass(frozen=True)
class _Constraint:
    name: str  # "tapped_t min", "cu max", "volume"
    kind: str  # "tapped_lo", "tapped_hi", "max", "min", "volume"
    limit: float
    scale: float
    element: str | None = None
    margin: float = 0.0
    weight: float = 1.0  # of its violation in the merit


class _Problem:
    """An order, a stock and a model as functions of x (tonnes per stocked grade)."""

    def __init__(
        self,
        order: Order,
        stock: Stock,
        predictor: Predictor,
        calibration: Calibrated | None,
        power_on: PowerOn | None,
        risk: float,
        reference: Mapping[str, float] | None = None,
        fd_step_t: float = 0.5,
        backoff: float = 1e-5,
    ) -> None:
        self.order, self.stock, self.predictor, self.risk = order, stock, predictor, risk
        self.calibration, self.power_on = calibration, power_on
        self.backoff = backoff
        features, targets = tuple(predictor.features), tuple(predictor.targets)
        self.features, self.targets = features, targets
        self.col = {f: i for i, f in enumerate(features)}
        self.out = {t: i for i, t in enumerate(targets)}
        for t in (ENERGY, TAPPED):
            if t not in self.out:
                raise ValueError(f"the model does not predict {t}")
        self.grades = [g for g, s in stock.grades.items() if s.available_t > 0]
        if not self.grades:
            raise ValueError("no grade in the stock has tonnes available")
        for g in stock.grades:
            if f"charge_{g}_t" not in self.col:
                raise ValueError(f"grade {g} is not an input of the model (no column charge_{g}_t)")
        unknown = [
            f
            for f in features
            if not (f.startswith("charge_") and f.endswith("_t")) and f not in PLAN_FEATURES
        ]
        if unknown:
            raise ValueError(f"the model has inputs the optimiser cannot plan: {unknown}")
        if POWER_ON in self.col and power_on is None:
            raise ValueError(
                "the model takes power_on_min, an outcome of the charge: the "
                "site's power-on estimate (power_on.json) is needed"
            )
        gs = [stock.grades[g] for g in self.grades]
        plan = order.plan
        # rows(x) = base + x @ lin, power-on filled afterwards
        self.base = np.zeros(len(features))
        fixed = {
            "hot_heel_t": plan.hot_heel_t,
            "power_off_min": plan.power_off_min,
            "tap_temp_aim_c": order.tap_temp_aim_c,
        }
        for name, value in fixed.items():
            if name in self.col:
                self.base[self.col[name]] = value
        self.lin = np.stack([self._per_tonne(g) for g in self.grades])
        self.lo = np.array([s.min_t for s in gs])
        self.hi = np.array([s.available_t for s in gs])
        self.price = np.array([s.price_per_t for s in gs])
        self.co2 = np.array([s.co2_t_per_t for s in gs])
        self.inv_rho = np.array([1.0 / s.density_t_m3 for s in gs])
        self.w = order.tapped_t
        self.heel_t = plan.hot_heel_t
        self.constraints = self._constraints()
        self.weights = np.array([c.weight for c in self.constraints])
        self.spread: dict[str, tuple[np.ndarray, float]] = {}
        if reference:
            self._reference(reference, fd_step_t)

    def _per_tonne(self, grade: str) -> np.ndarray:
        """What one more tonne of ``grade`` adds to a model input row: its charge column
        and the process plan that scales with the charge (with the grade's own extras)."""
        plan, s = self.order.plan, self.stock.grades.get(grade)
        col = f"charge_{grade}_t"
        if col not in self.col:
            raise ValueError(f"grade {grade} is not an input of the model (no column {col})")
        row = np.zeros(len(self.features))
        row[self.col[col]] = 1.0
        per_t = {
            "lime_t": (plan.lime_kg_t + (s.extra_lime_kg_t if s else 0.0)) / 1e3,
            "carbon_kg": plan.carbon_kg_t,
            "oxygen_nm3": plan.oxygen_nm3_t + (s.extra_oxygen_nm3_t if s else 0.0),
            "gas_nm3": plan.gas_nm3_t,
        }
        for name, value in per_t.items():
            if name in self.col:
                row[self.col[name]] = value
        return row

    def _reference(self, reference: Mapping[str, float], h: float) -> None:
        """Per element, each grade's contribution per tonne charged (wt% x t / t) and the
        composition spread of the reference charge (the calibration heats' typical one).

        A mass balance mu = (sum_j b_j x_j + heel part) / D with D = tapped + heel gives
        b_j = D dmu/dx_j + mu dm/dx_j: read off the model by central differences at the
        reference. The spread of a charge's element content from lot to lot is taken as
        proportional to sqrt(sum_j (b_j x_j)^2) / D (each grade's lots vary independently,
        by the same relative amount): concentrated charges spread more.
        """
        ref = {g: float(t) for g, t in reference.items() if t > 0}
        grades = list(dict.fromkeys([*self.grades, *ref]))
        lin = np.stack([self._per_tonne(g) for g in grades])
        xr = np.array([ref.get(g, 0.0) for g in grades])
        if xr.sum() <= 0:
            return
        n = len(grades)
        plus = xr[None, :] + h * np.eye(n)
        minus = np.repeat(xr[None, :], n, axis=0)
        minus[np.arange(n), np.arange(n)] = np.maximum(xr - h, 0.0)
        rows = self.base + np.vstack([xr[None, :], plus, minus]) @ lin
        if POWER_ON in self.col:
            rows[:, self.col[POWER_ON]] = np.nan
            rows = self.power_on.fill(rows)  # type: ignore[union-attr]
        y = np.asarray(self.predictor.predict(rows), np.float64)
        dx = h + np.minimum(xr, h)
        m = y[:, self.out[TAPPED]]
        d0 = m[0] + self.heel_t
        dm = (m[1 : n + 1] - m[n + 1 :]) / dx
        stocked = [grades.index(g) for g in self.grades]
        for c in self.constraints:
            if c.element is None or c.element in self.spread:
                continue
            mu = y[:, self.out[f"{c.element}_pct"]]
            b = np.maximum(d0 * (mu[1 : n + 1] - mu[n + 1 :]) / dx + mu[0] * dm, 0.0)
            sigma_ref = float(np.sqrt(np.sum((b * xr) ** 2)) / d0)
            if sigma_ref > 0:
                self.spread[c.element] = (b[stocked], sigma_ref)

    def inflation(self, element: str | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """How much wider than the calibration heats' the spread of this charge's element
        content is: max(1, sigma(x) / sigma(reference)); 1 without a reference."""
        x = np.atleast_2d(x)
        if element not in self.spread:
            return np.ones(len(x))
        b, sigma_ref = self.spread[element]
        d = y[:, self.out[TAPPED]] + self.heel_t
        sigma = np.sqrt(np.sum((x * b) ** 2, axis=1)) / np.maximum(d, 1e-6)
        return np.maximum(sigma / sigma_ref, 1.0)

    def margin_at(self, c: _Constraint, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return c.margin * self.inflation(c.element, x, y)

    def _constraints(self) -> list[_Constraint]:
        o, w = self.order, self.order.tapped_t
        cons = [
            _Constraint("tapped_t min", "tapped_lo", w - o.tapped_tolerance_t, w),
            _Constraint("tapped_t max", "tapped_hi", w + o.tapped_tolerance_t, w),
        ]
        for el, window in o.chemistry.items():
            target = f"{el}_pct"
            if target not in self.out:
                raise ValueError(f"the model does not predict {target} (order window {el})")
            scale = max(window.max or 0.0, window.min or 0.0)
            if window.max is not None:
                cons.append(
                    _Constraint(
                        f"{el} max", "max", window.max, scale, el, self.margin(target, upper=True)
                    )
                )
            if window.min is not None and window.min > 0:
                cons.append(
                    _Constraint(
                        f"{el} min", "min", window.min, scale, el, self.margin(target, upper=False)
                    )
                )
        # A basket cannot be overfilled: in an order that cannot be met, the tonnage or the
        # chemistry gives way first (the answer then says the volume is at its limit).
        cons.append(
            _Constraint(
                "volume", "volume", self.stock.volume_m3, self.stock.volume_m3, weight=VOLUME_WEIGHT
            )
        )
        return cons

    def margin(self, target: str, upper: bool) -> float:
        """Conformal margin of the element at the asked risk (0 without calibration)."""
        cal = self.calibration
        if cal is None:
            return 0.0
        if upper:
            q = cal.upper_margin(target, self.risk)
        else:
            r = np.sort(cal.residuals(target))
            k = math.floor((len(r) + 1) * self.risk)
            q = float(r[k - 1]) if 1 <= k <= len(r) else -math.inf
        if not math.isfinite(q):
            n = len(cal.residuals(target))
            raise InfeasibleCalibration(
                f"the calibration of {target} holds {n} heats: a risk of {self.risk:g} needs "
                f"at least {math.ceil(1.0 / self.risk) - 1} (ask a larger risk, or let the "
                f"site calibrate on more heats)"
            )
        return q

    # -- evaluation
    def rows(self, x: np.ndarray) -> np.ndarray:
        r = self.base + np.atleast_2d(x) @ self.lin
        if POWER_ON in self.col:
            r[:, self.col[POWER_ON]] = np.nan
            r = self.power_on.fill(r)  # type: ignore[union-attr]
        return r

    def predict(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(self.predictor.predict(self.rows(x)), np.float64)
        if y.shape != (len(np.atleast_2d(x)), len(self.targets)):
            raise ValueError(f"the model returned shape {y.shape}")
        return y

    def quantities(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objective (cost per predicted tapped t) and scaled constraint values (<= 0 is
        met), per row of ``x``/``y``."""
        x = np.atleast_2d(x)
        kwh = y[:, self.out[ENERGY]] * y[:, self.out[TAPPED]]
        s = self.stock
        co2 = x @ self.co2 + s.electricity_co2_t_per_mwh * kwh / 1e3
        cost = x @ self.price + s.energy_price_per_kwh * kwh + s.co2_price_per_t * co2
        cons = np.empty((len(x), len(self.constraints)))
        for k, c in enumerate(self.constraints):
            cons[:, k] = (self.value(c, x, y) - c.limit) / c.scale
            if c.kind in ("tapped_lo", "min"):
                cons[:, k] *= -1.0
            if c.kind in ("max", "min"):
                cons[:, k] += self.backoff  # met strictly, not within float noise
        return cost / np.maximum(y[:, self.out[TAPPED]], 1e-3 * self.w), cons

    def value(self, c: _Constraint, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """What constraint ``c`` bounds: tapped t, element % + margin, or m3."""
        if c.kind in ("tapped_lo", "tapped_hi"):
            return y[:, self.out[TAPPED]]
        if c.kind == "volume":
            return np.atleast_2d(x) @ self.inv_rho
        return y[:, self.out[f"{c.element}_pct"]] + self.margin_at(c, x, y)

    def stencil(self, x: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The points of one batched call: x, x + h e_j, max(x - h, 0) e_j."""
        n = len(x)
        plus = np.repeat(x[None, :], n, axis=0) + h * np.eye(n)
        minus = np.repeat(x[None, :], n, axis=0)
        minus[np.arange(n), np.arange(n)] = np.maximum(x - h, 0.0)
        return plus, minus, np.vstack([x[None, :], plus, minus])


@dataclass
class _Point:
    x: np.ndarray
    y: np.ndarray  # predictions at x
    f: float  # objective
    c: np.ndarray  # scaled constraints
    gf: np.ndarray  # gradient of f
    gc: np.ndarray  # Jacobian of c [K, n]

    def violation(self) -> np.ndarray:
        return np.maximum(self.c, 0.0)


def _evaluate(p: _Problem, x: np.ndarray, h: float) -> _Point:
    plus, minus, batch = p.stencil(x, h)
    y = p.predict(batch)
    f, c = p.quantities(batch, y)
    n = len(x)
    dx = plus[np.arange(n), np.arange(n)] - minus[np.arange(n), np.arange(n)]
    gf = (f[1 : n + 1] - f[n + 1 :]) / dx
    gc = ((c[1 : n + 1] - c[n + 1 :]) / dx[:, None]).T
    if not (np.isfinite(f).all() and np.isfinite(c).all()):
        f[0] = math.inf  # the model has no answer here: never accepted
    return _Point(x, y[0], float(f[0]), c[0], gf, gc)


def _lp(
    p: _Problem,
    pt: _Point,
    delta: float,
    weight: float,
    mu: float,
) -> tuple[np.ndarray, float, Any]:
    """The elastic LP at ``pt`` within the trust region; (x, model merit, result)."""
    n, k = len(pt.x), len(pt.c)
    lo = np.maximum(p.lo, pt.x - delta)
    hi = np.minimum(p.hi, pt.x + delta)
    cost = np.concatenate([weight * pt.gf, mu * p.weights])
    # c0 + G (x - x0) - s <= 0
    a_ub = np.hstack([pt.gc, -np.eye(k)])
    b_ub = pt.gc @ pt.x - pt.c
    bounds = [*zip(lo, hi, strict=True), *((0.0, None),) * k]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the step LP: {res.message}")
    x = np.clip(res.x[:n], p.lo, p.hi)
    model = weight * (pt.f + pt.gf @ (x - pt.x)) + mu * float(p.weights @ res.x[n:])
    return x, model, res


def _merit(p: _Problem, pt: _Point, weight: float, mu: float) -> float:
    return weight * pt.f + mu * float(p.weights @ pt.violation())


def _slp(
    p: _Problem, x: np.ndarray, opts: Options, weight: float, mu: float, stats: dict[str, int]
) -> _Point:
    """Trust-region SLP from ``x`` on merit ``weight f + mu sum(max(c, 0))``."""
    h = opts.fd_step_t
    delta = opts.trust_t or max(p.w / 10.0, 1.0)
    pt = _evaluate(p, x, h)
    stats["model_calls"] += 1
    if not math.isfinite(pt.f):
        raise ValueError("the model's predictions are not finite at the first charge")
    phi = _merit(p, pt, weight, mu)
    for _ in range(opts.max_iter):
        stats["iterations"] += 1
        x_new, model, _ = _lp(p, pt, delta, weight, mu)
        stats["lp_solves"] += 1
        promised = phi - model
        step = float(np.max(np.abs(x_new - pt.x))) if len(x_new) else 0.0
        if promised <= opts.tol or step < opts.min_trust_t:
            stats["converged"] = 1
            break
        trial = _evaluate(p, x_new, h)
        stats["model_calls"] += 1
        phi_new = _merit(p, trial, weight, mu)
        ratio = (phi - phi_new) / promised if math.isfinite(phi_new) else -math.inf
        if ratio >= 0.1:
            pt, phi = trial, phi_new
            if ratio > 0.75 and step >= 0.99 * delta:
                delta *= 2.0
            elif ratio < 0.25:
                delta = 0.5 * step
        else:
            delta = 0.25 * step
        if delta < opts.min_trust_t:
            stats["converged"] = 1
            break
    return pt


def _start(p: _Problem, start: Mapping[str, float] | None) -> np.ndarray:
    if start is not None:
        x = np.array([float(start.get(g, 0.0)) for g in p.grades])
        return np.clip(x, p.lo, p.hi)
    # Available tonnes in proportion, ~W / 0.9 charged, within the basket volume.
    share = p.hi / p.hi.sum()
    total = p.w / 0.9
    vol = float(share @ p.inv_rho) * total
    if vol > p.stock.volume_m3:
        total *= p.stock.volume_m3 / vol
    return np.clip(share * total, p.lo, p.hi)


# -- the answer ------------------------------------------------------------------------


def _at_limits(p: _Problem, x: np.ndarray) -> str:
    """The hard limits the charge sits on: why there is no more of it."""
    held = [f"stock {g} {p.hi[j]:g} t" for j, g in enumerate(p.grades) if x[j] >= p.hi[j] - 1e-3]
    volume = float(x @ p.inv_rho)
    if volume >= p.stock.volume_m3 * (1 - 1e-3):
        held.insert(0, f"basket volume {p.stock.volume_m3:g} m3")
    return f" (at its limits: {', '.join(held)})" if held else ""


def _explain(
    p: _Problem,
    c: _Constraint,
    x: np.ndarray,
    y: np.ndarray,
    confidence: str,
) -> dict[str, Any]:
    value = float(p.value(c, x, y)[0])
    gap = value - c.limit if c.kind in ("max", "tapped_hi", "volume") else c.limit - value
    if c.kind in ("max", "min"):
        el = c.element.capitalize()  # type: ignore[union-attr]
        margin = float(p.margin_at(c, x, y)[0])
        word, reach = ("max", "lowest") if c.kind == "max" else ("min", "highest")
        msg = (
            f"{el} {word} {c.limit:.4g} % cannot be met{confidence}: {reach} reachable "
            f"{value:.4g} % (predicted {value - margin:.4g} % "
            f"{'+' if margin >= 0 else '-'} margin {abs(margin):.3g} %) with this stock, "
            f"{gap:.3g} % {'over' if c.kind == 'max' else 'under'}"
        )
    elif c.kind == "tapped_lo":
        msg = (
            f"tapped mass {p.w:.1f} t (tolerance {p.order.tapped_tolerance_t:g} t) cannot "
            f"be reached: at most {value:.1f} t with this stock, basket volume and "
            f"chemistry, {gap:.1f} t short{_at_limits(p, x)}"
        )
    elif c.kind == "tapped_hi":
        msg = (
            f"tapped mass {p.w:.1f} t (tolerance {p.order.tapped_tolerance_t:g} t) is "
            f"exceeded: at least {value:.1f} t with the minimum tonnes of the stock, "
            f"{gap:.1f} t over"
        )
    else:
        msg = (
            f"basket volume {c.limit:.1f} m3 is exceeded: the charge needs {value:.1f} m3, "
            f"{gap:.1f} m3 over"
        )
    return {"constraint": c.name, "limit": c.limit, "best": value, "gap": gap, "message": msg}


def _baskets(p: _Problem, x: np.ndarray) -> list[dict[str, float]] | None:
    """The charge in ``stock.baskets`` baskets of equal volume, grade after grade in the
    stock's order: every basket within its volume when the charge is, and at most one
    grade split between two consecutive baskets per basket change (no solver needed:
    with tonnes free to split, any fill that respects the volumes is as good)."""
    nb = p.stock.baskets
    if nb is None:
        return None
    target = float(x @ p.inv_rho) / nb
    out: list[dict[str, float]] = [{} for _ in range(nb)]
    b, room = 0, target
    for j, g in enumerate(p.grades):
        volume = float(x[j]) * p.inv_rho[j]
        while volume > 1e-9:
            take = volume if b == nb - 1 else min(volume, room)
            out[b][g] = out[b].get(g, 0.0) + take / p.inv_rho[j]
            volume -= take
            room -= take
            if room <= 1e-9 and b < nb - 1:
                b, room = b + 1, target
    return [{g: round(t, 3) for g, t in basket.items() if t >= 5e-4} for basket in out]


def _shadow_prices(p: _Problem, pt: _Point, opts: Options) -> dict[int, float] | None:
    """Cost per t tapped per unit of each constraint's limit, from the LP at the solution
    without trust region (None when that LP moves away: the linearisation is not local)."""
    x, _, res = _lp(p, pt, math.inf, 1.0, opts.penalty)
    if float(np.max(np.abs(x - pt.x), initial=0.0)) > 0.5:
        return None
    lam = res.ineqlin.marginals  # d objective / d b_ub, <= 0
    out = {}
    for k, c in enumerate(p.constraints):
        sign = 1.0 if c.kind in ("max", "tapped_hi", "volume") else -1.0
        out[k] = float(lam[k]) * sign / c.scale  # d cost / d limit
    return out


def _plan(
    p: _Problem,
    pt: _Point,
    opts: Options,
    version: int | None,
    stats: dict[str, Any],
    warnings: list[str],
) -> ChargePlan:
    x = pt.x
    y = pt.y[None, :]
    cal = p.calibration
    kwh = float(y[0, p.out[ENERGY]] * y[0, p.out[TAPPED]])
    s = p.stock
    co2_mat = float(x @ p.co2)
    co2_el = s.electricity_co2_t_per_mwh * kwh / 1e3
    material = float(x @ p.price)
    energy = s.energy_price_per_kwh * kwh
    co2 = s.co2_price_per_t * (co2_mat + co2_el)
    total = material + energy + co2
    tapped = float(y[0, p.out[TAPPED]])
    lo: np.ndarray | None
    hi: np.ndarray | None
    if cal is not None:
        lo, hi = cal.interval(y)
        level: float | None = cal.level
    else:
        lo = hi = None
        level = None
    predicted = {
        t: {
            "mean": float(y[0, i]),
            "lo": None if lo is None else float(lo[0, i]),
            "hi": None if hi is None else float(hi[0, i]),
        }
        for i, t in enumerate(p.targets)
    }
    risk: dict[str, float | None] = {}
    for el, window in p.order.chemistry.items():
        if window.max is not None:
            t = f"{el}_pct"
            gap = (window.max - float(y[0, p.out[t]])) / float(p.inflation(el, x, y)[0])
            risk[el] = None if cal is None else cal.exceed_probability(t, gap)
    viol = pt.violation()
    confidence = f" with {1 - p.risk:.1%} confidence" if cal is not None else ""
    infeasible = [
        _explain(p, c, x, y, confidence)
        for k, c in enumerate(p.constraints)
        if viol[k] > opts.feasible_tol
    ]
    status = "infeasible" if infeasible else "optimal"
    prices = _shadow_prices(p, pt, opts) if not infeasible else None
    binding: list[dict[str, Any]] = []
    for k, c in enumerate(p.constraints):
        if pt.c[k] >= -opts.binding_tol:
            binding.append(
                {
                    "constraint": c.name,
                    "value": float(p.value(c, x, y)[0]),
                    "limit": c.limit,
                    "shadow_price": None if prices is None else prices[k],
                }
            )
    for j, g in enumerate(p.grades):
        if x[j] >= p.hi[j] - 1e-3:
            binding.append(
                {
                    "constraint": f"stock {g}",
                    "value": float(x[j]),
                    "limit": float(p.hi[j]),
                    "shadow_price": None,
                }
            )
        elif p.lo[j] > 0 and x[j] <= p.lo[j] + 1e-3:
            binding.append(
                {
                    "constraint": f"min {g}",
                    "value": float(x[j]),
                    "limit": float(p.lo[j]),
                    "shadow_price": None,
                }
            )
    charge = {g: 0.0 for g in p.stock.grades}
    charge.update({g: round(float(v), 3) for g, v in zip(p.grades, x, strict=True)})
    return ChargePlan(
        status=status,
        charge=charge,
        inputs=dict(zip(p.features, map(float, p.rows(x)[0]), strict=True)),
        predicted=predicted,
        level=level,
        cost={
            "material": material,
            "energy": energy,
            "co2": co2,
            "total": total,
            "per_t": total / tapped if tapped > 0 else math.inf,
        },
        co2_t={"material": co2_mat, "electricity": co2_el, "total": co2_mat + co2_el},
        risk=risk,
        binding=binding,
        infeasible=infeasible,
        model_version=version,
        order=p.order.name,
        risk_asked=p.risk,
        risk_per_element=p.risk,
        margins={
            c.name: float(p.margin_at(c, x, y)[0]) for c in p.constraints if c.element is not None
        },
        baskets=_baskets(p, x),
        warnings=warnings,
        solver=stats,
    )


def _joint_share(p: _Problem, pt: _Point, risk: float, opts: Options) -> float:
    """Each element's risk such that the heat's (any element over) stays within ``risk``
    by the union bound: the maxima that bind share what the others leave, the others
    counted at their observed exceed rate on the calibration heats (no less than
    risk / the number of maxima, the plain Bonferroni split)."""
    y = pt.y[None, :]
    binding, rest, n_max, n_cal = 0, 0.0, 0, math.inf
    for k, c in enumerate(p.constraints):
        if c.kind != "max":
            continue
        n_max += 1
        n_cal = min(n_cal, len(p.calibration.residuals(f"{c.element}_pct")))  # type: ignore[union-attr]
        if pt.c[k] >= -opts.binding_tol:
            binding += 1
            continue
        t = f"{c.element}_pct"
        gap = (c.limit - float(y[0, p.out[t]])) / float(p.inflation(c.element, pt.x, y)[0])
        r = p.calibration.residuals(t)  # type: ignore[union-attr]
        rest += float(np.count_nonzero(r > gap)) / max(len(r), 1)
    if binding == 0:
        return p.risk
    # No smaller than the calibration can bound: (n + 1) heats per 1 / risk.
    return max((risk - rest) / binding, risk / n_max, 1.0 / (n_cal + 1) * (1 + 1e-9))


def optimize(
    order: Order,
    stock: Stock,
    model: Any,
    risk: float = 0.05,
    *,
    calibration: Calibrated | None = None,
    power_on: PowerOn | None = None,
    version: int | None = None,
    reference: Mapping[str, float] | None = None,
    joint: bool = True,
    start: Mapping[str, float] | None = None,
    options: Options | None = None,
) -> ChargePlan:
    """The cheapest charge for ``order`` from ``stock`` on ``model``.

    ``model`` is a site's serving model (``models.served.ServedModel`` or anything with
    ``predictor``, ``calibration``, ``power_on`` and ``version``) or a bare predictor
    (``predict(rows) -> outputs``, ``features``, ``targets``); ``calibration``,
    ``power_on`` and ``version`` given here override the model's.

    ``risk``: the probability allowed for the heat to end over a maximum. With ``joint``
    (default) it bounds any element (Bonferroni: when k element maxima bind, each gets
    risk / k and the plan is solved again); without, each element separately.
    ``reference``: the site's typical charge (grade -> t, e.g. the mean charge of its
    calibration heats); the chemistry margins then widen for charges whose composition
    spreads more than it (concentrated in few grades). ``start``: a first charge.

    Raises ValueError for an order, stock or model that cannot be planned at all; an order
    that cannot be met returns a plan with ``status == "infeasible"`` that says which
    constraints fail and by how much.
    """
    if not 0.0 < risk < 0.5:
        raise ValueError(f"risk must be in (0, 0.5), got {risk}")
    opts = options or Options()
    started = time.perf_counter()
    predictor = getattr(model, "predictor", model)
    calibration = calibration if calibration is not None else getattr(model, "calibration", None)
    power_on = power_on if power_on is not None else getattr(model, "power_on", None)
    version = version if version is not None else getattr(model, "version", None)
    warnings = []
    if calibration is None:
        warnings.append(
            "no calibration: chemistry limits hold on the predicted mean only, risks are unknown"
        )
    stats: dict[str, Any] = {
        "iterations": 0,
        "lp_solves": 0,
        "model_calls": 0,
        "converged": 0,
        "solves": 0,
    }
    per_element, first = risk, start
    for _ in range(opts.max_joint_solves):
        p = _Problem(
            order,
            stock,
            predictor,
            calibration,
            power_on,
            per_element,
            reference,
            opts.fd_step_t,
            opts.backoff,
        )
        stats["solves"] += 1
        pt = _slp(p, _start(p, first), opts, 1.0, opts.penalty, stats)
        feasible = float(pt.violation().max(initial=0.0)) <= opts.feasible_tol
        if not (joint and feasible and calibration is not None):
            break
        shared = _joint_share(p, pt, risk, opts)
        if shared >= per_element * (1 - opts.joint_rtol):
            break
        per_element = shared
        first = dict(zip(p.grades, pt.x, strict=True))
    if not feasible:
        # Phase 1: the least-violating charge, cost ignored, to say how far off it is.
        stats["phase1"] = True
        pt = _slp(p, pt.x, opts, 0.0, 1.0, stats)
    stats["converged"] = bool(stats["converged"])
    stats["wall_s"] = time.perf_counter() - started
    plan = _plan(p, pt, opts, version, stats, warnings)
    plan.risk_asked = risk
    return plan


def optimize_request(data: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """The bus route: a request body (``models.charge.inputs.OptimizeRequest`` as a map)
    in, the plan's :meth:`ChargePlan.to_dict` out. Raises ValueError (pydantic's
    ValidationError included) for a request that cannot be planned."""
    from alchimia.models.charge.inputs import request_from

    req = request_from(data)
    return optimize(
        req.order, req.stock, model, req.risk, joint=req.joint, reference=req.reference_charge
    ).to_dict()
