"""Plant profiles and the heat generator.

A heat is built physics first: a charge drawn around the plant's practice mix, lot
compositions drawn from skewed per-grade distributions shifted by the plant's suppliers,
tapped mass and chemistry by mass balance, and electrical energy from a Köhle-type
statistical form (EAF.md; coefficients as recalled, check) with plant, scrap-quality and
drift terms. Every heat uses its own random stream derived from (seed, heat index), so a
drift can never change the heats before its start.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from alchimia.agent.records import SIGNAL_FIELDS, Heat
from alchimia.agent.sim import grades as g
from alchimia.agent.sim.drift import Drift, HeatEffects
from alchimia.agent.sim.grades import ELEMENTS, GRADE_INDEX, FloatArray
from alchimia.agent.sim.signals import SignalSpec, signal_arrays
from alchimia.models.schema import FEATURES, GRADES, TARGETS

CLOCK_START_TS = 1767225600.0  # 2026-01-01T00:00:00Z
POWER_FACTOR = 0.80  # mean over a heat (check)
UTILISATION = 0.78  # mean active power / (MVA x power factor) over power-on (assumption)
LOTS_PER_GRADE = 3  # deliveries mixed in one heat's share of a grade (assumption)
LIME_PER_GANGUE = 1.0  # t lime per t SiO2 + Al2O3 to keep the slag basic (check)
WATER_KWH_PER_KG = 1.5  # evaporate water and heat the steam to off-gas temperature (check)
_HBI = GRADE_INDEX["HBI"]
_N_GRADES = len(GRADES)


@dataclass(frozen=True)
class PlantProfile:
    """What makes one plant's heats different from another's.

    ``mix`` is the practice's fraction of the charge per grade (``models.schema.GRADES``
    order). ``supplier_scale`` multiplies each grade's mean residuals per element and
    ``supplier_skew`` widens each grade's lognormal spread: together, the plant's suppliers.
    ``efficiency`` multiplies the furnace's thermal losses (1.0 = typical, higher = worse).
    """

    name: str
    capacity_t: float
    hot_heel_t: float
    transformer_mva: float
    efficiency: float
    mix: tuple[float, ...]
    supplier_scale: tuple[tuple[float, ...], ...] = ()  # () means all ones
    supplier_skew: tuple[float, ...] = ()  # () means all zeros
    supplier: str = "generic"
    furnace: str = "EAF1"
    n_baskets: int = 3
    mix_concentration: float = 20.0  # Dirichlet concentration: higher, steadier charges
    lime_kg_t: float = 64.0
    carbon_kg_t: float = 16.0
    oxygen_nm3_t: float = 35.0
    gas_nm3_t: float = 7.0
    power_off_min: float = 12.0
    tap_temp_aim_c: float = 1640.0
    base_loss_kwh_t: float = 80.0  # see _energy_kwh_t

    def __post_init__(self) -> None:
        if len(self.mix) != _N_GRADES:
            raise ValueError(f"mix needs {_N_GRADES} fractions in GRADES order")
        if any(not math.isfinite(x) or x < 0 for x in self.mix) or sum(self.mix) <= 0:
            raise ValueError("mix fractions must be finite, >= 0 and not all zero")
        if abs(sum(self.mix) - 1.0) > 1e-6:
            object.__setattr__(self, "mix", tuple(x / sum(self.mix) for x in self.mix))
        if self.supplier_scale and (
            len(self.supplier_scale) != _N_GRADES
            or any(len(row) != len(ELEMENTS) for row in self.supplier_scale)
        ):
            raise ValueError(f"supplier_scale must be {_N_GRADES} rows of {len(ELEMENTS)}")
        if self.supplier_skew and len(self.supplier_skew) != _N_GRADES:
            raise ValueError(f"supplier_skew needs {_N_GRADES} values")
        if not 0 < self.hot_heel_t < self.capacity_t:
            raise ValueError("need 0 < hot_heel_t < capacity_t")
        for name in ("transformer_mva", "efficiency", "mix_concentration", "power_off_min"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.n_baskets < 1:
            raise ValueError("n_baskets must be >= 1")

    def mix_by_grade(self) -> dict[str, float]:
        return dict(zip(GRADES, self.mix, strict=True))

    def composition_means(self) -> FloatArray:
        """Mean residual wt% per (grade, element) as delivered by this plant's suppliers."""
        scale = np.array(self.supplier_scale) if self.supplier_scale else 1.0
        return g.COMPOSITION_PCT * scale

    def composition_sigma(self) -> FloatArray:
        """Lognormal spread per grade for this plant's suppliers."""
        skew = np.array(self.supplier_skew) if self.supplier_skew else 0.0
        return g.SIGMA + skew


