"""What request handlers share: settings, a PostgreSQL pool and Redis, opened once per
web worker and reached through the application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg_pool
import redis.asyncio as redis
from aiohttp import web

from fleetpulse.database import CONNECT_TIMEOUT_S, Conn
from fleetpulse.errors import ServiceUnavailable
from fleetpulse.settings import Settings, mask_url
from tracker.redis_live import RedisLive

POOL_SIZE = 10


@dataclass
class Services:
    settings: Settings
    pool: psycopg_pool.AsyncConnectionPool[Conn]
    redis: redis.Redis
    live: RedisLive

    @asynccontextmanager
    async def db(self) -> AsyncIterator[Conn]:
        """A pooled connection in autocommit mode; `conn.transaction()` where needed."""
        async with self.pool.connection() as conn:
            yield conn


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    pool: psycopg_pool.AsyncConnectionPool[Conn] = psycopg_pool.AsyncConnectionPool(
        settings.database_url,
        kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
        min_size=1,
        max_size=POOL_SIZE,
        timeout=CONNECT_TIMEOUT_S,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except psycopg_pool.PoolTimeout as exc:
        raise ServiceUnavailable(
            f"PostgreSQL at {mask_url(settings.database_url)}: no connection in "
            f"{CONNECT_TIMEOUT_S} s"
        ) from exc
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield Services(settings, pool, client, RedisLive(client))
    finally:
        await client.aclose()
        await pool.close()
