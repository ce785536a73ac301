"""Vans drive on the road graph's edges, within the edges' limits, and stay at each
delivery point for their service time."""

from __future__ import annotations

import itertools
import random

import pytest

from fleetpulse.simulation.geo import haversine_m
from fleetpulse.simulation.streets import depot_node, stop_candidates, street_grid
from fleetpulse.simulation.vehicles import (
    HALT_RATE,
    MIN_SPEED_MPS,
    Activity,
    StopServed,
    Van,
    VanState,
)
from tests.unit.fleetpulse.simulation.conftest import PORTO_CENTRE, router
from tracker.roads import RoadGraph

STEP_S = 1.0


def make_van(
    graph: RoadGraph, seed: int = 3, service_s: float = 60.0, halt_rate: float = HALT_RATE
) -> Van:
    depot = depot_node(graph, PORTO_CENTRE)
    candidates = stop_candidates(graph, PORTO_CENTRE, 700.0)
    return Van(
        graph,
        router(graph),
        depot,
        candidates,
        random.Random(seed),
        stops_per_round=3,
        service_s=service_s,
        depot_s=120.0,
        halt_rate=halt_rate,
    )


def drive(van: Van, seconds: float) -> tuple[list[VanState], list[StopServed]]:
    states, served = [van.state()], []
    for _ in range(int(seconds / STEP_S)):
        served.extend(van.advance(STEP_S))
        states.append(van.state())
    return states, served


def off_edge_m(graph: RoadGraph, state: VanState) -> float:
    """How far the position strays from the straight piece of road it is on."""
    assert state.edge is not None
    tail, head = graph.tail[state.edge], graph.head[state.edge]
    a = (graph.lat[tail], graph.lon[tail])
    b = (graph.lat[head], graph.lon[head])
    p = (state.lat, state.lon)
    return haversine_m(*a, *p) + haversine_m(*p, *b) - haversine_m(*a, *b)


def assert_drives_on_the_graph(graph: RoadGraph, states: list[VanState]) -> None:
    nodes = {(graph.lat[n], graph.lon[n]) for n in range(graph.node_count)}
    for state in states:
        if state.activity is Activity.DRIVING:
            assert off_edge_m(graph, state) < 0.05
            assert state.edge is not None
            assert MIN_SPEED_MPS <= state.speed_mps <= graph.limit_mps[state.edge] + 1e-9
        else:
            assert state.speed_mps == 0.0
            assert (state.lat, state.lon) in nodes  # standing at a junction or a stop
    for before, after in itertools.pairwise(states):
        moved = haversine_m(before.lat, before.lon, after.lat, after.lon)
        assert moved <= graph.max_limit_mps * STEP_S + 1e-6  # no jumps


def test_grid_has_avenues_and_streets(grid: RoadGraph) -> None:
    limits = sorted({round(v * 3.6) for v in grid.limit_mps})
    assert limits == [30, 50]
    assert all(grid.routable)  # two-way streets: every node reaches every other


def test_van_stays_on_edges_within_limits(grid: RoadGraph) -> None:
    states, _ = drive(make_van(grid), 2_000)
    assert_drives_on_the_graph(grid, states)
    assert sum(s.activity is Activity.DRIVING for s in states) > 1_000
    assert {s.activity for s in states} >= {Activity.DRIVING, Activity.SERVING, Activity.LOADING}


def test_van_stops_at_each_delivery_point_for_its_service_time(grid: RoadGraph) -> None:
    van = make_van(grid, service_s=90.0)
    first_round = van.stops
    assert [s.sequence for s in first_round] == [1, 2, 3]
    states, served = drive(van, 2_500)
    served_first = [s for s in served if s.stop.round == 0]
    assert [s.stop for s in served_first] == first_round  # each once, in sequence order
    for stop in first_round:
        at_stop = [s for s in states if s.stop == stop]
        assert len(at_stop) >= 90 - STEP_S  # sampled each second while serving
        assert all(s.activity is Activity.SERVING for s in at_stop)
        assert all((s.lat, s.lon) == (stop.lat, stop.lon) for s in at_stop)
    for before, after in itertools.pairwise(served_first):
        assert after.at_s > before.at_s
    depot = depot_node(grid, PORTO_CENTRE)
    loading = [s for s in states if s.activity is Activity.LOADING]
    assert loading and all((s.lat, s.lon) == (grid.lat[depot], grid.lon[depot]) for s in loading)


def test_planned_arrivals_follow_the_route(grid: RoadGraph) -> None:
    van = make_van(grid, halt_rate=0.0)
    planned = {stop.sequence: stop.eta_s for stop in van.stops}
    arrivals: dict[int, float] = {}
    clock = 0.0
    while len(arrivals) < len(planned):
        van.advance(0.5)
        clock += 0.5
        state = van.state()
        if state.stop is not None and state.stop.round == 0:
            arrivals.setdefault(state.stop.sequence, clock)
    for sequence, eta in planned.items():
        # Without halts the van drives the planned speeds exactly; edge speeds vary by
        # +-10 % around the plan, so arrivals land near the plan, not on it.
        assert arrivals[sequence] == pytest.approx(eta, rel=0.15)


def test_same_seed_same_van(grid: RoadGraph) -> None:
    assert drive(make_van(grid, seed=5), 300)[0] == drive(make_van(grid, seed=5), 300)[0]
    assert drive(make_van(grid, seed=5), 300)[0] != drive(make_van(grid, seed=6), 300)[0]


def test_van_on_the_porto_road_network(porto_roads: RoadGraph) -> None:
    states, _ = drive(make_van(porto_roads), 900)
    assert_drives_on_the_graph(porto_roads, states)
    driving = [s for s in states if s.activity is Activity.DRIVING]
    assert len({s.edge for s in driving}) > 20  # real streets: many short pieces


def test_a_small_grid_still_has_stops() -> None:
    graph = street_grid(PORTO_CENTRE, radius_m=100.0)
    assert len(stop_candidates(graph, PORTO_CENTRE, 200.0)) >= 2
