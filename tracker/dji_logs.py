"""DJI flight-recorder logs (the DroneDeploy app's tab-separated export) as typed samples
in SI units. Pure apart from reading the one file it is given.

A log is a block of `key<TAB>value` metadata under `#Section` lines, one header row,
data rows at ~10 Hz, and a `#Flight Recorder Session End` trailer. App versions and
devices (iPad, iPhone) differ in which columns exist and where (an iPhone log of a
six-cell battery has two more cell columns), so columns are found by header name, never
by position. The unit is read from the header, `Aircraft Speed (mph)`, and converted:
DJI writes barometric altitude in feet above the take-off point and speeds in mph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

FOOT_M = 0.3048  # international foot, exact
MILE_PER_HOUR_MPS = 0.44704  # 1609.344 m / 3600 s, exact
KM_PER_HOUR_MPS = 1 / 3.6

# Quantities by header name without the unit; the unit in parentheses picks the factor.
ELAPSED = "Elapsed Time"
LATITUDE = "Aircraft Latitude"
LONGITUDE = "Aircraft Longitude"
ALTITUDE = "Aircraft Barometric Altitude"
SPEED = "Aircraft Speed"
VERTICAL_SPEED = "Aircraft Vel - Z"  # north-east-down frame: positive is descending
BATTERY = "Aircraft Battery Power"
CURRENT = "Aircraft Battery Current"  # negative while discharging
BATTERY_UPDATED = "Aircraft Battery Last Updated"
FLYING = "Aircraft Flying"

_TIME_UNITS = {"sec": 1.0, "s": 1.0}
_ANGLE_UNITS = {"Degrees": 1.0}
_LENGTH_UNITS = {"ft": FOOT_M, "m": 1.0}
_SPEED_UNITS = {"mph": MILE_PER_HOUR_MPS, "m/s": 1.0, "km/h": KM_PER_HOUR_MPS}
_PERCENT_UNITS = {"%": 1.0}
_CURRENT_UNITS = {"mA": 0.001, "A": 1.0}
_REQUIRED = {
    ELAPSED: _TIME_UNITS,
    LATITUDE: _ANGLE_UNITS,
    LONGITUDE: _ANGLE_UNITS,
    ALTITUDE: _LENGTH_UNITS,
    SPEED: _SPEED_UNITS,
    BATTERY: _PERCENT_UNITS,
}
_OPTIONAL = {VERTICAL_SPEED: _SPEED_UNITS, CURRENT: _CURRENT_UNITS}
# Written by the app for a value it has not received yet (the battery, first seconds).
_NO_DATA = frozenset({"", "No Data"})
_AIRCRAFT = "Aircraft Model"
_CAPACITY = "Full Charge Volume (mAh)"
_SESSION_START = "Session Start"
_SESSION_START_FORMAT = "%m/%d/%Y %H:%M:%S"  # UTC, as the app writes it
_TRAILER = "#"


class DjiLogError(ValueError):
    """A log that cannot be read: names the file, and the line and column at fault."""

    def __init__(
        self, source: str, line: int | None, message: str, column: str | None = None
    ) -> None:
        where = source if line is None else f"{source}:{line}"
        what = message if column is None else f"column {column!r}: {message}"
        super().__init__(f"{where}: {what}")
        self.source = source
        self.line = line
        self.column = column


class DjiSample(msgspec.Struct, frozen=True, gc=False):
    """One row of a flight log. Units: seconds, degrees, metres, m/s, percent.

    `t_s` is the time since the session started. `rel_alt_m` is barometric, above the
    take-off point. `climb_mps` is positive upwards, None when the log has no vertical
    velocity. `battery_pct` is None until the battery has reported. `flying` is DJI's
    own airborne flag, None when the log has no such column. `discharge_a` is the
    battery current, positive while discharging; None when not logged or not reported.
    """

    t_s: float
    lat: float
    lon: float
    rel_alt_m: float
    speed_mps: float
    climb_mps: float | None
    battery_pct: float | None
    flying: bool | None
    discharge_a: float | None = None


class DjiLog(msgspec.Struct, frozen=True):
    source: str
    aircraft: str | None  # e.g. "Phantom 4 Pro", from the metadata block
    started_at: datetime | None  # UTC; the session start of the metadata block
    capacity_mah: float | None  # the battery's full charge: what 100 % means
    columns: int  # the header's width: tells the layouts apart
    samples: tuple[DjiSample, ...]


@dataclass(frozen=True)
class _Column:
    index: int
    name: str
    factor: float


def read_dji_log(path: str | Path) -> DjiLog:
    """Read and parse one log file; errors name the file, line and column."""
    path = Path(path)
    with path.open("rb") as f:
        return parse_dji_log(_decoded(f, str(path)), source=str(path))


def parse_dji_log(lines: Iterable[str], source: str = "<log>") -> DjiLog:
    """Parse the lines of a log (without or with line endings)."""
    meta: dict[str, tuple[int, str]] = {}  # key -> (line, value)
    columns: dict[str, _Column] | None = None
    width = 0
    samples: list[DjiSample] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if columns is None:
            fields = line.split("\t")
            if _is_header(fields):
                columns, width = _columns(fields, source, number), len(fields)
            elif len(fields) >= 2 and not line.startswith("#"):
                meta.setdefault(fields[0], (number, fields[1]))
            continue
        if line.startswith(_TRAILER):
            break  # the session-end trailer: key/value lines, not samples
        if not line.strip():
            continue
        sample = _sample(line.split("\t"), columns, width, source, number)
        if samples and sample.t_s < samples[-1].t_s:
            message = f"time goes backwards ({sample.t_s} s after {samples[-1].t_s} s)"
            raise DjiLogError(source, number, message, columns[ELAPSED].name)
        samples.append(sample)
    if columns is None:
        raise DjiLogError(source, None, f"no header row with an {ELAPSED!r} column")
    return DjiLog(
        source=source,
        aircraft=meta.get(_AIRCRAFT, (0, ""))[1].strip() or None,
        started_at=_session_start(meta.get(_SESSION_START), source),
        capacity_mah=_capacity(meta.get(_CAPACITY), source),
        columns=width,
        samples=tuple(samples),
    )


def _decoded(raw_lines: Iterable[bytes], source: str) -> Iterable[str]:
    for number, raw in enumerate(raw_lines, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DjiLogError(source, number, f"not UTF-8 ({exc.reason})") from None


def _is_header(fields: Sequence[str]) -> bool:
    return any(_quantity(name)[0] == ELAPSED for name in fields)


def _quantity(header: str) -> tuple[str, str | None]:
    """'Aircraft Speed (mph)' -> ('Aircraft Speed', 'mph')."""
    name = header.strip()
    if name.endswith(")") and " (" in name:
        quantity, unit = name[:-1].rsplit(" (", 1)
        return quantity, unit
    return name, None


def _columns(header: Sequence[str], source: str, line: int) -> dict[str, _Column]:
    found: dict[str, _Column] = {}
    for index, name in enumerate(header):
        quantity, unit = _quantity(name)
        if quantity in found:
            continue  # the first of a repeated name, as a reader by name would see it
        units = _REQUIRED.get(quantity) or _OPTIONAL.get(quantity)
        if units is not None:
            if unit not in units:
                raise DjiLogError(source, line, f"unknown unit {unit!r}", name)
            found[quantity] = _Column(index, name, units[unit])
        elif quantity in (BATTERY_UPDATED, FLYING):
            found[quantity] = _Column(index, name, 1.0)
    missing = [q for q in _REQUIRED if q not in found]
    if missing:
        raise DjiLogError(source, line, f"header lacks {', '.join(map(repr, missing))}")
    return found


class _Row:
    """One data row: numbers by quantity, converted, with errors naming their place."""

    def __init__(
        self, fields: Sequence[str], columns: dict[str, _Column], source: str, line: int
    ) -> None:
        self.fields, self.columns, self.source, self.line = fields, columns, source, line

    def error(self, message: str, quantity: str | None = None) -> DjiLogError:
        column = None if quantity is None else self.columns[quantity].name
        return DjiLogError(self.source, self.line, message, column)

    def text(self, quantity: str) -> str:
        return self.fields[self.columns[quantity].index].strip()

    def number(self, quantity: str) -> float:
        text = self.text(quantity)
        try:
            value = float(text)
        except ValueError:
            raise self.error(f"not a number: {text!r}", quantity) from None
        if not math.isfinite(value):
            raise self.error(f"not a finite number: {text!r}", quantity)
        return value * self.columns[quantity].factor

    def within(self, quantity: str, low: float, high: float) -> float:
        value = self.number(quantity)
        if not low <= value <= high:
            raise self.error(f"{value} outside [{low}, {high}]", quantity)
        return value

    def battery_reported(self) -> bool:
        # Before the battery's first report the app writes 0 % and 0 mA next to
        # 'No Data': missing values, not an empty battery.
        return BATTERY_UPDATED not in self.columns or self.text(BATTERY_UPDATED) not in _NO_DATA

    def battery(self) -> float | None:
        if not self.battery_reported() or self.text(BATTERY) in _NO_DATA:
            return None
        return self.within(BATTERY, 0.0, 100.0)

    def discharge(self) -> float | None:
        if CURRENT not in self.columns or not self.battery_reported():
            return None
        if self.text(CURRENT) in _NO_DATA:
            return None
        return 0.0 - self.number(CURRENT)

    def flag(self, quantity: str) -> bool | None:
        if quantity not in self.columns:
            return None
        text = self.text(quantity)
        if text not in ("0", "1"):
            raise self.error(f"expected 0 or 1, got {text!r}", quantity)
        return text == "1"


def _sample(
    fields: Sequence[str], columns: dict[str, _Column], width: int, source: str, line: int
) -> DjiSample:
    row = _Row(fields, columns, source, line)
    if len(fields) != width:
        # A truncated row (a crash mid-write) or a stray tab: every later field would
        # be read from the wrong column.
        raise row.error(f"{len(fields)} fields where the header has {width}")
    climb = None
    if VERTICAL_SPEED in columns:
        climb = 0.0 - row.number(VERTICAL_SPEED)  # the log is down-positive, ours up-positive
    return DjiSample(
        t_s=row.within(ELAPSED, 0.0, math.inf),
        lat=row.within(LATITUDE, -90.0, 90.0),
        lon=row.within(LONGITUDE, -180.0, 180.0),
        rel_alt_m=row.number(ALTITUDE),
        speed_mps=row.within(SPEED, 0.0, math.inf),
        climb_mps=climb,
        battery_pct=row.battery(),
        flying=row.flag(FLYING),
        discharge_a=row.discharge(),
    )


def _session_start(entry: tuple[int, str] | None, source: str) -> datetime | None:
    if entry is None:
        return None
    line, text = entry
    try:
        return datetime.strptime(text.strip(), _SESSION_START_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        message = f"{_SESSION_START!r} is {text!r}, expected MM/DD/YYYY HH:MM:SS"
        raise DjiLogError(source, line, message) from None


def _capacity(entry: tuple[int, str] | None, source: str) -> float | None:
    if entry is None or not entry[1].strip():
        return None
    line, text = entry
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise DjiLogError(source, line, f"{_CAPACITY!r} is {text!r}, expected a positive number")
    return value
