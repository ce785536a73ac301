"""GET /api/v1/devices and a device's detail and live state, against a fleet fed over
MQTT through the real ingester and tracker."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import ClientSession

from fleetpulse.database import connect
from fleetpulse.settings import Settings
from tests.conftest import (
    eventually,
    make_token,
    running_ingester,
    running_tracker,
    web_client,
    with_options,
)
from tests.publisher import publish
from tracker.store import set_device_groups

PORTO = (41.1496, -8.6109)
LISBON = (38.7223, -9.1393)
# ~2.2 km north of PORTO: inside a box around Porto, outside a 500 m circle.
PORTO_NORTH = (41.1696, -8.6109)


def _fixes(device: str, lat: float, lon: float, t0: int, **extra: Any) -> list[tuple[str, Any]]:
    return [
        (
            f"fleet/{device}/telemetry",
            {"ts": t0 + k * 1000, "lat": lat + k * 1e-5, "lon": lon, **extra},
        )
        for k in range(3)
    ]


@asynccontextmanager
async def fleet(settings: Settings) -> AsyncIterator[ClientSession]:
    """Four devices with live state, one known only by its last will, one only by an
    `online`; a viewer's session on the app."""
    settings = with_options(settings, reorder_window="0")
    t0 = int(time.time() * 1000) - 60_000
    messages = [
        *_fixes("van-1", *PORTO, t0, speed=8.0, kind="vehicle"),
        *_fixes("van-2", *PORTO_NORTH, t0, speed=0.0, kind="vehicle"),
        *_fixes("drone-1", *LISBON, t0, speed=12.0, kind="drone", alt=120.0),
        *_fixes("alice:phone", *LISBON, t0, speed=0.0, kind="phone"),
        ("fleet/ghost/status", "offline"),
        ("fleet/newcomer/status", "online"),
    ]
    token = await make_token(settings, "viewer")
    async with running_ingester(settings), running_tracker(settings):
        await publish(settings.mqtt_url, messages)
        async with web_client(settings, token) as http:

            async def all_live() -> bool:
                for device in ("van-1", "van-2", "drone-1", "alice:phone"):
                    async with http.get(f"/api/v1/devices/{device}/live") as resp:
                        if resp.status != 200:
                            return False
                async with http.get("/api/v1/devices") as resp:
                    return len((await resp.json())["items"]) == 6

            await eventually(all_live)
            conn = await connect(settings.database_url)
            try:
                await set_device_groups(conn, "van-1", ["depot-north", "night"])
                await set_device_groups(conn, "van-2", ["depot-north"])
            finally:
                await conn.close()
            yield http


async def ids(http: ClientSession, query: str = "") -> list[str]:
    async with http.get("/api/v1/devices" + query) as resp:
        assert resp.status == 200, await resp.text()
        page = await resp.json()
    assert page["next"] is None
    return [d["device_id"] for d in page["items"]]


async def test_devices_merge_the_registry_with_live_state(settings: Settings) -> None:
    async with fleet(settings) as http:
        async with http.get("/api/v1/devices") as resp:
            assert resp.status == 200
            page = await resp.json()
        by_id = {d["device_id"]: d for d in page["items"]}
        assert list(by_id) == sorted(by_id)
        assert set(by_id) == {"alice:phone", "drone-1", "ghost", "newcomer", "van-1", "van-2"}
        van = by_id["van-1"]
        assert van["status"] == "moving"
        assert van["kind"] == "vehicle"
        assert van["groups"] == ["depot-north", "night"]
        assert van["live"]["lat"] == PORTO[0] + 2e-5
        assert van["live"]["speed"] == 8.0
        assert van["first_seen"] <= van["last_seen"]
        assert by_id["van-2"]["status"] == "stopped"
        assert by_id["drone-1"]["live"]["alt"] == 120.0
        assert by_id["ghost"]["status"] == "offline"
        assert by_id["ghost"]["reported_status"] == "offline"
        assert by_id["ghost"]["live"] is None
        assert by_id["newcomer"]["status"] == "unknown"

        async with http.get("/api/v1/devices/van-1") as resp:
            assert resp.status == 200
            detail = await resp.json()
        assert detail == van
        async with http.get("/api/v1/devices/van-1/live") as resp:
            assert await resp.json() == van["live"]


