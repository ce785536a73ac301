"""A small street grid, and the Porto road network when the shared data is there."""

from __future__ import annotations

from datetime import UTC

import pytest

from bench.geofence import porto
from fleetpulse.simulation.streets import street_grid
from tracker.roads import RoadGraph, load_roads
from tracker.routing import Router

PORTO_CENTRE = (41.1496, -8.6109)
EXTRACT = porto.data_dir() / "porto/porto_2022-11.osm.pbf"


@pytest.fixture(scope="session")
def grid() -> RoadGraph:
    return street_grid(PORTO_CENTRE, radius_m=800.0)


@pytest.fixture(scope="session")
def porto_roads() -> RoadGraph:
    if not EXTRACT.is_file():
        pytest.skip(f"{EXTRACT} not found (set {porto.DATA_DIR_ENV} to the shared data folder)")
    return load_roads(EXTRACT)


def router(graph: RoadGraph) -> Router:
    return Router(graph, None, UTC)
