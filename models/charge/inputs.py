"""What the charge optimiser is asked: a customer's order and the scrap yard's stock.

Both are pydantic models, read from TOML files (``alchimia optimize --order --stock``) or
from the JSON-able maps of a request (:class:`OptimizeRequest`, the body of
``agents/{id}/optimize/request``). Every number must be finite; sizes are bounded so that
a request from the bus cannot ask for unbounded work.

Units: tonnes (t), weight percent (%), kg or Nm3 per tonne *charged* (the process plan),
minutes, degrees C, money per tonne / per kWh / per t CO2 in one currency.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_GRADES = 64
ELEMENT_RE = re.compile(r"^[a-z]{1,2}$")  # cu, sn, ni, cr, mo, ...: the model's {el}_pct

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Window(BaseModel):
    """One element's window in the tapped steel, wt% (either bound may be absent)."""

    model_config = _STRICT
    min: float | None = Field(default=None, ge=0.0, le=100.0)
    max: float | None = Field(default=None, gt=0.0, le=100.0)

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.min is None and self.max is None:
            raise ValueError("a chemistry window needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class ProcessPlan(BaseModel):
    """The process plan of the heat, per tonne charged where it scales with the charge.

    Defaults are a typical practice (EAF.md: ~64 kg lime/t, ~16 kg coal/t; O2 and gas
    as the simulator's plants, check). Grades that bring gangue or carbon add their own
    lime and oxygen (``GradeStock.extra_lime_kg_t``, ``extra_oxygen_nm3_t``).
    """

    model_config = _STRICT
    hot_heel_t: float = Field(default=15.0, ge=0.0, le=100.0)
    lime_kg_t: float = Field(default=64.0, ge=0.0, le=300.0)
    carbon_kg_t: float = Field(default=16.0, ge=0.0, le=100.0)
    oxygen_nm3_t: float = Field(default=35.0, ge=0.0, le=200.0)
    gas_nm3_t: float = Field(default=7.0, ge=0.0, le=100.0)
    power_off_min: float = Field(default=12.0, gt=0.0, le=600.0)


class Order(BaseModel):
    """A customer's heat: how much steel, within which chemistry, how hot."""

    model_config = _STRICT
    name: str = Field(default="order", max_length=200)
    tapped_t: float = Field(gt=0.0, le=1000.0)
    tapped_tolerance_t: float = Field(default=1.0, gt=0.0, le=100.0)
    tap_temp_aim_c: float = Field(default=1640.0, ge=1400.0, le=1800.0)
    chemistry: dict[str, Window] = Field(default_factory=dict, max_length=32)
    plan: ProcessPlan = Field(default_factory=ProcessPlan)

    @field_validator("chemistry")
    @classmethod
    def _element_names(cls, value: dict[str, Window]) -> dict[str, Window]:
        for name in value:
            if not ELEMENT_RE.match(name):
                raise ValueError(f"element {name!r}: expected a lower-case symbol like 'cu'")
        return value


class GradeStock(BaseModel):
    """One material in the yard: how much there is for this heat and what it costs."""

    model_config = _STRICT
    available_t: float = Field(ge=0.0, le=10000.0)
    price_per_t: float = Field(ge=0.0, le=1e5)
    density_t_m3: float = Field(gt=0.0, le=10.0)  # bulk density in the basket
    co2_t_per_t: float = Field(default=0.0, ge=0.0, le=10.0)  # embodied CO2 of the material
    min_t: float = Field(default=0.0, ge=0.0, le=10000.0)  # must be charged (e.g. clear a lot)
    extra_lime_kg_t: float = Field(default=0.0, ge=0.0, le=500.0)  # flux for its gangue
    extra_oxygen_nm3_t: float = Field(default=0.0, ge=-200.0, le=200.0)  # its carbon, or less

    @model_validator(mode="after")
    def _min_le_available(self) -> GradeStock:
        if self.min_t > self.available_t:
            raise ValueError(f"min_t {self.min_t} > available_t {self.available_t}")
        return self


class Stock(BaseModel):
    """The yard (per grade, named as the model's ``charge_{grade}_t`` inputs), prices and
    the baskets. ``basket_volume_m3`` is one basket's volume; with ``baskets`` the charge
    may fill that many, without it the charge must fit the volume given."""

    model_config = _STRICT
    currency: str = Field(default="EUR", max_length=8)
    energy_price_per_kwh: float = Field(ge=0.0, le=10.0)
    co2_price_per_t: float = Field(default=0.0, ge=0.0, le=10000.0)
    electricity_co2_t_per_mwh: float = Field(default=0.0, ge=0.0, le=5.0)
    basket_volume_m3: float = Field(gt=0.0, le=10000.0)
    baskets: int | None = Field(default=None, ge=1, le=10)
    grades: dict[str, GradeStock] = Field(min_length=1, max_length=MAX_GRADES)

    @field_validator("grades")
    @classmethod
    def _grade_names(cls, value: dict[str, GradeStock]) -> dict[str, GradeStock]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", name):
                raise ValueError(f"grade {name!r}: letters, digits and _ only")
        return value

    @property
    def volume_m3(self) -> float:
        """Volume the whole charge may take."""
        return self.basket_volume_m3 * (self.baskets or 1)


class OptimizeRequest(BaseModel):
    """The JSON-able request: ``{"order": {...}, "stock": {...}, "risk": 0.05}``, and
    optionally ``"joint"`` (default true: ``risk`` bounds any element being over its
    maximum; false: each element separately) and ``"reference_charge"`` (grade -> t, the
    site's typical charge: margins widen for charges concentrated in fewer grades)."""

    model_config = _STRICT
    order: Order
    stock: Stock
    risk: float = Field(default=0.05, gt=0.0, lt=0.5)
    joint: bool = True
    reference_charge: dict[str, float] | None = Field(default=None, max_length=MAX_GRADES)

    @field_validator("reference_charge")
    @classmethod
    def _tonnes(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and any(not 0.0 <= t <= 10000.0 for t in value.values()):
            raise ValueError("reference tonnes must be in [0, 10000]")
        return value


def _toml(path: Path) -> dict[str, Any]:
    with Path(path).open("rb") as f:
        return tomllib.load(f)


def load_order(path: Path) -> Order:
    """An :class:`Order` from a TOML file (deploy/examples/order.toml shows every key)."""
    return Order.model_validate(_toml(path))


def load_stock(path: Path) -> Stock:
    """A :class:`Stock` from a TOML file (deploy/examples/stock.toml shows every key)."""
    return Stock.model_validate(_toml(path))


def request_from(data: Mapping[str, Any]) -> OptimizeRequest:
    """Validate a request's body (raises ``pydantic.ValidationError``, a ValueError)."""
    return OptimizeRequest.model_validate(data)
