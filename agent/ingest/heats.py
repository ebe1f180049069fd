"""Heat assembly: the store's charge, signal and tap points of a heat -> model inputs/outcome.

A heat is assembled once it is tapped (has an ``eaf_tap`` point) and complete: a charge
with its required fields, every tap field, and at least one signal sample. Until then it
is *pending* and retried on later calls, because over MQTT or from a late lab analysis
its parts may arrive in any order. Several points of one record kind are merged field by
field, later points winning (a correction, or chemistry sent after the tap temperature);
the heat ends at its *first* tap point, and samples from that moment on are not part of it.

Integration rule (docs/SENSORS.md): a sample's value holds from its timestamp to the next
sample's, the last one to the heat's end, and no gap counts for more than ``max_gap_s``
(data lost in a gateway outage is not invented). Flow signals are interval averages, so
the sums reproduce the heat's totals; power-on time is the time with active power above
``power_on_threshold_mw``, power-off time the rest.

The result depends only on the points' values and timestamps, so it is the same, bit for
bit, whichever store the points were read from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from alchimia.agent.ingest.base import (
    CHARGE_FIELDS,
    CHARGE_MEASUREMENT,
    CHARGE_REQUIRED,
    SIGNAL_MEASUREMENT,
    TAP_FIELDS,
    TAP_MEASUREMENT,
)
from alchimia.agent.records import Heat
from alchimia.agent.store import FieldValue, Point, Store
from alchimia.models.schema import FEATURES, TARGETS

log = logging.getLogger(__name__)

NS = 1_000_000_000
DEFAULT_POWER_ON_THRESHOLD_MW = 1.0
DEFAULT_MAX_GAP_S = 60.0
DEFAULT_LOOKBACK_S = 7 * 86_400.0


@dataclass(frozen=True)
class AssembledHeat:
    """A finished heat as the model sees it; ``inputs``/``outcome`` in schema order."""

    heat_id: str
    plant: str
    furnace: str
    start_ns: int  # the first signal sample or the charge, whichever is earlier
    end_ns: int  # the (first) tap point
    inputs: dict[str, float]
    outcome: dict[str, float]
    samples: int = field(default=0, compare=False)

    def to_heat(self) -> Heat:
        """The agent's heat type, so a store-backed source is a drop-in HeatSource."""
        return Heat(
            self.heat_id,
            self.plant,
            self.furnace,
            self.start_ns / NS,
            dict(self.inputs),
            dict(self.outcome),
            self.end_ns,
        )


