"""tracker.fence_index: the H3 cover never misses a point inside a fence and never calls a
point outside it certainly inside; resolutions per fence size; run-time changes; the
segment grid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h3.api.basic_int as h3
import pytest
import shapely
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tracker.fence_index import MAX_BOUNDARY_CELLS, FenceIndex, cover_cells
from tracker.fences import Fence
from tracker.shapes import Circle, Corridor, MultiPolygon, Polygon, destination

# A tiny fence far from everything else: it makes the index's finest resolution 14 or
# 15, so lookups walk up many levels of parents to the other fences' cells (H3 children
# poke out of their parents' hexagons: the case the cover's safety distance is for).
TINY = Fence("tiny", "tiny", Circle(-33.9, 18.4, 3.0))


def box(west: float, south: float, east: float, north: float) -> tuple[tuple[float, float], ...]:
    return ((west, south), (east, south), (east, north), (west, north), (west, south))


def check(index: FenceIndex, fence: Fence, lat: float, lon: float) -> None:
    """The index's promise for one point."""
    found = {f.id: certain for f, certain in index.candidates(lat, lon)}
    inside = fence.shape.contains(lat, lon)
    if inside:
        assert fence.id in found, f"inside point ({lat}, {lon}) missed"
    if found.get(fence.id):
        assert inside, f"({lat}, {lon}) certain inside but outside"
    assert index.inside(fence, lat, lon) is inside


def star(
    lat: float, lon: float, radius_m: float, radii: list[float], angles: list[float]
) -> tuple[tuple[float, float], ...]:
    """A star-shaped ring: vertices at sorted angles, so it never crosses itself."""
    ring = [
        destination(lat, lon, a, radius_m * r) for a, r in sorted(zip(angles, radii, strict=False))
    ]
    return (*ring, ring[0])


@st.composite
def polygons(draw: st.DrawFn) -> Polygon | MultiPolygon:
    lat = draw(st.floats(-60, 65))
    lon = draw(st.floats(-170, 170))
    radius = draw(st.floats(30.0, 30_000.0))
    n = draw(st.integers(3, 12))
    angles = draw(st.lists(st.floats(0, 359.9), min_size=n, max_size=n, unique=True))
    radii = draw(st.lists(st.floats(0.3, 1.0), min_size=n, max_size=n))
    outer = star(lat, lon, radius, radii, angles)
    holes: tuple[tuple[tuple[float, float], ...], ...] = ()
    if draw(st.booleans()):
        holes = (star(lat, lon, radius * 0.2, [1.0] * 5, [0, 72, 144, 216, 288]),)
    polygon = shapely.Polygon(outer, holes)
    assume(polygon.is_valid and polygon.area > 0)
    shape = Polygon(outer, holes)
    if draw(st.booleans()):
        # A second part, east of the first's bounding box.
        east = shapely.bounds(polygon)[2] + 0.01
        part = star(lat, east + radius / 80_000, radius / 2, [1.0] * 6, [0, 60, 120, 180, 240, 300])
        return MultiPolygon((shape, Polygon(part)))
    return shape


def points_near(
    shape: Polygon | MultiPolygon | Circle | Corridor, draw: Callable[..., Any]
) -> list[tuple[float, float]]:
    """Points on and around the shape's boundary, where a cover can fail, plus some in
    its bounding box."""
    cover = shape.cover_polygon()
    boundary = cover.boundary if not isinstance(shape, Polygon | MultiPolygon) else None
    geom = shape.to_shapely() if isinstance(shape, Polygon | MultiPolygon) else None
    line = geom.boundary if geom is not None else boundary
    out = []
    fractions = draw(st.lists(st.floats(0, 1), min_size=20, max_size=20))
    offsets = draw(st.lists(st.floats(-1e-4, 1e-4), min_size=20, max_size=20))
    for f, d in zip(fractions, offsets, strict=True):
        p = shapely.line_interpolate_point(line, f, normalized=True)
        out.append((p.y + d, p.x - d))
        out.append((p.y, p.x))  # exactly on the (cover's) boundary
    if geom is not None:
        out.extend((lat, lon) for lon, lat in shapely.get_coordinates(geom))  # vertices
    west, south, east, north = shape.bbox
    xs = draw(st.lists(st.floats(0, 1), min_size=20, max_size=20))
    ys = draw(st.lists(st.floats(0, 1), min_size=20, max_size=20))
    out.extend(
        (south + y * (north - south), west + x * (east - west)) for x, y in zip(xs, ys, strict=True)
    )
    return out


