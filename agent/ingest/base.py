"""The contract between sensor sources, the store and heat assembly, and what sources share.

The measurement and field names below are a contract with PLC gateways, CSV exports and
dashboards (docs/SENSORS.md): renaming one orphans every point already stored. Field
names of the charge and tap records are the model's own column names
(:mod:`models.schema`), so a value keeps one name from the PLC to the ONNX graph.

Every source turns its input into :class:`~agent.store.Point` objects and never raises on
bad input: a message or row it cannot use is counted under a reason in
:class:`IngestStats`, logged (rate-limited and escaped, so a misconfigured gateway
sending 100 messages a second cannot flood the log, nor a topic forge a line), and skipped.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from alchimia.agent.records import SIGNAL_FIELDS
from alchimia.agent.store import FURNACE_TAGS, Point
from alchimia.broker.rejections import RejectionLog
from alchimia.models.schema import FEATURES, GRADES, TARGETS

__all__ = [
    "CHARGE_FIELDS",
    "CHARGE_MEASUREMENT",
    "CHARGE_REQUIRED",
    "COMPUTED_FEATURES",
    "FURNACE_TAGS",
    "ID_PATTERN",
    "SIGNAL_FIELDS",
    "SIGNAL_MEASUREMENT",
    "TAP_FIELDS",
    "TAP_MEASUREMENT",
    "IngestStats",
    "PointSource",
    "Reason",
    "Rejected",
    "check_id",
    "parse_number",
    "parse_ts",
]

log = logging.getLogger(__name__)

#: One point per sensor sample, fields :data:`SIGNAL_FIELDS` (any non-empty subset).
SIGNAL_MEASUREMENT = "eaf_signal"
#: One point per heat when it is charged (its timestamp is the heat's start).
CHARGE_MEASUREMENT = "eaf_charge"
#: One point per heat at tap; its timestamp closes the heat (see docs/SENSORS.md).
TAP_MEASUREMENT = "eaf_tap"

#: What is known before melting: tonnes per grade, hot heel, lime, the tap temperature aim.
CHARGE_FIELDS: tuple[str, ...] = (
    *(f"charge_{g}_t" for g in GRADES),
    "hot_heel_t",
    "lime_t",
    "tap_temp_aim_c",
)
#: Charge fields a heat cannot be assembled without (an absent grade means 0 t charged).
CHARGE_REQUIRED: tuple[str, ...] = ("hot_heel_t", "lime_t", "tap_temp_aim_c")
#: Features heat assembly computes from the ``eaf_signal`` samples.
COMPUTED_FEATURES: tuple[str, ...] = (
    "carbon_kg",
    "oxygen_nm3",
    "gas_nm3",
    "power_on_min",
    "power_off_min",
)
#: The outcome measured at tap; energy_kwh_t is computed from active power instead.
TAP_FIELDS: tuple[str, ...] = tuple(t for t in TARGETS if t != "energy_kwh_t")

if set(CHARGE_FIELDS) | set(COMPUTED_FEATURES) != set(FEATURES):  # pragma: no cover
    raise ImportError("agent.ingest.base is out of step with models.schema.FEATURES")

#: Plant, furnace and heat identifiers: safe as InfluxDB tag values and MQTT topic levels.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

# Plausible timestamps: 2000-01-01 .. 2100-01-01. Rejects seconds or milliseconds sent
# where nanoseconds are expected (they land in 1970).
TS_MIN_NS = 946_684_800 * 10**9
TS_MAX_NS = 4_102_444_800 * 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO_FRACTION = re.compile(r"(?P<head>.*\d\d:\d\d:\d\d)[.,](?P<frac>\d{1,9})(?P<tz>\D.*)?")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


class Reason:
    """Why a message or row was rejected: the keys of :attr:`IngestStats.rejected`."""

    OVERSIZED = "oversized"  # payload larger than the source's limit
    BAD_JSON = "bad_json"  # not UTF-8 JSON
    BAD_TOPIC = "bad_topic"  # topic outside the contract, or bad plant/furnace level
    BAD_TYPE = "bad_type"  # payload not an object, values not an object, value not a number
    MISSING_HEAT = "missing_heat"
    BAD_HEAT = "bad_heat"  # heat id not a string matching ID_PATTERN
    MISSING_TS = "missing_ts"
    BAD_TS = "bad_ts"  # not int ns / ISO 8601 with offset, or outside 2000..2100
    NO_VALUES = "no_values"  # no field values at all
    UNKNOWN_FIELD = "unknown_field"  # a key the record kind does not define
    NON_FINITE = "non_finite"  # NaN, infinity, or a number too large for a float
    BAD_ID = "bad_id"  # CSV: plant or furnace id not matching ID_PATTERN
    MISSING_VALUE = "missing_value"  # CSV: a required cell is empty
    BAD_ROW = "bad_row"  # CSV: wrong number of cells
    DUPLICATE_HEAT = "duplicate_heat"  # CSV: a heat id seen before in the heat table
    UNKNOWN_HEAT = "unknown_heat"  # CSV: a signal row of a heat not in the heat table
    OVERFLOW = "overflow"  # MQTT: the inbox was full (the agent did not poll in time)
    STORE_REFUSED = "store_refused"  # the store refused a point that passed the checks
    INTERNAL = "internal"  # a bug: an unexpected exception while parsing


class Rejected:
    """A refused message or row: the reason counted, the detail logged."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail

    def __repr__(self) -> str:
        return f"Rejected({self.reason!r}, {self.detail!r})"


