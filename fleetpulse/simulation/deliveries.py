"""The deliveries a simulated fleet serves: one per stop of each van's first round,
created in PostgreSQL before the vans set off (`tracker.delivery_store.create`, as
dispatch would), so the tracker follows them and customers can open their links. Each
van reports its drop on its delivery topic when it leaves the stop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fleetpulse.database import Conn, connect
from fleetpulse.simulation.fleet import Fleet
from tracker import delivery_store
from tracker.delivery_store import NewDelivery

# Planned drive times assume no halts and free roads: the window allows for more.
WINDOW_SLACK = 0.5  # the window ends this share of the planned time after the ETA
WINDOW_MARGIN = timedelta(minutes=15)
DROP_RADIUS_M = 50.0
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"

StopKey = tuple[str, int, int]  # (van id, round, sequence), as the fleet reports stops


@dataclass(frozen=True)
class CreatedDelivery:
    id: str
    vehicle_id: str
    sequence: int
    dest: tuple[float, float]
    window_end: datetime
    tracking_token: str
    tracking_url: str


def run_tag(started_at: datetime) -> str:
    """A short tag that keeps the delivery ids of two runs apart (epoch seconds, base 36)."""
    n, digits = int(started_at.timestamp()), ""
    while n:
        n, d = divmod(n, 36)
        digits = _BASE36[d] + digits
    return digits or "0"


def plan(fleet: Fleet, tag: str) -> list[tuple[StopKey, NewDelivery]]:
    """A delivery for each stop of each van's current round. Pure."""
    planned = []
    for device, van in fleet.vans:
        for stop in van.stops:
            eta = fleet.time_of(device.offset_s + stop.eta_s)
            window_end = eta + (eta - fleet.started_at) * WINDOW_SLACK + WINDOW_MARGIN
            new = NewDelivery(
                id=f"{device.id}-{tag}-{stop.sequence}",
                vehicle_id=device.id,
                dest_lat=stop.lat,
                dest_lon=stop.lon,
                window_start=fleet.started_at,
                window_end=window_end,
                drop_radius_m=DROP_RADIUS_M,
                sequence=stop.sequence,
                service_s=van.service_s,
            )
            planned.append(((device.id, stop.round, stop.sequence), new))
    return planned


async def create(database_url: str, fleet: Fleet, base_url: str) -> list[CreatedDelivery]:
    """Store the planned deliveries and tell the fleet to report their drops."""
    conn = await connect(database_url)
    try:
        async with conn.transaction():  # all the fleet's deliveries, or none
            created = await _create(conn, fleet, base_url)
    finally:
        await conn.close()
    for key, delivery in created:
        fleet.deliveries[key] = delivery.id
    return [delivery for _, delivery in created]


async def _create(conn: Conn, fleet: Fleet, base_url: str) -> list[tuple[StopKey, CreatedDelivery]]:
    created = []
    for key, new in plan(fleet, run_tag(fleet.started_at)):
        token = await delivery_store.create(conn, new)
        delivery = CreatedDelivery(
            id=new.id,
            vehicle_id=new.vehicle_id,
            sequence=new.sequence,
            dest=(new.dest_lat, new.dest_lon),
            window_end=new.window_end,
            tracking_token=token,
            tracking_url=f"{base_url}/track/{token}",
        )
        created.append((key, delivery))
    return created
