"""Shortest-time routes on the road graph, edge times from the speed profile. Pure.

An edge's time at an hour of week is its length over the profile's speed for the H3
cell(s) it crosses at that hour, when the profile answers from the cell itself
(`RoutingRules.profile_levels`); coarser profile levels average over every kind of road,
so there the edge's own speed limit (stated, or implied by its class) times
`limit_share`, times the profile's factor for the hour of week (rush hour is slow on
every road), is the better guess. Where the cell answers, its speed is still blended with
that limit-based guess, weighted by its samples against `LIMIT_PRIOR_SAMPLES` (a cell
with few samples says little about each of its roads), then capped at the edge's limit.
On a validation split of the benchmark's training taxis (the figures below too) the
blend cut the calibrated road ETA's MAE by ~1 % (weights 3 to 30 all helped) and the
cap is worth ~1.5 %; the limit share is flat around its value (0.5-0.7).

A moving vehicle's heading, when known, picks where its route starts: among the nodes
ahead of it (within `HEADING_SNAP_M`, `HEADING_CONE_DEG` either side of the heading,
and any node so close that its bearing is noise), the one with the fastest route; the
nearest node may be behind it, or across the road on a one-way street going the other
way. On a validation split of the benchmark's training taxis this cut the calibrated road
ETA's MAE by ~1.5 %.

Routes are found backwards: a Dijkstra search grows from the destination until it
settles the origin, and is kept (per destination node and departure hour, in a bounded
LRU cache) to be resumed. It runs over the junctions only, the pass-through nodes
between them merged into chains (`tracker.road_chains`): the same paths, a quarter of
the nodes. A vehicle driving towards its stop is nearly always near nodes the search has
already settled, so the ETA on each of its fixes is a snap and a few lookups; only the
first fix, or one off the searched area, pays for search.
"""

from __future__ import annotations

import heapq
import math
import weakref
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import NamedTuple

import h3.api.basic_int as h3
import msgspec

from tracker.road_chains import Chains, OnChain
from tracker.roads import MAX_SNAP_M, RoadGraph, angle_between_deg, bearing_deg
from tracker.speed_profiles import PROFILE_RES, Level, SpeedProfile, hour_of_week

# Urban traffic (lights, junctions, parking) averages well below the limit.
LIMIT_SHARE = 0.6
# Weight, in samples, of the edge's own limit-based speed in a cell's profile speed: a
# cell with ten samples gets half of each (the cell's mean is every road's in it).
LIMIT_PRIOR_SAMPLES = 10.0
MIN_EDGE_SPEED_MPS = 1.0  # a profile mean of ~0 (a taxi rank) must not block the road
PROFILE_LEVELS = frozenset({Level.CELL_HOUR, Level.CELL})
# Edges longer than this are timed piece by piece over the cells they cross.
LONG_EDGE_M = 150.0
# Searches kept (LRU), as a memory budget: each costs SEARCH_BYTES_PER_NODE for every
# junction (0.33 MiB in Porto, so ~770 searches). Size it for the stops active at once
# on this tracker: an evicted search is redone from scratch on the next fix (counted).
SEARCH_CACHE_MIB = 256.0
SEARCH_BYTES_PER_NODE = 21  # seconds and metres (8 + 8), next chain (4), settled flag (1)
HOUR_CACHE = 4  # edge-time arrays kept, 8 bytes per edge and per chain each
SNAP_SPEED_MPS = 5.0  # for the snap offsets of a route with no length of its own
HEADING_SNAP_M = 100.0
HEADING_CONE_DEG = 45.0
HEADING_ANY_M = 15.0  # closer nodes are candidates whatever their bearing (GPS noise)


