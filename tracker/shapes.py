"""Fence geometry: exact, pure tests for polygons, circles and corridors, and altitude bands.

Coordinates follow GeoJSON: a position is `(lon, lat)` in degrees, and polygon edges are
straight in lon/lat (as shapely and H3 treat them). Circles and corridors are defined in
metres on a sphere of the mean Earth radius, so their tests are exact in metres, not
degrees. Every shape answers the same questions (see `Shape`); a point on the boundary
counts as inside.

Each shape also gives two polygons in lon/lat for the H3 covering: `cover_polygon()`
contains the exact shape and `interior_polygon()` is contained in it. For circles and
corridors both come from a buffer in a local metric frame, widened or narrowed by a bound
on that frame's distortion, so the guarantee holds however large the shape is.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import shapely  # type: ignore[import-untyped,unused-ignore]

# Mean Earth radius (IUGG), metres: haversine, destination points and the metric frames
# all use it, so a circle's edge computed one way is the edge tested the other way.
EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0

# How much the cover polygon is widened and the interior polygon narrowed beyond the
# frame's distortion bound: a relative part and an absolute part in metres (float noise
# of the transforms).
_POLYGON_SLACK = 0.005
_POLYGON_SLACK_M = 0.5
# Vertices per quarter circle when buffering (few: H3's polygon fill costs per vertex).
# A buffer's vertices lie on the arcs and its chords inside them, by up to
# 1 - cos(pi / 16) < 2 %: outward buffers are widened by _CHORD_FACTOR to make up for it.
_QUAD_SEGS = 4
_CHORD_FACTOR = 1.0 / math.cos(math.pi / (4 * _QUAD_SEGS))
# Latitudes beyond this are refused: the metric frames degenerate towards the poles.
MAX_ABS_LAT = 85.0

Position = tuple[float, float]  # (lon, lat), GeoJSON order
Ring = tuple[Position, ...]
BBox = tuple[float, float, float, float]  # (min_lon, min_lat, max_lon, max_lat)


class Shape(Protocol):
    """What the index and the engine ask of any fence shape."""

    @property
    def bbox(self) -> BBox: ...

    def contains(self, lat: float, lon: float) -> bool: ...

    def distance_to_boundary_m(self, lat: float, lon: float) -> float: ...

    def segment_crosses(self, lat1: float, lon1: float, lat2: float, lon2: float) -> bool: ...

    def cover_polygon(self, margin_m: float = 0.0) -> Any:
        """A lon/lat polygon holding every point within `margin_m` of the shape."""
        ...

    def interior_polygon(self, margin_m: float = 0.0) -> Any:
        """A lon/lat polygon of points at least `margin_m` inside the shape (maybe empty)."""
        ...


# --- spherical helpers ------------------------------------------------------------------


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def destination(lat: float, lon: float, bearing_deg: float, distance_m: float) -> Position:
    """The point `distance_m` from (lat, lon) along the initial bearing, as (lon, lat)."""
    d = distance_m / EARTH_RADIUS_M
    b = math.radians(bearing_deg)
    p1 = math.radians(lat)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = math.radians(lon) + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return ((math.degrees(l2) + 540.0) % 360.0 - 180.0, math.degrees(p2))


def _point_segment_m(ax: float, ay: float, bx: float, by: float) -> float:
    """Distance from the origin to the segment a-b (plane coordinates)."""
    dx = bx - ax
    dy = by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0.0 else min(1.0, max(0.0, -(ax * dx + ay * dy) / length2))
    return math.hypot(ax + t * dx, ay + t * dy)


def _cross(ox: float, oy: float, ax: float, ay: float, bx: float, by: float) -> float:
    return (ax - ox) * (by - oy) - (ay - oy) * (bx - ox)


def _segments_m(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> float:
    """Distance between segments a and b, each (x1, y1, x2, y2), in the plane."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    d1 = _cross(ax1, ay1, ax2, ay2, bx1, by1)
    d2 = _cross(ax1, ay1, ax2, ay2, bx2, by2)
    d3 = _cross(bx1, by1, bx2, by2, ax1, ay1)
    d4 = _cross(bx1, by1, bx2, by2, ax2, ay2)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and d1 and d2 and d3 and d4:
        return 0.0
    return min(
        _point_segment_m(ax1 - bx1, ay1 - by1, ax2 - bx1, ay2 - by1),
        _point_segment_m(ax1 - bx2, ay1 - by2, ax2 - bx2, ay2 - by2),
        _point_segment_m(bx1 - ax1, by1 - ay1, bx2 - ax1, by2 - ay1),
        _point_segment_m(bx1 - ax2, by1 - ay2, bx2 - ax2, by2 - ay2),
    )


