"""Recorded trips as device messages: the sources `fleetpulse replay` plays. Pure apart
from reading the file it is given.

A recording source yields records in fix-time order: a device id, and either a fix in the
device contract (`mqtt.payloads.FixPayload`, `ts` in epoch milliseconds as recorded) or
a status report. Each file format is one `Format` in `FORMATS`: how to recognise it and
how to open it. A new format (MAVLink telemetry logs, say) is one more entry and a reader
that yields the same records.

Formats:
- porto: the ECML/PKDD 2015 Porto taxi CSV. One trip per row: TAXI_ID is the device,
  TIMESTAMP (epoch seconds) the first fix, POLYLINE a JSON list of [lon, lat] fixes 15 s
  apart; TRIP_ID carries a trailing tab.
- gpx: GPX 1.1 (and 1.0) tracks: `trkpt` lat/lon, `ele` (metres above sea level),
  `time`. Each track is a device, named by the track's `name`, else the file's name.
- dji: DJI flight-recorder logs, read by `tracker.dji_logs` (units converted there).
"""

from __future__ import annotations

import csv
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import msgspec

from fleetpulse.errors import FleetPulseError
from fleetpulse.simulation import mavlink
from mqtt.payloads import FixPayload
from tracker.dji_logs import DjiLogError, read_dji_log
from tracker.positions import DeviceKind, is_valid_device_id

PORTO_FIX_INTERVAL_MS = 15_000
PORTO_COLUMNS = ("TRIP_ID", "TAXI_ID", "TIMESTAMP", "POLYLINE")
SNIFF_BYTES = 16 * 1024
_NOT_IN_DEVICE_ID = re.compile(r"[^A-Za-z0-9_.:-]+")
_GPX_NAMESPACES = ("http://www.topografix.com/GPX/1/1", "http://www.topografix.com/GPX/1/0")


class RecordingError(FleetPulseError):
    """A recording that cannot be read; the message names the file and the place."""


class RecordedFix(msgspec.Struct, frozen=True):
    device_id: str
    fix: FixPayload  # `ts` is the recorded fix time, epoch milliseconds

    @property
    def ts_ms(self) -> int:
        assert isinstance(self.fix.ts, int)
        return self.fix.ts


class RecordedStatus(msgspec.Struct, frozen=True):
    """A device reporting itself online or offline (a heartbeat, a link lost)."""

    device_id: str
    ts_ms: int
    online: bool


Record = RecordedFix | RecordedStatus


class RecordingSource(Protocol):
    """What the player needs of a recording."""

    @property
    def description(self) -> str:
        """One line for the operator: what was read, and what was skipped and why."""

    def records(self) -> Iterator[Record]:
        """Every record, in fix-time order (ties in any order)."""


@dataclass(frozen=True)
class Format:
    name: str
    sniff: Callable[[Path, bytes], bool]  # the file's path and its first SNIFF_BYTES
    open: Callable[[Path, str], RecordingSource]  # (path, device id prefix)


def device_name(text: str, fallback: str = "device") -> str:
    """A device id made of a name from a file: other characters become '-'."""
    cleaned = _NOT_IN_DEVICE_ID.sub("-", text).strip("-")[:64]
    return cleaned or fallback


def _device_id(prefix: str, name: str, where: str) -> str:
    device_id = prefix + name
    if not is_valid_device_id(device_id):
        raise RecordingError(
            f"{where}: device id {device_id!r} must match [A-Za-z0-9_.:-]{{1,64}}"
            " (check --device-prefix)"
        )
    return device_id


class _Loaded:
    """A recording read whole into memory, sorted by fix time."""

    def __init__(self, records: list[Record], description: str) -> None:
        records.sort(key=lambda r: r.ts_ms)
        self._records = records
        self.description = description

    def records(self) -> Iterator[Record]:
        return iter(self._records)


# --- Porto taxi CSV ---------------------------------------------------------------------