@dataclass(frozen=True)
class HeatTruth:
    """Hidden quantities of a simulated heat, for tests and scrap-characterisation checks."""

    lot_pct: FloatArray  # actual residual wt% per (grade, element) in this heat's charge
    yields: FloatArray  # actual metallic yield per grade, moisture included
    recovery: FloatArray  # per element
    heel_pct: FloatArray  # hot heel composition carried from the previous heat
    tap_pct: FloatArray  # bath composition before analysis noise
    tapped_t: float  # before rounding
    moisture_frac: float
    extra_loss_kwh_t: float
    planned_energy_kwh_t: float


@dataclass(frozen=True)
class SimulatedHeat(Heat):
    """A simulated heat: the neutral record with its signals and its hidden truth."""

    signal_spec: SignalSpec | None = field(default=None, repr=False)
    truth: HeatTruth | None = field(default=None, repr=False, compare=False)

    def signal_arrays(self, period_s: float = 1.0) -> tuple[FloatArray, dict[str, FloatArray]]:
        """Timestamps and one array per field, for bulk use."""
        if self.signal_spec is None:
            raise ValueError(f"heat {self.heat_id} carries no signal spec (not simulated)")
        return signal_arrays(self.signal_spec, self.start_ts, period_s)

    def signals(self, period_s: float = 1.0) -> Iterator[tuple[float, dict[str, float]]]:
        """Sensor rows (unix ts, field -> value) over power-on and power-off time."""
        ts, arrays = self.signal_arrays(period_s)
        columns = [arrays[name].tolist() for name in SIGNAL_FIELDS]
        for t, row in zip(ts.tolist(), zip(*columns, strict=True), strict=True):
            yield t, dict(zip(SIGNAL_FIELDS, row, strict=True))


def _energy_kwh_t(
    masses: FloatArray,
    metal_t: float,
    tapped_t: float,
    lime_t: float,
    oxygen_nm3: float,
    gas_nm3: float,
    carbon_kg: float,
    minutes: float,
    tap_temp_c: float,
    heel_delta_t: float,
    efficiency: float,
    loss_kwh_t: float,
    water_kg: float,
) -> float:
    """Electrical energy per t tapped, noise free.

    Köhle form (EAF.md, coefficients as recalled, check) with G_E the dry charge, G_A the
    tapped steel, G_Z the lime, the melting part scaled by the charge's mass-weighted grade
    quality factor. Solid pig iron gets -150 instead of hot metal's -350 (brings carbon
    and silicon to burn but no sensible heat; invented, check). With the recalled
    constant, typical O2 (35 Nm3/t) and gas (7 Nm3/t) the form gives ~330 kWh/t, below
    the 400-435 kWh/t quoted for cold scrap, so a plant loss term (``loss_kwh_t``, cooling
    panels and off-gas, ~80 kWh/t) closes the gap; it and the time term are the thermal
    losses that ``efficiency`` multiplies. Slag foaming saturates with carbon (invented).
    """
    ga = tapped_t
    quality = float(masses @ g.ENERGY_FACTOR) / float(masses.sum())
    melt = (
        375.0
        + 400.0 * (metal_t / ga - 1.0)
        + 80.0 * float(masses[g.DIRECT_REDUCED].sum()) / ga
        - 50.0 * float(masses[g.SHREDDED].sum()) / ga
        - 150.0 * float(masses[g.PIG_IRON].sum()) / ga
        + 1000.0 * lime_t / ga
        + 0.3 * (tap_temp_c - 1600.0)
    )
    losses = efficiency * (loss_kwh_t + 1.0 * minutes)
    chemical = -8.0 * gas_nm3 / ga - 4.3 * oxygen_nm3 / ga
    foaming = -15.0 * (1.0 - math.exp(-carbon_kg / ga / 8.0))
    heel = -1.0 * heel_delta_t  # a bigger heel starts the flat bath earlier (invented)
    moisture = WATER_KWH_PER_KG * water_kg / ga
    return quality * melt + losses + chemical + foaming + heel + moisture