def _bbox(geom: Any) -> BBox:
    min_lon, min_lat, max_lon, max_lat = geom.bounds
    return (float(min_lon), float(min_lat), float(max_lon), float(max_lat))


def _check_position(lon: float, lat: float) -> None:
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise ValueError(f"position ({lon}, {lat}) is not finite")
    if not -180.0 <= lon <= 180.0:
        raise ValueError(f"longitude {lon} is outside [-180, 180]")
    if not -MAX_ABS_LAT <= lat <= MAX_ABS_LAT:
        raise ValueError(f"latitude {lat} is outside [-{MAX_ABS_LAT:g}, {MAX_ABS_LAT:g}]")


class _Frame:
    """An equirectangular frame in metres around (lat0, lon0).

    It is linear in (lon, lat), so straight lon/lat lines stay straight. Along meridians it
    is exact; east-west it scales by cos(lat0) instead of cos(lat), so over a band of
    latitudes the true distance lies within [lo, hi] times the frame distance
    (`distortion`).
    """

    __slots__ = ("kx", "lat0", "lon0")

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0 = lat0
        self.lon0 = lon0
        self.kx = M_PER_DEG * math.cos(math.radians(lat0))

    # Both take and return an (n, 2) array of coordinates, as `shapely.transform` passes.
    def to_xy(self, coords: Any) -> Any:
        return (coords - (self.lon0, self.lat0)) * (self.kx, M_PER_DEG)

    def to_lonlat(self, coords: Any) -> Any:
        return coords / (self.kx, M_PER_DEG) + (self.lon0, self.lat0)

    def distortion(self, lat_min: float, lat_max: float) -> tuple[float, float]:
        """(lo, hi): true distance / frame distance over the band [lat_min, lat_max]."""
        c0 = math.cos(math.radians(self.lat0))
        lat_min = max(lat_min, -MAX_ABS_LAT - 1.0)
        lat_max = min(lat_max, MAX_ABS_LAT + 1.0)
        nearest_equator = 0.0 if lat_min <= 0.0 <= lat_max else min(abs(lat_min), abs(lat_max))
        c_max = math.cos(math.radians(nearest_equator))
        c_min = min(math.cos(math.radians(lat_min)), math.cos(math.radians(lat_max)))
        return min(1.0, c_min / c0), max(1.0, c_max / c0)


def _buffered(
    frame: _Frame, geom_xy: Any, reach_m: float, lats: tuple[float, float], outward: bool
) -> Any:
    """`geom_xy` (frame metres; its latitudes span `lats`) buffered to a lon/lat polygon
    that contains (outward) or is contained in (inward) the true set of points within
    `reach_m` metres of it."""
    # The band of latitudes the buffer and the great circles to it stay within.
    pad = max(reach_m, 0.0) / M_PER_DEG * 1.5
    lo, hi = frame.distortion(lats[0] - pad, lats[1] + pad)
    if outward:
        distance = (reach_m / lo * (1.0 + _POLYGON_SLACK) + _POLYGON_SLACK_M) * _CHORD_FACTOR
    else:
        distance = reach_m / hi * (1.0 - _POLYGON_SLACK) - _POLYGON_SLACK_M
        if distance <= 0.0:
            return shapely.Polygon()
    polygon = shapely.buffer(geom_xy, distance, quad_segs=_QUAD_SEGS)
    return shapely.transform(polygon, frame.to_lonlat)


# --- polygons ---------------------------------------------------------------------------


def _ring(coords: Iterable[Sequence[float]]) -> Ring:
    return tuple((float(c[0]), float(c[1])) for c in coords)