class IncompleteHeat(ValueError):
    """A tapped heat that cannot be assembled yet; ``reason`` says what is missing."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def merge_fields(points: Sequence[Point]) -> dict[str, object]:
    """Fields of several points of one record, later points winning field by field."""
    merged: dict[str, object] = {}
    for p in sorted(points, key=lambda p: p.ts_ns):
        merged.update(p.fields)
    return merged


def _number(fields: Mapping[str, object], name: str, kind: str) -> float:
    value = fields.get(name)
    if value is None:
        raise IncompleteHeat(f"{kind}_missing_field", name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IncompleteHeat(f"{kind}_bad_field", f"{name}={value!r}")
    return float(value)


def compute_heat(
    charge: Sequence[Point],
    signals: Sequence[Point],
    taps: Sequence[Point],
    *,
    power_on_threshold_mw: float = DEFAULT_POWER_ON_THRESHOLD_MW,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
) -> tuple[dict[str, float], dict[str, float], int, int]:
    """``(inputs, outcome, start_ns, end_ns)`` of one heat; pure, raises IncompleteHeat.

    ``signals`` are the heat's samples before its end (the earliest tap), in time order.
    """
    if not taps:
        raise IncompleteHeat("no_tap")
    if not charge:
        raise IncompleteHeat("no_charge")
    if not signals:
        raise IncompleteHeat("no_signals")
    end_ns = min(p.ts_ns for p in taps)
    charge_f = merge_fields(charge)
    tap_f = merge_fields(taps)

    inputs = dict.fromkeys(FEATURES, 0.0)
    for name in CHARGE_FIELDS:
        if name in CHARGE_REQUIRED or name in charge_f:
            inputs[name] = _number(charge_f, name, "charge")
    outcome = dict.fromkeys(TARGETS, 0.0)
    for name in TAP_FIELDS:
        outcome[name] = _number(tap_f, name, "tap")
    if not outcome["tapped_t"] > 0:
        raise IncompleteHeat("tap_bad_field", f"tapped_t={outcome['tapped_t']!r}")

    n = len(signals)
    ts = np.fromiter((p.ts_ns for p in signals), dtype=np.int64, count=n)
    if n > 1 and np.any(np.diff(ts) <= 0):
        # Not one series (points with extra tags): one sample per timestamp, merged.
        merged: dict[int, dict[str, FieldValue]] = {}
        for p in sorted(signals, key=lambda p: p.ts_ns):
            merged.setdefault(p.ts_ns, {}).update(p.fields)
        signals = [Point(SIGNAL_MEASUREMENT, {}, f, t) for t, f in merged.items()]
        n = len(signals)
        ts = np.fromiter(merged, dtype=np.int64, count=n)
    next_ts = np.append(ts[1:], max(end_ns, int(ts[-1])))
    dur_s = np.minimum(next_ts - ts, round(max_gap_s * NS)) / NS

    def column(name: str) -> np.ndarray:
        return np.fromiter((p.fields.get(name, np.nan) for p in signals), dtype=np.float64, count=n)

    def integral(name: str) -> float:
        x = column(name)
        return float(np.where(np.isnan(x), 0.0, x) @ dur_s)  # a missing value adds nothing

    power = column("active_power_mw")
    on_frac = _power_on_fraction(power, power_on_threshold_mw)
    on_s = float(on_frac @ dur_s)
    off_s = float((1.0 - on_frac) @ dur_s)
    energy_kwh = float(np.where(np.isnan(power), 0.0, power) @ dur_s) / 3.6  # MJ -> kWh

    inputs["oxygen_nm3"] = integral("lance_o2_nm3h") / 3600.0
    inputs["gas_nm3"] = integral("burner_gas_nm3h") / 3600.0
    inputs["carbon_kg"] = integral("carbon_kgmin") / 60.0
    inputs["power_on_min"] = on_s / 60.0
    inputs["power_off_min"] = off_s / 60.0
    outcome["energy_kwh_t"] = energy_kwh / outcome["tapped_t"]
    start_ns = min(int(ts[0]), min(p.ts_ns for p in charge))
    return inputs, outcome, start_ns, end_ns


def _power_on_fraction(power: np.ndarray, threshold_mw: float) -> np.ndarray:
    """Share of each sample's interval with the arc on.

    A sample above the threshold is on; NaN compares False, so an unknown one is off.
    Active power is an interval average, so a sample where the arc was switched on or off
    mid-interval reads low: one on-sample next to an off-sample gets the fraction
    ``power / power of its on-neighbour`` (at most 1). Without it every switch would count
    up to a whole period wrongly (~2 % of power-off time at 5 s samples).
    """
    on = power > threshold_mw
    frac = on.astype(np.float64)
    n = power.size
    if n < 3:
        return frac
    inner = np.arange(1, n - 1)
    prev_on, next_on = on[inner - 1], on[inner + 1]
    rising = on[inner] & ~prev_on & next_on  # off -> on within this sample
    falling = on[inner] & prev_on & ~next_on  # on -> off within this sample
    for mask, ref in ((rising, inner + 1), (falling, inner - 1)):
        i = inner[mask]
        frac[i] = np.minimum(power[i] / power[ref[mask]], 1.0)
    return frac


class HeatAssembler:
    """Finds newly completed heats of one furnace in the store, each returned once.

    Incremental: each call looks at tap points from ``lookback_s`` before the newest heat
    it returned, so a heat whose parts arrive late is still found; heats tapped earlier
    than that window and never completed are given up. Not thread safe.
    """

    def __init__(
        self,
        store: Store,
        plant: str,
        furnace: str,
        *,
        power_on_threshold_mw: float = DEFAULT_POWER_ON_THRESHOLD_MW,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
        lookback_s: float = DEFAULT_LOOKBACK_S,
    ) -> None:
        if not power_on_threshold_mw >= 0 or not max_gap_s > 0 or not lookback_s >= 0:
            raise ValueError("need power_on_threshold_mw >= 0, max_gap_s > 0, lookback_s >= 0")
        self.store = store
        self.plant = plant
        self.furnace = furnace
        self.tags = {"plant": plant, "furnace": furnace}
        self.power_on_threshold_mw = power_on_threshold_mw
        self.max_gap_s = max_gap_s
        self.lookback_ns = round(lookback_s * NS)
        self._done: dict[str, int] = {}  # heat id -> end ns, of heats already returned
        self._newest_ns: int | None = None
        #: Tapped heats not assembled yet, heat id -> what is missing (retried each call).
        self.pending: dict[str, str] = {}
        self.assembled = 0

    def new_heats(self) -> list[AssembledHeat]:
        """Complete heats not returned before, in order of tap time."""
        since = None if self._newest_ns is None else self._newest_ns - self.lookback_ns
        by_heat: dict[str, list[Point]] = {}
        for p in self.store.query_points(TAP_MEASUREMENT, self.tags, since):
            heat = p.tags.get("heat")
            if heat is not None and heat not in self._done:
                by_heat.setdefault(heat, []).append(p)
        pending: dict[str, str] = {}
        out: list[AssembledHeat] = []
        for heat_id, taps in sorted(by_heat.items(), key=lambda kv: (kv[1][0].ts_ns, kv[0])):
            try:
                assembled = self._assemble(heat_id, taps)
            except IncompleteHeat as exc:
                if self.pending.get(heat_id) != exc.reason:
                    log.info(
                        "heat %s of %s/%s not assembled yet: %s",
                        heat_id,
                        self.plant,
                        self.furnace,
                        exc,
                    )
                pending[heat_id] = exc.reason
                continue
            out.append(assembled)
        # Only now: a store error above leaves these heats to be found again next time.
        self._done.update((h.heat_id, h.end_ns) for h in out)
        self.pending = pending
        if out:
            newest = max(h.end_ns for h in out)
            self._newest_ns = newest if self._newest_ns is None else max(self._newest_ns, newest)
            # Heats before the window cannot come back: forget them.
            floor = self._newest_ns - self.lookback_ns
            self._done = {h: t for h, t in self._done.items() if t >= floor}
        self.assembled += len(out)
        return out

    def _assemble(self, heat_id: str, taps: list[Point]) -> AssembledHeat:
        tags = {**self.tags, "heat": heat_id}
        end_ns = min(p.ts_ns for p in taps)
        charge = self.store.query_points(CHARGE_MEASUREMENT, tags)
        signals = self.store.query_points(SIGNAL_MEASUREMENT, tags, None, end_ns)
        inputs, outcome, start_ns, end_ns = compute_heat(
            charge,
            signals,
            taps,
            power_on_threshold_mw=self.power_on_threshold_mw,
            max_gap_s=self.max_gap_s,
        )
        return AssembledHeat(
            heat_id, self.plant, self.furnace, start_ns, end_ns, inputs, outcome, len(signals)
        )
