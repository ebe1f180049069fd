"""The charge optimiser on small instances whose optimum is known by hand."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from alchimia.models.calibration import Calibration
from alchimia.models.charge import (
    InfeasibleCalibration,
    Order,
    Stock,
    load_order,
    load_stock,
    optimize,
    optimize_request,
)
from alchimia.models.charge.optimizer import _Problem
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.schema import FEATURES, TARGETS

COL = {f: i for i, f in enumerate(FEATURES)}
OUT = {t: i for i, t in enumerate(TARGETS)}
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


class ToyHeatModel:
    """A mass balance anyone can check: tapped = sum y_g x_g; element = (sum c_g y_g x_g
    + heel x heel content) / (tapped + heel); energy = e0 + k x power-on minutes."""

    features = FEATURES
    targets = TARGETS

    def __init__(
        self,
        yields: dict[str, float],
        cu: dict[str, float],
        sn: dict[str, float] | None = None,
        heel_cu: float = 0.2,
        heel_sn: float = 0.02,
        kwh_per_min: float = 0.0,
    ) -> None:
        self.yields, self.cu, self.sn = yields, cu, sn or dict.fromkeys(yields, 0.01)
        self.heel_cu, self.heel_sn, self.kwh_per_min = heel_cu, heel_sn, kwh_per_min
        self.calls = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        x = np.asarray(x, np.float64)
        assert not np.isnan(x).any(), "every input, power-on time included, must be set"
        heel = x[:, COL["hot_heel_t"]]
        metal = sum(x[:, COL[f"charge_{g}_t"]] * y for g, y in self.yields.items())
        out = np.zeros((len(x), len(TARGETS)))
        out[:, OUT["tapped_t"]] = metal
        for el, table, heel_pct in (("cu", self.cu, self.heel_cu), ("sn", self.sn, self.heel_sn)):
            mass = sum(x[:, COL[f"charge_{g}_t"]] * self.yields[g] * c for g, c in table.items())
            out[:, OUT[f"{el}_pct"]] = (mass + heel * heel_pct) / (metal + heel)
        out[:, OUT["energy_kwh_t"]] = 400.0 + self.kwh_per_min * x[:, COL["power_on_min"]]
        return out.astype(np.float32)


def power_on(per_t: dict[str, float], intercept: float = 0.0) -> PowerOnEstimate:
    coef = np.zeros(len(FEATURES))
    for g, c in per_t.items():
        coef[COL[f"charge_{g}_t"]] = c
    return PowerOnEstimate(FEATURES, coef, intercept, rmse=1.0, n=100)


def stock(
    grades: dict[str, tuple[float, float]],
    energy_price: float = 0.0,
    volume: float = 1000.0,
    density: float = 0.6,
    **extra: object,
) -> Stock:
    """grade -> (available t, price per t)."""
    return Stock(
        energy_price_per_kwh=energy_price,
        basket_volume_m3=volume,
        grades={
            g: {"available_t": a, "price_per_t": p, "density_t_m3": density}
            for g, (a, p) in grades.items()
        },
        **extra,
    )


def cu_calibration(residuals: np.ndarray, sn: np.ndarray | None = None) -> Calibration:
    """A calibration whose Cu (and Sn) residuals are given, the rest zero."""
    n = len(residuals)
    actual = np.zeros((n, len(TARGETS)))
    actual[:, OUT["cu_pct"]] = residuals
    if sn is not None:
        actual[:, OUT["sn_pct"]] = sn
    cal = Calibration(TARGETS, window=1000)
    cal.reset(np.zeros_like(actual), actual)
    return cal


# The toy names its grades after real model columns: a cheap Cu-rich and a dear clean one.
CHEAP, CLEAN = "E46", "E2"


def toy(**kwargs: object) -> ToyHeatModel:
    base = {"yields": {CHEAP: 1.0, CLEAN: 1.0}, "cu": {CHEAP: 0.3, CLEAN: 0.1}}
    base.update(kwargs)
    return ToyHeatModel(**base)  # type: ignore[arg-type]


PON2 = power_on({CHEAP: 0.3, CLEAN: 0.3})


def order(
    cu_max: float | None = 0.2, tapped: float = 100.0, tol: float = 1.0, **windows: float
) -> Order:
    chemistry = {} if cu_max is None else {"cu": {"max": cu_max}}
    chemistry.update({el: {"max": v} for el, v in windows.items()})
    return Order(
        tapped_t=tapped, tapped_tolerance_t=tol, chemistry=chemistry, plan={"hot_heel_t": 15.0}
    )


# -- the optimum by hand -----------------------------------------------------------------


def test_hand_checkable_optimum_mixes_to_the_copper_limit() -> None:
    """Cu = (0.3 a + 0.1 b + 15 x 0.2) / (a + b + 15) <= 0.2 <=> a <= b; the cheap grade
    (300) is worth using up to a = b: 50/50, 350 per t, Cu exactly at 0.2 %."""
    model = toy()
    plan = optimize(order(), stock({CHEAP: (200, 300), CLEAN: (200, 400)}), model, power_on=PON2)
    assert plan.feasible, plan.message
    a, b = plan.charge[CHEAP], plan.charge[CLEAN]
    assert a == pytest.approx(b, abs=0.05)
    assert 99.0 - 1e-3 <= a + b <= 101.0 + 1e-3
    assert plan.cost["per_t"] == pytest.approx(350.0, abs=0.1)
    assert plan.predicted["cu_pct"]["mean"] == pytest.approx(0.2, abs=1e-4)
    cu = next(b for b in plan.binding if b["constraint"] == "cu max")
    # At 99 t: cost/t = (300 a + 400 (99 - a)) / 99, Cu = (0.1 x 99 + 0.2 a + 3) / 114:
    # d cost / d Cu = (-100 / 99) / (0.2 / 114) = -575.8 per % of the limit.
    assert cu["shadow_price"] == pytest.approx(-100.0 / 99.0 * 114.0 / 0.2, rel=0.01)
    assert plan.solver["converged"] and plan.solver["model_calls"] == model.calls
    assert plan.warnings and "no calibration" in plan.warnings[0]


def test_loose_window_takes_the_cheap_grade_up_to_its_stock() -> None:
    plan = optimize(
        order(cu_max=0.5), stock({CHEAP: (60, 300), CLEAN: (200, 400)}), toy(), power_on=PON2
    )
    assert plan.feasible
    assert plan.charge[CHEAP] == pytest.approx(60.0, abs=1e-3)
    # cost per tonne tapped falls with the cheap share: the lower tonnage edge (99 t).
    assert plan.charge[CLEAN] == pytest.approx(39.0, abs=0.02)
    names = {b["constraint"] for b in plan.binding}
    assert f"stock {CHEAP}" in names and "tapped_t min" in names and "cu max" not in names


def test_power_on_time_is_planned_by_the_site_estimate_not_held_fixed() -> None:
    """Equal price and chemistry, but one grade melts slower (more power-on minutes per
    tonne, so more kWh): only the site's estimate tells them apart."""
    slow, fast = CHEAP, CLEAN
    model = toy(cu={slow: 0.1, fast: 0.1}, kwh_per_min=5.0)
    pon = power_on({slow: 0.5, fast: 0.2}, intercept=5.0)
    plan = optimize(
        order(cu_max=None),
        stock({slow: (200, 350), fast: (200, 350)}, energy_price=0.1),
        model,
        power_on=pon,
    )
    assert plan.charge[slow] == pytest.approx(0.0, abs=1e-3)
    total = plan.charge[fast]
    assert plan.inputs["power_on_min"] == pytest.approx(5.0 + 0.2 * total, abs=1e-3)
    assert plan.predicted["energy_kwh_t"]["mean"] == pytest.approx(
        400.0 + 5.0 * (5.0 + 0.2 * total), abs=0.05
    )
    with pytest.raises(ValueError, match="power_on"):
        optimize(order(), stock({slow: (200, 350), fast: (200, 350)}), model)


