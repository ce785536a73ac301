"""The benchmark's world, the same in every process from its size and seed: devices over
the Porto area (most parked, the rest driving back and forth along straight legs), small
fences (sites and blocks) spread over the same area, and deliveries on the first vans.

Positions are a pure function of time since the run's epoch, so publishers share no
state and a fix's `ts` is the time it is published (where the latency starts).

How many events the fleet makes does not depend on the offered rate: it is roughly the
moving devices' speed times the fences' perimeter per area (see `expected_crossings`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from tracker.shapes import destination

# South, north, west, east: Porto and its neighbours, from the coast inland.
AREA = (41.05, 41.35, -8.70, -8.35)
EARTH_M_PER_DEG = 111_320.0
PARKED_SHARE = 0.7  # at any moment most of a delivery fleet stands still
SPEED_MPS = (2.0, 12.0)  # couriers on foot and bikes to vans in town
VAN_SPEED_MPS = (6.0, 12.0)  # the vans with deliveries always drive
LEG_M = 2000.0  # one way
FENCE_RADIUS_M = (15.0, 60.0)  # a customer's site to a block, log-uniform
CIRCLE_SHARE = 0.6  # the rest are star-shaped polygons
# A moving device reports this many times as often as a parked one (trackers report
# every few seconds on the move and rarely when still).
MOVING_WEIGHT = 4
GOLDEN = (5**0.5 - 1) / 2  # spreads the devices' phases evenly over a round
DEVICE_ID_FORMAT = "e2e-{:06d}"


def device_id(number: int) -> str:
    return DEVICE_ID_FORMAT.format(number)


def delivery_id(van: int, stop: int) -> str:
    return f"e2e-d{van:06d}-{stop:02d}"


@dataclass(frozen=True, slots=True)
class Device:
    number: int
    lat0: float
    lon0: float
    bearing: float  # radians, clockwise from north
    speed_mps: float  # 0: parked
    phase_m: float  # where along its round trip it is at the epoch

    @property
    def id(self) -> str:
        return device_id(self.number)

    def point(self, along_m: float) -> tuple[float, float]:
        """(lat, lon) `along_m` metres from the leg's start."""
        north = along_m * math.cos(self.bearing)
        east = along_m * math.sin(self.bearing)
        lat = self.lat0 + north / EARTH_M_PER_DEG
        lon = self.lon0 + east / (EARTH_M_PER_DEG * math.cos(math.radians(self.lat0)))
        return lat, lon

    def at(self, seconds: float) -> tuple[float, float, float]:
        """(lat, lon, heading in degrees) `seconds` after the epoch."""
        if self.speed_mps == 0.0:
            lat, lon = self.point(self.phase_m % LEG_M)
            return lat, lon, math.degrees(self.bearing) % 360.0
        travelled = (self.phase_m + self.speed_mps * seconds) % (2 * LEG_M)
        outbound = travelled < LEG_M
        lat, lon = self.point(travelled if outbound else 2 * LEG_M - travelled)
        heading = math.degrees(self.bearing) + (0.0 if outbound else 180.0)
        return lat, lon, heading % 360.0


def devices(count: int, vans: int, seed: int = 1) -> list[Device]:
    """`count` devices; the first `vans` are the delivery vans (always moving)."""
    rng = random.Random(seed)
    south, north, west, east = AREA
    out = []
    for number in range(count):
        lat0, lon0 = rng.uniform(south, north), rng.uniform(west, east)
        bearing, phase = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.0, 2 * LEG_M)
        moving = rng.random()
        if number < vans:
            speed = rng.uniform(*VAN_SPEED_MPS)
        elif moving < PARKED_SHARE:
            speed = 0.0
        else:
            speed = rng.uniform(*SPEED_MPS)
        out.append(Device(number, lat0, lon0, bearing, speed, phase))
    return out


def schedule(share: list[Device]) -> list[int]:
    """One round of publishing, as indices into `share`: each moving device
    MOVING_WEIGHT times at even intervals, each parked one once, all interleaved."""
    slots: list[tuple[float, int]] = []
    for i, device in enumerate(share):
        weight = MOVING_WEIGHT if device.speed_mps else 1
        phase = (i * GOLDEN) % 1.0
        slots.extend(((k + phase) / weight, i) for k in range(weight))
    slots.sort()
    return [i for _, i in slots]


def _radius(rng: random.Random) -> float:
    low, high = FENCE_RADIUS_M
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def fences(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """`count` GeoJSON Features (circles as a Point with `radius_m`, star polygons) as
    `fleetpulse geofences import` reads them."""
    rng = random.Random(seed + 1_000_003)  # not the devices' sequence
    south, north, west, east = AREA
    out = []
    for number in range(count):
        lat, lon, radius = rng.uniform(south, north), rng.uniform(west, east), _radius(rng)
        properties: dict[str, Any] = {
            "id": f"e2e-fence-{number:05d}",
            "name": f"e2e fence {number}",
        }
        geometry: dict[str, Any]
        if rng.random() < CIRCLE_SHARE:
            geometry = {"type": "Point", "coordinates": [lon, lat]}
            properties["radius_m"] = round(radius, 1)
        else:
            # Ordered bearings less than 180 degrees apart: a simple (star) polygon.
            n = rng.randint(5, 8)
            angles = [(i + rng.uniform(0.0, 0.8)) * 360.0 / n for i in range(n)]
            ring = [destination(lat, lon, a, radius * rng.uniform(0.5, 1.0)) for a in angles]
            coordinates = [[round(x, 7), round(y, 7)] for x, y in ring]
            geometry = {"type": "Polygon", "coordinates": [[*coordinates, coordinates[0]]]}
        out.append({"type": "Feature", "properties": properties, "geometry": geometry})
    return out


def stops(device: Device, count: int) -> list[tuple[float, float]]:
    """`count` drop points spread along a van's leg (never at its ends)."""
    return [device.point(LEG_M * (i + 1) / (count + 1)) for i in range(count)]


def expected_crossings_per_s(count: int, vans: int, fence_count: int) -> float:
    """Fence boundaries crossed per second by the whole fleet, on average: moving metres
    per second times boundary metres per square metre (fences rarely overlap). A rough
    guide to the events/s the tracker should produce, for the record."""
    south, north, west, east = AREA
    area_m2 = (
        (north - south)
        * EARTH_M_PER_DEG
        * (east - west)
        * EARTH_M_PER_DEG
        * math.cos(math.radians((south + north) / 2))
    )
    low, high = FENCE_RADIUS_M
    mean_radius = (high - low) / math.log(high / low)  # of the log-uniform radius
    perimeter = fence_count * 2 * math.pi * mean_radius
    moving = (
        vans * sum(VAN_SPEED_MPS) / 2 + (count - vans) * (1 - PARKED_SHARE) * sum(SPEED_MPS) / 2
    )
    return moving * perimeter / area_m2
