"""Delivery vans driving a road graph. Pure: a van is advanced by simulated seconds.

A van works in rounds: it leaves its depot, drives the shortest-time route (the tracker's
own router, on speed limits) to each of its stops in turn, stays at each for its service
time, drives back and loads for the next round. On an edge it drives a share of the
edge's speed limit (urban traffic: lights, junctions, parking), never above the limit,
and at a junction it sometimes halts for a few seconds (a red light, a give-way). The
position is always on an edge of the graph: edges are the straight pieces between the
nodes of a way.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleetpulse.simulation.geo import bearing_deg, interpolate
from tracker.roads import RoadGraph
from tracker.routing import Router

SPEED_SHARE = (0.55, 0.85)  # of the edge's limit, drawn once per van
EDGE_SPEED_SPREAD = 0.1  # +-10 % from edge to edge, still capped at the limit
MIN_SPEED_MPS = 2.0  # crawling, never standing on an edge: standing is a halt
HALT_RATE = 0.03  # chance of a halt at each junction passed
HALT_S = (5.0, 30.0)
SERVICE_S = 120.0  # at each delivery stop: park, hand over, come back
DEPOT_S = 300.0  # loading between rounds
STOPS_PER_ROUND = 5
ROUTE_HOUR = 0  # edge times come from limits alone, the same at every hour
_EPSILON_S = 1e-9


class Activity(enum.StrEnum):
    DRIVING = "driving"
    HALTED = "halted"  # a junction: lights, give-way
    SERVING = "serving"  # at a delivery stop
    LOADING = "loading"  # at the depot between rounds


@dataclass(frozen=True)
class Stop:
    round: int  # 0 for the first round: the one deliveries are created for
    sequence: int  # 1, 2, ... within the round
    node: int
    lat: float
    lon: float
    eta_s: float  # planned arrival, van clock, at the planned speeds without halts


@dataclass(frozen=True)
class StopServed:
    stop: Stop
    at_s: float  # van clock when the service ended


@dataclass(frozen=True)
class VanState:
    lat: float
    lon: float
    speed_mps: float
    heading_deg: float
    activity: Activity
    edge: int | None  # the edge it is on while driving
    stop: Stop | None  # the stop it is serving


@dataclass
class _Leg:
    edges: list[int]
    stop: Stop | None  # None: the leg back to the depot


@dataclass
class _Position:
    leg: int = 0
    edge_index: int = 0
    along_m: float = 0.0
    dwell_s: float = 0.0
    activity: Activity = Activity.DRIVING
    node: int = 0  # where it stands while dwelling
    heading: float = 0.0
    speed: float = 0.0  # on the current edge
    served: list[StopServed] = field(default_factory=list)


class Van:
    def __init__(
        self,
        graph: RoadGraph,
        router: Router,
        depot: int,
        candidates: Sequence[int],
        rng: random.Random,
        *,
        stops_per_round: int = STOPS_PER_ROUND,
        service_s: float = SERVICE_S,
        depot_s: float = DEPOT_S,
        halt_rate: float = HALT_RATE,
    ) -> None:
        if stops_per_round < 1:
            raise ValueError(f"stops_per_round must be 1 or more, got {stops_per_round}")
        if len(set(candidates) - {depot}) < 1:
            raise ValueError("a van needs at least one stop candidate besides its depot")
        self.graph, self.router, self.depot = graph, router, depot
        self._candidates = list(candidates)
        self._rng = rng
        self.stops_per_round = stops_per_round
        self.service_s, self.depot_s, self.halt_rate = service_s, depot_s, halt_rate
        self.speed_share = rng.uniform(*SPEED_SHARE)
        self.clock_s = 0.0
        self.round = -1
        self.legs: list[_Leg] = []
        self._at = _Position(node=depot)
        self._start_round()

    @property
    def stops(self) -> list[Stop]:
        """The current round's stops, in the order they are served."""
        return [leg.stop for leg in self.legs if leg.stop is not None]

    def state(self) -> VanState:
        g, at = self.graph, self._at
        if at.activity is not Activity.DRIVING:
            serving = self.legs[at.leg].stop if at.activity is Activity.SERVING else None
            return VanState(
                g.lat[at.node], g.lon[at.node], 0.0, at.heading, at.activity, None, serving
            )
        edge = self.legs[at.leg].edges[at.edge_index]
        tail, head = g.tail[edge], g.head[edge]
        fraction = at.along_m / g.length_m[edge] if g.length_m[edge] > 0 else 0.0
        lat, lon = interpolate(g.lat[tail], g.lon[tail], g.lat[head], g.lon[head], fraction)
        return VanState(lat, lon, at.speed, at.heading, Activity.DRIVING, edge, None)

    def advance(self, dt_s: float) -> list[StopServed]:
        """Move on by `dt_s` seconds; returns the stops whose service ended meanwhile."""
        at, g = self._at, self.graph
        at.served = []
        while dt_s > _EPSILON_S:
            if at.activity is not Activity.DRIVING:
                used = min(dt_s, at.dwell_s)
                at.dwell_s -= used
                dt_s -= used
                self.clock_s += used
                if at.dwell_s <= _EPSILON_S:
                    self._end_dwell()
                continue
            leg = self.legs[at.leg]
            edge = leg.edges[at.edge_index]
            to_end_s = (g.length_m[edge] - at.along_m) / at.speed
            if dt_s < to_end_s:
                at.along_m += at.speed * dt_s
                self.clock_s += dt_s
                break
            dt_s -= to_end_s
            self.clock_s += to_end_s
            at.node = g.head[edge]
            if at.edge_index + 1 == len(leg.edges):
                self._arrive(leg)
            else:
                at.edge_index += 1
                at.along_m = 0.0
                self._enter(leg.edges[at.edge_index])
                if self._rng.random() < self.halt_rate:
                    self._dwell(Activity.HALTED, self._rng.uniform(*HALT_S))
        return at.served

    def _enter(self, edge: int) -> None:
        g, at = self.graph, self._at
        limit = g.limit_mps[edge]
        spread = self._rng.uniform(1 - EDGE_SPEED_SPREAD, 1 + EDGE_SPEED_SPREAD)
        at.speed = min(limit, max(MIN_SPEED_MPS, limit * self.speed_share * spread))
        tail, head = g.tail[edge], g.head[edge]
        at.heading = bearing_deg(g.lat[tail], g.lon[tail], g.lat[head], g.lon[head])

    def _dwell(self, activity: Activity, seconds: float) -> None:
        self._at.activity, self._at.dwell_s = activity, seconds

    def _arrive(self, leg: _Leg) -> None:
        if leg.stop is None:
            self._dwell(Activity.LOADING, self.depot_s)
        else:
            self._dwell(Activity.SERVING, self.service_s)

    def _end_dwell(self) -> None:
        at = self._at
        activity, at.activity, at.dwell_s = at.activity, Activity.DRIVING, 0.0
        if activity is Activity.HALTED:
            return  # drive on along the same leg
        if activity is Activity.SERVING:
            stop = self.legs[at.leg].stop
            assert stop is not None
            at.served.append(StopServed(stop, self.clock_s))
        if activity is Activity.LOADING:
            self._start_round()
        else:
            self._begin_leg(at.leg + 1)

    def _begin_leg(self, index: int) -> None:
        at = self._at
        at.leg, at.edge_index, at.along_m = index, 0, 0.0
        self._enter(self.legs[index].edges[0])

    def _start_round(self) -> None:
        self.round += 1
        choices = [n for n in self._candidates if n != self.depot]
        count = min(self.stops_per_round, len(choices))
        nodes = self._rng.sample(choices, count)
        g, legs = self.graph, []
        origin, clock = self.depot, self.clock_s
        share = self.speed_share
        for sequence, node in enumerate([*nodes, self.depot], start=1):
            edges = self._edges(origin, node)
            clock += sum(
                g.length_m[e] / min(g.limit_mps[e], max(MIN_SPEED_MPS, g.limit_mps[e] * share))
                for e in edges
            )
            stop = None  # the last leg goes back to the depot
            if sequence <= count:
                stop = Stop(self.round, sequence, node, g.lat[node], g.lon[node], clock)
                clock += self.service_s
            legs.append(_Leg(edges, stop))
            origin = node
        self.legs = legs
        self._begin_leg(0)

    def _edges(self, origin: int, destination: int) -> list[int]:
        nodes = self.router.path(origin, destination, ROUTE_HOUR)
        if nodes is None or len(nodes) < 2:
            # Stops and depot are all in the graph's largest strongly connected component.
            raise AssertionError(f"no route from node {origin} to node {destination}")
        g = self.graph
        edges = []
        for u, v in itertools.pairwise(nodes):
            parallel = [e for e in g.out_edges(u) if g.head[e] == v]
            edges.append(min(parallel, key=g.length_m.__getitem__))
        return edges
