"""Fences as a GeoJSON FeatureCollection: import and export, pure (text in, text out).

    Polygon / MultiPolygon (holes allowed)      a polygon fence
    Point + properties.radius_m                 a circle
    LineString + properties.width_m             a corridor (full width)

Properties: id (required), name, tags, kinds (vehicle / drone / phone), groups, dwell_s,
altitude {floor_m, ceiling_m, datum: amsl | takeoff}, schedule {tz, windows: [{days: [0-6],
start: "HH:MM", end: "HH:MM"}]}. Other properties (an editor's styling) are ignored.
Every error names the feature's index and the field, e.g.
`feature 3 (id 'depot'): properties.kinds[1]: 'truck' is not one of drone, phone, vehicle`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import time
from typing import Any, TypeVar

from tracker.fences import FENCE_ID_PATTERN, Fence, Schedule, Window
from tracker.positions import DeviceKind
from tracker.shapes import (
    AltitudeBand,
    AnyShape,
    Circle,
    Corridor,
    Datum,
    MultiPolygon,
    Polygon,
    Position,
    Ring,
)

_T = TypeVar("_T")


class FenceFormatError(ValueError):
    """A fence file or feature that cannot be read; the message says where and why."""


class _Bad(Exception):
    """Raised inside the parser with a field path; turned into a FenceFormatError."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# --- reading ----------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _object(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(path, f"expected an object, got {_kind(value)}")
    return value


