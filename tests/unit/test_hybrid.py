"""eaf-hybrid-v1: the balances, ONNX parity, the shared/site partition on the wire."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alchimia.agent.learn.serving import ServingFiles
from alchimia.agent.learn.trainer import TrainConfig, train_delta
from alchimia.broker.schemas import UpdateBody, decode, message
from alchimia.models import hybrid_layout as hl
from alchimia.models.hybrid import _content_prior
from alchimia.models.params import compose, get_weights, set_weights
from alchimia.models.regressor import build_model
from alchimia.models.schema import FEATURES, GRADES, TARGETS
from alchimia.models.spec import ModelSpec

SPEC = ModelSpec(architecture="eaf-hybrid-v1")


def _random_site(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (0.1 * rng.standard_normal(s)).astype(np.float32)
        for k, s in SPEC.parameter_shapes("site").items()
    }


def _heats(n: int, seed: int = 0) -> np.ndarray:
    """Plausible raw inputs: a few grades charged, a heel, a process plan."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, len(FEATURES)), np.float32)
    for g in ("E3", "E40", "E2", "DRI"):
        x[:, FEATURES.index(f"charge_{g}_t")] = rng.uniform(5, 40, n)
    for name, lo, hi in (
        ("hot_heel_t", 10, 20),
        ("lime_t", 4, 9),
        ("carbon_kg", 1000, 2500),
        ("oxygen_nm3", 3000, 4500),
        ("gas_nm3", 400, 1200),
        ("power_on_min", 30, 45),
        ("power_off_min", 8, 20),
        ("tap_temp_aim_c", 1620, 1660),
    ):
        x[:, FEATURES.index(name)] = rng.uniform(lo, hi, n)
    return x


def test_torch_parameters_follow_the_spec_and_site_tensors_are_declared() -> None:
    model = build_model(SPEC)
    assert [n for n, _ in model.named_parameters()] == list(SPEC.tensor_parts())
    shared, site = SPEC.parameter_shapes("shared"), SPEC.parameter_shapes("site")
    assert set(shared).isdisjoint(site) and site and shared
    assert all(k.endswith("_site") for k in site)
    assert ModelSpec().parameter_shapes("site") == {}  # mlp-v1: everything is shared


def test_mass_balance_is_exact_on_synthetic_grades() -> None:
    """Known yields and contents, no heel: tapped mass and chemistry follow exactly."""
    rng = np.random.default_rng(3)
    yields = rng.uniform(0.8, 0.97, len(GRADES))
    content = rng.uniform(0.001, 0.4, (len(GRADES), len(hl.ELEMENT_TARGETS)))
    model = build_model(SPEC)
    weights = get_weights(model)
    prior = np.array([hl.YIELD_PRIOR[g] for g in GRADES])
    weights["yield_shared"] = ((yields - prior) / hl.YIELD_STEP).astype(np.float32)
    weights["content_shared"] = np.log(content / _content_prior()).astype(np.float32)
    set_weights(model, weights)
    x = _heats(32)
    x[:, FEATURES.index("hot_heel_t")] = hl.HEEL_REFERENCE_T
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy().astype(np.float64)
    charges = x[:, [FEATURES.index(f"charge_{g}_t") for g in GRADES]].astype(np.float64)
    heel = hl.HEEL_REFERENCE_T
    heel_pct = np.exp(model.log_heel_prior.numpy().astype(np.float64))
    metal = charges @ yields
    np.testing.assert_allclose(out[:, TARGETS.index("tapped_t")], metal, rtol=1e-5)
    expected = (charges @ content + heel * heel_pct) / (metal + heel)[:, None]
    for j, t in enumerate(hl.ELEMENT_TARGETS):
        np.testing.assert_allclose(out[:, TARGETS.index(t)], expected[:, j], rtol=1e-4)


def test_shared_and_site_parts_survive_a_round_trip() -> None:
    a = compose(SPEC, get_weights(build_model(SPEC, seed=5)), _random_site(2))
    shared, site = get_weights(a), get_weights(a, "site")
    b = compose(SPEC, shared, site)
    x = torch.from_numpy(_heats(8))
    with torch.no_grad():
        np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
        # Without its site part the same shared weights predict differently.
        assert not np.allclose(a(x).numpy(), compose(SPEC, shared)(x).numpy())
    with pytest.raises(ValueError, match="do not match"):
        set_weights(b, site)  # a site part is not a shared part


