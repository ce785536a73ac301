"""tracker.shapes: exact tests in metres for circles and corridors, lon/lat polygons with
holes, boundaries inside, segments, cover/interior polygons, altitude bands."""

from __future__ import annotations

import math

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.shapes import (
    AltitudeBand,
    Circle,
    Corridor,
    Datum,
    MultiPolygon,
    Polygon,
    destination,
    haversine_m,
)

LAT, LON = 41.15, -8.61  # Porto


def box(west: float, south: float, east: float, north: float) -> tuple[tuple[float, float], ...]:
    return ((west, south), (east, south), (east, north), (west, north), (west, south))


def at(lat: float, lon: float, bearing: float, metres: float) -> tuple[float, float]:
    """(lat, lon) of the point `metres` from (lat, lon) along `bearing`."""
    lon2, lat2 = destination(lat, lon, bearing, metres)
    return lat2, lon2


# --- circles ----------------------------------------------------------------------------


@pytest.mark.parametrize("bearing", [0, 45, 90, 135, 180, 225, 270, 315])
def test_circle_edge_within_a_metre(bearing: float) -> None:
    circle = Circle(LAT, LON, 250.0)
    assert circle.contains(*at(LAT, LON, bearing, 249.0))
    assert not circle.contains(*at(LAT, LON, bearing, 251.0))
    assert circle.distance_to_boundary_m(*at(LAT, LON, bearing, 249.0)) == pytest.approx(1.0)
    assert circle.distance_to_boundary_m(*at(LAT, LON, bearing, 251.0)) == pytest.approx(1.0)


def test_circle_is_metres_not_degrees_far_north() -> None:
    # At 70N a degree of longitude is a third of a degree of latitude: a test in degrees
    # would make this circle an ellipse.
    circle = Circle(70.0, 20.0, 1000.0)
    assert circle.contains(*at(70.0, 20.0, 90.0, 999.0))
    assert not circle.contains(*at(70.0, 20.0, 90.0, 1001.0))
    assert circle.contains(*at(70.0, 20.0, 0.0, 999.0))
    assert not circle.contains(*at(70.0, 20.0, 0.0, 1001.0))


def test_circle_segment_crosses_at_radius_plus_or_minus_a_metre() -> None:
    circle = Circle(LAT, LON, 100.0)
    # Chords due north-south at 99 m and 101 m east of the centre.
    for offset, crosses in ((99.0, True), (101.0, False)):
        mid_lat, mid_lon = at(LAT, LON, 90.0, offset)
        a = at(mid_lat, mid_lon, 0.0, 500.0)
        b = at(mid_lat, mid_lon, 180.0, 500.0)
        assert circle.segment_crosses(a[0], a[1], b[0], b[1]) is crosses
    # Both ends outside, on the same side: no crossing.
    a = at(LAT, LON, 0.0, 300.0)
    b = at(LAT, LON, 10.0, 600.0)
    assert not circle.segment_crosses(a[0], a[1], b[0], b[1])


@settings(max_examples=40, deadline=None)
@given(
    lat=st.floats(-70, 70),
    lon=st.floats(-170, 170),
    radius=st.floats(1.0, 50_000.0),
    bearing=st.floats(0, 360),
    fraction=st.floats(0.0, 2.0),
)
def test_circle_cover_and_interior_polygons_bracket_the_circle(
    lat: float, lon: float, radius: float, bearing: float, fraction: float
) -> None:
    circle = Circle(lat, lon, radius)
    plat, plon = at(lat, lon, bearing, radius * fraction)
    point = shapely.Point(plon, plat)
    if circle.contains(plat, plon):
        assert circle.cover_polygon().covers(point)
    if circle.interior_polygon().covers(point):
        assert circle.contains(plat, plon)
    # With a margin: the cover holds everything within the margin of the circle.
    if haversine_m(lat, lon, plat, plon) <= radius + 10.0:
        assert circle.cover_polygon(10.0).covers(point)


# --- polygons ---------------------------------------------------------------------------


def holed() -> Polygon:
    return Polygon(box(-8.62, 41.14, -8.60, 41.16), (box(-8.615, 41.145, -8.605, 41.155),))


