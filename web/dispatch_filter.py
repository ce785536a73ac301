"""What one dispatch websocket client wants to see: a bounding box for positions, device
ids for positions and events, event kinds for events. Pure.

The same filter comes from the query string at connection time (comma-separated text)
and from `filter` messages later (JSON arrays); both are checked the same way and a bad
one is refused with a message naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tracker.events import EventKind
from tracker.positions import is_valid_device_id

MAX_DEVICES = 10_000
_KINDS = frozenset(k.value for k in EventKind)


class FilterError(ValueError):
    """A filter that cannot be applied; the message names the field and the fault."""


@dataclass(frozen=True)
class BBox:
    south: float
    west: float
    north: float
    east: float

    def contains(self, lat: float, lon: float) -> bool:
        # Boundaries count as inside, as they do for fences.
        return self.south <= lat <= self.north and self.west <= lon <= self.east


@dataclass(frozen=True)
class DispatchFilter:
    """None means no limit; an empty set matches nothing."""

    bbox: BBox | None = None
    devices: frozenset[str] | None = None
    kinds: frozenset[str] | None = None

    @property
    def every_position(self) -> bool:
        return self.bbox is None and self.devices is None

    def position(self, device_id: str, lat: float, lon: float) -> bool:
        if self.devices is not None and device_id not in self.devices:
            return False
        return self.bbox is None or self.bbox.contains(lat, lon)

    def event(self, device_id: str, kind: str) -> bool:
        if self.devices is not None and device_id not in self.devices:
            return False
        return self.kinds is None or kind in self.kinds


def bbox(values: Sequence[float], field: str = "bbox") -> BBox:
    if len(values) != 4:
        raise FilterError(f"{field}: expected south,west,north,east (4 numbers), got {len(values)}")
    south, west, north, east = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (south, west, north, east)):
        raise FilterError(f"{field}: expected finite numbers")
    if south > north:
        raise FilterError(f"{field}: south must not be north of north, got {south}, {north}")
    if west > east:
        raise FilterError(
            f"{field}: west must not be east of east, got {west}, {east}"
            " (a box across the antimeridian is two boxes)"
        )
    # A map zoomed out past the whole world asks for more than the world: the world.
    return BBox(max(south, -90.0), max(west, -180.0), min(north, 90.0), min(east, 180.0))


def devices(values: Sequence[str], field: str = "devices") -> frozenset[str]:
    if len(values) > MAX_DEVICES:
        raise FilterError(f"{field}: at most {MAX_DEVICES} device ids, got {len(values)}")
    for value in values:
        if not is_valid_device_id(value):
            raise FilterError(
                f"{field}: {value!r} is not a device id (1-64 letters, digits, '_.:-')"
            )
    return frozenset(values)


def kinds(values: Sequence[str], field: str = "kinds") -> frozenset[str]:
    for value in values:
        if value not in _KINDS:
            raise FilterError(
                f"{field}: unknown event kind {value!r}; expected some of "
                + ", ".join(sorted(_KINDS))
            )
    return frozenset(values)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def from_query(
    bbox_text: str | None, devices_text: str | None, kinds_text: str | None
) -> DispatchFilter:
    """The initial filter from query parameters; an absent or empty parameter is no limit."""
    box = None
    if bbox_text:
        parts = _split(bbox_text)
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise FilterError(
                f"bbox: expected south,west,north,east in degrees, got {bbox_text!r}"
            ) from None
        box = bbox(numbers)
    return DispatchFilter(
        box,
        devices(_split(devices_text)) if devices_text else None,
        kinds(_split(kinds_text)) if kinds_text else None,
    )


def from_message(
    bbox_values: Sequence[float] | None,
    device_values: Sequence[str] | None,
    kind_values: Sequence[str] | None,
) -> DispatchFilter:
    """The filter of a `filter` message: arrays, or null for no limit."""
    return DispatchFilter(
        None if bbox_values is None else bbox(bbox_values),
        None if device_values is None else devices(device_values),
        None if kind_values is None else kinds(kind_values),
    )
