"""The dispatch map's base layer: the configured tile server, else the roads of the
configured OpenStreetMap extract drawn by the page, else nothing (a plain background).

The roads come from the same loader the tracker routes on (tracker.roads), loaded once
per worker, lazily, in a thread. The graph has one edge per node pair and direction;
for drawing, the two directions are merged and runs of edges through plain nodes are
joined back into polylines. Small zooms get only the bigger road classes, simplified to
about a pixel, so a response stays small at every zoom.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import shapely
from aiohttp import web
from numpy.typing import NDArray

from tracker.roads import RoadClass, RoadGraph, load_roads
from web.api import Api, Param, json_response, query_int
from web.auth import Role
from web.problems import Problem
from web.services import services

api = Api()

ROADS_ATTRIBUTION = "Roads © OpenStreetMap contributors (ODbL)"
MAX_ZOOM = 22
# Above this zoom nothing more is shown and nothing is simplified any more.
DETAIL_ZOOM = 16
# A request may cover at most this many pixels a side at its zoom (a few screens):
# a bigger box at a big zoom would ship the whole extract in full detail.
MAX_VIEW_PX = 8192
SIMPLIFY_PX = 0.75  # tolerance of the simplification, in pixels at the requested zoom
COORD_DECIMALS = 5  # ~1 m: finer than a pixel up to zoom 17
CACHED_EXTRACTS = 2  # road layers kept per worker (one in practice; tests use several)
ROADS_MAX_AGE_S = 3600  # the extract does not change while the process runs
_TILE_PX = 256
_M_PER_DEG = 111_320.0  # at the equator, on the web map's sphere

# The smallest zoom at which a class is drawn (where a city's streets become legible).
MIN_ZOOM: dict[RoadClass, int] = {
    RoadClass.MOTORWAY: 0,
    RoadClass.TRUNK: 0,
    RoadClass.PRIMARY: 10,
    RoadClass.MOTORWAY_LINK: 12,
    RoadClass.TRUNK_LINK: 12,
    RoadClass.SECONDARY: 12,
    RoadClass.PRIMARY_LINK: 13,
    RoadClass.TERTIARY: 13,
    RoadClass.SECONDARY_LINK: 14,
    RoadClass.TERTIARY_LINK: 14,
    RoadClass.UNCLASSIFIED: 14,
    RoadClass.RESIDENTIAL: 14,
    RoadClass.LIVING_STREET: 14,
    RoadClass.ROAD: 14,
    RoadClass.SERVICE: 15,
}

_json = msgspec.json.Encoder()


class Basemap(msgspec.Struct, frozen=True):
    """What the page draws under fences and devices. `tiles` is an XYZ template when a
    tile server is configured; `roads` says whether /api/v1/basemap/roads has an extract
    to draw from. `center` is [lat, lon] and `bounds` [south, west, north, east] of the
    extract, or null without one."""

    tiles: str | None
    roads: bool
    center: list[float] | None
    bounds: list[float] | None
    attribution: str | None


@dataclass
class RoadLayer:
    """The extract's roads as polylines with a class each, and a spatial index."""

    lines: NDArray[Any]  # shapely LineStrings, lon/lat
    classes: NDArray[np.uint8]
    bounds: tuple[float, float, float, float]  # south, west, north, east
    _simplified: dict[int, NDArray[Any]] = field(default_factory=dict)
    _tree: shapely.STRtree | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_graph(cls, graph: RoadGraph) -> RoadLayer:
        chains = road_chains(graph)
        nodes = np.fromiter((n for chain, _ in chains for n in chain), dtype=np.int64)
        which = np.repeat(np.arange(len(chains)), [len(chain) for chain, _ in chains])
        lon = np.frombuffer(graph.lon, dtype=np.float64)[nodes]
        lat = np.frombuffer(graph.lat, dtype=np.float64)[nodes]
        lines = shapely.linestrings(np.column_stack((lon, lat)), indices=which)
        classes = np.fromiter((c for _, c in chains), dtype=np.uint8, count=len(chains))
        if graph.node_count:
            bounds = (min(graph.lat), min(graph.lon), max(graph.lat), max(graph.lon))
        else:
            bounds = (0.0, 0.0, 0.0, 0.0)
        return cls(np.asarray(lines, dtype=object), classes, bounds)

    def geojson(self, south: float, west: float, north: float, east: float, zoom: int) -> bytes:
        """The roads a map at `zoom` shows in the box, one MultiLineString per class."""
        zoom = min(zoom, DETAIL_ZOOM)
        lines = self._lines_at(zoom)
        with self._lock:
            if self._tree is None:
                self._tree = shapely.STRtree(self.lines)
            tree = self._tree
        hits = tree.query(shapely.box(west, south, east, north))
        by_class: dict[int, list[list[list[float]]]] = {}
        for index in np.sort(hits):
            road_class = int(self.classes[index])
            if MIN_ZOOM[RoadClass(road_class)] > zoom:
                continue
            coords = np.round(shapely.get_coordinates(lines[index]), COORD_DECIMALS)
            by_class.setdefault(road_class, []).append(coords.tolist())
        features = [
            {
                "type": "Feature",
                "geometry": {"type": "MultiLineString", "coordinates": parts},
                "properties": {"class": RoadClass(road_class).name.lower()},
            }
            for road_class, parts in sorted(by_class.items())
        ]
        return _json.encode({"type": "FeatureCollection", "features": features})

    def _lines_at(self, zoom: int) -> NDArray[Any]:
        with self._lock:
            found = self._simplified.get(zoom)
        if found is None:
            tolerance = SIMPLIFY_PX * _metres_per_px(zoom, self.bounds) / _M_PER_DEG
            found = shapely.simplify(self.lines, tolerance, preserve_topology=False)
            with self._lock:
                self._simplified[zoom] = found
        return found