@dataclass(frozen=True)
class RoutingRules:
    limit_share: float = LIMIT_SHARE
    profile_levels: frozenset[Level] = PROFILE_LEVELS
    min_speed_mps: float = MIN_EDGE_SPEED_MPS
    max_snap_m: float = MAX_SNAP_M
    search_cache_mib: float = SEARCH_CACHE_MIB
    hour_cache: int = HOUR_CACHE
    heading_snap_m: float = HEADING_SNAP_M
    heading_cone_deg: float = HEADING_CONE_DEG
    heading_any_m: float = HEADING_ANY_M
    limit_prior_samples: float = LIMIT_PRIOR_SAMPLES


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
    """A backward Dijkstra search over the junctions towards one destination node,
    resumable. It starts from the destination's junction or, for a pass-through node,
    from the tails of the chains it lies on, each at its time along the chain (`via`
    keeps which chain and how far, for paths). Arrays span the junctions."""

    __slots__ = ("heap", "metres", "next_chain", "seconds", "settled", "times", "via")

    def __init__(self, junction_count: int, seeds: list[_Seed], times: array[float]) -> None:
        self.times = times
        self.seconds = array("d", [math.inf]) * junction_count
        self.metres = array("d", bytes(8 * junction_count))
        self.next_chain = array("i", [-1]) * junction_count
        self.settled = bytearray(junction_count)
        self.via: dict[int, OnChain] = {}
        self.heap: list[tuple[float, int]] = []
        for seed in seeds:
            if seed.seconds < self.seconds[seed.junction]:
                self.seconds[seed.junction] = seed.seconds
                self.metres[seed.junction] = seed.metres
                if seed.via is not None:
                    self.via[seed.junction] = seed.via
                heapq.heappush(self.heap, (seed.seconds, seed.junction))

    def reach(self, chains: Chains, junction: int) -> bool:
        """Grow the search until `junction` is settled; False when it cannot reach the
        destination."""
        settled = self.settled
        if settled[junction]:
            return True
        seconds, next_chain, metres = self.seconds, self.next_chain, self.metres
        heap, times = self.heap, self.times
        first_in, in_chains, tail, head = (
            chains.first_in,
            chains.in_chains,
            chains.tail,
            chains.head,
        )
        length = chains.length_m
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            time_u, u = pop(heap)
            if settled[u]:
                continue
            settled[u] = 1
            chain = next_chain[u]
            if chain >= 0:
                metres[u] = length[chain] + metres[head[chain]]
            for i in range(first_in[u], first_in[u + 1]):
                chain = in_chains[i]
                v = tail[chain]
                time_v = time_u + times[chain]
                if time_v < seconds[v]:
                    seconds[v] = time_v
                    next_chain[v] = chain
                    push(heap, (time_v, v))
            if u == junction:
                return True
        return False


class _Along(NamedTuple):
    """Origin and destination on one chain: drive along it from edge `start` to `end`."""

    chain: int
    start: int
    end: int