def test_site_tensors_never_appear_in_an_update_message() -> None:
    x = _heats(48, seed=6)
    y = (
        compose(SPEC, get_weights(build_model(SPEC, seed=7)), _random_site(3))(torch.from_numpy(x))
        .detach()
        .numpy()
    )
    base = get_weights(build_model(SPEC))
    result = train_delta(SPEC, base, x, y, TrainConfig(epochs=1, site_epochs=3, lr=1e-2))
    assert list(result.delta) == list(SPEC.parameter_shapes("shared"))
    assert any(np.any(v != 0) for v in result.site.values())  # the site part did learn
    payload = message(
        "plant-1", UpdateBody(round_id=1, base_version=0, num_samples=48, delta=result.delta)
    )
    for name, value in result.site.items():
        assert name.encode() not in payload
        assert value.tobytes() not in payload
    body = decode(payload, UpdateBody).body
    assert list(body.delta) == list(SPEC.parameter_shapes("shared"))  # type: ignore[union-attr]


def test_site_adaptation_leaves_the_shared_part_alone_and_fits_the_site() -> None:
    """epochs=0: what an agent does after a drift."""
    base = get_weights(build_model(SPEC))
    x = _heats(64, seed=8)
    y = compose(SPEC, base)(torch.from_numpy(x)).detach().numpy()
    y[:, TARGETS.index("energy_kwh_t")] += 40.0  # this furnace needs 40 kWh/t more
    result = train_delta(SPEC, base, x, y, TrainConfig(epochs=0, site_epochs=40, lr=1e-2))
    assert all(np.all(d == 0) for d in result.delta.values())
    before = np.abs(compose(SPEC, base)(torch.from_numpy(x)).detach().numpy() - y)[:, 0]
    after = np.abs(compose(SPEC, base, result.site)(torch.from_numpy(x)).detach().numpy() - y)[:, 0]
    assert after.mean() < 0.25 * before.mean()


def test_the_site_part_is_fitted_on_the_sites_rows_never_on_replay() -> None:
    """Replay rows (old regimes) train the shared part; the site part describes the site
    now, so the same rows give the same site part with or without replay."""
    base = get_weights(build_model(SPEC))
    x, old = _heats(40, seed=3), _heats(40, seed=4)
    y = compose(SPEC, base)(torch.from_numpy(x)).detach().numpy()
    y[:, TARGETS.index("cu_pct")] *= 1.6  # a new supplier
    y_old = compose(SPEC, base)(torch.from_numpy(old)).detach().numpy()
    cfg = TrainConfig(epochs=1, site_epochs=5, lr=1e-2)
    alone = train_delta(SPEC, base, x, y, cfg)
    mixed = train_delta(SPEC, base, x, y, cfg, replay=(old, y_old))
    for k in alone.site:
        np.testing.assert_array_equal(alone.site[k], mixed.site[k])
    assert any(not np.array_equal(alone.delta[k], mixed.delta[k]) for k in alone.delta)


def test_an_anchored_site_prior_keeps_what_the_site_knew() -> None:
    """``site_anchor``: the prior pulls towards the site part training starts from, not
    towards zero (a re-fit on a few new heats keeps the site's earlier offsets)."""
    base, site = get_weights(build_model(SPEC)), _random_site(5)
    x = _heats(20, seed=6)
    y = compose(SPEC, base, site)(torch.from_numpy(x)).detach().numpy()
    strong = dict(epochs=0, site_epochs=20, lr=1e-2, site_l2=1e5)
    to_zero = train_delta(SPEC, base, x, y, TrainConfig(**strong), site=site).site
    anchored = train_delta(
        SPEC, base, x, y, TrainConfig(**strong, site_anchor=True), site=site
    ).site
    for k in site:
        assert np.abs(anchored[k] - site[k]).max() < 0.02
        assert np.abs(to_zero[k]).sum() < np.abs(site[k]).sum()


def test_serving_files_round_trip_and_refuse_a_site_part_of_another_model(tmp_path) -> None:
    files = ServingFiles(tmp_path / "serving")
    site = _random_site(4)
    files.save_site(site)
    files.save_model(7, SPEC, b"onnx-bytes")
    loaded = files.load_site(SPEC)
    assert loaded is not None and list(loaded) == list(site)
    for k in site:
        np.testing.assert_array_equal(loaded[k], site[k])
    assert files.load_site(ModelSpec(architecture="eaf-hybrid-v1", hidden=(4,))) is not None
    assert files.load_site(ModelSpec()) is None  # mlp-v1 has no site part
    assert files.onnx_path.read_bytes() == b"onnx-bytes"
    assert not list(files.dir.glob(".*.tmp"))
