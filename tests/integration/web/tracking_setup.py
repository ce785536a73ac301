"""Deliveries, ETAs and vehicle positions for the customer-tracking tests, made the way
the product makes them: rows through tracker.delivery_store, live state and messages
through tracker.redis_live.RedisLive (what a running tracker calls)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import h3.api.basic_int as h3
import redis.asyncio as redis

from fleetpulse.database import Conn, connect
from fleetpulse.settings import Settings
from tracker import delivery_store
from tracker.deliveries import DeliveryState, Eta
from tracker.delivery_tracking import EtaUpdate
from tracker.events import Event
from tracker.live import LiveDevice, Status
from tracker.positions import Fix
from tracker.redis_live import RedisLive

# Porto: the destination at Aliados, the van ~2.6 km away to the north-east.
DEST = (41.148612, -8.611013)
FAR = (41.171234, -8.600987)
NEAR = (41.150321, -8.609876)


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[Conn]:
    conn = await connect(settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def new_delivery(
    settings: Settings,
    delivery_id: str,
    vehicle: str = "van-1",
    *,
    sequence: int = 0,
    dest: tuple[float, float] = DEST,
    expires_at: datetime | None = None,
) -> str:
    """A delivery due in the next two hours; returns its customer's token."""
    now = datetime.now(UTC)
    async with database(settings) as conn:
        return await delivery_store.create(
            conn,
            delivery_store.NewDelivery(
                id=delivery_id,
                vehicle_id=vehicle,
                dest_lat=dest[0],
                dest_lon=dest[1],
                window_start=now,
                window_end=now + timedelta(hours=2),
                sequence=sequence,
                token_expires_at=expires_at,
            ),
        )


def vehicle_state(vehicle: str, at: tuple[float, float], ts: datetime | None = None) -> LiveDevice:
    ts = ts or datetime.now(UTC)
    lat, lon = at
    return LiveDevice(
        vehicle,
        ts,
        lat,
        lon,
        ts,
        h3.latlng_to_cell(lat, lon, 9),
        h3.latlng_to_cell(lat, lon, 6),
        Status.MOVING,
        speed=9.0,
        heading=200.0,
    )


@asynccontextmanager
async def live(settings: Settings) -> AsyncIterator[RedisLive]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield RedisLive(client)
    finally:
        await client.aclose()


async def move(settings: Settings, state: LiveDevice) -> None:
    """The vehicle's live state stored and published, as the tracker does on a fix."""
    async with live(settings) as redis_live:
        await redis_live.write([state], [])


async def give_eta(
    settings: Settings,
    delivery_id: str,
    minutes: float,
    *,
    at: tuple[float, float] = FAR,
    computed_at: datetime | None = None,
    publish: bool = True,
) -> Eta:
    """An ETA stored and published, as the tracker does when it moves enough (or only
    stored: a message that nobody heard)."""
    now = computed_at or datetime.now(UTC)
    p50 = now + timedelta(minutes=minutes)
    eta = Eta(p50, p50 + timedelta(minutes=minutes / 4 + 2), now)
    async with database(settings) as conn:
        delivery = await delivery_store.get(conn, delivery_id)
        fix = Fix(delivery.vehicle_id, now, at[0], at[1], now)
        update = EtaUpdate(delivery, fix, eta)
        await delivery_store.save_etas(conn, [update])
    if publish:
        async with live(settings) as redis_live:
            await redis_live.write([], [], [update])
    return eta


async def report(settings: Settings, delivery_id: str, outcome: DeliveryState) -> list[Event]:
    """Delivered, failed or cancelled, stored and its event published."""
    async with database(settings) as conn:
        events = await delivery_store.report(conn, delivery_id, outcome, datetime.now(UTC))
    async with live(settings) as redis_live:
        await redis_live.write([], events)
    return events
