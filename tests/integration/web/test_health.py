"""Liveness and readiness against the real services, and a real outage of Redis."""

from __future__ import annotations

import dataclasses

import psycopg

from fleetpulse.local_servers import Redis
from fleetpulse.settings import Settings
from ingest.schema import LATEST_VERSION
from tests.conftest import web_client


async def test_healthz_answers_without_dependencies(settings: Settings) -> None:
    async with web_client(settings) as http, http.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_readyz_reports_each_check_when_services_are_up(settings: Settings) -> None:
    async with web_client(settings) as http, http.get("/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"postgresql", "redis"}
    assert all(check["ok"] for check in body["checks"].values())
    assert f"schema version {LATEST_VERSION}" in body["checks"]["postgresql"]["detail"]


async def test_readyz_is_503_naming_redis_while_it_is_down(settings: Settings) -> None:
    with Redis() as private:
        own = dataclasses.replace(settings, redis_url=private.url)
        async with web_client(own) as http:
            async with http.get("/readyz") as resp:
                assert resp.status == 200
            private.stop()
            async with http.get("/readyz") as resp:
                assert resp.status == 503
                assert resp.content_type == "application/problem+json"
                problem = await resp.json()
            assert problem["status"] == 503
            assert problem["detail"].startswith("not ready: redis: ")
            assert "postgresql" not in problem["detail"]
            assert problem["checks"]["redis"]["ok"] is False
            assert problem["checks"]["postgresql"]["ok"] is True
            async with http.get("/healthz") as resp:
                assert resp.status == 200
            private.start()
            async with http.get("/readyz") as resp:
                assert resp.status == 200


async def test_readyz_is_503_when_the_schema_is_behind(settings: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        await conn.execute("DELETE FROM schema_migrations WHERE version = %s", (LATEST_VERSION,))
    async with web_client(settings) as http, http.get("/readyz") as resp:
        assert resp.status == 503
        problem = await resp.json()
    assert problem["detail"] == (
        f"not ready: postgresql: schema version {LATEST_VERSION - 1}, this FleetPulse needs"
        f" {LATEST_VERSION}: run `fleetpulse db migrate`"
    )
    assert problem["checks"]["redis"]["ok"] is True
