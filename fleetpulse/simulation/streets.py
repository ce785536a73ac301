"""The road network vans drive on: an OpenStreetMap extract when there is one, else a
synthetic street grid around a centre, built through the same `RoadGraph` so that the
vans, the router and the tests see one kind of graph either way."""

from __future__ import annotations

import math
from pathlib import Path

from fleetpulse.errors import FleetPulseError
from fleetpulse.simulation.geo import haversine_m, offset
from tracker.roads import RoadClass, RoadGraph, Way, load_roads

GRID_SPACING_M = 150.0  # a city block
GRID_AVENUE_EVERY = 5  # every fifth street is a 50 km/h avenue, the rest 30 km/h
# The grid reaches this far beyond the stops' radius, so that routes can go round a block.
GRID_MARGIN_M = 300.0
CENTRE_SNAP_M = 2_000.0  # how far the centre may be from the extract's roads


class RoadNetworkError(FleetPulseError):
    """The extract cannot be read, or has no roads near the centre."""


def load_extract(path: str | Path) -> RoadGraph:
    try:
        graph = load_roads(path)
    except (OSError, RuntimeError) as exc:  # pyosmium reports unreadable files as RuntimeError
        raise RoadNetworkError(f"cannot read the OpenStreetMap extract {path}: {exc}") from None
    if graph.node_count == 0 or not any(graph.routable):
        raise RoadNetworkError(f"{path} has no drivable roads")
    return graph


def street_grid(
    centre: tuple[float, float], radius_m: float, spacing_m: float = GRID_SPACING_M
) -> RoadGraph:
    """Two-way streets every `spacing_m` in a square covering `radius_m` around `centre`."""
    half = math.ceil((radius_m + GRID_MARGIN_M) / spacing_m)
    lat0, lon0 = centre
    points = {
        (i, j): offset(lat0, lon0, i * spacing_m, j * spacing_m)
        for i in range(-half, half + 1)
        for j in range(-half, half + 1)
    }

    def node_id(i: int, j: int) -> int:
        # Synthetic ids, negative like unsaved nodes in OSM editors: never a real node.
        return -1 - ((i + half) * (2 * half + 1) + (j + half))

    ways = []
    for k in range(-half, half + 1):
        road_class = RoadClass.PRIMARY if k % GRID_AVENUE_EVERY == 0 else RoadClass.RESIDENTIAL
        along_lat = [(node_id(k, j), *points[k, j]) for j in range(-half, half + 1)]
        along_lon = [(node_id(i, k), *points[i, k]) for i in range(-half, half + 1)]
        ways.append(Way(along_lat, road_class))
        ways.append(Way(along_lon, road_class))
    return RoadGraph.from_ways(ways)


def depot_node(graph: RoadGraph, centre: tuple[float, float]) -> int:
    """The routable node nearest the centre: where vans load and drones take off."""
    found = graph.snap(*centre, max_m=CENTRE_SNAP_M)
    if found is None:
        raise RoadNetworkError(
            f"no road within {CENTRE_SNAP_M:.0f} m of the centre {centre[0]:.5f},{centre[1]:.5f}"
        )
    return found[0]


def graph_centre(graph: RoadGraph) -> tuple[float, float]:
    """The mean position of the routable nodes: a centre when none is given."""
    nodes = [n for n in range(graph.node_count) if graph.routable[n]]
    return (
        sum(graph.lat[n] for n in nodes) / len(nodes),
        sum(graph.lon[n] for n in nodes) / len(nodes),
    )


def stop_candidates(graph: RoadGraph, centre: tuple[float, float], radius_m: float) -> list[int]:
    """Routable nodes within `radius_m` of the centre: the places deliveries go to."""
    lat0, lon0 = centre
    found = [
        n
        for n in range(graph.node_count)
        if graph.routable[n] and haversine_m(lat0, lon0, graph.lat[n], graph.lon[n]) <= radius_m
    ]
    if len(found) < 2:
        raise RoadNetworkError(
            f"fewer than 2 routable road nodes within {radius_m:.0f} m of the centre"
        )
    return found