def _sniff_porto(path: Path, head: bytes) -> bool:
    first = head.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0]
    return first.startswith(b"TRIP_ID") or (b"POLYLINE" in first and b"TAXI_ID" in first)


def read_porto(path: Path, device_prefix: str = "") -> RecordingSource:
    records: list[Record] = []
    trips = empty = 0
    taxis: set[str] = set()
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PORTO_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise RecordingError(f"{path}: not a Porto taxi CSV: no column {missing[0]}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                fixes = _porto_trip(row, where, device_prefix)
                trips += 1
                if not fixes:
                    empty += 1
                for fix in fixes:
                    taxis.add(fix.device_id)
                records.extend(fixes)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RecordingError(f"{path}: {exc}") from None
    return _Loaded(
        records,
        f"{path.name}: Porto taxi CSV, {trips} trips ({empty} without fixes skipped),"
        f" {len(taxis)} taxis, {len(records)} fixes",
    )


def _porto_trip(row: dict[str, str], where: str, prefix: str) -> list[RecordedFix]:
    trip = (row.get("TRIP_ID") or "").strip()  # the published file ends each id in a tab
    device_id = _device_id(prefix, (row.get("TAXI_ID") or "").strip(), f"{where} TAXI_ID")
    try:
        start_ms = int(row["TIMESTAMP"]) * 1000
    except (TypeError, ValueError):
        raise RecordingError(
            f"{where}: trip {trip}: TIMESTAMP {row['TIMESTAMP']!r} is not epoch seconds"
        ) from None
    try:
        polyline = json.loads(row["POLYLINE"] or "")
        points = [(float(lat), float(lon)) for lon, lat in polyline]
    except (TypeError, ValueError) as exc:
        raise RecordingError(
            f"{where}: trip {trip}: POLYLINE is not a JSON list of [lon, lat] ({exc})"
        ) from None
    fixes = []
    for i, (lat, lon) in enumerate(points):
        if not (math.isfinite(lat) and math.isfinite(lon)):
            raise RecordingError(f"{where}: trip {trip}: point {i} is not a finite position")
        ts = start_ms + i * PORTO_FIX_INTERVAL_MS
        fixes.append(
            RecordedFix(device_id, FixPayload(ts=ts, lat=lat, lon=lon, kind=DeviceKind.VEHICLE))
        )
    return fixes


# --- GPX --------------------------------------------------------------------------------


def _sniff_gpx(path: Path, head: bytes) -> bool:
    return b"<gpx" in head


def read_gpx(path: Path, device_prefix: str = "") -> RecordingSource:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise RecordingError(f"{path}: not well-formed XML: {exc}") from None
    except OSError as exc:
        raise RecordingError(f"{path}: {exc}") from None
    namespace = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
    if root.tag.rsplit("}", 1)[-1] != "gpx" or (namespace and namespace not in _GPX_NAMESPACES):
        raise RecordingError(f"{path}: not GPX 1.0/1.1 (root element {root.tag!r})")
    ns = {"g": namespace} if namespace else {}
    q = "g:" if namespace else ""
    tracks = root.findall(f"{q}trk", ns)
    if not tracks:
        raise RecordingError(f"{path}: no <trk> track in this GPX file")
    records: list[Record] = []
    names: dict[str, int] = {}
    for t, track in enumerate(tracks, start=1):
        name = device_name((track.findtext(f"{q}name", "", ns) or "").strip() or path.stem)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}-{names[name]}"  # two tracks of one name: two devices
        device_id = _device_id(device_prefix, name, f"{path}: track {t}")
        points = track.findall(f"{q}trkseg/{q}trkpt", ns)
        for p, point in enumerate(points, start=1):
            records.append(_gpx_point(point, device_id, f"{path}: track {t}, point {p}", q, ns))
    return _Loaded(records, f"{path.name}: GPX, {len(tracks)} tracks, {len(records)} track points")


