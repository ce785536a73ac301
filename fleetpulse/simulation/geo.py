"""Small spherical geometry for movement over a city: bearings, offsets, interpolation.

Distances come from `tracker.live.haversine_m` (one sphere for the whole project). Over
the few kilometres a simulated leg spans, interpolating linearly in latitude/longitude
strays from the great circle by centimetres, which no GPS would notice.
"""

from __future__ import annotations

import math

from tracker.live import EARTH_RADIUS_M, haversine_m

M_PER_DEG_LAT = math.pi * EARTH_RADIUS_M / 180.0

__all__ = ["M_PER_DEG_LAT", "bearing_deg", "haversine_m", "interpolate", "offset"]


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from the first point to the second: 0 = north, clockwise, [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The point `north_m` north and `east_m` east of (lat, lon), in a local flat frame."""
    d_lat = north_m / M_PER_DEG_LAT
    d_lon = east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
    return lat + d_lat, lon + d_lon


def interpolate(
    lat1: float, lon1: float, lat2: float, lon2: float, fraction: float
) -> tuple[float, float]:
    return lat1 + (lat2 - lat1) * fraction, lon1 + (lon2 - lon1) * fraction
