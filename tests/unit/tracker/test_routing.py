"""Routing on hand-made graphs: shortest time (not distance), edge times from the
profile's cells or from the edge's limit, one-way streets, and resumed searches that
agree with a plain Dijkstra."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import h3.api.basic_int as h3
import pytest

from tracker.roads import KMH, RoadClass, RoadGraph, Way
from tracker.routing import (
    LIMIT_PRIOR_SAMPLES,
    LIMIT_SHARE,
    SEARCH_BYTES_PER_NODE,
    Router,
    RoutingRules,
)
from tracker.speed_profiles import PROFILE_RES, ProfileRow, SpeedProfile

UTC_ZONE = ZoneInfo("UTC")
MONDAY_4H = datetime(2013, 7, 1, 4, 0, tzinfo=UTC)  # hour of week 4 in UTC
A = (1, 41.150, -8.610)
B = (2, 41.150, -8.600)  # ~837 m east of A
C = (3, 41.160, -8.605)  # ~1.1 km north of the midpoint


NO_PRIOR = RoutingRules(limit_prior_samples=0.0)  # a cell's profile speed as it is


def way(nodes: list[tuple[int, float, float]], kmh: float, *, oneway: bool = False) -> Way:
    return Way(nodes, RoadClass.PRIMARY, kmh * KMH, True, not oneway)


def node(graph: RoadGraph, osm_id: int) -> int:
    return list(graph.osm_id).index(osm_id)


def length(a: tuple[int, float, float], b: tuple[int, float, float]) -> float:
    from tracker.live import haversine_m

    return haversine_m(a[1], a[2], b[1], b[2])


def cells_along(*points: tuple[int, float, float]) -> set[int]:
    """Res-9 cells of points every ~10 m along a polyline."""
    cells = set()
    for a, b in itertools.pairwise(points):
        steps = max(1, math.ceil(length(a, b) / 10))
        for k in range(steps + 1):
            lat = a[1] + (b[1] - a[1]) * k / steps
            lon = a[2] + (b[2] - a[2]) * k / steps
            cells.add(h3.latlng_to_cell(lat, lon, PROFILE_RES))
    return cells


def profile_of(cells: set[int], speed: float, hour: int = 4, n: int = 10) -> SpeedProfile:
    rows = [ProfileRow(c, hour, speed * n, n) for c in cells]
    return SpeedProfile(rows, shrink_samples=0.0)


@pytest.fixture
def triangle() -> RoadGraph:
    """A slow direct street A-B and a fast but longer road A-C-B."""
    return RoadGraph.from_ways([way([A, B], 10.0), way([A, C, B], 90.0)])


def test_shortest_time_is_not_shortest_distance(triangle: RoadGraph) -> None:
    router = Router(triangle, None, UTC_ZONE)
    a, b, c = node(triangle, 1), node(triangle, 2), node(triangle, 3)
    assert router.path(a, b, 4) == [a, c, b]
    seconds, metres = router.between(a, b, 4) or (0.0, 0.0)
    detour = length(A, C) + length(C, B)
    assert metres == pytest.approx(detour)
    assert metres > length(A, B) * 2
    assert seconds == pytest.approx(detour / (90 * KMH * LIMIT_SHARE))


def test_profile_speeds_change_the_route(triangle: RoadGraph) -> None:
    # The fleet crawls around C at hour 4 (but not on A-B's cells): the direct street wins.
    slow = cells_along(A, C, B) - cells_along(A, B)
    router = Router(triangle, profile_of(slow, 0.5, n=1_000), UTC_ZONE)
    a, b = node(triangle, 1), node(triangle, 2)
    assert router.path(a, b, 4) == [a, b]
    assert router.edge_times(4).from_profile > 0


def test_edge_time_from_profile_or_limit() -> None:
    graph = RoadGraph.from_ways([way([A, B], 50.0)])
    cells = cells_along(A, B)
    a, b = node(graph, 1), node(graph, 2)
    metres = length(A, B)

    def seconds(profile: SpeedProfile | None, rules: RoutingRules = NO_PRIOR) -> float:
        found = Router(graph, profile, UTC_ZONE, rules).between(a, b, 4)
        assert found is not None
        return found[0]

    limit = 50 * KMH
    assert seconds(None) == pytest.approx(metres / (limit * LIMIT_SHARE))
    assert seconds(profile_of(cells, 5.0)) == pytest.approx(metres / 5.0)
    # Faster than the limit: capped at the limit.
    assert seconds(profile_of(cells, 30.0)) == pytest.approx(metres / limit)
    # By default a cell's speed is blended with the limit's guess, by samples: ten
    # samples of the cell against LIMIT_PRIOR_SAMPLES (ten) of the limit.
    blended = (10 * 5.0 + LIMIT_PRIOR_SAMPLES * limit * LIMIT_SHARE) / (10 + LIMIT_PRIOR_SAMPLES)
    assert seconds(profile_of(cells, 5.0), RoutingRules()) == pytest.approx(metres / blended)
    many = (1_000 * 5.0 + LIMIT_PRIOR_SAMPLES * limit * LIMIT_SHARE) / (1_000 + LIMIT_PRIOR_SAMPLES)
    assert seconds(profile_of(cells, 5.0, n=1_000), RoutingRules()) == pytest.approx(metres / many)
    # Only a far-away cell has data: the profile answers from coarse levels, which say
    # nothing about this road, so the limit decides.
    far = {h3.latlng_to_cell(38.72, -9.14, PROFILE_RES)}  # Lisbon
    assert seconds(profile_of(far, 5.0)) == pytest.approx(metres / (limit * LIMIT_SHARE))


def test_limit_fallback_follows_the_hour_factor() -> None:
    graph = RoadGraph.from_ways([way([A, B], 50.0)])
    lisbon = h3.latlng_to_cell(38.72, -9.14, PROFILE_RES)
    rows = [ProfileRow(lisbon, 4, 100 * 4.0, 100), ProfileRow(lisbon, 5, 100 * 8.0, 100)]
    profile = SpeedProfile(rows)
    assert profile.hour_factor(4) < 1.0 < profile.hour_factor(5)
    router = Router(graph, profile, UTC_ZONE)
    metres = length(A, B)
    for hour in (4, 5, 6):
        found = router.between(node(graph, 1), node(graph, 2), hour)
        assert found is not None
        speed = 50 * KMH * LIMIT_SHARE * profile.hour_factor(hour)
        assert found[0] == pytest.approx(metres / speed), hour


def test_edge_time_follows_the_departure_hour() -> None:
    graph = RoadGraph.from_ways([way([A, B], 90.0)])
    cells = cells_along(A, B)
    rows = [ProfileRow(c, 4, 2.0 * 10, 10) for c in cells]
    rows += [ProfileRow(c, 5, 10.0 * 10, 10) for c in cells]
    router = Router(graph, SpeedProfile(rows, shrink_samples=0.0), UTC_ZONE, NO_PRIOR)
    metres = length(A, B)
    for hour, speed in ((4, 2.0), (5, 10.0), (6, 6.0)):  # hour 6: the cell at any hour
        found = router.between(node(graph, 1), node(graph, 2), hour)
        assert found is not None
        assert found[0] == pytest.approx(metres / speed), hour
    route = router.route(A[1:], B[1:], MONDAY_4H + timedelta(hours=1))
    assert route is not None
    assert route.seconds == pytest.approx(metres / 10.0, rel=1e-3)


def test_one_way_streets_are_driven_one_way() -> None:
    graph = RoadGraph.from_ways([way([A, B], 50.0, oneway=True), way([B, C, A], 50.0)])
    a, b, c = node(graph, 1), node(graph, 2), node(graph, 3)
    router = Router(graph, None, UTC_ZONE)
    assert router.path(a, b, 0) == [a, b]
    assert router.path(b, a, 0) == [b, c, a]


def test_points_off_the_network_have_no_route(triangle: RoadGraph) -> None:
    router = Router(triangle, None, UTC_ZONE)
    assert router.route((41.3, -8.3), B[1:], MONDAY_4H) is None
    assert router.route(A[1:], (41.3, -8.3), MONDAY_4H) is None
    route = router.route(A[1:], B[1:], MONDAY_4H)
    assert route is not None
    assert (route.origin_snap_m, route.destination_snap_m) == (0.0, 0.0)


def test_snap_offsets_are_added() -> None:
    graph = RoadGraph.from_ways([way([A, B], 36.0)])  # 10 m/s, 6 m/s at the share
    router = Router(graph, None, UTC_ZONE)
    exact = router.route(A[1:], B[1:], MONDAY_4H)
    off = router.route((A[1] + 0.0002, A[2]), B[1:], MONDAY_4H)  # ~22 m north of A
    assert exact is not None and off is not None
    assert off.origin_snap_m == pytest.approx(22.2, abs=0.2)
    assert off.metres == pytest.approx(exact.metres + off.origin_snap_m)
    assert off.seconds == pytest.approx(exact.seconds * off.metres / exact.metres)


def test_a_heading_starts_the_route_ahead_of_the_vehicle() -> None:
    # An east-west street W - M - E and a street north from E to the destination D.
    w, m, e = (1, 41.150, -8.6136), (2, 41.150, -8.610), (3, 41.150, -8.6089)  # E: 93 m
    d = (4, 41.1545, -8.6089)  # 500 m north of E
    graph = RoadGraph.from_ways([way([w, m, e], 50.0), way([e, d], 50.0)])
    router = Router(graph, None, UTC_ZONE)
    vehicle = (41.150, -8.6095)  # 42 m east of M (the nearest node), 51 m west of E
    plain = router.route(vehicle, d[1:], MONDAY_4H)
    assert plain is not None and plain.origin_node == node(graph, 2)
    east = router.route(vehicle, d[1:], MONDAY_4H, heading_deg=90.0)
    assert east is not None and east.origin_node == node(graph, 3)
    assert east.origin_snap_m == pytest.approx(51.0, abs=1.0)
    # Not driving back to M and forth again: 2 x 42 m less.
    assert east.metres == pytest.approx(plain.metres - 2 * plain.origin_snap_m, abs=1.0)
    assert east.seconds < plain.seconds
    # Heading west, M is ahead; heading north, no node is ahead: the nearest node.
    for heading in (270.0, 0.0):
        found = router.route(vehicle, d[1:], MONDAY_4H, heading_deg=heading)
        assert found is not None and found.origin_node == node(graph, 2), heading
        assert found.seconds == pytest.approx(plain.seconds)


def test_a_node_next_to_the_vehicle_is_a_start_whatever_its_bearing() -> None:
    w, m, e = (1, 41.150, -8.6136), (2, 41.150, -8.610), (3, 41.150, -8.6093)
    d = (4, 41.1545, -8.6136)  # north of W: reached by driving back west
    graph = RoadGraph.from_ways([way([w, m, e], 50.0), way([w, d], 50.0)])
    router = Router(graph, None, UTC_ZONE)
    vehicle = (41.150, -8.61012)  # 10 m east of M, heading east: M is behind but close
    assert [n for n, _ in graph.nodes_within(*vehicle, 100.0)] == [node(graph, 2), node(graph, 3)]
    found = router.route(vehicle, d[1:], MONDAY_4H, heading_deg=90.0)
    # E (49 m ahead) is a start too, but turning at M is faster than driving on to E.
    assert found is not None and found.origin_node == node(graph, 2)


def _grid_graph(size: int, seed: int) -> RoadGraph:
    """A size x size street grid ~100 m apart with random limits and some one-ways."""
    rng = random.Random(seed)

    def at(i: int, j: int) -> tuple[int, float, float]:
        return (i * size + j + 1, 41.15 + i * 0.0009, -8.61 + j * 0.0012)

    ways = []
    for i in range(size):
        for j in range(size):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < size and j + dj < size:
                    kmh = rng.choice([20.0, 30.0, 50.0, 70.0])
                    ways.append(way([at(i, j), at(i + di, j + dj)], kmh, oneway=rng.random() < 0.2))
    return RoadGraph.from_ways(ways)


def _dijkstra(graph: RoadGraph, times: list[float], source: int) -> list[float]:
    best = [math.inf] * graph.node_count
    best[source] = 0.0
    heap = [(0.0, source)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > best[u]:
            continue
        for e in range(graph.edge_count):
            if graph.tail[e] == u and d + times[e] < best[graph.head[e]]:
                best[graph.head[e]] = d + times[e]
                heapq.heappush(heap, (best[graph.head[e]], graph.head[e]))
    return best


def _edge(graph: RoadGraph, times: list[float], u: int, v: int) -> float:
    return min(times[e] for e in graph.out_edges(u) if graph.head[e] == v)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resumed_searches_agree_with_plain_dijkstra(seed: int) -> None:
    graph = _grid_graph(7, seed)
    router = Router(graph, None, UTC_ZONE)
    times = list(router.edge_times(0).seconds)
    rng = random.Random(seed)
    sources = list(range(graph.node_count))
    truth = {s: _dijkstra(graph, times, s) for s in sources}
    # Many queries against few destinations, in random order: searches get resumed.
    for _ in range(300):
        origin, destination = rng.choice(sources), rng.randrange(3)
        found = router.between(origin, destination, 0)
        expected = truth[origin][destination]
        if math.isinf(expected):
            assert found is None
        else:
            assert found is not None
            assert found[0] == pytest.approx(expected)
            path = router.path(origin, destination, 0) or []
            assert path[0] == origin and path[-1] == destination
            legs = itertools.pairwise(path)
            driven = sum(_edge(graph, times, u, v) for u, v in legs)
            assert driven == pytest.approx(found[0])
            metres = sum(
                graph.length_m[e]
                for u, v in itertools.pairwise(path)
                for e in graph.out_edges(u)
                if graph.head[e] == v
            )
            assert found[1] == pytest.approx(metres)
    assert router.searches_started == 3


def _winding_graph(seed: int) -> RoadGraph:
    """Streets drawn with many shape nodes (pass-through nodes), some one-way, a street
    doubled by a second way between the same nodes, and a ring with no junction."""
    rng = random.Random(seed)
    junctions = [
        (k + 1, 41.15 + rng.uniform(0, 0.01), -8.61 + rng.uniform(0, 0.01)) for k in range(8)
    ]
    next_id = 100
    ways = []
    for _ in range(14):
        a, b = rng.sample(junctions, 2)
        shape = []
        for _ in range(rng.randrange(0, 5)):
            t = rng.random()
            shape.append(
                (
                    next_id,
                    a[1] + (b[1] - a[1]) * t + rng.uniform(-1e-4, 1e-4),
                    a[2] + (b[2] - a[2]) * t,
                )
            )
            next_id += 1
        shape.sort(key=lambda n: (n[1] - a[1]) ** 2 + (n[2] - a[2]) ** 2)
        ways.append(way([a, *shape, b], rng.choice([20.0, 30.0, 50.0]), oneway=rng.random() < 0.3))
    ways.append(way([junctions[0], junctions[1]], 30.0))
    ways.append(way([junctions[0], junctions[1]], 50.0, oneway=True))
    ring = [(500 + k, 41.17 + 0.001 * math.cos(k), -8.60 + 0.001 * math.sin(k)) for k in range(5)]
    ways.append(way([*ring, ring[0]], 30.0, oneway=seed % 2 == 0))
    return RoadGraph.from_ways(ways)


@pytest.mark.parametrize("seed", range(8))
def test_merged_pass_through_nodes_give_the_plain_shortest_paths(seed: int) -> None:
    graph = _winding_graph(seed)
    router = Router(graph, None, UTC_ZONE)
    chains = router.chains
    assert chains.junction_count < graph.node_count, "some nodes are merged away"
    times = list(router.edge_times(0).seconds)
    for origin in range(graph.node_count):
        truth = _dijkstra(graph, times, origin)
        for destination in range(graph.node_count):
            found = router.between(origin, destination, 0)
            if math.isinf(truth[destination]):
                assert found is None, (origin, destination)
                continue
            assert found is not None, (origin, destination)
            assert found[0] == pytest.approx(truth[destination]), (origin, destination)
            path = router.path(origin, destination, 0)
            assert path is not None and path[0] == origin and path[-1] == destination
            driven = sum(_edge(graph, times, u, v) for u, v in itertools.pairwise(path))
            assert driven == pytest.approx(found[0])
            metres = sum(length_of(graph, u, v) for u, v in itertools.pairwise(path))
            assert found[1] == pytest.approx(metres)


def length_of(graph: RoadGraph, u: int, v: int) -> float:
    return min(graph.length_m[e] for e in graph.out_edges(u) if graph.head[e] == v)


def test_searches_are_kept_within_the_memory_budget(triangle: RoadGraph) -> None:
    junctions = Router(triangle, None, UTC_ZONE).chains.junction_count
    budget = 2.5 * SEARCH_BYTES_PER_NODE * junctions / 2**20  # room for two searches
    router = Router(triangle, None, UTC_ZONE, RoutingRules(search_cache_mib=budget))
    assert router.search_capacity == 2
    a, b, c = (node(triangle, i) for i in (1, 2, 3))
    for destination in (a, b, a, b):  # both fit: searched once each
        router.between(c, destination, 0)
    assert (router.searches_started, router.searches_evicted) == (2, 0)
    router.between(a, c, 0)  # a third pushes out the least recently used (to a)
    assert (router.searches_started, router.searches_evicted) == (3, 1)
    router.between(c, b, 0)  # still kept
    assert (router.searches_started, router.searches_evicted) == (3, 1)
    router.between(c, a, 0)  # searched again
    assert (router.searches_started, router.searches_evicted) == (4, 2)