class _Area:
    """Exact tests on a polygonal geometry in lon/lat (prepared for repeated queries)."""

    __slots__ = ("bbox", "boundary_xy", "frame", "geom")

    def __init__(self, geom: Any) -> None:
        shapely.prepare(geom)
        self.geom = geom
        self.bbox = _bbox(geom)
        min_lon, min_lat, max_lon, max_lat = geom.bounds
        self.frame = _Frame((min_lat + max_lat) / 2.0, (min_lon + max_lon) / 2.0)
        self.boundary_xy = shapely.transform(geom.boundary, self.frame.to_xy)

    def contains(self, lat: float, lon: float) -> bool:
        # For a point, "intersects" is "covers": interior or boundary.
        return bool(shapely.intersects_xy(self.geom, lon, lat))

    def distance_to_boundary_m(self, lat: float, lon: float) -> float:
        # The nearest boundary point is found in the shape's frame, then measured on the
        # sphere: exact for that point, and that point is within the frame's distortion
        # (under 0.2 % for a city-sized fence) of the truly nearest one.
        frame = self.frame
        origin = shapely.Point((lon - frame.lon0) * frame.kx, (lat - frame.lat0) * M_PER_DEG)
        x, y = shapely.shortest_line(self.boundary_xy, origin).coords[0]
        near_lon = x / frame.kx + frame.lon0
        near_lat = y / M_PER_DEG + frame.lat0
        return haversine_m(lat, lon, near_lat, near_lon)

    def segment_crosses(self, lat1: float, lon1: float, lat2: float, lon2: float) -> bool:
        line = shapely.LineString([(lon1, lat1), (lon2, lat2)])
        return bool(shapely.intersects(self.geom, line))

    def widened(self, margin_m: float) -> Any:
        """The geometry buffered by at least |margin_m| metres in every direction
        (outward when positive, inward when negative)."""
        if margin_m == 0.0:
            return self.geom
        # Degrees of longitude are the shorter ones, shortest at the highest latitude: a
        # buffer of that many degrees is at least the margin in every direction.
        reach = abs(margin_m) / M_PER_DEG
        widest = min(max(abs(self.bbox[1]), abs(self.bbox[3])) + reach, 89.0)
        degrees = abs(margin_m) * _CHORD_FACTOR / (M_PER_DEG * math.cos(math.radians(widest)))
        return shapely.buffer(self.geom, math.copysign(degrees, margin_m), quad_segs=_QUAD_SEGS)


def _check_geometry(geom: Any) -> None:
    for lon, lat in shapely.get_coordinates(geom):
        _check_position(float(lon), float(lat))
    min_lon, _, max_lon, _ = geom.bounds
    if max_lon - min_lon >= 180.0:
        # H3 reads a polygon this wide as crossing the antimeridian, which fences do not.
        raise ValueError("spans 180 degrees of longitude or more (antimeridian unsupported)")
    if not shapely.is_valid(geom):
        raise ValueError(f"invalid geometry: {shapely.is_valid_reason(geom)}")


def _check_ring(ring: Ring, what: str) -> None:
    if len(ring) < 4:
        raise ValueError(f"{what} has {len(ring)} positions, at least 4 are needed")
    if ring[0] != ring[-1]:
        raise ValueError(f"{what} is not closed (first and last positions differ)")


class _AreaShape:
    """The Shape methods of an area-like shape, answered by its `_Area`."""

    _area: _Area

    @property
    def bbox(self) -> BBox:
        return self._area.bbox

    def contains(self, lat: float, lon: float) -> bool:
        return self._area.contains(lat, lon)

    def distance_to_boundary_m(self, lat: float, lon: float) -> float:
        return self._area.distance_to_boundary_m(lat, lon)

    def segment_crosses(self, lat1: float, lon1: float, lat2: float, lon2: float) -> bool:
        return self._area.segment_crosses(lat1, lon1, lat2, lon2)

    def cover_polygon(self, margin_m: float = 0.0) -> Any:
        return self._area.widened(margin_m)

    def interior_polygon(self, margin_m: float = 0.0) -> Any:
        return self._area.widened(-margin_m)


@dataclass(frozen=True)
class Polygon(_AreaShape):
    """A polygon with optional holes; rings are closed lists of (lon, lat)."""

    exterior: Ring
    holes: tuple[Ring, ...] = ()
    _area: _Area = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exterior", _ring(self.exterior))
        object.__setattr__(self, "holes", tuple(_ring(h) for h in self.holes))
        _check_ring(self.exterior, "exterior ring")
        for i, hole in enumerate(self.holes):
            _check_ring(hole, f"hole {i}")
        geom = self.to_shapely()
        _check_geometry(geom)
        object.__setattr__(self, "_area", _Area(geom))

    def to_shapely(self) -> Any:
        return shapely.Polygon(self.exterior, self.holes)


