"""Fences drawn at random (seeded) for the benchmark: far away over Portugal and Europe
for the scaling run, block- to district-sized over Porto for the density run."""

from __future__ import annotations

import math
import random

from tracker.fences import Fence
from tracker.shapes import Circle, Corridor, Polygon, Position, destination, haversine_m

PORTO = (41.15, -8.61)
# The scaling run's fences keep this far from Porto: they are "elsewhere".
AWAY_FROM_PORTO_M = 40_000.0
PORTUGAL = (37.0, 42.1, -9.5, -6.2)  # south, north, west, east
EUROPE = (36.0, 60.0, -10.0, 30.0)
PORTUGAL_SHARE = 0.25
# The density run's fences lie where the trips are.
PORTO_AREA = (41.135, 41.19, -8.69, -8.55)
BLOCK_M = 50.0  # smallest fence radius
DISTRICT_M = 2_000.0  # largest


def _star(rng: random.Random, lat: float, lon: float, radius_m: float) -> Polygon:
    """A star-shaped polygon (never self-intersecting) of 5-10 vertices."""
    n = rng.randint(5, 10)
    # Jittered but ordered bearings, less than 180 degrees apart: a simple polygon.
    angles = [(i + rng.uniform(0.0, 0.8)) * 360.0 / n for i in range(n)]
    ring = [destination(lat, lon, a, radius_m * rng.uniform(0.4, 1.0)) for a in angles]
    return Polygon((*ring, ring[0]))


def _corridor(rng: random.Random, lat: float, lon: float, length_m: float) -> Corridor:
    points: list[Position] = [(lon, lat)]
    heading = rng.uniform(0.0, 360.0)
    for _ in range(rng.randint(1, 4)):
        heading += rng.uniform(-40.0, 40.0)
        last = points[-1]
        points.append(destination(last[1], last[0], heading, length_m / 4))
    return Corridor(tuple(points), rng.uniform(20.0, 100.0))


def _fence(rng: random.Random, fence_id: str, lat: float, lon: float, radius_m: float) -> Fence:
    pick = rng.random()
    if pick < 0.6:
        shape: Circle | Polygon | Corridor = Circle(lat, lon, radius_m)
    elif pick < 0.9:
        shape = _star(rng, lat, lon, radius_m)
    else:
        shape = _corridor(rng, lat, lon, radius_m * 4)
    return Fence(fence_id, fence_id, shape)


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def elsewhere(count: int, seed: int = 1, start: int = 0) -> list[Fence]:
    """`count` fences over Portugal and Europe, none within AWAY_FROM_PORTO_M of Porto.
    Fences `start` .. `start + count` of one seeded sequence, so sets nest."""
    rng = random.Random(seed)
    fences: list[Fence] = []
    made = 0
    while len(fences) < count:
        south, north, west, east = PORTUGAL if rng.random() < PORTUGAL_SHARE else EUROPE
        lat, lon = rng.uniform(south, north), rng.uniform(west, east)
        radius = _log_uniform(rng, 100.0, 3_000.0)
        if haversine_m(lat, lon, *PORTO) < AWAY_FROM_PORTO_M:
            continue
        fence = _fence(rng, f"far-{made}", lat, lon, radius)
        made += 1
        if made > start:
            fences.append(fence)
    return fences


def over_porto(count: int, seed: int = 2) -> list[Fence]:
    """`count` fences of block to district size over the trips' part of Porto."""
    rng = random.Random(seed)
    south, north, west, east = PORTO_AREA
    return [
        _fence(
            rng,
            f"porto-{i}",
            rng.uniform(south, north),
            rng.uniform(west, east),
            _log_uniform(rng, BLOCK_M, DISTRICT_M),
        )
        for i in range(count)
    ]