def _metres_per_px(zoom: int, bounds: tuple[float, float, float, float]) -> float:
    """Ground metres per screen pixel at the extract's middle latitude."""
    mid_lat = (bounds[0] + bounds[2]) / 2
    return 2 * math.pi * 6_378_137 * math.cos(math.radians(mid_lat)) / (_TILE_PX * (1 << zoom))


def road_chains(graph: RoadGraph) -> list[tuple[list[int], int]]:
    """The graph's edges as undirected polylines of node ids, each of one road class.
    A polyline ends where the network branches, ends, or changes class, so nothing is
    drawn twice and every edge is drawn once."""
    segment_class: dict[tuple[int, int], int] = {}
    for edge in range(graph.edge_count):
        a, b = graph.tail[edge], graph.head[edge]
        segment_class[(a, b) if a < b else (b, a)] = graph.road_class[edge]
    neighbours: dict[int, list[int]] = {}
    for a, b in segment_class:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)

    def key(a: int, b: int) -> tuple[int, int]:
        return (a, b) if a < b else (b, a)

    def passes_through(node: int) -> bool:
        around = neighbours[node]
        return len(around) == 2 and (
            segment_class[key(node, around[0])] == segment_class[key(node, around[1])]
        )

    done: set[tuple[int, int]] = set()
    chains: list[tuple[list[int], int]] = []

    def walk(start: int, first: int) -> None:
        road_class = segment_class[key(start, first)]
        nodes, previous, node = [start, first], start, first
        done.add(key(start, first))
        while node != start and passes_through(node):
            a, b = neighbours[node]
            following = b if a == previous else a
            if key(node, following) in done:
                break
            done.add(key(node, following))
            previous, node = node, following
            nodes.append(node)
        chains.append((nodes, road_class))

    for node, around in neighbours.items():
        if passes_through(node):
            continue
        for other in around:
            if key(node, other) not in done:
                walk(node, other)
    for a, b in segment_class:  # loops made only of plain nodes (a roundabout alone)
        if (a, b) not in done:
            walk(a, b)
    return chains


# --- one layer per extract and worker, loaded once, in a thread -----------------------

_layers: OrderedDict[tuple[str, float], RoadLayer] = OrderedDict()
_layers_lock = threading.Lock()


def _layer_for(path: str) -> RoadLayer:
    """Blocking: the cached layer, or load it. Threads asking at once wait for the one
    that loads rather than loading it again."""
    key = (path, Path(path).stat().st_mtime)
    with _layers_lock:
        layer = _layers.get(key)
        if layer is None:
            layer = RoadLayer.from_graph(load_roads(path))
            _layers[key] = layer
            while len(_layers) > CACHED_EXTRACTS:
                _layers.popitem(last=False)
        return layer


async def road_layer(path: str) -> RoadLayer:
    try:
        return await asyncio.to_thread(_layer_for, path)
    except (OSError, RuntimeError, ValueError) as exc:
        # osmium reports unreadable or malformed files as RuntimeError
        raise Problem(503, f"the OpenStreetMap extract {path} could not be read: {exc}") from None


# --- routes -----------------------------------------------------------------------------