def _list(value: object, path: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise _Bad(path, f"expected a list, got {_kind(value)}")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _Bad(path, f"expected a string, got {_kind(value)}")
    return value


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(path, f"expected a number, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _Bad(path, f"expected a finite number, got {value}")
    return number


def _strings(value: object, path: str) -> frozenset[str]:
    items = _list(value, path)
    return frozenset(_string(item, f"{path}[{i}]") for i, item in enumerate(items))


def _position(value: object, path: str) -> Position:
    items = _list(value, path)
    if len(items) < 2:
        raise _Bad(path, f"a position needs [lon, lat], got {len(items)} numbers")
    lon = _number(items[0], f"{path}[0]")
    lat = _number(items[1], f"{path}[1]")
    if not -180.0 <= lon <= 180.0:
        raise _Bad(f"{path}[0]", f"longitude {lon:g} is outside [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise _Bad(f"{path}[1]", f"latitude {lat:g} is outside [-90, 90]")
    return (lon, lat)  # a third number (altitude) is allowed by GeoJSON and ignored


def _positions(value: object, path: str) -> tuple[Position, ...]:
    return tuple(_position(p, f"{path}[{i}]") for i, p in enumerate(_list(value, path)))


def _polygon(value: object, path: str) -> Polygon:
    rings = [_positions(r, f"{path}[{i}]") for i, r in enumerate(_list(value, path))]
    if not rings:
        raise _Bad(path, "a polygon needs an exterior ring")
    return _shape(path, lambda: Polygon(rings[0], tuple(rings[1:])))


def _shape(path: str, build: Callable[[], _T]) -> _T:
    """Build a domain object, naming `path` in its validation error."""
    try:
        return build()
    except ValueError as exc:
        raise _Bad(path, str(exc)) from None


def _geometry(geometry: Mapping[str, Any], properties: Mapping[str, Any]) -> AnyShape:
    kind = _string(geometry.get("type"), "geometry.type")
    coords = geometry.get("coordinates")
    path = "geometry.coordinates"
    extras = {"radius_m": "Point", "width_m": "LineString"}
    for name, owner in extras.items():
        if name in properties and kind != owner:
            raise _Bad(f"properties.{name}", f"only a {owner} takes {name}, this is a {kind}")
    if kind == "Polygon":
        return _polygon(coords, path)
    if kind == "MultiPolygon":
        parts = tuple(_polygon(p, f"{path}[{i}]") for i, p in enumerate(_list(coords, path)))
        return _shape(path, lambda: MultiPolygon(parts))
    if kind == "Point":
        lon, lat = _position(coords, path)
        if "radius_m" not in properties:
            raise _Bad("properties.radius_m", "a Point fence needs radius_m (a circle)")
        radius = _number(properties["radius_m"], "properties.radius_m")
        if radius <= 0.0:
            raise _Bad("properties.radius_m", f"must be positive, got {radius:g}")
        return _shape(path, lambda: Circle(lat, lon, radius))
    if kind == "LineString":
        points = _positions(coords, path)
        if "width_m" not in properties:
            raise _Bad("properties.width_m", "a LineString fence needs width_m (a corridor)")
        width = _number(properties["width_m"], "properties.width_m")
        if width <= 0.0:
            raise _Bad("properties.width_m", f"must be positive, got {width:g}")
        return _shape(path, lambda: Corridor(points, width))
    raise _Bad("geometry.type", f"{kind!r} is not one of Polygon, MultiPolygon, Point, LineString")


def _kinds(value: object, path: str) -> frozenset[DeviceKind]:
    known = ", ".join(sorted(k.value for k in DeviceKind))
    kinds = set()
    for i, item in enumerate(_list(value, path)):
        name = _string(item, f"{path}[{i}]")
        try:
            kinds.add(DeviceKind(name))
        except ValueError:
            raise _Bad(f"{path}[{i}]", f"{name!r} is not one of {known}") from None
    return frozenset(kinds)


def _altitude(value: object, path: str) -> AltitudeBand:
    band = _object(value, path)
    bounds: dict[str, float | None] = {}
    for name in ("floor_m", "ceiling_m"):
        raw = band.get(name)
        bounds[name] = None if raw is None else _number(raw, f"{path}.{name}")
    if "datum" not in band:
        raise _Bad(f"{path}.datum", "required: amsl (above sea level) or takeoff")
    datum = _string(band["datum"], f"{path}.datum")
    if datum not in {d.value for d in Datum}:
        raise _Bad(f"{path}.datum", f"{datum!r} is not one of amsl, takeoff")
    return _shape(path, lambda: AltitudeBand(bounds["floor_m"], bounds["ceiling_m"], Datum(datum)))


def _clock(value: object, path: str) -> time:
    text = _string(value, path)
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(len(p) == 2 and p.isdigit() for p in parts):
        raise _Bad(path, f"expected a time as HH:MM, got {text!r}")
    hour, minute = int(parts[0]), int(parts[1])
    second = int(parts[2]) if len(parts) == 3 else 0
    try:
        return time(hour, minute, second)
    except ValueError:
        raise _Bad(path, f"{text!r} is not a time of day") from None


def _window(path: str, days: frozenset[int], start: time, end: time) -> Window:
    return _shape(path, lambda: Window(days, start, end))


def _schedule(value: object, path: str) -> Schedule:
    raw = _object(value, path)
    tz = _string(raw.get("tz"), f"{path}.tz")
    windows = []
    for i, item in enumerate(_list(raw.get("windows"), f"{path}.windows")):
        where = f"{path}.windows[{i}]"
        window = _object(item, where)
        days = set()
        for j, day in enumerate(_list(window.get("days"), f"{where}.days")):
            if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
                raise _Bad(f"{where}.days[{j}]", f"expected a weekday 0 (Monday) to 6, got {day!r}")
            days.add(day)
        start = _clock(window.get("start"), f"{where}.start")
        end = _clock(window.get("end"), f"{where}.end")
        windows.append(_window(where, frozenset(days), start, end))
    return _shape(path, lambda: Schedule(tz, tuple(windows)))


def _fence(feature: Mapping[str, Any]) -> Fence:
    if feature.get("type") != "Feature":
        raise _Bad("type", f"expected 'Feature', got {feature.get('type')!r}")
    properties = _object(feature.get("properties"), "properties")
    if "id" not in properties:
        raise _Bad("properties.id", "required")
    fence_id = _string(properties["id"], "properties.id")
    if not FENCE_ID_PATTERN.fullmatch(fence_id):
        raise _Bad("properties.id", f"{fence_id!r} must match {FENCE_ID_PATTERN.pattern}")
    name = properties.get("name")
    dwell = properties.get("dwell_s")
    if dwell is not None and _number(dwell, "properties.dwell_s") < 0.0:
        raise _Bad("properties.dwell_s", f"must not be negative, got {dwell}")
    shape = _geometry(_object(feature.get("geometry"), "geometry"), properties)

    def optional(key: str, read: Any, default: Any) -> Any:
        raw = properties.get(key)
        return default if raw is None else read(raw, f"properties.{key}")

    return _shape(
        "properties",
        lambda: Fence(
            id=fence_id,
            name="" if name is None else _string(name, "properties.name"),
            shape=shape,
            tags=optional("tags", _strings, frozenset()),
            kinds=optional("kinds", _kinds, frozenset()),
            groups=optional("groups", _strings, frozenset()),
            schedule=optional("schedule", _schedule, None),
            altitude=optional("altitude", _altitude, None),
            dwell_s=None if dwell is None else float(dwell),
        ),
    )


def _where(index: int | None, feature: object) -> str:
    where = "feature" if index is None else f"feature {index}"
    if isinstance(feature, dict):
        properties = feature.get("properties")
        if isinstance(properties, dict) and isinstance(properties.get("id"), str):
            where += f" (id {properties['id']!r})"
    return where


def parse_feature(feature: object, index: int | None = None) -> Fence:
    """One GeoJSON Feature (decoded JSON) as a fence; `index` is named in errors."""
    if not isinstance(feature, dict):
        raise FenceFormatError(
            f"{_where(index, feature)}: expected an object, got {_kind(feature)}"
        )
    try:
        return _fence(feature)
    except _Bad as exc:
        raise FenceFormatError(f"{_where(index, feature)}: {exc}") from None


def loads(data: bytes | str) -> list[Fence]:
    """A FeatureCollection of fences; ids must be unique."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise FenceFormatError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        raise FenceFormatError("expected a GeoJSON FeatureCollection")
    features = document.get("features")
    if not isinstance(features, list):
        raise FenceFormatError(f"features: expected a list, got {_kind(features)}")
    fences: list[Fence] = []
    first: dict[str, int] = {}
    for i, feature in enumerate(features):
        fence = parse_feature(feature, i)
        if fence.id in first:
            raise FenceFormatError(
                f"{_where(i, feature)}: properties.id: {fence.id!r} is also feature"
                f" {first[fence.id]}'s id"
            )
        first[fence.id] = i
        fences.append(fence)
    return fences


# --- writing ----------------------------------------------------------------------------


def _coords(ring: Ring) -> list[list[float]]:
    return [[lon, lat] for lon, lat in ring]


def _polygon_coords(polygon: Polygon) -> list[list[list[float]]]:
    return [_coords(polygon.exterior), *(_coords(h) for h in polygon.holes)]


def _clock_text(value: time) -> str:
    text = f"{value.hour:02d}:{value.minute:02d}"
    return text if value.second == 0 else f"{text}:{value.second:02d}"


def to_feature(fence: Fence) -> dict[str, Any]:
    """The GeoJSON Feature of a fence; `parse_feature` reads it back to an equal fence."""
    properties: dict[str, Any] = {"id": fence.id, "name": fence.name}
    shape = fence.shape
    geometry: dict[str, Any]
    if isinstance(shape, Polygon):
        geometry = {"type": "Polygon", "coordinates": _polygon_coords(shape)}
    elif isinstance(shape, MultiPolygon):
        parts = [_polygon_coords(p) for p in shape.polygons]
        geometry = {"type": "MultiPolygon", "coordinates": parts}
    elif isinstance(shape, Circle):
        geometry = {"type": "Point", "coordinates": [shape.lon, shape.lat]}
        properties["radius_m"] = shape.radius_m
    else:
        geometry = {"type": "LineString", "coordinates": _coords(shape.points)}
        properties["width_m"] = shape.width_m
    if fence.tags:
        properties["tags"] = sorted(fence.tags)
    if fence.kinds:
        properties["kinds"] = sorted(k.value for k in fence.kinds)
    if fence.groups:
        properties["groups"] = sorted(fence.groups)
    if fence.dwell_s is not None:
        properties["dwell_s"] = fence.dwell_s
    if fence.altitude is not None:
        band = fence.altitude
        properties["altitude"] = {
            "floor_m": band.floor_m,
            "ceiling_m": band.ceiling_m,
            "datum": band.datum.value,
        }
    if fence.schedule is not None:
        properties["schedule"] = {
            "tz": fence.schedule.tz,
            "windows": [
                {
                    "days": sorted(w.days),
                    "start": _clock_text(w.start),
                    "end": _clock_text(w.end),
                }
                for w in fence.schedule.windows
            ],
        }
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def dumps(fences: Iterable[Fence], *, indent: int | None = None) -> str:
    """A FeatureCollection of the fences, in the order given."""
    collection = {"type": "FeatureCollection", "features": [to_feature(f) for f in fences]}
    return json.dumps(collection, indent=indent, ensure_ascii=False)