# -- the chance constraint ---------------------------------------------------------------


def test_chance_constraint_tightens_as_risk_falls() -> None:
    residuals = np.linspace(-0.03, 0.03, 199)
    cal = cu_calibration(residuals)
    plans = {
        risk: optimize(
            order(),
            stock({CHEAP: (200, 300), CLEAN: (200, 400)}),
            toy(),
            risk,
            calibration=cal,
            power_on=PON2,
        )
        for risk in (0.3, 0.1, 0.05, 0.01)
    }
    cu = [plans[r].predicted["cu_pct"]["mean"] for r in sorted(plans, reverse=True)]
    cost = [plans[r].cost["per_t"] for r in sorted(plans, reverse=True)]
    assert all(a > b for a, b in itertools.pairwise(cu)), cu
    assert all(a < b for a, b in itertools.pairwise(cost)), cost
    for risk, plan in plans.items():
        margin = cal.upper_margin("cu_pct", risk)
        assert plan.predicted["cu_pct"]["mean"] + margin == pytest.approx(0.2, abs=1e-4)
        assert plan.margins["cu max"] == pytest.approx(margin)
        assert plan.risk["cu"] <= risk + 1e-9  # conformal estimate at the solution
        assert plan.level == cal.level and plan.predicted["cu_pct"]["hi"] is not None