@api.get(
    "/api/v1/basemap",
    summary="What the dispatch map draws under the fleet: tiles, roads or a plain background",
    role=Role.VIEWER,
    tag="basemap",
    response=Basemap,
    errors=(),
)
async def basemap(request: web.Request) -> web.Response:
    settings = services(request).settings
    center = bounds = attribution = None
    if settings.osm_pbf:
        layer = await road_layer(settings.osm_pbf)
        south, west, north, east = layer.bounds
        bounds = [south, west, north, east]
        center = [(south + north) / 2, (west + east) / 2]
        attribution = ROADS_ATTRIBUTION
    return json_response(
        Basemap(
            tiles=settings.basemap_url or None,
            roads=bool(settings.osm_pbf),
            center=center,
            bounds=bounds,
            attribution=None if settings.basemap_url else attribution,
        )
    )


_ROADS_SCHEMA = {
    "type": "object",
    "description": "GeoJSON FeatureCollection: one MultiLineString Feature per road class,"
    " with properties.class (motorway, primary, residential, ...)",
    "required": ["type", "features"],
    "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array"}},
}


@api.get(
    "/api/v1/basemap/roads",
    summary="Roads of the configured OpenStreetMap extract in a box, as GeoJSON, for a zoom",
    role=Role.VIEWER,
    tag="basemap",
    params=(
        Param("bbox", "south,west,north,east in degrees", required=True),
        Param(
            "zoom",
            "the map's zoom: smaller ones get the bigger roads only, simplified",
            {"type": "integer", "minimum": 0, "maximum": MAX_ZOOM},
            required=True,
        ),
    ),
    content={"application/geo+json": {"schema": _ROADS_SCHEMA}},
    errors=(404,),
)
async def roads(request: web.Request) -> web.Response:
    south, west, north, east = parse_bbox(request.query.get("bbox"))
    if not request.query.get("zoom"):
        raise Problem(400, "query parameter 'zoom' is required")
    zoom = query_int(request, "zoom", 0, minimum=0, maximum=MAX_ZOOM)
    if _view_px(west, east, zoom) > MAX_VIEW_PX or _view_px_lat(south, north, zoom) > MAX_VIEW_PX:
        raise Problem(
            400,
            f"query parameter 'bbox': too large for zoom {zoom} (more than {MAX_VIEW_PX} px a"
            " side); ask with the zoom the map shows",
        )
    path = services(request).settings.osm_pbf
    if not path:
        raise Problem(404, "no OpenStreetMap extract is configured (FLEETPULSE_OSM_PBF)")
    layer = await road_layer(path)
    body = await asyncio.to_thread(layer.geojson, south, west, north, east, zoom)
    response = web.Response(
        body=body,
        content_type="application/geo+json",
        headers={"Cache-Control": f"private, max-age={ROADS_MAX_AGE_S}"},
    )
    response.enable_compression()  # a city at zoom 14 is ~800 kB of GeoJSON, ~170 kB gzipped
    return response


def parse_bbox(text: str | None) -> tuple[float, float, float, float]:
    """`south,west,north,east` in degrees, checked; a 400 naming what is wrong."""
    if not text:
        raise Problem(400, "query parameter 'bbox' is required: south,west,north,east")
    parts = text.split(",")
    if len(parts) != 4:
        raise Problem(400, f"query parameter 'bbox': expected south,west,north,east, got {text!r}")
    try:
        south, west, north, east = (float(p) for p in parts)
    except ValueError:
        raise Problem(400, f"query parameter 'bbox': expected four numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in (south, west, north, east)):
        raise Problem(400, f"query parameter 'bbox': expected finite numbers, got {text!r}")
    if not (-90 <= south <= north <= 90):
        raise Problem(
            400, f"query parameter 'bbox': need -90 <= south <= north <= 90, got {text!r}"
        )
    if not (-180 <= west <= east <= 180):
        raise Problem(
            400,
            f"query parameter 'bbox': need -180 <= west <= east <= 180 (a box across the"
            f" antimeridian is not supported), got {text!r}",
        )
    return south, west, north, east


def _view_px(west: float, east: float, zoom: int) -> float:
    return (east - west) / 360 * _TILE_PX * (1 << zoom)


def _view_px_lat(south: float, north: float, zoom: int) -> float:
    def mercator_y(lat: float) -> float:
        lat = max(min(lat, 85.0511), -85.0511)
        return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) / (2 * math.pi)

    return (mercator_y(north) - mercator_y(south)) * _TILE_PX * (1 << zoom)
