"""What the dispatch websocket tests share: the app served on its port with its hub in
reach, `websockets` clients, and live states and events published the way the tracker
publishes them (stored in PostgreSQL, then RedisLive.write)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import h3.api.basic_int as h3
import redis.asyncio as redis
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from fleetpulse.database import connect as db_connect
from fleetpulse.settings import Settings
from tests.conftest import WAIT_TIMEOUT_S
from tracker import store
from tracker.events import Event, EventKind
from tracker.live import LiveDevice, Status
from tracker.redis_live import RedisLive
from web.app import build_app
from web.hub import HUB, Hub
from web.services import open_services

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
Message = dict[str, Any]


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[web.Application]:
    """The web app on its port, as `fleetpulse web` serves it; yields the app."""
    async with open_services(settings) as services:
        app = build_app(services)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.web_host, settings.web_port, reuse_port=True)
            await site.start()
            yield app
        finally:
            await runner.cleanup()


def hub_of(app: web.Application) -> Hub:
    return app[HUB]


def ws_url(settings: Settings, **query: str) -> str:
    base = f"ws://{settings.web_host}:{settings.web_port}/ws/dispatch"
    return f"{base}?{urlencode(query)}" if query else base


def dispatch(settings: Settings, token: str | None, **query: str) -> connect:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(ws_url(settings, **query), additional_headers=headers, max_size=None)


async def receive(ws: ClientConnection) -> Message:
    """The next message; the timeout only keeps a broken test from hanging."""
    raw = await asyncio.wait_for(ws.recv(), WAIT_TIMEOUT_S)
    message: Message = json.loads(raw)
    return message


async def receive_until(ws: ClientConnection, done: Callable[[Message], bool]) -> list[Message]:
    """Messages up to and including the first for which `done` is true."""
    seen = []
    while True:
        message = await receive(ws)
        seen.append(message)
        if done(message):
            return seen


def is_event(event_id: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "event" and m["event"]["id"] == event_id


def event_ids(messages: list[Message]) -> list[str]:
    return [m["event"]["id"] for m in messages if m["type"] == "event"]


def live_state(device: str, lat: float, lon: float, ts: datetime = T0) -> LiveDevice:
    return LiveDevice(
        device_id=device,
        ts=ts,
        lat=lat,
        lon=lon,
        received_at=ts,
        cell=h3.latlng_to_cell(lat, lon, 9),
        coarse_cell=h3.latlng_to_cell(lat, lon, 6),
        status=Status.MOVING,
        speed=8.0,
    )


def make_event(
    device: str, kind: EventKind = EventKind.ENTER, second: int = 0, fence: str = "depot"
) -> Event:
    return Event(
        device_id=device,
        kind=kind,
        ts=T0 + timedelta(seconds=second),
        fence_id=fence if kind in (EventKind.ENTER, EventKind.EXIT, EventKind.DWELL) else None,
        lat=38.72,
        lon=-9.14,
        detail="test",
    )


class Fleet:
    """Publishes as the tracker does: events stored first, then states and events on Redis."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = redis.Redis.from_url(settings.redis_url)
        self.live = RedisLive(self.client)

    async def store(self, *events: Event) -> None:
        conn = await db_connect(self.settings.database_url)
        try:
            await store.save_events(conn, list(events))
        finally:
            await conn.close()

    async def publish(self, devices: list[LiveDevice], events: Sequence[Event] = ()) -> None:
        await self.live.write(devices, list(events))

    async def emit(self, *events: Event) -> None:
        await self.store(*events)
        await self.publish([], list(events))

    async def close(self) -> None:
        await self.client.aclose()


@asynccontextmanager
async def fleet(settings: Settings) -> AsyncIterator[Fleet]:
    publisher = Fleet(settings)
    try:
        yield publisher
    finally:
        await publisher.close()
