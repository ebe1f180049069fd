"""Drift scenarios: the reasons a plant's learned model goes stale.

Each scenario is a small frozen dataclass active from heat index ``start_heat`` on. For
every heat the plant starts from neutral :class:`HeatEffects` and lets each active drift
adjust them, so a scenario can never touch heats before its start. ``parse_drift`` and
``Drift.spec`` give a compact text form for the command line that round-trips exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from alchimia.agent.sim.grades import CU, ELEMENTS, GRADE_INDEX, SN, FloatArray
from alchimia.models.schema import GRADES


@dataclass
class HeatEffects:
    """What drifts change for one heat; neutral values mean 'as the profile says'."""

    comp_scale: FloatArray = field(
        default_factory=lambda: np.ones((len(GRADES), len(ELEMENTS)))
    )  # multiplies each grade's mean residuals
    extra_sigma: FloatArray = field(
        default_factory=lambda: np.zeros(len(GRADES))
    )  # added to each grade's lognormal spread
    yield_delta: FloatArray = field(
        default_factory=lambda: np.zeros(len(GRADES))
    )  # added to each grade's metallic yield
    hbi_share: float | None = None  # replaces the HBI fraction of the practice mix
    extra_loss_kwh_t: float = 0.0  # thermal losses on top of the furnace's own
    moisture_frac: float = 0.0  # water in open-yard scrap, by mass


@dataclass(frozen=True)
class Drift:
    """Base of all scenarios: a start heat plus parameters, all with defaults."""

    name: ClassVar[str] = ""
    start_heat: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.start_heat, bool) or not isinstance(self.start_heat, int):
            raise ValueError(f"start_heat must be an int, got {self.start_heat!r}")
        if self.start_heat < 0:
            raise ValueError(f"start_heat must be >= 0, got {self.start_heat}")

    def active(self, heat_index: int) -> bool:
        return heat_index >= self.start_heat

    def apply(self, heat_index: int, fx: HeatEffects) -> HeatEffects:
        """Adjust ``fx`` in place for an active heat and return it."""
        raise NotImplementedError

    def spec(self) -> str:
        """Text form accepted by :func:`parse_drift` (all parameters spelled out)."""
        params = [
            f"{f.name}={_format_value(getattr(self, f.name))}"
            for f in fields(self)
            if f.name != "start_heat"
        ]
        head = f"{self.name}@{self.start_heat}"
        return f"{head}:{','.join(params)}" if params else head


def _format_value(value: object) -> str:
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")


@dataclass(frozen=True)
class SupplierChange(Drift):
    """A new supplier for some grades: dirtier in Cu/Sn, more skewed, lower yield.

    The yield loss (more dirt and oxide) also moves energy per tonne, which is why energy
    models are notably unstable under supplier changes (EAF.md).
    """

    name: ClassVar[str] = "supplier_change"
    grades: tuple[str, ...] = ("E40", "E46", "E1")
    cu_factor: float = 1.6
    sn_factor: float = 1.3
    skew: float = 0.15  # added lognormal spread
    yield_delta: float = -0.02  # added to the grades' metallic yield

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.grades:
            raise ValueError("grades must name at least one grade")
        unknown = [g for g in self.grades if g not in GRADE_INDEX]
        if unknown:
            raise ValueError(f"unknown grades {unknown} (known: {', '.join(GRADES)})")
        _check_positive("cu_factor", self.cu_factor)
        _check_positive("sn_factor", self.sn_factor)
        _check_positive("skew", self.skew, allow_zero=True)
        if not (math.isfinite(self.yield_delta) and -0.3 < self.yield_delta < 0.05):
            raise ValueError(f"yield_delta must be in (-0.3, 0.05), got {self.yield_delta!r}")

    def apply(self, heat_index: int, fx: HeatEffects) -> HeatEffects:
        rows = [GRADE_INDEX[g] for g in self.grades]
        fx.comp_scale[rows, CU] *= self.cu_factor
        fx.comp_scale[rows, SN] *= self.sn_factor
        fx.extra_sigma[rows] += self.skew
        fx.yield_delta[rows] += self.yield_delta
        return fx


@dataclass(frozen=True)
class RefractoryWear(Drift):
    """Lining thins through a campaign so losses rise, then a reline resets them."""

    name: ClassVar[str] = "refractory_wear"
    campaign_heats: int = 800
    max_extra_kwh_t: float = 30.0  # extra loss at the end of a campaign (check)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.campaign_heats, bool) or not isinstance(self.campaign_heats, int):
            raise ValueError(f"campaign_heats must be an int, got {self.campaign_heats!r}")
        if self.campaign_heats < 1:
            raise ValueError(f"campaign_heats must be >= 1, got {self.campaign_heats}")
        _check_positive("max_extra_kwh_t", self.max_extra_kwh_t, allow_zero=True)

    def apply(self, heat_index: int, fx: HeatEffects) -> HeatEffects:
        age = (heat_index - self.start_heat) % self.campaign_heats
        fx.extra_loss_kwh_t += self.max_extra_kwh_t * age / self.campaign_heats
        return fx


@dataclass(frozen=True)
class HbiShareChange(Drift):
    """The plant switches to a new HBI share; the other grades shrink proportionally."""

    name: ClassVar[str] = "hbi_share"
    share: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.share) and 0.0 <= self.share < 1.0):
            raise ValueError(f"share must be in [0, 1), got {self.share!r}")

    def apply(self, heat_index: int, fx: HeatEffects) -> HeatEffects:
        fx.hbi_share = self.share
        return fx


@dataclass(frozen=True)
class SeasonalMoisture(Drift):
    """Rain and snow in open-yard scrap: water to evaporate, over a year of heats.

    Moisture is zero at the start heat and peaks half a period later, so the onset is
    smooth. ~8,600 heats is a year at ~55 min tap-to-tap and ~90 % utilisation (check).
    """

    name: ClassVar[str] = "seasonal_moisture"
    amplitude: float = 0.03  # peak water mass fraction (check)
    period_heats: int = 8600

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.amplitude) and 0.0 <= self.amplitude < 0.2):
            raise ValueError(f"amplitude must be in [0, 0.2), got {self.amplitude!r}")
        if isinstance(self.period_heats, bool) or not isinstance(self.period_heats, int):
            raise ValueError(f"period_heats must be an int, got {self.period_heats!r}")
        if self.period_heats < 2:
            raise ValueError(f"period_heats must be >= 2, got {self.period_heats}")

    def moisture(self, heat_index: int) -> float:
        phase = 2.0 * math.pi * (heat_index - self.start_heat) / self.period_heats
        return self.amplitude * 0.5 * (1.0 - math.cos(phase))

    def apply(self, heat_index: int, fx: HeatEffects) -> HeatEffects:
        fx.moisture_frac += self.moisture(heat_index)
        return fx


DRIFT_TYPES: dict[str, type[Drift]] = {
    cls.name: cls for cls in (SupplierChange, RefractoryWear, HbiShareChange, SeasonalMoisture)
}


def parse_drift(spec: str) -> Drift:
    """Parse ``NAME@START[:key=value,...]``, e.g. ``refractory_wear@0:campaign_heats=800``.

    Tuple parameters join their items with ``+`` (``grades=E40+E46``). ``campaign`` is
    accepted as a short alias of ``campaign_heats``.
    """
    usage = "expected NAME@START[:key=value,...]"
    text = spec.strip() if isinstance(spec, str) else ""
    if not text:
        raise ValueError(f"empty drift spec {spec!r}: {usage}")
    head, _, params_text = text.partition(":")
    name, at, start_text = head.partition("@")
    name = name.strip()
    if not at:
        raise ValueError(f"bad drift spec {spec!r}: missing '@START'; {usage}")
    cls = DRIFT_TYPES.get(name)
    if cls is None:
        known = ", ".join(sorted(DRIFT_TYPES))
        raise ValueError(f"bad drift spec {spec!r}: unknown scenario {name!r} (known: {known})")
    try:
        start = int(start_text.strip())
    except ValueError:
        raise ValueError(
            f"bad drift spec {spec!r}: start heat {start_text!r} is not an integer"
        ) from None

    defaults = {f.name: f.default for f in fields(cls) if f.name != "start_heat"}
    kwargs: dict[str, object] = {}
    if params_text.strip():
        for item in params_text.split(","):
            key, eq, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if key == "campaign" and cls is RefractoryWear:
                key = "campaign_heats"
            if not eq or not key or not raw:
                raise ValueError(f"bad drift spec {spec!r}: parameter {item!r} is not key=value")
            if key not in defaults:
                allowed = ", ".join(defaults) or "none"
                raise ValueError(
                    f"bad drift spec {spec!r}: {name} has no parameter {key!r} (allowed: {allowed})"
                )
            if key in kwargs:
                raise ValueError(f"bad drift spec {spec!r}: parameter {key!r} given twice")
            kwargs[key] = _parse_value(spec, key, raw, defaults[key])
    try:
        return cls(start, **kwargs)
    except ValueError as exc:
        raise ValueError(f"bad drift spec {spec!r}: {exc}") from None


def _parse_value(spec: str, key: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split("+"))
        if isinstance(default, int):
            return int(raw)
        value = float(raw)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ValueError(f"bad drift spec {spec!r}: {key}={raw!r} is not {kind}") from None
    if not math.isfinite(value):
        raise ValueError(f"bad drift spec {spec!r}: {key}={raw!r} is not finite")
    return value