class _Seed(NamedTuple):
    junction: int
    seconds: float
    metres: float
    via: OnChain | None  # the chain (and how far along it) from the junction to the node


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
        self.chains = chains_of(graph)
        self._hours: OrderedDict[int, tuple[EdgeTimes, array[float]]] = OrderedDict()
        self._searches: OrderedDict[tuple[int, int], _Search] = OrderedDict()
        per_search = SEARCH_BYTES_PER_NODE * max(1, self.chains.junction_count)
        self.search_capacity = max(1, int(self.rules.search_cache_mib * 2**20 / per_search))
        self.searches_started = 0
        self.searches_evicted = 0

    def edge_times(self, hour: int) -> EdgeTimes:
        return self._times(hour)[0]

    def _times(self, hour: int) -> tuple[EdgeTimes, array[float]]:
        """The road edges' and the chains' seconds at an hour (LRU of `hour_cache`)."""
        found = self._hours.get(hour)
        if found is None:
            edges = self._compute_edge_times(hour)
            chains = self.chains
            members, first, seconds = chains.members, chains.first_member, edges.seconds
            per_chain = array(
                "d",
                (
                    math.fsum(seconds[e] for e in members[first[c] : first[c + 1]])
                    for c in range(chains.chain_count)
                ),
            )
            found = self._hours[hour] = (edges, per_chain)
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
        heading_deg: float | None = None,
    ) -> Route | None:
        """The shortest-time route between two (lat, lon) points leaving at `depart`, or
        None when either is farther than `max_snap_m` from the network. With the
        vehicle's heading, the route starts from the best node ahead of it."""
        start = self.graph.snap(*origin, max_m=self.rules.max_snap_m)
        end = self.graph.snap(*destination, max_m=self.rules.max_snap_m)
        if start is None or end is None:
            return None
        hour = hour_of_week(depart, self.zone)
        starts = [start]
        if heading_deg is not None:
            starts = self._ahead(origin, heading_deg) or starts
        best: Route | None = None
        for node, node_m in starts:
            found = self.between(node, end[0], hour)
            if found is None:
                continue
            seconds, metres = found
            snap_m = node_m + end[1]
            speed = metres / seconds if metres > 0 and seconds > 0 else SNAP_SPEED_MPS
            if best is None or seconds + snap_m / speed < best.seconds:
                best = Route(
                    seconds + snap_m / speed, metres + snap_m, node, end[0], node_m, end[1]
                )
        return best

    def _ahead(self, origin: tuple[float, float], heading_deg: float) -> list[tuple[int, float]]:
        """Routable nodes a vehicle at `origin` heading `heading_deg` may start from."""
        rules, graph = self.rules, self.graph
        return [
            (node, metres)
            for node, metres in graph.nodes_within(*origin, rules.heading_snap_m)
            if metres <= rules.heading_any_m
            or angle_between_deg(
                bearing_deg(*origin, graph.lat[node], graph.lon[node]), heading_deg
            )
            <= rules.heading_cone_deg
        ]

    def between(self, origin: int, destination: int, hour: int) -> tuple[float, float] | None:
        """(seconds, metres) of the shortest-time route between two nodes at an hour."""
        found = self._best(origin, destination, hour)
        return None if found is None else (found[0], found[1])

    def path(self, origin: int, destination: int, hour: int) -> list[int] | None:
        """The nodes of the shortest-time route, origin first."""
        found = self._best(origin, destination, hour)
        if found is None:
            return None
        _, _, exit_ = found
        chains, head = self.chains, self.graph.head
        nodes = [origin]
        if isinstance(exit_, _Along):
            nodes.extend(head[e] for e in chains.chain_edges(exit_.chain)[exit_.start : exit_.end])
            return nodes
        if exit_ is not None:  # on to the head of the origin's chain first
            nodes.extend(head[e] for e in chains.chain_edges(exit_.chain)[exit_.at :])
        search = self._search(destination, hour)
        junction = chains.junction_of[nodes[-1]]
        while search.next_chain[junction] >= 0:
            chain = search.next_chain[junction]
            nodes.extend(head[e] for e in chains.chain_edges(chain))
            junction = chains.head[chain]
        via = search.via.get(junction)
        if via is not None:  # along the destination's chain from its tail
            nodes.extend(head[e] for e in chains.chain_edges(via.chain)[: via.at])
        return nodes

    def _best(
        self, origin: int, destination: int, hour: int
    ) -> tuple[float, float, OnChain | _Along | None] | None:
        """(seconds, metres, how the origin left): from its own junction (None), on
        along one of its chains to the chain's head (OnChain), or straight along the
        chain both lie on (_Along)."""
        chains = self.chains
        edge_seconds = self.edge_times(hour).seconds
        search = self._search(destination, hour)
        best: tuple[float, float, OnChain | _Along | None] | None = None
        junction = chains.junction_of[origin]
        if junction >= 0:
            if search.reach(chains, junction):
                best = (search.seconds[junction], search.metres[junction], None)
            return best
        for place in chains.places(origin):
            edges = chains.chain_edges(place.chain)[place.at :]
            lead_s = math.fsum(edge_seconds[e] for e in edges)
            lead_m = math.fsum(self.graph.length_m[e] for e in edges)
            end = chains.head[place.chain]
            if search.reach(chains, end):
                total = lead_s + search.seconds[end]
                if best is None or total < best[0]:
                    best = (total, lead_m + search.metres[end], place)
            for there in chains.places(destination):
                if there.chain == place.chain and there.at >= place.at:
                    direct = chains.chain_edges(place.chain)[place.at : there.at]
                    total = math.fsum(edge_seconds[e] for e in direct)
                    if best is None or total < best[0]:
                        metres = math.fsum(self.graph.length_m[e] for e in direct)
                        best = (total, metres, _Along(place.chain, place.at, there.at))
        return best

    def _search(self, destination: int, hour: int) -> _Search:
        key = (destination, hour)
        search = self._searches.get(key)
        if search is None:
            edges, chain_seconds = self._times(hour)
            search = self._searches[key] = _Search(
                self.chains.junction_count, self._seeds(destination, edges.seconds), chain_seconds
            )
            self.searches_started += 1
            if len(self._searches) > self.search_capacity:
                self._searches.popitem(last=False)
                self.searches_evicted += 1
        else:
            self._searches.move_to_end(key)
        return search

    def _seeds(self, destination: int, edge_seconds: array[float]) -> list[_Seed]:
        chains = self.chains
        junction = chains.junction_of[destination]
        if junction >= 0:
            return [_Seed(junction, 0.0, 0.0, None)]
        seeds = []
        for place in chains.places(destination):
            edges = chains.chain_edges(place.chain)[: place.at]
            seconds = math.fsum(edge_seconds[e] for e in edges)
            metres = math.fsum(self.graph.length_m[e] for e in edges)
            seeds.append(_Seed(chains.tail[place.chain], seconds, metres, place))
        return seeds

    def _compute_edge_times(self, hour: int) -> EdgeTimes:
        graph, rules, profile = self.graph, self.rules, self.profile
        # (speed, samples) of a cell's own answer; speed 0.0 when it has none.
        cell_speed: dict[int, tuple[float, int]] = {}

        def speed_of(cell: int) -> tuple[float, int]:
            speed = cell_speed.get(cell)
            if speed is None:
                speed = (0.0, 0)
                if profile is not None:
                    found = profile.lookup(cell, hour)
                    if found.level in rules.profile_levels:
                        speed = (max(found.speed_mps, rules.min_speed_mps), found.samples)
                cell_speed[cell] = speed
            return speed

        seconds = array("d", bytes(8 * graph.edge_count))
        from_profile = 0
        share, length, limit = rules.limit_share, graph.length_m, graph.limit_mps
        share *= 1.0 if profile is None else profile.hour_factor(hour)
        prior = rules.limit_prior_samples
        for edge, cell in enumerate(self._cells):
            fallback = max(limit[edge] * share, rules.min_speed_mps)
            pieces = self._pieces.get(edge, (cell,))
            piece_m = length[edge] / len(pieces)
            total, profiled = 0.0, False
            for piece in pieces:
                speed, samples = speed_of(piece)
                if speed:
                    speed = (samples * speed + prior * fallback) / (samples + prior)
                profiled = profiled or speed > 0.0
                # A cell's mean is mostly its main road's: a side street in the same cell
                # is still driven within its own limit.
                total += piece_m / (min(speed, limit[edge]) if speed else fallback)
            seconds[edge] = total
            from_profile += profiled
        return EdgeTimes(hour, seconds, from_profile, graph.edge_count - from_profile)


_CHAINS: weakref.WeakKeyDictionary[RoadGraph, Chains] = weakref.WeakKeyDictionary()


def chains_of(graph: RoadGraph) -> Chains:
    """The graph's chains, merged once per graph (every router of a tracker shares it)."""
    found = _CHAINS.get(graph)
    if found is None:
        found = _CHAINS[graph] = Chains(graph)
    return found


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