@dataclass(frozen=True)
class MultiPolygon(_AreaShape):
    """Several non-overlapping polygons, each with optional holes."""

    polygons: tuple[Polygon, ...]
    _area: _Area = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "polygons", tuple(self.polygons))
        if not self.polygons:
            raise ValueError("a multipolygon needs at least one polygon")
        geom = self.to_shapely()
        _check_geometry(geom)
        object.__setattr__(self, "_area", _Area(geom))

    def to_shapely(self) -> Any:
        return shapely.MultiPolygon([p.to_shapely() for p in self.polygons])


# --- circles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Circle:
    """All points within `radius_m` metres (great-circle distance) of the centre."""

    lat: float
    lon: float
    radius_m: float
    _frame: _Frame = field(init=False, repr=False, compare=False)
    _lats: tuple[float, float] = field(init=False, repr=False, compare=False)
    _box: BBox = field(init=False, repr=False, compare=False)
    # For `contains`, the hot path: the centre in radians, and the haversine term `a`
    # at the radius (comparing `a` skips the asin and sqrt of the distance).
    _lat_rad: float = field(init=False, repr=False, compare=False)
    _lon_rad: float = field(init=False, repr=False, compare=False)
    _cos_lat: float = field(init=False, repr=False, compare=False)
    _a_max: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_position(self.lon, self.lat)
        if not (math.isfinite(self.radius_m) and self.radius_m > 0.0):
            raise ValueError(f"radius_m must be a positive number of metres, not {self.radius_m}")
        if abs(self.lat) + self.radius_m / M_PER_DEG > MAX_ABS_LAT:
            raise ValueError(f"circle reaches beyond latitude {MAX_ABS_LAT:g}")
        object.__setattr__(self, "_frame", _Frame(self.lat, self.lon))
        object.__setattr__(self, "_lats", (self.lat, self.lat))
        object.__setattr__(self, "_box", _bbox(self.cover_polygon()))
        object.__setattr__(self, "_lat_rad", math.radians(self.lat))
        object.__setattr__(self, "_lon_rad", math.radians(self.lon))
        object.__setattr__(self, "_cos_lat", math.cos(self._lat_rad))
        half_angle = min(self.radius_m / (2.0 * EARTH_RADIUS_M), math.pi / 2)
        object.__setattr__(self, "_a_max", math.sin(half_angle) ** 2)

    @property
    def bbox(self) -> BBox:
        return self._box

    def contains(self, lat: float, lon: float) -> bool:
        # haversine_m(...) <= radius_m, without the monotonic 2R asin(sqrt(a)).
        p2 = math.radians(lat)
        a = (
            math.sin((p2 - self._lat_rad) / 2) ** 2
            + self._cos_lat * math.cos(p2) * math.sin((math.radians(lon) - self._lon_rad) / 2) ** 2
        )
        return a <= self._a_max

    def distance_to_boundary_m(self, lat: float, lon: float) -> float:
        return abs(haversine_m(self.lat, self.lon, lat, lon) - self.radius_m)

    def _project(self, lat: float, lon: float) -> tuple[float, float]:
        """Azimuthal equidistant: distances from the centre are exact."""
        d = haversine_m(self.lat, self.lon, lat, lon)
        p1 = math.radians(self.lat)
        p2 = math.radians(lat)
        dl = math.radians(lon - self.lon)
        bearing = math.atan2(
            math.sin(dl) * math.cos(p2),
            math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl),
        )
        return d * math.sin(bearing), d * math.cos(bearing)

    def segment_crosses(self, lat1: float, lon1: float, lat2: float, lon2: float) -> bool:
        ax, ay = self._project(lat1, lon1)
        bx, by = self._project(lat2, lon2)
        return _point_segment_m(ax, ay, bx, by) <= self.radius_m

    def cover_polygon(self, margin_m: float = 0.0) -> Any:
        reach = self.radius_m + margin_m
        return _buffered(self._frame, shapely.Point(0.0, 0.0), reach, self._lats, True)

    def interior_polygon(self, margin_m: float = 0.0) -> Any:
        reach = self.radius_m - margin_m
        return _buffered(self._frame, shapely.Point(0.0, 0.0), reach, self._lats, False)


# --- corridors --------------------------------------------------------------------------

# Corridor segments are bucketed on a lon/lat grid so that a point test looks only at the
# segments near it. The bucket side is at least this many half-widths...
_BUCKET_REACHES = 2.0
# ... and at least the line's extent over this, which bounds the number of buckets.
_BUCKETS_PER_EXTENT = 256