class SimulatedPlant:
    """Generates a plant's heats back to back; deterministic in (profile, seed, drifts)."""

    def __init__(self, profile: PlantProfile, seed: int, drifts: Sequence[Drift] = ()) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        for d in drifts:
            if not isinstance(d, Drift):
                raise TypeError(f"drifts must be Drift instances, got {d!r}")
        self.profile = profile
        self.seed = int(seed)
        self.drifts: tuple[Drift, ...] = tuple(drifts)
        self._index = 0
        self._clock = CLOCK_START_TS
        self._mix = np.array(profile.mix)
        self._means = profile.composition_means()
        self._sigma = profile.composition_sigma()
        # The first heel is steel of the practice mix at mean composition.
        metal = self._mix * g.YIELD
        self._heel_pct = (metal @ self._means) * g.RECOVERY / metal.sum()

    @property
    def heat_index(self) -> int:
        """Index of the next heat (= number of heats generated so far)."""
        return self._index

    def heats(self, n: int) -> list[SimulatedHeat]:
        return [self.next_heat() for _ in range(n)]

    def next_heat(self) -> SimulatedHeat:
        heat = self._simulate(self._index, None)
        self._heel_pct = heat.truth.tap_pct  # type: ignore[union-attr]
        self._clock += (heat.inputs["power_on_min"] + heat.inputs["power_off_min"]) * 60.0
        self._index += 1
        return heat

    def execute(self, plan: Mapping[str, float], index: int | None = None) -> SimulatedHeat:
        """Melt a given charge with a given process plan here, without advancing the plant.

        ``plan`` holds ``charge_{grade}_t`` per grade (absent: 0) and the process plan:
        ``lime_t``, ``carbon_kg``, ``oxygen_nm3``, ``gas_nm3``, ``power_off_min`` and
        ``tap_temp_aim_c``. The plant's hidden truth does the rest: the lots' real
        compositions and yields, the hot heel the previous heat left (its mass and
        composition: the plant's current heel), delays on top of the planned power-off
        time, moisture and drift, and the arc runs until the charge is melted, so the
        plan's ``hot_heel_t`` and ``power_on_min``, if given, are ignored.

        The heat draws the random stream of heat ``index`` (default: the next heat) in
        the same order as :meth:`next_heat`, so two charges executed at one index meet
        the same lots, heel, delays and measurement noise (common random numbers), and
        the plant's own heats stay what they were: the index, clock and heel do not move.
        """
        i = self._index if index is None else index
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 0:
            raise ValueError(f"index must be a non-negative int, got {index!r}")
        return self._simulate(int(i), _Executed.from_plan(plan))

    def _simulate(self, i: int, given: _Executed | None) -> SimulatedHeat:
        """Heat ``i``: the practice's own (``given`` None) or a given plan's."""
        p = self.profile
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, i]))
        fx = HeatEffects()
        for d in self.drifts:
            if d.active(i):
                fx = d.apply(i, fx)

        # --- charge: practice mix (possibly re-balanced for a new HBI share), Dirichlet-like
        mix = self._mix
        if fx.hbi_share is not None:
            rest = 1.0 - mix[_HBI]
            mix = mix * ((1.0 - fx.hbi_share) / rest) if rest > 0 else np.zeros_like(mix)
            mix[_HBI] = fx.hbi_share
        gam = rng.gamma(np.maximum(mix * p.mix_concentration, 1e-3))
        frac = np.where(mix > 0, gam, 0.0)
        frac /= frac.sum()
        heel_t = round(float(np.clip(p.hot_heel_t + 1.5 * rng.standard_normal(), 10, 20)), 1)
        target_tap = p.capacity_t - p.hot_heel_t
        charge_t = target_tap / float(frac @ g.YIELD) * (1.0 + 0.015 * rng.standard_normal())
        masses = np.round(frac * charge_t, 1) if given is None else given.masses
        total_t = float(masses.sum())
        baskets = rng.dirichlet(np.full(p.n_baskets, 8.0)) if p.n_baskets > 1 else np.ones(1)
        baskets = np.sort(baskets)[::-1]  # the first basket is the biggest

        # --- process plan
        z = rng.standard_normal(6)
        gangue_t = float(masses @ g.GANGUE)
        lime_kg = p.lime_kg_t * (1 + 0.08 * z[0]) * total_t + LIME_PER_GANGUE * 1e3 * gangue_t
        lime_t = round(lime_kg / 1e3, 2)
        carbon_kg = round(max(p.carbon_kg_t * (1 + 0.12 * z[1]), 2.0) * total_t)
        if given is not None:
            lime_t, carbon_kg = given.lime_t, given.carbon_kg
        dri_shift = float(frac[g.DIRECT_REDUCED].sum() - self._mix[g.DIRECT_REDUCED].sum())
        pig_shift = float(frac[g.PIG_IRON].sum() - self._mix[g.PIG_IRON].sum())
        # Per +1 % HBI/DRI, -0.16 Nm3/t O2 (Arzpeyma et al.); pig iron's ~4.3 % C needs
        # ~40 Nm3 O2 per t to burn to CO (stoichiometry).
        o2_t = max(p.oxygen_nm3_t - 16.0 * dri_shift + 40.0 * pig_shift, 10.0)
        oxygen_nm3 = round(o2_t * (1 + 0.07 * z[2]) * total_t)
        gas_nm3 = round(max(p.gas_nm3_t * (1 + 0.10 * z[3]), 0.0) * total_t)
        delay = rng.exponential(15.0) if rng.random() < 0.06 else 0.0  # occasional long waits
        planned_off = p.power_off_min if given is None else given.power_off_min
        off_min = round(float(np.clip(planned_off * math.exp(0.18 * z[4]) + delay, 6, 90)), 1)
        aim_c = p.tap_temp_aim_c + 10.0 * int(rng.integers(-1, 3))  # steel grade's aim
        if given is not None:
            oxygen_nm3, gas_nm3, aim_c = given.oxygen_nm3, given.gas_nm3, given.tap_temp_aim_c

        # Power-on time is planned from the nominal energy of this charge (no drift, no
        # noise; 38 min stands in for the not yet known power-on time in the time term)
        # and the transformer, so it does not leak the actual outcome.
        metal_nom = float(masses @ g.YIELD)
        planned = _energy_kwh_t(
            masses,
            total_t,
            metal_nom,
            lime_t,
            oxygen_nm3,
            gas_nm3,
            carbon_kg,
            38.0 + off_min,
            aim_c,
            0.0,
            p.efficiency,
            p.base_loss_kwh_t,
            0.0,
        )
        power_mw = p.transformer_mva * POWER_FACTOR * UTILISATION
        on_min = planned * metal_nom / (power_mw * 1e3) * 60.0 * math.exp(0.03 * z[5])
        on_min = round(float(np.clip(on_min, 15.0, 90.0)), 1)

        # --- actual lots: each grade's share of the charge mixes LOTS_PER_GRADE deliveries,
        # each skewed (lognormal), supplier shifted, with one contamination factor per lot.
        sigma = (self._sigma + fx.extra_sigma)[None, :, None]
        zc = rng.standard_normal((LOTS_PER_GRADE, _N_GRADES, 1))
        ze = rng.standard_normal((LOTS_PER_GRADE, _N_GRADES, len(ELEMENTS)))
        shock = sigma * (0.5 * zc + math.sqrt(0.75) * ze) - 0.5 * sigma**2
        lot_pct = self._means * fx.comp_scale * np.exp(shock).mean(axis=0)
        water = fx.moisture_frac * g.TAKES_MOISTURE
        yields = g.YIELD * (1 + 0.01 * rng.standard_normal(_N_GRADES)) + fx.yield_delta
        yields = np.clip(yields, 0.5, 0.99)
        yields = yields * (1.0 - water)
        tapped_true = float(masses @ yields)
        dry_t = float(masses @ (1.0 - water))
        water_kg = (total_t - dry_t) * 1e3

        # --- chemistry by mass balance, heel carried from the previous heat
        recovery = g.RECOVERY.copy()
        recovery[g.CR] = g.cr_recovery(oxygen_nm3 / tapped_true)
        charged = recovery * ((masses * yields) @ lot_pct)  # wt% x t
        tap_pct = (heel_t * self._heel_pct + charged) / (heel_t + tapped_true)
        noise_rel = 0.02 * rng.standard_normal(len(ELEMENTS))
        noise_abs = np.array([0.002, 0.0005, 0.002, 0.002, 0.0005]) * rng.standard_normal(
            len(ELEMENTS)
        )  # spectrometer repeatability (check)
        measured = np.clip(tap_pct * (1 + noise_rel) + noise_abs, 0.0, None)

        # --- temperature and energy
        # Long waits before tapping cool the bath a little (invented, check).
        tap_c = aim_c + 9.0 * rng.standard_normal() - 0.5 * max(off_min - 20.0, 0.0)
        energy = _energy_kwh_t(
            masses,
            dry_t,
            tapped_true,
            lime_t,
            oxygen_nm3,
            gas_nm3,
            carbon_kg,
            on_min + off_min,
            tap_c,
            heel_t - p.hot_heel_t,
            p.efficiency,
            p.base_loss_kwh_t + fx.extra_loss_kwh_t,
            water_kg,
        )
        energy *= 1.0 + 0.025 * rng.standard_normal()
        energy_kwh_t = round(energy, 1)
        tapped_t = round(tapped_true, 1)

        heat_id = f"{p.name}-{i:06d}" if given is None else f"{p.name}-{i:06d}-exec"
        inputs = dict.fromkeys(FEATURES, 0.0)
        for grade, mass in zip(GRADES, masses.tolist(), strict=True):
            inputs[f"charge_{grade}_t"] = mass
        inputs.update(
            hot_heel_t=heel_t,
            lime_t=lime_t,
            carbon_kg=float(carbon_kg),
            oxygen_nm3=float(oxygen_nm3),
            gas_nm3=float(gas_nm3),
            power_on_min=on_min,
            power_off_min=off_min,
            tap_temp_aim_c=aim_c,
        )
        outcome = dict(
            zip(
                TARGETS,
                [energy_kwh_t, tapped_t, float(round(tap_c))]
                + [round(float(x), 4) for x in measured],
                strict=True,
            )
        )
        signal_seed = np.random.SeedSequence([self.seed, zlib.crc32(heat_id.encode())])
        spec = SignalSpec(
            seed=int(signal_seed.generate_state(1)[0]),
            power_on_s=round(on_min * 60),
            power_off_s=round(off_min * 60),
            basket_fractions=tuple(float(b) for b in baskets),
            energy_kwh=energy_kwh_t * tapped_t,
            oxygen_nm3=float(oxygen_nm3),
            carbon_kg=float(carbon_kg),
            gas_nm3=float(gas_nm3),
            transformer_mva=p.transformer_mva,
            loss_factor=p.efficiency * (1.0 + fx.extra_loss_kwh_t / p.base_loss_kwh_t),
        )
        truth = HeatTruth(
            lot_pct=lot_pct,
            yields=yields,
            recovery=recovery,
            heel_pct=self._heel_pct,
            tap_pct=tap_pct,
            tapped_t=tapped_true,
            moisture_frac=fx.moisture_frac,
            extra_loss_kwh_t=fx.extra_loss_kwh_t,
            planned_energy_kwh_t=planned,
        )
        heat = SimulatedHeat(
            heat_id=heat_id,
            plant=p.name,
            furnace=p.furnace,
            start_ts=self._clock,
            inputs=inputs,
            outcome=outcome,
            signal_spec=spec,
            truth=truth,
        )
        return heat


