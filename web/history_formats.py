"""A device's history as JSON, NDJSON, GeoJSON, GPX 1.1 or CSV, encoded as it streams.

Pure: an encoder turns batches of fixes into bytes and keeps only what the format needs
between batches (whether a separator is due, the first point of a line), so a range of
any length passes through in constant memory. `encode` drives one over an async
iterator of fixes, one chunk per `CHUNK_FIXES` fixes.
"""

from __future__ import annotations

import csv
import enum
import io
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol
from xml.sax.saxutils import escape

import msgspec

from ingest.schema import TELEMETRY_COLUMNS
from tracker.positions import DeviceKind, Fix

# Fixes per written chunk: large enough that a write costs little per fix, small enough
# that a chunk stays well under a megabyte in every format.
CHUNK_FIXES = 1_000

_json = msgspec.json.Encoder()


class Format(enum.StrEnum):
    JSON = "json"
    NDJSON = "ndjson"
    GEOJSON = "geojson"
    GPX = "gpx"
    CSV = "csv"


class Geometry(enum.StrEnum):
    """GeoJSON only: one Point Feature per fix, or the track as one LineString."""

    POINTS = "points"
    LINE = "line"


MEDIA_TYPES = {
    Format.JSON: "application/json",
    Format.NDJSON: "application/x-ndjson",
    Format.GEOJSON: "application/geo+json",
    Format.GPX: "application/gpx+xml",
    Format.CSV: "text/csv",
}


Time = Annotated[datetime, msgspec.Meta(tz=True)]


class HistoryFix(msgspec.Struct, frozen=True):
    """A stored fix as the `json` and `ndjson` formats write it: `tracker.positions.Fix`
    field for field (a unit test keeps them equal), described here for the schema.
    Metres, metres per second, degrees, percent."""

    device_id: str
    ts: Time
    lat: float
    lon: float
    received_at: Time
    alt: float | None = None
    rel_alt: float | None = None
    speed: float | None = None
    heading: float | None = None
    acc: float | None = None
    battery: float | None = None
    kind: DeviceKind | None = None
    seq: int | None = None


class HistoryPage(msgspec.Struct, frozen=True):
    """The `json` format: the fixes in fix-time order, then the cursor of the next page
    (null on the last page). Written last, so that a client reading the stream gets it
    after the fixes it continues."""

    device_id: str
    fixes: list[HistoryFix]
    next: str | None


