"""`fleetpulse simulate` as a coroutine: load the road network, build the fleet,
optionally create its deliveries, then publish its messages in real time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from fleetpulse.settings import Settings
from fleetpulse.simulation import deliveries
from fleetpulse.simulation.drones import DroneSpec
from fleetpulse.simulation.fleet import FleetConfig, build_fleet
from fleetpulse.simulation.publisher import Credentials, Progress, Publisher
from fleetpulse.simulation.replay import stopped_within
from fleetpulse.simulation.streets import graph_centre, load_extract, street_grid
from mqtt.topics import TopicScheme
from tracker.roads import RoadGraph

# Porto's Avenida dos Aliados: the shared data's city, for a grid with no centre given.
DEFAULT_CENTRE = (41.1496, -8.6109)


def drone_spec(settings: Settings, radius_m: float) -> DroneSpec:
    """The drones the settings describe, their sorties kept within the fleet's radius."""
    return DroneSpec(
        cruise_alt_m=settings.drone_cruise_alt_m,
        cruise_speed_mps=settings.drone_cruise_speed_mps,
        reserve_pct=settings.drone_reserve_pct,
        radius_m=min(radius_m, DroneSpec.radius_m),
    )


@dataclass(frozen=True)
class SimulateOptions:
    fleet: FleetConfig
    centre: tuple[float, float] | None = None
    osm_pbf: str = ""  # empty: a synthetic street grid
    rate: float | None = None  # messages per second over all devices
    create_deliveries: bool = False
    credentials: Credentials = field(default_factory=Credentials)


@dataclass(frozen=True)
class SimulationReport:
    network: str
    devices: int
    generated: int  # fixes produced: what the run must store
    malformed: int  # broken messages sent on purpose: what the ingester must refuse
    delivery_reports: int
    faults: dict[str, int]
    created: list[deliveries.CreatedDelivery]
    progress: Progress


async def road_network(options: SimulateOptions) -> tuple[RoadGraph, tuple[float, float], str]:
    """The graph to drive on, the centre and a description for the operator."""
    if options.osm_pbf:
        graph = await asyncio.to_thread(load_extract, options.osm_pbf)
        centre = options.centre or graph_centre(graph)
        described = f"the OpenStreetMap extract {options.osm_pbf} ({graph.node_count:,} nodes)"
        return graph, centre, described
    centre = options.centre or DEFAULT_CENTRE
    graph = street_grid(centre, options.fleet.radius_m)
    return graph, centre, f"a synthetic street grid around {centre[0]:.5f},{centre[1]:.5f}"


async def simulate(
    settings: Settings,
    options: SimulateOptions,
    display: TextIO | None = None,
    stop: asyncio.Event | None = None,
    on_deliveries: Callable[[list[deliveries.CreatedDelivery]], None] | None = None,
) -> SimulationReport:
    graph, centre, network = await road_network(options)
    fleet = await asyncio.to_thread(build_fleet, options.fleet, graph, centre)
    created = []
    if options.create_deliveries:
        created = await deliveries.create(settings.database_url, fleet, settings.web_base_url)
        if on_deliveries is not None:
            on_deliveries(created)
    publisher = Publisher(
        settings.mqtt_url,
        TopicScheme(settings.topic_prefix, settings.owntracks_prefix),
        options.credentials,
        options.rate,
        display=display,
    )
    async with publisher:
        loop = asyncio.get_running_loop()
        start = loop.time()
        fleet.started_at = datetime.now(UTC)  # fix times follow the wall clock from here
        while (due := fleet.next_time_s()) is not None:
            if await stopped_within(stop, start + due - loop.time()):
                break
            for message in fleet.advance_to(due):
                await publisher.send(message)
        for message in fleet.finish():
            await publisher.send(message)
        progress = await publisher.close()
    return SimulationReport(
        network=network,
        devices=len(fleet.devices),
        generated=fleet.generated,
        malformed=fleet.faults.counts["malformed"],
        delivery_reports=fleet.reports,
        faults=dict(fleet.faults.counts),
        created=created,
        progress=progress,
    )