def test_polygon_with_hole() -> None:
    polygon = holed()
    assert polygon.contains(41.142, -8.61)  # in the ring
    assert not polygon.contains(41.15, -8.61)  # in the hole
    assert not polygon.contains(41.17, -8.61)  # outside


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (41.14, -8.61),  # on the outer edge
        (41.14, -8.62),  # an outer vertex
        (41.145, -8.61),  # on the hole's edge
        (41.155, -8.605),  # a hole vertex
    ],
)
def test_polygon_boundary_counts_inside(lat: float, lon: float) -> None:
    assert holed().contains(lat, lon)


def test_multipolygon_parts_and_the_gap_between() -> None:
    shape = MultiPolygon(
        (Polygon(box(0.0, 50.0, 0.01, 50.01)), Polygon(box(0.02, 50.0, 0.03, 50.01)))
    )
    assert shape.contains(50.005, 0.005)
    assert shape.contains(50.005, 0.025)
    assert not shape.contains(50.005, 0.015)
    assert shape.bbox == (0.0, 50.0, 0.03, 50.01)


def test_polygon_distance_to_boundary_in_metres() -> None:
    polygon = Polygon(box(-8.62, 41.14, -8.60, 41.16))
    # 100 m west of the east edge, at mid height: the east edge is the nearest.
    lat, lon = at(41.15, -8.60, 270.0, 100.0)
    assert polygon.distance_to_boundary_m(lat, lon) == pytest.approx(100.0, rel=0.005)
    lat, lon = at(41.15, -8.60, 90.0, 40.0)
    assert polygon.distance_to_boundary_m(lat, lon) == pytest.approx(40.0, rel=0.005)


def test_polygon_segment_crosses() -> None:
    polygon = holed()
    assert polygon.segment_crosses(41.13, -8.61, 41.17, -8.61)  # through ring and hole
    assert not polygon.segment_crosses(41.17, -8.63, 41.17, -8.59)  # north of it
    assert not polygon.segment_crosses(41.148, -8.612, 41.152, -8.608)  # inside the hole
    assert polygon.segment_crosses(41.13, -8.62, 41.14, -8.62)  # touches a vertex


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Polygon(((0, 0), (1, 1), (1, 0), (0, 1), (0, 0))), "invalid geometry"),
        (lambda: Polygon(((0, 0), (1, 0), (1, 1), (0, 1))), "not closed"),
        (lambda: Polygon(((0, 0), (1, 0), (0, 0))), "at least 4"),
        (lambda: Polygon(box(0, 86, 1, 87)), "latitude"),
        (lambda: Polygon(box(-100, 0, 100, 1)), "antimeridian"),
        (lambda: MultiPolygon(()), "at least one"),
        (
            lambda: MultiPolygon((Polygon(box(0, 0, 2, 2)), Polygon(box(1, 1, 3, 3)))),
            "invalid geometry",
        ),
        (lambda: Circle(41.0, -8.0, 0.0), "radius_m"),
        (lambda: Circle(91.0, -8.0, 10.0), "latitude"),
        (lambda: Corridor(((0.0, 0.0),), 10.0), "at least 2"),
        (lambda: Corridor(((0.0, 0.0), (1.0, 0.0)), -1.0), "width_m"),
    ],
)
def test_invalid_shapes_are_refused(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_shapes_compare_by_coordinates() -> None:
    assert holed() == holed()
    assert hash(holed()) == hash(holed())
    assert Circle(1.0, 2.0, 3.0) == Circle(1.0, 2.0, 3.0)
    assert Circle(1.0, 2.0, 3.0) != Circle(1.0, 2.0, 4.0)


# --- corridors --------------------------------------------------------------------------

A = (-8.63, 41.158)
B = (-8.64, 41.160)
C = (-8.66, 41.165)


def corridor() -> Corridor:
    return Corridor((A, B, C), 60.0)  # 30 m either side


def bearing(p: tuple[float, float], q: tuple[float, float]) -> float:
    p1, p2 = math.radians(p[1]), math.radians(q[1])
    dl = math.radians(q[0] - p[0])
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x))