@dataclass(frozen=True)
class _Executed:
    """A given charge and process plan (:meth:`SimulatedPlant.execute`)."""

    masses: FloatArray
    lime_t: float
    carbon_kg: float
    oxygen_nm3: float
    gas_nm3: float
    power_off_min: float
    tap_temp_aim_c: float

    @classmethod
    def from_plan(cls, plan: Mapping[str, float]) -> _Executed:
        grade_cols = {f"charge_{gr}_t" for gr in GRADES}
        known = grade_cols | set(EXECUTED_PLAN) | {"hot_heel_t", "power_on_min"}
        unknown = sorted(set(plan) - known)
        if unknown:
            raise ValueError(f"unknown plan entries {unknown}")
        missing = [k for k in EXECUTED_PLAN if k not in plan]
        if missing:
            raise ValueError(f"the plan needs {missing}")
        values = {k: float(plan[k]) for k in EXECUTED_PLAN}
        masses = np.array([float(plan.get(f"charge_{gr}_t", 0.0)) for gr in GRADES])
        if not (np.isfinite(masses).all() and all(map(math.isfinite, values.values()))):
            raise ValueError("plan values must be finite")
        if (masses < 0).any() or masses.sum() <= 0:
            raise ValueError("charge tonnes must be >= 0 and not all zero")
        if any(values[k] < 0 for k in EXECUTED_PLAN if k != "tap_temp_aim_c"):
            raise ValueError("process plan quantities must be >= 0")
        return cls(masses=masses, **values)


