"""Liveness and readiness, for load balancers and orchestrators.

`/healthz` answers as long as the process serves HTTP: it touches nothing else, so a
database outage never makes an orchestrator restart healthy web workers.
`/readyz` says whether this worker can do its job now: PostgreSQL answers through the
pool with the schema this FleetPulse expects, and Redis answers PING. Checks run
concurrently, each within `CHECK_TIMEOUT_S`, so a hung service answers 503, not never.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from ingest.schema import status
from web.api import Api, json_response
from web.problems import Problem
from web.services import Services, services

CHECK_TIMEOUT_S = 2.0

api = Api()


class Health(msgspec.Struct, frozen=True):
    status: str


class Check(msgspec.Struct, frozen=True):
    ok: bool
    ms: float
    detail: str


class Readiness(msgspec.Struct, frozen=True):
    status: str
    checks: dict[str, Check]


async def _postgresql(found: Services) -> str:
    async with found.db() as conn:
        await conn.execute("SELECT 1")
        schema = await status(conn)
    if not schema.up_to_date:
        action = (
            "run `fleetpulse db migrate`"
            if schema.version < schema.latest
            else "upgrade FleetPulse"
        )
        raise _NotReady(
            f"schema version {schema.version}, this FleetPulse needs {schema.latest}: {action}"
        )
    return f"schema version {schema.version}, {schema.mode} storage"


async def _redis(found: Services) -> str:
    await found.redis.ping()  # type: ignore[misc]  # redis-py 7 types it sync-or-async
    return "PING answered"


class _NotReady(Exception):
    """A service that answers but cannot be used as it is."""


CHECKS: dict[str, Callable[[Services], Awaitable[str]]] = {
    "postgresql": _postgresql,
    "redis": _redis,
}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer in {CHECK_TIMEOUT_S:g} s"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


async def _run(check: Callable[[Services], Awaitable[str]], found: Services) -> Check:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(found), CHECK_TIMEOUT_S)
        ok = True
    except Exception as exc:  # any failure of a dependency is the answer, not an error
        detail, ok = _reason(exc), False
    return Check(ok, round((time.perf_counter() - started) * 1000.0, 1), detail)


@api.get(
    "/healthz",
    summary="Liveness: the process serves HTTP (no dependency is checked)",
    role=None,
    tag="operations",
    response=Health,
)
async def healthz(request: web.Request) -> web.Response:
    return json_response(Health("ok"))


@api.get(
    "/readyz",
    summary="Readiness: PostgreSQL (schema current) and Redis reachable; 503 naming what is"
    " down otherwise",
    role=None,
    tag="operations",
    response=Readiness,
    errors=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    found = services(request)
    results = await asyncio.gather(*(_run(check, found) for check in CHECKS.values()))
    checks = dict(zip(CHECKS, results, strict=True))
    down = [f"{name}: {check.detail}" for name, check in checks.items() if not check.ok]
    if down:
        raise Problem(503, "not ready: " + "; ".join(down), checks=msgspec.to_builtins(checks))
    return json_response(Readiness("ready", checks))
