"""The customer's tracking link over REST, against a served app with real PostgreSQL and
Redis: a token opens its one delivery and nothing else, unknown and expired tokens look
the same, the reveal rules hold, and the rate limit is one limit across web workers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta

import h3
import pytest
import websockets
from aiohttp import ClientSession

from fleetpulse.local_servers import free_port
from fleetpulse.settings import Settings
from tests.conftest import make_token, running_web, web_client
from tests.integration.web.tracking_setup import (
    DEST,
    FAR,
    NEAR,
    database,
    give_eta,
    move,
    new_delivery,
    report,
    vehicle_state,
)
from tracker import delivery_store
from tracker.deliveries import DeliveryState
from web.tracking import NOT_FOUND


async def track(http: ClientSession, token: str) -> dict:  # type: ignore[type-arg]
    async with http.get(f"/api/v1/track/{token}") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        return await resp.json()  # type: ignore[no-any-return]


async def test_a_token_opens_its_delivery_and_nothing_else(settings: Settings) -> None:
    # Two stops on the same van, one on another: the customer of p-2 is the second stop.
    other_dest = (41.157777, -8.629999)
    await new_delivery(settings, "p-1", "van-1", sequence=1, dest=other_dest)
    token = await new_delivery(settings, "p-2", "van-1", sequence=2)
    await new_delivery(settings, "p-3", "van-9", sequence=1)
    await move(settings, vehicle_state("van-1", FAR))
    await give_eta(settings, "p-1", 3)
    await give_eta(settings, "p-2", 25)
    async with web_client(settings) as http:
        async with http.get(f"/api/v1/track/{token}") as resp:
            assert resp.status == 200
            raw = await resp.text()
        seen = await track(http, token)
        assert seen["delivery_id"] == "p-2"
        assert seen["stops_before"] == 1
        assert (seen["destination"]["lat"], seen["destination"]["lon"]) == DEST
        # Nothing of the other stops: not their ids, addresses or ETAs; not the vehicle.
        for secret in ("p-1", "p-3", "van-1", str(other_dest[0]), str(other_dest[1])):
            assert secret not in raw
        # The delivery's id is no key: only the token opens it.
        async with http.get("/api/v1/track/p-2") as resp:
            assert resp.status == 404
        async with http.get("/api/v1/track/p-1") as resp:
            assert resp.status == 404
        # A customer's token is no bearer token: dispatch refuses it.
        bearer = {"Authorization": f"Bearer {token}"}
        for path in ("/api/v1/deliveries", "/api/v1/deliveries/p-2", "/api/v1/devices"):
            async with http.get(path, headers=bearer) as resp:
                assert resp.status == 401, path
                assert resp.content_type == "application/problem+json"
    async with running_web(settings) as base:
        ws_base = base.replace("http://", "ws://")
        for url, status in (
            (f"{ws_base}/ws/dispatch?access_token={token}", 401),
            (f"{ws_base}/ws/track/p-2", 404),
        ):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(url):
                    pass
            assert refused.value.response.status_code == status, url


async def test_unknown_and_expired_tokens_get_the_same_404(settings: Settings) -> None:
    expired = await new_delivery(
        settings, "p-old", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    async with web_client(settings) as http:
        answers = []
        for token in (expired, "x" * 32, "nope", "a" * 500):
            async with http.get(f"/api/v1/track/{token}") as resp:
                assert resp.status == 404
                assert resp.content_type == "application/problem+json"
                answers.append((await resp.json())["detail"])
    assert answers == [NOT_FOUND] * 4


async def test_position_is_hidden_until_the_eta_is_under_the_threshold(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, reveal_eta=timedelta(minutes=10), reveal_stops=0)
    await new_delivery(settings, "p-1", "van-1", sequence=1)
    token = await new_delivery(settings, "p-2", "van-1", sequence=2)
    await move(settings, vehicle_state("van-1", FAR))
    await give_eta(settings, "p-2", 35)
    async with web_client(settings) as http:
        seen = await track(http, token)
        assert seen["state"] == "scheduled"
        assert not seen["revealed"]
        assert seen["position"] is None
        area = seen["area"]
        assert area["resolution"] == settings.h3_coarse_res
        assert area["cell"] == h3.latlng_to_cell(*FAR, settings.h3_coarse_res)
        assert h3.cell_to_latlng(area["cell"]) != FAR
        assert area["boundary"][0] == area["boundary"][-1]
        assert seen["eta"] is not None

        await give_eta(settings, "p-2", 8, at=NEAR)
        await move(settings, vehicle_state("van-1", NEAR))
        seen = await track(http, token)
        assert seen["revealed"]
        assert seen["area"] is None
        assert (seen["position"]["lat"], seen["position"]["lon"]) == NEAR


async def test_position_shows_once_few_enough_stops_remain_before(settings: Settings) -> None:
    settings = dataclasses.replace(settings, reveal_eta=timedelta(minutes=1), reveal_stops=1)
    await new_delivery(settings, "p-1", "van-1", sequence=1)
    await new_delivery(settings, "p-2", "van-1", sequence=2)
    token = await new_delivery(settings, "p-3", "van-1", sequence=3)
    await move(settings, vehicle_state("van-1", FAR))
    async with web_client(settings) as http:
        seen = await track(http, token)
        assert (seen["stops_before"], seen["revealed"], seen["position"]) == (2, False, None)
        assert seen["area"] is not None
        await report(settings, "p-1", DeliveryState.DELIVERED)
        seen = await track(http, token)
        assert (seen["stops_before"], seen["revealed"]) == (1, True)
        assert (seen["position"]["lat"], seen["position"]["lon"]) == FAR
        # Once this one is final, the customer sees no vehicle at all.
        await report(settings, "p-3", DeliveryState.DELIVERED)
        seen = await track(http, token)
        assert seen["state"] == "delivered"
        assert (seen["position"], seen["area"], seen["eta"]) == (None, None, None)


async def test_an_eta_given_for_the_previous_vehicle_is_not_shown(settings: Settings) -> None:
    token = await new_delivery(settings, "p-1", "van-1")
    await give_eta(settings, "p-1", 20)
    async with web_client(settings) as http:
        assert (await track(http, token))["eta"] is not None
        async with database(settings) as conn:
            await delivery_store.change(conn, "p-1", delivery_store.Change(vehicle_id="van-2"))
        assert (await track(http, token))["eta"] is None


async def test_the_route_is_documented_without_security(settings: Settings) -> None:
    async with web_client(settings) as http, http.get("/api/openapi.json") as resp:
        document = await resp.json()
    operation = document["paths"]["/api/v1/track/{token}"]["get"]
    assert "security" not in operation
    assert {"200", "404", "429"} <= set(operation["responses"])
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    name = schema["$ref"].rsplit("/", 1)[-1]
    fields = document["components"]["schemas"][name]["properties"]
    assert {"state", "eta", "window", "position", "area", "revealed"} <= set(fields)


async def test_the_page_is_served_for_any_token_without_leaking_it(settings: Settings) -> None:
    async with web_client(settings) as http:
        async with http.get("/track/whatever-token") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            page = await resp.text()
        assert "/static/track.js" in page and "/static/track.css" in page
        for asset in ("/static/track.js", "/static/track.css"):
            async with http.get(asset) as resp:
                assert resp.status == 200, asset


@asynccontextmanager
async def two_workers(settings: Settings) -> AsyncIterator[list[tuple[str, ClientSession]]]:
    """Two web apps on two ports sharing one PostgreSQL and one Redis: their base URLs
    and an HTTP session on each."""
    async with AsyncExitStack() as stack:
        workers = []
        for port in (settings.web_port, free_port()):
            base = await stack.enter_async_context(
                running_web(dataclasses.replace(settings, web_port=port))
            )
            workers.append((base, await stack.enter_async_context(ClientSession(base))))
        yield workers


async def test_the_rate_limit_is_shared_by_every_worker(settings: Settings) -> None:
    limit = 6
    settings = dataclasses.replace(settings, public_rate_limit=limit)
    token = await new_delivery(settings, "p-1")
    async with two_workers(settings) as [(_, first), (second_base, second)]:
        for i in range(limit):
            async with (first if i % 2 else second).get(f"/api/v1/track/{token}") as resp:
                assert resp.status == 200
        for http, path in (
            (first, f"/api/v1/track/{token}"),
            (second, f"/api/v1/track/{token}"),
            (first, f"/track/{token}"),
        ):
            async with http.get(path) as resp:
                assert resp.status == 429, path
                retry_after = int(resp.headers["Retry-After"])
                assert 1 <= retry_after <= 120
                problem = await resp.json()
                assert problem["status"] == 429
                assert f"allow {limit} a minute" in problem["detail"]
        # The websocket's upgrade counts too, refused before it is upgraded.
        ws_base = second_base.replace("http://", "ws://")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"{ws_base}/ws/track/{token}"):
                pass
        assert refused.value.response.status_code == 429
        # Dispatch's endpoints are not the customers': no limit there.
        viewer = await make_token(settings, "viewer")
        for _ in range(limit + 2):
            async with first.get(
                "/api/openapi.json", headers={"Authorization": f"Bearer {viewer}"}
            ) as resp:
                assert resp.status == 200


async def test_concurrent_requests_never_exceed_the_limit(settings: Settings) -> None:
    limit = 10
    settings = dataclasses.replace(settings, public_rate_limit=limit)
    token = await new_delivery(settings, "p-1")
    async with two_workers(settings) as [(_, first), (_, second)]:

        async def one(i: int) -> int:
            async with (first if i % 2 else second).get(f"/api/v1/track/{token}") as resp:
                return resp.status

        statuses = await asyncio.gather(*(one(i) for i in range(3 * limit)))
    assert statuses.count(200) == limit
    assert statuses.count(429) == 2 * limit
