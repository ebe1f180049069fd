"""Per-second sensor signals of a simulated heat, shaped like a gateway's feed.

The heat's timeline starts at power-on and interleaves power-on melting of each basket
with the power-off pauses to charge the next one; the flat bath and the final power-off
(tapping, fettling, waiting) close it. Power-on + power-off time equals the heat's
``power_on_min + power_off_min``.

Flow-like fields (active power, gas, oxygen, carbon) are reported as averages over each
sample interval, computed from a per-second cumulative integral: summing rate x period
then reproduces the heat's electrical energy, oxygen and carbon exactly, at any period.
Level-like fields (voltage, electrode position, off-gas, cooling water) are sampled.
Shapes and noise levels are plausible, not fitted to data (check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alchimia.agent.sim.grades import FloatArray

# Phase codes of the per-second timeline.
OFF, BORE, MELT, FLAT = 0, 1, 2, 3

_POWER_LEVEL = np.array([0.0, 0.80, 1.0, 0.85])  # relative active power per phase
_POWER_NOISE = np.array([0.0, 0.06, 0.08, 0.02])  # unstable arc on scrap, calm under foam
_TAP_VOLTAGE = np.array([0.0, 0.70, 1.0, 0.85])  # transformer tap relative to rated
_POWER_FACTOR = np.array([1.0, 0.75, 0.78, 0.85])  # (check)
_RADIATION = np.array([0.0, 0.3, 0.5, 1.0])  # arc radiation reaching the panels
_BURNER_O2_PER_GAS = 2.0  # stoichiometric for methane (check)
_MAX_CHARGE_PAUSE_S = 150  # swinging the roof and dropping a basket (check)


@dataclass(frozen=True)
class SignalSpec:
    """All a heat needs to regenerate its signals deterministically."""

    seed: int
    power_on_s: int
    power_off_s: int
    basket_fractions: tuple[float, ...]
    energy_kwh: float  # electrical energy of the heat (kWh/t x t tapped)
    oxygen_nm3: float  # lance oxygen
    carbon_kg: float  # injected carbon
    gas_nm3: float  # burner natural gas
    transformer_mva: float
    loss_factor: float = 1.0  # scales panel heat load: furnace efficiency and wear


def signal_arrays(
    spec: SignalSpec, start_ts: float, period_s: float = 1.0
) -> tuple[FloatArray, dict[str, FloatArray]]:
    """Timestamps (unix s, start of each interval) and one array per signal field
    (``agent.records.SIGNAL_FIELDS``)."""
    if not (isinstance(period_s, int | float) and math.isfinite(period_s) and period_s > 0):
        raise ValueError(f"period_s must be a positive finite number, got {period_s!r}")
    rng = np.random.default_rng(spec.seed)
    phase, progress, last_basket = _timeline(spec)
    n = phase.size
    on = phase != OFF

    # Active power: phase level x arc noise x short outages (electrode slips, arc breaks),
    # then scaled so the heat's energy comes out exactly.
    shape = _POWER_LEVEL[phase] * (1.0 + _POWER_NOISE[phase] * _smooth_noise(rng, n, 4.0))
    shape *= _outages(rng, phase == MELT)
    shape = np.clip(shape, 0.0, None) * on
    power_mw = _scale_to_total(shape, spec.energy_kwh * 3.6)  # MW x s = MJ = kWh x 3.6

    burner = ((phase == BORE) | ((phase == MELT) & (progress < 0.5))).astype(np.float64)
    burner *= 1.0 + 0.03 * _smooth_noise(rng, n, 10.0)
    gas_nm3_s = _scale_to_total(burner, spec.gas_nm3)

    lance = np.where(phase == FLAT, 1.0, np.where((phase == MELT) & (progress >= 0.2), 0.7, 0.0))
    lance *= 1.0 + 0.05 * _smooth_noise(rng, n, 15.0)
    lance_nm3_s = _scale_to_total(np.clip(lance, 0.0, None), spec.oxygen_nm3)

    # Foaming starts once a basket is half melted and runs through the flat bath.
    carbon = np.where(
        (phase == FLAT) | ((phase == MELT) & last_basket),
        1.0,
        np.where((phase == MELT) & (progress >= 0.5), 0.6, 0.0),
    )
    carbon_w = carbon * (1.0 + 0.1 * _smooth_noise(rng, n, 5.0))
    carbon_kg_s = _scale_to_total(np.clip(carbon_w, 0.0, None), spec.carbon_kg)

    # Levels, per second.
    p_rel = power_mw / max(float(power_mw.max()), 1e-9)
    lance_rel = lance_nm3_s / max(float(lance_nm3_s.max()), 1e-12)
    burner_rel = gas_nm3_s / max(float(gas_nm3_s.max()), 1e-12)
    carbon_rel = carbon_kg_s / max(float(carbon_kg_s.max()), 1e-12)
    rated_v = 1250.0 * math.sqrt(spec.transformer_mva / 120.0)  # DSP-120: 120 MVA, 1,250 V
    voltage = rated_v * _TAP_VOLTAGE[phase] * (1.0 + 0.005 * rng.standard_normal(n))

    electrode = (
        np.select(
            [phase == BORE, phase == MELT, phase == FLAT],
            [3.0 - 2.1 * progress, 0.9 + 0.6 * progress, np.full(n, 1.6)],
            default=4.0,
        )
        + 0.03 * _smooth_noise(rng, n, 8.0) * on
    )

    co = 4.0 + 20.0 * lance_rel + 12.0 * lance_rel * carbon_rel
    co = _ema(np.where(on, co, 1.0), 20.0) + 1.0 * rng.standard_normal(n)
    co2 = 4.0 + 10.0 * burner_rel + 4.0 * lance_rel
    co2 = _ema(np.where(on, co2, 1.0), 20.0) + 0.5 * rng.standard_normal(n)
    heat_load = 0.5 * p_rel + 0.3 * lance_rel + 0.2 * burner_rel
    offgas_t = 350.0 + 1000.0 * _ema(heat_load, 180.0) + 15.0 * rng.standard_normal(n)
    water_in = 32.0 + 0.3 * _smooth_noise(rng, n, 300.0)
    panel_load = _ema(_RADIATION[phase] * p_rel, 120.0)
    water_out = water_in + 4.0 + 9.0 * spec.loss_factor * panel_load + 0.1 * rng.standard_normal(n)

    # Resample at the requested period.
    total_s = float(n)
    count = max(1, math.ceil(total_s / period_s - 1e-9))
    t_rel = np.arange(count, dtype=np.float64) * period_s
    t_end = np.minimum(t_rel + period_s, total_s)
    idx = np.minimum(t_rel.astype(np.int64), n - 1)

    def mean_rate(rate_per_s: FloatArray) -> FloatArray:
        cum = np.concatenate(([0.0], np.cumsum(rate_per_s)))
        grid = np.arange(n + 1, dtype=np.float64)
        return (np.interp(t_end, grid, cum) - np.interp(t_rel, grid, cum)) / period_s

    p_s = mean_rate(power_mw)
    v_s = voltage[idx]
    pf_s = _POWER_FACTOR[phase[idx]]
    with np.errstate(divide="ignore", invalid="ignore"):
        i_ka = np.where(v_s > 0, p_s * 1e3 / (math.sqrt(3.0) * v_s * pf_s), 0.0)
    gas_h = mean_rate(gas_nm3_s) * 3600.0
    arrays = {
        "active_power_mw": p_s,
        "voltage_v": v_s,
        "current_ka": i_ka,
        "electrode_pos_m": electrode[idx],
        "burner_gas_nm3h": gas_h,
        "burner_o2_nm3h": gas_h * _BURNER_O2_PER_GAS,
        "lance_o2_nm3h": mean_rate(lance_nm3_s) * 3600.0,
        "carbon_kgmin": mean_rate(carbon_kg_s) * 60.0,
        "offgas_co_pct": np.clip(co[idx], 0.0, 100.0),
        "offgas_co2_pct": np.clip(co2[idx], 0.0, 100.0),
        "offgas_temp_c": offgas_t[idx],
        "panel_water_in_c": water_in[idx],
        "panel_water_out_c": water_out[idx],
    }
    return start_ts + t_rel, arrays


def _timeline(spec: SignalSpec) -> tuple[np.ndarray, FloatArray, np.ndarray]:
    """Per-second phase code, progress within the segment (0..1), and last-basket flag."""
    on_s, off_s = int(spec.power_on_s), int(spec.power_off_s)
    if on_s < 1 or off_s < 0:
        raise ValueError(f"need power_on_s >= 1 and power_off_s >= 0, got {on_s}, {off_s}")
    fractions = np.asarray(spec.basket_fractions, dtype=np.float64)
    baskets = fractions.size
    flat_s = round(0.2 * on_s)
    melt_s = _split(on_s - flat_s, fractions)
    pause_s = min(_MAX_CHARGE_PAUSE_S, int(0.3 * off_s / max(baskets - 1, 1)))
    # (phase, duration, is_last_basket) segments, bore-down opening each basket's melt.
    segments: list[tuple[int, int, bool]] = []
    for k, seg in enumerate(melt_s):
        last = k == baskets - 1
        bore = min(180, int(0.2 * seg))
        segments += [(BORE, bore, last), (MELT, seg - bore, last)]
        if not last:
            segments.append((OFF, pause_s, False))
    segments += [(FLAT, flat_s, True), (OFF, off_s - pause_s * (baskets - 1), True)]
    segs = [s for s in segments if s[1] > 0]
    codes = np.array([s[0] for s in segs], dtype=np.int64)
    lengths = np.array([s[1] for s in segs], dtype=np.int64)
    lasts = np.array([s[2] for s in segs], dtype=bool)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    phase = np.repeat(codes, lengths)
    local = np.arange(phase.size) - np.repeat(starts, lengths)
    progress = local / np.repeat(lengths, lengths).astype(np.float64)
    return phase, progress, np.repeat(lasts, lengths)


def _split(total: int, fractions: FloatArray) -> list[int]:
    parts = np.floor(total * fractions / fractions.sum()).astype(np.int64)
    parts[-1] += total - int(parts.sum())
    return [int(p) for p in parts]


def _scale_to_total(weights: FloatArray, total: float) -> FloatArray:
    """Per-second rates shaped like ``weights`` whose sum is exactly ``total``."""
    s = float(weights.sum())
    if total <= 0.0 or s <= 0.0:
        return np.zeros_like(weights, dtype=np.float64)
    return weights * (total / s)


def _ema(x: FloatArray, tau_s: float) -> FloatArray:
    """Causal first-order lag (thermal inertia), by FFT convolution to stay vectorised."""
    n = x.size
    k = np.exp(-np.arange(min(n, int(6 * tau_s) + 1)) / tau_s)
    k /= k.sum()
    y = _causal_convolve(x, k)
    # Start from the first value instead of from zero.
    return y + x[0] * (1.0 - np.cumsum(k)[np.minimum(np.arange(n), k.size - 1)])


def _causal_convolve(x: FloatArray, kernel: FloatArray) -> FloatArray:
    """First ``x.size`` terms of the full convolution: short kernels direct, long by FFT."""
    n = x.size
    if kernel.size <= 32:
        return np.convolve(x, kernel, mode="full")[:n]
    size = 1 << (n + kernel.size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(kernel, size), size)[:n]


def _smooth_noise(rng: np.random.Generator, n: int, tau_s: float) -> FloatArray:
    """Unit-variance noise correlated over ~tau_s seconds."""
    white = rng.standard_normal(n)
    k = np.exp(-np.arange(int(4 * tau_s) + 1) / tau_s)
    return _causal_convolve(white, k) / math.sqrt(float((k * k).sum()))


def _outages(rng: np.random.Generator, melting: np.ndarray) -> FloatArray:
    """Short arc breaks during melting (scrap cave-ins, electrode slips): power drops."""
    n = melting.size
    factor = np.ones(n)
    count = int(rng.poisson(max(int(melting.sum()), 0) / 600.0))
    starts = rng.integers(0, n, size=count)
    lengths = rng.integers(3, 16, size=count)
    for s, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        factor[s : s + length] = 0.25
    return np.where(melting, factor, 1.0)