def _gpx_point(
    point: ET.Element, device_id: str, where: str, q: str, ns: dict[str, str]
) -> RecordedFix:
    try:
        lat, lon = float(point.attrib["lat"]), float(point.attrib["lon"])
    except KeyError as exc:
        raise RecordingError(f"{where}: no {exc.args[0]} attribute") from None
    except ValueError as exc:
        raise RecordingError(f"{where}: lat/lon: {exc}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise RecordingError(f"{where}: {lat},{lon} is not a position on Earth")
    time_text = point.findtext(f"{q}time", None, ns)
    if time_text is None:
        raise RecordingError(f"{where}: no <time>: a replay needs each point's time")
    try:
        ts = datetime.fromisoformat(time_text.strip())
    except ValueError:
        raise RecordingError(f"{where}: <time> {time_text!r} is not RFC 3339") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # GPX times are UTC by definition
    alt = None
    ele = point.findtext(f"{q}ele", None, ns)
    if ele is not None:
        try:
            alt = float(ele)
        except ValueError:
            raise RecordingError(f"{where}: <ele> {ele!r} is not a number") from None
    fix = FixPayload(ts=round(ts.timestamp() * 1000), lat=lat, lon=lon, alt=alt)
    return RecordedFix(device_id, fix)


# --- DJI flight logs --------------------------------------------------------------------


def _sniff_dji(path: Path, head: bytes) -> bool:
    return b"#Flight Recorder" in head or b"\tElapsed Time (" in head


def read_dji(path: Path, device_prefix: str = "") -> RecordingSource:
    try:
        log = read_dji_log(path)
    except DjiLogError as exc:
        raise RecordingError(str(exc)) from None
    except OSError as exc:
        raise RecordingError(f"{path}: {exc}") from None
    device_id = _device_id(device_prefix, device_name(path.stem), str(path))
    # A log without its session start: its own modification time is the best clue.
    started = log.started_at or datetime.fromtimestamp(path.stat().st_mtime, UTC)
    start_ms = round(started.timestamp() * 1000)
    records: list[Record] = []
    no_position = same_time = 0
    last_ms = None
    for sample in log.samples:
        if sample.lat == 0.0 and sample.lon == 0.0:
            no_position += 1  # the app writes 0,0 before the first satellite fix
            continue
        ts = start_ms + round(sample.t_s * 1000)
        if ts == last_ms:
            same_time += 1  # one fix per fix time: a second row in the same ms is dropped
            continue
        last_ms = ts
        fix = FixPayload(
            ts=ts,
            lat=sample.lat,
            lon=sample.lon,
            rel_alt=sample.rel_alt_m,
            speed=sample.speed_mps,
            battery=sample.battery_pct,
            kind=DeviceKind.DRONE,
        )
        records.append(RecordedFix(device_id, fix))
    aircraft = log.aircraft or "unknown aircraft"
    return _Loaded(
        records,
        f"{path.name}: DJI flight log ({aircraft}), {len(records)} fixes"
        f" ({no_position} rows without a position and {same_time} in the same millisecond"
        " skipped)",
    )


FORMATS: dict[str, Format] = {
    "porto": Format("porto", _sniff_porto, read_porto),
    "gpx": Format("gpx", _sniff_gpx, read_gpx),
    "dji": Format("dji", _sniff_dji, read_dji),
    "mavlink": Format("mavlink", mavlink.sniff, mavlink.read_recording),
}


def detect_format(path: Path) -> Format:
    try:
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise RecordingError(f"{path}: {exc.strerror or exc}") from None
    for candidate in FORMATS.values():
        if candidate.sniff(path, head):
            return candidate
    raise RecordingError(
        f"{path}: cannot tell its format; name it with --format ({'|'.join(FORMATS)})"
    )


def open_recording(path: str | Path, fmt: str = "auto", device_prefix: str = "") -> RecordingSource:
    path = Path(path)
    chosen = detect_format(path) if fmt == "auto" else FORMATS.get(fmt)
    if chosen is None:
        raise RecordingError(f"unknown format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    return chosen.open(path, device_prefix)