#: The process plan :meth:`SimulatedPlant.execute` takes besides the charge.
EXECUTED_PLAN = ("lime_t", "carbon_kg", "oxygen_nm3", "gas_nm3", "power_off_min", "tap_temp_aim_c")


# Practice archetypes cycled through by default_plants: (label, mix, practice overrides).
_ARCHETYPES: tuple[tuple[str, dict[str, float], dict[str, float]], ...] = (
    (
        "mixed",
        {
            "E3": 0.30,
            "E1": 0.08,
            "E2": 0.10,
            "E8": 0.05,
            "E40": 0.35,
            "EHRB": 0.07,
            "E46": 0.03,
            "E5H": 0.02,
        },
        {},
    ),
    (
        "rebar",
        {"EHRB": 0.28, "E1": 0.20, "E46": 0.15, "E40": 0.22, "E3": 0.10, "E5H": 0.05},
        {"tap_temp_aim_c": 1620.0},
    ),
    (
        "flat-dri",
        {"E2": 0.20, "E8": 0.12, "E6": 0.13, "E3": 0.10, "DRI": 0.25, "HBI": 0.10, "PIG": 0.10},
        {"oxygen_nm3_t": 31.0, "gas_nm3_t": 5.5, "carbon_kg_t": 13.0, "tap_temp_aim_c": 1650.0},
    ),
    (
        "prime",
        {"E2": 0.25, "E8": 0.20, "E6": 0.20, "E3": 0.20, "PIG": 0.10, "E40": 0.05},
        {"tap_temp_aim_c": 1650.0},
    ),
    ("shredded", {"E40": 0.55, "E3": 0.20, "E1": 0.10, "E46": 0.10, "E5H": 0.05}, {}),
    ("hbi-blend", {"HBI": 0.20, "E3": 0.30, "E40": 0.25, "E1": 0.15, "E2": 0.10}, {}),
    ("old-scrap", {"E3": 0.40, "E1": 0.30, "EHRB": 0.10, "E40": 0.15, "E46": 0.05}, {}),
    (
        "dri-heavy",
        {"DRI": 0.60, "E2": 0.15, "E3": 0.15, "E40": 0.10},
        {"oxygen_nm3_t": 28.0, "gas_nm3_t": 5.0, "carbon_kg_t": 12.0, "tap_temp_aim_c": 1650.0},
    ),
)


