"""The furnace simulator: reproducible, physically plausible, and drifting only on cue."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from alchimia.agent.sim import (
    SIGNAL_FIELDS,
    Drift,
    HbiShareChange,
    Heat,
    PlantProfile,
    RefractoryWear,
    SeasonalMoisture,
    SimulatedHeat,
    SimulatedPlant,
    SupplierChange,
    default_plants,
    parse_drift,
)
from alchimia.agent.sim import grades as g
from alchimia.agent.sim.plant import CLOCK_START_TS
from alchimia.models.schema import FEATURES, GRADES, TARGETS


@pytest.fixture(scope="module")
def plants() -> list[tuple[PlantProfile, int]]:
    return default_plants(3)


@pytest.fixture(scope="module")
def heats_by_plant(plants: list[tuple[PlantProfile, int]]) -> dict[str, list[Heat]]:
    return {p.name: SimulatedPlant(p, seed).heats(600) for p, seed in plants}


def _col(heats: list[Heat], key: str) -> np.ndarray:
    source = "outcome" if key in TARGETS else "inputs"
    return np.array([getattr(h, source)[key] for h in heats])


def _charge(h: Heat) -> np.ndarray:
    return np.array([h.inputs[f"charge_{gr}_t"] for gr in GRADES])


# --- reproducibility and identity ------------------------------------------------------


def test_same_profile_seed_and_drifts_give_identical_heats_and_signals(
    plants: list[tuple[PlantProfile, int]],
) -> None:
    profile, seed = plants[0]
    drifts = (SupplierChange(5), RefractoryWear(0, campaign_heats=10))
    a = SimulatedPlant(profile, seed, drifts).heats(20)
    b = SimulatedPlant(profile, seed, drifts).heats(20)
    assert a == b
    ts_a, sig_a = a[-1].signal_arrays()
    ts_b, sig_b = b[-1].signal_arrays()
    np.testing.assert_array_equal(ts_a, ts_b)
    for name in SIGNAL_FIELDS:
        np.testing.assert_array_equal(sig_a[name], sig_b[name])


def test_other_seed_gives_other_heats(plants: list[tuple[PlantProfile, int]]) -> None:
    profile, seed = plants[0]
    a = SimulatedPlant(profile, seed).heats(5)
    b = SimulatedPlant(profile, seed + 1).heats(5)
    assert [h.outcome for h in a] != [h.outcome for h in b]


def test_default_plants_is_deterministic_and_scales_to_twenty() -> None:
    first = default_plants(20, base_seed=3)
    assert first == default_plants(20, base_seed=3)
    assert first != default_plants(20, base_seed=4)
    names = [p.name for p, _ in first]
    seeds = [s for _, s in first]
    assert len(set(names)) == 20 and len(set(seeds)) == 20
    caps = np.array([p.capacity_t for p, _ in first])
    assert caps.min() >= 80.0 and caps.max() <= 150.0 and caps.max() - caps.min() > 50.0
    assert all(10.0 <= p.hot_heel_t <= 20.0 for p, _ in first)
    assert default_plants(0) == []
    assert default_plants(7, base_seed=3)[:4] == first[:4]  # plant k does not depend on n
    with pytest.raises(ValueError):
        default_plants(-1)


def test_heat_fields_ids_and_back_to_back_clock(heats_by_plant: dict[str, list[Heat]]) -> None:
    heats = heats_by_plant["P1"]
    assert heats[0].start_ts == CLOCK_START_TS
    assert heats[42].heat_id == "P1-000042"
    assert len({h.heat_id for h in heats}) == len(heats)
    for h, nxt in itertools.pairwise(heats):
        assert tuple(h.inputs) == FEATURES
        assert tuple(h.outcome) == TARGETS
        assert h.plant == "P1" and h.furnace == "P1-EAF1"
        tap_to_tap_s = (h.inputs["power_on_min"] + h.inputs["power_off_min"]) * 60.0
        assert nxt.start_ts == pytest.approx(h.start_ts + tap_to_tap_s)


# --- plants differ, ranges are realistic -----------------------------------------------


def test_plants_differ_in_distributions(heats_by_plant: dict[str, list[Heat]]) -> None:
    names = sorted(heats_by_plant)
    for key in ("energy_kwh_t", "cu_pct", "tapped_t"):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                xa, xb = _col(heats_by_plant[a], key), _col(heats_by_plant[b], key)
                se = math.sqrt(xa.var() / xa.size + xb.var() / xb.size)
                assert abs(xa.mean() - xb.mean()) > 5 * se, (key, a, b)


def test_ranges_are_realistic(
    plants: list[tuple[PlantProfile, int]], heats_by_plant: dict[str, list[Heat]]
) -> None:
    for profile, _ in plants:
        heats = heats_by_plant[profile.name]
        energy = _col(heats, "energy_kwh_t")
        dri_share = profile.mix[GRADES.index("DRI")] + profile.mix[GRADES.index("HBI")]
        assert 330.0 < energy.mean() < (520.0 if dri_share > 0.2 else 460.0)
        assert np.percentile(energy, 1) > 280.0 and np.percentile(energy, 99) < 650.0
        tapped = _col(heats, "tapped_t")
        assert np.all(tapped > 0.75 * profile.capacity_t)
        assert np.all(tapped < profile.capacity_t)
        cu = _col(heats, "cu_pct")
        assert 0.01 < cu.mean() < 0.35 and cu.max() < 0.8
        temp = _col(heats, "tap_temp_c")
        assert temp.min() > 1560.0 and temp.max() < 1720.0
        for key in ("sn_pct", "ni_pct", "cr_pct", "mo_pct"):
            assert _col(heats, key).min() >= 0.0 and _col(heats, key).mean() < 0.2
        on = _col(heats, "power_on_min")
        assert 28.0 < on.mean() < 47.0
        off = _col(heats, "power_off_min")
        assert 8.0 < np.median(off) < 20.0 and off.max() > 25.0  # delays happen
        heel = _col(heats, "hot_heel_t")
        assert heel.min() >= 10.0 and heel.max() <= 20.0
        charge = np.array([_charge(h).sum() for h in heats])
        assert 40.0 < (_col(heats, "lime_t") * 1e3 / charge).mean() < 110.0
        assert 25.0 < (_col(heats, "oxygen_nm3") / charge).mean() < 42.0
        assert 4.0 < (_col(heats, "gas_nm3") / charge).mean() < 11.0
        assert 10.0 < (_col(heats, "carbon_kg") / charge).mean() < 20.0


# --- mass balance ------------------------------------------------------------------------


def test_tapped_mass_is_yield_weighted_charge(heats_by_plant: dict[str, list[Heat]]) -> None:
    for heats in heats_by_plant.values():
        for h in heats[:100]:
            assert h.truth is not None
            expected = float(_charge(h) @ h.truth.yields)
            assert h.outcome["tapped_t"] == pytest.approx(expected, abs=0.051)


def test_chemistry_is_mix_weighted_lot_composition(heats_by_plant: dict[str, list[Heat]]) -> None:
    for heats in heats_by_plant.values():
        for h in heats[:100]:
            t = h.truth
            assert t is not None
            heel = h.inputs["hot_heel_t"]
            metal = _charge(h) * t.yields
            expected = (heel * t.heel_pct + t.recovery * (metal @ t.lot_pct)) / (heel + metal.sum())
            np.testing.assert_allclose(t.tap_pct, expected, rtol=1e-12)
            assert h.outcome["cu_pct"] == pytest.approx(expected[0], rel=0.1, abs=0.008)


def test_mean_cu_matches_mix_weighted_grade_means(
    plants: list[tuple[PlantProfile, int]], heats_by_plant: dict[str, list[Heat]]
) -> None:
    for profile, _ in plants:
        heats = heats_by_plant[profile.name]
        means = profile.composition_means()[:, g.CU]
        predicted = [
            g.RECOVERY[g.CU] * float((_charge(h) * g.YIELD) @ means) / float(_charge(h) @ g.YIELD)
            for h in heats
        ]
        assert np.mean(_col(heats, "cu_pct")) == pytest.approx(np.mean(predicted), rel=0.05)


# --- signals -------------------------------------------------------------------------------


@pytest.mark.parametrize("period_s", [1.0, 5.0, 7.3])
def test_signal_integrals_match_heat_totals(
    heats_by_plant: dict[str, list[Heat]], period_s: float
) -> None:
    for heats in heats_by_plant.values():
        h = heats[3]
        ts, sig = h.signal_arrays(period_s)
        duration_s = (h.inputs["power_on_min"] + h.inputs["power_off_min"]) * 60.0
        assert ts[0] == h.start_ts
        assert ts.size == math.ceil(duration_s / period_s - 1e-9)
        assert set(sig) == set(SIGNAL_FIELDS)
        kwh = sig["active_power_mw"].sum() * period_s / 3.6
        assert kwh == pytest.approx(h.outcome["energy_kwh_t"] * h.outcome["tapped_t"], rel=0.01)
        oxygen = sig["lance_o2_nm3h"].sum() * period_s / 3600.0
        assert oxygen == pytest.approx(h.inputs["oxygen_nm3"], rel=0.01)
        carbon = sig["carbon_kgmin"].sum() * period_s / 60.0
        assert carbon == pytest.approx(h.inputs["carbon_kg"], rel=0.01)
        gas = sig["burner_gas_nm3h"].sum() * period_s / 3600.0
        assert gas == pytest.approx(h.inputs["gas_nm3"], rel=0.01)


def test_signals_are_physical_and_iterator_matches_arrays(
    plants: list[tuple[PlantProfile, int]], heats_by_plant: dict[str, list[Heat]]
) -> None:
    profile, _ = plants[1]
    h = heats_by_plant[profile.name][7]
    ts, sig = h.signal_arrays()
    power = sig["active_power_mw"]
    on_s = (power > 0).sum()
    assert on_s == pytest.approx(h.inputs["power_on_min"] * 60.0, abs=2)
    assert power.min() >= 0.0 and power.max() < 1.3 * profile.transformer_mva
    assert np.all(sig["current_ka"][power == 0] == 0.0)
    on = power > 0
    apparent_mva = math.sqrt(3.0) * sig["voltage_v"][on] * sig["current_ka"][on] / 1e3
    assert np.all(apparent_mva >= power[on])  # power factor <= 1
    assert np.all(sig["panel_water_out_c"] > sig["panel_water_in_c"])
    assert sig["electrode_pos_m"].min() > 0.0 and sig["electrode_pos_m"].max() <= 4.5
    assert sig["offgas_temp_c"].max() > 700.0
    rows = list(h.signals())
    assert len(rows) == ts.size
    t, row = rows[100]
    assert t == ts[100] and list(row) == list(SIGNAL_FIELDS)
    assert row["active_power_mw"] == power[100]


def test_signal_arguments_are_checked(heats_by_plant: dict[str, list[Heat]]) -> None:
    h = heats_by_plant["P1"][0]
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            h.signal_arrays(bad)
    bare = SimulatedHeat(h.heat_id, h.plant, h.furnace, h.start_ts, h.inputs, h.outcome)
    with pytest.raises(ValueError, match="signal spec"):
        next(bare.signals())


# --- drift ----------------------------------------------------------------------------------


def _pair(profile: PlantProfile, seed: int, drift: Drift, n: int) -> tuple[list[Heat], list[Heat]]:
    return SimulatedPlant(profile, seed).heats(n), SimulatedPlant(profile, seed, [drift]).heats(n)


@pytest.mark.parametrize(
    "drift",
    [
        SupplierChange(40),
        RefractoryWear(40, campaign_heats=50),
        HbiShareChange(40, share=0.3),
        SeasonalMoisture(40, period_heats=40),
    ],
)
def test_drift_changes_nothing_before_start_and_something_after(
    plants: list[tuple[PlantProfile, int]], drift: Drift
) -> None:
    profile, seed = plants[0]
    base, drifted = _pair(profile, seed, drift, 80)
    assert base[:40] == drifted[:40]
    assert [h.outcome for h in base[41:]] != [h.outcome for h in drifted[41:]]


def test_supplier_change_raises_cu(plants: list[tuple[PlantProfile, int]]) -> None:
    profile, seed = plants[0]
    base, drifted = _pair(profile, seed, SupplierChange(100, cu_factor=1.6), 400)
    before = _col(drifted[:100], "cu_pct").mean() / _col(base[:100], "cu_pct").mean()
    after = _col(drifted[150:], "cu_pct").mean() / _col(base[150:], "cu_pct").mean()
    assert before == 1.0
    assert after > 1.15
    assert _col(drifted[150:], "sn_pct").mean() > _col(base[150:], "sn_pct").mean()
    # Dirtier lots yield less steel per tonne charged.
    assert _col(drifted[150:], "tapped_t").mean() < _col(base[150:], "tapped_t").mean() - 0.3


def test_refractory_wear_raises_energy_through_campaign_and_resets(
    plants: list[tuple[PlantProfile, int]],
) -> None:
    profile, seed = plants[0]
    base, drifted = _pair(profile, seed, RefractoryWear(0, campaign_heats=200), 400)
    extra = _col(drifted, "energy_kwh_t") - _col(base, "energy_kwh_t")
    assert abs(extra[:20].mean()) < 2.0  # fresh lining
    assert extra[150:200].mean() > 15.0  # worn lining
    assert abs(extra[200:220].mean()) < 2.0  # relined
    assert extra[150:200].mean() > extra[50:100].mean() + 5.0
    assert drifted[199].truth is not None and drifted[200].truth is not None
    assert drifted[200].truth.extra_loss_kwh_t == 0.0 < drifted[199].truth.extra_loss_kwh_t


def test_hbi_share_change_sets_hbi_share_and_costs_energy(
    plants: list[tuple[PlantProfile, int]],
) -> None:
    profile, seed = plants[0]
    assert profile.mix[GRADES.index("HBI")] == 0.0
    base, drifted = _pair(profile, seed, HbiShareChange(100, share=0.3), 400)
    share = np.array([h.inputs["charge_HBI_t"] / _charge(h).sum() for h in drifted])
    assert np.all(share[:100] == 0.0)
    assert share[100:].mean() == pytest.approx(0.3, abs=0.03)
    gain = _col(drifted[100:], "energy_kwh_t").mean() - _col(base[100:], "energy_kwh_t").mean()
    assert gain > 20.0
    assert _col(drifted[100:], "cu_pct").mean() < _col(base[100:], "cu_pct").mean()


def test_seasonal_moisture_costs_energy_at_its_peak(plants: list[tuple[PlantProfile, int]]) -> None:
    profile, seed = plants[0]
    drift = SeasonalMoisture(50, amplitude=0.04, period_heats=200)
    base, drifted = _pair(profile, seed, drift, 260)
    peak = slice(120, 180)  # around start + period / 2
    gain = _col(drifted[peak], "energy_kwh_t").mean() - _col(base[peak], "energy_kwh_t").mean()
    assert gain > 20.0
    assert _col(drifted[peak], "tapped_t").mean() < _col(base[peak], "tapped_t").mean()
    trough = _col(drifted[245:], "energy_kwh_t") - _col(base[245:], "energy_kwh_t")
    assert abs(trough.mean()) < 5.0  # a year later the scrap is dry again


# --- parse_drift --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "drift",
    [
        SupplierChange(300),
        SupplierChange(
            7, grades=("E3", "EHRB"), cu_factor=2.5, sn_factor=1.0, skew=0.0, yield_delta=0.01
        ),
        RefractoryWear(0, campaign_heats=800, max_extra_kwh_t=12.5),
        HbiShareChange(200, share=0.3),
        SeasonalMoisture(0, amplitude=0.025, period_heats=1234),
    ],
)
def test_parse_drift_round_trips(drift: Drift) -> None:
    assert parse_drift(drift.spec()) == drift


def test_parse_drift_reads_cli_examples() -> None:
    assert parse_drift("supplier_change@300") == SupplierChange(300)
    assert parse_drift("refractory_wear@0:campaign=800") == RefractoryWear(0, campaign_heats=800)
    assert parse_drift("hbi_share@200:share=0.3") == HbiShareChange(200, share=0.3)
    assert parse_drift(" seasonal_moisture@0 ") == SeasonalMoisture(0)
    assert parse_drift("supplier_change@1:grades=E40+E46") == SupplierChange(
        1, grades=("E40", "E46")
    )


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "supplier_change",
        "supplier_change@",
        "supplier_change@x",
        "supplier_change@-1",
        "bogus@1",
        "hbi_share@1:share",
        "hbi_share@1:share=",
        "hbi_share@1:share=2",
        "hbi_share@1:share=nan",
        "hbi_share@1:share=abc",
        "hbi_share@1:bogus=1",
        "hbi_share@1:share=0.1,share=0.2",
        "refractory_wear@0:campaign=1.5",
        "refractory_wear@0:campaign=0",
        "supplier_change@0:grades=XX",
        "seasonal_moisture@0:period_heats=1",
        "supplier_change@0:yield_delta=-0.5",
        "supplier_change@0:cu_factor=0",
    ],
)
def test_parse_drift_rejects_junk(spec: str) -> None:
    with pytest.raises(ValueError, match="drift spec"):
        parse_drift(spec)


def test_drift_constructors_validate() -> None:
    with pytest.raises(ValueError):
        HbiShareChange(-1)
    with pytest.raises(ValueError):
        SupplierChange(0, grades=())
    with pytest.raises(TypeError):
        SimulatedPlant(default_plants(1)[0][0], 1, ["hbi_share@3"])  # type: ignore[list-item]


# --- learnability -------------------------------------------------------------------------


def test_linear_model_beats_mean_but_energy_is_not_trivial(
    plants: list[tuple[PlantProfile, int]],
) -> None:
    profile, seed = plants[2]
    heats = SimulatedPlant(profile, seed).heats(1500)
    x = np.array([[h.inputs[f] for f in FEATURES] for h in heats])
    y = np.array([[h.outcome[t] for t in TARGETS] for h in heats])
    xa = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(xa[:1000], y[:1000], rcond=None)
    mse_model = ((xa[1000:] @ coef - y[1000:]) ** 2).mean(axis=0)
    mse_mean = ((y[1000:] - y[:1000].mean(axis=0)) ** 2).mean(axis=0)
    r2 = 1.0 - mse_model / mse_mean
    assert np.all(r2 > 0.1), dict(zip(TARGETS, r2.round(3), strict=True))
    assert r2[TARGETS.index("energy_kwh_t")] < 0.99


def test_profile_validates_inputs(plants: list[tuple[PlantProfile, int]]) -> None:
    profile, _ = plants[0]
    with pytest.raises(ValueError):
        replace(profile, mix=(1.0,))
    with pytest.raises(ValueError):
        replace(profile, hot_heel_t=profile.capacity_t + 1)
    with pytest.raises(ValueError):
        SimulatedPlant(profile, -1)
    doubled = replace(profile, mix=tuple(2 * x for x in profile.mix))
    assert sum(doubled.mix) == pytest.approx(1.0)


# --- executing a given charge (the charge experiment's arms) -----------------------------


def _plan_of(h: Heat, profile: PlantProfile) -> dict[str, float]:
    """A heat's own charge and process plan, as a plan to execute (power-off time as
    planned: the delays come on top)."""
    plan = {f: h.inputs[f] for f in FEATURES if f.startswith("charge_")}
    plan.update(
        {k: h.inputs[k] for k in ("lime_t", "carbon_kg", "oxygen_nm3", "gas_nm3", "tap_temp_aim_c")}
    )
    plan["power_off_min"] = profile.power_off_min
    return plan


def _same_truth(a: Heat, b: Heat) -> None:
    for name in ("lot_pct", "yields", "recovery", "heel_pct", "tap_pct"):
        np.testing.assert_array_equal(getattr(a.truth, name), getattr(b.truth, name))


def test_execute_leaves_the_plants_own_heats_bit_identical(
    plants: list[tuple[PlantProfile, int]],
) -> None:
    profile, seed = plants[1]
    drifts = (SupplierChange(8),)
    reference = SimulatedPlant(profile, seed, drifts).heats(30)
    plant = SimulatedPlant(profile, seed, drifts)
    got = plant.heats(10)
    for index in (10, 11, 25, 3):
        plant.execute(_plan_of(reference[12], profile), index)
    plant.execute(_plan_of(reference[0], profile))
    assert plant.heat_index == 10
    got += plant.heats(20)
    assert got == reference
    for a, b in zip(got, reference, strict=True):
        _same_truth(a, b)


def test_a_heats_own_plan_executed_at_its_index_is_that_heat(
    plants: list[tuple[PlantProfile, int]],
) -> None:
    """Common random numbers: the same lots, heel, delays and noise as the plant's own
    heat at that index, so only the charge differs between two arms."""
    profile, seed = plants[0]
    heats = SimulatedPlant(profile, seed).heats(12)
    plant = SimulatedPlant(profile, seed)
    plant.heats(11)
    again = plant.execute(_plan_of(heats[11], profile))  # default: the next index, 11
    assert again.heat_id == f"{heats[11].heat_id}-exec"
    assert again.inputs == heats[11].inputs and again.outcome == heats[11].outcome
    _same_truth(again, heats[11])
    assert plant.execute(_plan_of(heats[11], profile), 11).outcome == again.outcome


def test_a_cleaner_charge_at_the_same_index_taps_less_copper(
    plants: list[tuple[PlantProfile, int]],
) -> None:
    profile, seed = plants[0]  # a mixed practice with shredded (E40) scrap
    plant = SimulatedPlant(profile, seed)
    plant.heats(20)
    own = plant.next_heat()
    plan = _plan_of(own, profile)
    plan["charge_E2_t"] += plan["charge_E40_t"]
    plan["charge_E40_t"] = 0.0
    own_index = plant.heat_index - 1
    cleaner = plant.execute(plan, own_index)
    np.testing.assert_array_equal(cleaner.truth.lot_pct, own.truth.lot_pct)
    assert cleaner.outcome["cu_pct"] < own.outcome["cu_pct"] - 0.01
    # The arc runs until this charge is melted: power-on time is the plant's, not the plan's.
    plan["power_on_min"] = 1.0
    assert plant.execute(plan, own_index).inputs["power_on_min"] > 15.0


@pytest.mark.parametrize(
    "change",
    [
        {"charge_E3_t": -1.0},
        {"lime_t": float("nan")},
        {"charge_XX_t": 1.0},
        {"oxygen_nm3": -5.0},
    ],
)
def test_execute_rejects_bad_plans(
    plants: list[tuple[PlantProfile, int]], change: dict[str, float]
) -> None:
    profile, seed = plants[0]
    plant = SimulatedPlant(profile, seed)
    plan = _plan_of(plant.heats(1)[0], profile)
    with pytest.raises(ValueError):
        plant.execute({**plan, **change})
    del plan["gas_nm3"]
    with pytest.raises(ValueError, match="gas_nm3"):
        plant.execute(plan)
    with pytest.raises(ValueError):
        plant.execute(_plan_of(plant.heats(1)[0], profile), -1)
