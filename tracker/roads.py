"""A compact road graph for routing, loaded from an OpenStreetMap extract (.osm.pbf or
.osm XML) with pyosmium.

Every node of a drivable way is a graph node; consecutive way nodes make an edge in each
direction the way may be driven (oneway, oneway=-1, and the oneway implied by motorways
and roundabouts are respected). Everything is kept in flat arrays (compressed sparse rows
for the out- and in-edges) rather than an object per node: the Porto extract (94,664
nodes, 23,191 ways) loads in well under a second and takes a few MiB.

Snapping uses a uniform grid of ~`SNAP_GRID_M` squares over the nodes of the largest
strongly connected component only, so a snapped point can always reach, and be reached
from, every other snapped point. The same grid lists the routable nodes around a point,
for a router that prefers the nodes ahead of a moving vehicle.
"""

from __future__ import annotations

import enum
import itertools
import math
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tracker.live import haversine_m

KMH = 1 / 3.6  # m/s per km/h
MPH_KMH = 1.609344
KNOT_KMH = 1.852
MAX_SNAP_M = 250.0  # farther than this from every road node: not on this network
SNAP_GRID_M = 100.0  # side of a snapping bucket
_M_PER_DEG_LAT = 111_195.0  # on the sphere of haversine_m


class RoadClass(enum.IntEnum):
    """OSM highway values a delivery vehicle may drive, as small ints for an array."""

    MOTORWAY = 0
    MOTORWAY_LINK = 1
    TRUNK = 2
    TRUNK_LINK = 3
    PRIMARY = 4
    PRIMARY_LINK = 5
    SECONDARY = 6
    SECONDARY_LINK = 7
    TERTIARY = 8
    TERTIARY_LINK = 9
    UNCLASSIFIED = 10
    RESIDENTIAL = 11
    LIVING_STREET = 12
    SERVICE = 13
    ROAD = 14


# The speed limit a class implies where a way has no usable maxspeed (km/h, Portugal:
# 50 in built-up areas, 120 on motorways, 100 on express roads; links slower).
CLASS_LIMIT_KMH: dict[RoadClass, float] = {
    RoadClass.MOTORWAY: 120,
    RoadClass.MOTORWAY_LINK: 60,
    RoadClass.TRUNK: 100,
    RoadClass.TRUNK_LINK: 50,
    RoadClass.PRIMARY: 50,
    RoadClass.PRIMARY_LINK: 40,
    RoadClass.SECONDARY: 50,
    RoadClass.SECONDARY_LINK: 40,
    RoadClass.TERTIARY: 50,
    RoadClass.TERTIARY_LINK: 40,
    RoadClass.UNCLASSIFIED: 40,
    RoadClass.RESIDENTIAL: 30,
    RoadClass.LIVING_STREET: 20,
    RoadClass.SERVICE: 20,
    RoadClass.ROAD: 30,
}
_CLASSES = {c.name.lower(): c for c in RoadClass}
_IMPLIED_ONEWAY = {RoadClass.MOTORWAY, RoadClass.MOTORWAY_LINK}
# Access values that shut out a delivery vehicle ("delivery" and "destination" let it in).
_DENIED = {"no", "private", "agricultural", "forestry", "emergency", "military", "psv", "bus"}
_ACCESS_KEYS = ("motor_vehicle", "motorcar", "vehicle", "access")  # most specific first
# Zone limits written as "<country>:<zone>" (km/h); the country does not matter in
# practice for these common zone names.
_ZONE_KMH = {
    "urban": 50.0,
    "rural": 90.0,
    "trunk": 100.0,
    "motorway": 120.0,
    "living_street": 20.0,
    "zone30": 30.0,
    "zone20": 20.0,
    "walk": 7.0,
}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(km/h|kmh|kph|mph|knots)?\s*$")


