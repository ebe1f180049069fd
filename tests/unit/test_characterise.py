"""Scrap characterisation (models.characterise, alchimia characterise): known tensors come
back, numpy agrees with torch, mlp-v1 is refused, an uncharged grade keeps its prior
width, the CLI exports CSV and JSON from a serving directory."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alchimia.agent.learn.serving import ServingFiles
from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.cli import main
from alchimia.models import hybrid_layout as hl
from alchimia.models.characterise import (
    ELEMENTS,
    LOG_CONTENT_PRIOR_SD,
    PROPERTIES,
    YIELD_PRIOR_SD,
    characterise,
    characterise_path,
    forward,
    read_heat_table,
    read_weights,
    spec_from_onnx,
    write_heat_table,
)
from alchimia.models.initial import initial_weights
from alchimia.models.onnx_build import build_onnx
from alchimia.models.params import compose, get_weights
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.regressor import build_model
from alchimia.models.schema import FEATURES, GRADES, TARGETS
from alchimia.models.spec import ModelSpec

SPEC = ModelSpec(architecture="eaf-hybrid-v1")
G, E = len(GRADES), len(ELEMENTS)


def _weights(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A shared and a site part with every tensor set to distinct known values."""
    rng = np.random.default_rng(seed)
    shared = get_weights(build_model(SPEC, seed=seed))
    for name, value in shared.items():
        shared[name] = (value + 0.05 * rng.standard_normal(value.shape)).astype(np.float32)
    site = {
        k: (0.1 * rng.standard_normal(s)).astype(np.float32)
        for k, s in SPEC.parameter_shapes("site").items()
    }
    return shared, site


def _plant_heats(n: int, plant: int = 0) -> np.ndarray:
    """Realistic inputs: simulated plant P1 ('mixed': never charges E6, DRI, HBI, PIG)."""
    profile, seed = default_plants(plant + 1)[plant]
    heats = SimulatedPlant(profile, seed).heats(n)
    return np.array([[h.inputs[f] for f in FEATURES] for h in heats])