@settings(max_examples=40, deadline=None)
@given(shape=polygons(), data=st.data())
def test_polygon_cover_never_misses_and_interior_is_certain(
    shape: Polygon | MultiPolygon, data: st.DataObject
) -> None:
    fence = Fence("f", "f", shape)
    index = FenceIndex([fence, TINY])
    for lat, lon in points_near(shape, data.draw):
        check(index, fence, lat, lon)


@settings(max_examples=15, deadline=None)
@given(
    lat=st.floats(-65, 65),
    lon=st.floats(-170, 170),
    radius=st.floats(2.0, 20_000.0),
    width=st.floats(2.0, 500.0),
    heading=st.floats(0, 360),
    data=st.data(),
)
def test_circle_and_corridor_covers_never_miss(
    lat: float, lon: float, radius: float, width: float, heading: float, data: st.DataObject
) -> None:
    a = destination(lat, lon, heading, radius)
    b = destination(a[1], a[0], heading + 60, radius * 2)
    fences = [
        Fence("circle", "c", Circle(lat, lon, radius)),
        Fence("corridor", "r", Corridor(((lon, lat), a, b), width)),
    ]
    index = FenceIndex([*fences, TINY])
    for fence in fences:
        for plat, plon in points_near(fence.shape, data.draw):
            check(index, fence, plat, plon)
        # Points just inside the exact edge, all around.
        if isinstance(fence.shape, Circle):
            for bearing in range(0, 360, 20):
                elon, elat = destination(lat, lon, bearing, radius * 0.999999)
                check(index, fence, elat, elon)


def test_resolution_follows_fence_size() -> None:
    block = cover_cells(Fence("block", "b", Polygon(box(-8.611, 41.150, -8.610, 41.151))))
    city = cover_cells(Fence("city", "c", Polygon(box(-8.70, 41.10, -8.55, 41.20))))
    assert block.resolution > city.resolution
    assert block.cells < 2000 and city.cells < 2000


def test_a_country_sized_fence_stays_small_and_compacted() -> None:
    country = Fence("pt", "Portugal-ish", Polygon(box(-9.5, 37.0, -6.2, 42.1)))
    cover = cover_cells(country)
    assert len(cover.boundary) <= 2 * MAX_BOUNDARY_CELLS
    resolutions = {h3.get_resolution(c) for c in cover.interior}
    assert len(resolutions) > 1  # compacted into coarser parents
    assert min(resolutions) < cover.resolution
    index = FenceIndex([country, TINY])
    assert index.candidates(39.5, -8.0) == [(country, True)]  # deep inside: no geometry


def test_candidates_with_no_fences_and_far_away() -> None:
    index = FenceIndex()
    assert index.candidates(41.15, -8.61) == []
    index.add(Fence("c", "c", Circle(41.15, -8.61, 100.0)))
    assert [f.id for f, _ in index.candidates(41.15, -8.61)] == ["c"]
    assert index.candidates(52.5, 13.4) == []


def test_overlapping_fences_share_cells() -> None:
    a = Fence("a", "a", Circle(41.15, -8.61, 300.0))
    b = Fence("b", "b", Circle(41.1505, -8.6105, 300.0))
    index = FenceIndex([a, b])
    assert {f.id for f, _ in index.candidates(41.1502, -8.6102)} == {"a", "b"}