async def test_filters(settings: Settings) -> None:
    async with fleet(settings) as http:
        assert await ids(http, "?kind=vehicle") == ["van-1", "van-2"]
        assert await ids(http, "?kind=drone") == ["drone-1"]
        assert await ids(http, "?group=depot-north") == ["van-1", "van-2"]
        assert await ids(http, "?group=night") == ["van-1"]
        assert await ids(http, "?group=nobody") == []
        assert await ids(http, "?status=moving") == ["drone-1", "van-1"]
        assert await ids(http, "?status=stopped") == ["alice:phone", "van-2"]
        assert await ids(http, "?status=offline") == ["ghost"]
        assert await ids(http, "?status=unknown") == ["newcomer"]
        box = "?bbox=41.1,-8.7,41.2,-8.5"
        assert await ids(http, box) == ["van-1", "van-2"]
        assert await ids(http, box + "&status=stopped") == ["van-2"]
        near = f"?near={PORTO[0]},{PORTO[1]}&radius_m=500"
        assert await ids(http, near) == ["van-1"]
        assert await ids(http, f"?near={PORTO[0]},{PORTO[1]}&radius_m=5000") == ["van-1", "van-2"]
        assert await ids(http, near + "&bbox=38,-10,39,-9") == []
        assert await ids(http, f"?near={LISBON[0]},{LISBON[1]}&radius_m=100&kind=phone") == [
            "alice:phone"
        ]


async def test_pages_return_every_device_once(settings: Settings) -> None:
    async with fleet(settings) as http:
        for query in ("?limit=2", "?limit=1&status=stopped", "?limit=4&kind=vehicle"):
            seen: list[str] = []
            url: str | None = "/api/v1/devices" + query
            while url is not None:
                async with http.get(url) as resp:
                    assert resp.status == 200
                    page = await resp.json()
                    link = resp.links.get("next")
                seen.extend(d["device_id"] for d in page["items"])
                if page["next"] is None:
                    assert link is None
                    url = None
                else:
                    assert link is not None
                    assert page["next"] == page["items"][-1]["device_id"]
                    url = str(link["url"])
            _, _, filters = query.partition("&")
            assert seen == await ids(http, "?" + filters)


async def test_unknown_devices_and_bad_parameters(settings: Settings) -> None:
    async with fleet(settings) as http:
        for url, status, words in [
            ("/api/v1/devices/nobody", 404, "no device 'nobody'"),
            ("/api/v1/devices/nobody/live", 404, "no device 'nobody'"),
            ("/api/v1/devices/ghost/live", 404, "no live state"),
            ("/api/v1/devices/bad%20id!", 404, "no device"),
            ("/api/v1/devices?status=asleep", 400, "moving, stopped, offline, unknown"),
            ("/api/v1/devices?kind=truck", 400, "vehicle, drone, phone"),
            ("/api/v1/devices?limit=0", 400, "'limit'"),
            ("/api/v1/devices?limit=1001", 400, "at most 1000"),
            ("/api/v1/devices?limit=ten", 400, "whole number"),
            ("/api/v1/devices?bbox=1,2,3", 400, "south,west,north,east"),
            ("/api/v1/devices?bbox=a,b,c,d", 400, "south,west,north,east"),
            ("/api/v1/devices?bbox=42,-9,41,-8", 400, "south must not exceed north"),
            ("/api/v1/devices?bbox=41,-190,42,-8", 400, "longitude -190.0"),
            ("/api/v1/devices?near=41.1,-8.6", 400, "'radius_m' is required"),
            ("/api/v1/devices?near=95,-8.6&radius_m=10", 400, "latitude 95.0"),
            ("/api/v1/devices?near=41.1&radius_m=10", 400, "lat,lon"),
            ("/api/v1/devices?radius_m=10", 400, "needs 'near'"),
            ("/api/v1/devices?near=41.1,-8.6&radius_m=0", 400, "above 0"),
            ("/api/v1/devices?near=41.1,-8.6&radius_m=1e9", 400, "at most 100000"),
            ("/api/v1/devices?near=41.1,-8.6&radius_m=nan", 400, "finite"),
            ("/api/v1/devices?group=a%00b", 400, "NUL"),
            ("/api/v1/devices?status=", 400, "'status' is empty"),
        ]:
            async with http.get(url) as resp:
                assert resp.status == status, url
                assert resp.content_type == "application/problem+json"
                problem = await resp.json()
            assert problem["status"] == status
            assert words in problem["detail"], (url, problem)


async def test_a_token_is_required(settings: Settings) -> None:
    async with web_client(settings) as http:
        for url in ("/api/v1/devices", "/api/v1/devices/van-1", "/api/v1/devices/van-1/live"):
            async with http.get(url) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(url, headers={"Authorization": "Bearer fpt_not-a-token"}) as resp:
                assert resp.status == 401
                assert "unknown or revoked" in (await resp.json())["detail"]