def bearing_deg(lat: float, lon: float, to_lat: float, to_lon: float) -> float:
    """Initial great-circle bearing from one point to another, degrees clockwise from
    north in [0, 360)."""
    phi1, phi2 = math.radians(lat), math.radians(to_lat)
    dlon = math.radians(to_lon - lon)
    y = math.sin(dlon) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlon)
    return math.degrees(math.atan2(y, x)) % 360.0


def angle_between_deg(a: float, b: float) -> float:
    """The smaller angle between two bearings, 0..180."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def parse_maxspeed(value: str | None) -> float | None:
    """A maxspeed tag in m/s, or None when it gives no number ("none", "signals",
    "variable", unknown zones). "50", "50 mph", "PT:urban", "30;50" (the lowest)."""
    if not value:
        return None
    speeds = [s for s in (_parse_one(v) for v in value.split(";")) if s is not None]
    return min(speeds) if speeds else None


def _parse_one(value: str) -> float | None:
    value = value.strip().lower()
    if value == "walk":
        return _ZONE_KMH["walk"] * KMH
    match = _NUMBER.match(value)
    if match is not None:
        number, unit = float(match.group(1)), match.group(2)
        if number <= 0:
            return None
        factor = {"mph": MPH_KMH, "knots": KNOT_KMH}.get(unit or "", 1.0)
        return number * factor * KMH
    if ":" in value:
        zone = value.split(":", 1)[1].replace("-", "_")
        kmh = _ZONE_KMH.get(zone)
        return None if kmh is None else kmh * KMH
    return None


@dataclass(frozen=True)
class Way:
    """A drivable way as the graph builder needs it."""

    nodes: Sequence[tuple[int, float, float]]  # (OSM node id, lat, lon) in way order
    road_class: RoadClass
    maxspeed_mps: float | None = None
    forward: bool = True  # may be driven in way order
    backward: bool = True  # may be driven against way order


def way_from_tags(tags: dict[str, str], nodes: Sequence[tuple[int, float, float]]) -> Way | None:
    """The drivable way these OSM tags describe, or None when it is not for vehicles."""
    road_class = _CLASSES.get(tags.get("highway", ""))
    if road_class is None or tags.get("area") == "yes" or len(nodes) < 2:
        return None
    for key in _ACCESS_KEYS:
        if key in tags:
            if tags[key] in _DENIED:
                return None
            break
    oneway = tags.get("oneway")
    if oneway is None and (
        road_class in _IMPLIED_ONEWAY or tags.get("junction") in ("roundabout", "circular")
    ):
        oneway = "yes"
    if oneway in ("reversible", "alternating"):
        return None  # direction changes by time of day: not routable without a schedule
    forward = oneway not in ("-1", "reverse")
    backward = oneway not in ("yes", "true", "1")
    return Way(nodes, road_class, parse_maxspeed(tags.get("maxspeed")), forward, backward)


class RoadGraph:
    """Directed road graph in flat arrays. Nodes and edges are dense ints.

    Out-edges of node n are edges `first_out[n]:first_out[n+1]`; `in_edges` lists edge
    ids grouped by head node the same way through `first_in`, for backward searches.
    """

    def __init__(
        self,
        osm_id: array[int],
        lat: array[float],
        lon: array[float],
        tails: array[int],
        heads: array[int],
        length_m: array[float],
        limit_mps: array[float],
        road_class: array[int],
    ) -> None:
        self.osm_id, self.lat, self.lon = osm_id, lat, lon
        n_nodes, n_edges = len(lat), len(heads)
        # Sort edges by tail (counting sort) to make the out-edge rows.
        order = _group(tails, n_nodes)
        self.first_out = _offsets(tails, n_nodes)
        self.head = array("i", (heads[e] for e in order))
        self.tail = array("i", (tails[e] for e in order))
        self.length_m = array("d", (length_m[e] for e in order))
        self.limit_mps = array("d", (limit_mps[e] for e in order))  # stated or implied
        self.road_class = array("B", (road_class[e] for e in order))
        self.in_edges = _group(self.head, n_nodes)
        self.first_in = _offsets(self.head, n_nodes)
        self.max_limit_mps = max(self.limit_mps, default=0.0)
        self.routable = _largest_scc(self)
        self._snap = _SnapGrid(self)
        assert len(self.head) == n_edges

    @property
    def node_count(self) -> int:
        return len(self.lat)

    @property
    def edge_count(self) -> int:
        return len(self.head)

    def out_edges(self, node: int) -> range:
        return range(self.first_out[node], self.first_out[node + 1])

    def snap(self, lat: float, lon: float, max_m: float = MAX_SNAP_M) -> tuple[int, float] | None:
        """The nearest routable node and its distance in metres, or None beyond max_m."""
        return self._snap.nearest(lat, lon, max_m)

    def nodes_within(self, lat: float, lon: float, max_m: float) -> list[tuple[int, float]]:
        """Every routable node within max_m metres, with its distance, nearest first."""
        return self._snap.within(lat, lon, max_m)

    @classmethod
    def from_ways(cls, ways: Iterable[Way]) -> RoadGraph:
        index: dict[int, int] = {}  # OSM node id -> dense id, only while building
        osm_ids, lat, lon = array("q"), array("d"), array("d")
        tails, heads = array("i"), array("i")
        lengths, limits, classes = array("d"), array("d"), array("B")
        for way in ways:
            limit = way.maxspeed_mps or CLASS_LIMIT_KMH[way.road_class] * KMH
            dense = []
            for osm_id, node_lat, node_lon in way.nodes:
                node = index.get(osm_id)
                if node is None:
                    node = index[osm_id] = len(lat)
                    osm_ids.append(osm_id)
                    lat.append(node_lat)
                    lon.append(node_lon)
                dense.append(node)
            for a, b in itertools.pairwise(dense):
                if a == b:
                    continue
                metres = haversine_m(lat[a], lon[a], lat[b], lon[b])
                for tail, head, allowed in ((a, b, way.forward), (b, a, way.backward)):
                    if allowed:
                        tails.append(tail)
                        heads.append(head)
                        lengths.append(metres)
                        limits.append(limit)
                        classes.append(way.road_class)
        return cls(osm_ids, lat, lon, tails, heads, lengths, limits, classes)


def load_roads(path: Path | str) -> RoadGraph:
    """The drivable road graph of an OSM extract (.osm.pbf, .osm, ...)."""
    import osmium  # imported here: only deployments with an extract need it

    processor = (
        osmium.FileProcessor(str(path))
        .with_locations()
        .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY))
        .with_filter(osmium.filter.KeyFilter("highway"))
    )

    def ways() -> Iterable[Way]:
        for osm_way in processor:
            if not isinstance(osm_way, osmium.osm.Way):
                continue  # the entity filter passes ways only; this tells the type checker
            tags = {tag.k: tag.v for tag in osm_way.tags}
            nodes = [(n.ref, n.lat, n.lon) for n in osm_way.nodes if n.location.valid()]
            way = way_from_tags(tags, nodes)
            if way is not None:
                yield way

    return RoadGraph.from_ways(ways())


def _offsets(keys: array[int], n: int) -> array[int]:
    counts = array("i", bytes(4 * (n + 1)))
    for key in keys:
        counts[key + 1] += 1
    for i in range(n):
        counts[i + 1] += counts[i]
    return counts


def _group(keys: array[int], n: int) -> array[int]:
    """Positions of `keys` grouped by key (stable), by counting sort."""
    start = _offsets(keys, n)
    order = array("i", bytes(4 * len(keys)))
    for position, key in enumerate(keys):
        order[start[key]] = position
        start[key] += 1
    return order


def _largest_scc(graph: RoadGraph) -> bytearray:
    """1 for nodes of the largest strongly connected component (Kosaraju, iterative)."""
    n = graph.node_count
    seen = bytearray(n)
    finished: list[int] = []
    first_out, head = graph.first_out, graph.head
    for root in range(n):
        if seen[root]:
            continue
        seen[root] = 1
        stack = [(root, first_out[root])]
        while stack:
            node, edge = stack[-1]
            if edge < first_out[node + 1]:
                stack[-1] = (node, edge + 1)
                nxt = head[edge]
                if not seen[nxt]:
                    seen[nxt] = 1
                    stack.append((nxt, first_out[nxt]))
            else:
                stack.pop()
                finished.append(node)
    component = array("i", [-1]) * n
    sizes: list[int] = []
    first_in, in_edges, tail = graph.first_in, graph.in_edges, graph.tail
    for root in reversed(finished):
        if component[root] >= 0:
            continue
        label = len(sizes)
        component[root] = label
        todo, size = [root], 0
        while todo:
            node = todo.pop()
            size += 1
            for i in range(first_in[node], first_in[node + 1]):
                prev = tail[in_edges[i]]
                if component[prev] < 0:
                    component[prev] = label
                    todo.append(prev)
        sizes.append(size)
    if not sizes:
        return bytearray()
    biggest = max(range(len(sizes)), key=sizes.__getitem__)
    return bytearray(1 if c == biggest else 0 for c in component)


class _SnapGrid:
    """Routable nodes bucketed in squares of about SNAP_GRID_M (equirectangular around
    the graph's mean latitude; fine for a city or region)."""

    def __init__(self, graph: RoadGraph) -> None:
        self._lat, self._lon = graph.lat, graph.lon
        mean_lat = sum(graph.lat) / len(graph.lat) if len(graph.lat) else 0.0
        self._m_per_deg_lon = _M_PER_DEG_LAT * math.cos(math.radians(mean_lat))
        self._buckets: dict[tuple[int, int], array[int]] = {}
        for node in range(graph.node_count):
            if graph.routable[node]:
                key = self._key(graph.lat[node], graph.lon[node])
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = array("i")
                bucket.append(node)

    def _key(self, lat: float, lon: float) -> tuple[int, int]:
        return (
            math.floor(lat * _M_PER_DEG_LAT / SNAP_GRID_M),
            math.floor(lon * self._m_per_deg_lon / SNAP_GRID_M),
        )

    def within(self, lat: float, lon: float, max_m: float) -> list[tuple[int, float]]:
        y, x = self._key(lat, lon)
        reach = math.ceil(max_m / SNAP_GRID_M)
        found = []
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                for node in self._buckets.get((y + dy, x + dx), ()):
                    metres = haversine_m(lat, lon, self._lat[node], self._lon[node])
                    if metres <= max_m:
                        found.append((node, metres))
        found.sort(key=lambda item: item[1])
        return found

    def nearest(self, lat: float, lon: float, max_m: float) -> tuple[int, float] | None:
        y, x = self._key(lat, lon)
        best, best_m2 = -1, math.inf
        ky, kx = _M_PER_DEG_LAT, self._m_per_deg_lon
        # Ring r of buckets around the point's bucket covers every node within r squares.
        for ring in range(math.ceil(max_m / SNAP_GRID_M) + 1):
            for dy in range(-ring, ring + 1):
                edge_row = abs(dy) == ring
                for dx in range(-ring, ring + 1) if edge_row else (-ring, ring):
                    bucket = self._buckets.get((y + dy, x + dx))
                    if bucket is None:
                        continue
                    for node in bucket:
                        d2 = ((self._lat[node] - lat) * ky) ** 2 + (
                            (self._lon[node] - lon) * kx
                        ) ** 2
                        if d2 < best_m2:
                            best, best_m2 = node, d2
            if best >= 0 and math.sqrt(best_m2) <= ring * SNAP_GRID_M:
                break  # nothing outside the rings searched can be nearer
        if best < 0:
            return None
        metres = haversine_m(lat, lon, self._lat[best], self._lon[best])
        return (best, metres) if metres <= max_m else None