def test_add_remove_replace_at_run_time() -> None:
    a = Fence("a", "a", Circle(41.15, -8.61, 100.0))
    b = Fence("b", "b", Polygon(box(-8.62, 41.14, -8.60, 41.16)))
    index = FenceIndex([a, b])
    assert len(index) == 2 and "a" in index and index.get("b") is b
    assert index.remove("a") is a
    assert index.remove("a") is None
    assert [f.id for f, _ in index.candidates(41.15, -8.61)] == ["b"]
    assert index.remove("b") is b
    assert index.stats.cells == 0 and index.stats.resolutions == ()
    assert index.candidates(41.15, -8.61) == []
    # replace_all keeps unchanged fences' covers and redoes changed ones.
    index.replace_all([a, b])
    cover_a = index.cover("a")
    moved = Fence("b", "b", Circle(41.15, -8.61, 50.0))
    index.replace_all([a, moved])
    assert index.cover("a") is cover_a
    assert index.get("b") is moved
    index.replace_all([])
    assert len(index) == 0 and index.stats.cells == 0


def test_adding_the_same_id_replaces() -> None:
    index = FenceIndex([Fence("a", "a", Circle(41.15, -8.61, 100.0))])
    index.add(Fence("a", "a", Circle(52.5, 13.4, 100.0)))
    assert index.candidates(41.15, -8.61) == []
    assert [f.id for f, _ in index.candidates(52.5, 13.4)] == ["a"]


def test_lookup_sees_only_nearby_fences_among_many() -> None:
    near = Fence("near", "n", Circle(41.15, -8.61, 200.0))
    far = [
        Fence(f"far-{i}", "f", Circle(45.0 + (i % 30) * 0.3, 2.0 + (i // 30) * 0.3, 500.0))
        for i in range(300)
    ]
    index = FenceIndex([near, *far])
    assert [f.id for f, _ in index.candidates(41.15, -8.61)] == ["near"]


def test_near_segment_finds_a_fence_between_distant_fixes() -> None:
    small = Fence("small", "s", Circle(41.15, -8.61, 30.0))
    index = FenceIndex([small, Fence("other", "o", Circle(41.30, -8.40, 30.0))])
    # 2 km either side of the small circle: neither end's cells know it.
    assert [f.id for f in index.near_segment(41.15, -8.64, 41.15, -8.58)] == ["small"]
    assert index.near_segment(41.16, -8.64, 41.16, -8.58) == []
    # A very long segment is walked along rather than its bounding box enumerated.
    found = {f.id for f in index.near_segment(41.0, -8.8, 41.45, -8.2)}
    assert "other" in found or "small" in found
    assert index.near_segment(40.0, -8.8, 40.1, -8.7) == []


def test_near_segment_long_segment_through_many_grid_cells() -> None:
    fences = [Fence(f"c{i}", "c", Circle(45.0, 5.0 + i * 0.5, 50.0)) for i in range(10)]
    index = FenceIndex(fences)
    found = {f.id for f in index.near_segment(45.0, 4.9, 45.0, 9.6)}
    assert found == {f"c{i}" for i in range(10)}
    # The diagonal of the same span passes near none of them but c0.
    diagonal = {f.id for f in index.near_segment(45.0, 5.0, 47.0, 9.6)}
    assert "c9" not in diagonal


@pytest.mark.parametrize("lat", [0.0, 45.0, 70.0])
def test_safety_distance_covers_children_poking_out(lat: float) -> None:
    # A circle whose edge passes through many cells; dense points just inside the edge.
    circle = Circle(lat, 10.0, 5_000.0)
    fence = Fence("c", "c", circle)
    index = FenceIndex([fence, TINY])
    for i in range(720):
        lon, plat = destination(lat, 10.0, i / 2.0, 5_000.0 * (1 - 1e-9))
        check(index, fence, plat, lon)
    assert index.stats.cells > 0
