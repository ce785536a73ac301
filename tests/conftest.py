"""Fixtures that start real services: a private Mosquitto and a private Redis from the
project's configs on free ports, and a fresh PostgreSQL database per test cloned from a
migrated template.

The machine's PostgreSQL must be up (FLEETPULSE_TEST_PG_URL names it); a missing server
is a failure, not a skip: these tests are the product's evidence.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from aiohttp import ClientSession
from psycopg import sql

from fleetpulse.app import prepare_database
from fleetpulse.database import connect
from fleetpulse.local_servers import Mosquitto, Redis, free_port
from fleetpulse.settings import Settings, load_settings
from ingest.ingester import Ingester
from ingest.schema import StorageMode
from tracker.service import Tracker
from web import app as web_app
from web import auth

PG_URL = os.environ.get("FLEETPULSE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEMPLATE_DB = f"fleetpulse_test_tpl_{os.getpid()}"
WAIT_TIMEOUT_S = 20.0


def _db_url(name: str) -> str:
    return urlunsplit(urlsplit(PG_URL)._replace(path="/" + name))


def _admin(statement: sql.Composable) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    try:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE_DB)))
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {exc}")
    settings = make_settings(database_url=_db_url(TEMPLATE_DB))
    asyncio.run(prepare_database(settings))
    yield TEMPLATE_DB
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB)))


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    """A migrated, empty database of its own for one test."""
    name = f"fleetpulse_test_{uuid.uuid4().hex[:12]}"
    _admin(
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template_database)
        )
    )
    yield _db_url(name)
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def storage_mode(template_database: str) -> StorageMode:
    """The mode `db migrate` chose on this server: timescaledb where the extension exists."""
    with psycopg.connect(_db_url(template_database)) as conn:
        row = conn.execute(
            "SELECT value FROM fleetpulse_meta WHERE key = 'storage_mode'"
        ).fetchone()
    assert row is not None
    return StorageMode(row[0])


@pytest.fixture
def plain_mode(storage_mode: StorageMode) -> None:
    if storage_mode is not StorageMode.PLAIN:
        pytest.skip("checks native partitions, which exist only without TimescaleDB")


@pytest.fixture
def timescaledb_mode(storage_mode: StorageMode) -> None:
    if storage_mode is not StorageMode.TIMESCALEDB:
        pytest.skip("needs the TimescaleDB extension, which this PostgreSQL server lacks")


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as mosquitto:
        yield mosquitto


def make_settings(**values: Any) -> Settings:
    """Settings as the environment would give them, with test-friendly timings."""
    env = {
        "FLEETPULSE_FLUSH_INTERVAL": "50ms",
        "FLEETPULSE_CLIENT_ID": f"test-ingest-{uuid.uuid4().hex[:8]}",
    }
    env.update({f"FLEETPULSE_{k.upper()}": str(v) for k, v in values.items()})
    return load_settings(env)


def with_options(settings: Settings, **values: str) -> Settings:
    """The same private servers and web port, with other settings (as the environment
    would give them, e.g. reorder_window="0")."""
    return make_settings(
        database_url=settings.database_url,
        mqtt_url=settings.mqtt_url,
        redis_url=settings.redis_url,
        web_port=settings.web_port,
        **values,
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    with Redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: Redis) -> str:
    """The private Redis, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def settings(database_url: str, broker: Mosquitto, redis_url: str) -> Settings:
    return make_settings(
        database_url=database_url,
        mqtt_url=broker.url,
        redis_url=redis_url,
        web_port=free_port(),
    )


@asynccontextmanager
async def _running(
    name: str, run: Callable[[asyncio.Event], Awaitable[None]], ready: asyncio.Event
) -> AsyncIterator[None]:
    """A stage running in this event loop, ready before the block starts, stopped after."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop), name=f"test-{name}")
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait(
        {task, waiter}, timeout=WAIT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
    )
    if task in done:
        waiter.cancel()
        task.result()
    if waiter not in done:
        waiter.cancel()
        task.cancel()
        raise TimeoutError(f"the {name} was not ready in time")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_TIMEOUT_S)


@asynccontextmanager
async def running_ingester(settings: Settings) -> AsyncIterator[Ingester]:
    """An ingester, subscribed before the block starts."""
    ingester = Ingester(settings)
    async with _running("ingester", ingester.run, ingester.connected):
        yield ingester


@asynccontextmanager
async def running_tracker(settings: Settings) -> AsyncIterator[Tracker]:
    """A tracker, past its start-up recovery before the block starts."""
    tracker = Tracker(settings)
    async with _running("tracker", tracker.run, tracker.ready):
        yield tracker


@asynccontextmanager
async def running_web(settings: Settings) -> AsyncIterator[str]:
    """The web app on its port; yields its base URL."""
    ready = asyncio.Event()

    async def run(stop: asyncio.Event) -> None:
        await web_app.serve(settings, stop, ready)

    async with _running("web app", run, ready):
        yield settings.web_base_url


@asynccontextmanager
async def web_client(settings: Settings, token: str | None = None) -> AsyncIterator[ClientSession]:
    """The web app running, and an HTTP session on it (paths relative to its base URL)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with running_web(settings) as base, ClientSession(base, headers=headers) as http:
        yield http


async def make_token(settings: Settings, role: str = "admin", name: str = "test") -> str:
    """A bearer token with the role, as `fleetpulse tokens create` makes it."""
    conn = await connect(settings.database_url)
    try:
        _, token = await auth.create_token(conn, name, auth.Role.parse(role))
    finally:
        await conn.close()
    return token


async def eventually(check: Callable[[], Any], within: float = WAIT_TIMEOUT_S) -> Any:
    """Poll an async or sync `check` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in {within} s (last: {result!r})")
        await asyncio.sleep(0.05)
