"""Shortest-time routes on the road graph, edge times from the speed profile. Pure.

An edge's time at an hour of week is its length over the profile's speed for the H3
cell(s) it crosses at that hour, when the profile answers from the cell itself
(`RoutingRules.profile_levels`); coarser profile levels average over every kind of road,
so there the edge's own speed limit (stated, or implied by its class) times
`limit_share` is the better guess. A profile speed above the edge's limit is capped at
the limit (on the Porto benchmark this cut the road-graph MAE by ~3 %).

Routes are found backwards: a Dijkstra search grows from the destination until it
settles the origin, and is kept (per destination node and departure hour, in a bounded
LRU cache) to be resumed. A vehicle driving towards its stop is nearly always on a node
the search has already settled, so the ETA on each of its fixes is a snap and a lookup;
only the first fix, or one off the searched area, pays for search.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, tzinfo

import h3.api.basic_int as h3
import msgspec

from tracker.roads import MAX_SNAP_M, RoadGraph
from tracker.speed_profiles import PROFILE_RES, Level, SpeedProfile, hour_of_week

# Urban traffic (lights, junctions, parking) averages well below the limit.
LIMIT_SHARE = 0.6
MIN_EDGE_SPEED_MPS = 1.0  # a profile mean of ~0 (a taxi rank) must not block the road
PROFILE_LEVELS = frozenset({Level.CELL_HOUR, Level.CELL})
# Edges longer than this are timed piece by piece over the cells they cross.
LONG_EDGE_M = 150.0
# Searches kept (LRU), as a memory budget: each costs SEARCH_BYTES_PER_NODE for every
# graph node (1.4 MiB in Porto, so ~180 searches). Size it for the stops active at once
# on this tracker: an evicted search is redone from scratch on the next fix (counted).
SEARCH_CACHE_MIB = 256.0
SEARCH_BYTES_PER_NODE = 21  # seconds and metres (8 + 8), next edge (4), settled flag (1)
HOUR_CACHE = 4  # edge-time arrays kept, 8 bytes per edge each
SNAP_SPEED_MPS = 5.0  # for the snap offsets of a route with no length of its own


@dataclass(frozen=True)
class RoutingRules:
    limit_share: float = LIMIT_SHARE
    profile_levels: frozenset[Level] = PROFILE_LEVELS
    min_speed_mps: float = MIN_EDGE_SPEED_MPS
    max_snap_m: float = MAX_SNAP_M
    search_cache_mib: float = SEARCH_CACHE_MIB
    hour_cache: int = HOUR_CACHE


@dataclass(frozen=True)
class EdgeTimes:
    """Seconds to drive each edge at one hour of week, and where the speeds came from."""

    hour: int
    seconds: array[float]
    from_profile: int  # edges timed (at least partly) from profile cells
    from_limit: int  # edges timed from their speed limit alone


class Route(msgspec.Struct, frozen=True, gc=False):
    seconds: float  # including the snap offsets at both ends
    metres: float
    origin_node: int
    destination_node: int
    origin_snap_m: float
    destination_snap_m: float


class _Search:
    """A backward Dijkstra search from one node, resumable. Arrays span the graph."""

    __slots__ = ("heap", "metres", "next_edge", "seconds", "settled", "times")

    def __init__(self, node_count: int, target: int, times: array[float]) -> None:
        self.times = times
        self.seconds = array("d", [math.inf]) * node_count
        self.metres = array("d", bytes(8 * node_count))
        self.next_edge = array("i", [-1]) * node_count
        self.settled = bytearray(node_count)
        self.seconds[target] = 0.0
        self.heap: list[tuple[float, int]] = [(0.0, target)]

    def reach(self, graph: RoadGraph, node: int) -> bool:
        """Grow the search until `node` is settled; False when it cannot reach the target."""
        settled = self.settled
        if settled[node]:
            return True
        seconds, next_edge, metres = self.seconds, self.next_edge, self.metres
        heap, times = self.heap, self.times
        first_in, in_edges, tail, head = graph.first_in, graph.in_edges, graph.tail, graph.head
        length = graph.length_m
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            time_u, u = pop(heap)
            if settled[u]:
                continue
            settled[u] = 1
            edge = next_edge[u]
            if edge >= 0:
                metres[u] = length[edge] + metres[head[edge]]
            for i in range(first_in[u], first_in[u + 1]):
                edge = in_edges[i]
                v = tail[edge]
                time_v = time_u + times[edge]
                if time_v < seconds[v]:
                    seconds[v] = time_v
                    next_edge[v] = edge
                    push(heap, (time_v, v))
            if u == node:
                return True
        return False


class Router:
    """Shortest-time routes at a departure time, with searches and edge times cached."""

    def __init__(
        self,
        graph: RoadGraph,
        profile: SpeedProfile | None,
        zone: tzinfo,
        rules: RoutingRules | None = None,
    ) -> None:
        self.graph = graph
        self.profile = profile
        self.zone = zone
        self.rules = rules or RoutingRules()
        self._cells, self._pieces = _edge_cells(graph)
        self._hours: OrderedDict[int, EdgeTimes] = OrderedDict()
        self._searches: OrderedDict[tuple[int, int], _Search] = OrderedDict()
        per_search = SEARCH_BYTES_PER_NODE * max(1, graph.node_count)
        self.search_capacity = max(1, int(self.rules.search_cache_mib * 2**20 / per_search))
        self.searches_started = 0
        self.searches_evicted = 0

    def edge_times(self, hour: int) -> EdgeTimes:
        found = self._hours.get(hour)
        if found is None:
            found = self._hours[hour] = self._compute_edge_times(hour)
            if len(self._hours) > self.rules.hour_cache:
                self._hours.popitem(last=False)
        else:
            self._hours.move_to_end(hour)
        return found

    def route(
        self,
        origin: tuple[float, float],
        destination: tuple[float, float],
        depart: datetime,
    ) -> Route | None:
        """The shortest-time route between two (lat, lon) points leaving at `depart`, or
        None when either is farther than `max_snap_m` from the network."""
        start = self.graph.snap(*origin, max_m=self.rules.max_snap_m)
        end = self.graph.snap(*destination, max_m=self.rules.max_snap_m)
        if start is None or end is None:
            return None
        found = self.between(start[0], end[0], hour_of_week(depart, self.zone))
        if found is None:
            return None
        seconds, metres = found
        snap_m = start[1] + end[1]
        speed = metres / seconds if metres > 0 and seconds > 0 else SNAP_SPEED_MPS
        return Route(seconds + snap_m / speed, metres + snap_m, start[0], end[0], start[1], end[1])

    def between(self, origin: int, destination: int, hour: int) -> tuple[float, float] | None:
        """(seconds, metres) of the shortest-time route between two nodes at an hour."""
        search = self._search(destination, hour)
        if not search.reach(self.graph, origin):
            return None
        return search.seconds[origin], search.metres[origin]

    def path(self, origin: int, destination: int, hour: int) -> list[int] | None:
        """The nodes of the shortest-time route, origin first."""
        search = self._search(destination, hour)
        if not search.reach(self.graph, origin):
            return None
        nodes = [origin]
        while nodes[-1] != destination:
            nodes.append(self.graph.head[search.next_edge[nodes[-1]]])
        return nodes

    def _search(self, destination: int, hour: int) -> _Search:
        key = (destination, hour)
        search = self._searches.get(key)
        if search is None:
            times = self.edge_times(hour).seconds
            search = self._searches[key] = _Search(self.graph.node_count, destination, times)
            self.searches_started += 1
            if len(self._searches) > self.search_capacity:
                self._searches.popitem(last=False)
                self.searches_evicted += 1
        else:
            self._searches.move_to_end(key)
        return search

    def _compute_edge_times(self, hour: int) -> EdgeTimes:
        graph, rules, profile = self.graph, self.rules, self.profile
        cell_speed: dict[int, float] = {}  # 0.0: the profile has no cell-level answer

        def speed_of(cell: int) -> float:
            speed = cell_speed.get(cell)
            if speed is None:
                speed = 0.0
                if profile is not None:
                    found = profile.lookup(cell, hour)
                    if found.level in rules.profile_levels:
                        speed = max(found.speed_mps, rules.min_speed_mps)
                cell_speed[cell] = speed
            return speed

        seconds = array("d", bytes(8 * graph.edge_count))
        from_profile = 0
        share, length, limit = rules.limit_share, graph.length_m, graph.limit_mps
        for edge, cell in enumerate(self._cells):
            fallback = max(limit[edge] * share, rules.min_speed_mps)
            pieces = self._pieces.get(edge, (cell,))
            piece_m = length[edge] / len(pieces)
            total, profiled = 0.0, False
            for piece in pieces:
                speed = speed_of(piece)
                profiled = profiled or speed > 0.0
                # A cell's mean is mostly its main road's: a side street in the same cell
                # is still driven within its own limit.
                total += piece_m / (min(speed, limit[edge]) if speed else fallback)
            seconds[edge] = total
            from_profile += profiled
        return EdgeTimes(hour, seconds, from_profile, graph.edge_count - from_profile)


def _edge_cells(graph: RoadGraph) -> tuple[array[int], dict[int, tuple[int, ...]]]:
    """Each edge's midpoint cell, and for long edges the cells of their pieces."""
    cells = array("q", bytes(8 * graph.edge_count))
    pieces: dict[int, tuple[int, ...]] = {}
    lat, lon, tail, head = graph.lat, graph.lon, graph.tail, graph.head
    to_cell = h3.latlng_to_cell
    for edge in range(graph.edge_count):
        a, b = tail[edge], head[edge]
        lat_a, lon_a, lat_b, lon_b = lat[a], lon[a], lat[b], lon[b]
        cells[edge] = to_cell((lat_a + lat_b) / 2, (lon_a + lon_b) / 2, PROFILE_RES)
        count = math.ceil(graph.length_m[edge] / LONG_EDGE_M)
        if count > 1:
            pieces[edge] = tuple(
                to_cell(
                    lat_a + (lat_b - lat_a) * (k + 0.5) / count,
                    lon_a + (lon_b - lon_a) * (k + 0.5) / count,
                    PROFILE_RES,
                )
                for k in range(count)
            )
    return cells, pieces