def test_joint_risk_is_shared_between_the_elements_that_bind() -> None:
    """Cu and Sn bind together (both limits met by a = b): with joint risk each gets half
    and the plan is cleaner and dearer than with the per-element risk."""
    rng = np.random.default_rng(0)
    cal = cu_calibration(rng.normal(0, 0.01, 299), sn=rng.normal(0, 0.001, 299))
    model = toy(sn={CHEAP: 0.03, CLEAN: 0.01})
    kwargs = dict(calibration=cal, power_on=PON2)
    args = (order(sn=0.02), stock({CHEAP: (200, 300), CLEAN: (200, 400)}), model, 0.1)
    each = optimize(*args, joint=False, **kwargs)
    joint = optimize(*args, **kwargs)
    assert each.risk_per_element == 0.1
    assert joint.risk_per_element == pytest.approx(0.05, rel=0.05)
    assert joint.predicted["cu_pct"]["mean"] < each.predicted["cu_pct"]["mean"]
    assert joint.cost["per_t"] > each.cost["per_t"]
    assert joint.risk_any <= 0.1 + 1e-9 < each.risk_any


def test_concentrated_charges_get_wider_margins_than_the_reference() -> None:
    """Spread of a charge's Cu ~ sqrt(sum (b_g x_g)^2) / (tapped + heel), b = Cu per t:
    all-cheap 100 t against the 50/50 reference: 30 / sqrt(15^2 + 5^2) = 1.897."""
    cal = cu_calibration(np.linspace(-0.01, 0.01, 99))
    p = _Problem(
        order(),
        stock({CHEAP: (200, 300), CLEAN: (200, 400)}),
        toy(),
        cal,
        PON2,
        0.05,
        reference={CHEAP: 50.0, CLEAN: 50.0},
    )
    x = np.array([[100.0, 0.0], [50.0, 50.0], [25.0, 75.0]])
    y = p.predict(x)
    infl = p.inflation("cu", x, y)
    assert infl[0] == pytest.approx(30.0 / math.hypot(15.0, 5.0), rel=1e-3)
    assert infl[1] == pytest.approx(1.0, abs=1e-6)
    assert infl[2] == 1.0  # more diversified than the reference: never narrower
    plain = _Problem(order(), stock({CHEAP: (200, 300), CLEAN: (200, 400)}), toy(), cal, PON2, 0.05)
    assert (plain.inflation("cu", x, y) == 1.0).all()


# -- orders that cannot be met -----------------------------------------------------------


def test_infeasible_copper_names_the_constraint_and_the_gap() -> None:
    cal = cu_calibration(np.linspace(-0.01, 0.01, 99))
    margin = cal.upper_margin("cu_pct", 0.05)
    plan = optimize(
        order(cu_max=0.05),
        stock({CHEAP: (200, 300), CLEAN: (200, 400)}),
        toy(),
        calibration=cal,
        power_on=PON2,
    )
    assert plan.status == "infeasible" and not plan.feasible
    (bad,) = plan.infeasible
    # The cleanest charge is all E2, as much as the tonnage allows (the heel is dirtier):
    # Cu (0.1 x 101 + 0.2 x 15) / (101 + 15).
    best = (0.1 * 101.0 + 3.0) / 116.0 + margin
    assert bad["constraint"] == "cu max" and bad["limit"] == 0.05
    assert bad["best"] == pytest.approx(best, abs=2e-4)
    assert bad["gap"] == pytest.approx(best - 0.05, abs=2e-4)
    assert "Cu max 0.05 % cannot be met with 95.0% confidence" in bad["message"]
    assert f"lowest reachable {best:.4g} %" in bad["message"]
    assert plan.charge[CHEAP] == pytest.approx(0.0, abs=0.05)
    d = plan.to_dict()
    assert d["status"] == "infeasible" and d["message"] == bad["message"]


def test_infeasible_tonnage_says_how_short() -> None:
    plan = optimize(
        order(cu_max=0.5), stock({CHEAP: (30, 300), CLEAN: (20, 400)}), toy(), power_on=PON2
    )
    (bad,) = plan.infeasible
    assert bad["constraint"] == "tapped_t min"
    assert bad["best"] == pytest.approx(50.0, abs=1e-3)
    assert bad["gap"] == pytest.approx(49.0, abs=1e-3)
    assert "at most 50.0 t" in bad["message"] and "49.0 t short" in bad["message"]


