"""``alchimia experiment charge``: does the charge optimiser pay at the furnace?

Offline, in one process, on the federation experiment's plants
(``alchimia.experiment_federation``): the plants' heats are simulated, the federation
trains ``eaf-hybrid-v1`` (FedAvg, FedRep personalisation) and each plant serves the
global shared part with its own site part, as ONNX, from a serving directory written and
read exactly as the agent and ``alchimia optimize`` do (``models.served``). Each site
calibrates its model on heats it never trained on (the federation's held-out 20 % plus
``calibration_heats`` more heats the served model predicted) and fits its power-on
estimate on all its heats.

Then every plant receives ``orders`` customer orders: tapped tonnes near its usual tap,
a chemistry window from one of four steel-grade families (loose to very tight, set from
the plant's own historical tap chemistry, rounded like a specification), that day's
prices and the yard's stock. Arms:

* ``practice``: the plant's usual mix (its historical average), scaled to the order's
  tonnes by its historical yield;
* ``optimised``: ``models.charge.optimize`` on the site's serving model at ``risk``;
* ``mean`` (optional): the same optimiser without the chance constraint (no calibration:
  the limits hold on the predicted mean only), to show what the margin buys.

Both arms run with the order's process plan (the plant's practice per tonne). Between
two orders the plant melts one heat of its normal production (the hot heel changes);
each order's charges are then executed by the simulator at the same heat index
(``SimulatedPlant.execute``: the same lots, heel, delays and measurement noise for every
arm) with the plant's hidden true compositions, yields and energy. Scored on what was
tapped: cost per tonne (materials at the order's prices + actual electricity + CO2),
kWh/t, t CO2 per t, off-spec rate (any measured element outside its window) and the
error of the tapped mass.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from alchimia.agent.sim import grades as g
from alchimia.agent.sim.plant import LIME_PER_GANGUE, PlantProfile, SimulatedPlant
from alchimia.models.charge.inputs import GradeStock, Order, ProcessPlan, Stock, Window
from alchimia.models.schema import FEATURES, GRADES, TARGETS

ARMS = ("practice", "optimised", "plain", "mean")
ARM_LABELS = {
    "practice": "(a) practice mix",
    "optimised": "(b) optimiser",
    "plain": "(b') optimiser, per-element conformal margin only",
    "mean": "(c) optimiser, mean only",
}
ELEMENTS = ("cu", "sn", "ni", "cr", "mo")
DEFAULT_SIZES = (1500, 1500, 400, 120, 80)  # the federation experiment's plants

# Market figures (EAF.md: US Oct 2025 busheling ~390, shredded ~370, heavy melting ~330
# $/gross t; the rest by the grades' quality, check). Money in EUR ~ USD here.
PRICE_PER_T: dict[str, float] = {
    "E3": 345.0,
    "E1": 320.0,
    "E2": 395.0,
    "E8": 390.0,
    "E6": 380.0,
    "E40": 365.0,
    "E46": 290.0,
    "EHRB": 315.0,
    "E5H": 285.0,
    "DRI": 420.0,
    "HBI": 440.0,
    "PIG": 460.0,
}
# Embodied CO2, t per t (scrap: collection and processing; gas-based DRI/HBI ~0.6-1.0;
# blast-furnace pig iron ~1.8-2.0; all check).
CO2_T_PER_T: dict[str, float] = {
    **dict.fromkeys(GRADES, 0.02),
    "DRI": 0.75,
    "HBI": 0.80,
    "PIG": 1.90,
}
ENERGY_PRICE_PER_KWH = 0.12  # EU industrial electricity 2025 (check)
CO2_PRICE_PER_T = 80.0  # EU ETS (check)
ELECTRICITY_CO2_T_PER_MWH = 0.25  # grid mix (check)
PRICE_SIGMA = 0.05  # the month's price of a grade around its base

# Order families: (name, weight, Cu/Sn max as a factor on the practice's quantile q,
# which quantile, Ni/Cr/Mo max factor on the practice's 99 % quantile).
FAMILIES: tuple[tuple[str, float, float, float, float], ...] = (
    ("rebar (loose)", 0.30, 1.6, 0.99, 1.6),
    ("merchant bar", 0.30, 1.15, 0.99, 1.6),
    ("wire rod (tight)", 0.25, 1.0, 0.90, 1.4),
    ("drawing (very tight)", 0.15, 1.0, 0.60, 1.2),
)


@dataclass(frozen=True)
class ChargeConfig:
    seed: int = 0
    sizes: tuple[int, ...] = DEFAULT_SIZES
    rounds: int = 20  # federation rounds (the federation experiment runs 40)
    orders: int = 200
    risk: float = 0.05
    calibration_heats: int = 40
    arms: tuple[str, ...] = ("practice", "optimised")


@dataclass
class OrderResult:
    plant: str
    family: str
    arm: str
    tapped_aim_t: float
    tapped_t: float
    cost: float  # materials + electricity + CO2, currency
    kwh: float
    co2_t: float
    off_spec: bool
    off_elements: tuple[str, ...]  # the elements outside their window
    infeasible: bool  # the optimiser said the order cannot be met
    charge_t: float


@dataclass
class ChargeResult:
    config: ChargeConfig
    plants: list[str]
    rows: list[OrderResult]
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    png: Path | None = None

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """arm -> plant -> figure (``all``: every plant's orders together)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for arm in self.config.arms:
            out[arm] = {}
            for plant in [*self.plants, "all"]:
                rows = [
                    r for r in self.rows if r.arm == arm and (plant == "all" or r.plant == plant)
                ]
                out[arm][plant] = _figures(rows)
        return out

    def by_family(self) -> dict[str, dict[str, dict[str, float]]]:
        """arm -> order family -> figure, all plants together."""
        families = [f[0] for f in FAMILIES]
        return {
            arm: {
                fam: _figures([r for r in self.rows if r.arm == arm and r.family == fam])
                for fam in families
            }
            for arm in self.config.arms
        }

    def table(self) -> str:
        head = [
            "plant",
            "arm",
            "orders",
            "cost /t",
            "kWh/t",
            "t CO2 /t",
            "off-spec",
            "tapped err t",
            "infeasible",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        s = self.summary()
        for plant in [*self.plants, "all"]:
            for arm in self.config.arms:
                f = s[arm][plant]
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            plant,
                            ARM_LABELS[arm],
                            f"{f['orders']:.0f}",
                            f"{f['cost_t']:.2f}",
                            f"{f['kwh_t']:.1f}",
                            f"{f['co2_t']:.4f}",
                            f"{f['off_spec']:.1%}",
                            f"{f['tapped_err']:.2f}",
                            f"{f['infeasible']:.0f}",
                        ]
                    )
                    + " |"
                )
        return "\n".join(lines)

    def family_table(self) -> str:
        head = ["order family", "arm", "orders", "cost /t", "off-spec", "infeasible"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        fam = self.by_family()
        for name, *_ in FAMILIES:
            for arm in self.config.arms:
                f = fam[arm][name]
                lines.append(
                    f"| {name} | {ARM_LABELS[arm]} | {f['orders']:.0f} | "
                    f"{f['cost_t']:.2f} | {f['off_spec']:.1%} | "
                    f"{f['infeasible']:.0f} |"
                )
        return "\n".join(lines)


def _figures(rows: Sequence[OrderResult]) -> dict[str, float]:
    if not rows:
        return {
            k: math.nan
            for k in (
                "orders",
                "cost_t",
                "kwh_t",
                "co2_t",
                "off_spec",
                "tapped_err",
                "infeasible",
                *(f"off_{el}" for el in ELEMENTS),
            )
        }
    tapped = sum(r.tapped_t for r in rows)
    return {
        "orders": float(len(rows)),
        "cost_t": sum(r.cost for r in rows) / tapped,
        "kwh_t": sum(r.kwh for r in rows) / tapped,
        "co2_t": sum(r.co2_t for r in rows) / tapped,
        "off_spec": float(np.mean([r.off_spec for r in rows])),
        "tapped_err": float(np.mean([abs(r.tapped_t - r.tapped_aim_t) for r in rows])),
        "infeasible": float(sum(r.infeasible for r in rows)),
        **{f"off_{el}": float(np.mean([el in r.off_elements for r in rows])) for el in ELEMENTS},
    }


# -- the plants' knowledge of themselves -----------------------------------------------


@dataclass
class Site:
    """What a plant knows before the orders: its heats, practice and serving model."""

    profile: PlantProfile
    sim: SimulatedPlant
    served: Any  # models.served.ServedModel
    mix: np.ndarray  # historical average fraction per grade
    practice_yield: float  # tapped / charged, historical
    practice_tap_t: float
    quantiles: dict[str, dict[float, float]]  # element -> q -> measured tap %
    reference: dict[str, float]  # mean charge of the calibration heats, t per grade


def _practice_plan(profile: PlantProfile, mix: np.ndarray) -> tuple[ProcessPlan, dict[str, dict]]:
    """The order's process plan from the plant's practice, and each grade's own lime
    (gangue flux) and oxygen (DRI/HBI need less, pig iron's carbon more): the rules the
    plant's operators follow (agent.sim.plant)."""
    dri = float(mix[g.DIRECT_REDUCED].sum())
    pig = float(mix[g.PIG_IRON].sum())
    plan = ProcessPlan(
        hot_heel_t=profile.hot_heel_t,
        lime_kg_t=profile.lime_kg_t,
        carbon_kg_t=profile.carbon_kg_t,
        oxygen_nm3_t=profile.oxygen_nm3_t + 16.0 * dri - 40.0 * pig,
        gas_nm3_t=profile.gas_nm3_t,
        power_off_min=profile.power_off_min,
    )
    extras = {}
    for j, grade in enumerate(GRADES):
        o2 = -16.0 if g.DIRECT_REDUCED[j] else 40.0 if g.PIG_IRON[j] else 0.0
        extras[grade] = {
            "extra_lime_kg_t": LIME_PER_GANGUE * 1e3 * float(g.GANGUE[j]),
            "extra_oxygen_nm3_t": o2,
        }
    return plan, extras


def _build_sites(cfg: ChargeConfig, workdir: Path, notes: list[str]) -> list[Site]:
    import torch

    from alchimia.agent.learn.serving import ServingFiles
    from alchimia.agent.sim import default_plants
    from alchimia.experiment_federation import FederationConfig, federate, simulate
    from alchimia.models.calibration import Calibration
    from alchimia.models.onnx_build import build_onnx
    from alchimia.models.power_on import PowerOnEstimate
    from alchimia.models.served import load_served
    from alchimia.models.spec import ModelSpec

    fcfg = FederationConfig(sizes=cfg.sizes, seed=cfg.seed, rounds=cfg.rounds)
    data = simulate(fcfg)
    spec = ModelSpec(architecture="eaf-hybrid-v1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shared, site_parts = federate(spec, fcfg, data)
    finally:
        torch.set_num_threads(threads)
    sites = []
    for (profile, seed), d, part, n in zip(
        default_plants(len(cfg.sizes), cfg.seed), data, site_parts, cfg.sizes, strict=True
    ):
        sim = SimulatedPlant(profile, seed)
        heats = sim.heats(n + cfg.calibration_heats)
        x = np.array([[h.inputs[f] for f in FEATURES] for h in heats], np.float64)
        y = np.array([[h.outcome[t] for t in TARGETS] for h in heats], np.float64)
        assert np.array_equal(x[: len(d.x_train)].astype(np.float32), d.x_train)
        files = ServingFiles(workdir / profile.name)
        files.save_model(cfg.rounds, spec, build_onnx(spec, shared, part or None))
        files.save_power_on(PowerOnEstimate.fit(x, FEATURES))
        held = slice(len(d.x_train), None)  # never trained on
        pred = load_served(files.dir).predictor.predict(x[held])
        cal = Calibration(TARGETS, version=cfg.rounds)
        cal.reset(pred, y[held], cfg.rounds)
        files.save_calibration(cal)
        served = load_served(files.dir)
        assert served.power_on is not None  # saved above
        charges = x[:, : len(GRADES)]
        mix = charges.sum(axis=0) / charges.sum()
        tapped = y[:, TARGETS.index("tapped_t")]
        quantiles = {
            el: {
                q: float(np.quantile(y[:, TARGETS.index(f"{el}_pct")], q)) for q in (0.6, 0.9, 0.99)
            }
            for el in ELEMENTS
        }
        reference = dict(zip(GRADES, map(float, charges[held].mean(axis=0)), strict=True))
        sites.append(
            Site(
                profile,
                sim,
                served,
                mix,
                float(tapped.sum() / charges.sum()),
                float(tapped.mean()),
                quantiles,
                reference,
            )
        )
        notes.append(
            f"{profile.name}: {len(d.x_train)} heats trained, {cal.n} calibration "
            f"heats, power-on estimate rmse {served.power_on.rmse:.2f} min"
        )
    return sites


# -- orders ----------------------------------------------------------------------------


def _spec_round(v: float) -> float:
    """A limit as a specification writes it: two significant digits."""
    return float(f"{v:.2g}")


def make_order(site: Site, rng: np.random.Generator, k: int) -> tuple[str, Order, Stock]:
    """Order ``k`` for ``site``: family, window, tonnes, prices and stock of the day."""
    weights = np.array([f[1] for f in FAMILIES])
    fam = FAMILIES[int(rng.choice(len(FAMILIES), p=weights / weights.sum()))]
    name, _, tramp_factor, q, other_factor = fam
    chemistry = {}
    for el in ELEMENTS:
        base = (
            tramp_factor * site.quantiles[el][q]
            if el in ("cu", "sn")
            else other_factor * site.quantiles[el][0.99]
        )
        chemistry[el] = Window(max=_spec_round(base))
    p = site.profile
    tapped = round(site.practice_tap_t * float(rng.uniform(0.93, 1.0)))
    plan, extras = _practice_plan(p, site.mix)
    order = Order(
        name=f"{p.name}-{k:03d} {name}",
        tapped_t=tapped,
        tapped_tolerance_t=1.0,
        tap_temp_aim_c=p.tap_temp_aim_c + 10.0 * int(rng.integers(0, 2)),
        chemistry=chemistry,
        plan=plan,
    )
    charge_t = tapped / site.practice_yield
    volume = float(site.mix * charge_t @ (1.0 / g.DENSITY_T_M3))
    grades = {}
    for j, grade in enumerate(GRADES):
        if site.mix[j] < 0.005:
            continue
        avail = round(max(float(rng.uniform(1.3, 2.5)) * site.mix[j] * charge_t, 8.0))
        price = PRICE_PER_T[grade] * (1.0 + PRICE_SIGMA * float(rng.standard_normal()))
        grades[grade] = GradeStock(
            available_t=avail,
            price_per_t=round(price, 1),
            density_t_m3=float(g.DENSITY_T_M3[j]),
            co2_t_per_t=CO2_T_PER_T[grade],
            **extras[grade],
        )
    stock = Stock(
        energy_price_per_kwh=ENERGY_PRICE_PER_KWH,
        co2_price_per_t=CO2_PRICE_PER_T,
        electricity_co2_t_per_mwh=ELECTRICITY_CO2_T_PER_MWH,
        basket_volume_m3=round(1.15 * volume / p.n_baskets),
        baskets=p.n_baskets,
        grades=grades,
    )
    return name, order, stock


def practice_charge(site: Site, order: Order, stock: Stock) -> dict[str, float]:
    """Arm (a): the plant's usual mix (the grades it stocks) scaled to the order's tonnes
    by its historical yield."""
    share = {gr: float(site.mix[GRADES.index(gr)]) for gr in stock.grades}
    total = sum(share.values())
    return {gr: v / total * order.tapped_t / site.practice_yield for gr, v in share.items()}


def plan_inputs(order: Order, stock: Stock, charge: dict[str, float]) -> dict[str, float]:
    """The executed plan of a charge: the order's process plan applied to it."""
    total = sum(charge.values())
    pl = order.plan
    lime = pl.lime_kg_t * total + sum(
        stock.grades[k].extra_lime_kg_t * v for k, v in charge.items()
    )
    o2 = pl.oxygen_nm3_t * total + sum(
        stock.grades[k].extra_oxygen_nm3_t * v for k, v in charge.items()
    )
    out = {f"charge_{k}_t": float(v) for k, v in charge.items()}
    out.update(
        lime_t=lime / 1e3,
        carbon_kg=pl.carbon_kg_t * total,
        oxygen_nm3=o2,
        gas_nm3=pl.gas_nm3_t * total,
        power_off_min=pl.power_off_min,
        tap_temp_aim_c=order.tap_temp_aim_c,
    )
    return out


def _score(
    site: Site,
    family: str,
    arm: str,
    order: Order,
    stock: Stock,
    charge: dict[str, float],
    index: int,
    infeasible: bool,
) -> OrderResult:
    heat = site.sim.execute(plan_inputs(order, stock, charge), index)
    tapped = heat.outcome["tapped_t"]
    kwh = heat.outcome["energy_kwh_t"] * tapped
    co2 = (
        sum(stock.grades[k].co2_t_per_t * v for k, v in charge.items())
        + stock.electricity_co2_t_per_mwh * kwh / 1e3
    )
    cost = (
        sum(stock.grades[k].price_per_t * v for k, v in charge.items())
        + stock.energy_price_per_kwh * kwh
        + stock.co2_price_per_t * co2
    )
    off = tuple(
        el
        for el, window in order.chemistry.items()
        if (window.max is not None and heat.outcome[f"{el}_pct"] > window.max)
        or (window.min is not None and heat.outcome[f"{el}_pct"] < window.min)
    )
    return OrderResult(
        site.profile.name,
        family,
        arm,
        order.tapped_t,
        tapped,
        cost,
        kwh,
        co2,
        bool(off),
        off,
        infeasible,
        sum(charge.values()),
    )


def run_charge_experiment(
    cfg: ChargeConfig, out_png: Path | None = None, workdir: Path | None = None
) -> ChargeResult:
    from alchimia.models.charge.optimizer import optimize

    started = time.perf_counter()
    unknown = set(cfg.arms) - set(ARMS)
    if unknown or "practice" not in cfg.arms:
        raise ValueError(f"arms must include practice and come from {ARMS}")
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        sites = _build_sites(cfg, workdir or Path(tmp), notes)
    rows: list[OrderResult] = []
    for site in sites:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xC4A9, sites.index(site)]))
        for k in range(cfg.orders):
            family, order, stock = make_order(site, rng, k)
            site.sim.next_heat()  # the plant's own production between two orders
            index = site.sim.heat_index  # both arms meet this heat's lots and noise
            practice = practice_charge(site, order, stock)
            rows.append(_score(site, family, "practice", order, stock, practice, index, False))
            for arm in cfg.arms[1:]:
                kwargs: dict[str, Any] = {"model": site.served}
                if arm == "optimised":
                    kwargs["reference"] = site.reference
                elif arm == "plain":
                    kwargs["joint"] = False
                else:
                    kwargs["model"] = replace(site.served, calibration=None)
                plan = optimize(order, stock, risk=cfg.risk, start=practice, **kwargs)
                rows.append(
                    _score(site, family, arm, order, stock, plan.charge, index, not plan.feasible)
                )
    result = ChargeResult(cfg, [s.profile.name for s in sites], rows, notes)
    result.wall_s = time.perf_counter() - started
    if out_png is not None:
        result.png = plot(result, out_png)
    return result


