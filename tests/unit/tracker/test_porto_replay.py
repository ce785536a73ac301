"""Real data: every Porto taxi trip replayed through the geofence engine (hysteresis and
outlier filter off) gives exactly the enter/exit events of an independent, fix-by-fix
point-in-polygon computation with shapely.

The independent side shares no code with the engine's tests: polygons are rebuilt from
their coordinates and tested with `shapely.covers`; circles and corridors are tested with
shapely distances in a frame of its own (azimuthal equidistant around the circle's
centre; equirectangular around the fix for a corridor).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import pytest
import shapely

from bench.geofence import porto
from tracker.events import EventKind
from tracker.fence_index import FenceIndex
from tracker.fences import Fence
from tracker.geofencing import GeofenceEngine, GeofenceRules
from tracker.positions import Fix
from tracker.shapes import Circle, Corridor, MultiPolygon, Polygon

pytestmark = pytest.mark.skipif(porto.missing() is not None, reason=str(porto.missing()))

RADIUS_M = 6_371_008.8  # the same sphere as the engine: the fences are defined on it

Inside = Callable[[Sequence[Fix]], list[bool]]


def _covers(shape: Polygon | MultiPolygon) -> Inside:
    if isinstance(shape, Polygon):
        geom = shapely.Polygon(shape.exterior, shape.holes)
    else:
        geom = shapely.MultiPolygon([shapely.Polygon(p.exterior, p.holes) for p in shape.polygons])

    def inside(fixes: Sequence[Fix]) -> list[bool]:
        points = shapely.points([(f.lon, f.lat) for f in fixes])
        return [bool(b) for b in shapely.covers(geom, points)]

    return inside


def _within_circle(circle: Circle) -> Inside:
    # Azimuthal equidistant around the centre (spherical law of cosines, atan2 form):
    # the distance from the centre is the great-circle distance.
    p1, l1 = math.radians(circle.lat), math.radians(circle.lon)
    centre = shapely.Point(0.0, 0.0)

    def inside(fixes: Sequence[Fix]) -> list[bool]:
        out = []
        for f in fixes:
            p2, dl = math.radians(f.lat), math.radians(f.lon) - l1
            y = math.hypot(
                math.cos(p2) * math.sin(dl),
                math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl),
            )
            x = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
            d = RADIUS_M * math.atan2(y, x)
            out.append(bool(shapely.dwithin(centre, shapely.Point(d, 0.0), circle.radius_m)))
        return out

    return inside


def _within_corridor(corridor: Corridor) -> Inside:
    def inside(fixes: Sequence[Fix]) -> list[bool]:
        out = []
        for f in fixes:
            kx = math.radians(1.0) * RADIUS_M * math.cos(math.radians(f.lat))
            ky = math.radians(1.0) * RADIUS_M
            line = shapely.LineString(
                [((lon - f.lon) * kx, (lat - f.lat) * ky) for lon, lat in corridor.points]
            )
            out.append(bool(shapely.dwithin(line, shapely.Point(0.0, 0.0), corridor.width_m / 2)))
        return out

    return inside


def _independent(fence: Fence) -> Inside:
    shape = fence.shape
    if isinstance(shape, Circle):
        return _within_circle(shape)
    if isinstance(shape, Corridor):
        return _within_corridor(shape)
    return _covers(shape)


def _expected(fixes: list[Fix], fences: list[Fence]) -> set[tuple[str, str, str, int]]:
    """Enter/exit by a plain replay: per taxi, in the order offered, a repeated fix time
    dropped; enter when inside after outside (or at the first fix), exit the reverse."""
    by_taxi: dict[str, list[Fix]] = defaultdict(list)
    last: dict[str, int] = {}
    for f in fixes:
        ts = int(f.ts.timestamp())
        if last.get(f.device_id, -1) >= ts:
            continue
        last[f.device_id] = ts
        by_taxi[f.device_id].append(f)
    events = set()
    for fence in fences:
        test = _independent(fence)
        for taxi, track in by_taxi.items():
            was = False
            for f, now in zip(track, test(track), strict=True):
                if now != was:
                    kind = EventKind.ENTER if now else EventKind.EXIT
                    events.add((taxi, fence.id, kind.value, int(f.ts.timestamp())))
                was = now
    return events


def test_porto_trips_enter_exit_match_point_in_polygon_exactly() -> None:
    fixes = porto.load_fixes()
    fences = [porto.load_municipality(), *porto.drawn_fences()]
    assert len(fences) == 13
    engine = GeofenceEngine(FenceIndex(fences), GeofenceRules())  # default 5 s reorder window
    got = []
    for f in fixes:
        got.extend(engine.offer(f))
    got.extend(engine.flush())
    engine_set = {
        (e.device_id, e.fence_id or "", e.kind.value, int(e.ts.timestamp()))
        for e in got
        if e.kind in (EventKind.ENTER, EventKind.EXIT)
    }
    expected = _expected(fixes, fences)

    matched = engine_set & expected
    only_engine = engine_set - expected
    only_expected = expected - engine_set
    print(
        f"\nPorto replay: {len(fixes)} fixes, {engine.counts['evaluated']} evaluated,"
        f" {engine.counts['duplicates']} duplicates, {len(fences)} fences;"
        f" enter/exit matched {len(matched)}, engine only {len(only_engine)},"
        f" independent only {len(only_expected)}"
    )
    assert not only_engine and not only_expected
    assert engine.counts["evaluated"] + engine.counts["duplicates"] == len(fixes)
    assert engine.counts["late"] == 0
    # The replay exercises every fence and both kinds.
    assert {fence_id for _, fence_id, _, _ in matched} == {f.id for f in fences}
    assert len(matched) > 1000