def test_basket_volume_binds_and_the_baskets_hold_the_charge() -> None:
    """Both grades at 0.5 t/m3: 100 t need 200 m3; two baskets of 90 m3 hold 180, 90 t.
    A basket cannot be overfilled: the tonnage is what gives way."""
    s = stock({CHEAP: (200, 300), CLEAN: (200, 400)}, volume=90.0, density=0.5, baskets=2)
    plan = optimize(order(cu_max=0.5), s, toy(), power_on=PON2)
    (bad,) = plan.infeasible
    assert bad["constraint"] == "tapped_t min"
    assert bad["best"] == pytest.approx(90.0, abs=0.01)
    assert "at most 90.0 t" in bad["message"] and "basket volume 180 m3" in bad["message"]
    s = stock({CHEAP: (200, 300), CLEAN: (200, 400)}, volume=110.0, density=0.5, baskets=2)
    plan = optimize(order(), s, toy(), power_on=PON2)
    assert plan.feasible and plan.baskets is not None and len(plan.baskets) == 2
    for basket in plan.baskets:
        assert sum(basket.values()) / 0.5 <= 110.0 + 1e-3
    for grade in (CHEAP, CLEAN):
        assert sum(b.get(grade, 0.0) for b in plan.baskets) == pytest.approx(
            plan.charge[grade], abs=0.01
        )


def test_calibration_too_small_for_the_risk_is_refused() -> None:
    cal = cu_calibration(np.linspace(-0.01, 0.01, 10))
    with pytest.raises(InfeasibleCalibration, match=r"holds 10 heats.*at least 19"):
        optimize(
            order(),
            stock({CHEAP: (200, 300), CLEAN: (200, 400)}),
            toy(),
            0.05,
            calibration=cal,
            power_on=PON2,
        )


# -- the request form and the files ------------------------------------------------------


def _request() -> dict:
    return {
        "order": order().model_dump(),
        "risk": 0.1,
        "stock": stock({CHEAP: (200, 300), CLEAN: (200, 400)}).model_dump(),
    }


class _Served:
    """What the agent holds: a ServedModel-like object."""

    predictor = toy()
    calibration = cu_calibration(np.linspace(-0.01, 0.01, 99))
    power_on = PON2
    version = 42


def test_request_in_plan_out_as_json() -> None:
    out = optimize_request(json.loads(json.dumps(_request())), _Served())
    out = json.loads(json.dumps(out))  # plain JSON all the way
    assert out["status"] == "optimal" and out["model_version"] == 42
    assert set(out["cost"]) == {"material", "energy", "co2", "total", "per_t"}
    assert set(out["predicted"]["cu_pct"]) == {"mean", "lo", "hi"}
    assert out["risk"]["cu"] <= 0.1 and out["risk_asked"] == 0.1
    assert sum(out["charge"].values()) == pytest.approx(
        out["predicted"]["tapped_t"]["mean"], abs=0.1
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["stock"]["grades"][CHEAP].update(price_per_t=float("nan")),
        lambda r: r["stock"]["grades"][CHEAP].update(available_t=-1.0),
        lambda r: r["order"].update(tapped_t=1e9),
        lambda r: r.update(risk=0.7),
        lambda r: r["order"]["chemistry"].update(copper={"max": 0.2}),
        lambda r: r["order"]["chemistry"].update(cu={}),
        lambda r: r.update(surprise=1),
    ],
)
def test_malformed_requests_are_rejected(change: Callable[[dict], None]) -> None:
    req = _request()
    change(req)
    with pytest.raises(ValidationError):
        optimize_request(req, _Served())


def test_a_grade_the_model_does_not_know_is_an_error() -> None:
    req = _request()
    req["stock"]["grades"]["SLAG"] = {"available_t": 5, "price_per_t": 1, "density_t_m3": 1}
    with pytest.raises(ValueError, match="grade SLAG is not an input of the model"):
        optimize_request(req, _Served())


def test_the_example_files_load() -> None:
    o, s = load_order(EXAMPLES / "order.toml"), load_stock(EXAMPLES / "stock.toml")
    assert o.tapped_t == 110.0 and o.chemistry["cu"].max == 0.20
    assert s.baskets == 3 and s.volume_m3 == 3 * s.basket_volume_m3
    assert s.grades["DRI"].extra_lime_kg_t > 0 and s.grades["PIG"].extra_oxygen_nm3_t > 0