def plot(result: ChargeResult, out_png: Path) -> Path:
    """Per plant: cost per tonne, kWh/t, CO2 per tonne and off-spec rate, one bar per arm."""
    from alchimia import figures

    s = result.summary()
    panels = (
        ("cost_t", "cost per t tapped"),
        ("kwh_t", "kWh/t"),
        ("co2_t", "t CO2 per t"),
        ("off_spec", "off-spec rate"),
    )
    fig, axes = figures.subplots(1, len(panels), figsize=(19, 4.2))
    arms = list(result.config.arms)
    width = 0.8 / len(arms)
    names = [*result.plants, "all"]
    pos = np.arange(len(names))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, arm in enumerate(arms):
            ax.bar(pos + i * width, [s[arm][p][key] for p in names], width, label=ARM_LABELS[arm])
        if key == "off_spec":
            ax.axhline(result.config.risk, color="k", ls="--", lw=1, label="risk asked")
        else:
            vals = [s[a][p][key] for a in arms for p in names]
            lo, hi = min(vals), max(vals)
            ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        ax.set_xticks(pos + 0.4 - width / 2, names)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    c = result.config
    fig.suptitle(
        f"Charge experiment, seed {c.seed}: {c.orders} orders per plant, "
        f"risk {c.risk:g}, {c.rounds} federation rounds"
    )
    return figures.save(fig, out_png)