@dataclass(frozen=True)
class Corridor:
    """All points within `width_m / 2` metres of a polyline of (lon, lat) points.

    `width_m` is the full width; the ends are round (a point past the last vertex is
    inside when within half the width of it).
    """

    points: tuple[Position, ...]
    width_m: float
    _segments: tuple[tuple[float, float, float, float], ...] = field(
        init=False, repr=False, compare=False
    )
    _expanded: tuple[BBox, ...] = field(init=False, repr=False, compare=False)
    _buckets: dict[tuple[int, int], tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _bucket_deg: float = field(init=False, repr=False, compare=False)
    _frame: _Frame = field(init=False, repr=False, compare=False)
    _lats: tuple[float, float] = field(init=False, repr=False, compare=False)
    _line_xy: Any = field(init=False, repr=False, compare=False)
    _box: BBox = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", _ring(self.points))
        if len(self.points) < 2:
            raise ValueError(f"a corridor needs at least 2 points, got {len(self.points)}")
        for lon, lat in self.points:
            _check_position(lon, lat)
        if not (math.isfinite(self.width_m) and self.width_m > 0.0):
            raise ValueError(f"width_m must be a positive number of metres, not {self.width_m}")
        lons = [p[0] for p in self.points]
        lats = [p[1] for p in self.points]
        if max(lons) - min(lons) >= 180.0:
            raise ValueError("spans 180 degrees of longitude or more (antimeridian unsupported)")
        reach = self.width_m / 2.0 / M_PER_DEG
        if max(abs(min(lats)), abs(max(lats))) + reach > MAX_ABS_LAT:
            raise ValueError(f"corridor reaches beyond latitude {MAX_ABS_LAT:g}")
        frame = _Frame((min(lats) + max(lats)) / 2.0, (min(lons) + max(lons)) / 2.0)
        line_xy = shapely.transform(shapely.LineString(self.points), frame.to_xy)
        object.__setattr__(self, "_frame", frame)
        object.__setattr__(self, "_lats", (min(lats), max(lats)))
        object.__setattr__(self, "_line_xy", line_xy)
        object.__setattr__(self, "_box", _bbox(self.cover_polygon()))
        self._index_segments((min(lats) - 2 * reach, max(lats) + 2 * reach))

    def _index_segments(self, band: tuple[float, float]) -> None:
        segments = tuple(
            (a[0], a[1], b[0], b[1]) for a, b in zip(self.points, self.points[1:], strict=False)
        )
        # Reach in degrees, taken at the highest latitude so it is enough everywhere and
        # in both directions (a degree of latitude is never shorter than one of longitude).
        widest = max(abs(band[0]), abs(band[1]))
        reach = self.width_m / 2.0 / (M_PER_DEG * math.cos(math.radians(widest))) * 1.01
        expanded = tuple(
            (min(x1, x2) - reach, min(y1, y2) - reach, max(x1, x2) + reach, max(y1, y2) + reach)
            for x1, y1, x2, y2 in segments
        )
        lons = [p[0] for p in self.points]
        lats = [p[1] for p in self.points]
        extent = max(max(lons) - min(lons), max(lats) - min(lats))
        size = max(reach * _BUCKET_REACHES, extent / _BUCKETS_PER_EXTENT)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, (x1, y1, x2, y2) in enumerate(segments):
            # Sample the segment every half bucket; a point within `reach` of the segment
            # is then in the 3x3 block of buckets around some sample's bucket.
            steps = max(1, math.ceil(math.hypot(x2 - x1, y2 - y1) / (size / 2.0)))
            keys: set[tuple[int, int]] = set()
            for s in range(steps + 1):
                t = s / steps
                bx = math.floor((x1 + t * (x2 - x1)) / size)
                by = math.floor((y1 + t * (y2 - y1)) / size)
                keys.update((bx + dx, by + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))
            for key in keys:
                buckets.setdefault(key, []).append(i)
        object.__setattr__(self, "_segments", segments)
        object.__setattr__(self, "_expanded", expanded)
        object.__setattr__(self, "_bucket_deg", size)
        object.__setattr__(self, "_buckets", {k: tuple(v) for k, v in buckets.items()})

    @property
    def bbox(self) -> BBox:
        return self._box

    def _distance_m(self, lat: float, lon: float, indices: Iterable[int]) -> float:
        # A frame centred on the point itself: exact at the point, and the error grows
        # only with the distance measured, so it is negligible within the width.
        kx = M_PER_DEG * math.cos(math.radians(lat))
        best = math.inf
        segments = self._segments
        for i in indices:
            x1, y1, x2, y2 = segments[i]
            d = _point_segment_m(
                (x1 - lon) * kx, (y1 - lat) * M_PER_DEG, (x2 - lon) * kx, (y2 - lat) * M_PER_DEG
            )
            best = min(best, d)
        return best

    def _near(self, lat: float, lon: float) -> tuple[int, ...]:
        size = self._bucket_deg
        return self._buckets.get((math.floor(lon / size), math.floor(lat / size)), ())

    def contains(self, lat: float, lon: float) -> bool:
        return self._distance_m(lat, lon, self._near(lat, lon)) <= self.width_m / 2.0

    def distance_to_boundary_m(self, lat: float, lon: float) -> float:
        near = self._near(lat, lon)
        d = self._distance_m(lat, lon, near) if near else math.inf
        if d == math.inf:  # nothing within reach: measure against every segment
            d = self._distance_m(lat, lon, range(len(self._segments)))
        return abs(d - self.width_m / 2.0)

    def segment_crosses(self, lat1: float, lon1: float, lat2: float, lon2: float) -> bool:
        lo_x, hi_x = min(lon1, lon2), max(lon1, lon2)
        lo_y, hi_y = min(lat1, lat2), max(lat1, lat2)
        lat0 = (lat1 + lat2) / 2.0
        lon0 = (lon1 + lon2) / 2.0
        kx = M_PER_DEG * math.cos(math.radians(lat0))
        fix = (
            (lon1 - lon0) * kx,
            (lat1 - lat0) * M_PER_DEG,
            (lon2 - lon0) * kx,
            (lat2 - lat0) * M_PER_DEG,
        )
        half = self.width_m / 2.0
        for (x1, y1, x2, y2), box in zip(self._segments, self._expanded, strict=True):
            if box[0] > hi_x or box[2] < lo_x or box[1] > hi_y or box[3] < lo_y:
                continue
            seg = (
                (x1 - lon0) * kx,
                (y1 - lat0) * M_PER_DEG,
                (x2 - lon0) * kx,
                (y2 - lat0) * M_PER_DEG,
            )
            if _segments_m(fix, seg) <= half:
                return True
        return False

    def cover_polygon(self, margin_m: float = 0.0) -> Any:
        reach = self.width_m / 2.0 + margin_m
        return _buffered(self._frame, self._line_xy, reach, self._lats, True)

    def interior_polygon(self, margin_m: float = 0.0) -> Any:
        reach = self.width_m / 2.0 - margin_m
        return _buffered(self._frame, self._line_xy, reach, self._lats, False)


AnyShape = Polygon | MultiPolygon | Circle | Corridor


# --- altitude ---------------------------------------------------------------------------


class Datum(enum.StrEnum):
    """What an altitude band's metres are measured from."""

    AMSL = "amsl"  # above mean sea level: compared with Fix.alt
    TAKEOFF = "takeoff"  # above the take-off point: compared with Fix.rel_alt


@dataclass(frozen=True)
class AltitudeBand:
    """A vertical range in metres, both ends inclusive; None leaves that side open."""

    floor_m: float | None
    ceiling_m: float | None
    datum: Datum = Datum.AMSL

    def __post_init__(self) -> None:
        if self.floor_m is None and self.ceiling_m is None:
            raise ValueError("an altitude band needs a floor, a ceiling or both")
        for name, value in (("floor_m", self.floor_m), ("ceiling_m", self.ceiling_m)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of metres, not {value}")
        if (
            self.floor_m is not None
            and self.ceiling_m is not None
            and self.floor_m > self.ceiling_m
        ):
            raise ValueError(f"floor_m {self.floor_m} is above ceiling_m {self.ceiling_m}")

    def height(self, alt: float | None, rel_alt: float | None) -> float | None:
        """The fix's altitude in this band's datum, or None when the fix lacks it."""
        return alt if self.datum is Datum.AMSL else rel_alt

    def excess_m(self, height: float) -> float:
        """Metres outside the band (positive), or minus the clearance inside it."""
        below = -math.inf if self.floor_m is None else self.floor_m - height
        above = -math.inf if self.ceiling_m is None else height - self.ceiling_m
        return max(below, above)

    def overlaps(self, low: float, high: float) -> bool:
        """True when the altitudes [low, high] meet the band."""
        return (self.floor_m is None or high >= self.floor_m) and (
            self.ceiling_m is None or low <= self.ceiling_m
        )