def _synthetic(weights: dict[str, np.ndarray], x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Outcomes the model ``weights`` itself generates, with measurement-like noise."""
    y = forward(weights, SPEC, x)
    rng = np.random.default_rng(seed)
    noise = np.array([8.0, 0.5, 9.0, 0.01, 0.001, 0.004, 0.003, 0.001])
    return y + noise * rng.standard_normal(y.shape)


def _site_model(shared: dict, site: dict) -> bytes:
    return build_onnx(SPEC, shared, site)


def test_known_tensors_come_back_global_and_for_the_site() -> None:
    shared, site = _weights(1)
    onnx_bytes = _site_model(shared, site)
    read = read_weights(onnx_bytes, SPEC)
    for name, value in {**shared, **site}.items():
        np.testing.assert_array_equal(read[name], value.astype(np.float64), err_msg=name)

    prior_y, prior_c = hl.yield_prior(), hl.content_prior()
    want_site_y = prior_y + 0.1 * (shared["yield_shared"] + site["yield_site"])
    want_global_y = prior_y + 0.1 * shared["yield_shared"]
    want_site_c = prior_c * np.exp(shared["content_shared"] + site["content_site"])
    want_global_c = prior_c * np.exp(shared["content_shared"])
    on_site = characterise(onnx_bytes, SPEC, scope="site")
    fed = characterise(onnx_bytes, SPEC, scope="global")
    np.testing.assert_allclose(on_site.values("yield"), want_site_y, rtol=1e-6)
    np.testing.assert_allclose(fed.values("yield"), want_global_y, rtol=1e-6)
    for j, e in enumerate(ELEMENTS):
        np.testing.assert_allclose(on_site.values(e), want_site_c[:, j], rtol=1e-5)
        np.testing.assert_allclose(fed.values(e), want_global_c[:, j], rtol=1e-5)
    assert not np.allclose(on_site.values("yield"), fed.values("yield"))
    # Without heats: values, no uncertainty, no energy effect.
    assert all(math.isnan(g.properties["yield"].lo) for g in on_site.grades)
    assert all(math.isnan(g.properties["energy_kwh_per_t"].value) for g in on_site.grades)


def test_numpy_formulas_agree_with_the_torch_module() -> None:
    shared, site = _weights(2)
    model = compose(SPEC, shared, site)
    weights = {**shared, **site}
    with torch.no_grad():
        torch_y = model._yields().numpy()
        torch_c = model._content().numpy()
        x = _plant_heats(40)
        torch_out = model(torch.from_numpy(x.astype(np.float32))).numpy()
    np.testing.assert_allclose(hl.grade_yields(weights), torch_y, rtol=1e-6)
    np.testing.assert_allclose(hl.grade_contents(weights), torch_c, rtol=1e-5)
    props = model.grade_properties()
    np.testing.assert_allclose(props["yield"], torch_y, rtol=1e-6)
    np.testing.assert_allclose(props["content_pct"], torch_c, rtol=1e-5)
    scale = np.maximum(np.abs(torch_out), SPEC.y_scale)
    assert np.max(np.abs(forward(weights, SPEC, x) - torch_out) / scale) < 1e-5
    # The federation's model: the shared tensors alone, site tensors counted as zero.
    with torch.no_grad():
        fed_y = compose(SPEC, shared)._yields().numpy()
    np.testing.assert_allclose(hl.grade_yields(shared), fed_y, rtol=1e-6)


def test_mlp_v1_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    mlp = ModelSpec()
    onnx_bytes = build_onnx(mlp, initial_weights(mlp))
    with pytest.raises(ValueError, match="needs the physics-structured model eaf-hybrid-v1"):
        characterise(onnx_bytes, mlp)
    with pytest.raises(ValueError, match=r"eaf-hybrid-v1.*mlp-v1"):
        spec_from_onnx(onnx_bytes)  # a bare .onnx file without model.json
    ServingFiles(tmp_path / "serving").save_model(1, mlp, onnx_bytes)
    with pytest.raises(ValueError, match="eaf-hybrid-v1"):
        characterise_path(tmp_path / "serving")
    assert main(["characterise", "--model", str(tmp_path / "serving")]) == 2


def test_an_uncharged_grade_keeps_its_prior_width_a_charged_one_is_narrow() -> None:
    shared, site = _weights(3)
    weights = {**shared, **site}
    x = _plant_heats(300)
    never = [GRADES.index(g) for g in ("E6", "DRI", "HBI", "PIG")]
    assert not x[:, never].any()
    y = _synthetic(weights, x)
    char = characterise(_site_model(shared, site), SPEC, x, y)
    z = 1.6448536269514722
    for g in ("E6", "DRI"):
        e = char.grade(g).properties["yield"]
        assert e.sd == pytest.approx(YIELD_PRIOR_SD, rel=1e-3)
        assert e.hi - e.lo == pytest.approx(2 * z * YIELD_PRIOR_SD, rel=1e-3)
        for el in ELEMENTS:
            c = char.grade(g).properties[el]
            assert c.hi / c.value == pytest.approx(math.exp(z * LOG_CONTENT_PRIOR_SD), rel=1e-3)
        assert char.grade(g).heats_charged == 0
    for g in ("E3", "E40"):  # the two main grades of this plant
        e = char.grade(g).properties["yield"]
        assert e.sd < YIELD_PRIOR_SD / 3
        assert char.grade(g).properties["cu_pct"].hi / char.grade(g).properties["cu_pct"].lo < 1.5
        assert (
            char.grade(g).properties["energy_kwh_per_t"].sd * 5
            < char.grade("E6").properties["energy_kwh_per_t"].sd
        )
    # The served model generated these heats, so its values are the truth: the heats'
    # own 90 % intervals should miss them about one time in ten (flagged), not often.
    charged = [g for g in char.grades if g.heats_charged]
    flags = [g.properties[p].flagged for g in charged for p in PROPERTIES]
    assert len(flags) >= 40 and sum(flags) / len(flags) < 0.25, sum(flags)


def test_the_heats_expose_a_served_value_they_do_not_support() -> None:
    """Heats generated with other yields and Cu contents than the served model's: those
    properties are flagged, the heats' own estimate recovers the generating values and
    the widened interval holds both."""
    shared, site = _weights(4)
    truth = {**shared, **site}
    x = _plant_heats(400)
    y = _synthetic(truth, x, seed=1)
    served_site = dict(site)
    # E3 0.04 lower, E40 0.04 higher: a contrast (a shift of every yield at once would
    # be the tapped-mass bias' business, which the heats cannot tell from the yields).
    shift = np.zeros(G, np.float32)
    shift[GRADES.index("E3")], shift[GRADES.index("E40")] = -0.4, 0.4
    served_site["yield_site"] = site["yield_site"] + shift
    content = site["content_site"].copy()
    content[:, 0] += 0.5  # Cu x 1.65
    served_site["content_site"] = content
    char = characterise(_site_model(shared, served_site), SPEC, x, y)
    true_y, true_c = hl.grade_yields(truth), hl.grade_contents(truth)
    for g in ("E3", "E40"):
        k = GRADES.index(g)
        ey, ecu = char.grade(g).properties["yield"], char.grade(g).properties["cu_pct"]
        assert ey.flagged and ecu.flagged
        assert ey.fit == pytest.approx(true_y[k], abs=0.01)
        assert abs(math.log(ecu.fit / true_c[k, 0])) < 0.25  # served: x 1.65
        assert ey.lo <= true_y[k] <= ey.hi and ecu.lo <= true_c[k, 0] <= ecu.hi
        assert ey.lo <= ey.value <= ey.hi and ecu.lo <= ecu.value <= ecu.hi
    charged = [g for g in char.grades if g.heats_charged]
    cu = sum(g.properties["cu_pct"].flagged for g in charged)
    sn = sum(g.properties["sn_pct"].flagged for g in charged)  # served as generated
    assert cu >= len(charged) - 2 and sn <= 2, (cu, sn, len(charged))


def test_energy_effects_use_the_planned_power_on_time() -> None:
    shared, site = _weights(5)
    weights = {**shared, **site}
    x = _plant_heats(200)
    y = _synthetic(weights, x)
    onnx_bytes = _site_model(shared, site)
    fitted = PowerOnEstimate.fit(x, FEATURES)
    slower = PowerOnEstimate(
        FEATURES,
        fitted.coef + 2.0 * np.eye(len(FEATURES))[FEATURES.index("charge_E40_t")],
        fitted.intercept,
        fitted.rmse,
        fitted.n,
    )
    a = characterise(onnx_bytes, SPEC, x, y, fitted)
    b = characterise(onnx_bytes, SPEC, x, y, slower)
    effect_a, effect_b = (c.grade("E40").properties["energy_kwh_per_t"].value for c in (a, b))
    assert effect_a != pytest.approx(effect_b, abs=1.0)  # 2 min more per t of E40 counts
    assert (
        a.grade("E3").properties["energy_kwh_per_t"].value
        != b.grade("E3").properties["energy_kwh_per_t"].value
    )  # via the average
    assert a.power_on.startswith("the site's estimate")
    assert characterise(onnx_bytes, SPEC, x, y).power_on.startswith("fitted on")


def test_cli_exports_csv_and_json_from_a_serving_directory(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    shared, site = _weights(6)
    serving = ServingFiles(tmp_path / "serving")
    serving.save_model(12, SPEC, _site_model(shared, site))
    x = _plant_heats(120)
    y = _synthetic({**shared, **site}, x)
    serving.save_power_on(PowerOnEstimate.fit(x, FEATURES))
    heats = write_heat_table(tmp_path / "heats.csv", x, y)
    out_json, out_csv = tmp_path / "out" / "c.json", tmp_path / "out" / "c.csv"
    rc = main(
        [
            "characterise",
            "--model",
            str(serving.dir),
            "--heats",
            str(heats),
            "--json",
            str(out_json),
            "--csv",
            str(out_csv),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "site characterisation" in printed and "E40" in printed
    data = json.loads(out_json.read_text())
    assert data["scope"] == "site" and data["version"] == 12 and data["n_heats"] == 120
    assert [g["grade"] for g in data["grades"]] == list(GRADES)
    want = hl.grade_yields({**shared, **site})
    got = np.array([g["yield"]["value"] for g in data["grades"]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == G and rows[0]["grade"] == GRADES[0]
    assert {f"{p}_lo" for p in PROPERTIES} <= set(rows[0])
    assert (
        float(rows[GRADES.index("E3")]["yield_lo"])
        < float(rows[GRADES.index("E3")]["yield"])
        < float(rows[GRADES.index("E3")]["yield_hi"])
    )

    # --global: the shared tensors alone, read from the bare .onnx file as well.
    rc = main(
        ["characterise", "--model", str(serving.onnx_path), "--global", "--json", str(out_json)]
    )
    assert rc == 0
    data = json.loads(out_json.read_text())
    got = np.array([g["yield"]["value"] for g in data["grades"]])
    np.testing.assert_allclose(got, hl.grade_yields(shared), rtol=1e-6)


def test_heat_table_needs_the_computed_columns(tmp_path: Path) -> None:
    replay = tmp_path / "heats.csv"  # the CSV replay's heats.csv: no signal-derived columns
    replay.write_text(
        "heat,plant,furnace,charge_ts,tap_ts,charge_E3_t,hot_heel_t,lime_t,"
        "tap_temp_aim_c,tapped_t,tap_temp_c,cu_pct,sn_pct,ni_pct,cr_pct,"
        "mo_pct\nH1,P1,F1,2026-01-01T00:00:00Z,2026-01-01T00:50:00Z,90,15,7,"
        "1640,100,1636,0.19,0.015,0.08,0.06,0.012\n"
    )
    with pytest.raises(ValueError, match=r"missing columns.*oxygen_nm3"):
        read_heat_table(replay)
    x = _plant_heats(5)
    y = np.ones((5, len(TARGETS)))
    path = write_heat_table(tmp_path / "full.csv", x, y)
    rx, ry = read_heat_table(path)
    np.testing.assert_array_equal(rx, x)
    np.testing.assert_array_equal(ry, y)
