"""The benchmark's fleet, the same in every process from its size and seed: vans driving
back and forth along straight legs around Porto, a circular fence across each leg (so
every pass makes an `enter` and an `exit` event), and deliveries spread along the legs.

Positions are a pure function of time since the run's epoch, so publishers need no
shared state and a fix's `ts` is the time it is published (the latency's start).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

PORTO_LAT = 41.15
PORTO_LON = -8.61
SPREAD_DEG = 0.04  # leg starts spread over a ~9 km square
SPEED_MPS = 10.0
LEG_M = 3000.0  # one way; a round trip takes 600 s
FENCE_RADIUS_M = 100.0
EARTH_M_PER_DEG = 111_320.0
VAN_ID_FORMAT = "wsb-{:05d}"


def van_id(number: int) -> str:
    return VAN_ID_FORMAT.format(number)


def delivery_id(van: int, stop: int) -> str:
    return f"wsb-d{van:05d}-{stop:02d}"


@dataclass(frozen=True)
class Van:
    number: int
    lat0: float
    lon0: float
    bearing: float  # radians, clockwise from north
    phase_m: float  # where along the round trip it is at the epoch

    @property
    def id(self) -> str:
        return van_id(self.number)

    def point(self, along_m: float) -> tuple[float, float]:
        """The point `along_m` metres from the leg's start."""
        north = along_m * math.cos(self.bearing)
        east = along_m * math.sin(self.bearing)
        lat = self.lat0 + north / EARTH_M_PER_DEG
        lon = self.lon0 + east / (EARTH_M_PER_DEG * math.cos(math.radians(self.lat0)))
        return lat, lon

    def at(self, seconds: float) -> tuple[float, float, float]:
        """(lat, lon, heading in degrees) `seconds` after the epoch."""
        travelled = (self.phase_m + SPEED_MPS * seconds) % (2 * LEG_M)
        outbound = travelled < LEG_M
        lat, lon = self.point(travelled if outbound else 2 * LEG_M - travelled)
        heading = math.degrees(self.bearing) + (0.0 if outbound else 180.0)
        return lat, lon, heading % 360.0


def fleet(vans: int, seed: int = 1) -> list[Van]:
    rng = random.Random(seed)
    return [
        Van(
            number,
            PORTO_LAT + rng.uniform(-SPREAD_DEG, SPREAD_DEG),
            PORTO_LON + rng.uniform(-SPREAD_DEG, SPREAD_DEG),
            rng.uniform(0.0, 2 * math.pi),
            rng.uniform(0.0, 2 * LEG_M),
        )
        for number in range(vans)
    ]


def fence(van: Van) -> dict[str, Any]:
    """A circle across the middle of the van's leg, as a GeoJSON Feature."""
    lat, lon = van.point(LEG_M / 2)
    return {
        "type": "Feature",
        "properties": {
            "id": f"wsb-fence-{van.number:05d}",
            "name": f"bench fence {van.number}",
            "radius_m": FENCE_RADIUS_M,
        },
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }


def stops(van: Van, count: int) -> list[tuple[float, float]]:
    """`count` drop points spread along the leg (never at its ends)."""
    return [van.point(LEG_M * (i + 1) / (count + 1)) for i in range(count)]