def default_plants(n: int, base_seed: int = 0) -> list[tuple[PlantProfile, int]]:
    """``n`` clearly different plants (mix, size 80-150 t, efficiency, suppliers) + seeds.

    Practices cycle through eight archetypes (mixed, rebar, flat with DRI, prime, ...).
    Sizes and efficiencies follow low-discrepancy (golden-ratio) sequences, so even three
    plants are far apart and plant k is the same whatever ``n``: ``default_plants(5)[:3]
    == default_plants(3)``, and an agent can ask for plant k alone. Deterministic in
    (k, base_seed).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    offsets = np.random.default_rng(np.random.SeedSequence([base_seed, 0xEAF])).random(2)
    out: list[tuple[PlantProfile, int]] = []
    for k in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([base_seed, 0xEAF, k]))
        size_u = (offsets[0] + k * 0.6180339887) % 1.0
        eff_u = (offsets[1] + k * 0.4142135624) % 1.0
        seed = int(np.random.SeedSequence([base_seed, 0x5EED, k]).generate_state(1)[0])
        label, mix_d, practice = _ARCHETYPES[k % len(_ARCHETYPES)]
        base = np.array([mix_d.get(gr, 0.0) for gr in GRADES])
        mix = np.where(base > 0, rng.gamma(np.maximum(base * 150.0, 1e-3)), 0.0)
        mix /= mix.sum()
        capacity = 80.0 + 70.0 * size_u
        heel = float(np.clip(0.12 * capacity + rng.normal(0, 1.0), 10.0, 20.0))
        # Suppliers: each grade's residuals shifted per plant, plus extra skew.
        common = rng.lognormal(0.0, 0.15, size=(_N_GRADES, 1))
        scale = common * rng.lognormal(0.0, 0.10, size=(_N_GRADES, len(ELEMENTS)))
        skew = rng.uniform(0.0, 0.25, size=_N_GRADES)
        kwargs: dict[str, float] = {
            "lime_kg_t": float(rng.normal(64.0, 5.0)),
            "carbon_kg_t": float(rng.normal(16.0, 1.5)),
            "oxygen_nm3_t": float(rng.uniform(31.0, 39.0)),
            "gas_nm3_t": float(rng.uniform(5.5, 9.5)),
            "power_off_min": float(rng.uniform(9.0, 14.0)),
            "tap_temp_aim_c": 1640.0,
        }
        kwargs.update(practice)
        kwargs["tap_temp_aim_c"] += 5.0 * int(rng.integers(-1, 2))
        n_baskets = int(rng.integers(2, 4))
        t_on_target = float(rng.uniform(34.0, 41.0))
        profile = PlantProfile(
            name=f"P{k + 1}",
            capacity_t=round(capacity, 1),
            hot_heel_t=round(heel, 1),
            transformer_mva=1.0,  # sized below from the practice's energy
            efficiency=round(0.88 + 0.27 * eff_u, 3),
            mix=tuple(round(float(x), 4) for x in mix),
            supplier_scale=tuple(tuple(round(float(x), 3) for x in row) for row in scale),
            supplier_skew=tuple(round(float(x), 3) for x in skew),
            supplier=f"{label}-suppliers-{k + 1}",
            furnace=f"P{k + 1}-EAF1",
            n_baskets=n_baskets,
            **kwargs,
        )
        mva = _size_transformer(profile, t_on_target)
        profile = replace(profile, transformer_mva=round(mva, 1))
        out.append((profile, seed))
    return out


def _size_transformer(profile: PlantProfile, t_on_min: float) -> float:
    """Transformer MVA that melts the practice charge in ``t_on_min`` (design rule)."""
    mix = np.array(profile.mix)
    tap = profile.capacity_t - profile.hot_heel_t
    charge = tap / float(mix @ g.YIELD)
    masses = mix * charge
    lime = profile.lime_kg_t * charge / 1e3 + LIME_PER_GANGUE * float(masses @ g.GANGUE)
    energy = _energy_kwh_t(
        masses,
        charge,
        tap,
        lime,
        profile.oxygen_nm3_t * charge,
        profile.gas_nm3_t * charge,
        profile.carbon_kg_t * charge,
        t_on_min + profile.power_off_min,
        profile.tap_temp_aim_c,
        0.0,
        profile.efficiency,
        profile.base_loss_kwh_t,
        0.0,
    )
    return energy * tap / (t_on_min / 60.0) / 1e3 / (POWER_FACTOR * UTILISATION)