def test_corridor_width_across_a_segment() -> None:
    shape = corridor()
    mid = ((A[0] + B[0]) / 2, (A[1] + B[1]) / 2)
    across = bearing(A, B) + 90.0
    for side in (0.0, 180.0):
        assert shape.contains(*at(mid[1], mid[0], across + side, 29.0))
        assert not shape.contains(*at(mid[1], mid[0], across + side, 31.0))
    assert shape.distance_to_boundary_m(*at(mid[1], mid[0], across, 29.0)) == pytest.approx(
        1.0, abs=0.01
    )


@pytest.mark.parametrize("end", ["first", "last"])
def test_corridor_ends_are_round(end: str) -> None:
    shape = corridor()
    tip, before = (A, B) if end == "first" else (C, B)
    outward = bearing(before, tip)
    for turn in (0.0, 45.0, -45.0):  # straight on and diagonally past the end
        assert shape.contains(*at(tip[1], tip[0], outward + turn, 29.0))
        assert not shape.contains(*at(tip[1], tip[0], outward + turn, 31.0))


def test_corridor_segment_crosses() -> None:
    shape = corridor()
    mid = ((A[0] + B[0]) / 2, (A[1] + B[1]) / 2)
    across = bearing(A, B) + 90.0
    p = at(mid[1], mid[0], across, 200.0)
    q = at(mid[1], mid[0], across + 180.0, 200.0)
    assert shape.segment_crosses(p[0], p[1], q[0], q[1])
    r = at(mid[1], mid[0], across, 40.0)
    s = at(r[0], r[1], bearing(A, B), 300.0)  # parallel, 40 m off the line
    assert not shape.segment_crosses(r[0], r[1], s[0], s[1])


def test_corridor_cover_holds_points_within_the_width() -> None:
    shape = corridor()
    cover = shape.cover_polygon()
    interior = shape.interior_polygon()
    for point in (A, B, C):
        for direction in range(0, 360, 30):
            lat, lon = at(point[1], point[0], direction, 29.99)
            assert cover.covers(shapely.Point(lon, lat))
            for metres in (29.0, 30.5, 31.0):
                lat, lon = at(point[1], point[0], direction, metres)
                if interior.covers(shapely.Point(lon, lat)):
                    assert shape.contains(lat, lon)


def test_long_corridor_finds_segments_through_its_buckets() -> None:
    # 200 short segments along a meridian: the bucket grid must find the right one.
    points = tuple((10.0, 45.0 + i * 0.001) for i in range(201))
    shape = Corridor(points, 20.0)
    for i in range(0, 200, 7):
        lat = 45.0 + i * 0.001 + 0.0005
        assert shape.contains(*at(lat, 10.0, 90.0, 9.5))
        assert not shape.contains(*at(lat, 10.0, 90.0, 10.5))
    assert shape.distance_to_boundary_m(45.1, 10.1) == pytest.approx(
        haversine_m(45.1, 10.0, 45.1, 10.1) - 10.0, rel=1e-3
    )


# --- altitude bands ---------------------------------------------------------------------


def test_altitude_band_excess_and_datum() -> None:
    band = AltitudeBand(10.0, 120.0, Datum.TAKEOFF)
    assert band.height(alt=300.0, rel_alt=50.0) == 50.0
    assert band.height(alt=300.0, rel_alt=None) is None
    assert band.excess_m(50.0) == -40.0
    assert band.excess_m(10.0) == 0.0  # on the floor: inside
    assert band.excess_m(125.0) == 5.0
    assert band.excess_m(4.0) == 6.0
    amsl = AltitudeBand(None, 150.0)
    assert amsl.datum is Datum.AMSL
    assert amsl.height(alt=100.0, rel_alt=5.0) == 100.0
    assert amsl.excess_m(-1000.0) < 0
    assert amsl.overlaps(100.0, 200.0)
    assert not amsl.overlaps(151.0, 200.0)


@pytest.mark.parametrize(
    ("floor", "ceiling", "message"),
    [(None, None, "floor, a ceiling"), (100.0, 50.0, "above"), (math.nan, 5.0, "finite")],
)
def test_altitude_band_validation(floor: float | None, ceiling: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AltitudeBand(floor, ceiling)