def cursor(ts: datetime) -> str:
    """A fix time as the `after` cursor: RFC 3339 in UTC with microseconds and a `Z`,
    which survives a URL without escaping (no `+`) and loses no precision."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Encoder(Protocol):
    def head(self) -> bytes: ...

    def body(self, fixes: Sequence[Fix]) -> bytes: ...

    def tail(self) -> bytes: ...


class _JsonArray:
    """`{"device_id": ..., "fixes": [...], "next": ...}`."""

    def __init__(self, device_id: str, next_cursor: str | None) -> None:
        self._device_id = device_id
        self._next = next_cursor
        self._first = True

    def head(self) -> bytes:
        return b'{"device_id":' + _json.encode(self._device_id) + b',"fixes":['

    def body(self, fixes: Sequence[Fix]) -> bytes:
        if not fixes:
            return b""
        items = _json.encode(fixes)[1:-1]  # the list's items without its brackets
        separator = b"" if self._first else b","
        self._first = False
        return separator + items

    def tail(self) -> bytes:
        return b'],"next":' + _json.encode(self._next) + b"}"


class _NdJson:
    """One fix per line; the next page is only in the Link header."""

    def head(self) -> bytes:
        return b""

    def body(self, fixes: Sequence[Fix]) -> bytes:
        return b"".join(_json.encode(fix) + b"\n" for fix in fixes)

    def tail(self) -> bytes:
        return b""


def _position(fix: Fix) -> list[float]:
    # RFC 7946: longitude first; the third value is the altitude when there is one.
    return [fix.lon, fix.lat] if fix.alt is None else [fix.lon, fix.lat, fix.alt]


def _point_properties(fix: Fix) -> dict[str, Any]:
    return {
        "device_id": fix.device_id,
        "ts": fix.ts,
        "alt": fix.alt,
        "rel_alt": fix.rel_alt,
        "speed": fix.speed,
        "heading": fix.heading,
        "acc": fix.acc,
        "battery": fix.battery,
        "kind": fix.kind,
        "seq": fix.seq,
        "received_at": fix.received_at,
    }


def _point_feature(fix: Fix) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": _position(fix)},
        "properties": _point_properties(fix),
    }


class _GeoJsonPoints:
    """A FeatureCollection with one Point Feature per fix, its values as properties."""

    def __init__(self) -> None:
        self._first = True

    def head(self) -> bytes:
        return b'{"type":"FeatureCollection","features":['

    def body(self, fixes: Sequence[Fix]) -> bytes:
        if not fixes:
            return b""
        items = _json.encode([_point_feature(fix) for fix in fixes])[1:-1]
        separator = b"" if self._first else b","
        self._first = False
        return separator + items

    def tail(self) -> bytes:
        return b"]}"


class _GeoJsonLine:
    """A FeatureCollection holding the track as one LineString Feature. A LineString
    needs two positions, so the first is held back until the second arrives: a single
    fix becomes a Point Feature, no fix an empty collection."""

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self._first: Fix | None = None
        self._last: Fix | None = None
        self._count = 0

    def head(self) -> bytes:
        return b'{"type":"FeatureCollection","features":['

    def body(self, fixes: Sequence[Fix]) -> bytes:
        if not fixes:
            return b""
        out = bytearray()
        positions = fixes
        if self._count == 0:
            self._first = fixes[0]
            positions = fixes[1:]
            self._count = 1
        if positions and self._count == 1:
            assert self._first is not None
            out += b'{"type":"Feature","geometry":{"type":"LineString","coordinates":['
            out += _json.encode(_position(self._first))
        for fix in positions:
            out += b"," + _json.encode(_position(fix))
        self._count += len(positions)
        self._last = fixes[-1]
        return bytes(out)

    def tail(self) -> bytes:
        if self._count == 0:
            return b"]}"
        assert self._first is not None and self._last is not None
        if self._count == 1:
            return _json.encode(_point_feature(self._first)) + b"]}"
        properties = {
            "device_id": self._device_id,
            "start": self._first.ts,
            "end": self._last.ts,
            "fixes": self._count,
        }
        return b']},"properties":' + _json.encode(properties) + b"}]}"


_GPX_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<gpx version="1.1" creator="FleetPulse" xmlns="http://www.topografix.com/GPX/1/1"'
    ' xmlns:gpxtpx="http://www.garmin.com/xmlschemas/TrackPointExtension/v2">\n'
    "<trk><name>{name}</name><trkseg>\n"
)


def _xml_time(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _trkpt(fix: Fix) -> str:
    # GPX 1.1 fixes the order of a point's children: ele, time, ..., extensions. Speed
    # and course have no place in the core schema; Garmin's TrackPointExtension is the
    # extension tools read for them.
    parts = [f'<trkpt lat="{fix.lat!r}" lon="{fix.lon!r}">']
    if fix.alt is not None:
        parts.append(f"<ele>{fix.alt!r}</ele>")
    parts.append(f"<time>{_xml_time(fix.ts)}</time>")
    if fix.speed is not None or fix.heading is not None:
        parts.append("<extensions><gpxtpx:TrackPointExtension>")
        if fix.speed is not None:
            parts.append(f"<gpxtpx:speed>{fix.speed!r}</gpxtpx:speed>")
        if fix.heading is not None:
            parts.append(f"<gpxtpx:course>{fix.heading!r}</gpxtpx:course>")
        parts.append("</gpxtpx:TrackPointExtension></extensions>")
    parts.append("</trkpt>\n")
    return "".join(parts)


class _Gpx:
    """GPX 1.1: one track, one segment, a point per fix."""

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id

    def head(self) -> bytes:
        return _GPX_HEAD.format(name=escape(self._device_id)).encode()

    def body(self, fixes: Sequence[Fix]) -> bytes:
        return "".join(_trkpt(fix) for fix in fixes).encode()

    def tail(self) -> bytes:
        return b"</trkseg></trk>\n</gpx>\n"


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def csv_row(fix: Fix) -> list[Any]:
    """One fix as a CSV row under TELEMETRY_COLUMNS, as the API and `fleetpulse history
    --format csv` both write it."""
    return [_csv_value(getattr(fix, c)) for c in TELEMETRY_COLUMNS]


class _Csv:
    """RFC 4180 with a header row; the columns and values of `fleetpulse history`."""

    def head(self) -> bytes:
        return self._rows([TELEMETRY_COLUMNS])

    def body(self, fixes: Sequence[Fix]) -> bytes:
        return self._rows(csv_row(fix) for fix in fixes)

    def tail(self) -> bytes:
        return b""

    @staticmethod
    def _rows(rows: Any) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        return buffer.getvalue().encode()


def encoder(
    fmt: Format,
    device_id: str,
    next_cursor: str | None,
    geometry: Geometry = Geometry.POINTS,
) -> Encoder:
    if fmt is Format.JSON:
        return _JsonArray(device_id, next_cursor)
    if fmt is Format.NDJSON:
        return _NdJson()
    if fmt is Format.GEOJSON:
        return _GeoJsonLine(device_id) if geometry is Geometry.LINE else _GeoJsonPoints()
    if fmt is Format.GPX:
        return _Gpx(device_id)
    return _Csv()


async def encode(
    fixes: AsyncIterable[Fix], out: Encoder, chunk_fixes: int = CHUNK_FIXES
) -> AsyncGenerator[bytes, None]:
    """The encoded document in chunks of at most `chunk_fixes` fixes each. Closing this
    generator closes `fixes` too, so a database cursor behind them is released at once
    when the client goes away, not whenever the garbage collector gets to it."""
    try:
        yield out.head()
        batch: list[Fix] = []
        async for fix in fixes:
            batch.append(fix)
            if len(batch) >= chunk_fixes:
                yield out.body(batch)
                batch = []
        if batch:
            yield out.body(batch)
        yield out.tail()
    finally:
        if isinstance(fixes, AsyncGenerator):
            await fixes.aclose()


# JSON schemas of the formats msgspec cannot describe, for the OpenAPI document.
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_POSITION = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 3}
_POINT_FEATURE = {
    "type": "object",
    "required": ["type", "geometry", "properties"],
    "properties": {
        "type": {"const": "Feature"},
        "geometry": {
            "type": "object",
            "required": ["type", "coordinates"],
            "properties": {"type": {"const": "Point"}, "coordinates": _POSITION},
        },
        "properties": {
            "type": "object",
            "required": ["device_id", "ts", "received_at"],
            "properties": {
                "device_id": {"type": "string"},
                "ts": {"type": "string", "format": "date-time"},
                "received_at": {"type": "string", "format": "date-time"},
                "alt": _NUMBER_OR_NULL,
                "rel_alt": _NUMBER_OR_NULL,
                "speed": _NUMBER_OR_NULL,
                "heading": _NUMBER_OR_NULL,
                "acc": _NUMBER_OR_NULL,
                "battery": _NUMBER_OR_NULL,
                "kind": {"type": ["string", "null"]},
                "seq": {"type": ["integer", "null"]},
            },
        },
    },
}
_LINE_FEATURE = {
    "type": "object",
    "required": ["type", "geometry", "properties"],
    "properties": {
        "type": {"const": "Feature"},
        "geometry": {
            "type": "object",
            "required": ["type", "coordinates"],
            "properties": {
                "type": {"const": "LineString"},
                "coordinates": {"type": "array", "items": _POSITION, "minItems": 2},
            },
        },
        "properties": {
            "type": "object",
            "required": ["device_id", "start", "end", "fixes"],
            "properties": {
                "device_id": {"type": "string"},
                "start": {"type": "string", "format": "date-time"},
                "end": {"type": "string", "format": "date-time"},
                "fixes": {"type": "integer", "minimum": 2},
            },
        },
    },
}
GEOJSON_SCHEMA: dict[str, Any] = {
    "description": "RFC 7946 FeatureCollection: a Point Feature per fix (geometry=points), "
    "or the track as one LineString Feature (geometry=line; a single fix is a Point)",
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": {"anyOf": [_POINT_FEATURE, _LINE_FEATURE]}},
    },
}
GPX_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": "GPX 1.1: one track (trk) of one segment, a trkpt per fix with ele and "
    "time; speed and course in Garmin's TrackPointExtension v2",
}
CSV_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": "RFC 4180 with a header row: " + ",".join(TELEMETRY_COLUMNS),
}
NDJSON_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": "one HistoryFix JSON object per line, in fix-time order",
}