# -- command line (torch is imported only when the experiment runs) ---------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ChargeConfig()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--orders", type=int, default=d.orders, help="orders per plant")
    parser.add_argument("--risk", type=float, default=d.risk)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(d.sizes),
        help="heats per plant (the federation experiment's plants)",
    )
    parser.add_argument("--rounds", type=int, default=d.rounds, help="federation rounds")
    parser.add_argument(
        "--calibration-heats",
        type=int,
        default=d.calibration_heats,
        help="heats predicted by the served model after its training, "
        "added to the held-out heats for calibration",
    )
    parser.add_argument("--arms", nargs="+", default=list(d.arms), choices=ARMS)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/charge-experiment.png"),
        help="PNG per seed (-seedN is appended)",
    )
    parser.add_argument("--json", type=Path, help="write every seed's figures here")
    parser.add_argument("--no-plot", action="store_true")


def run(args: argparse.Namespace) -> int:
    everything = {}
    for seed in args.seeds:
        cfg = ChargeConfig(
            seed=seed,
            sizes=tuple(args.sizes),
            rounds=args.rounds,
            orders=args.orders,
            risk=args.risk,
            calibration_heats=args.calibration_heats,
            arms=tuple(args.arms),
        )
        png = (
            None
            if args.no_plot
            else args.out.with_name(f"{args.out.stem}-seed{seed}{args.out.suffix}")
        )
        result = run_charge_experiment(cfg, png)
        print(
            f"seed {seed}: plants {', '.join(result.plants)} with "
            f"{', '.join(map(str, cfg.sizes))} heats; eaf-hybrid-v1, {cfg.rounds} FedAvg "
            f"rounds; {cfg.orders} orders per plant, risk {cfg.risk:g}"
        )
        for note in result.notes:
            print(f"  {note}")
        print(result.table())
        print()
        print(result.family_table())
        if result.png is not None:
            print(f"plot: {result.png}")
        print(f"wall time: {result.wall_s:.1f} s")
        everything[seed] = {"summary": result.summary(), "by_family": result.by_family()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(everything, indent=1))
    return 0