class IngestStats:
    """Accepted points and rejected inputs per reason; thread safe (MQTT callbacks count).

    Each rejection is counted and logged through a :class:`~broker.rejections.RejectionLog`:
    one line per reason a minute at most, values escaped, the rest summed up.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.log = RejectionLog(logger or log, burst=1, what="rejected inputs")

    def accept(self, n: int = 1) -> None:
        with self._lock:
            self.accepted += n

    def reject(self, reason: str, msg: str = "input rejected: %s", *args: object) -> None:
        """Count one rejected input under ``reason`` and log ``msg % args`` (bounded)."""
        self.log.reject(reason, msg, *(args or (reason,)))

    @property
    def rejected(self) -> Counter[str]:
        return Counter(self.log.snapshot())

    @property
    def rejected_total(self) -> int:
        return self.log.total

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"accepted": self.accepted, "rejected": self.log.snapshot()}


@runtime_checkable
class PointSource(Protocol):
    """Where sensor points come from: a simulator, a PLC gateway over MQTT, a CSV export."""

    stats: IngestStats
    #: True when a polled point exists nowhere else: a live feed already acknowledged to
    #: its publisher. The pipeline writes such points at every poll; points a source can
    #: produce again after a crash (a simulator, a file) may wait to be written in batches.
    volatile: bool

    @property
    def caught_up(self) -> bool:
        """True once everything that existed at start (history, a file) has been polled."""
        ...

    def poll(self) -> list[Point]:
        """Points available since the last call (possibly none); never raises on bad input."""
        ...

    def close(self) -> None: ...


def check_id(value: object) -> str | None:
    """``value`` if it is a valid plant/furnace/heat identifier, else None."""
    if type(value) is str and ID_PATTERN.fullmatch(value):
        return value
    return None


def parse_ts(value: object) -> int | Rejected:
    """Exact integer nanoseconds from an integer (ns) or an ISO 8601 text with an offset.

    Integers only: a float cannot carry nanoseconds of a current date exactly, so a float
    timestamp is refused rather than silently rounded. ISO texts resolve to microseconds.
    """
    if type(value) is int:
        ns = value
    elif type(value) is str:
        text = value.strip()
        if text.lstrip("+-").isdigit():
            ns = int(text)
        else:
            # datetime stops at microseconds: the fraction is taken apart to keep all nine
            # digits a gateway may send.
            frac_ns = 0
            m = _ISO_FRACTION.fullmatch(text)
            if m is not None:
                text = m["head"] + (m["tz"] or "")
                frac_ns = int(m["frac"].ljust(9, "0"))
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                return Rejected(Reason.BAD_TS, f"not ISO 8601: {value[:40]!r}")
            if dt.tzinfo is None:
                return Rejected(Reason.BAD_TS, f"ISO time without offset: {value[:40]!r}")
            try:
                ns = (dt - _EPOCH) // timedelta(seconds=1) * 10**9 + frac_ns
            except OverflowError:
                return Rejected(Reason.BAD_TS, f"out of range: {value[:40]!r}")
    else:
        return Rejected(
            Reason.BAD_TS, f"ts must be integer ns or ISO text, got {type(value).__name__}"
        )
    if not TS_MIN_NS <= ns < TS_MAX_NS:
        return Rejected(Reason.BAD_TS, f"ts {ns} ns is outside 2000..2100 (not nanoseconds?)")
    return ns


def parse_number(value: object) -> float | Rejected:
    """A finite float from a JSON number or a decimal text (never from a bool)."""
    t = type(value)
    if t is float:
        number = value
    elif t is int:
        try:
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:
            return Rejected(Reason.NON_FINITE, "integer too large for a float")
    elif t is str:
        text = value.strip()  # type: ignore[attr-defined]
        if _NON_FINITE.fullmatch(text):
            return Rejected(Reason.NON_FINITE, f"{text!r}")
        if not _NUMBER.fullmatch(text):
            return Rejected(Reason.BAD_TYPE, f"not a number: {text[:40]!r}")
        number = float(text)
    else:
        return Rejected(Reason.BAD_TYPE, f"value must be a number, got {t.__name__}")
    if not math.isfinite(number):  # type: ignore[arg-type]
        return Rejected(Reason.NON_FINITE, f"{number!r}")
    return number  # type: ignore[return-value]
